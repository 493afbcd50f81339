//! Encode pixels as JPEG (libjpeg-turbo, 4:2:0), PNG (fast compression) or lossy WebP (libwebp).
//! Nothing from the original (EXIF, ICC, text) is carried over: outputs are pixels only, in sRGB.

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder};

use super::decode::Pixels;
use super::jpeg;
use crate::error::{Error, Result};
use crate::variant::OutputFormat;

/// Largest side libwebp encodes.
pub const WEBP_MAX_SIDE: u32 = 16383;

/// Encode `px` (RGB8 or RGBA8; JPEG callers flatten alpha first) at `quality` (lossy formats).
pub fn encode(px: &Pixels, format: OutputFormat, quality: u8) -> Result<Vec<u8>> {
    let color = if px.has_alpha {
        ExtendedColorType::Rgba8
    } else {
        ExtendedColorType::Rgb8
    };
    let mut out = Vec::with_capacity(px.data.len() / 8);
    // Encoders refuse some sizes (WebP: 16383 px a side); that is a property of the variant, so
    // it is a 422 the edge may cache briefly, not a 500 that redoes the fetch every time.
    if format == OutputFormat::Webp && (px.width > WEBP_MAX_SIDE || px.height > WEBP_MAX_SIDE) {
        return Err(Error::unprocessable(format!(
            "webp output is limited to {WEBP_MAX_SIDE} px a side"
        )));
    }
    let fail = |e: image::ImageError| {
        Error::unprocessable(format!("cannot encode {}: {e}", format.as_str()))
    };
    match format {
        OutputFormat::Jpeg => {
            if px.has_alpha {
                return Err(Error::Internal("jpeg encode needs flattened pixels".into()));
            }
            out = jpeg::encode(&px.data, px.width, px.height, quality)?;
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
                .map_err(|e| Error::unprocessable(format!("cannot encode webp: {e:?}")))?;
            out.extend_from_slice(&mem);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_an_encoder_refuses_are_422_not_500() {
        let px = Pixels {
            width: WEBP_MAX_SIDE + 1,
            height: 1,
            has_alpha: false,
            data: vec![0; (WEBP_MAX_SIDE as usize + 1) * 3],
            icc: None,
        };
        assert_eq!(
            encode(&px, OutputFormat::Webp, 80).unwrap_err().status(),
            422
        );
        assert!(encode(&px, OutputFormat::Png, 80).is_ok());
    }
}
