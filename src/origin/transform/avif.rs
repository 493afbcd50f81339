//! AVIF sources: sizes and colour read from the container before anything is decoded, AV1
//! decoded by dav1d (the C decoder browsers use, vendored by libdav1d-sys), YUV to RGB by `yuv`.
//!
//! Limits: every `ispe` (image spatial extents) in the container and the AV1 sequence headers'
//! maximum frame sizes of the colour and alpha items are checked against
//! `limits.max_source_pixels` before the decoder is opened, and the decoder itself is given the
//! same limit (`frame_size_limit`). Only still images are read: the primary item, first frame of
//! an image sequence; grid (tiled) images are refused.
//!
//! Alpha is the auxiliary alpha item, kept straight (un-premultiplied when the file says
//! `prem`). Colour: an ICC profile (`colr` `prof`/`rICC`) is applied like any other source's;
//! otherwise the CICP code points (`colr` `nclx`, else the AV1 sequence header) give the YUV
//! matrix and range, and non-BT.709 primaries with an SDR transfer get a profile built from them.
//! HDR transfers (PQ, HLG) are not tone-mapped. `irot`/`imir` are applied, in file order.

use std::borrow::Cow;
use std::mem::MaybeUninit;
use std::os::raw::c_int;
use std::ptr;

use image::{DynamicImage, ImageBuffer};
use libdav1d_sys::{
    dav1d_close, dav1d_data_create, dav1d_data_unref, dav1d_default_settings, dav1d_get_picture,
    dav1d_open, dav1d_picture_unref, dav1d_send_data, Dav1dContext, Dav1dData, Dav1dPicture,
    Dav1dSettings, DAV1D_ERR_AGAIN,
};
use yuv::{YuvGrayImage, YuvPlanarImage, YuvRange, YuvStandardMatrix};

use super::pixels::{check_pixels, Pixels};
use super::{color, TransformLimits};
use crate::error::{Error, Result};

fn bad(msg: impl std::fmt::Display) -> Error {
    Error::unprocessable(format!("avif: {msg}"))
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The boxes in `b` as (type, body), stopping at the first malformed or truncated header.
fn boxes(b: &[u8]) -> impl Iterator<Item = ([u8; 4], &[u8])> {
    let mut i = 0usize;
    std::iter::from_fn(move || {
        let size = be32(b, i)?;
        let ty: [u8; 4] = b.get(i + 4..i + 8)?.try_into().ok()?;
        let (header, size) = match size {
            0 => (8, b.len() - i), // to the end of the enclosing box
            1 => (
                16,
                usize::try_from(u64::from_be_bytes(b.get(i + 8..i + 16)?.try_into().ok()?)).ok()?,
            ),
            n => (8, usize::try_from(n).ok()?),
        };
        if size < header {
            return None;
        }
        let end = i.checked_add(size)?;
        let body = b.get(i + header..end)?;
        i = end;
        Some((ty, body))
    })
}

fn child<'a>(b: &'a [u8], ty: &[u8; 4]) -> Option<&'a [u8]> {
    boxes(b).find(|(t, _)| t == ty).map(|(_, body)| body)
}

/// CICP code points (ITU-T H.273), from an `nclx` box or the AV1 sequence header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cicp {
    /// Colour primaries (1 = BT.709/sRGB, 2 = unspecified, 12 = Display P3, 9 = BT.2020).
    pub primaries: u8,
    /// Transfer characteristics (13 = sRGB, 1/6 = BT.709/601, 16 = PQ, 18 = HLG).
    pub transfer: u8,
    /// Matrix coefficients (0 = identity/GBR, 1 = BT.709, 6 = BT.601, 8 = YCgCo, 9 = BT.2020).
    pub matrix: u8,
    /// Full-range samples (else limited/"video" range).
    pub full_range: bool,
}

/// A transformative property, in the order the file lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    /// `irot`: quarter turns anticlockwise.
    Rotate(u8),
    /// `imir`: 0 exchanges top and bottom, 1 left and right.
    Mirror(u8),
}

