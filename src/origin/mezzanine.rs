//! Decode once, serve many sizes: a byte-bounded cache of decoded originals ("mezzanines"),
//! between the fetched original and the transform.
//!
//! A product page asks for several sizes of one image, and each is a separate miss. Decoding
//! dominates a miss (the Huffman decode alone is a fixed cost per original), so the upright
//! pixels of a decode are kept, keyed by the original's identity (its key and `ETag`), and a
//! later size whose plan they can serve is resized straight from them.
//!
//! A mezzanine serves a plan when it was decoded at no less than the IDCT scale that plan needs
//! on its own ([`decode::needed_eighths`]), so the output is what a direct decode would give or
//! better (a larger decode, resized further). The first decode of an original is at the scale
//! its request needs, as without the cache: most originals are asked for once. An original
//! asked for a size its mezzanine cannot serve is hot, so the new decode is made large enough
//! for any size: in full, or at the largest of 1/2, 1/4, 1/8 within [`UPGRADE_PIXELS`].
//!
//! The cache is moka's (TinyLFU admission, so one-off originals do not push hot ones out;
//! weighed in bytes; an entry over an eighth of the budget is not kept). Pixels are kept before
//! colour management, as the direct path resizes before converting to sRGB, so both paths make
//! the same output. (Concurrent requests for one variant are already one fill upstream; two
//! sizes of one original missing at the same instant may both decode.)

use std::sync::Arc;

use moka::sync::Cache;

use super::transform::decode::{self, needed_eighths};
use super::transform::geometry::{self, Plan};
use super::transform::jpeg::YuvImage;
use super::transform::pixels::Pixels;
use super::transform::sniff::SourceFormat;
use super::transform::{
    planar, prepare_planar, prepare_via, resize, Output, Prepared, TransformLimits,
    TransformSettings,
};
use crate::error::Result;
use crate::metrics::metrics;
use crate::variant::{Resize, Transform};

/// Pixels an upgraded (second) decode may have, at most: 8 MP (24 MB of RGB). Originals up to
/// that are kept in full; 12-16 MP camera JPEGs at 1/2 scale (3-4 MP, enough for outputs up to
/// half their size), unless a request needs more.
pub const UPGRADE_PIXELS: u64 = 8_000_000;
/// Bytes charged per entry on top of its samples: the key, the ICC profile and the cache's own
/// entry.
const ENTRY_OVERHEAD: u64 = 512;

/// Decoded, upright pixels of one original, before colour management.
pub struct Mezzanine {
    pixels: Kept,
    /// The upright size of the original.
    source: (u32, u32),
    /// The scale `pixels` were decoded at, in eighths.
    eighths: u32,
}

/// What a mezzanine holds: RGB(A), or a JPEG's Y'CbCr planes for the planar path
/// ([`planar`]: 1.5 bytes a pixel in 4:2:0), under keys of their own.
enum Kept {
    Rgb(Pixels),
    Yuv(YuvImage),
}

impl Mezzanine {
    fn bytes(&self) -> u64 {
        let held = match &self.pixels {
            Kept::Rgb(p) => p.data.len() + p.icc.as_ref().map_or(0, |p| p.len()),
            Kept::Yuv(y) => y.bytes(),
        };
        held as u64 + ENTRY_OVERHEAD
    }

    /// The plan for `resize` in this mezzanine's pixels, if it has enough of them.
    fn plan(&self, resize: Option<Resize>) -> Option<Plan> {
        let plan = geometry::plan(self.source.0, self.source.1, resize);
        (self.eighths >= needed_eighths(&plan))
            .then(|| plan.scaled(f64::from(self.eighths) / 8.0, self.source))
    }
}

/// The mezzanine cache, shared by the resize threads.
pub struct Mezzanines {
    cache: Cache<String, Arc<Mezzanine>>,
    /// Largest entry kept: an eighth of the budget, so one huge PNG cannot flush the rest.
    max_entry: u64,
}

impl std::fmt::Debug for Mezzanines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mezzanines")
            .field("bytes", &self.cache.weighted_size())
            .field("max_entry", &self.max_entry)
            .finish()
    }
}

impl Mezzanines {
    /// A cache of at most `budget` bytes of decoded pixels.
    pub fn new(budget: u64) -> Self {
        Mezzanines {
            cache: Cache::builder()
                .max_capacity(budget)
                .weigher(|_, m: &Arc<Mezzanine>| u32::try_from(m.bytes()).unwrap_or(u32::MAX))
                .build(),
            max_entry: budget / 8,
        }
    }

