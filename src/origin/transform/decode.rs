//! Decode an original into upright 8-bit pixels, refusing anything over the limits before the
//! pixel buffer is allocated.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

use super::sniff::SourceFormat;
use super::TransformLimits;
use crate::error::{Error, Result};

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
    let decoder = open(bytes, format, limits)?;
    let (w, h) = decoder.dimensions();
    check_pixels(w, h, limits)?;
    Ok((w, h))
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

/// Decode, apply EXIF orientation, and convert to RGB8/RGBA8.
pub fn decode(bytes: &[u8], format: SourceFormat, limits: &TransformLimits) -> Result<Pixels> {
    let mut decoder = open(bytes, format, limits)?;
    let (w, h) = decoder.dimensions();
    check_pixels(w, h, limits)?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
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
    Ok(Pixels {
        width,
        height,
        has_alpha,
        data,
    })
}
