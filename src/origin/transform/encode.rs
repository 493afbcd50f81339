//! Encode pixels as JPEG, PNG or lossy WebP. Nothing from the original (EXIF, ICC, text) is
//! carried over: outputs are pixels only.

use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder};

use super::decode::Pixels;
use crate::error::{Error, Result};
use crate::variant::OutputFormat;

/// Encode `px` (RGB8 or RGBA8; JPEG callers flatten alpha first) at `quality` (lossy formats).
pub fn encode(px: &Pixels, format: OutputFormat, quality: u8) -> Result<Vec<u8>> {
    let color = if px.has_alpha {
        ExtendedColorType::Rgba8
    } else {
        ExtendedColorType::Rgb8
    };
    let mut out = Vec::with_capacity(px.data.len() / 8);
    let fail = |e: image::ImageError| Error::Internal(format!("encode {}: {e}", format.as_str()));
    match format {
        OutputFormat::Jpeg => {
            if px.has_alpha {
                return Err(Error::Internal("jpeg encode needs flattened pixels".into()));
            }
            JpegEncoder::new_with_quality(&mut out, quality)
                .write_image(&px.data, px.width, px.height, color)
                .map_err(fail)?;
        }
        OutputFormat::Png => {
            PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive)
                .write_image(&px.data, px.width, px.height, color)
                .map_err(fail)?;
        }
        OutputFormat::Webp => {
            let enc = if px.has_alpha {
                webp::Encoder::from_rgba(&px.data, px.width, px.height)
            } else {
                webp::Encoder::from_rgb(&px.data, px.width, px.height)
            };
            let mem = enc
                .encode_simple(false, f32::from(quality))
                .map_err(|e| Error::Internal(format!("encode webp: {e:?}")))?;
            out.extend_from_slice(&mem);
        }
    }
    Ok(out)
}
