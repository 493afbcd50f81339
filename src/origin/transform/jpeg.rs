//! JPEG through libjpeg-turbo: strict decoding at reduced scale (1/2, 1/4, 1/8 inside the IDCT)
//! and 4:2:0 encoding: a decompressor per image, one compressor per resize thread.
//!
//! The `turbojpeg` crate's safe decompressor cannot stop on warnings, and a truncated or corrupt
//! JPEG only *warns* in libjpeg (it returns grey-filled or damaged pixels). So decoding goes
//! through the TurboJPEG 3 C API (`turbojpeg::raw`) with `TJPARAM_STOPONWARNING`, plus the
//! library's own pixel, memory and progressive-scan limits as a second line behind ours.

use std::cell::RefCell;
use std::ffi::CStr;

use turbojpeg::raw;

use crate::error::{Error, Result};

/// Scan limit for progressive JPEGs: real encoders write about 10; thousands of scans are a
/// known CPU exhaustion attack (libjpeg-turbo's own advice is 500).
const MAX_SCANS: i32 = 500;

/// The colour model of the decoded samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JpegColor {
    /// RGB (from YCbCr, RGB or greyscale JPEGs).
    Rgb,
    /// CMYK, as stored (YCCK is converted to CMYK by libjpeg).
    Cmyk,
}

/// Header facts needed to plan a decode.
#[derive(Debug, Clone, Copy)]
pub struct JpegHeader {
    /// Stored width.
    pub width: u32,
    /// Stored height.
    pub height: u32,
    /// What [`Decompressor::decode`] will produce.
    pub color: JpegColor,
    /// Lossless JPEGs cannot be scaled in the IDCT.
    pub lossless: bool,
    /// Stored as Y'CbCr (the JFIF default), so its planes can be kept as they are.
    pub ycc: bool,
    /// TurboJPEG's chroma subsampling (`TJSAMP_*`; -1 when it has no name for it).
    pub subsamp: i32,
}

/// An owned TurboJPEG decompression handle.
struct Decompressor(raw::tjhandle);

// SAFETY (for the whole impl): the handle is non-null (checked in `new`), used by one thread
// only (one decode owns it), and every buffer passed to C is sized from the header
// libjpeg-turbo itself parsed for the same input.
impl Decompressor {
    fn new() -> Result<Self> {
        let h = unsafe { raw::tj3Init(raw::TJINIT_TJINIT_DECOMPRESS as i32) };
        if h.is_null() {
            return Err(Error::Internal("cannot create a jpeg decompressor".into()));
        }
        Ok(Decompressor(h))
    }

    fn error(&self) -> Error {
        let msg = unsafe { CStr::from_ptr(raw::tj3GetErrorStr(self.0)) };
        Error::unprocessable(format!("undecodable jpeg: {}", msg.to_string_lossy()))
    }

    fn set(&mut self, param: raw::TJPARAM, value: i32) -> Result<()> {
        if unsafe { raw::tj3Set(self.0, param as i32, value) } != 0 {
            return Err(self.error());
        }
        Ok(())
    }

