//! Encode pixels as JPEG (libjpeg-turbo, 4:2:0), PNG (fast compression), lossy WebP (libwebp 1.6,
//! called directly through libwebp-sys) or lossy AVIF (libavif + libaom).
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
        OutputFormat::Avif => out = encode_avif(px, quality, AVIF_SPEED)?,
    }
    Ok(out)
}

/// libavif's speed (0..=10) when none is configured: see the README's "AVIF encoder" table.
pub const AVIF_SPEED: u8 = 8;

/// The AVIF quality (libavif's 0..=100 scale) that matches WebP at `q`: the SSIM of both
/// against the resized source is equal (README: "AVIF encoder", measured by
/// `benches/avif-encoders`). Interpolated between the measured points.
pub fn avif_quality(q: u8) -> i32 {
    // (WebP q, AVIF quality of equal SSIM), increasing.
    // Medians over six corpus photos at 256, 400 and 1200 px (README "Formats"); below 50 and
    // above 90 the line runs to the scales' ends.
    const POINTS: [(u8, u8); 6] = [(1, 1), (50, 49), (65, 54), (80, 62), (90, 82), (100, 100)];
    let q = q.clamp(1, 100);
    for pair in POINTS.windows(2) {
        let ((q0, a0), (q1, a1)) = (pair[0], pair[1]);
        if q <= q1 {
            let (q0, a0, q1, a1, q) = (
                i32::from(q0),
                i32::from(a0),
                i32::from(q1),
                i32::from(a1),
                i32::from(q),
            );
            return a0 + (a1 - a0) * (q - q0) / (q1 - q0).max(1);
        }
    }
    100
}

/// The fuzz target (`fuzz/`) is built without libavif: its inputs are originals, and an
/// encoder only ever sees pixels this engine made.
#[cfg(fuzzing)]
pub fn encode_avif(_px: &Pixels, _quality: u8, _speed: u8) -> Result<Vec<u8>> {
    Err(Error::unprocessable(
        "avif output is not built into the fuzz target",
    ))
}

