//! Output geometry for each fit: the pure arithmetic, kept apart from pixels so it can be tested
//! exhaustively.
//!
//! Rules: the result is never larger than the (upright) original. When the requested box is
//! larger, `cover` and `fill` shrink the box by one factor until it fits, so the output keeps the
//! box's shape (a square thumbnail stays square); `inside` keeps the original's shape.
//! `contain` is `inside` placed centred on a canvas of the (so shrunk) box's size.

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
    /// For `contain`: the padded canvas the resized image is centred on, when it is larger.
    pub canvas: Option<Canvas>,
}

/// A padded output: its size and where the resized image goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Canvas {
    /// Canvas width.
    pub width: u32,
    /// Canvas height.
    pub height: u32,
    /// Left edge of the image on the canvas.
    pub left: u32,
    /// Top edge of the image on the canvas.
    pub top: u32,
    /// Padding colour.
    pub color: [u8; 3],
}

impl Plan {
    /// Whether the resize step is the identity (padding may still follow).
    pub fn is_identity(&self, src_w: u32, src_h: u32) -> bool {
        self.width == src_w
            && self.height == src_h
            && self.crop == (0.0, 0.0, src_w as f64, src_h as f64)
    }

    /// The same plan for a `src` image decoded at `factor` scale (JPEG IDCT scaling, 1/2..1/8):
    /// the crop scales by exactly `factor` on both axes, the output does not. The decoder rounds
    /// a partial last block up to a whole pixel; like libvips, the crop stops at
    /// `floor(src x factor)` so that sliver never stretches one axis against the other.
    pub fn scaled(self, factor: f64, src: (u32, u32)) -> Plan {
        if factor == 1.0 {
            return self;
        }
        let avail = |v: u32| (f64::from(v) * factor).floor().max(1.0);
        let (aw, ah) = (avail(src.0), avail(src.1));
        let (l, t, w, h) = self.crop;
        let (w, h) = ((w * factor).min(aw), (h * factor).min(ah));
        let (l, t) = ((l * factor).min(aw - w), (t * factor).min(ah - h));
        Plan {
            crop: (l.max(0.0), t.max(0.0), w, h),
            ..self
        }
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
            canvas: None,
        };
    };
    match (r.width, r.height) {
        (Some(bw), None) => {
            let ow = bw.min(src_w);
            Plan {
                crop: whole,
                width: ow,
                height: px(h * ow as f64 / w).min(src_h),
                canvas: None,
            }
        }
        (None, Some(bh)) => {
            let oh = bh.min(src_h);
            Plan {
                crop: whole,
                width: px(w * oh as f64 / h).min(src_w),
                height: oh,
                canvas: None,
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
                        canvas: None,
                    }
                }
                Fit::Contain(color) => {
                    // The canvas is the box, shrunk like cover's so it is never larger than the
                    // source; the image fits inside it.
                    let k = (w / bwf).min(h / bhf).min(1.0);
                    let (cw, ch) = (px(bwf * k).min(src_w), px(bhf * k).min(src_h));
                    let s = (cw as f64 / w).min(ch as f64 / h);
                    let (iw, ih) = (px(w * s).min(cw), px(h * s).min(ch));
                    Plan {
                        crop: whole,
                        width: iw,
                        height: ih,
                        canvas: ((cw, ch) != (iw, ih)).then_some(Canvas {
                            width: cw,
                            height: ch,
                            left: (cw - iw) / 2,
                            top: (ch - ih) / 2,
                            color,
                        }),
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
                        canvas: None,
                    }
                }
            }
        }
        (None, None) => Plan {
            crop: whole,
            width: src_w,
            height: src_h,
            canvas: None,
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
    fn contain_pads_to_the_box() {
        let red = [255, 0, 0];
        let p = plan(2000, 1000, r(Some(100), Some(100), Fit::Contain(red)));
        assert_eq!(dims(p), (100, 50));
        assert_eq!(
            p.canvas,
            Some(Canvas {
                width: 100,
                height: 100,
                left: 0,
                top: 25,
                color: red
            })
        );
        // Same shape as the source: nothing to pad.
        let p = plan(2000, 1000, r(Some(200), Some(100), Fit::Contain(red)));
        assert_eq!((dims(p), p.canvas), ((200, 100), None));
        // Box larger than the source: shrunk by one factor, never enlarged.
        let p = plan(300, 200, r(Some(600), Some(600), Fit::Contain(red)));
        assert_eq!(dims(p), (200, 133));
        let c = p.canvas.unwrap();
        assert_eq!((c.width, c.height, c.left, c.top), (200, 200, 0, 33));
    }

    #[test]
    fn scaled_plans_keep_the_output_and_scale_the_crop() {
        let p = plan(2000, 1000, r(Some(100), Some(100), Fit::Cover));
        let s = p.scaled(0.125, (2000, 1000));
        assert_eq!(dims(s), (100, 100));
        assert_eq!(s.crop, (62.5, 0.0, 125.0, 125.0));
        // 1001 / 8 decodes to 126 px (ceil); the crop keeps the 125 whole ones on both axes.
        let p = plan(1001, 1001, r(Some(10), Some(10), Fit::Inside));
        let s = p.scaled(0.125, (1001, 1001));
        assert_eq!(s.crop, (0.0, 0.0, 125.0, 125.0));
        assert!(!s.is_identity(126, 126));
    }

    #[test]
    fn extreme_ratios_never_reach_zero() {
        assert_eq!(dims(plan(8000, 1, r(Some(10), None, Fit::Inside))), (10, 1));
        assert_eq!(dims(plan(1, 8000, r(Some(1), Some(1), Fit::Cover))), (1, 1));
        assert_eq!(dims(plan(1, 1, r(Some(4096), Some(1), Fit::Cover))), (1, 1));
    }
}