    fn header(&mut self, bytes: &[u8], max_pixels: u64) -> Result<JpegHeader> {
        self.set(raw::TJPARAM_TJPARAM_STOPONWARNING, 1)?;
        self.set(raw::TJPARAM_TJPARAM_SCANLIMIT, MAX_SCANS)?;
        self.set(raw::TJPARAM_TJPARAM_SAVEMARKERS, 0)?;
        self.set(
            raw::TJPARAM_TJPARAM_MAXPIXELS,
            i32::try_from(max_pixels).unwrap_or(i32::MAX),
        )?;
        // Progressive coefficient buffers: 2 bytes x 3 components per pixel at most, in MB.
        let max_mb = (max_pixels.saturating_mul(6) >> 20).saturating_add(16);
        self.set(
            raw::TJPARAM_TJPARAM_MAXMEMORY,
            i32::try_from(max_mb).unwrap_or(i32::MAX),
        )?;
        let r = unsafe { raw::tj3DecompressHeader(self.0, bytes.as_ptr(), bytes.len() as _) };
        if r != 0 {
            return Err(self.error());
        }
        let get = |p: raw::TJPARAM| unsafe { raw::tj3Get(self.0, p as i32) };
        let (w, h) = (
            get(raw::TJPARAM_TJPARAM_JPEGWIDTH),
            get(raw::TJPARAM_TJPARAM_JPEGHEIGHT),
        );
        let cs = get(raw::TJPARAM_TJPARAM_COLORSPACE);
        let lossless = get(raw::TJPARAM_TJPARAM_LOSSLESS) != 0;
        let (Ok(width), Ok(height)) = (u32::try_from(w), u32::try_from(h)) else {
            return Err(Error::unprocessable("jpeg: bad dimensions"));
        };
        let color = if cs == raw::TJCS_TJCS_CMYK as i32 || cs == raw::TJCS_TJCS_YCCK as i32 {
            JpegColor::Cmyk
        } else {
            JpegColor::Rgb
        };
        Ok(JpegHeader {
            width,
            height,
            color,
            lossless,
            ycc: cs == raw::TJCS_TJCS_YCbCr as i32,
            subsamp: get(raw::TJPARAM_TJPARAM_SUBSAMP),
        })
    }

    /// Set the IDCT scale for `eighths/8` (lossless: always 8/8); the scaled size.
    fn scale(&mut self, header: &JpegHeader, eighths: u32) -> Result<(u32, u32)> {
        let num = if header.lossless {
            8
        } else {
            eighths.clamp(1, 8)
        };
        // tj3SetScalingFactor matches its table exactly, which holds reduced fractions (1/2,
        // not 4/8).
        let g = [8u32, 4, 2, 1]
            .into_iter()
            .find(|g| num % g == 0)
            .unwrap_or(1);
        let sf = raw::tjscalingfactor {
            num: (num / g) as i32,
            denom: (8 / g) as i32,
        };
        if unsafe { raw::tj3SetScalingFactor(self.0, sf) } != 0 {
            return Err(self.error());
        }
        // TJSCALED: ceil(dimension * num / denom).
        let scaled = |d: u32| (u64::from(d) * u64::from(num)).div_ceil(8) as u32;
        Ok((scaled(header.width), scaled(header.height)))
    }

    /// Decode at `eighths/8` scale. `header` must come from [`Self::header`] on the same bytes.
    fn decode(
        &mut self,
        bytes: &[u8],
        header: &JpegHeader,
        eighths: u32,
    ) -> Result<(u32, u32, Vec<u8>)> {
        let (w, h) = self.scale(header, eighths)?;
        let (pf, channels) = match header.color {
            JpegColor::Rgb => (raw::TJPF_TJPF_RGB, 3usize),
            JpegColor::Cmyk => (raw::TJPF_TJPF_CMYK, 4usize),
        };
        let pitch = w as usize * channels;
        // Not zero-filled first (~1 % of a miss): a successful decode writes every row.
        let len = pitch * h as usize;
        let mut buf: Vec<u8> = Vec::with_capacity(len);
        let r = unsafe {
            raw::tj3Decompress8(
                self.0,
                bytes.as_ptr(),
                bytes.len() as _,
                buf.as_mut_ptr(),
                pitch as i32,
                pf,
            )
        };
        if r != 0 {
            return Err(self.error());
        }
        // SAFETY: `buf` holds `len` bytes; tj3Decompress8 returned success, so it read every
        // scanline (`output_scanline` reached the height) into its row of `pitch` bytes, each
        // row `w` pixels of `channels` bytes: all `len` bytes are written. (A warning, such as
        // data ending early, is an error here: `TJPARAM_STOPONWARNING`.)
        unsafe { buf.set_len(len) };
        Ok((w, h, buf))
    }
}

