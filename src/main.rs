//! The `imgedge` binary: `serve` (the default), `check` and `warm`.

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
    /// Validate a config file and exit non-zero, naming the key, if it is wrong.
    Check {
        /// Config file (YAML).
        #[arg(short, long)]
        config: PathBuf,
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

fn main() -> ExitCode {
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
        Some(Command::Check { config }) => {
            return match load(Some(&config)) {
                Ok(_) => {
                    println!("{}: ok", config.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("config error: {e}");
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
