//! Original bytes in, variant bytes out: sniff → decode (with limits) → plan → resize → encode.
//! JPEG → JPEG variants that allow it stay in Y'CbCr planes throughout ([`planar`]).
//!
//! Everything here is synchronous and CPU-bound; it runs on the resize pool
//! ([`crate::origin::pool`]), never on an async thread.

pub mod avif;
pub mod color;
pub mod container;
pub mod decode;
pub mod encode;
pub mod geometry;
pub mod jpeg;
pub mod pixels;
pub mod planar;
pub mod reduce;
pub mod resize;
pub mod sniff;

use crate::error::{Error, Result};
use crate::variant::{AcceptClass, OutputFormat, Transform};
use sniff::SourceFormat;

/// Limits a source must respect before any pixel is allocated.
#[derive(Debug, Clone, Copy)]
pub struct TransformLimits {
    /// Largest source in pixels (width x height as declared by the header).
    pub max_source_pixels: u64,
    /// Most animation frames (counted from the container, before decoding).
    pub max_frames: u32,
    /// Most inflated metadata (PNG text chunks), in bytes.
    pub max_metadata_bytes: u64,
}

impl Default for TransformLimits {
    fn default() -> Self {
        TransformLimits {
            max_source_pixels: 50_000_000,
            max_frames: 1000,
            max_metadata_bytes: 1 << 20,
        }
    }
}

/// Settings that shape outputs.
#[derive(Debug, Clone, Copy)]
pub struct TransformSettings {
    /// Source limits.
    pub limits: TransformLimits,
    /// Background transparent pixels are flattened onto for JPEG output.
    pub background: [u8; 3],
    /// Quality used when a transform carries none (the parser normally fills it in).
    pub default_quality: u8,
    /// libaom's speed for AVIF output (libavif's 0..=10 scale).
    pub avif_speed: u8,
    /// JPEG → JPEG variants resized in Y'CbCr planes ([`planar`]); off: through RGB, libvips'
    /// output sample for sample.
    pub planar_jpeg: bool,
}

/// An encoded variant.
#[derive(Debug)]
pub struct Output {
    /// The encoded image.
    pub bytes: Vec<u8>,
    /// Its format.
    pub format: OutputFormat,
    /// Its width.
    pub width: u32,
    /// Its height.
    pub height: u32,
}

/// The format `format=auto` resolves to for a source.
pub fn auto_format(src: SourceFormat) -> OutputFormat {
    match src {
        SourceFormat::Png => OutputFormat::Png,
        SourceFormat::Webp => OutputFormat::Webp,
        _ => OutputFormat::Jpeg,
    }
}

/// The format of the `legacy` class (clients that take neither AVIF nor WebP): the original's
/// when JPEG or PNG, else PNG when the pixels have alpha, else JPEG.
pub fn legacy_format(src: SourceFormat, has_alpha: bool) -> OutputFormat {
    match src {
        SourceFormat::Jpeg => OutputFormat::Jpeg,
        SourceFormat::Png => OutputFormat::Png,
        _ if has_alpha => OutputFormat::Png,
        _ => OutputFormat::Jpeg,
    }
}

/// Recognise the format or refuse with 422.
pub fn require_image(bytes: &[u8]) -> Result<SourceFormat> {
    if bytes.is_empty() {
        return Err(Error::unprocessable("original is empty"));
    }
    sniff::sniff(bytes).ok_or_else(|| Error::unprocessable("original is not an image"))
}

/// Produce the variant `t` of the original `bytes`.
pub fn transform(bytes: &[u8], t: &Transform, s: &TransformSettings) -> Result<Output> {
    prepare(bytes, t, s)?.encode()
}

/// Everything of [`transform`] but the encode.
pub fn prepare(bytes: &[u8], t: &Transform, s: &TransformSettings) -> Result<Prepared> {
    let planar = prepare_planar(bytes, t, s, |limits, resize| {
        let Some(d) = planar::decode(bytes, limits, resize, 1)? else {
            return Ok(None);
        };
        planar::resize(&d.img, &d.plan).map(Some)
    })?;
    if let Some(p) = planar {
        return Ok(p);
    }
    prepare_via(bytes, t, s, |format, limits, resize| {
        let decoded = decode::decode(bytes, format, limits, resize)?;
        Ok((resize::resize(decoded.pixels, &decoded.plan)?, decoded.plan))
    })
}

