//! Container-level checks that need no pixels: where an image's bytes end (so polyglots are
//! caught), JPEG metadata (EXIF orientation, ICC, Adobe marker), PNG text-chunk bombs, and
//! animation frame counts. All walks are bounded by the input length and never allocate more
//! than the caps they are given.

use std::io::Read;

use super::sniff::SourceFormat;
use crate::error::{Error, Result};

fn be16(b: &[u8], at: usize) -> Option<usize> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?) as usize)
}

fn be32(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from(u32::from_be_bytes(
        b.get(at..at + 4)?.try_into().ok()?,
    )))
}

fn le32(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from(u32::from_le_bytes(
        b.get(at..at + 4)?.try_into().ok()?,
    )))
}

/// Where the image in `bytes` ends, when the format defines an end and it can be found.
/// `Some(bytes.len())` means nothing trails the image; `None` means unknown (TIFF) or malformed.
pub fn image_end(bytes: &[u8], format: SourceFormat) -> Option<usize> {
    match format {
        SourceFormat::Jpeg => jpeg_end(bytes),
        SourceFormat::Png => png_end(bytes),
        SourceFormat::Webp => {
            let size = usize::try_from(le32(bytes, 4)?).ok()?;
            // RIFF pads odd sizes to even; the size excludes the 8-byte RIFF header.
            Some(8 + size + (size & 1)).filter(|&e| e <= bytes.len())
        }
        SourceFormat::Gif => gif_end(bytes),
        SourceFormat::Avif => bmff_end(bytes),
        SourceFormat::Tiff => None,
    }
}

/// Walk JPEG segments and entropy-coded data to the EOI marker.
fn jpeg_end(b: &[u8]) -> Option<usize> {
    let mut i = 2; // after SOI
    loop {
        // Fill bytes (0xFF) may precede a marker.
        while *b.get(i)? == 0xFF && *b.get(i + 1)? == 0xFF {
            i += 1;
        }
        if *b.get(i)? != 0xFF {
            return None;
        }
        let marker = *b.get(i + 1)?;
        i += 2;
        match marker {
            0xD9 => return Some(i),
            0x01 | 0xD0..=0xD7 => continue,
            _ => {}
        }
        let len = be16(b, i)?;
        if len < 2 {
            return None;
        }
        i += len;
        if marker == 0xDA {
            // Entropy-coded data runs to the next marker that is neither stuffing nor RSTn.
            loop {
                let ff = i + b.get(i..)?.iter().position(|&x| x == 0xFF)?;
                match *b.get(ff + 1)? {
                    0x00 | 0xD0..=0xD7 | 0xFF => i = ff + 1,
                    _ => {
                        i = ff;
                        break;
                    }
                }
            }
        }
    }
}

fn png_end(b: &[u8]) -> Option<usize> {
    let mut i = 8;
    loop {
        let len = usize::try_from(be32(b, i)?).ok()?;
        let ty = b.get(i + 4..i + 8)?;
        let next = i.checked_add(12)?.checked_add(len)?;
        if next > b.len() {
            return None;
        }
        if ty == b"IEND" {
            return Some(next);
        }
        i = next;
    }
}

fn gif_end(b: &[u8]) -> Option<usize> {
    let mut i = 13;
    let flags = *b.get(10)?;
    if flags & 0x80 != 0 {
        i += 3 << ((flags & 7) + 1);
    }
    let skip_sub_blocks = |mut i: usize| -> Option<usize> {
        loop {
            let n = *b.get(i)? as usize;
            i += 1 + n;
            if n == 0 {
                return Some(i);
            }
        }
    };
    loop {
        match *b.get(i)? {
            0x3B => return Some(i + 1),
            0x21 => i = skip_sub_blocks(i + 2)?,
            0x2C => {
                let f = *b.get(i + 9)?;
                i += 10;
                if f & 0x80 != 0 {
                    i += 3 << ((f & 7) + 1);
                }
                i = skip_sub_blocks(i + 1)?; // +1: LZW minimum code size
            }
            _ => return None,
        }
    }
}

fn bmff_end(b: &[u8]) -> Option<usize> {
    let mut i = 0usize;
    while i < b.len() {
        let size = match be32(b, i)? {
            0 => return Some(b.len()), // box extends to the end of the file
            1 => {
                usize::try_from(u64::from_be_bytes(b.get(i + 8..i + 16)?.try_into().ok()?)).ok()?
            }
            n => usize::try_from(n).ok()?,
        };
        if size < 8 {
            return None;
        }
        i = i.checked_add(size)?;
    }
    (i == b.len()).then_some(i)
}

