//! `imgedge warm`: warm a node's cache by replaying access logs.
//!
//! Lines are read from a file or stdin ([`logs`]), turned into canonical variants with the
//! server's own parser and deduplicated ([`plan`]), then requested from the target most
//! popular first, under a concurrency cap, a request-rate cap and an optional budget
//! ([`client`]). A progress bar (or, off a terminal, a plain line every few seconds) goes to
//! stderr; the [`report`] goes to stdout at the end, or at Ctrl-C with what was done so far.
//!
//! With `--follow` the input is tailed: what is already in the file is ranked and warmed first,
//! then each new variant is warmed as it shows up (ranked within each batch), until Ctrl-C.

pub mod client;
pub mod logs;
pub mod plan;
pub mod report;

use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytesize::ByteSize;
use parking_lot::Mutex;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::variant::{DefaultFormat, ParseOptions};
use plan::{Item, Planner};
use report::{Report, Tally};

/// `imgedge warm` options.
#[derive(clap::Args, Debug, Clone)]
pub struct WarmArgs {
    /// Access log to read (nginx/Apache combined, imgedge, CloudFront, ALB, or one URL per
    /// line; formats may be mixed); `-` for stdin.
    #[arg(default_value = "-")]
    pub input: PathBuf,
    /// Node to warm: base URL of its edge listener, e.g. http://10.0.0.7:8080.
    #[arg(short, long)]
    pub target: String,
    /// Trust only the PEM certificates (CA) in this file for an https:// target or admin URL;
    /// without it, the system's roots.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// The node's admin URL, to report its hit ratio before and after (e.g. http://10.0.0.7:9091).
    #[arg(long)]
    pub admin: Option<String>,
    /// Requests in flight at most.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Requests started per second at most; 0 for no cap. Each miss costs the node a fetch
    /// and a resize, so keep it low against a node serving live traffic.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Warm at most this many variants (the most requested ones).
    #[arg(long)]
    pub max_objects: Option<u64>,
    /// Stop starting requests once this many body bytes came back (e.g. 2GiB); requests in
    /// flight then still finish, so it may be exceeded by up to `--concurrency - 1` objects.
    #[arg(long)]
    pub max_bytes: Option<ByteSize>,
    /// Keep reading the input as it grows (like `tail -F`; a rotated or truncated file is
    /// reopened), warming new variants as they appear, until Ctrl-C.
    #[arg(short, long)]
    pub follow: bool,
    /// Per-request timeout.
    #[arg(long, default_value = "30s", value_parser = humantime_serde::re::humantime::parse_duration)]
    pub timeout: Duration,
    /// The target's `limits.max_dimension`, for canonicalizing exactly as it does.
    #[arg(long, default_value_t = ParseOptions::default().max_dimension)]
    pub max_dimension: u32,
    /// The target's `transform.default_quality`, for canonicalizing exactly as it does.
    #[arg(long, default_value_t = ParseOptions::default().default_quality)]
    pub default_quality: u8,
    /// The target's `transform.default_format` (`original` or `auto`). Negotiated lines warm
    /// the class their URL implies: logs carry no `Accept`, so `legacy`.
    #[arg(long, default_value = "original", value_parser = ["original", "auto"])]
    pub default_format: String,
    /// Interval of the plain progress lines printed when stderr is not a terminal.
    #[arg(long, default_value = "5s", value_parser = humantime_serde::re::humantime::parse_duration)]
    pub progress_every: Duration,
}

/// Why a warming run could not start.
#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    /// A bad option.
    #[error("{0}")]
    Usage(String),
    /// The input could not be opened.
    #[error("{path}: {source}")]
    Input {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP client or the runtime could not be built.
    #[error("{0}")]
    Setup(String),
}

/// How the run ended, for the exit code.
pub enum Outcome {
    /// The input (or the budget) was exhausted.
    Done,
    /// Ctrl-C.
    Interrupted,
}

/// Run `imgedge warm`: print progress to stderr and the report to stdout.
pub fn run(args: WarmArgs) -> Result<Outcome, WarmError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| WarmError::Setup(format!("tokio runtime: {e}")))?;
    let report = rt.block_on(warm(args))?;
    println!("{report}");
    Ok(if report.interrupted {
        Outcome::Interrupted
    } else {
        Outcome::Done
    })
}

/// What the reader thread sends.
enum Input {
    Line(String),
    /// The reader is at the end of the input for now (follow mode).
    Idle,
}

/// State shared by the dispatcher, its requests and the progress display.
#[derive(Default)]
struct Shared {
    tally: Mutex<Tally>,
    sent: AtomicU64,
    planned: AtomicU64,
    budget_reached: AtomicBool,
}

