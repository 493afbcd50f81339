//! Per-client miss budget (pingora-limits' `Rate`, a count-min sketch: fixed memory however
//! many clients there are).
//!
//! Only requests that go to the origin spend it: a client walking through a million sizes is
//! stopped with 429, while the same client's hits (and everyone else's) are served as usual.

use std::net::IpAddr;
use std::time::Duration;

use http::HeaderName;
use pingora_limits::rate::Rate;

/// The budget's window: counts reset every second.
const WINDOW: Duration = Duration::from_secs(1);

/// Misses per client IP per second.
pub struct MissLimiter {
    rate: Rate,
    per_second: isize,
    ip_header: Option<HeaderName>,
}

impl MissLimiter {
    /// A limiter allowing `per_second` misses per client, or `None` for 0 (no limit).
    /// `ip_header` names a header set by a trusted load balancer (empty: the peer address).
    pub fn new(per_second: u32, ip_header: &str) -> Option<MissLimiter> {
        (per_second > 0).then(|| MissLimiter {
            rate: Rate::new(WINDOW),
            per_second: isize::try_from(per_second).unwrap_or(isize::MAX),
            ip_header: HeaderName::from_bytes(ip_header.as_bytes()).ok(),
        })
    }

    /// The client of a request: the last address in the trusted header (the one the load
    /// balancer appended), else the peer address.
    pub fn client(&self, headers: &http::HeaderMap, peer: Option<IpAddr>) -> Option<IpAddr> {
        let last = self
            .ip_header
            .as_ref()
            .and_then(|h| headers.get_all(h).iter().next_back());
        Self::client_from(last.map(|v| v.as_bytes()), peer)
    }

    /// The header that names the client, if one is configured.
    pub fn ip_header(&self) -> Option<&HeaderName> {
        self.ip_header.as_ref()
    }

    /// [`Self::client`] from the header's last value (`None`: absent).
    pub fn client_from(last: Option<&[u8]>, peer: Option<IpAddr>) -> Option<IpAddr> {
        let from_header = last.and_then(|v| {
            let v = std::str::from_utf8(v).ok()?;
            v.rsplit(',').next()?.trim().parse().ok()
        });
        from_header.or(peer)
    }

    /// Count one miss for `client`; `false` when it is over its budget.
    pub fn allow(&self, client: IpAddr) -> bool {
        self.rate.observe(&client, 1) <= self.per_second
    }

    /// How long a refused client should wait.
    pub fn retry_after(&self) -> Duration {
        WINDOW
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_has_its_own_budget() {
        let l = MissLimiter::new(3, "").unwrap();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let allowed = (0..10).filter(|_| l.allow(a)).count();
        // A window boundary may fall inside the loop; never more than two windows' worth.
        assert!((3..=6).contains(&allowed), "{allowed}");
        assert!(l.allow(b), "another client is not affected");
        assert!(MissLimiter::new(0, "").is_none());
    }

    #[test]
    fn the_trusted_header_names_the_client() {
        let l = MissLimiter::new(1, "x-forwarded-for").unwrap();
        let mut h = http::HeaderMap::new();
        let peer: IpAddr = "10.1.1.1".parse().unwrap();
        assert_eq!(l.client(&h, Some(peer)), Some(peer));
        h.insert("x-forwarded-for", "1.2.3.4, 5.6.7.8".parse().unwrap());
        assert_eq!(l.client(&h, Some(peer)), "5.6.7.8".parse().ok());
        h.insert("x-forwarded-for", "garbage".parse().unwrap());
        assert_eq!(l.client(&h, Some(peer)), Some(peer));
        let direct = MissLimiter::new(1, "").unwrap();
        h.insert("x-forwarded-for", "1.2.3.4".parse().unwrap());
        assert_eq!(
            direct.client(&h, Some(peer)),
            Some(peer),
            "not trusted unless configured"
        );
    }
}
