//! Decode an original into upright 8-bit pixels, refusing anything over the limits before the
//! pixel buffer is allocated.
//!
//! JPEG goes through libjpeg-turbo ([`super::jpeg`]), decoded at the smallest IDCT scale the
//! planned output allows; AVIF through dav1d ([`super::avif`]); everything else through the
//! `image` crate. Either way the result is
//! upright (EXIF orientation applied) RGB8/RGBA8 plus the source's ICC profile, which is applied
//! after the resize.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

use super::geometry::{self, Plan};
use super::pixels::{check_pixels, Pixels};
use super::sniff::SourceFormat;
use super::{avif, color, container, jpeg, TransformLimits};
use crate::error::{Error, Result};
use crate::variant::Resize;

/// Decoded pixels and the plan, expressed in those pixels' coordinates (a JPEG decoded at 1/4
/// scale has its crop scaled by 1/4 too).
pub struct Decoded {
    /// Upright pixels.
    pub pixels: Pixels,
    /// What to cut and the output size.
    pub plan: Plan,
    /// The upright size of the original (the pixels are this at `eighths`/8 scale).
    pub source: (u32, u32),
    /// The IDCT scale the pixels were decoded at, in eighths (8 for every non-JPEG).
    pub eighths: u32,
}

/// The IDCT scale (in eighths) a plan on the upright original needs: the less-shrunk axis
/// decides, so neither ends up with fewer pixels than it needs ([`jpeg::scale_eighths`]).
pub fn needed_eighths(plan: &Plan) -> u32 {
    let (_, _, cw, ch) = plan.crop;
    let shrink = (cw / f64::from(plan.width)).min(ch / f64::from(plan.height));
    jpeg::scale_eighths(shrink)
}

fn image_format(f: SourceFormat) -> Result<ImageFormat> {
    Ok(match f {
        SourceFormat::Jpeg => ImageFormat::Jpeg,
        SourceFormat::Png => ImageFormat::Png,
        SourceFormat::Webp => ImageFormat::WebP,
        SourceFormat::Gif => ImageFormat::Gif,
        SourceFormat::Tiff => ImageFormat::Tiff,
        SourceFormat::Avif => return Err(Error::Internal("avif goes through avif::decode".into())),
    })
}

fn decode_error(e: image::ImageError) -> Error {
    match e {
        image::ImageError::Limits(l) => Error::unprocessable(format!("over decode limits: {l}")),
        other => Error::unprocessable(format!("undecodable: {other}")),
    }
}

/// Check an original that is about to be served as stored: container and header within limits
/// (checked before any pixel is allocated, as for every decode) and every pixel decodable (a
/// corrupt scan or a bad CRC is refused, not passed on to browsers). JPEGs are decoded at 1/8
/// scale, which still entropy-decodes every block.
pub fn validate(bytes: &[u8], format: SourceFormat, limits: &TransformLimits) -> Result<()> {
    let tiny = Resize {
        width: Some(1),
        height: Some(1),
        fit: crate::variant::Fit::Inside,
    };
    decode(bytes, format, limits, Some(tiny)).map(drop)
}

fn open<'a>(
    bytes: &'a [u8],
    format: SourceFormat,
    limits: &TransformLimits,
) -> Result<impl ImageDecoder + 'a> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), image_format(format)?);
    let mut l = Limits::default();
    // Strict side limits stop decoders that allocate a canvas from the header (GIF screens);
    // max_alloc bounds the rest (16-bit RGBA at the pixel limit, plus slack for decoder state).
    let side = u32::try_from(limits.max_source_pixels).unwrap_or(u32::MAX);
    l.max_image_width = Some(side);
    l.max_image_height = Some(side);
    l.max_alloc = Some(
        limits
            .max_source_pixels
            .saturating_mul(8)
            .saturating_add(64 << 20),
    );
    reader.limits(l);
    reader.into_decoder().map_err(decode_error)
}

/// Decode for `resize`: plan the output from the upright header size, decode (JPEG at reduced
/// scale when the plan allows), apply EXIF orientation, and convert to RGB8/RGBA8.
pub fn decode(
    bytes: &[u8],
    format: SourceFormat,
    limits: &TransformLimits,
    resize: Option<Resize>,
) -> Result<Decoded> {
    decode_scaled(bytes, format, limits, resize, 1)
}

/// [`decode`], with a JPEG decoded at no less than `at_least`/8 scale (a mezzanine meant to
/// serve larger sizes later; other formats always decode in full).
pub fn decode_scaled(
    bytes: &[u8],
    format: SourceFormat,
    limits: &TransformLimits,
    resize: Option<Resize>,
    at_least: u32,
) -> Result<Decoded> {
    container::check(bytes, format, limits.max_frames, limits.max_metadata_bytes)?;
    match format {
        SourceFormat::Jpeg => return decode_jpeg(bytes, limits, resize, at_least),
        SourceFormat::Avif => {
            let pixels = avif::decode(bytes, limits)?;
            return Ok(Decoded {
                plan: geometry::plan(pixels.width, pixels.height, resize),
                source: (pixels.width, pixels.height),
                eighths: 8,
                pixels,
            });
        }
        _ => {}
    }
    let mut decoder = open(bytes, format, limits)?;
    let (w, h) = decoder.dimensions();
    check_pixels(w, h, limits)?;
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let icc = decoder.icc_profile().ok().flatten();
    let mut img = DynamicImage::from_decoder(decoder).map_err(decode_error)?;
    img.apply_orientation(orientation);
    let has_alpha = img.color().has_alpha();
    let (width, height) = (img.width(), img.height());
    let data = if has_alpha {
        match img {
            DynamicImage::ImageRgba8(b) => b.into_raw(),
            other => other.to_rgba8().into_raw(),
        }
    } else {
        match img {
            DynamicImage::ImageRgb8(b) => b.into_raw(),
            other => other.to_rgb8().into_raw(),
        }
    };
    Ok(Decoded {
        plan: geometry::plan(width, height, resize),
        source: (width, height),
        eighths: 8,
        pixels: Pixels {
            width,
            height,
            has_alpha,
            data,
            icc,
        },
    })
}