/// One plane of a [`YuvImage`]: rows of `width` samples, packed.
#[derive(Clone)]
pub struct Plane {
    /// Samples per row.
    pub width: u32,
    /// Rows.
    pub height: u32,
    /// The samples.
    pub data: Vec<u8>,
}

/// A JPEG's Y'CbCr planes as libjpeg holds them between the IDCT and the chroma upsampling
/// (TurboJPEG's planar YUV), or planes made to be encoded as one.
#[derive(Clone)]
pub struct YuvImage {
    /// Image width (the luma plane may be padded past it, as TurboJPEG sizes planes).
    pub width: u32,
    /// Image height.
    pub height: u32,
    /// TurboJPEG's subsampling of the chroma planes (`TJSAMP_*`).
    pub subsamp: i32,
    /// Y, Cb, Cr.
    pub planes: [Plane; 3],
}

impl YuvImage {
    /// Planes of `width` x `height` at `subsamp`, sized as TurboJPEG reads and writes them
    /// (`tj3YUVPlaneWidth`/`Height`: in 4:2:0 the luma plane is padded to even sizes).
    pub fn plane_sizes(width: u32, height: u32, subsamp: i32) -> Result<[(u32, u32); 3]> {
        let (w, h) = (
            i32::try_from(width).map_err(|_| bad_size())?,
            i32::try_from(height).map_err(|_| bad_size())?,
        );
        let mut out = [(0u32, 0u32); 3];
        for (c, o) in out.iter_mut().enumerate() {
            // SAFETY: plain arithmetic on its arguments; -1 for arguments it refuses.
            let (pw, ph) = unsafe {
                (
                    raw::tj3YUVPlaneWidth(c as i32, w, subsamp),
                    raw::tj3YUVPlaneHeight(c as i32, h, subsamp),
                )
            };
            *o = (
                u32::try_from(pw).map_err(|_| bad_size())?,
                u32::try_from(ph).map_err(|_| bad_size())?,
            );
        }
        Ok(out)
    }

    /// Every plane holds exactly TurboJPEG's plane size for this image: what its planar calls
    /// read or write, checked before each.
    fn check_sizes(&self) -> Result<()> {
        let sizes = Self::plane_sizes(self.width, self.height, self.subsamp)?;
        let wrong = self.planes.iter().zip(sizes).any(|(p, (w, h))| {
            p.width != w || p.height != h || p.data.len() != w as usize * h as usize
        });
        if wrong {
            return Err(Error::Internal("yuv planes of the wrong size".into()));
        }
        Ok(())
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.planes.iter().map(|p| p.data.len()).sum()
    }

    /// The RGB a decode of these planes gives: libjpeg's (fancy) chroma upsampling and
    /// Y'CbCr → RGB, as a direct decode does them.
    pub fn to_rgb(&self) -> Result<Vec<u8>> {
        self.check_sizes()?;
        let mut d = Decompressor::new()?;
        d.set(raw::TJPARAM_TJPARAM_SUBSAMP, self.subsamp)?;
        let len = self.width as usize * self.height as usize * 3;
        let mut rgb = vec![0u8; len];
        let ptrs = self.planes.each_ref().map(|p| p.data.as_ptr());
        let strides = self.planes.each_ref().map(|p| p.width as i32);
        // SAFETY: every plane holds its TurboJPEG plane size (checked above); `rgb` holds
        // width x height RGB pixels, rows packed.
        let r = unsafe {
            raw::tj3DecodeYUVPlanes8(
                d.0,
                ptrs.as_ptr(),
                strides.as_ptr(),
                rgb.as_mut_ptr(),
                self.width as i32,
                (self.width * 3) as i32,
                self.height as i32,
                raw::TJPF_TJPF_RGB,
            )
        };
        if r != 0 {
            return Err(d.error());
        }
        Ok(rgb)
    }
}

fn bad_size() -> Error {
    Error::unprocessable("jpeg: bad dimensions")
}

