//! Recognise an original's format from its first bytes, never from its name or a header.

/// A source format we recognise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    /// JPEG (`FF D8 FF`).
    Jpeg,
    /// PNG (8-byte signature).
    Png,
    /// WebP (RIFF....WEBP).
    Webp,
    /// GIF87a / GIF89a.
    Gif,
    /// TIFF, either byte order.
    Tiff,
    /// AVIF (ISO-BMFF `ftyp` with an AVIF brand).
    Avif,
}

impl SourceFormat {
    /// `Content-Type` for this format.
    pub fn mime(self) -> &'static str {
        match self {
            SourceFormat::Jpeg => "image/jpeg",
            SourceFormat::Png => "image/png",
            SourceFormat::Webp => "image/webp",
            SourceFormat::Gif => "image/gif",
            SourceFormat::Tiff => "image/tiff",
            SourceFormat::Avif => "image/avif",
        }
    }

    /// Short lowercase name, for messages and metrics.
    pub fn name(self) -> &'static str {
        match self {
            SourceFormat::Jpeg => "jpeg",
            SourceFormat::Png => "png",
            SourceFormat::Webp => "webp",
            SourceFormat::Gif => "gif",
            SourceFormat::Tiff => "tiff",
            SourceFormat::Avif => "avif",
        }
    }
}

/// The format of `bytes`, or `None` when it is not an image we know.
pub fn sniff(bytes: &[u8]) -> Option<SourceFormat> {
    match bytes {
        [0xFF, 0xD8, 0xFF, ..] => Some(SourceFormat::Jpeg),
        [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, ..] => Some(SourceFormat::Png),
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => {
            Some(SourceFormat::Webp)
        }
        [b'G', b'I', b'F', b'8', b'7' | b'9', b'a', ..] => Some(SourceFormat::Gif),
        [b'I', b'I', 0x2A, 0x00, ..] | [b'M', b'M', 0x00, 0x2A, ..] => Some(SourceFormat::Tiff),
        [_, _, _, _, b'f', b't', b'y', b'p', b'a', b'v', b'i', b'f' | b's', ..] => {
            Some(SourceFormat::Avif)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_magic_not_names() {
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0]), Some(SourceFormat::Jpeg));
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n...."), Some(SourceFormat::Png));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some(SourceFormat::Webp));
        assert_eq!(sniff(b"GIF89a"), Some(SourceFormat::Gif));
        assert_eq!(sniff(b"\0\0\0\x1cftypavif"), Some(SourceFormat::Avif));
        assert_eq!(sniff(b"<!DOCTYPE html>"), None);
        assert_eq!(sniff(b"<?xml version"), None);
        assert_eq!(sniff(b""), None);
        assert_eq!(sniff(&[0xFF, 0xD8]), None);
    }
}
