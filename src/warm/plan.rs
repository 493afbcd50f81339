//! From log lines to a warming plan: canonical variants, deduplicated, most requested first.
//!
//! Every request goes through [`Variant::parse`] and [`Variant::cache_key`], the code the edge
//! keys its cache with, so two log lines dedup exactly when the server would serve them from
//! one cached object (parameter order, `utm_*` noise, `dpr` folding, defaults).

use std::collections::HashMap;

use crate::variant::{ParseOptions, Variant, IMAGE_PREFIX};

use super::logs::{Line, LineParser};

/// One variant to warm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The canonical request URI (`/image/{id}?size=…`), what the warmer requests.
    pub uri: String,
    /// How many log lines asked for this variant (at the time it was planned).
    pub count: u64,
}

/// What happened to the input lines.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct InputStats {
    /// Lines read.
    pub lines: u64,
    /// Lines no format could read, or whose image URL the server would refuse (400).
    pub bad: u64,
    /// Readable requests that are not worth warming: not under `/image/`, not GET/HEAD, or
    /// answered with an error status in the log.
    pub skipped: u64,
    /// Image requests that made it into the plan (before dedup).
    pub image_requests: u64,
}

struct Entry {
    uri: String,
    count: u64,
    first_seen: u64,
    planned: bool,
}

/// Counts requests per canonical variant and hands out the not-yet-planned ones by popularity.
pub struct Planner {
    parser: LineParser,
    opts: ParseOptions,
    entries: HashMap<String, Entry>,
    /// Keys seen since the last [`Planner::take`].
    fresh: Vec<String>,
    /// Input counters.
    pub stats: InputStats,
}

impl Planner {
    /// A planner canonicalizing with the server's parse options.
    pub fn new(opts: ParseOptions) -> Planner {
        Planner {
            parser: LineParser::default(),
            opts,
            entries: HashMap::new(),
            fresh: Vec::new(),
            stats: InputStats::default(),
        }
    }

    /// Account for one input line.
    pub fn add_line(&mut self, line: &str) {
        self.stats.lines += 1;
        let req = match self.parser.parse(line) {
            Ok(Line::Comment) => return,
            Ok(Line::Request(r)) => r,
            Err(e) => {
                self.stats.bad += 1;
                tracing::debug!(line, "bad line: {e}");
                return;
            }
        };
        let method_ok = req
            .method
            .as_deref()
            .is_none_or(|m| m == "GET" || m == "HEAD");
        let status_ok = req.status.is_none_or(|s| s < 400);
        if !method_ok || !status_ok || !req.path.starts_with(IMAGE_PREFIX) {
            self.stats.skipped += 1;
            return;
        }
        let variant = match Variant::parse(&req.path, req.query.as_deref(), &self.opts) {
            Ok(v) => v,
            Err(e) => {
                self.stats.bad += 1;
                tracing::debug!(line, "bad image URL: {e}");
                return;
            }
        };
        self.stats.image_requests += 1;
        let key = variant.cache_key();
        let order = self.stats.image_requests;
        let entry = self.entries.entry(key).or_insert_with_key(|k| {
            self.fresh.push(k.clone());
            Entry {
                uri: variant.canonical_uri(),
                count: 0,
                first_seen: order,
                planned: false,
            }
        });
        entry.count += 1;
    }

    /// Distinct variants seen so far.
    pub fn distinct(&self) -> usize {
        self.entries.len()
    }

    /// The variants seen since the last call and not planned yet, most requested first (ties:
    /// first seen first). Each variant is handed out once.
    pub fn take(&mut self) -> Vec<Item> {
        let mut picked: Vec<(u64, u64, String)> = Vec::with_capacity(self.fresh.len());
        for k in std::mem::take(&mut self.fresh) {
            if let Some(e) = self.entries.get_mut(&k).filter(|e| !e.planned) {
                e.planned = true;
                picked.push((e.count, e.first_seen, e.uri.clone()));
            }
        }
        picked.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        picked
            .into_iter()
            .map(|(count, _, uri)| Item { uri, count })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedups_by_cache_key_and_ranks_by_count() {
        let mut p = Planner::new(ParseOptions::default());
        for line in [
            "/image/a.jpg?size=100x200",
            "/image/b.jpg?size=10x",
            // The same variant as the first, four ways.
            "/image/a.jpg?q=80&size=100x200&utm_source=x",
            "https://cdn.example/image/a.jpg?size=50x100&dpr=2",
            r#"1.2.3.4 - - [x] "GET /image/a.jpg?fit=cover&size=100x200 HTTP/1.1" 200 1 "-" "ua""#,
            "/image/%61.jpg?size=100x200",
            "/image/b.jpg?size=10x&fit=fill", // one side: the fit folds out
            "/image/c.jpg",
        ] {
            p.add_line(line);
        }
        assert_eq!(p.distinct(), 3);
        let items = p.take();
        let uris: Vec<_> = items.iter().map(|i| (i.uri.as_str(), i.count)).collect();
        assert_eq!(
            uris,
            [
                ("/image/a.jpg?size=100x200&fit=cover&q=80", 5),
                ("/image/b.jpg?size=10x&fit=inside&q=80", 2),
                ("/image/c.jpg", 1),
            ]
        );
        assert_eq!(p.stats.image_requests, 8);
        assert!(p.take().is_empty(), "each variant is handed out once");
        p.add_line("/image/a.jpg?size=100x200");
        p.add_line("/image/d.jpg?size=1x1");
        let next: Vec<_> = p.take().into_iter().map(|i| i.uri).collect();
        assert_eq!(next, ["/image/d.jpg?size=1x1&fit=cover&q=80"]);
    }

    #[test]
    fn counts_bad_and_skipped_lines() {
        let mut p = Planner::new(ParseOptions::default());
        for line in [
            "garbage line",                                                    // bad: no format
            "/image/a.jpg?size=0x0", // bad: the server would answer 400
            "/image/../etc/passwd",  // bad: 400
            "/image/a.jpg?size=1x&size=2x", // bad: 400
            "/favicon.ico",          // skipped: not an image URL
            r#"1.2.3.4 - - [x] "POST /image/a.jpg HTTP/1.1" 405 0 "-" "-""#, // skipped: method
            r#"1.2.3.4 - - [x] "GET /image/gone.jpg HTTP/1.1" 404 0 "-" "-""#, // skipped: status
            "# comment",
            "",
            "/image/ok.jpg?size=1x",
        ] {
            p.add_line(line);
        }
        assert_eq!(
            p.stats,
            InputStats {
                lines: 10,
                bad: 4,
                skipped: 3,
                image_requests: 1
            }
        );
        assert_eq!(p.take().len(), 1);
    }
}
