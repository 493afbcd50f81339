//! Decode an original into upright 8-bit pixels, refusing anything over the limits before the
//! pixel buffer is allocated.
//!
//! JPEG goes through libjpeg-turbo ([`super::jpeg`]), decoded at the smallest IDCT scale the
//! planned output allows; everything else through the `image` crate. Either way the result is
//! upright (EXIF orientation applied) RGB8/RGBA8 plus the source's ICC profile, which is applied
//! after the resize.

use std::io::Cursor;

use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

use super::geometry::{self, Plan};
use super::sniff::SourceFormat;
use super::{color, container, jpeg, TransformLimits};
use crate::error::{Error, Result};
use crate::variant::Resize;

/// Decoded pixels: RGB8, or RGBA8 when the source has alpha. Rows are tightly packed.
pub struct Pixels {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Whether there are 4 channels (RGBA) rather than 3 (RGB).
    pub has_alpha: bool,
    /// The samples.
    pub data: Vec<u8>,
    /// The source's ICC profile, not yet applied.
    pub icc: Option<Vec<u8>>,
}

/// Decoded pixels and the plan, expressed in those pixels' coordinates (a JPEG decoded at 1/4
/// scale has its crop scaled by 1/4 too).
pub struct Decoded {
    /// Upright pixels.
    pub pixels: Pixels,
    /// What to cut and the output size.
    pub plan: Plan,
}

fn image_format(f: SourceFormat) -> Result<ImageFormat> {
    Ok(match f {
        SourceFormat::Jpeg => ImageFormat::Jpeg,
        SourceFormat::Png => ImageFormat::Png,
        SourceFormat::Webp => ImageFormat::WebP,
        SourceFormat::Gif => ImageFormat::Gif,
        SourceFormat::Tiff => ImageFormat::Tiff,
        SourceFormat::Avif => {
            return Err(Error::unprocessable("avif sources are not supported yet"));
        }
    })
}

fn decode_error(e: image::ImageError) -> Error {
    match e {
        image::ImageError::Limits(l) => Error::unprocessable(format!("over decode limits: {l}")),
        other => Error::unprocessable(format!("undecodable: {other}")),
    }
}

/// Read the header only and check the declared size against the pixel limit. Used for originals
/// served as they are, so a bomb is refused even when nothing is decoded.
pub fn check_header(
    bytes: &[u8],
    format: SourceFormat,
    limits: &TransformLimits,
) -> Result<(u32, u32)> {
    container::check(bytes, format, limits.max_frames, limits.max_metadata_bytes)?;
    let (w, h) = if format == SourceFormat::Jpeg {
        let h = jpeg::header(bytes, limits.max_source_pixels)?;
        (h.width, h.height)
    } else {
        open(bytes, format, limits)?.dimensions()
    };
    check_pixels(w, h, limits)?;
    Ok((w, h))
}

/// Check an original that is about to be served as stored: header within limits and every
/// pixel decodable (a corrupt scan or a bad CRC is refused, not passed on to browsers). JPEGs
/// are decoded at 1/8 scale, which still entropy-decodes every block.
pub fn validate(bytes: &[u8], format: SourceFormat, limits: &TransformLimits) -> Result<()> {
    check_header(bytes, format, limits)?;
    let tiny = Resize {
        width: Some(1),
        height: Some(1),
        fit: crate::variant::Fit::Inside,
    };
    decode(bytes, format, limits, Some(tiny)).map(drop)
}

fn check_pixels(w: u32, h: u32, limits: &TransformLimits) -> Result<()> {
    if w == 0 || h == 0 {
        return Err(Error::unprocessable("image has no pixels"));
    }
    let pixels = u64::from(w) * u64::from(h);
    if pixels > limits.max_source_pixels {
        return Err(Error::unprocessable(format!(
            "{w}x{h} is over the {}-pixel limit",
            limits.max_source_pixels
        )));
    }
    Ok(())
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
    container::check(bytes, format, limits.max_frames, limits.max_metadata_bytes)?;
    if format == SourceFormat::Jpeg {
        return decode_jpeg(bytes, limits, resize);
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
        pixels: Pixels {
            width,
            height,
            has_alpha,
            data,
            icc,
        },
    })
}

fn decode_jpeg(bytes: &[u8], limits: &TransformLimits, resize: Option<Resize>) -> Result<Decoded> {
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
        let (_, _, cw, ch) = plan.crop;
        // The less-shrunk axis decides: neither may end up with fewer pixels than it needs.
        let shrink = (cw / f64::from(plan.width)).min(ch / f64::from(plan.height));
        let denom = if header.lossless {
            1
        } else {
            jpeg::scale_denom(shrink)
        };
        planned = Some((plan, denom, (uw, uh)));
        Ok(denom)
    })?;
    let (plan, denom, (uw, uh)) = planned.ok_or_else(|| Error::Internal("jpeg plan".into()))?;
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
        plan: plan.scaled(1.0 / f64::from(denom), (uw, uh)),
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