/// [`decode`], to Y'CbCr planes: `plan` gets the header and returns the scale in eighths, or
/// `None` when the planes would not do (the caller then decodes to RGB). Only 3-component
/// Y'CbCr JPEGs with a named subsampling get here.
pub fn decode_planes(
    bytes: &[u8],
    max_pixels: u64,
    plan: impl FnOnce(&JpegHeader) -> Result<Option<u32>>,
) -> Result<Option<(JpegHeader, YuvImage)>> {
    let mut d = Decompressor::new()?;
    let h = d.header(bytes, max_pixels)?;
    if !h.ycc || h.color != JpegColor::Rgb || h.subsamp < 0 || h.subsamp == GRAY {
        return Ok(None);
    }
    let Some(eighths) = plan(&h)? else {
        return Ok(None);
    };
    let (w, hh) = d.scale(&h, eighths)?;
    let sizes = YuvImage::plane_sizes(w, hh, h.subsamp)?;
    let mut planes = sizes.map(|(pw, ph)| Plane {
        width: pw,
        height: ph,
        data: vec![0u8; pw as usize * ph as usize],
    });
    let mut ptrs = planes.each_mut().map(|p| p.data.as_mut_ptr());
    let mut strides = planes.each_ref().map(|p| p.width as i32);
    // SAFETY: each plane holds tj3YUVPlaneWidth x tj3YUVPlaneHeight of the scaled size, which
    // is what tj3DecompressToYUVPlanes8 writes (it sizes its planes the same way).
    let r = unsafe {
        raw::tj3DecompressToYUVPlanes8(
            d.0,
            bytes.as_ptr(),
            bytes.len() as _,
            ptrs.as_mut_ptr(),
            strides.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(d.error());
    }
    Ok(Some((
        h,
        YuvImage {
            width: w,
            height: hh,
            subsamp: h.subsamp,
            planes,
        },
    )))
}

/// TurboJPEG's `TJSAMP_GRAY`.
const GRAY: i32 = raw::TJSAMP_TJSAMP_GRAY;
/// TurboJPEG's `TJSAMP_420`: what [`encode`] and [`encode_planes`] write.
pub const SUBSAMP_420: i32 = raw::TJSAMP_TJSAMP_420;

thread_local! {
    static PLANAR_COMPRESSOR: RefCell<Option<Compressor>> = const { RefCell::new(None) };
}

/// An owned TurboJPEG compression handle (the `turbojpeg` crate's has no planar input).
struct Compressor(raw::tjhandle);

impl Drop for Compressor {
    fn drop(&mut self) {
        unsafe { raw::tj3Destroy(self.0) };
    }
}

/// Encode 4:2:0 planes (sized by [`YuvImage::plane_sizes`]) as baseline JPEG at `quality`,
/// as [`encode`] does RGB but without its colour conversion and chroma downsampling.
pub fn encode_planes(img: &YuvImage, quality: u8) -> Result<Vec<u8>> {
    if img.subsamp != SUBSAMP_420 {
        return Err(Error::Internal("yuv planes not 4:2:0".into()));
    }
    img.check_sizes()?;
    PLANAR_COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let c = match slot.as_mut() {
            Some(c) => c,
            None => {
                let h = unsafe { raw::tj3Init(raw::TJINIT_TJINIT_COMPRESS as i32) };
                if h.is_null() {
                    return Err(Error::Internal("cannot create a jpeg compressor".into()));
                }
                slot.insert(Compressor(h))
            }
        };
        let fail = |c: &Compressor| {
            let msg = unsafe { CStr::from_ptr(raw::tj3GetErrorStr(c.0)) };
            Error::unprocessable(format!("cannot encode jpeg: {}", msg.to_string_lossy()))
        };
        for (param, value) in [
            (raw::TJPARAM_TJPARAM_QUALITY, i32::from(quality)),
            (raw::TJPARAM_TJPARAM_SUBSAMP, SUBSAMP_420),
        ] {
            if unsafe { raw::tj3Set(c.0, param as i32, value) } != 0 {
                return Err(fail(c));
            }
        }
        let ptrs = img.planes.each_ref().map(|p| p.data.as_ptr());
        let strides = img.planes.each_ref().map(|p| p.width as i32);
        let mut buf: *mut u8 = std::ptr::null_mut();
        let mut size: raw::size_t = 0;
        // SAFETY: the planes hold the sizes TurboJPEG reads (checked above); it allocates the
        // output, freed below.
        let r = unsafe {
            raw::tj3CompressFromYUVPlanes8(
                c.0,
                ptrs.as_ptr(),
                img.width as i32,
                strides.as_ptr(),
                img.height as i32,
                &mut buf,
                &mut size,
            )
        };
        let out = if r == 0 && !buf.is_null() {
            // SAFETY: on success `buf` holds `size` bytes of JPEG.
            Ok(unsafe { std::slice::from_raw_parts(buf, size as usize) }.to_vec())
        } else {
            Err(fail(c))
        };
        // SAFETY: allocated by TurboJPEG (or null, which it ignores).
        unsafe { raw::tj3Free(buf as *mut _) };
        out
    })
}

