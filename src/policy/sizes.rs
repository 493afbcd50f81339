//! Size policy: which output boxes the edge produces, and with them every parameter that
//! multiplies the variants of an id.
//!
//! Every distinct size is a separate cache object and a separate resize, so an open size
//! parameter lets anyone multiply the working set (and the CPU bill) by requesting
//! `size=401x`, `size=402x`, ... Two remedies, both on the box *after* `dpr`:
//! - an allow-list (`policy.sizes`): anything else is 400;
//! - a ladder (`policy.size_ladder`): sides are rounded up to the next step ([`snap`] says how
//!   the shape is kept), and sides above the top step are served at the top step. Browsers
//!   scale the slightly larger image down; the cache sees a bounded set of sizes per image.
//!
//! Under either, `q`, `bg` and re-encodes without `size` are bounded too, so
//! [`SizePolicy::max_objects`] is a real bound on the objects of one id.

use crate::config::Config;
use crate::error::{Error, Result};
pub use crate::variant::parse_box;
use crate::variant::{parse_rgb, Fit, Resize, Variant};

/// A box of the allow-list: `WxH`, `Wx` or `xH`.
pub type SizeBox = (Option<u32>, Option<u32>);

/// Which boxes are produced.
#[derive(Debug, Clone, Default)]
pub enum Boxes {
    /// Any size within `limits.max_dimension`.
    #[default]
    Any,
    /// Only these boxes.
    Allow(Vec<SizeBox>),
    /// Round sides up to these steps (strictly increasing, the top one at most
    /// `max_dimension`); no side of a result exceeds `max_dimension`.
    Ladder {
        /// The steps.
        steps: Vec<u32>,
        /// `limits.max_dimension`.
        max_dimension: u32,
    },
}

/// The configured policy. With [`Boxes::Any`] nothing is changed or refused. With an
/// allow-list or a ladder, every parameter that multiplies the variants of an id is bounded
/// too (issue 13): `q` snaps to the nearest of `qualities`, `bg` must be one of `backgrounds`,
/// and a re-encode without `size` is served at the ladder's top step (`fit=inside`, never
/// enlarged) or refused by an allow-list. [`SizePolicy::max_objects`] is the resulting bound.
#[derive(Debug, Clone, Default)]
pub struct SizePolicy {
    /// The boxes.
    pub boxes: Boxes,
    /// Qualities a lossy output may have (strictly increasing); never empty under a policy.
    pub qualities: Vec<u8>,
    /// Padding colours `fit=contain` may use; never empty under a policy.
    pub backgrounds: Vec<[u8; 3]>,
}

/// Aspect ratios of two-sided ladder boxes are rounded to this many steps per octave (a
/// ratio moves by at most 2^(1/16) - 1 = 4.4%), so one step has a bounded number of shapes.
const RATIO_STEPS_PER_OCTAVE: f64 = 8.0;

impl SizePolicy {
    /// The policy of a validated config.
    pub fn from_config(cfg: &Config) -> SizePolicy {
        let p = &cfg.policy;
        let boxes = if !p.sizes.is_empty() {
            let max = cfg.limits.max_dimension;
            Boxes::Allow(
                p.sizes
                    .iter()
                    .filter_map(|s| parse_box(s, max).ok())
                    .collect(),
            )
        } else if !p.size_ladder.is_empty() {
            Boxes::Ladder {
                steps: p.size_ladder.clone(),
                max_dimension: cfg.limits.max_dimension,
            }
        } else {
            Boxes::Any
        };
        let qualities = if p.qualities.is_empty() {
            vec![cfg.transform.default_quality]
        } else {
            p.qualities.clone()
        };
        let backgrounds = if p.backgrounds.is_empty() {
            vec![cfg.transform.background_rgb()]
        } else {
            p.backgrounds.iter().filter_map(|b| parse_rgb(b)).collect()
        };
        SizePolicy {
            boxes,
            qualities,
            backgrounds,
        }
    }

    /// A ladder with the default quality (80) and background (white) only.
    pub fn ladder(steps: Vec<u32>, max_dimension: u32) -> SizePolicy {
        SizePolicy {
            boxes: Boxes::Ladder {
                steps,
                max_dimension,
            },
            qualities: vec![80],
            backgrounds: vec![[255, 255, 255]],
        }
    }

    /// An allow-list with the default quality (80) and background (white) only.
    pub fn allow(boxes: Vec<SizeBox>) -> SizePolicy {
        SizePolicy {
            boxes: Boxes::Allow(boxes),
            qualities: vec![80],
            backgrounds: vec![[255, 255, 255]],
        }
    }

