//! What a warming run did: the running tally of responses and the final report.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use super::client::{FetchError, Fetched, HitRatio};
use super::plan::InputStats;

/// Responses so far.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Responses (or failures) received.
    pub done: u64,
    /// `X-Cache: HIT`.
    pub hits: u64,
    /// `X-Cache: MISS`.
    pub misses: u64,
    /// Any other `X-Cache` (STALE, EXPIRED, REVALIDATED) or none.
    pub other_cache: u64,
    /// Failures by label: `HTTP 404`, `connect`, `timeout`, `transport`.
    pub errors: BTreeMap<String, u64>,
    /// Body bytes received.
    pub bytes: u64,
    /// Latency of every response, in microseconds.
    latencies_us: Vec<u64>,
}

impl Tally {
    /// Account for one request's outcome.
    pub fn record(&mut self, outcome: &Result<Fetched, FetchError>, latency: Duration) {
        self.done += 1;
        self.latencies_us
            .push(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
        match outcome {
            Ok(f) => {
                self.bytes += f.bytes;
                if !(200..300).contains(&f.status) && f.status != 304 {
                    *self.errors.entry(format!("HTTP {}", f.status)).or_default() += 1;
                }
                match f.x_cache.as_deref() {
                    Some("HIT") => self.hits += 1,
                    Some("MISS") => self.misses += 1,
                    _ => self.other_cache += 1,
                }
            }
            Err(e) => *self.errors.entry(e.to_string()).or_default() += 1,
        }
    }

    /// Failed requests, all kinds.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The `p`-th percentile latency (0..=100), nearest rank.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        if self.latencies_us.is_empty() {
            return None;
        }
        let mut v = self.latencies_us.clone();
        v.sort_unstable();
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        Some(Duration::from_micros(v[rank.clamp(1, v.len()) - 1]))
    }
}

/// The final report.
#[derive(Debug, Clone)]
pub struct Report {
    /// What the input held.
    pub input: InputStats,
    /// Distinct canonical variants in the input.
    pub distinct: usize,
    /// Requests started (the budget may stop short of `distinct`).
    pub sent: u64,
    /// The responses.
    pub tally: Tally,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// The target's hit ratio before the run (`None`: no `--admin`, or unreadable).
    pub before: Option<HitRatio>,
    /// The target's hit ratio after the run.
    pub after: Option<HitRatio>,
    /// Stopped by a budget (`--max-objects` / `--max-bytes`).
    pub budget_reached: bool,
    /// Stopped by Ctrl-C.
    pub interrupted: bool,
}

fn ms(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| {
        format!("{:.1} ms", d.as_secs_f64() * 1000.0)
    })
}

fn ratio(r: Option<HitRatio>) -> String {
    match r {
        None => "n/a".into(),
        Some(r) => match r.ratio() {
            Some(x) => format!("{:.1}% ({} of {} lookups)", x * 100.0, r.hits, r.lookups),
            None => "n/a (no lookups yet)".into(),
        },
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.tally;
        let secs = self.elapsed.as_secs_f64();
        let stopped = match (self.interrupted, self.budget_reached) {
            (true, _) => "interrupted (Ctrl-C); the report covers the responses received",
            (false, true) => "budget reached",
            _ => "input done",
        };
        writeln!(f, "imgedge warm report")?;
        writeln!(f, "  stopped:            {stopped}")?;
        writeln!(
            f,
            "  lines:              {} ({} image requests, {} skipped, bad lines: {})",
            self.input.lines, self.input.image_requests, self.input.skipped, self.input.bad
        )?;
        writeln!(f, "  distinct variants:  {}", self.distinct)?;
        writeln!(
            f,
            "  requests sent:      {} in {secs:.1} s ({:.1}/s)",
            self.sent,
            if secs > 0.0 {
                t.done as f64 / secs
            } else {
                0.0
            }
        )?;
        writeln!(
            f,
            "  responses:          {} (hits: {}, misses: {}, other: {})",
            t.done, t.hits, t.misses, t.other_cache
        )?;
        let by_kind: Vec<String> = t.errors.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        writeln!(
            f,
            "  errors:             {}{}",
            t.error_count(),
            if by_kind.is_empty() {
                String::new()
            } else {
                format!(" ({})", by_kind.join(", "))
            }
        )?;
        writeln!(
            f,
            "  bytes:              {} ({})",
            t.bytes,
            bytesize::ByteSize(t.bytes)
        )?;
        writeln!(
            f,
            "  latency:            p50 {}, p99 {}",
            ms(t.percentile(50.0)),
            ms(t.percentile(99.0))
        )?;
        writeln!(f, "  hit ratio before:   {}", ratio(self.before))?;
        write!(f, "  hit ratio after:    {}", ratio(self.after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_classifies_and_ranks() {
        let mut t = Tally::default();
        let ok = |x: &str| {
            Ok(Fetched {
                status: 200,
                x_cache: Some(x.into()),
                bytes: 10,
            })
        };
        for i in 1..=100 {
            t.record(
                &ok(if i % 4 == 0 { "HIT" } else { "MISS" }),
                Duration::from_millis(i),
            );
        }
        t.record(
            &Ok(Fetched {
                status: 404,
                x_cache: Some("MISS".into()),
                bytes: 5,
            }),
            Duration::from_millis(1),
        );
        t.record(&Err(FetchError::Timeout), Duration::from_millis(1000));
        assert_eq!((t.done, t.hits, t.misses), (102, 25, 76));
        assert_eq!(t.bytes, 1005);
        assert_eq!(t.error_count(), 2);
        assert_eq!(t.errors.get("HTTP 404"), Some(&1));
        assert_eq!(t.errors.get("timeout"), Some(&1));
        assert_eq!(t.percentile(50.0), Some(Duration::from_millis(50)));
        assert_eq!(t.percentile(99.0), Some(Duration::from_millis(100)));
        assert_eq!(Tally::default().percentile(50.0), None);
    }

    #[test]
    fn report_names_every_figure() {
        let r = Report {
            input: InputStats {
                lines: 10,
                bad: 2,
                skipped: 1,
                image_requests: 7,
            },
            distinct: 3,
            sent: 3,
            tally: Tally::default(),
            elapsed: Duration::from_secs(1),
            before: Some(HitRatio {
                hits: 1,
                lookups: 4,
            }),
            after: None,
            budget_reached: false,
            interrupted: true,
        };
        let s = r.to_string();
        for want in [
            "bad lines: 2",
            "distinct variants:  3",
            "requests sent:      3",
            "hit ratio before:   25.0% (1 of 4 lookups)",
            "hit ratio after:    n/a",
            "interrupted",
        ] {
            assert!(s.contains(want), "{want}: {s}");
        }
    }
}