impl Drop for Decompressor {
    fn drop(&mut self) {
        unsafe { raw::tj3Destroy(self.0) };
    }
}

thread_local! {
    static COMPRESSOR: RefCell<Option<turbojpeg::Compressor>> = const { RefCell::new(None) };
}

/// Decode strictly at the `eighths/8` scale `plan` picks from the header (1..=8; `plan` may
/// also refuse): `(header, width, height, samples)`. One header parse serves both.
///
/// Each decode has a handle of its own: libjpeg keeps Huffman and quantization tables in the
/// handle from one image to the next (for abbreviated datastreams), so a reused one would decode
/// a JPEG that lacks a table with the previous request's, or fail on a table a corrupt one left
/// (`decodes_as_upstream_libjpeg_turbo` caught both). A handle costs microseconds.
pub fn decode(
    bytes: &[u8],
    max_pixels: u64,
    plan: impl FnOnce(&JpegHeader) -> Result<u32>,
) -> Result<(JpegHeader, u32, u32, Vec<u8>)> {
    let mut d = Decompressor::new()?;
    let h = d.header(bytes, max_pixels)?;
    let eighths = plan(&h)?;
    let (w, hh, px) = d.decode(bytes, &h, eighths)?;
    Ok((h, w, hh, px))
}

/// The IDCT scale, in eighths, for a total shrink (source pixels per output pixel along the
/// less-shrunk axis): 1/2 from 3x, 1/4 from 8x, 1/8 from 16x.
///
/// This is libvips' shrink-on-load rule (leave the resampler at least 2x: 1/2 from 4x) except
/// between 3x and 4x, where a full decode is most of the cost of a miss (12 MP → 1200 px, 2 MP →
/// 400 px squares) and a 1/2-scale decode leaves the resampler 1.5-2x. Measured on the corpus'
/// JPEGs in that band (lossless outputs, so no encoder noise): SSIM 0.996-0.998 against libvips'
/// own output and within 0.002 of it against a Lanczos resize of the full decode; sharp's default
/// (`fastShrinkOnLoad`, as imgproxy) goes further, to the largest power of two below the shrink
/// from 3x, 5x and 9x, and costs up to 0.016 there (0.984 against libvips at 6.25x), so above 4x
/// libvips' rule stays. The M/8 scales are not used: 5/8 is 10-20% faster than a full decode but
/// only 0.987-0.992 against libvips' output, and 6/8 and 7/8 (scalar IDCTs, where 8x8 and the
/// 1/2 are SIMD) are no faster than a full decode (`benches/vs_libvips.sh` inputs, six photos).
pub fn scale_eighths(shrink: f64) -> u32 {
    if shrink >= 16.0 {
        1
    } else if shrink >= 8.0 {
        2
    } else if shrink >= 3.0 {
        4
    } else {
        8
    }
}