/// A variant's pixels ready to encode: resized, in sRGB, padded, flattened when the format
/// needs it. Encoding is the last step, so one preparation can be encoded twice (a WebP now,
/// the AVIF later).
pub struct Prepared {
    /// Output-sized pixels (no samples when `planes` holds them).
    pub pixels: pixels::Pixels,
    /// Output-sized 4:2:0 planes instead, from the planar path ([`planar`]).
    pub planes: Option<jpeg::YuvImage>,
    /// The format the variant asks for.
    pub format: OutputFormat,
    /// Its quality (lossy formats).
    pub quality: u8,
    /// AVIF encoder speed.
    pub avif_speed: u8,
}

impl Prepared {
    /// Encode in the variant's format.
    pub fn encode(&self) -> Result<Output> {
        self.encode_as(self.format)
    }

    /// Encode in `format` instead (one that keeps alpha, or these pixels are already flat).
    pub fn encode_as(&self, format: OutputFormat) -> Result<Output> {
        if let Some(planes) = &self.planes {
            let bytes = match format {
                OutputFormat::Jpeg => jpeg::encode_planes(planes, self.quality)?,
                _ => {
                    // Another format for a planar variant: through the planes' RGB.
                    let pixels = pixels::Pixels {
                        data: planes.to_rgb()?,
                        ..self.pixels.clone()
                    };
                    return Prepared {
                        pixels,
                        planes: None,
                        ..*self
                    }
                    .encode_as(format);
                }
            };
            return Ok(Output {
                bytes,
                format,
                width: planes.width,
                height: planes.height,
            });
        }
        let bytes = match format {
            OutputFormat::Avif => encode::encode_avif(&self.pixels, self.quality, self.avif_speed)?,
            _ => encode::encode(&self.pixels, format, self.quality)?,
        };
        Ok(Output {
            bytes,
            format,
            width: self.pixels.width,
            height: self.pixels.height,
        })
    }
}

/// [`prepare`] on the planar path ([`planar`]) when it applies to `t` of `bytes`: `resized`
/// gets the limits and the resize and returns the output planes, or `None` when the image
/// does not fit the path after all (the caller then takes the RGB path).
pub fn prepare_planar(
    bytes: &[u8],
    t: &Transform,
    s: &TransformSettings,
    resized: impl FnOnce(
        &TransformLimits,
        Option<crate::variant::Resize>,
    ) -> Result<Option<jpeg::YuvImage>>,
) -> Result<Option<Prepared>> {
    let src_format = require_image(bytes)?;
    if !planar::applies(bytes, src_format, t, s) {
        return Ok(None);
    }
    let Some(planes) = resized(&s.limits, t.resize)? else {
        return Ok(None);
    };
    Ok(Some(Prepared {
        pixels: pixels::Pixels {
            width: planes.width,
            height: planes.height,
            has_alpha: false,
            data: Vec::new(),
            icc: None,
        },
        planes: Some(planes),
        format: OutputFormat::Jpeg,
        quality: t.quality.unwrap_or(s.default_quality),
        avif_speed: s.avif_speed,
    }))
}

/// [`prepare`] with the decode and resize steps supplied by the caller (the origin's mezzanine
/// cache): `resized` gets the sniffed format, the limits and the resize, and returns the resized
/// pixels and the plan they were resized by.
pub fn prepare_via(
    bytes: &[u8],
    t: &Transform,
    s: &TransformSettings,
    resized: impl FnOnce(
        SourceFormat,
        &TransformLimits,
        Option<crate::variant::Resize>,
    ) -> Result<(pixels::Pixels, geometry::Plan)>,
) -> Result<Prepared> {
    let src_format = require_image(bytes)?;
    let quality = t.quality.unwrap_or(s.default_quality);
    let (mut pixels, plan) = resized(src_format, &s.limits, t.resize)?;
    let format = match (t.format, t.negotiated) {
        (Some(f), _) => f,
        (None, Some(AcceptClass::Avif)) => OutputFormat::Avif,
        (None, Some(AcceptClass::Webp)) => OutputFormat::Webp,
        (None, Some(AcceptClass::Legacy)) => legacy_format(src_format, pixels.has_alpha),
        (None, None) => auto_format(src_format),
    };
    // Colour management on output-sized pixels: cheap, and close to converting first.
    if let Some(icc) = pixels.icc.take() {
        let ch = if pixels.has_alpha { 4 } else { 3 };
        color::to_srgb(&mut pixels.data, ch, &icc);
    }
    if let Some(canvas) = &plan.canvas {
        pixels = resize::pad(pixels, canvas);
    }
    if format == OutputFormat::Jpeg {
        pixels = resize::flatten(pixels, s.background);
    }
    Ok(Prepared {
        pixels,
        planes: None,
        format,
        quality,
        avif_speed: s.avif_speed,
    })
}