    /// The variant to serve for a requested one, or 400 when the policy refuses it.
    pub fn apply(&self, mut variant: Variant) -> Result<Variant> {
        if matches!(self.boxes, Boxes::Any) {
            return Ok(variant);
        }
        let Some(t) = variant.transform.as_mut() else {
            return Ok(variant); // the original's bytes: one object
        };
        if let Some(q) = t.quality.as_mut() {
            *q = nearest(*q, &self.qualities);
        }
        if t.resize.is_none() {
            // A re-encode at the original's size: at the ladder's top step instead.
            let Boxes::Ladder { steps, .. } = &self.boxes else {
                return Err(Error::bad_request(
                    "a re-encode needs one of the allowed sizes",
                ));
            };
            let top = steps.last().copied().unwrap_or(1);
            t.resize = Some(Resize {
                width: Some(top),
                height: Some(top),
                fit: Fit::Inside,
            });
        }
        let Some(resize) = t.resize.as_mut() else {
            return Ok(variant);
        };
        if let Fit::Contain(bg) = resize.fit {
            if !self.backgrounds.contains(&bg) {
                return Err(Error::bad_request(format!(
                    "bg {} is not one of the allowed backgrounds",
                    hex(bg)
                )));
            }
        }
        match &self.boxes {
            Boxes::Any => {}
            Boxes::Allow(boxes) => {
                if !boxes.contains(&(resize.width, resize.height)) {
                    return Err(Error::bad_request(format!(
                        "size {}x{} is not one of the allowed sizes",
                        side(resize.width),
                        side(resize.height)
                    )));
                }
            }
            Boxes::Ladder {
                steps,
                max_dimension,
            } => snap(resize, steps, *max_dimension),
        }
        Ok(variant)
    }

    /// The most objects one id can have in the cache under this policy (`None` without one):
    /// the original, plus every box the policy can produce, times its fits (one for a one-sided
    /// box; cover, inside, fill and contain with each background for a two-sided one), times
    /// the encodings (auto, JPEG and WebP at each quality; PNG).
    pub fn max_objects(&self) -> Option<u64> {
        let fits_two_sided = 3 + self.backgrounds.len() as u64;
        let boxes = match &self.boxes {
            Boxes::Any => return None,
            Boxes::Allow(boxes) => boxes
                .iter()
                .map(|b| match b {
                    (Some(_), Some(_)) => fits_two_sided,
                    _ => 1,
                })
                .sum(),
            Boxes::Ladder { steps, .. } => {
                let n = steps.len() as u64;
                // One-sided: a width or a height step. Inside: a step per side. Cover, fill
                // and contain: the longer side's step and a rounded ratio.
                let shaped: u64 = steps.iter().map(|&s| shapes(s).len() as u64).sum();
                2 * n + n * n + shaped * (fits_two_sided - 1)
            }
        };
        // Per quality: the original's format (auto), JPEG, WebP, AVIF and format=auto's three
        // Accept classes; PNG once.
        let encodings = 7 * self.qualities.len() as u64 + 1;
        Some(1 + boxes * encodings)
    }
}

/// The nearest of `steps` (the lower one on a tie); `q` itself when `steps` is empty.
fn nearest(q: u8, steps: &[u8]) -> u8 {
    steps
        .iter()
        .copied()
        .min_by_key(|&s| (s.abs_diff(q), s))
        .unwrap_or(q)
}