/// Lossy AVIF through libavif and libaom: 8-bit 4:2:0, full range, BT.601 matrix, sRGB
/// primaries and transfer (what browsers assume for untagged images), alpha as a separate
/// plane, one thread (the pool runs many encodes at once). `quality` is on imgedge's WebP-like
/// scale ([`avif_quality`]).
#[cfg(not(fuzzing))]
pub fn encode_avif(px: &Pixels, quality: u8, speed: u8) -> Result<Vec<u8>> {
    use libavif_sys as a;
    let fail = |what: &str| Error::unprocessable(format!("cannot encode avif: {what}"));
    let ch: u32 = if px.has_alpha { 4 } else { 3 };
    let row = px.width.checked_mul(ch).ok_or_else(|| fail("too wide"))?;
    if px.width == 0 || px.height == 0 || px.data.len() < row as usize * px.height as usize {
        return Err(Error::Internal("avif: pixel buffer too small".into()));
    }
    // Frees what libavif allocated on every path.
    struct Owned(*mut a::avifImage, *mut a::avifEncoder, a::avifRWData);
    impl Drop for Owned {
        fn drop(&mut self) {
            // SAFETY: each pointer is null or was returned by its libavif constructor, and
            // is freed once, here.
            unsafe {
                a::avifRWDataFree(&mut self.2);
                if !self.1.is_null() {
                    a::avifEncoderDestroy(self.1);
                }
                if !self.0.is_null() {
                    a::avifImageDestroy(self.0);
                }
            }
        }
    }
    // SAFETY: libavif's documented use: create the image, convert RGB(A) rows we own (checked
    // above to hold `height` rows of `row` bytes; libavif only reads them) into its planes,
    // encode into its RW buffer, copy that out. `Owned` frees everything.
    unsafe {
        let mut owned = Owned(
            a::avifImageCreate(px.width, px.height, 8, a::AVIF_PIXEL_FORMAT_YUV420),
            std::ptr::null_mut(),
            std::mem::zeroed(),
        );
        if owned.0.is_null() {
            return Err(fail("out of memory"));
        }
        let image = &mut *owned.0;
        image.colorPrimaries = a::AVIF_COLOR_PRIMARIES_BT709 as _;
        image.transferCharacteristics = a::AVIF_TRANSFER_CHARACTERISTICS_SRGB as _;
        image.matrixCoefficients = a::AVIF_MATRIX_COEFFICIENTS_BT601 as _;
        image.yuvRange = a::AVIF_RANGE_FULL;
        let mut rgb: a::avifRGBImage = std::mem::zeroed();
        a::avifRGBImageSetDefaults(&mut rgb, owned.0);
        rgb.format = if px.has_alpha {
            a::AVIF_RGB_FORMAT_RGBA
        } else {
            a::AVIF_RGB_FORMAT_RGB
        };
        rgb.depth = 8;
        rgb.pixels = px.data.as_ptr().cast_mut();
        rgb.rowBytes = row;
        if a::avifImageRGBToYUV(owned.0, &rgb) != a::AVIF_RESULT_OK {
            return Err(fail("colour conversion"));
        }
        owned.1 = a::avifEncoderCreate();
        if owned.1.is_null() {
            return Err(fail("out of memory"));
        }
        let enc = &mut *owned.1;
        enc.codecChoice = a::AVIF_CODEC_CHOICE_AOM;
        enc.maxThreads = 1;
        enc.speed = i32::from(speed.min(10));
        enc.quality = avif_quality(quality);
        enc.qualityAlpha = enc.quality;
        let r = a::avifEncoderWrite(owned.1, owned.0, &mut owned.2);
        if r != a::AVIF_RESULT_OK || owned.2.data.is_null() {
            let msg = std::ffi::CStr::from_ptr(a::avifResultToString(r));
            return Err(fail(&msg.to_string_lossy()));
        }
        Ok(std::slice::from_raw_parts(owned.2.data, owned.2.size).to_vec())
    }
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

    /// AVIF out of this encoder reads back through this engine's AVIF decoder with the same
    /// colours (range, matrix) and alpha, at any size down to 1x1.
    #[test]
    fn avif_round_trips_through_the_decoder() {
        use crate::origin::transform::decode::decode;
        use crate::origin::transform::sniff::SourceFormat;
        use crate::origin::transform::TransformLimits;
        for (w, h, alpha) in [
            (97u32, 61u32, false),
            (64, 64, true),
            (1, 1, false),
            (15, 15, true),
        ] {
            let ch = if alpha { 4 } else { 3 };
            // Smooth gradients: every value range, little texture for the encoder to drop.
            let data: Vec<u8> = (0..h)
                .flat_map(|y| {
                    (0..w).flat_map(move |x| {
                        let px = [
                            (x * 255 / w.max(2).saturating_sub(1).max(1)) as u8,
                            (y * 255 / h.max(2).saturating_sub(1).max(1)) as u8,
                            ((x + y) * 127 / (w + h)) as u8 + 64,
                            if x < w / 2 { 255 } else { 0 },
                        ];
                        px.into_iter().take(ch)
                    })
                })
                .collect();
            let px = Pixels {
                width: w,
                height: h,
                has_alpha: alpha,
                data,
                icc: None,
            };
            let bytes = encode_avif(&px, 95, AVIF_SPEED).unwrap();
            let back = decode(
                &bytes,
                SourceFormat::Avif,
                &TransformLimits::default(),
                None,
            )
            .unwrap()
            .pixels;
            assert_eq!((back.width, back.height, back.has_alpha), (w, h, alpha));
            let diff: f64 = px
                .data
                .iter()
                .zip(&back.data)
                .map(|(a, b)| f64::from(a.abs_diff(*b)))
                .sum::<f64>()
                / px.data.len() as f64;
            assert!(
                diff < 4.0,
                "{w}x{h} alpha {alpha}: mean difference {diff:.2}"
            );
        }
    }
}