/// What the container says about the primary image, read without decoding anything.
#[derive(Debug, Default)]
pub struct Props {
    /// The primary item's `ispe` (stored size, before `irot`).
    pub width: u32,
    /// See `width`.
    pub height: u32,
    /// Every `ispe` in the file (colour, alpha, thumbnails, grid tiles).
    pub extents: Vec<(u32, u32)>,
    /// `colr` `nclx`.
    pub nclx: Option<Cicp>,
    /// `colr` `prof` or `rICC`.
    pub icc: Option<Vec<u8>>,
    /// `irot` and `imir`, in order.
    pub transforms: Vec<Transform>,
}

/// Read the primary item's properties (meta → pitm, iprp → ipco + ipma). Bounded by the input:
/// every loop advances through `b` or stops.
pub fn props(b: &[u8]) -> Result<Props> {
    let meta = child(b, b"meta")
        .and_then(|m| m.get(4..)) // full box: version + flags
        .ok_or_else(|| bad("no meta box"))?;
    let pitm = child(meta, b"pitm").ok_or_else(|| bad("no primary item"))?;
    let primary = match pitm.first() {
        Some(0) => be16(pitm, 4).map(u32::from),
        _ => be32(pitm, 4),
    }
    .ok_or_else(|| bad("malformed pitm box"))?;
    let iprp = child(meta, b"iprp").ok_or_else(|| bad("no item properties"))?;
    let ipco = child(iprp, b"ipco").ok_or_else(|| bad("no item properties"))?;
    let properties: Vec<([u8; 4], &[u8])> = boxes(ipco).collect();

    let mut p = Props::default();
    for (ty, body) in &properties {
        if ty == b"ispe" {
            if let (Some(w), Some(h)) = (be32(body, 4), be32(body, 8)) {
                p.extents.push((w, h));
            }
        }
    }
    let mut found_ispe = false;
    for index in primary_associations(iprp, primary) {
        let Some((ty, body)) = index
            .checked_sub(1)
            .and_then(|i| properties.get(usize::from(i)))
        else {
            continue;
        };
        match ty {
            b"ispe" => {
                if let (Some(w), Some(h)) = (be32(body, 4), be32(body, 8)) {
                    (p.width, p.height, found_ispe) = (w, h, true);
                }
            }
            b"colr" => match body.get(..4) {
                Some(b"nclx") if p.nclx.is_none() => {
                    if let (Some(pri), Some(trc), Some(mtx), Some(&flags)) =
                        (be16(body, 4), be16(body, 6), be16(body, 8), body.get(10))
                    {
                        let code = |v: u16| u8::try_from(v).unwrap_or(u8::MAX);
                        p.nclx = Some(Cicp {
                            primaries: code(pri),
                            transfer: code(trc),
                            matrix: code(mtx),
                            full_range: flags & 0x80 != 0,
                        });
                    }
                }
                Some(b"prof" | b"rICC") if p.icc.is_none() => p.icc = Some(body[4..].to_vec()),
                _ => {}
            },
            b"irot" => {
                if let Some(&r) = body.first() {
                    p.transforms.push(Transform::Rotate(r & 3));
                }
            }
            b"imir" => {
                if let Some(&m) = body.first() {
                    p.transforms.push(Transform::Mirror(m & 1));
                }
            }
            _ => {}
        }
    }
    if !found_ispe {
        return Err(bad("the primary image has no size (ispe)"));
    }
    Ok(p)
}

/// The 1-based `ipco` indices associated with `item` by the `ipma` boxes of `iprp`.
fn primary_associations(iprp: &[u8], item: u32) -> Vec<u16> {
    let mut out = Vec::new();
    for (_, ipma) in boxes(iprp).filter(|(t, _)| t == b"ipma") {
        let (Some(&version), Some(&flags), Some(count)) =
            (ipma.first(), ipma.get(3), be32(ipma, 4))
        else {
            continue;
        };
        let mut at = 8;
        for _ in 0..count {
            let id = if version < 1 {
                be16(ipma, at).map(u32::from)
            } else {
                be32(ipma, at)
            };
            at += if version < 1 { 2 } else { 4 };
            let (Some(id), Some(&n)) = (id, ipma.get(at)) else {
                break;
            };
            at += 1;
            for _ in 0..n {
                let index = if flags & 1 != 0 {
                    be16(ipma, at).map(|v| v & 0x7FFF)
                } else {
                    ipma.get(at).map(|&v| u16::from(v & 0x7F))
                };
                at += if flags & 1 != 0 { 2 } else { 1 };
                match index {
                    Some(i) if id == item => out.push(i),
                    Some(_) => {}
                    None => return out,
                }
            }
        }
    }
    out
}

