//! Assemble the process: one Pingora server, three services (edge, origin, admin), each on its
//! own runtime so resizing can never starve the threads that serve hits.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;

use crate::admin::AdminApp;
use crate::cache::{Cache, StateSaver};
use crate::config::Config;
use crate::edge::Edge;
use crate::error::Error;
use crate::origin::{Origin, OriginApp};

/// How the process was started.
#[derive(Debug, Default, Clone, Copy)]
pub struct RunOptions {
    /// Take the listeners over from a running process (graceful upgrade).
    pub upgrade: bool,
    /// Fork into the background.
    pub daemon: bool,
}

/// Pingora's `ServerConf` from ours.
pub fn server_conf(cfg: &Config, run: RunOptions) -> ServerConf {
    ServerConf {
        threads: cfg.server.threads,
        daemon: run.daemon,
        pid_file: cfg.server.pid_file.to_string_lossy().into_owned(),
        upgrade_sock: cfg.server.upgrade_sock.to_string_lossy().into_owned(),
        grace_period_seconds: Some(cfg.server.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(cfg.server.graceful_shutdown_timeout.as_secs()),
        ..ServerConf::default()
    }
}

/// Build the server with all services; call `run_forever` on the result.
pub fn build(cfg: &Config, run: RunOptions) -> Result<Server, Error> {
    let opt = Opt {
        upgrade: run.upgrade,
        daemon: run.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, server_conf(cfg, run));
    server.bootstrap();

    let origin = Arc::new(Origin::from_config(cfg)?);
    let mut origin_svc = Service::new("origin".to_string(), OriginApp(origin));
    origin_svc.add_uds(
        &cfg.origin.socket.to_string_lossy(),
        Some(std::fs::Permissions::from_mode(0o600)),
    );
    origin_svc.threads = Some(cfg.origin.threads);

    let cache = Cache::from_config(&cfg.cache)?;
    let (mirror, mirror_svc) = crate::mirror::from_config(&cfg.mirror).unzip();
    let mut edge = pingora_proxy::http_proxy_service_with_name(
        &server.configuration,
        Edge::new(cfg, cache).with_mirror(mirror),
        "edge",
    );
    for addr in &cfg.edge.listen {
        edge.add_tcp(&addr.to_string());
    }
    edge.threads = Some(cfg.server.threads);

    let mut admin = Service::new("admin".to_string(), AdminApp::new(cfg, cache));
    admin.add_tcp(&cfg.admin.listen.to_string());
    admin.threads = Some(1);

    server.add_service(origin_svc);
    server.add_service(edge);
    server.add_service(admin);
    server.add_service(background_service(
        "cache state",
        StateSaver {
            storage: cache.storage,
            interval: cfg.cache.disk.save_interval,
        },
    ));
    if let Some(svc) = mirror_svc {
        // Its own runtime: sending mirrored requests never takes an edge thread.
        server.add_service(pingora_core::services::background::background_service(
            "mirror", svc,
        ));
    }
    Ok(server)
}
