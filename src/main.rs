//! The `imgedge` binary: `serve` (the default), `check`, `sign` and `warm`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use imgedge::config::Config;
use imgedge::server::{self, RunOptions};

#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Image CDN edge node: cache in front of an S3 resizer.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default). Without -c, the embedded demo: conf/samples on 127.0.0.1:8080.
    Serve {
        /// Config file (YAML).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Take the listeners over from the running process (graceful upgrade).
        #[arg(short, long)]
        upgrade: bool,
        /// Fork into the background.
        #[arg(short, long)]
        daemon: bool,
    },
    /// Validate a config file and its certificates; exit 2, naming the key, if one is wrong.
    Check {
        /// Config file (YAML).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Print a URL signed with the config's first `policy.signing_keys` entry.
    Sign {
        /// Config file (YAML).
        #[arg(short, long)]
        config: PathBuf,
        /// The URL (`https://host/image/{id}?...`) or path (`/image/{id}?...`) to sign.
        url: String,
    },
    /// Warm a node's cache from access logs: most requested variants first, rate-limited.
    Warm(imgedge::warm::WarmArgs),
}

fn load(path: Option<&Path>) -> Result<Config, String> {
    match path {
        Some(p) => Config::load(p).map_err(|e| format!("{}: {e}", p.display())),
        None => Config::from_yaml("").map_err(|e| format!("built-in defaults: {e}")),
    }
}

/// Log filter when IMGEDGE_LOG is unset. pingora_cache::meta warns on every cache write that no
/// header-compression dictionary is loaded (we use none); pingora's HTTP app logs the origin's
/// write to the edge failing whenever a client hangs up mid-miss, which the edge already counts.
const DEFAULT_LOG: &str = "info,pingora_cache::meta=error,pingora_core::apps::http_app=off";

/// `imgedge check`: the config, then every certificate (readable, key matches, in validity).
fn check(path: &Path) -> ExitCode {
    let cfg = match load(Some(path)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("config error: {e}");
            return ExitCode::from(2);
        }
    };
    // Where each secret came from, never its value.
    for (key, secret) in cfg.secrets() {
        println!("{key}: from {} ({} bytes)", secret.origin(), secret.len());
    }
    match imgedge::edge::tls::load(&cfg.edge.tls) {
        Ok(certs) => {
            for (i, c) in certs.map(|(_, c)| c).unwrap_or_default().iter().enumerate() {
                let left = c
                    .not_after
                    .duration_since(std::time::SystemTime::now())
                    .unwrap_or_default();
                println!(
                    "edge.tls.certificates[{i}]: {} (expires in {} days)",
                    c.names.join(", "),
                    left.as_secs() / 86400
                );
            }
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("config error: {}: {e}", path.display());
            ExitCode::from(2)
        }
    }
}

/// `imgedge sign`: the URL with `sig` for the variant it names (any previous `sig` replaced).
fn sign(cfg: &Config, url: &str) -> Result<String, String> {
    use imgedge::policy::signing::{self, Signer};
    let signer = Signer::new(&cfg.signing_keys())
        .ok_or("policy.signing_keys is empty: nothing to sign with")?;
    let (path, query) =
        imgedge::warm::logs::split_target(url).map_err(|e| format!("{url}: {e}"))?;
    // Scheme and host as given (the path is the first `/` after them).
    let host_at = url.find("://").map_or(0, |i| i + 3);
    let origin = url[host_at..].find('/').map_or("", |i| &url[..host_at + i]);
    let (path, query) = (path.as_str(), query.as_deref());
    let variant = imgedge::variant::Variant::parse(path, query, &cfg.parse_options())
        .map_err(|e| e.to_string())?;
    let kept: Vec<&str> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty() && p.split('=').next() != Some(signing::PARAM))
        .collect();
    let unsigned = if kept.is_empty() {
        format!("{origin}{path}")
    } else {
        format!("{origin}{path}?{}", kept.join("&"))
    };
    Ok(signing::append(
        &unsigned,
        &signer.sign(&variant.signed_uri()),
    ))
}

fn main() -> ExitCode {
    // One TLS crypto provider (ring) for the process: the listeners' and HTTP clients' (warm).
    pingora_rustls::install_default_crypto_provider();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("IMGEDGE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG)),
        )
        .init();
    let cli = Cli::parse();
    let (config, run) = match cli.command {
        Some(Command::Check { config }) => return check(&config),
        Some(Command::Sign { config, url }) => {
            let signed = load(Some(&config)).and_then(|cfg| sign(&cfg, &url));
            return match signed {
                Ok(u) => {
                    println!("{u}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sign: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Some(Command::Warm(args)) => {
            return match imgedge::warm::run(args) {
                Ok(imgedge::warm::Outcome::Done) => ExitCode::SUCCESS,
                Ok(imgedge::warm::Outcome::Interrupted) => ExitCode::from(130),
                Err(e) => {
                    eprintln!("warm: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Some(Command::Serve {
            config,
            upgrade,
            daemon,
        }) => (config, RunOptions { upgrade, daemon }),
        None => (None, RunOptions::default()),
    };
    let cfg = match load(config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("config error: {e}");
            return ExitCode::from(2);
        }
    };
    match server::build(&cfg, run) {
        Ok(s) => {
            tracing::info!(listen = ?cfg.edge.listen, admin = %cfg.admin.listen, "imgedge starting");
            s.run_forever()
        }
        Err(e) => {
            eprintln!("start-up failed: {e}");
            ExitCode::FAILURE
        }
    }
}