/// What the JPEG header says beyond what libjpeg-turbo reports.
#[derive(Debug, Default)]
pub struct JpegMeta {
    /// EXIF orientation (1..=8), 1 when absent.
    pub orientation: u8,
    /// The ICC profile reassembled from its APP2 chunks.
    pub icc: Option<Vec<u8>>,
    /// An Adobe APP14 marker is present: CMYK samples are stored inverted.
    pub adobe: bool,
    /// The frame is progressive and Huffman-coded (SOF2).
    pub progressive: bool,
}

/// Read the segments before the first scan. Malformed headers give defaults: libjpeg-turbo
/// decides whether the file is decodable.
pub fn jpeg_meta(b: &[u8]) -> JpegMeta {
    let mut meta = JpegMeta {
        orientation: 1,
        ..JpegMeta::default()
    };
    let mut icc_chunks: Vec<(u8, &[u8])> = Vec::new();
    let mut i = 2;
    while let (Some(&0xFF), Some(&marker)) = (b.get(i), b.get(i + 1)) {
        if marker == 0xFF {
            i += 1;
            continue;
        }
        if marker == 0xDA || marker == 0xD9 {
            break;
        }
        let Some(len) = be16(b, i + 2).filter(|&l| l >= 2) else {
            break;
        };
        let Some(body) = b.get(i + 4..i + 2 + len) else {
            break;
        };
        match marker {
            0xE1 if body.starts_with(b"Exif\0\0") => {
                if let Some(o) = image::metadata::Orientation::from_exif_chunk(&body[6..]) {
                    meta.orientation = o.to_exif();
                }
            }
            0xE2 if body.starts_with(b"ICC_PROFILE\0") && body.len() > 14 => {
                icc_chunks.push((body[12], &body[14..]));
            }
            0xEE if body.starts_with(b"Adobe") => meta.adobe = true,
            0xC2 => meta.progressive = true,
            _ => {}
        }
        i += 2 + len;
    }
    if !icc_chunks.is_empty() {
        icc_chunks.sort_by_key(|c| c.0);
        meta.icc = Some(
            icc_chunks
                .iter()
                .flat_map(|c| c.1.iter().copied())
                .collect(),
        );
    }
    meta
}

/// Refuse PNGs whose chunk lengths run past the end, or whose compressed text chunks inflate
/// past `max_text` bytes (metadata bombs). Decoders that ignore text never see the bomb, but
/// a file built to exhaust a parser is not an image we serve.
pub fn check_png(b: &[u8], max_text: u64) -> Result<()> {
    let mut i = 8;
    let mut text_total = 0u64;
    loop {
        let (Some(len), Some(ty)) = (be32(b, i), b.get(i + 4..i + 8)) else {
            return Err(Error::unprocessable("png: truncated (no IEND chunk)"));
        };
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        let Some(data) = i
            .checked_add(8)
            .and_then(|s| Some(s..s.checked_add(len)?))
            .and_then(|r| b.get(r))
        else {
            return Err(Error::unprocessable(
                "png: a chunk's length runs past the end of the file",
            ));
        };
        let compressed = match ty {
            b"IEND" => return Ok(()),
            b"zTXt" => data
                .iter()
                .position(|&c| c == 0)
                .and_then(|nul| data.get(nul + 2..)),
            b"iTXt" => itxt_compressed(data),
            b"tEXt" => {
                text_total += data.len() as u64;
                None
            }
            _ => None,
        };
        if let Some(z) = compressed {
            let mut sink = Vec::new();
            let cap = max_text.saturating_sub(text_total).saturating_add(1);
            // Inflate at most the remaining budget (+1 to tell "at" from "over"); corrupt
            // streams count only what inflated before the error.
            let _ = flate2::read::ZlibDecoder::new(z)
                .take(cap)
                .read_to_end(&mut sink);
            text_total += sink.len() as u64;
        }
        if text_total > max_text {
            return Err(Error::unprocessable(format!(
                "png: text chunks inflate past the {max_text}-byte metadata limit"
            )));
        }
        i += 12 + len;
    }
}

/// The compressed text of an iTXt chunk, when its compression flag is set.
fn itxt_compressed(data: &[u8]) -> Option<&[u8]> {
    let nul = data.iter().position(|&c| c == 0)?;
    if *data.get(nul + 1)? != 1 {
        return None;
    }
    let rest = data.get(nul + 3..)?;
    // Language tag, then translated keyword, each NUL-terminated.
    let lang = rest.iter().position(|&c| c == 0)?;
    let rest = rest.get(lang + 1..)?;
    let kw = rest.iter().position(|&c| c == 0)?;
    rest.get(kw + 1..)
}