/// Decode the primary image of an AVIF to upright RGB8 (RGBA8 with an alpha item).
pub fn decode(bytes: &[u8], limits: &TransformLimits) -> Result<Pixels> {
    let props = props(bytes)?;
    for &(w, h) in &props.extents {
        check_pixels(w, h, limits)?;
    }
    check_pixels(props.width, props.height, limits)?;
    let avif = avif_parse::read_avif(&mut &bytes[..]).map_err(bad)?;
    // What the decoder will allocate, from the AV1 sequence headers, before it is opened.
    let meta = avif.primary_item_metadata().map_err(bad)?;
    check_pixels(
        meta.max_frame_width.get(),
        meta.max_frame_height.get(),
        limits,
    )?;
    if let Some(a) = avif.alpha_item_metadata().map_err(bad)? {
        check_pixels(a.max_frame_width.get(), a.max_frame_height.get(), limits)?;
    }

    let has_alpha = avif.alpha_item.is_some();
    let colour = Picture::decode(&avif.primary_item, limits.max_source_pixels)?;
    let (width, height) = colour.size()?;
    check_pixels(width, height, limits)?;
    let seq = colour.cicp();
    // The container's nclx wins over the bitstream's (as in libavif).
    let cicp = props.nclx.or(seq).unwrap_or(Cicp {
        primaries: 2,
        transfer: 2,
        matrix: 2,
        full_range: false,
    });
    let mut data = colour.to_rgb(cicp, has_alpha)?;
    drop(colour);

    if let Some(alpha_item) = &avif.alpha_item {
        let alpha = Picture::decode(alpha_item, limits.max_source_pixels)?;
        if alpha.size()? != (width, height) {
            return Err(bad(
                "the alpha image's size differs from the colour image's",
            ));
        }
        let full = alpha.cicp().is_none_or(|c| c.full_range);
        let (plane, stride) = alpha.plane(0)?;
        for (y, row) in data.chunks_exact_mut(width as usize * 4).enumerate() {
            let src = &plane[y * stride..y * stride + width as usize];
            for (px, &a) in row.chunks_exact_mut(4).zip(src) {
                px[3] = if full {
                    a
                } else {
                    ((u32::from(a.clamp(16, 235)) - 16) * 255 / 219) as u8
                };
            }
        }
        if avif.premultiplied_alpha {
            unpremultiply(&mut data);
        }
    }

    let icc = match props.icc {
        Some(icc) => Some(icc),
        None => color::cicp_profile(cicp.primaries, cicp.transfer),
    };
    let px = Pixels {
        width,
        height,
        has_alpha,
        data,
        icc,
    };
    orient(px, &props.transforms)
}

fn unpremultiply(rgba: &mut [u8]) {
    for px in rgba.chunks_exact_mut(4) {
        let a = u32::from(px[3]);
        if a != 0 && a != 255 {
            for c in &mut px[..3] {
                *c = ((u32::from(*c) * 255 + a / 2) / a).min(255) as u8;
            }
        }
    }
}

/// Apply `irot`/`imir` in file order.
fn orient(px: Pixels, transforms: &[Transform]) -> Result<Pixels> {
    if transforms.iter().all(|t| *t == Transform::Rotate(0)) {
        return Ok(px);
    }
    let (w, h, icc) = (px.width, px.height, px.icc);
    let size = || Error::Internal("avif buffer size".into());
    let mut img = if px.has_alpha {
        DynamicImage::ImageRgba8(ImageBuffer::from_raw(w, h, px.data).ok_or_else(size)?)
    } else {
        DynamicImage::ImageRgb8(ImageBuffer::from_raw(w, h, px.data).ok_or_else(size)?)
    };
    for t in transforms {
        img = match *t {
            // image's rotations are clockwise.
            Transform::Rotate(1) => img.rotate270(),
            Transform::Rotate(2) => img.rotate180(),
            Transform::Rotate(3) => img.rotate90(),
            Transform::Mirror(0) => img.flipv(),
            Transform::Mirror(_) => img.fliph(),
            Transform::Rotate(_) => img,
        };
    }
    let (width, height) = (img.width(), img.height());
    let has_alpha = img.color().has_alpha();
    let data = if has_alpha {
        img.into_rgba8().into_raw()
    } else {
        img.into_rgb8().into_raw()
    };
    Ok(Pixels {
        width,
        height,
        has_alpha,
        data,
        icc,
    })
}

