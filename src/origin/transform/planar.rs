//! JPEG → JPEG without leaving Y'CbCr: the decoder's planes are resized one by one and handed
//! to the encoder as 4:2:0 planes.
//!
//! Why: the RGB path decodes to RGB (libjpeg's chroma upsampling and Y'CbCr → RGB), resizes
//! three full-resolution channels, and the encoder converts back to Y'CbCr and averages the
//! chroma down again. Here the chroma is resized at its own resolution (a quarter of the
//! samples in 4:2:0) and none of the four conversions run: ~1.3x less resize and encode work,
//! a faster decode, and mezzanines of 1.5 bytes a pixel instead of 3. Resizing is linear and
//! Y'CbCr is a linear function of R'G'B', so the output is the RGB path's up to rounding and
//! the chroma filter (40-49 dB PSNR on the Zipf originals); it is not libvips' sample for
//! sample, which is why WebP (whose SSIM target needs that) and every other case keep the RGB
//! path.
//!
//! Taken when ([`applies`]): the setting is on, the original is a Y'CbCr JPEG with a named
//! subsampling and no ICC profile (colour management works on RGB), it needs no EXIF rotation,
//! the output is JPEG without a padded canvas, and every plane is downsized.

use super::decode::needed_eighths;
use super::geometry::{self, Plan};
use super::jpeg::{self, JpegHeader, Plane, YuvImage, SUBSAMP_420};
use super::pixels::check_pixels;
use super::reduce::reduce;
use super::sniff::SourceFormat;
use super::{auto_format, container, legacy_format, TransformLimits, TransformSettings};
use crate::error::Result;
use crate::variant::{AcceptClass, OutputFormat, Resize, Transform};

/// Whether a variant `t` of a `format` original may take the planar path, before its header
/// is read (the rest is checked by [`fits`] once it is).
pub fn applies(bytes: &[u8], format: SourceFormat, t: &Transform, s: &TransformSettings) -> bool {
    if !s.planar_jpeg || format != SourceFormat::Jpeg {
        return false;
    }
    let out = match (t.format, t.negotiated) {
        (Some(f), _) => f,
        (None, Some(AcceptClass::Legacy)) => legacy_format(format, false),
        (None, Some(_)) => return false,
        (None, None) => auto_format(format),
    };
    if out != OutputFormat::Jpeg {
        return false;
    }
    let meta = super::container::jpeg_meta(bytes);
    // EXIF orientations 2-8 turn or mirror the image (anything else leaves it as stored).
    meta.icc.is_none() && !(2..=8).contains(&meta.orientation)
}

/// Chroma subsampling divisors `(horizontal, vertical)` of TurboJPEG's `subsamp`, for the
/// ones this path takes.
fn divisors(subsamp: i32) -> Option<(f64, f64)> {
    use turbojpeg::raw;
    let d = [
        (raw::TJSAMP_TJSAMP_444, (1.0, 1.0)),
        (raw::TJSAMP_TJSAMP_422, (2.0, 1.0)),
        (raw::TJSAMP_TJSAMP_420, (2.0, 2.0)),
        (raw::TJSAMP_TJSAMP_440, (1.0, 2.0)),
    ];
    d.iter().find(|(s, _)| *s == subsamp).map(|&(_, d)| d)
}

/// Where one output plane comes from: the source plane's crop and the output plane's size.
struct PlaneJob {
    crop: (f64, f64, f64, f64),
    out: (u32, u32),
}

/// The three planes' jobs for `plan` (in the decoded image's pixels) on an image of `size`
/// with `subsamp`, or `None` if a plane would be enlarged (the RGB path handles that).
fn jobs(plan: &Plan, size: (u32, u32), subsamp: i32) -> Option<[PlaneJob; 3]> {
    let (dx, dy) = divisors(subsamp)?;
    if plan.canvas.is_some() {
        return None;
    }
    let src = YuvImage::plane_sizes(size.0, size.1, subsamp).ok()?;
    let dst = YuvImage::plane_sizes(plan.width, plan.height, SUBSAMP_420).ok()?;
    let (l, t, w, h) = plan.crop;
    let (ow, oh) = (f64::from(plan.width), f64::from(plan.height));
    let job = |c: usize| {
        let (pw, ph) = (f64::from(src[c].0), f64::from(src[c].1));
        // The output plane's samples: the image's for luma; chroma's cover 2 output pixels
        // each, so a whole last chroma sample reaches past an odd output edge by half a pixel.
        let (out_w, out_h) = if c == 0 {
            (plan.width, plan.height)
        } else {
            dst[c]
        };
        let (sx, sy) = if c == 0 { (1.0, 1.0) } else { (dx, dy) };
        let (cover_w, cover_h) = if c == 0 {
            (1.0, 1.0)
        } else {
            (2.0 * f64::from(out_w) / ow, 2.0 * f64::from(out_h) / oh)
        };
        let (cl, ct) = (l / sx, t / sy);
        let cw = (w / sx * cover_w).min(pw - cl);
        let ch = (h / sy * cover_h).min(ph - ct);
        (f64::from(out_w) <= cw && f64::from(out_h) <= ch).then_some(PlaneJob {
            crop: (cl, ct, cw, ch),
            out: (out_w, out_h),
        })
    };
    Some([job(0)?, job(1)?, job(2)?])
}

