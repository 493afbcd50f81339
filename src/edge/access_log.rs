//! The access log: one line per request, JSON lines or NCSA combined.
//!
//! Lines are formatted on the request's thread and handed to a writer thread through a bounded
//! queue; a full queue drops the line (and counts it) rather than slow a response down, and a
//! slow disk never reaches the request path. The writer flushes whenever the queue runs dry, so
//! lines appear within milliseconds under light load and in large writes under heavy load.
//!
//! Fields: time, client, method, URI, protocol, status, bytes sent, cache status, total time,
//! and for misses the origin's own timings (source fetch, resize) taken from the origin's
//! `Server-Timing` header; plus referer and user agent.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::sync::Once;
use std::time::{Duration, SystemTime};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use parking_lot::Mutex;
use serde::Serialize;

use crate::config::{AccessLogConfig, AccessLogFormat};
use crate::metrics::metrics;

/// Everything one line records.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    /// RFC 3339 time the request started, UTC, milliseconds.
    pub time: String,
    /// Client address (peer, or the trusted header's).
    pub client: String,
    /// Method.
    pub method: &'a str,
    /// Request target as received.
    pub uri: &'a str,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub protocol: &'static str,
    /// Status sent (0: none, the client went away first).
    pub status: u16,
    /// Body bytes sent.
    pub bytes: usize,
    /// `HIT`, `MISS`, `STALE`, ... as in `X-Cache`.
    pub cache: &'static str,
    /// Total time, milliseconds.
    pub ms: f64,
    /// Source fetch time on a miss, milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fetch_ms: Option<f64>,
    /// Resize (decode, resize, encode) time on a miss, milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resize_ms: Option<f64>,
    /// `Referer`.
    pub referer: &'a str,
    /// `User-Agent`.
    pub user_agent: &'a str,
    /// Why the request failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Entry<'_> {
    /// The line in a format, without the newline.
    pub fn format(&self, format: AccessLogFormat) -> String {
        match format {
            AccessLogFormat::Json => serde_json::to_string(self).unwrap_or_default(),
            AccessLogFormat::Combined | AccessLogFormat::Off => self.combined(),
        }
    }

    fn combined(&self) -> String {
        let q = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.3}", v / 1000.0));
        let bytes = if self.bytes == 0 {
            "-".to_string()
        } else {
            self.bytes.to_string()
        };
        format!(
            "{} - - [{}] \"{} {} {}\" {} {} \"{}\" \"{}\" cache={} rt={:.3} fetch={} resize={}",
            self.client,
            clf_time(&self.time),
            self.method,
            q(self.uri),
            self.protocol,
            self.status,
            bytes,
            if self.referer.is_empty() {
                "-".to_string()
            } else {
                q(self.referer)
            },
            if self.user_agent.is_empty() {
                "-".to_string()
            } else {
                q(self.user_agent)
            },
            self.cache,
            self.ms / 1000.0,
            opt(self.fetch_ms),
            opt(self.resize_ms),
        )
    }
}

/// RFC 3339 with milliseconds, UTC.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// `2026-11-22T08:01:02.345Z` → `22/Nov/2026:08:01:02 +0000` (the common log format's clock).
fn clf_time(rfc: &str) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = rfc
        .get(5..7)
        .and_then(|m| m.parse::<usize>().ok())
        .and_then(|m| MONTHS.get(m.wrapping_sub(1)))
        .copied()
        .unwrap_or("Jan");
    match (rfc.get(0..4), rfc.get(8..10), rfc.get(11..19)) {
        (Some(y), Some(d), Some(hms)) => format!("{d}/{month}/{y}:{hms} +0000"),
        _ => rfc.to_string(),
    }
}

type Writer = (Receiver<String>, Box<dyn Write + Send>);

/// The request side: format and enqueue.
pub struct AccessLog {
    format: AccessLogFormat,
    tx: Sender<String>,
    // The writer thread starts with the first line: a thread started before `serve -d` forks
    // would not exist in the daemon.
    writer: Mutex<Option<Writer>>,
    started: Once,
}

impl AccessLog {
    /// Start the writer thread for a config; `None` when the log is off.
    pub fn start(cfg: &AccessLogConfig) -> std::io::Result<Option<AccessLog>> {
        if cfg.format == AccessLogFormat::Off {
            return Ok(None);
        }
        let out: Box<dyn Write + Send> = if cfg.path.as_os_str().is_empty() {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&cfg.path)?,
            )
        };
        let (tx, rx) = bounded(cfg.queue);
        Ok(Some(AccessLog {
            format: cfg.format,
            tx,
            writer: Mutex::new(Some((rx, out))),
            started: Once::new(),
        }))
    }

    /// Log one request. Never blocks.
    pub fn log(&self, entry: &Entry<'_>) {
        self.started.call_once(|| {
            if let Some((rx, out)) = self.writer.lock().take() {
                let spawned = std::thread::Builder::new()
                    .name("access-log".into())
                    .spawn(move || write_lines(rx, out));
                if let Err(e) = spawned {
                    tracing::error!("access log writer thread failed to start: {e}");
                }
            }
        });
        match self.tx.try_send(entry.format(self.format)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                metrics().access_log_dropped.inc()
            }
        }
    }
}

fn write_lines(rx: Receiver<String>, out: Box<dyn Write + Send>) {
    let mut out = BufWriter::with_capacity(64 * 1024, out);
    let mut failed = false;
    while let Ok(line) = rx.recv() {
        let mut batch = Some(line);
        while let Some(line) = batch {
            if let Err(e) = writeln!(out, "{line}") {
                if !failed {
                    tracing::error!("access log write failed: {e}");
                }
                failed = true;
            }
            batch = rx.try_recv().ok();
        }
        if let Err(e) = out.flush() {
            if !failed {
                tracing::error!("access log flush failed: {e}");
            }
            failed = true;
        }
    }
}

/// Milliseconds of a duration, for the log.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            time: "2026-11-22T08:01:02.345Z".into(),
            client: "10.0.0.1".into(),
            method: "GET",
            uri: "/image/a.jpg?size=100x",
            protocol: "HTTP/1.1",
            status: 200,
            bytes: 1234,
            cache: "MISS",
            ms: 52.0,
            fetch_ms: Some(12.0),
            resize_ms: Some(30.25),
            referer: "",
            user_agent: "curl/8 \"x\"",
            error: None,
        }
    }

    #[test]
    fn json_lines_carry_every_field() {
        let line = entry().format(AccessLogFormat::Json);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["status"], 200);
        assert_eq!(v["cache"], "MISS");
        assert_eq!(v["uri"], "/image/a.jpg?size=100x");
        assert_eq!(v["resize_ms"], 30.25);
        assert_eq!(v["user_agent"], "curl/8 \"x\"");
        assert!(v.get("error").is_none());
    }

    #[test]
    fn combined_lines_are_ncsa_with_fields_appended() {
        let line = entry().format(AccessLogFormat::Combined);
        assert_eq!(
            line,
            "10.0.0.1 - - [22/Nov/2026:08:01:02 +0000] \"GET /image/a.jpg?size=100x HTTP/1.1\" \
             200 1234 \"-\" \"curl/8 \\\"x\\\"\" cache=MISS rt=0.052 fetch=0.012 resize=0.030"
        );
    }
}