fn hex(c: [u8; 3]) -> String {
    format!("{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

fn side(v: Option<u32>) -> String {
    v.map_or(String::new(), |v| v.to_string())
}

/// The smallest step ≥ `v`, else the top step.
fn step_up(v: u32, steps: &[u32]) -> u32 {
    let top = steps.last().copied().unwrap_or(v);
    steps.iter().copied().find(|&s| s >= v).unwrap_or(top)
}

/// Round the box up along the ladder.
///
/// - One side: it is rounded up to a step.
/// - `fit=inside`, two sides: each is rounded up to a step (the image fits a slightly larger
///   box; its shape is its own).
/// - Other fits, two sides: the shape matters. The longer side is rounded up to a step and
///   the aspect ratio to [`RATIO_STEPS_PER_OCTAVE`] steps per octave; the shorter side follows.
///
/// No side exceeds the top step, so none exceeds `max` (a tall box whose width was rounded up
/// once came out taller than any request may be, and the origin refused it: issue 13).
fn snap(r: &mut Resize, steps: &[u32], max: u32) {
    match (r.width, r.height) {
        (Some(w), None) => r.width = Some(step_up(w, steps)),
        (None, Some(h)) => r.height = Some(step_up(h, steps)),
        (Some(w), Some(h)) if r.fit == Fit::Inside => {
            (r.width, r.height) = (Some(step_up(w, steps)), Some(step_up(h, steps)));
        }
        (Some(w), Some(h)) => {
            let (long, short) = (w.max(h), w.min(h));
            let long2 = step_up(long, steps);
            let short2 = shorter_side(long2, short as f64 / long as f64).min(max);
            (r.width, r.height) = if w >= h {
                (Some(long2), Some(short2))
            } else {
                (Some(short2), Some(long2))
            };
        }
        (None, None) => {}
    }
}

/// The shorter side for a longer side of `long` and a ratio `short/long` in (0, 1], the ratio
/// rounded to [`RATIO_STEPS_PER_OCTAVE`] steps per octave.
fn shorter_side(long: u32, ratio: f64) -> u32 {
    let k = (ratio.log2() * RATIO_STEPS_PER_OCTAVE).round().min(0.0);
    ratio_side(long, k)
}

fn ratio_side(long: u32, k: f64) -> u32 {
    ((long as f64 * (k / RATIO_STEPS_PER_OCTAVE).exp2()).round() as u32).clamp(1, long)
}

/// The (longer, shorter) pairs a step can produce with a rounded ratio; each is two boxes
/// (wide and tall) except the square.
fn shapes(step: u32) -> std::collections::BTreeSet<(u32, u32)> {
    let mut out = std::collections::BTreeSet::new();
    let mut k = 0.0;
    loop {
        let short = ratio_side(step, k);
        out.insert((step, short));
        out.insert((short, step));
        if short == 1 {
            return out;
        }
        k -= 1.0;
    }
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
        let p = SizePolicy::ladder(vec![100, 200, 400, 800], 4096);
        let snapped = |q: &str| size_of(&p.apply(v(q)).unwrap());
        assert_eq!(snapped("size=150x"), (Some(200), None));
        assert_eq!(snapped("size=200x"), (Some(200), None));
        assert_eq!(snapped("size=300x150"), (Some(400), Some(200)));
        assert_eq!(snapped("size=150x300"), (Some(200), Some(400)));
        assert_eq!(snapped("size=x90"), (None, Some(100)));
        assert_eq!(snapped("size=2000x1000"), (Some(800), Some(400)));
        // The ratio is rounded to 1/8 octave: 3:2 (0.667) becomes 0.648.
        assert_eq!(snapped("size=150x100"), (Some(200), Some(130)));
        // Inside: each side to a step.
        assert_eq!(snapped("size=150x90&fit=inside"), (Some(200), Some(100)));
        // dpr is folded in first: 150 CSS px at 2x is 300 output px → 400.
        assert_eq!(snapped("size=150x&dpr=2"), (Some(400), None));
        // Equivalent requests land on one variant (one cache key).
        let a = p.apply(v("size=301x")).unwrap();
        let b = p.apply(v("size=399x")).unwrap();
        assert_eq!(a.cache_key(), b.cache_key());
        let a = p.apply(v("size=301x200")).unwrap();
        let b = p.apply(v("size=303x201")).unwrap();
        assert_eq!(a.cache_key(), b.cache_key());
        // Originals are untouched.
        assert_eq!(p.apply(v("")).unwrap(), v(""));
    }

    #[test]
    fn the_ladder_never_makes_a_side_exceed_max_dimension() {
        let p = SizePolicy::ladder(vec![64, 128, 256, 512, 1024, 2048], 4096);
        for q in [
            "size=65x4096",
            "size=65x4000&fit=inside",
            "size=1x4096",
            "size=4096x1",
            "size=4096x4096",
            "size=2049x4096&fit=fill",
        ] {
            let snapped = p.apply(v(q)).unwrap();
            let (w, h) = size_of(&snapped);
            let (w, h) = (w.unwrap(), h.unwrap());
            assert!(
                (1..=2048).contains(&w) && (1..=2048).contains(&h),
                "{q}: {w}x{h}"
            );
            // The canonical URI parses again (what the origin does with it).
            let uri = snapped.canonical_uri();
            let (path, query) = uri.split_once('?').unwrap();
            assert!(
                Variant::parse(path, Some(query), &ParseOptions::default()).is_ok(),
                "{q} → {uri}"
            );
        }
        assert_eq!(
            size_of(&p.apply(v("size=65x4000&fit=inside")).unwrap()),
            (Some(128), Some(2048))
        );
        assert_eq!(
            size_of(&p.apply(v("size=65x4096")).unwrap()),
            (Some(32), Some(2048))
        );
    }

    #[test]
    fn a_policy_bounds_quality_background_and_full_size_reencodes() {
        let p = SizePolicy {
            qualities: vec![50, 80],
            ..SizePolicy::ladder(vec![100, 200], 4096)
        };
        let q = |s: &str| p.apply(v(s)).unwrap().transform.unwrap().quality;
        assert_eq!(q("size=100x&q=1"), Some(50));
        assert_eq!(q("size=100x&q=66"), Some(80));
        assert_eq!(q("size=100x&q=100"), Some(80));
        assert_eq!(q("size=100x&format=png"), None);
        // bg: only the allowed ones.
        assert!(p.apply(v("size=100x100&fit=contain")).is_ok());
        assert!(p.apply(v("size=100x100&fit=contain&bg=ffffff")).is_ok());
        let e = p
            .apply(v("size=100x100&fit=contain&bg=123456"))
            .unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(e.to_string().contains("123456"), "{e}");
        // A re-encode without size is served at the top step, inside (never enlarged).
        let r = p.apply(v("format=png")).unwrap().transform.unwrap().resize;
        assert_eq!(
            r,
            Some(Resize {
                width: Some(200),
                height: Some(200),
                fit: Fit::Inside
            })
        );
        // Without a policy nothing changes.
        let any = SizePolicy::default();
        for s in ["q=1", "format=png", "size=100x100&fit=contain&bg=123456"] {
            assert_eq!(any.apply(v(s)).unwrap(), v(s), "{s}");
        }
        assert_eq!(any.max_objects(), None);
    }

    /// Every request the policy admits lands on one of at most `max_objects` variants: all
    /// sizes (both orders), fits, formats, qualities and a few colours, counted.
    #[test]
    fn max_objects_bounds_every_admitted_variant() {
        for p in [
            SizePolicy {
                qualities: vec![60, 85],
                ..SizePolicy::ladder(vec![16, 32, 64], 128)
            },
            SizePolicy::allow(vec![
                (Some(20), Some(30)),
                (Some(40), None),
                (None, Some(8)),
            ]),
        ] {
            let opts = ParseOptions {
                max_dimension: 128,
                ..ParseOptions::default()
            };
            let mut keys = std::collections::HashSet::new();
            let mut queries = vec![String::new()];
            for f in [
                "",
                "&format=png",
                "&format=webp",
                "&format=jpeg",
                "&format=avif",
                "&format=auto",
                "&format=auto&accept=avif",
                "&format=auto&accept=webp",
            ] {
                for q in ["", "&q=1", "&q=70", "&q=100"] {
                    queries.push(format!("x=1{f}{q}"));
                    for w in (0..=128u32).step_by(3).chain([20, 40]) {
                        for h in (0..=128u32).step_by(5).chain([8, 30]) {
                            if w == 0 && h == 0 {
                                continue;
                            }
                            let side = |n: u32| if n == 0 { String::new() } else { n.to_string() };
                            for fit in [
                                "cover",
                                "inside",
                                "fill",
                                "contain&bg=ffffff",
                                "contain&bg=000000",
                            ] {
                                queries.push(format!(
                                    "size={}x{}&fit={fit}{f}{q}",
                                    side(w),
                                    side(h)
                                ));
                            }
                        }
                    }
                }
            }
            for q in &queries {
                let Ok(v) = Variant::parse("/image/a.jpg", Some(q), &opts) else {
                    continue;
                };
                if let Ok(v) = p.apply(v) {
                    keys.insert(v.cache_key());
                }
            }
            let bound = p.max_objects().unwrap();
            assert!(
                keys.len() as u64 <= bound,
                "{} variants seen, bound {bound}",
                keys.len()
            );
            assert!(
                keys.len() > 10,
                "the sweep reached few variants: {}",
                keys.len()
            );
        }
    }

    #[test]
    fn the_allow_list_refuses_other_sizes() {
        let p = SizePolicy::allow(vec![(Some(100), Some(100)), (Some(400), None)]);
        assert!(p.apply(v("size=100x100")).is_ok());
        assert!(p.apply(v("size=400x")).is_ok());
        assert!(
            p.apply(v("size=50x&dpr=2")).is_err(),
            "100 wide, but not 100x100"
        );
        let e = p.apply(v("size=401x")).unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(e.to_string().contains("401x"), "{e}");
        // A re-encode needs an allowed size; the original does not.
        assert_eq!(p.apply(v("q=50")).unwrap_err().status(), 400);
        assert!(p.apply(v("")).is_ok());
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
