//! Output geometry for each fit: the pure arithmetic, kept apart from pixels so it can be tested
//! exhaustively.
//!
//! Rules: the result is never larger than the (upright) original. When the requested box is
//! larger, `cover` and `fill` shrink the box by one factor until it fits, so the output keeps the
//! box's shape (a square thumbnail stays square); `inside` keeps the original's shape.

use crate::variant::{Fit, Resize};

/// What to cut from the source and how large the output is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    /// Source region `(left, top, width, height)` in source pixels; the whole image unless
    /// `cover` crops.
    pub crop: (f64, f64, f64, f64),
    /// Output width.
    pub width: u32,
    /// Output height.
    pub height: u32,
}

impl Plan {
    /// Whether the output is the source, pixel for pixel.
    pub fn is_identity(&self, src_w: u32, src_h: u32) -> bool {
        self.width == src_w
            && self.height == src_h
            && self.crop == (0.0, 0.0, src_w as f64, src_h as f64)
    }
}

fn px(v: f64) -> u32 {
    (v.round() as u32).max(1)
}

/// Plan the resize of a `src_w` x `src_h` image (both at least 1) for `resize`.
pub fn plan(src_w: u32, src_h: u32, resize: Option<Resize>) -> Plan {
    let (w, h) = (src_w as f64, src_h as f64);
    let whole = (0.0, 0.0, w, h);
    let Some(r) = resize else {
        return Plan {
            crop: whole,
            width: src_w,
            height: src_h,
        };
    };
    match (r.width, r.height) {
        (Some(bw), None) => {
            let ow = bw.min(src_w);
            Plan {
                crop: whole,
                width: ow,
                height: px(h * ow as f64 / w).min(src_h),
            }
        }
        (None, Some(bh)) => {
            let oh = bh.min(src_h);
            Plan {
                crop: whole,
                width: px(w * oh as f64 / h).min(src_w),
                height: oh,
            }
        }
        (Some(bw), Some(bh)) => {
            let (bwf, bhf) = (bw as f64, bh as f64);
            match r.fit {
                Fit::Inside => {
                    let s = (bwf / w).min(bhf / h).min(1.0);
                    Plan {
                        crop: whole,
                        width: px(w * s).min(bw).min(src_w),
                        height: px(h * s).min(bh).min(src_h),
                    }
                }
                Fit::Cover | Fit::Fill => {
                    // Shrink the box (keeping its shape) until it fits inside the source.
                    let k = (w / bwf).min(h / bhf).min(1.0);
                    let (ow, oh) = (px(bwf * k).min(src_w), px(bhf * k).min(src_h));
                    let crop = if r.fit == Fit::Fill {
                        whole
                    } else {
                        let target = ow as f64 / oh as f64;
                        if w / h > target {
                            let cw = h * target;
                            ((w - cw) / 2.0, 0.0, cw, h)
                        } else {
                            let ch = w / target;
                            (0.0, (h - ch) / 2.0, w, ch)
                        }
                    };
                    Plan {
                        crop,
                        width: ow,
                        height: oh,
                    }
                }
            }
        }
        (None, None) => Plan {
            crop: whole,
            width: src_w,
            height: src_h,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(w: Option<u32>, h: Option<u32>, fit: Fit) -> Option<Resize> {
        Some(Resize {
            width: w,
            height: h,
            fit,
        })
    }

    fn dims(p: Plan) -> (u32, u32) {
        (p.width, p.height)
    }

    #[test]
    fn cover_fills_the_box_and_crops_centred() {
        let p = plan(2000, 1000, r(Some(100), Some(100), Fit::Cover));
        assert_eq!(dims(p), (100, 100));
        assert_eq!(p.crop, (500.0, 0.0, 1000.0, 1000.0));
        let p = plan(1000, 2000, r(Some(300), Some(100), Fit::Cover));
        assert_eq!(dims(p), (300, 100));
        let (_, top, cw, ch) = p.crop;
        assert_eq!(cw, 1000.0);
        assert!((ch - 1000.0 / 3.0).abs() < 1e-9 && (top - (2000.0 - ch) / 2.0).abs() < 1e-9);
    }

    #[test]
    fn inside_keeps_the_aspect_ratio() {
        assert_eq!(
            dims(plan(2000, 1000, r(Some(100), Some(100), Fit::Inside))),
            (100, 50)
        );
        assert_eq!(
            dims(plan(1000, 2000, r(Some(100), Some(100), Fit::Inside))),
            (50, 100)
        );
    }

    #[test]
    fn fill_stretches() {
        let p = plan(2000, 1000, r(Some(100), Some(300), Fit::Fill));
        assert_eq!(dims(p), (100, 300));
        assert_eq!(p.crop, (0.0, 0.0, 2000.0, 1000.0));
    }

    #[test]
    fn one_side_follows_the_ratio() {
        assert_eq!(
            dims(plan(2560, 1600, r(Some(400), None, Fit::Inside))),
            (400, 250)
        );
        assert_eq!(
            dims(plan(2560, 1600, r(None, Some(400), Fit::Inside))),
            (640, 400)
        );
    }

    #[test]
    fn never_enlarges() {
        assert_eq!(
            dims(plan(300, 200, r(Some(600), None, Fit::Inside))),
            (300, 200)
        );
        assert_eq!(
            dims(plan(300, 200, r(Some(600), Some(600), Fit::Inside))),
            (300, 200)
        );
        // Cover and fill keep the box's shape, shrunk to fit.
        assert_eq!(
            dims(plan(300, 200, r(Some(600), Some(600), Fit::Cover))),
            (200, 200)
        );
        assert_eq!(
            dims(plan(300, 200, r(Some(1000), Some(500), Fit::Fill))),
            (300, 150)
        );
        assert!(plan(300, 200, None).is_identity(300, 200));
    }

    #[test]
    fn extreme_ratios_never_reach_zero() {
        assert_eq!(dims(plan(8000, 1, r(Some(10), None, Fit::Inside))), (10, 1));
        assert_eq!(dims(plan(1, 8000, r(Some(1), Some(1), Fit::Cover))), (1, 1));
        assert_eq!(dims(plan(1, 1, r(Some(4096), Some(1), Fit::Cover))), (1, 1));
    }
}