/// More pictures than a layered still image can have (AV1 has at most 4 spatial layers).
const MAX_PICTURES_PER_ITEM: u32 = 8;

// dav1d's pixel layouts (`Dav1dPixelLayout`), read as integers.
const LAYOUT_I400: u32 = 0;
const LAYOUT_I420: u32 = 1;
const LAYOUT_I422: u32 = 2;
const LAYOUT_I444: u32 = 3;

fn check(res: c_int, what: &str) -> Result<()> {
    if res == 0 {
        Ok(())
    } else {
        Err(bad(format!(
            "{what}: {}",
            std::io::Error::from_raw_os_error(res.saturating_neg())
        )))
    }
}

/// An open decoder, closed on drop.
struct Context(*mut Dav1dContext);

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: the pointer came from dav1d_open (or is null, which dav1d_close ignores).
        unsafe { dav1d_close(&mut self.0) };
    }
}

/// Input data, released on drop (a no-op once the decoder took all of it).
struct Data(Dav1dData);

impl Drop for Data {
    fn drop(&mut self) {
        // SAFETY: the data is zeroed or was made by dav1d_data_create.
        unsafe { dav1d_data_unref(&mut self.0) };
    }
}

/// A decoded picture, released on drop (an empty one too: unref ignores it).
struct Picture(Dav1dPicture);

impl Drop for Picture {
    fn drop(&mut self) {
        // SAFETY: the picture is either zeroed (no buffers) or was filled by dav1d_get_picture.
        unsafe { dav1d_picture_unref(&mut self.0) };
    }
}

impl Picture {
    fn empty() -> Picture {
        // SAFETY: all-zero is dav1d's own "no picture" state (pointers null, sizes 0).
        Picture(unsafe { MaybeUninit::<Dav1dPicture>::zeroed().assume_init() })
    }

    /// Decode one AVIF item (one AV1 temporal unit) on the calling thread. For a layered item
    /// the last picture is the complete one.
    fn decode(av1: &[u8], max_pixels: u64) -> Result<Picture> {
        if av1.is_empty() {
            return Err(bad("empty image item"));
        }
        let mut settings = MaybeUninit::<Dav1dSettings>::uninit();
        // SAFETY: dav1d_default_settings initialises every field of the struct it is given.
        let mut settings = unsafe {
            dav1d_default_settings(settings.as_mut_ptr());
            settings.assume_init()
        };
        // One image per resize worker: no decoder threads of its own, no frame pipelining.
        settings.n_threads = 1;
        settings.max_frame_delay = 1;
        settings.apply_grain = 1;
        // Errors come back as results; nothing is printed to stderr.
        settings.logger.callback = None;
        // The decoder refuses frames over the pixel limit before allocating them.
        settings.frame_size_limit = u32::try_from(max_pixels).unwrap_or(u32::MAX);
        let mut ctx = Context(ptr::null_mut());
        // SAFETY: both pointers are to live locals; on success ctx.0 holds the context.
        check(unsafe { dav1d_open(&mut ctx.0, &settings) }, "decoder")?;
        if ctx.0.is_null() {
            return Err(bad("decoder did not open"));
        }
        let c = ctx.0;

        // SAFETY: all-zero is an empty Dav1dData.
        let mut data = Data(unsafe { MaybeUninit::<Dav1dData>::zeroed().assume_init() });
        // SAFETY: dav1d_data_create allocates `len` bytes owned by `data` (or returns null).
        let buf = unsafe { dav1d_data_create(&mut data.0, av1.len()) };
        if buf.is_null() {
            return Err(bad("out of memory"));
        }
        // SAFETY: `buf` has room for av1.len() bytes and does not overlap `av1`.
        unsafe { ptr::copy_nonoverlapping(av1.as_ptr(), buf, av1.len()) };
        let mut last: Option<Picture> = None;
        let mut pictures = 0;
        let mut take = |last: &mut Option<Picture>| -> Result<bool> {
            let mut pic = Picture::empty();
            // SAFETY: `c` is open; `pic` is an empty picture for it to fill.
            let got = unsafe { dav1d_get_picture(c, &mut pic.0) };
            if got == DAV1D_ERR_AGAIN {
                return Ok(false);
            }
            check(got, "decode")?;
            // A still image is one picture (a few with spatial layers); a stream of shown
            // frames packed into one item is refused before it costs a picture each.
            pictures += 1;
            if pictures > MAX_PICTURES_PER_ITEM {
                return Err(bad("too many frames in one image item"));
            }
            *last = Some(pic);
            Ok(true)
        };
        while data.0.sz > 0 {
            // SAFETY: `c` is open and `data` holds the buffer made above.
            let res = unsafe { dav1d_send_data(c, &mut data.0) };
            if res == DAV1D_ERR_AGAIN {
                // The decoder holds a frame and wants it taken before it takes more data.
                if !take(&mut last)? {
                    return Err(bad("decoder accepts no more data"));
                }
                continue;
            }
            check(res, "send")?;
            break; // 0: all of it was taken
        }
        drop(data);
        while take(&mut last)? {}
        last.ok_or_else(|| bad("no picture decoded"))
    }