fn validate(args: &WarmArgs) -> Result<(), WarmError> {
    let url_ok = |u: &str| u.starts_with("http://") || u.starts_with("https://");
    if !url_ok(&args.target) {
        return Err(WarmError::Usage(
            "--target: must be an http:// or https:// URL of the node's edge listener".into(),
        ));
    }
    if args.admin.as_deref().is_some_and(|a| !url_ok(a)) {
        return Err(WarmError::Usage(
            "--admin: must be an http:// or https:// URL of the node's admin listener".into(),
        ));
    }
    if args.concurrency == 0 {
        return Err(WarmError::Usage("--concurrency: must be at least 1".into()));
    }
    if !(args.rate >= 0.0 && args.rate.is_finite()) {
        return Err(WarmError::Usage("--rate: must be a number >= 0".into()));
    }
    if !(1..=100).contains(&args.default_quality) {
        return Err(WarmError::Usage(
            "--default-quality: must be in 1..=100".into(),
        ));
    }
    Ok(())
}

async fn warm(args: WarmArgs) -> Result<Report, WarmError> {
    validate(&args)?;
    let started = Instant::now();
    let http = client::client(args.timeout, args.concurrency, args.ca.as_deref())
        .map_err(|e| WarmError::Setup(format!("HTTP client: {e}")))?;
    let before = match &args.admin {
        Some(a) => client::scrape_hit_ratio(&http, a).await,
        None => None,
    };

    let (line_tx, mut line_rx) = mpsc::channel::<Input>(4096);
    spawn_reader(&args.input, args.follow, line_tx)?;

    let shared = Arc::new(Shared::default());
    let (work_tx, work_rx) = mpsc::unbounded_channel::<Item>();
    let mut dispatcher = tokio::spawn(dispatch(
        work_rx,
        http.clone(),
        args.clone(),
        shared.clone(),
    ));
    let mut work_tx = Some(work_tx);
    let mut planner = Planner::new(ParseOptions {
        max_dimension: args.max_dimension,
        default_quality: args.default_quality,
        default_format: match args.default_format.as_str() {
            "auto" => DefaultFormat::Auto,
            _ => DefaultFormat::Original,
        },
        // fit=contain without bg= keys on the server's transform.background; the default here.
        ..ParseOptions::default()
    });
    let flush = |planner: &mut Planner, tx: &Option<mpsc::UnboundedSender<Item>>| {
        let batch = planner.take();
        shared
            .planned
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        if let Some(tx) = tx {
            for item in batch {
                // The dispatcher only stops early on a budget; what it no longer takes is moot.
                let _ = tx.send(item);
            }
        }
    };

    let mut progress = Progress::new(args.progress_every);
    let mut batch_tick = tokio::time::interval(Duration::from_secs(1));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut input_done = false;
    let mut interrupted = false;
    loop {
        tokio::select! {
            biased;
            _ = &mut ctrl_c => {
                interrupted = true;
                dispatcher.abort();
                break;
            }
            _ = &mut dispatcher => break,
            msg = line_rx.recv(), if !input_done => match msg {
                Some(Input::Line(l)) => planner.add_line(&l),
                Some(Input::Idle) => flush(&mut planner, &work_tx),
                None => {
                    flush(&mut planner, &work_tx);
                    input_done = true;
                    // Closing the queue lets the dispatcher finish once it is drained.
                    work_tx = None;
                }
            },
            // Follow mode from a pipe never goes idle: plan what arrived each second.
            _ = batch_tick.tick(), if args.follow => flush(&mut planner, &work_tx),
            _ = progress.tick() => progress.show(&shared, &planner),
        }
    }
    progress.finish();
    let tally = shared.tally.lock().clone();
    // Every response this run got was one lookup on the node, on top of what it had counted.
    let counted =
        before.as_ref().map_or(0, |b| b.lookups) + tally.hits + tally.misses + tally.other_cache;
    let after = match &args.admin {
        Some(a) => {
            client::scrape_hit_ratio_counting(&http, a, counted, Duration::from_secs(2)).await
        }
        None => None,
    };
    Ok(Report {
        input: planner.stats.clone(),
        distinct: planner.distinct(),
        sent: shared.sent.load(Ordering::Relaxed),
        tally,
        elapsed: started.elapsed(),
        before,
        after,
        budget_reached: shared.budget_reached.load(Ordering::Relaxed),
        interrupted,
    })
}