    /// Bytes held (after pending evictions run).
    pub fn bytes(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }

    /// The variant `t` of the original `bytes`, identified by `key` (which must change when
    /// the bytes do): [`super::transform::transform`], decoding through this cache.
    pub fn transform(
        &self,
        key: &str,
        bytes: &[u8],
        t: &Transform,
        s: &TransformSettings,
    ) -> Result<Output> {
        self.prepare(key, bytes, t, s)?.encode()
    }

    /// [`Self::transform`] less the encode ([`super::transform::prepare_via`]).
    pub fn prepare(
        &self,
        key: &str,
        bytes: &[u8],
        t: &Transform,
        s: &TransformSettings,
    ) -> Result<Prepared> {
        let planar = prepare_planar(bytes, t, s, |limits, resize| {
            self.resized_planar(key, bytes, limits, resize)
        })?;
        if let Some(p) = planar {
            return Ok(p);
        }
        prepare_via(bytes, t, s, |format, limits, resize| {
            self.resized(key, bytes, format, limits, resize)
        })
    }

    /// Decoded pixels of the original `bytes` (identified by `key`), resized for `resize`, and
    /// the plan they were resized by.
    fn resized(
        &self,
        key: &str,
        bytes: &[u8],
        format: SourceFormat,
        limits: &TransformLimits,
        resize: Option<Resize>,
    ) -> Result<(Pixels, Plan)> {
        let kept = self.cache.get(key);
        if let Some(kept) = &kept {
            if let (Kept::Rgb(pixels), Some(plan)) = (&kept.pixels, kept.plan(resize)) {
                lookup("hit");
                return Ok((resize::resize_ref(pixels, &plan)?, plan));
            }
        }
        let (at_least, result) = scale_for(kept.as_deref());
        lookup(result);
        let d = decode::decode_scaled(bytes, format, limits, resize, at_least)?;
        let out = resize::resize_ref(&d.pixels, &d.plan)?;
        let plan = d.plan;
        self.keep(
            key.to_string(),
            Mezzanine {
                pixels: Kept::Rgb(d.pixels),
                source: d.source,
                eighths: d.eighths,
            },
        );
        Ok((out, plan))
    }

    /// [`Self::resized`] for the planar path: the output planes, or `None` when the path does
    /// not fit this original or size (the caller takes the RGB path).
    fn resized_planar(
        &self,
        key: &str,
        bytes: &[u8],
        limits: &TransformLimits,
        resize: Option<Resize>,
    ) -> Result<Option<YuvImage>> {
        let key = format!("{key}\nyuv");
        let kept = self.cache.get(&key);
        if let Some(kept) = &kept {
            if let (Kept::Yuv(img), Some(plan)) = (&kept.pixels, kept.plan(resize)) {
                if !planar::fits_image(img, &plan) {
                    return Ok(None);
                }
                lookup("hit");
                return planar::resize(img, &plan).map(Some);
            }
        }
        // Counted once the planes are decoded: if this path declines, the RGB path counts.
        let (at_least, result) = scale_for(kept.as_deref());
        let Some(d) = planar::decode(bytes, limits, resize, at_least)? else {
            return Ok(None);
        };
        lookup(result);
        let out = planar::resize(&d.img, &d.plan)?;
        self.keep(
            key,
            Mezzanine {
                pixels: Kept::Yuv(d.img),
                source: d.source,
                eighths: d.eighths,
            },
        );
        Ok(Some(out))
    }

    /// Keep `m` unless it is over the largest entry.
    fn keep(&self, key: String, m: Mezzanine) {
        if m.bytes() <= self.max_entry {
            self.cache.insert(key, Arc::new(m));
            let held = i64::try_from(self.bytes()).unwrap_or(i64::MAX);
            metrics().mezzanine_bytes.set(held);
        }
    }
}

fn lookup(result: &str) {
    metrics()
        .mezzanine_lookups
        .with_label_values(&[result])
        .inc();
}

/// The least scale to decode at and the lookup's result: unknown, the scale this size needs,
/// as without the cache; known but too small for this size, the original is hot, so large
/// enough for any size.
fn scale_for(kept: Option<&Mezzanine>) -> (u32, &'static str) {
    match kept {
        None => (1, "miss"),
        Some(kept) => {
            let pixels = u64::from(kept.source.0) * u64::from(kept.source.1);
            let eighths = [8u64, 4, 2, 1]
                .into_iter()
                .find(|e| pixels * e * e / 64 <= UPGRADE_PIXELS)
                .unwrap_or(1) as u32;
            (eighths, "upgrade")
        }
    }
}
