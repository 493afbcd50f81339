//! Size policy: which output boxes the edge produces.
//!
//! Every distinct size is a separate cache object and a separate resize, so an open size
//! parameter lets anyone multiply the working set (and the CPU bill) by requesting
//! `size=401x`, `size=402x`, ... Two remedies, both on the box *after* `dpr`:
//! - an allow-list (`policy.sizes`): anything else is 400;
//! - a ladder (`policy.size_ladder`): each requested side is rounded up to the next step (the
//!   other side scales with it, keeping the requested aspect ratio), and sides above the top
//!   step are served at the top step. Browsers scale the slightly larger image down; the
//!   cache sees a handful of sizes per image instead of hundreds.

use crate::config::Config;
use crate::error::{Error, Result};
use crate::variant::{Resize, Variant};

/// A box of the allow-list: `WxH`, `Wx` or `xH`.
pub type SizeBox = (Option<u32>, Option<u32>);

/// Parse an allow-list entry.
pub fn parse_box(s: &str, max: u32) -> std::result::Result<SizeBox, String> {
    let (w, h) = s.split_once('x').ok_or("must be WxH, Wx or xH")?;
    let side = |v: &str| -> std::result::Result<Option<u32>, String> {
        if v.is_empty() {
            return Ok(None);
        }
        match v.parse::<u32>() {
            Ok(n) if (1..=max).contains(&n) => Ok(Some(n)),
            _ => Err(format!("each side must be 1..={max}")),
        }
    };
    let b = (side(w)?, side(h)?);
    if b == (None, None) {
        return Err("needs a width or a height".into());
    }
    Ok(b)
}

/// The configured policy.
#[derive(Debug, Clone, Default)]
pub enum SizePolicy {
    /// Any size within `limits.max_dimension`.
    #[default]
    Any,
    /// Only these boxes.
    Allow(Vec<SizeBox>),
    /// Round sides up to these steps (strictly increasing).
    Ladder(Vec<u32>),
}

impl SizePolicy {
    /// The policy of a validated config.
    pub fn from_config(cfg: &Config) -> SizePolicy {
        let p = &cfg.policy;
        if !p.sizes.is_empty() {
            let max = cfg.limits.max_dimension;
            SizePolicy::Allow(
                p.sizes
                    .iter()
                    .filter_map(|s| parse_box(s, max).ok())
                    .collect(),
            )
        } else if !p.size_ladder.is_empty() {
            SizePolicy::Ladder(p.size_ladder.clone())
        } else {
            SizePolicy::Any
        }
    }

    /// The variant to serve for a requested one, or 400 when its size is not allowed.
    pub fn apply(&self, mut variant: Variant) -> Result<Variant> {
        let Some(resize) = variant.transform.as_mut().and_then(|t| t.resize.as_mut()) else {
            return Ok(variant);
        };
        match self {
            SizePolicy::Any => {}
            SizePolicy::Allow(boxes) => {
                if !boxes.contains(&(resize.width, resize.height)) {
                    return Err(Error::bad_request(format!(
                        "size {}x{} is not one of the allowed sizes",
                        side(resize.width),
                        side(resize.height)
                    )));
                }
            }
            SizePolicy::Ladder(steps) => snap(resize, steps),
        }
        Ok(variant)
    }
}

fn side(v: Option<u32>) -> String {
    v.map_or(String::new(), |v| v.to_string())
}

/// The smallest step ≥ `v`, else the top step.
fn step_up(v: u32, steps: &[u32]) -> u32 {
    let top = steps.last().copied().unwrap_or(v);
    steps.iter().copied().find(|&s| s >= v).unwrap_or(top)
}

/// Round the box up along the ladder, keeping its aspect ratio: the width picks the step when
/// there is one (the common case for responsive images), else the height.
fn snap(r: &mut Resize, steps: &[u32]) {
    match (r.width, r.height) {
        (Some(w), h) => {
            let w2 = step_up(w, steps);
            r.width = Some(w2);
            r.height = h.map(|h| scale(h, w2, w));
        }
        (None, Some(h)) => r.height = Some(step_up(h, steps)),
        (None, None) => {}
    }
}

/// `v * num / den`, rounded, at least 1.
fn scale(v: u32, num: u32, den: u32) -> u32 {
    let x = (u64::from(v) * u64::from(num) + u64::from(den) / 2) / u64::from(den.max(1));
    u32::try_from(x).unwrap_or(u32::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::variant::ParseOptions;

    fn v(q: &str) -> Variant {
        Variant::parse("/image/a.jpg", Some(q), &ParseOptions::default()).unwrap()
    }

    fn size_of(v: &Variant) -> SizeBox {
        let r = v.transform.unwrap().resize.unwrap();
        (r.width, r.height)
    }

    #[test]
    fn the_ladder_rounds_up_and_keeps_the_aspect_ratio() {
        let p = SizePolicy::Ladder(vec![100, 200, 400, 800]);
        assert_eq!(
            size_of(&p.apply(v("size=150x")).unwrap()),
            (Some(200), None)
        );
        assert_eq!(
            size_of(&p.apply(v("size=200x")).unwrap()),
            (Some(200), None)
        );
        assert_eq!(
            size_of(&p.apply(v("size=300x150")).unwrap()),
            (Some(400), Some(200))
        );
        assert_eq!(size_of(&p.apply(v("size=x90")).unwrap()), (None, Some(100)));
        assert_eq!(
            size_of(&p.apply(v("size=2000x1000")).unwrap()),
            (Some(800), Some(400))
        );
        // dpr is folded in first: 150 CSS px at 2x is 300 output px → 400.
        assert_eq!(
            size_of(&p.apply(v("size=150x&dpr=2")).unwrap()),
            (Some(400), None)
        );
        // Equivalent requests land on one variant (one cache key).
        let a = p.apply(v("size=301x")).unwrap();
        let b = p.apply(v("size=399x")).unwrap();
        assert_eq!(a.cache_key(), b.cache_key());
        // Originals and format-only requests are untouched.
        assert_eq!(p.apply(v("format=webp")).unwrap(), v("format=webp"));
    }

    #[test]
    fn the_allow_list_refuses_other_sizes() {
        let p = SizePolicy::Allow(vec![(Some(100), Some(100)), (Some(400), None)]);
        assert!(p.apply(v("size=100x100")).is_ok());
        assert!(p.apply(v("size=400x")).is_ok());
        assert!(
            p.apply(v("size=50x&dpr=2")).is_err(),
            "100 wide, but not 100x100"
        );
        let e = p.apply(v("size=401x")).unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(e.to_string().contains("401x"), "{e}");
        assert!(p.apply(v("q=50")).is_ok());
    }

    #[test]
    fn boxes_parse_like_the_size_parameter() {
        assert_eq!(parse_box("100x200", 4096), Ok((Some(100), Some(200))));
        assert_eq!(parse_box("100x", 4096), Ok((Some(100), None)));
        assert_eq!(parse_box("x50", 4096), Ok((None, Some(50))));
        assert!(parse_box("x", 4096).is_err());
        assert!(parse_box("0x1", 4096).is_err());
        assert!(parse_box("5000x", 4096).is_err());
        assert!(parse_box("100", 4096).is_err());
    }
}