/// Whether a decoded image of `size` (at the plan's scale) with `header`'s subsampling can be
/// resized for `plan` here.
pub fn fits(header: &JpegHeader, plan: &Plan, size: (u32, u32)) -> bool {
    !header.lossless && jobs(plan, size, header.subsamp).is_some()
}

/// Whether kept planes can be resized for `plan` (in their pixels) here.
pub fn fits_image(img: &YuvImage, plan: &Plan) -> bool {
    jobs(plan, (img.width, img.height), img.subsamp).is_some()
}

/// Resize `img` for `plan` (in `img`'s pixels) to 4:2:0 planes sized for the encoder.
pub fn resize(img: &YuvImage, plan: &Plan) -> Result<YuvImage> {
    let jobs = jobs(plan, (img.width, img.height), img.subsamp)
        .ok_or_else(|| crate::error::Error::Internal("planar resize does not fit".into()))?;
    let sizes = YuvImage::plane_sizes(plan.width, plan.height, SUBSAMP_420)?;
    let mut planes = Vec::with_capacity(3);
    for ((src, job), (pw, ph)) in img.planes.iter().zip(&jobs).zip(sizes) {
        let data = reduce(
            &src.data, src.width, src.height, 1, job.crop, job.out.0, job.out.1,
        )?;
        planes.push(pad(data, job.out, (pw, ph)));
    }
    let [y, cb, cr]: [Plane; 3] = planes
        .try_into()
        .map_err(|_| crate::error::Error::Internal("planar resize".into()))?;
    Ok(YuvImage {
        width: plan.width,
        height: plan.height,
        subsamp: SUBSAMP_420,
        planes: [y, cb, cr],
    })
}

/// A `size` plane grown to `to` (TurboJPEG's padded plane size) by repeating its last column
/// and row, as an encoder pads an MCU.
fn pad(data: Vec<u8>, size: (u32, u32), to: (u32, u32)) -> Plane {
    let (w, h) = (size.0 as usize, size.1 as usize);
    let (tw, th) = (to.0 as usize, to.1 as usize);
    if (w, h) == (tw, th) || w == 0 || h == 0 {
        return Plane {
            width: size.0,
            height: size.1,
            data,
        };
    }
    let mut out = Vec::with_capacity(tw * th);
    for row in data.chunks_exact(w) {
        out.extend_from_slice(row);
        let last = row[w - 1];
        out.resize(out.len() + tw.saturating_sub(w), last);
    }
    while out.len() < tw * th {
        let start = out.len() - tw;
        out.extend_from_within(start..start + tw);
    }
    Plane {
        width: to.0,
        height: to.1,
        data: out,
    }
}

/// Decoded planes, as [`super::decode::Decoded`] holds RGB.
pub struct Decoded {
    /// The planes, at `eighths`/8 scale.
    pub img: YuvImage,
    /// The plan in the planes' pixels.
    pub plan: Plan,
    /// The original's size.
    pub source: (u32, u32),
    /// The IDCT scale, in eighths.
    pub eighths: u32,
}

/// Decode the JPEG `bytes` to planes for `resize`, at the scale the plan needs and no less
/// than `at_least`/8 (a mezzanine meant for larger sizes later), with the same limits as the
/// RGB decode; `None` when this path does not fit the image or the plan. Only for originals
/// [`applies`] accepted (upright: the stored size is the upright one).
pub fn decode(
    bytes: &[u8],
    limits: &TransformLimits,
    resize: Option<Resize>,
    at_least: u32,
) -> Result<Option<Decoded>> {
    container::check(
        bytes,
        SourceFormat::Jpeg,
        limits.max_frames,
        limits.max_metadata_bytes,
    )?;
    let mut planned = None;
    let decoded = jpeg::decode_planes(bytes, limits.max_source_pixels, |header| {
        check_pixels(header.width, header.height, limits)?;
        let source = (header.width, header.height);
        let plan = geometry::plan(source.0, source.1, resize);
        let eighths = needed_eighths(&plan).max(at_least).min(8);
        let scaled = |d: u32| (u64::from(d) * u64::from(eighths)).div_ceil(8) as u32;
        let size = (scaled(source.0), scaled(source.1));
        let plan = plan.scaled(f64::from(eighths) / 8.0, source);
        if !fits(header, &plan, size) {
            return Ok(None);
        }
        planned = Some((plan, eighths, source));
        Ok(Some(eighths))
    })?;
    Ok(match (decoded, planned) {
        (Some((_, img)), Some((plan, eighths, source))) => Some(Decoded {
            img,
            plan,
            source,
            eighths,
        }),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::pad;

    #[test]
    fn padding_repeats_the_last_column_and_row() {
        let p = pad(vec![1, 2, 3, 4, 5, 6], (3, 2), (4, 4));
        assert_eq!((p.width, p.height), (4, 4));
        assert_eq!(p.data, vec![1, 2, 3, 3, 4, 5, 6, 6, 4, 5, 6, 6, 4, 5, 6, 6]);
        let same = pad(vec![7; 6], (3, 2), (3, 2));
        assert_eq!(same.data, vec![7; 6]);
    }
}