/// Count animation frames without decoding any, stopping once past `max`. `None` for formats
/// that do not animate.
pub fn frame_count(b: &[u8], format: SourceFormat, max: u32) -> Option<u32> {
    match format {
        SourceFormat::Gif => Some(gif_frames(b, max)),
        SourceFormat::Webp => Some(webp_frames(b, max)),
        _ => None,
    }
}

fn gif_frames(b: &[u8], max: u32) -> u32 {
    let mut n = 0;
    let Some(&flags) = b.get(10) else { return 0 };
    let mut i = 13;
    if flags & 0x80 != 0 {
        i += 3 << ((flags & 7) + 1);
    }
    let skip = |mut i: usize| -> Option<usize> {
        loop {
            let k = *b.get(i)? as usize;
            i += 1 + k;
            if k == 0 {
                return Some(i);
            }
        }
    };
    while n <= max {
        let next = match b.get(i) {
            Some(0x21) => skip(i + 2),
            Some(0x2C) => {
                n += 1;
                b.get(i + 9).and_then(|&f| {
                    let mut j = i + 10;
                    if f & 0x80 != 0 {
                        j += 3 << ((f & 7) + 1);
                    }
                    skip(j + 1)
                })
            }
            _ => None,
        };
        match next {
            Some(j) => i = j,
            None => break,
        }
    }
    n
}

fn webp_frames(b: &[u8], max: u32) -> u32 {
    let mut n = 0;
    let mut i = 12;
    while n <= max {
        let (Some(ty), Some(len)) = (b.get(i..i + 4), le32(b, i + 4)) else {
            break;
        };
        match ty {
            b"ANMF" => n += 1,
            b"VP8 " | b"VP8L" => n += 1,
            _ => {}
        }
        let Ok(len) = usize::try_from(len) else { break };
        i = i.saturating_add(8).saturating_add(len + (len & 1));
    }
    n
}

/// Refuse sources whose containers break a limit before any decoder runs.
pub fn check(b: &[u8], format: SourceFormat, max_frames: u32, max_text: u64) -> Result<()> {
    if format == SourceFormat::Png {
        check_png(b, max_text)?;
    }
    if let Some(n) = frame_count(b, format, max_frames) {
        if n > max_frames {
            return Err(Error::unprocessable(format!(
                "more than {max_frames} animation frames"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jpeg_meta_tells_progressive_frames() {
        let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/valid");
        let meta = |name: &str| jpeg_meta(&std::fs::read(corpus.join(name)).unwrap());
        assert!(meta("jpeg-progressive-3088x2056.jpg").progressive);
        assert!(!meta("jpeg-baseline-2560x1600.jpg").progressive);
    }

    #[test]
    fn jpeg_end_skips_stuffing_and_restart_markers() {
        let mut j = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0x00, 0x00];
        j.extend_from_slice(&[
            0xFF, 0xDA, 0x00, 0x02, 0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56,
        ]);
        j.extend_from_slice(&[0xFF, 0xD9]);
        assert_eq!(jpeg_end(&j), Some(j.len()));
        let n = j.len();
        j.extend_from_slice(b"PK\x03\x04 trailing zip");
        assert_eq!(jpeg_end(&j), Some(n));
        assert_eq!(jpeg_end(&j[..n - 1]), None);
    }

    #[test]
    fn png_text_bombs_and_bad_lengths_are_refused() {
        let chunk = |ty: &[u8], data: &[u8]| {
            let mut c = (data.len() as u32).to_be_bytes().to_vec();
            c.extend_from_slice(ty);
            c.extend_from_slice(data);
            c.extend_from_slice(&[0; 4]); // CRC is the decoder's business
            c
        };
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut z, &vec![b'a'; 1 << 20]).unwrap();
        let bomb = z.finish().unwrap();
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ztxt = b"Comment\0\0".to_vec();
        ztxt.extend_from_slice(&bomb);
        png.extend(chunk(b"zTXt", &ztxt));
        png.extend(chunk(b"IEND", b""));
        assert!(check_png(&png, 2 << 20).is_ok());
        assert_eq!(check_png(&png, 1 << 19).unwrap_err().status(), 422);
        let mut bad = b"\x89PNG\r\n\x1a\n".to_vec();
        bad.extend_from_slice(&0x7FFF_FFF0u32.to_be_bytes());
        bad.extend_from_slice(b"tEXtabc");
        assert_eq!(check_png(&bad, 1 << 20).unwrap_err().status(), 422);
    }
}
