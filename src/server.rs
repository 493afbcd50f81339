//! Assemble the process: one Pingora server, three services (edge, origin, admin), each on its
//! own runtime so resizing can never starve the threads that serve hits.
//!
//! In a cluster (`cluster.listen`), a fourth listener: the peer listener, a second instance of
//! the edge proxy on the same cache in "from a peer" mode (see [`crate::cluster`]), and a
//! background service running the peers' health checks.
//!
//! Listeners: plain HTTP (`edge.listen`) and TLS with HTTP/2 (`edge.tls.listen`) on the edge,
//! both behind the slow-client guard; the origin on a Unix socket; admin on its own port.
//! Graceful upgrade: a new process started with `-u` receives every listening socket from the
//! old one (which gets SIGQUIT) through `server.upgrade_sock`; bootstrap runs as a service the
//! listeners depend on, so no listener starts before the handover is complete.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use pingora_core::apps::HttpServerOptions;
use pingora_core::listeners::{L4BufferSettings, ListenerConfig};
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::Server;
use pingora_core::services::background::background_service;
use pingora_core::services::listening::Service;

use crate::admin::AdminApp;
use crate::cache::{Cache, StateSaver};
use crate::cluster::records::{PurgeRecords, RecordsReader};
use crate::config::Config;
use crate::edge::access_log::AccessLog;
use crate::edge::client_limits::ClientLimits;
use crate::edge::drain::Draining;
use crate::edge::hit_loop::HitLoop;
use crate::edge::proxy_protocol::PreTls;
use crate::edge::{tls, Edge};
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
    let error_log = &cfg.server.error_log;
    ServerConf {
        threads: cfg.server.threads,
        daemon: run.daemon,
        // Not `daemon_wait_for_ready`: in Pingora 0.9.1 the parent installs its SIGUSR1 handler
        // after the fork, so a fast child's signal kills it (seen in tests/upgrade.rs). The
        // listening sockets exist before the fork or are handed over by the old process, so
        // connections queue in the kernel until the daemon accepts them either way.
        error_log: (!error_log.as_os_str().is_empty())
            .then(|| error_log.to_string_lossy().into_owned()),
        pid_file: cfg.server.pid_file.to_string_lossy().into_owned(),
        upgrade_sock: cfg.server.upgrade_sock.to_string_lossy().into_owned(),
        grace_period_seconds: Some(cfg.server.grace_period.as_secs()),
        graceful_shutdown_timeout_seconds: Some(cfg.server.graceful_shutdown_timeout.as_secs()),
        ..ServerConf::default()
    }
}