/// Take planned items in order and request them, within the caps and the budget.
async fn dispatch(
    mut rx: mpsc::UnboundedReceiver<Item>,
    http: reqwest::Client,
    args: WarmArgs,
    shared: Arc<Shared>,
) {
    let base = args.target.trim_end_matches('/').to_string();
    let permits = Arc::new(Semaphore::new(args.concurrency));
    // A plain interval is the rate cap: one start per period, no bursts after a stall.
    let mut ticker = (args.rate > 0.0).then(|| {
        let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut inflight = JoinSet::new();
    while let Some(item) = rx.recv().await {
        if let Some(t) = ticker.as_mut() {
            t.tick().await;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        // Checked with a permit in hand, so the bytes of every finished request are counted.
        let sent = shared.sent.load(Ordering::Relaxed);
        let over_objects = args.max_objects.is_some_and(|m| sent >= m);
        let over_bytes = args
            .max_bytes
            .is_some_and(|m| shared.tally.lock().bytes >= m.as_u64());
        if over_objects || over_bytes {
            shared.budget_reached.store(true, Ordering::Relaxed);
            break;
        }
        while inflight.try_join_next().is_some() {}
        shared.sent.fetch_add(1, Ordering::Relaxed);
        let (http, shared, url) = (http.clone(), shared.clone(), format!("{base}{}", item.uri));
        inflight.spawn(async move {
            let t0 = Instant::now();
            let outcome = client::fetch(&http, &url, false).await;
            if let Err(e) = &outcome {
                tracing::debug!(url, "warm request failed: {e}");
            }
            shared.tally.lock().record(&outcome, t0.elapsed());
            drop(permit);
        });
    }
    while inflight.join_next().await.is_some() {}
}

/// Read lines on a thread of its own (files and stdin block) into `tx`.
fn spawn_reader(path: &Path, follow: bool, tx: mpsc::Sender<Input>) -> Result<(), WarmError> {
    let source: Box<dyn Read + Send> = if path == Path::new("-") {
        Box::new(std::io::stdin())
    } else {
        let f = File::open(path).map_err(|source| WarmError::Input {
            path: path.to_path_buf(),
            source,
        })?;
        Box::new(f)
    };
    let path = (path != Path::new("-")).then(|| path.to_path_buf());
    std::thread::Builder::new()
        .name("warm-reader".into())
        .spawn(move || {
            if let Err(e) = read_lines(source, path.as_deref(), follow, &tx) {
                tracing::error!("reading the input failed: {e}");
            }
        })
        .map_err(|e| WarmError::Setup(format!("reader thread: {e}")))?;
    Ok(())
}

fn read_lines(
    source: Box<dyn Read + Send>,
    path: Option<&Path>,
    follow: bool,
    tx: &mpsc::Sender<Input>,
) -> std::io::Result<()> {
    let inode = |p: &Path| std::fs::metadata(p).map(|m| (m.ino(), m.len()));
    let mut ino = path.and_then(|p| inode(p).ok()).map(|(i, _)| i);
    let mut reader = BufReader::with_capacity(1 << 16, source);
    let mut pos = 0u64;
    let mut line = Vec::new();
    let mut idle_sent = false;
    loop {
        let n = reader.read_until(b'\n', &mut line)?;
        pos += n as u64;
        if line.ends_with(b"\n") || (n == 0 && !follow) {
            if !line.is_empty() {
                let text = String::from_utf8_lossy(&line).into_owned();
                if tx.blocking_send(Input::Line(text)).is_err() {
                    return Ok(()); // the run is over
                }
            }
            line.clear();
            idle_sent = false;
            if n == 0 {
                return Ok(());
            }
            continue;
        }
        // At the end for now; a partial last line stays in `line` until its newline arrives.
        // A pipe at EOF is finished even in follow mode: nothing more can come.
        let Some(p) = path.filter(|_| follow) else {
            if n == 0 {
                if !line.is_empty() {
                    let text = String::from_utf8_lossy(&line).into_owned();
                    let _ = tx.blocking_send(Input::Line(text));
                }
                return Ok(());
            }
            continue;
        };
        if !idle_sent {
            if tx.blocking_send(Input::Idle).is_err() {
                return Ok(());
            }
            idle_sent = true;
        }
        if tx.is_closed() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
        // Rotated (a new file at the path) or truncated (copytruncate): start over.
        if let Ok((new_ino, len)) = inode(p) {
            if Some(new_ino) != ino || len < pos {
                if let Ok(f) = File::open(p) {
                    tracing::info!(path = %p.display(), "input rotated or truncated; reopening");
                    reader = BufReader::with_capacity(1 << 16, Box::new(f));
                    ino = Some(new_ino);
                    pos = 0;
                    line.clear();
                }
            }
        }
    }
}

/// A progress bar on a terminal; a plain line every few seconds otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    tick: tokio::time::Interval,
}

impl Progress {
    fn new(every: Duration) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(0);
            let style = indicatif::ProgressStyle::with_template(
                "{spinner} {elapsed_precise} [{wide_bar}] {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            bar
        });
        let period = if bar.is_some() {
            Duration::from_millis(200)
        } else {
            every.max(Duration::from_millis(100))
        };
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        Progress { bar, tick }
    }

    async fn tick(&mut self) {
        self.tick.tick().await;
    }

    fn show(&self, shared: &Shared, planner: &Planner) {
        let t = shared.tally.lock().clone();
        let planned = shared.planned.load(Ordering::Relaxed);
        let msg = format!(
            "hits {} misses {} errors {} {}",
            t.hits,
            t.misses,
            t.error_count(),
            ByteSize(t.bytes)
        );
        match &self.bar {
            Some(bar) => {
                bar.set_length(planned);
                bar.set_position(t.done);
                bar.set_message(msg);
            }
            None => eprintln!(
                "warm: {} lines, {} variants planned, {}/{} done, {msg}",
                planner.stats.lines,
                planned,
                t.done,
                shared.sent.load(Ordering::Relaxed)
            ),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