fn decode_jpeg(
    bytes: &[u8],
    limits: &TransformLimits,
    resize: Option<Resize>,
    at_least: u32,
) -> Result<Decoded> {
    let meta = container::jpeg_meta(bytes);
    let orientation = Orientation::from_exif(meta.orientation).unwrap_or(Orientation::NoTransforms);
    let swaps = matches!(
        orientation,
        Orientation::Rotate90
            | Orientation::Rotate270
            | Orientation::Rotate90FlipH
            | Orientation::Rotate270FlipH
    );
    let mut planned = None;
    let (header, w, h, samples) = jpeg::decode(bytes, limits.max_source_pixels, |header| {
        check_pixels(header.width, header.height, limits)?;
        let (uw, uh) = if swaps {
            (header.height, header.width)
        } else {
            (header.width, header.height)
        };
        let plan = geometry::plan(uw, uh, resize);
        let eighths = if header.lossless {
            8
        } else {
            needed_eighths(&plan).max(at_least).min(8)
        };
        planned = Some((plan, eighths, (uw, uh)));
        Ok(eighths)
    })?;
    let (plan, eighths, (uw, uh)) = planned.ok_or_else(|| Error::Internal("jpeg plan".into()))?;
    let rgb = match header.color {
        jpeg::JpegColor::Rgb => samples,
        jpeg::JpegColor::Cmyk => color::cmyk_to_rgb(&samples, meta.adobe),
    };
    let (width, height, data) = if orientation == Orientation::NoTransforms {
        (w, h, rgb)
    } else {
        let buf = image::RgbImage::from_raw(w, h, rgb)
            .ok_or_else(|| Error::Internal("jpeg buffer size".into()))?;
        let mut img = DynamicImage::ImageRgb8(buf);
        img.apply_orientation(orientation);
        (img.width(), img.height(), img.into_rgb8().into_raw())
    };
    Ok(Decoded {
        plan: plan.scaled(f64::from(eighths) / 8.0, (uw, uh)),
        source: (uw, uh),
        eighths,
        pixels: Pixels {
            width,
            height,
            has_alpha: false,
            data,
            // A CMYK profile cannot describe the RGB we made; only RGB profiles are applied.
            icc: meta.icc.filter(|_| header.color == jpeg::JpegColor::Rgb),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 32x16 JPEG whose top-left 16x8 quadrant is white (rest black), tagged with EXIF
    /// `orientation`.
    fn tagged_jpeg(orientation: u8) -> Vec<u8> {
        let (w, h) = (32u32, 16u32);
        let mut rgb = vec![0u8; (w * h * 3) as usize];
        for y in 0..8 {
            for x in 0..16 {
                let i = ((y * w + x) * 3) as usize;
                rgb[i..i + 3].copy_from_slice(&[255, 255, 255]);
            }
        }
        let jpeg = jpeg::encode(&rgb, w, h, 95).unwrap();
        // APP1: Exif header, big-endian TIFF, one IFD entry: Orientation (0x0112), SHORT, 1.
        let mut exif = b"Exif\0\0MM\0\x2a\0\0\0\x08\0\x01\x01\x12\0\x03\0\0\0\x01\0".to_vec();
        exif.extend_from_slice(&[orientation, 0, 0, 0, 0, 0, 0]);
        let mut out = vec![0xFF, 0xD8, 0xFF, 0xE1];
        out.extend_from_slice(&((exif.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(&exif);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    /// Which quadrant of the upright image is white: (right half, bottom half).
    fn white_quadrant(p: &Pixels) -> (bool, bool) {
        let (w, h) = (p.width as usize, p.height as usize);
        let lum = |x: usize, y: usize| p.data[(y * w + x) * 3] as u32;
        let (qx, qy) = (w / 4, h / 4);
        let mut best = (0, (false, false));
        for (right, bottom) in [(false, false), (true, false), (false, true), (true, true)] {
            let (cx, cy) = (
                if right { w - qx } else { qx },
                if bottom { h - qy } else { qy },
            );
            if lum(cx, cy) > best.0 {
                best = (lum(cx, cy), (right, bottom));
            }
        }
        best.1
    }

    #[test]
    fn every_exif_orientation_comes_out_upright() {
        // Where the stored top-left quadrant lands when displayed (EXIF 2.3, tag 0x0112).
        let expect = [
            (1, (32, 16), (false, false)),
            (2, (32, 16), (true, false)),  // mirrored horizontally
            (3, (32, 16), (true, true)),   // rotated 180
            (4, (32, 16), (false, true)),  // mirrored vertically
            (5, (16, 32), (false, false)), // transposed
            (6, (16, 32), (true, false)),  // rotated 90 clockwise
            (7, (16, 32), (true, true)),   // transversed
            (8, (16, 32), (false, true)),  // rotated 90 counter-clockwise
        ];
        for (o, dims, quadrant) in expect {
            let d = decode(
                &tagged_jpeg(o),
                SourceFormat::Jpeg,
                &TransformLimits::default(),
                None,
            )
            .unwrap();
            assert_eq!((d.pixels.width, d.pixels.height), dims, "orientation {o}");
            assert_eq!(white_quadrant(&d.pixels), quadrant, "orientation {o}");
            assert_eq!((d.plan.width, d.plan.height), dims, "orientation {o}");
        }
    }
}
