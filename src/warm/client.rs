//! The HTTP side of warming: the shared client ([`crate::client`]) and a scrape of a node's
//! hit ratio from its admin `/metrics`.

pub use crate::client::{client, fetch, ClientError, FetchError, Fetched, MIRROR_HEADER};

/// A node's cumulative hit ratio, from `imgedge_requests_total{status,cache}`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HitRatio {
    /// Responses served from the cache as fresh hits.
    pub hits: u64,
    /// Responses that looked the object up in the cache: hits, misses, stale, expired,
    /// revalidated (requests refused before the cache, such as 400s, are not counted).
    pub lookups: u64,
}

impl HitRatio {
    /// Hits over lookups, or `None` before the first lookup.
    pub fn ratio(&self) -> Option<f64> {
        (self.lookups > 0).then(|| self.hits as f64 / self.lookups as f64)
    }

    /// Parse Prometheus text.
    pub fn from_metrics(text: &str) -> HitRatio {
        let mut r = HitRatio {
            hits: 0,
            lookups: 0,
        };
        for line in text.lines() {
            let Some(rest) = line.strip_prefix("imgedge_requests_total{") else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once("} ") else {
                continue;
            };
            // Counters are integers, rendered without a fraction.
            let Ok(n) = value.trim().parse::<f64>() else {
                continue;
            };
            let n = n as u64;
            let cache = labels
                .split(',')
                .find_map(|kv| kv.strip_prefix("cache=\""))
                .map(|v| v.trim_end_matches('"'));
            match cache {
                Some("hit") => {
                    r.hits += n;
                    r.lookups += n;
                }
                Some("miss" | "stale" | "expired" | "revalidated") => r.lookups += n,
                _ => {}
            }
        }
        r
    }
}

/// Scrape `admin`'s `/metrics`; `None` (with a warning) when it cannot be read.
pub async fn scrape_hit_ratio(client: &reqwest::Client, admin: &str) -> Option<HitRatio> {
    let url = format!("{}/metrics", admin.trim_end_matches('/'));
    let text = async {
        let resp = client.get(&url).send().await?.error_for_status()?;
        resp.text().await
    }
    .await;
    match text {
        Ok(t) => Some(HitRatio::from_metrics(&t)),
        Err(e) => {
            tracing::warn!("cannot read {url}: {e}");
            None
        }
    }
}

/// [`scrape_hit_ratio`] once the node has counted at least `lookups`. The edge counts a
/// request in its logging phase, after the response has gone out, so a scrape right after the
/// last response can miss it; wait for the count (up to `wait`) instead of reporting short.
pub async fn scrape_hit_ratio_counting(
    client: &reqwest::Client,
    admin: &str,
    lookups: u64,
    wait: std::time::Duration,
) -> Option<HitRatio> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let ratio = scrape_hit_ratio(client, admin).await?;
        if ratio.lookups >= lookups || tokio::time::Instant::now() >= deadline {
            return Some(ratio);
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_ratio_from_metrics_text() {
        let text = "# HELP imgedge_requests_total Edge responses.\n\
# TYPE imgedge_requests_total counter\n\
imgedge_requests_total{cache=\"hit\",status=\"200\"} 30\n\
imgedge_requests_total{cache=\"hit\",status=\"304\"} 10\n\
imgedge_requests_total{cache=\"miss\",status=\"200\"} 50\n\
imgedge_requests_total{cache=\"stale\",status=\"200\"} 5\n\
imgedge_requests_total{cache=\"expired\",status=\"200\"} 5\n\
imgedge_requests_total{cache=\"none\",status=\"400\"} 1000\n\
imgedge_origin_requests_total{status=\"200\"} 50\n";
        let r = HitRatio::from_metrics(text);
        assert_eq!((r.hits, r.lookups), (40, 100));
        assert_eq!(r.ratio(), Some(0.4));
        assert_eq!(HitRatio::from_metrics("").ratio(), None);
    }
}