    /// The pixel layout, read as the integer dav1d stores.
    fn layout(&self) -> u32 {
        // SAFETY: reads the field's four bytes as u32 rather than as the bindgen enum, which a
        // value outside it would make undefined behaviour.
        unsafe { ptr::addr_of!(self.0.p.layout).cast::<u32>().read() }
    }

    fn size(&self) -> Result<(u32, u32)> {
        let (w, h) = (self.0.p.w, self.0.p.h);
        match (u32::try_from(w), u32::try_from(h)) {
            (Ok(w), Ok(h)) if w > 0 && h > 0 => Ok((w, h)),
            _ => Err(bad("decoded picture has no pixels")),
        }
    }

    /// CICP from the AV1 sequence header.
    fn cicp(&self) -> Option<Cicp> {
        let seq = self.0.seq_hdr;
        if seq.is_null() {
            return None;
        }
        // SAFETY: a decoded picture's sequence header lives as long as the picture. The code
        // points are read as the integers dav1d stores (any 8-bit value from the bitstream),
        // not as bindgen's enums, which an unlisted value would make undefined behaviour.
        let (pri, trc, mtrx, range) = unsafe {
            (
                ptr::addr_of!((*seq).pri).cast::<u32>().read(),
                ptr::addr_of!((*seq).trc).cast::<u32>().read(),
                ptr::addr_of!((*seq).mtrx).cast::<u32>().read(),
                (*seq).color_range,
            )
        };
        let code = |v: u32| u8::try_from(v).unwrap_or(u8::MAX);
        Some(Cicp {
            primaries: code(pri),
            transfer: code(trc),
            matrix: code(mtrx),
            full_range: range != 0,
        })
    }