/// Encode RGB8 as baseline JPEG, 4:2:0, at `quality`. No metadata is written.
pub fn encode(rgb: &[u8], width: u32, height: u32, quality: u8) -> Result<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        let c = match slot.as_mut() {
            Some(c) => c,
            None => slot.insert(
                turbojpeg::Compressor::new()
                    .map_err(|e| Error::Internal(format!("jpeg compressor: {e}")))?,
            ),
        };
        let fail = |e: turbojpeg::Error| Error::unprocessable(format!("cannot encode jpeg: {e}"));
        c.set_quality(i32::from(quality)).map_err(fail)?;
        c.set_subsamp(turbojpeg::Subsamp::Sub2x2).map_err(fail)?;
        let img = turbojpeg::Image {
            pixels: rgb,
            width: width as usize,
            pitch: width as usize * 3,
            height: height as usize,
            format: turbojpeg::PixelFormat::RGB,
        };
        c.compress_to_vec(img).map_err(fail)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_is_libvips_rule_with_half_scale_from_3x() {
        assert_eq!(scale_eighths(1.0), 8);
        assert_eq!(scale_eighths(2.99), 8);
        assert_eq!(scale_eighths(3.0), 4);
        assert_eq!(scale_eighths(4.0), 4);
        assert_eq!(scale_eighths(7.9), 4);
        assert_eq!(scale_eighths(8.0), 2);
        assert_eq!(scale_eighths(15.9), 2);
        assert_eq!(scale_eighths(16.0), 1);
        assert_eq!(scale_eighths(100.0), 1);
        assert_eq!(scale_eighths(f64::NAN), 8);
    }

    #[test]
    fn round_trip_and_truncation_is_an_error() {
        let (w, h) = (64u32, 48u32);
        let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i % 251) as u8).collect();
        let jpeg = encode(&rgb, w, h, 90).unwrap();
        let (hd, dw, dh, px) = decode(&jpeg, 1 << 20, |_| Ok(4)).unwrap();
        assert_eq!((hd.width, hd.height, dw, dh), (64, 48, 32, 24));
        assert_eq!(px.len(), 32 * 24 * 3);
        // 5/8: ceil(64 * 5 / 8) x ceil(48 * 5 / 8).
        let (_, dw, dh, px) = decode(&jpeg, 1 << 20, |_| Ok(5)).unwrap();
        assert_eq!((dw, dh, px.len()), (40, 30, 40 * 30 * 3));
        let cut = &jpeg[..jpeg.len() * 2 / 3];
        assert_eq!(decode(cut, 1 << 20, |_| Ok(8)).unwrap_err().status(), 422);
        // libjpeg-turbo's own pixel limit, behind ours (which checks the header first).
        assert_eq!(decode(&jpeg, 100, |_| Ok(8)).unwrap_err().status(), 422);
    }

    /// `jpeg` without its DHT segments (tables before the first scan only, as ours write them).
    fn without_huffman_tables(jpeg: &[u8]) -> Vec<u8> {
        let (mut out, mut i) = (jpeg[..2].to_vec(), 2);
        while jpeg[i + 1] != 0xDA {
            let end = i + 2 + usize::from(u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]));
            if jpeg[i + 1] != 0xC4 {
                out.extend_from_slice(&jpeg[i..end]);
            }
            i = end;
        }
        out.extend_from_slice(&jpeg[i..]);
        out
    }

    /// A JPEG that leaves its Huffman tables out (as Motion-JPEG frames do) decodes with the
    /// standard ones, whatever this thread decoded before: a reused libjpeg handle kept the
    /// previous image's tables and used them instead.
    #[test]
    fn a_decode_never_uses_the_previous_images_tables() {
        let (w, h) = (64u32, 48u32);
        let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 253) as u8).collect();
        // libjpeg-turbo's encoder writes the standard tables, so leaving them out changes nothing.
        let jpeg = encode(&rgb, w, h, 90).unwrap();
        let bare = without_huffman_tables(&jpeg);
        assert!(bare.len() + 400 < jpeg.len(), "four tables left out");
        let want = decode(&jpeg, 1 << 20, |_| Ok(8)).unwrap().3;
        // A photo with optimised tables in the same slots, decoded on this thread first.
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let photo = std::fs::read(root.join("tests/corpus/valid/jpeg-baseline-2560x1600.jpg"));
        decode(&photo.unwrap(), 1 << 24, |_| Ok(1)).unwrap();
        assert!(decode(&bare, 1 << 20, |_| Ok(8)).unwrap().3 == want);
    }

    /// Corruption `k` of `data`: tests/data/make_jpeg_decode_hashes.py's `mutant`, the same
    /// LCG, so both sides decode the same bytes.
    fn mutant(data: &[u8], k: u64) -> Vec<u8> {
        let mut state = k + 1;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            state >> 33
        };
        let mut d = data.to_vec();
        let start = d.len() / 4;
        for _ in 0..1 + next() % 2 {
            let pos = start + (next() % (d.len() - start - 2) as u64) as usize;
            d[pos] = (next() % 256) as u8;
        }
        d
    }

    /// The vendored libjpeg-turbo decodes a whole AC coefficient per table lookup where upstream
    /// takes the code and the magnitude bits in two steps (vendor/turbojpeg-sys/IMGEDGE.md).
    /// Every sample must stay what upstream 3.1.0 makes through the same TurboJPEG calls: the
    /// corpus at each IDCT scale, two files with restart markers (where the fast path backs out
    /// at every marker), a small progressive file (whose refinement scans take the branch-free
    /// correction bits), and corrupted files (where the new table meets invalid codes, stray
    /// markers, runs past the block), or the same refusal
    /// (tests/data/make_jpeg_decode_hashes.py and tjdecode.c make the fixture).
    #[test]
    fn decodes_as_upstream_libjpeg_turbo() {
        use sha2::{Digest, Sha256};
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let fixture = std::fs::read_to_string(root.join("tests/data/jpeg-decode-sha256.tsv"))
            .expect("fixture");
        let (mut checked, mut decoded, mut unseen, mut wrong) = (0, 0, 0, Vec::new());
        for line in fixture.lines().filter(|l| !l.starts_with('#')) {
            let [name, eighths, want] = line.split('\t').collect::<Vec<_>>()[..] else {
                panic!("bad fixture line {line:?}");
            };
            let (file, k) = match name.split_once('#') {
                Some((f, k)) => (f, Some(k.parse::<u64>().unwrap())),
                None => (name, None),
            };
            // A name with a directory is under tests/ (the restart-marker and progressive
            // files), else a corpus file.
            let path = match file.contains('/') {
                true => root.join("tests").join(file),
                false => root.join("tests/corpus/valid").join(file),
            };
            let data = std::fs::read(path).unwrap();
            let progressive = crate::origin::transform::container::jpeg_meta(&data).progressive;
            let data = match k {
                Some(k) => mutant(&data, k),
                None => data,
            };
            let eighths: u32 = eighths.parse().unwrap();
            let got = match decode(&data, 100_000_000, |_| Ok(eighths)) {
                Ok((_, w, h, px)) => {
                    decoded += 1;
                    format!("{w}x{h} {}", hex::encode(Sha256::digest(&px)))
                }
                Err(_) => "error".to_string(),
            };
            checked += 1;
            // At 1/8 scale the vendored decoder skips the AC scans of a progressive file's
            // components whose IDCT reads only the DC coefficient (IMGEDGE.md); corruption
            // confined to such a scan then goes unseen where upstream, decoding it, refuses.
            // That is the one allowed difference: a refusal upstream, an image here.
            if eighths == 1 && progressive && want == "error" && got != "error" {
                unseen += 1;
                continue;
            }
            if got != want {
                wrong.push(format!("{name} at {eighths}/8: {got}, upstream {want}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
        assert!(unseen <= 16, "{unseen} refusals upstream decoded here");
        assert!(
            checked > 200 && decoded > 100,
            "{checked} checked, {decoded} decoded"
        );
    }
}
