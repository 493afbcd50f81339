//! Decoded pixels and the size check every decoder makes before allocating them: the floor
//! under the decoders ([`super::decode`], [`super::avif`]) and the steps after them.

use super::TransformLimits;
use crate::error::{Error, Result};

/// Decoded pixels: RGB8, or RGBA8 when the source has alpha. Rows are tightly packed.
#[derive(Clone)]
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

/// Refuse a declared size with no pixels or over `limits.max_source_pixels`.
pub fn check_pixels(w: u32, h: u32, limits: &TransformLimits) -> Result<()> {
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