    /// Plane `n` (0 = Y, 1 = U, 2 = V) as 8-bit samples and its stride in samples. 10- and
    /// 12-bit samples are rounded to 8 bits (the output is 8-bit anyway).
    fn plane(&self, n: usize) -> Result<(Cow<'_, [u8]>, usize)> {
        let (w, h) = self.size()?;
        let (ss_x, ss_y) = match (n, self.layout()) {
            (0, _) | (_, LAYOUT_I444) => (0, 0),
            (_, LAYOUT_I420) => (1, 1),
            (_, LAYOUT_I422) => (1, 0),
            _ => return Err(bad("unknown pixel layout")),
        };
        let (w, h) = (((w + ss_x) >> ss_x) as usize, ((h + ss_y) >> ss_y) as usize);
        let bpc = self.0.p.bpc;
        let bytes = if bpc <= 8 { 1 } else { 2 };
        let ptr = self.0.data[n];
        if ptr.is_null() {
            return Err(bad("missing plane"));
        }
        let stride = usize::try_from(self.0.stride[usize::from(n > 0)])
            .ok()
            .filter(|s| s % bytes == 0 && s / bytes >= w)
            .ok_or_else(|| bad("unexpected plane stride"))?
            / bytes;
        if bytes == 1 {
            // SAFETY: the decoder allocates whole rows (stride) for at least h rows of the plane,
            // and the picture outlives the borrow.
            let s = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), stride * h) };
            return Ok((Cow::Borrowed(s), stride));
        }
        if ptr.align_offset(2) != 0 {
            return Err(bad("unaligned plane"));
        }
        // SAFETY: as above, with 16-bit samples (alignment checked).
        let s = unsafe { std::slice::from_raw_parts(ptr.cast::<u16>(), stride * h) };
        let shift = u32::try_from(bpc - 8).map_err(|_| bad("bit depth"))?;
        let max = (1u32 << bpc) - 1;
        let mut out = Vec::with_capacity(w * h);
        for row in s.chunks_exact(stride) {
            out.extend(row[..w].iter().map(|&v| {
                let v = u32::from(v).min(max);
                ((v + (1 << shift >> 1)) >> shift).min(255) as u8
            }));
        }
        Ok((Cow::Owned(out), w))
    }

    /// The picture as RGB8 (RGBA8 with opaque alpha when `rgba`), per `cicp`'s matrix and range.
    fn to_rgb(&self, cicp: Cicp, rgba: bool) -> Result<Vec<u8>> {
        let (w, h) = self.size()?;
        let ch = if rgba { 4 } else { 3 };
        let mut out = vec![0u8; w as usize * h as usize * ch];
        let dst_stride = w * ch as u32;
        let range = if cicp.full_range {
            YuvRange::Full
        } else {
            YuvRange::Limited
        };
        let matrix = match cicp.matrix {
            1 => YuvStandardMatrix::Bt709,
            4 => YuvStandardMatrix::Fcc,
            7 => YuvStandardMatrix::Smpte240,
            9 | 10 => YuvStandardMatrix::Bt2020,
            // 5 and 6 are BT.601's matrix; 2 (unspecified) is read as BT.601, as libavif does.
            _ => YuvStandardMatrix::Bt601,
        };
        let layout = self.layout();
        let (y, y_stride) = self.plane(0)?;
        let res = if layout == LAYOUT_I400 {
            let gray = YuvGrayImage {
                y_plane: &y,
                y_stride: y_stride as u32,
                width: w,
                height: h,
            };
            if rgba {
                yuv::yuv400_to_rgba(&gray, &mut out, dst_stride, range, matrix)
            } else {
                yuv::yuv400_to_rgb(&gray, &mut out, dst_stride, range, matrix)
            }
        } else {
            let (u, u_stride) = self.plane(1)?;
            let (v, v_stride) = self.plane(2)?;
            let img = YuvPlanarImage {
                y_plane: &y,
                y_stride: y_stride as u32,
                u_plane: &u,
                u_stride: u_stride as u32,
                v_plane: &v,
                v_stride: v_stride as u32,
                width: w,
                height: h,
            };
            match (cicp.matrix, layout, rgba) {
                (0, LAYOUT_I444, false) => yuv::gbr_to_rgb(&img, &mut out, dst_stride, range),
                (0, LAYOUT_I444, true) => yuv::gbr_to_rgba(&img, &mut out, dst_stride, range),
                (0, _, _) => return Err(bad("identity matrix with subsampled chroma")),
                (8, LAYOUT_I420, false) => yuv::ycgco420_to_rgb(&img, &mut out, dst_stride, range),
                (8, LAYOUT_I420, true) => yuv::ycgco420_to_rgba(&img, &mut out, dst_stride, range),
                (8, LAYOUT_I422, false) => yuv::ycgco422_to_rgb(&img, &mut out, dst_stride, range),
                (8, LAYOUT_I422, true) => yuv::ycgco422_to_rgba(&img, &mut out, dst_stride, range),
                (8, _, false) => yuv::ycgco444_to_rgb(&img, &mut out, dst_stride, range),
                (8, _, true) => yuv::ycgco444_to_rgba(&img, &mut out, dst_stride, range),
                (12..=14, _, _) => return Err(bad("unsupported matrix coefficients")),
                // Subsampled chroma is upsampled bilinearly (libavif's default), not repeated.
                (_, LAYOUT_I420, false) => {
                    yuv::yuv420_to_rgb_bilinear(&img, &mut out, dst_stride, range, matrix)
                }
                (_, LAYOUT_I420, true) => {
                    yuv::yuv420_to_rgba_bilinear(&img, &mut out, dst_stride, range, matrix)
                }
                (_, LAYOUT_I422, false) => {
                    yuv::yuv422_to_rgb_bilinear(&img, &mut out, dst_stride, range, matrix)
                }
                (_, LAYOUT_I422, true) => {
                    yuv::yuv422_to_rgba_bilinear(&img, &mut out, dst_stride, range, matrix)
                }
                (_, _, false) => yuv::yuv444_to_rgb(&img, &mut out, dst_stride, range, matrix),
                (_, _, true) => yuv::yuv444_to_rgba(&img, &mut out, dst_stride, range, matrix),
            }
        };
        res.map_err(|e| bad(format!("yuv conversion: {e}")))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bx(ty: &[u8], body: &[u8]) -> Vec<u8> {
        let mut b = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        b.extend_from_slice(ty);
        b.extend_from_slice(body);
        b
    }

    /// A container with item 1 primary, associated (in order) with an ispe, an nclx colr and
    /// an irot, plus an unassociated ispe for item 2; no image data.
    fn container(w: u32, h: u32) -> Vec<u8> {
        let mut ispe = vec![0; 4];
        ispe.extend_from_slice(&w.to_be_bytes());
        ispe.extend_from_slice(&h.to_be_bytes());
        let mut nclx = b"nclx".to_vec();
        nclx.extend_from_slice(&[0, 12, 0, 13, 0, 6, 0x80]);
        let mut ipco = bx(b"ispe", &ispe);
        ipco.extend(bx(b"colr", &nclx));
        ipco.extend(bx(b"irot", &[1]));
        ipco.extend(bx(b"ispe", &[0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 8]));
        // ipma v0, flags 0: 2 entries; item 1 → properties 1, 2 (essential), 3; item 2 → 4.
        let ipma = [0, 0, 0, 0, 0, 0, 0, 2, 0, 1, 3, 1, 0x82, 3, 0, 2, 1, 4];
        let mut iprp = bx(b"ipco", &ipco);
        iprp.extend(bx(b"ipma", &ipma));
        let mut meta = vec![0; 4];
        meta.extend(bx(b"pitm", &[0, 0, 0, 0, 0, 1]));
        meta.extend(bx(b"iprp", &iprp));
        let mut file = bx(b"ftyp", b"avifmif1");
        file.extend(bx(b"meta", &meta));
        file
    }

    #[test]
    fn reads_the_primary_items_properties_in_order() {
        let p = props(&container(640, 480)).unwrap();
        assert_eq!((p.width, p.height), (640, 480));
        assert_eq!(p.extents, vec![(640, 480), (8, 8)]);
        assert_eq!(
            p.nclx,
            Some(Cicp {
                primaries: 12,
                transfer: 13,
                matrix: 6,
                full_range: true
            })
        );
        assert_eq!(p.transforms, vec![Transform::Rotate(1)]);
    }

    fn refused(b: &[u8]) -> Error {
        match decode(b, &TransformLimits::default()) {
            Ok(px) => panic!("decoded {}x{}", px.width, px.height),
            Err(e) => e,
        }
    }

    #[test]
    fn declared_sizes_over_the_limit_are_refused_before_decoding() {
        // No image data at all: the refusal can only come from the ispe.
        let err = refused(&container(60_000, 60_000));
        assert_eq!(err.status(), 422);
        assert!(err.to_string().contains("pixel limit"), "{err}");
        // Truncated or box-less input is a clean 422 too.
        let whole = container(64, 64);
        for cut in [0, 12, 40, whole.len() - 3, whole.len()] {
            assert_eq!(refused(&whole[..cut]).status(), 422, "cut at {cut}");
        }
    }
}
