//! Encode pixels as JPEG (libjpeg-turbo, 4:2:0), PNG (fast compression) or lossy WebP (libwebp 1.6,
//! called directly through libwebp-sys).
//! Nothing from the original (EXIF, ICC, text) is carried over: outputs are pixels only, in sRGB.

use std::mem::MaybeUninit;

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder};

use super::jpeg;
use super::pixels::Pixels;
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
        OutputFormat::Webp => out = encode_webp(px, quality)?,
    }
    Ok(out)
}

/// Lossy WebP through libwebp 1.6 (libwebp-sys builds it from source), with libwebp's default
/// preset at `quality` and method 4 — what libvips' `webpsave` does at the same Q, with the same
/// libwebp release, so identical pixels encode to identical bytes.
fn encode_webp(px: &Pixels, quality: u8) -> Result<Vec<u8>> {
    use libwebp_sys as w;
    let fail = |what: &str| Error::unprocessable(format!("cannot encode webp: {what}"));
    let abi = w::WEBP_ENCODER_ABI_VERSION as std::ffi::c_int;
    let ch = if px.has_alpha { 4 } else { 3 };
    let stride = std::ffi::c_int::try_from(px.width as usize * ch).map_err(|_| fail("too wide"))?;
    let (width, height) = (
        std::ffi::c_int::try_from(px.width).map_err(|_| fail("too wide"))?,
        std::ffi::c_int::try_from(px.height).map_err(|_| fail("too tall"))?,
    );
    if px.data.len() < px.width as usize * px.height as usize * ch {
        return Err(Error::Internal("webp: pixel buffer too small".into()));
    }
    let mut config = MaybeUninit::<w::WebPConfig>::uninit();
    // SAFETY: WebPConfigInitInternal fills the whole struct when it returns non-zero.
    let config = unsafe {
        if w::WebPConfigInitInternal(
            config.as_mut_ptr(),
            w::WebPPreset::WEBP_PRESET_DEFAULT,
            f32::from(quality),
            abi,
        ) == 0
        {
            return Err(fail("libwebp version mismatch"));
        }
        config.assume_init()
    };
    let mut pic = MaybeUninit::<w::WebPPicture>::uninit();
    // SAFETY: as above, for the picture.
    let mut pic = unsafe {
        if w::WebPPictureInitInternal(pic.as_mut_ptr(), abi) == 0 {
            return Err(fail("libwebp version mismatch"));
        }
        pic.assume_init()
    };
    pic.width = width;
    pic.height = height;
    let mut writer = MaybeUninit::<w::WebPMemoryWriter>::uninit();
    // SAFETY: WebPMemoryWriterInit initialises the writer (empty buffer).
    let mut writer = unsafe {
        w::WebPMemoryWriterInit(writer.as_mut_ptr());
        writer.assume_init()
    };
    pic.writer = Some(w::WebPMemoryWrite);
    pic.custom_ptr = std::ptr::addr_of_mut!(writer).cast();
    // SAFETY: `data` holds height rows of `stride` bytes (checked above); the picture copies
    // them into its own YUV planes. `writer` outlives the encode. Everything libwebp allocated
    // is freed below on every path.
    let result = unsafe {
        let imported = if px.has_alpha {
            w::WebPPictureImportRGBA(&mut pic, px.data.as_ptr(), stride)
        } else {
            w::WebPPictureImportRGB(&mut pic, px.data.as_ptr(), stride)
        };
        let ok = imported != 0 && w::WebPEncode(&config, &mut pic) != 0;
        let out = if ok && !writer.mem.is_null() {
            Ok(std::slice::from_raw_parts(writer.mem, writer.size).to_vec())
        } else {
            Err(fail(&format!("{:?}", pic.error_code)))
        };
        w::WebPPictureFree(&mut pic);
        w::WebPMemoryWriterClear(&mut writer);
        out
    };
    result
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