/// Build the server with all services; call `run_forever` on the result.
pub fn build(cfg: &Config, run: RunOptions) -> Result<Server, Error> {
    // Certificates first: a bad one fails start-up naming its key, before anything listens.
    let certs = tls::load(&cfg.edge.tls).map_err(|e| Error::Internal(e.to_string()))?;
    if let Some((_, loaded)) = &certs {
        crate::metrics::set_certificates(loaded.iter().map(|c| (c.names.clone(), c.not_after)));
    }
    let access_log = AccessLog::start(&cfg.edge.access_log).map_err(|e| {
        Error::Internal(format!(
            "edge.access_log.path: {}: {e}",
            cfg.edge.access_log.path.display()
        ))
    })?;

    let opt = Opt {
        upgrade: run.upgrade,
        daemon: run.daemon,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, server_conf(cfg, run));
    let bootstrap = server.bootstrap_as_a_service();

    let cache = Cache::from_config(cfg)?;
    let (results, results_writer) =
        crate::origin::results::Results::from_config(cfg, cache.purges).unzip();
    let origin = Arc::new(
        Origin::from_config(cfg)?
            .with_purges(cache.purges)
            .with_results(results.clone()),
    );
    let mut origin_svc = Service::new("origin".to_string(), OriginApp(origin));
    origin_svc.add_uds(
        &cfg.origin.socket.to_string_lossy(),
        Some(std::fs::Permissions::from_mode(0o600)),
    );
    origin_svc.threads = Some(cfg.origin.threads);

    let (mirror, mirror_svc) = crate::mirror::from_config(&cfg.mirror, &cfg.signing_keys()).unzip();
    let draining = Draining::default();
    let cluster = crate::cluster::Cluster::from_config(&cfg.cluster)?;
    let (cluster, cluster_health) = cluster.unzip();
    let records: Option<&'static PurgeRecords> =
        PurgeRecords::from_config(cfg, cache).map(|r| &*Box::leak(Box::new(r)));
    let edge_logic = Edge::new(cfg, cache, access_log, draining.clone())
        .with_mirror(mirror)
        .with_cluster(cluster.clone(), false);
    let door = edge_logic.hit_door(cfg);
    let mut proxy = pingora_proxy::http_proxy(&server.configuration, edge_logic);
    let mut options = HttpServerOptions::default();
    options.keepalive_request_limit =
        (cfg.edge.keepalive_requests > 0).then_some(cfg.edge.keepalive_requests);
    options.h2_idle_timeout = Some(cfg.edge.keepalive_timeout);
    proxy.server_options = Some(options);
    let mut edge = Service::new(
        "edge".to_string(),
        ClientLimits::new(HitLoop::new(proxy, door), cfg.edge.header_timeout)
            .with_proxy_protocol(cfg.edge.proxy_protocol),
    );
    if cfg.edge.proxy_protocol {
        edge.endpoints().set_pre_tls_callback(Arc::new(PreTls {
            timeout: cfg.edge.header_timeout,
        }));
    }
    // Header and body of a typical cached image leave in one write (see edge.write_buffer).
    let buffers = L4BufferSettings::default().write(cfg.edge.write_buffer.as_u64() as usize);
    for addr in &cfg.edge.listen {
        edge.add_listener(ListenerConfig::tcp(addr.to_string()).l4_buffer(buffers));
    }
    if let Some((resolver, _)) = certs {
        for addr in &cfg.edge.tls.listen {
            let settings = tls::settings(resolver.clone(), cfg.edge.tls.h2)
                .map_err(|e| Error::Internal(format!("edge.tls: {e}")))?;
            edge.add_listener(
                ListenerConfig::tcp(addr.to_string())
                    .tls(settings)
                    .l4_buffer(buffers),
            );
        }
    }
    edge.threads = Some(cfg.server.threads);

    let mut admin = Service::new(
        "admin".to_string(),
        AdminApp::new(cfg, cache, draining.clone())
            .with_cluster(cluster.clone())
            .with_records(records)
            .with_results(results),
    );
    admin.add_tcp(&cfg.admin.listen.to_string());
    admin.threads = Some(1);

    let mut handles = vec![server.add_service(origin_svc), server.add_service(admin)];
    // The listeners that serve objects: they open only once the purge records were read (or
    // `startup_wait` passed), so a node back from a partition never serves what was purged.
    let mut serving = vec![server.add_service(edge)];
    if let (Some(listen), Some(_)) = (cfg.cluster.listen, &cluster) {
        // The peer listener: the same cache, requests from other nodes only, filled locally.
        let mut peer_proxy = pingora_proxy::http_proxy(
            &server.configuration,
            Edge::new(cfg, cache, None, draining.clone()).with_cluster(cluster.clone(), true),
        );
        peer_proxy.server_options = Some(options_for_peers(cfg));
        let mut peers = Service::new(
            "cluster peers".to_string(),
            ClientLimits::new(peer_proxy, cfg.edge.header_timeout),
        );
        peers.add_tcp(&listen.to_string());
        peers.threads = Some(cfg.server.threads);
        serving.push(server.add_service(peers));
    }
    if let Some(r) = records {
        let read = server.add_service(background_service("purge records", RecordsReader(r)));
        for handle in &serving {
            handle.add_dependency(&read);
        }
    }
    handles.extend(serving);
    for handle in handles {
        handle.add_dependency(&bootstrap);
    }
    if let Some(svc) = cluster_health {
        server.add_service(svc);
    }
    server.add_service(background_service("drain", draining.watcher()));
    server.add_service(background_service(
        "cache state",
        StateSaver {
            storage: cache.storage,
            interval: cfg.cache.disk.save_interval,
        },
    ));
    if let Some(writer) = results_writer {
        // Its own runtime: result PUTs never take an origin or edge thread.
        server.add_service(background_service("results writer", writer));
    }
    if let Some(svc) = mirror_svc {
        // Its own runtime: sending mirrored requests never takes an edge thread.
        server.add_service(background_service("mirror", svc));
    }
    Ok(server)
}

/// HTTP options of the peer listener: nodes keep their connections open.
fn options_for_peers(cfg: &Config) -> HttpServerOptions {
    let mut options = HttpServerOptions::default();
    options.h2_idle_timeout = Some(cfg.edge.keepalive_timeout);
    options
}
