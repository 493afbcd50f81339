//! imgedge: a self-hosted image CDN edge node on Pingora.
//!
//! The modules follow a request: [`variant`] turns a URL into the canonical variant and its cache
//! key; [`edge`] serves it from the [`cache`] or, on a miss, asks the [`origin`], which fetches the
//! original from its [`origin::source`], resizes it with [`origin::transform`] on the
//! [`origin::pool`] and answers. [`server`] assembles the three Pingora services (edge, origin,
//! [`admin`]); [`config`] is the one YAML file; [`error`] maps every failure to its HTTP status.
//! [`cluster`] makes the nodes of a POP one cache (ownership by id, peer fill, purge everywhere).
//! [`mirror`] replays a sample of live requests to another node; [`warm`] is `imgedge warm`;
//! both send with [`client`]. [`policy`] decides what the edge agrees to serve.

pub mod admin;
pub mod cache;
pub mod client;
pub mod cluster;
pub mod config;
pub mod edge;
pub mod error;
pub mod metrics;
pub mod mirror;
pub mod origin;
pub mod policy;
pub mod secret;
pub mod server;
pub mod variant;
pub mod warm;
