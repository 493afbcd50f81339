//! The URL contract: a request URL becomes a canonical [`Variant`], which names exactly one cached
//! object.
//!
//! The edge builds the cache key from a `Variant` and rewrites the request it sends to the origin
//! into the variant's canonical URI; the origin parses that URI with the same code. The key and
//! the work done for it therefore cannot disagree. Only the path and the known query parameters
//! matter: headers, unknown parameters (`utm_*`, cache busters) and parameter order never reach
//! the key, and defaults are applied before it is built, so equivalent URLs share one object.

use std::fmt::Write as _;

use percent_encoding::percent_decode_str;

use crate::error::{Error, Result};

/// Path prefix every image URL starts with.
pub const IMAGE_PREFIX: &str = "/image/";
/// Longest accepted id, in bytes.
pub const MAX_ID_LEN: usize = 512;
/// Version of the key layout; bump it to orphan every cached object after a semantic change.
const KEY_VERSION: &str = "v1";

/// What the format of a negotiated (`format=auto`) answer may be, decided from the request's
/// `Accept` header and collapsed to three classes, so a variant is at most three cached objects
/// however many distinct `Accept` strings browsers send. The class, never the header, enters
/// the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AcceptClass {
    /// The client takes AVIF (and is sent it, or WebP while the AVIF is being made).
    Avif,
    /// The client takes WebP, not AVIF.
    Webp,
    /// Neither: the original's format when JPEG or PNG, else JPEG (PNG when it has alpha). A
    /// request with no `Accept` (a log replay, `curl`) is this class.
    #[default]
    Legacy,
}

impl AcceptClass {
    /// The class an `Accept` header puts a client in. Media ranges are read with their
    /// q-values: `q=0` refuses a type, and `image/*` or `*/*` alone promise neither AVIF nor
    /// WebP (old browsers send them and cannot decode either). When both are taken, the one
    /// with the higher q wins, AVIF on a tie.
    pub fn from_accept(accept: Option<&[u8]>) -> AcceptClass {
        let Some(accept) = accept.and_then(|a| std::str::from_utf8(a).ok()) else {
            return AcceptClass::Legacy;
        };
        let (mut avif, mut webp) = (0u16, 0u16);
        for range in accept.split(',') {
            let mut parts = range.split(';');
            let kind = parts.next().unwrap_or("").trim();
            let q = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .map_or(1000, |(_, v)| q_thousandths(v.trim()));
            if kind.eq_ignore_ascii_case("image/avif") {
                avif = avif.max(q);
            } else if kind.eq_ignore_ascii_case("image/webp") {
                webp = webp.max(q);
            }
        }
        match (avif, webp) {
            (0, 0) => AcceptClass::Legacy,
            (a, w) if a >= w => AcceptClass::Avif,
            _ => AcceptClass::Webp,
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "avif" => Ok(AcceptClass::Avif),
            "webp" => Ok(AcceptClass::Webp),
            "legacy" => Ok(AcceptClass::Legacy),
            _ => Err(Error::bad_request("accept must be avif, webp or legacy")),
        }
    }

    /// An `Accept` header that puts a client in this class: what `imgedge warm` and mirror
    /// mode send with a canonical URI, so the node they ask fills the class the URI names.
    pub fn accept_header(self) -> Option<&'static str> {
        match self {
            AcceptClass::Avif => Some("image/avif,image/webp,*/*"),
            AcceptClass::Webp => Some("image/webp,*/*"),
            AcceptClass::Legacy => None,
        }
    }

    /// The class a canonical URI names (its `accept=`), if any.
    pub fn of_uri(uri: &str) -> Option<AcceptClass> {
        let query = uri.split_once('?')?.1;
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix("accept="))
            .and_then(|c| AcceptClass::parse(c).ok())
    }

    /// The class's name in keys, URIs and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            AcceptClass::Avif => "avif",
            AcceptClass::Webp => "webp",
            AcceptClass::Legacy => "legacy",
        }
    }
}

/// An HTTP q-value (`0`, `0.5`, `1.000`) in thousandths; anything malformed counts as 0, so a
/// garbled range never promises a format.
fn q_thousandths(v: &str) -> u16 {
    let (int, frac) = v.split_once('.').unwrap_or((v, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return 0;
    }
    let frac_val = frac
        .bytes()
        .fold(0u16, |acc, b| acc * 10 + u16::from(b - b'0'))
        * 10u16.pow(3 - frac.len() as u32);
    match int {
        "0" => frac_val,
        "1" if frac_val == 0 => 1000,
        _ => 0,
    }
}

/// What a transform without `format=` is encoded as (`transform.default_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DefaultFormat {
    /// The original's format (JPEG, PNG or WebP), else JPEG: what v1 URLs always meant.
    #[default]
    Original,
    /// Negotiated from `Accept`, as `format=auto`.
    Auto,
}

/// How a resized image fills its box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fit {
    /// Fill the box exactly, cropping the overflow around the centre.
    Cover,
    /// Fit within the box, keeping the aspect ratio.
    Inside,
    /// Stretch to the box, ignoring the aspect ratio.
    Fill,
    /// Fit within the box and pad to exactly its size with this RGB colour (`bg=RRGGBB`).
    Contain([u8; 3]),
}

impl Fit {
    /// `bg` is the padding colour, used only by `contain`.
    fn parse(s: &str, bg: [u8; 3]) -> Result<Self> {
        match s {
            "cover" => Ok(Fit::Cover),
            "inside" => Ok(Fit::Inside),
            "fill" => Ok(Fit::Fill),
            "contain" => Ok(Fit::Contain(bg)),
            _ => Err(Error::bad_request(
                "fit must be cover, inside, fill or contain",
            )),
        }
    }

    /// Name used in URLs and keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Fit::Cover => "cover",
            Fit::Inside => "inside",
            Fit::Fill => "fill",
            Fit::Contain(_) => "contain",
        }
    }
}

/// `RRGGBB` hex (either case) to RGB.
pub fn parse_rgb(s: &str) -> Option<[u8; 3]> {
    if s.len() != 6 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let c = |i: usize| u8::from_str_radix(&s[i..i + 2], 16).ok();
    Some([c(0)?, c(2)?, c(4)?])
}

fn hex_rgb(c: [u8; 3]) -> String {
    format!("{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

/// An output encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputFormat {
    /// JPEG (baseline).
    Jpeg,
    /// PNG (lossless).
    Png,
    /// WebP (lossy).
    Webp,
    /// AVIF (lossy AV1, 8-bit 4:2:0).
    Avif,
}

impl OutputFormat {
    fn parse(s: &str) -> Result<Self> {
        match s {
            "jpeg" | "jpg" => Ok(OutputFormat::Jpeg),
            "png" => Ok(OutputFormat::Png),
            "webp" => Ok(OutputFormat::Webp),
            "avif" => Ok(OutputFormat::Avif),
            _ => Err(Error::bad_request(
                "format must be auto, jpeg, png, webp or avif",
            )),
        }
    }

    /// Name used in URLs and keys.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "jpeg",
            OutputFormat::Png => "png",
            OutputFormat::Webp => "webp",
            OutputFormat::Avif => "avif",
        }
    }

    /// The `Content-Type` of this encoding.
    pub fn mime(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "image/jpeg",
            OutputFormat::Png => "image/png",
            OutputFormat::Webp => "image/webp",
            OutputFormat::Avif => "image/avif",
        }
    }

    /// Whether a quality setting changes the output.
    pub fn is_lossy(self) -> bool {
        !matches!(self, OutputFormat::Png)
    }
}

/// The requested box. At least one side is set; with one side the other follows the aspect ratio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Resize {
    /// Box width in pixels, after `dpr`.
    pub width: Option<u32>,
    /// Box height in pixels, after `dpr`.
    pub height: Option<u32>,
    /// How the image fills the box. Canonically [`Fit::Inside`] when only one side is given,
    /// since every fit gives the same result then.
    pub fit: Fit,
}

/// A re-encoding of the original: optionally resized, in a chosen or automatic format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Transform {
    /// The box, or `None` to keep the original dimensions.
    pub resize: Option<Resize>,
    /// Output format, or `None` for automatic: the negotiated class's format when
    /// `negotiated`, else the original's format when it is JPEG, PNG or WebP, else JPEG.
    pub format: Option<OutputFormat>,
    /// `Some` when the format is negotiated (`format=auto`): the client's class. Such answers
    /// carry `Vary: Accept`; the class is part of the key.
    pub negotiated: Option<AcceptClass>,
    /// Quality 1..=100, or `None` when the format is lossless (folded out of the key).
    pub quality: Option<u8>,
}

/// One cacheable object: an original, or one transform of it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Variant {
    /// The image id: validated, percent-decoded.
    pub id: String,
    /// `None` serves the original bytes.
    pub transform: Option<Transform>,
}

/// Limits and defaults the parser applies; they come from the config.
#[derive(Debug, Clone, Copy)]
pub struct ParseOptions {
    /// Largest accepted box side, before and after `dpr`.
    pub max_dimension: u32,
    /// Quality when `q` is absent.
    pub default_quality: u8,
    /// `fit=contain` padding when `bg` is absent.
    pub background: [u8; 3],
    /// The format of a transform without `format=`.
    pub default_format: DefaultFormat,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            max_dimension: 4096,
            default_quality: 80,
            background: [255, 255, 255],
            default_format: DefaultFormat::Original,
        }
    }
}

/// The known query parameters, each at most once.
#[derive(Default)]
struct Params<'a> {
    size: Option<std::borrow::Cow<'a, str>>,
    fit: Option<std::borrow::Cow<'a, str>>,
    format: Option<std::borrow::Cow<'a, str>>,
    q: Option<std::borrow::Cow<'a, str>>,
    dpr: Option<std::borrow::Cow<'a, str>>,
    bg: Option<std::borrow::Cow<'a, str>>,
    accept: Option<std::borrow::Cow<'a, str>>,
}

impl<'a> Params<'a> {
    fn collect(query: &'a str) -> Result<Self> {
        let mut p = Params::default();
        for pair in query.split('&').filter(|s| !s.is_empty()) {
            let (raw_key, raw_val) = pair.split_once('=').unwrap_or((pair, ""));
            let key = percent_decode_str(raw_key).decode_utf8_lossy();
            let slot = match key.as_ref() {
                "size" => &mut p.size,
                "fit" => &mut p.fit,
                "format" => &mut p.format,
                "q" => &mut p.q,
                "dpr" => &mut p.dpr,
                "bg" => &mut p.bg,
                // The class of a negotiated variant, in the URI the edge sends to its origin
                // or a peer; a client's own value is replaced by its Accept's at the edge.
                "accept" => &mut p.accept,
                _ => continue, // utm_*, cache busters: never part of the variant
            };
            if slot.is_some() {
                return Err(Error::bad_request(format!("parameter {key} given twice")));
            }
            let val = percent_decode_str(raw_val)
                .decode_utf8()
                .map_err(|_| Error::bad_request(format!("{key} is not valid UTF-8")))?;
            if val.is_empty() {
                return Err(Error::bad_request(format!("{key} is empty")));
            }
            *slot = Some(val);
        }
        Ok(p)
    }
}

impl Variant {
    /// Parse a request path (still percent-encoded) and query string into the canonical variant.
    pub fn parse(path: &str, query: Option<&str>, opts: &ParseOptions) -> Result<Variant> {
        let raw_id = path.strip_prefix(IMAGE_PREFIX).ok_or(Error::NoRoute)?;
        let id = parse_id(raw_id)?;
        let params = Params::collect(query.unwrap_or(""))?;

        let quality = match params.q.as_deref() {
            Some(q) => Some(parse_quality(q)?),
            None => None,
        };
        let (format, auto) = match params.format.as_deref() {
            Some("auto") => (None, true),
            Some(f) => (Some(OutputFormat::parse(f)?), false),
            None => (None, false),
        };
        let bg = match params.bg.as_deref() {
            Some(b) => parse_rgb(b).ok_or_else(|| Error::bad_request("bg must be RRGGBB hex"))?,
            None => opts.background,
        };
        let fit = match params.fit.as_deref() {
            Some(f) => Fit::parse(f, bg)?,
            None => Fit::Cover,
        };
        let dpr = match params.dpr.as_deref() {
            Some(d) => parse_dpr(d)?,
            None => 1.0,
        };
        let resize = match params.size.as_deref() {
            Some(s) => Some(parse_size(s, fit, dpr, opts.max_dimension)?),
            None => None,
        };

        let transform = if resize.is_some() || format.is_some() || quality.is_some() || auto {
            let negotiate =
                auto || (format.is_none() && opts.default_format == DefaultFormat::Auto);
            let negotiated = match (negotiate, params.accept.as_deref()) {
                (true, Some(c)) => Some(AcceptClass::parse(c)?),
                (true, None) => Some(AcceptClass::Legacy),
                (false, Some(_)) => {
                    return Err(Error::bad_request("accept is only valid with format=auto"))
                }
                (false, None) => None,
            };
            let lossless = format.is_some_and(|f| !f.is_lossy());
            Some(Transform {
                resize,
                format,
                negotiated,
                quality: if lossless {
                    None
                } else {
                    Some(quality.unwrap_or(opts.default_quality))
                },
            })
        } else {
            if params.accept.is_some() {
                return Err(Error::bad_request("accept is only valid with format=auto"));
            }
            None
        };
        Ok(Variant { id, transform })
    }

    /// Put a negotiated variant in the class `accept` (the client's `Accept` header) says; a
    /// variant with an explicit format is left alone.
    pub fn negotiate(&mut self, accept: Option<&[u8]>) {
        if let Some(Transform {
            negotiated: Some(class),
            ..
        }) = &mut self.transform
        {
            *class = AcceptClass::from_accept(accept);
        }
    }

    /// Whether the answer depends on the `Accept` header (and so carries `Vary: Accept`).
    pub fn is_negotiated(&self) -> bool {
        self.transform.is_some_and(|t| t.negotiated.is_some())
    }

    /// The cache key: versioned, length-prefixed, every field after defaults. Two URLs that mean
    /// the same image produce the same key, and no two different variants share one.
    pub fn cache_key(&self) -> String {
        let mut k = String::with_capacity(self.id.len() + 48);
        let _ = write!(k, "{KEY_VERSION}|{}:{}|", self.id.len(), self.id);
        match &self.transform {
            None => k.push_str("orig"),
            Some(t) => {
                let (w, h, fit) = match t.resize {
                    Some(r) => (r.width, r.height, Some(r.fit)),
                    None => (None, None, None),
                };
                let num = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
                let _ = write!(
                    k,
                    "w={},h={},fit={},f={},q={}",
                    num(w),
                    num(h),
                    fit.map_or("-", Fit::as_str),
                    match (t.format, t.negotiated) {
                        (Some(f), _) => f.as_str(),
                        (None, Some(AcceptClass::Avif)) => "auto-avif",
                        (None, Some(AcceptClass::Webp)) => "auto-webp",
                        (None, Some(AcceptClass::Legacy)) => "auto-legacy",
                        (None, None) => "auto",
                    },
                    t.quality.map_or("-".to_string(), |q| q.to_string()),
                );
                // The padding colour matters only to contain; defaults are already filled in.
                if let Some(Fit::Contain(bg)) = fit {
                    let _ = write!(k, ",bg={}", hex_rgb(bg));
                }
            }
        }
        k
    }

    /// The canonical request URI for this variant. Parsing it gives back `self`; the edge sends
    /// it to the origin so both sides work from the same description. A negotiated variant's
    /// class travels as `accept=`.
    pub fn canonical_uri(&self) -> String {
        let mut uri = self.signed_uri();
        if let Some(class) = self.transform.and_then(|t| t.negotiated) {
            uri.push_str("&accept=");
            uri.push_str(class.as_str());
        }
        uri
    }

    /// The canonical URI without the negotiated class: what a URL signature covers, so one
    /// signed URL serves every class.
    pub fn signed_uri(&self) -> String {
        let mut uri = format!("{IMAGE_PREFIX}{}", self.id);
        if let Some(t) = &self.transform {
            let mut sep = '?';
            let mut push = |uri: &mut String, kv: String| {
                uri.push(sep);
                uri.push_str(&kv);
                sep = '&';
            };
            if let Some(r) = t.resize {
                let side = |v: Option<u32>| v.map_or(String::new(), |v| v.to_string());
                push(
                    &mut uri,
                    format!("size={}x{}", side(r.width), side(r.height)),
                );
                push(&mut uri, format!("fit={}", r.fit.as_str()));
                if let Fit::Contain(bg) = r.fit {
                    push(&mut uri, format!("bg={}", hex_rgb(bg)));
                }
            }
            if let Some(f) = t.format {
                push(&mut uri, format!("format={}", f.as_str()));
            } else if t.negotiated.is_some() {
                push(&mut uri, "format=auto".to_string());
            }
            if let Some(q) = t.quality {
                push(&mut uri, format!("q={q}"));
            }
        }
        uri
    }
}

/// Percent-decode once and validate: 1..=512 bytes of `[A-Za-z0-9._~/-]`, no empty, `.` or `..`
/// segment. Decoding happens before the check, so `..%2f` is caught as a `..` segment.
fn parse_id(raw: &str) -> Result<String> {
    let decoded = percent_decode_str(raw).collect::<Vec<u8>>();
    if decoded.is_empty() {
        return Err(Error::bad_request("empty id"));
    }
    if decoded.len() > MAX_ID_LEN {
        return Err(Error::bad_request("id longer than 512 bytes"));
    }
    let allowed =
        |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'/' | b'-');
    if !decoded.iter().all(allowed) {
        return Err(Error::bad_request(
            "id has a character outside [A-Za-z0-9._~/-]",
        ));
    }
    // Only ASCII remains, so this cannot fail.
    let id = String::from_utf8(decoded).map_err(|_| Error::bad_request("id is not ASCII"))?;
    if id
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(Error::bad_request("id has an empty, '.' or '..' segment"));
    }
    Ok(id)
}

fn parse_quality(s: &str) -> Result<u8> {
    match s.parse::<u8>() {
        Ok(q @ 1..=100) if s.bytes().all(|b| b.is_ascii_digit()) => Ok(q),
        _ => Err(Error::bad_request("q must be an integer in 1..=100")),
    }
}

fn parse_dpr(s: &str) -> Result<f64> {
    let valid_chars = s.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    match s.parse::<f64>() {
        Ok(d) if valid_chars && (1.0..=4.0).contains(&d) => Ok(d),
        _ => Err(Error::bad_request("dpr must be a number in 1..=4")),
    }
}

/// A box of the size policy's allow-list (`policy.sizes`): `WxH`, `Wx` or `xH`, parsed by the
/// same rules as the `size` parameter (no `dpr`), so a listed box and a request for it agree.
pub fn parse_box(s: &str, max: u32) -> std::result::Result<(Option<u32>, Option<u32>), String> {
    parse_size(s, Fit::Cover, 1.0, max)
        .map(|r| (r.width, r.height))
        .map_err(|e| e.reason())
}

/// `WxH`, `Wx` or `xH`, each side in 1..=max; `dpr` multiplies both sides (rounded). When `dpr`
/// pushes a side past `max`, both sides shrink by the same factor so the box keeps its shape.
fn parse_size(s: &str, fit: Fit, dpr: f64, max: u32) -> Result<Resize> {
    const BAD: &str = "size must be WxH, Wx or xH with sides in 1..=max";
    let (w, h) = s.split_once('x').ok_or_else(|| Error::bad_request(BAD))?;
    let side = |v: &str| -> Result<Option<u32>> {
        if v.is_empty() {
            return Ok(None);
        }
        if !v.bytes().all(|b| b.is_ascii_digit()) || v.len() > 9 {
            return Err(Error::bad_request(BAD));
        }
        match v.parse::<u32>() {
            Ok(n) if (1..=max).contains(&n) => Ok(Some(n)),
            Ok(_) => Err(Error::bad_request(format!(
                "size sides must be in 1..={max}"
            ))),
            Err(_) => Err(Error::bad_request(BAD)),
        }
    };
    let (w, h) = (side(w)?, side(h)?);
    if w.is_none() && h.is_none() {
        return Err(Error::bad_request(BAD));
    }
    let (mut wf, mut hf) = (w.map(|v| v as f64 * dpr), h.map(|v| v as f64 * dpr));
    let longest = wf.unwrap_or(0.0).max(hf.unwrap_or(0.0));
    if longest > max as f64 {
        let k = max as f64 / longest;
        wf = wf.map(|v| v * k);
        hf = hf.map(|v| v * k);
    }
    let px = |v: Option<f64>| v.map(|v| (v.round() as u32).clamp(1, max));
    let (width, height) = (px(wf), px(hf));
    // With one side the fit cannot change the result: fold it so those URLs share a key.
    let fit = if width.is_some() && height.is_some() {
        fit
    } else {
        Fit::Inside
    };
    Ok(Resize { width, height, fit })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(path: &str, q: &str) -> Result<Variant> {
        Variant::parse(path, Some(q), &ParseOptions::default())
    }

    fn key(path: &str, q: &str) -> String {
        parse(path, q).unwrap().cache_key()
    }

    #[test]
    fn original_when_no_transform_params() {
        let v = parse("/image/abc.jpg", "").unwrap();
        assert_eq!(v.transform, None);
        assert_eq!(v.cache_key(), "v1|7:abc.jpg|orig");
        assert_eq!(
            key("/image/abc.jpg", "utm_source=x&fit=cover&dpr=2"),
            v.cache_key()
        );
    }

    #[test]
    fn defaults_are_applied_before_the_key() {
        let k = key("/image/a", "size=100x200");
        assert_eq!(k, "v1|1:a|w=100,h=200,fit=cover,f=auto,q=80");
        assert_eq!(key("/image/a", "q=80&size=100x200&utm_source=x"), k);
        assert_eq!(key("/image/a", "size=100x200&fit=cover&q=80"), k);
        assert_eq!(key("/image/a", "size=50x100&dpr=2"), k);
        assert_eq!(key("/image/a", "&&size=100x200&&cb=123"), k);
    }

    #[test]
    fn format_aliases_and_png_quality_fold() {
        assert_eq!(
            key("/image/a", "size=10x&format=jpg"),
            key("/image/a", "size=10x&format=jpeg")
        );
        assert_eq!(
            key("/image/a", "size=10x&format=png&q=10"),
            key("/image/a", "size=10x&format=png&q=90")
        );
        assert_ne!(
            key("/image/a", "size=10x&format=webp&q=10"),
            key("/image/a", "size=10x&format=webp&q=90")
        );
    }

    #[test]
    fn one_sided_sizes_fold_the_fit() {
        assert_eq!(
            key("/image/a", "size=100x&fit=fill"),
            key("/image/a", "size=100x")
        );
        assert_eq!(
            key("/image/a", "size=x100&fit=cover"),
            key("/image/a", "size=x100&fit=inside")
        );
        assert_ne!(
            key("/image/a", "size=100x100&fit=fill"),
            key("/image/a", "size=100x100")
        );
    }

    #[test]
    fn dpr_folds_into_size_and_respects_max() {
        let v = parse("/image/a", "size=3000x1000&dpr=2").unwrap();
        let r = v.transform.unwrap().resize.unwrap();
        assert_eq!((r.width, r.height), (Some(4096), Some(1365)));
        let v = parse("/image/a", "size=101x&dpr=1.5").unwrap();
        assert_eq!(v.transform.unwrap().resize.unwrap().width, Some(152));
    }

    #[test]
    fn bad_params_are_400() {
        for q in [
            "size=0x10",
            "size=10x0",
            "size=x",
            "size=10",
            "size=4097x1",
            "size=-1x5",
            "size=1x2x3",
            "size=",
            "size=10x10&size=20x20",
            "size=10x10&fit=crop",
            "size=10x10&fit=contain&bg=fff",
            "size=10x10&fit=contain&bg=gggggg",
            "size=10x10&bg=",
            "format=gif",
            "q=0",
            "q=101",
            "q=8.5",
            "dpr=5",
            "dpr=0.5",
            "dpr=nan",
            "dpr=inf",
            "q=80&q=80",
        ] {
            let err = parse("/image/a", q).unwrap_err();
            assert_eq!(err.status(), 400, "{q}");
        }
    }

    #[test]
    fn ids_are_validated_after_one_decode() {
        for bad in [
            "/image/",
            "/image/..%2fetc/passwd",
            "/image/../x",
            "/image/a/../b",
            "/image/a//b",
            "/image/a/",
            "/image//a",
            "/image/./a",
            "/image/a%00b",
            "/image/a%20b",
            "/image/caf%C3%A9",
            "/image/a%252e%252e",
        ] {
            let err = parse(bad, "").unwrap_err();
            assert_eq!(err.status(), 400, "{bad}");
        }
        let long = format!("/image/{}", "a".repeat(513));
        assert_eq!(parse(&long, "").unwrap_err().status(), 400);
        let ok = format!("/image/{}", "a".repeat(512));
        assert!(parse(&ok, "").is_ok());
        assert_eq!(
            parse("/image/3972/b1/x.jpg", "").unwrap().id,
            "3972/b1/x.jpg"
        );
        assert_eq!(parse("/image/a%2Db", "").unwrap().id, "a-b");
        assert_eq!(parse("/other/a", "").unwrap_err().status(), 404);
    }

    #[test]
    fn contain_carries_its_background_and_only_contain_does() {
        assert_eq!(
            key("/image/a", "size=100x50&fit=contain&bg=FF0000"),
            "v1|1:a|w=100,h=50,fit=contain,f=auto,q=80,bg=ff0000"
        );
        // The configured default is filled in, so naming it changes nothing.
        assert_eq!(
            key("/image/a", "size=100x50&fit=contain"),
            key("/image/a", "size=100x50&fit=contain&bg=ffffff")
        );
        assert_ne!(
            key("/image/a", "size=100x50&fit=contain"),
            key("/image/a", "size=100x50&fit=inside")
        );
        // bg without contain, or contain with one side, does not reach the key.
        assert_eq!(
            key("/image/a", "size=100x50&bg=000000"),
            key("/image/a", "size=100x50")
        );
        assert_eq!(
            key("/image/a", "size=100x&fit=contain&bg=000000"),
            key("/image/a", "size=100x")
        );
        let v = parse("/image/a", "size=10x10&fit=contain&bg=0a0b0c").unwrap();
        assert_eq!(
            v.transform.unwrap().resize.unwrap().fit,
            Fit::Contain([10, 11, 12])
        );
    }

    #[test]
    fn keys_are_unambiguous() {
        // Ids are length-prefixed, so no id can end where another variant's fields begin.
        assert!(key("/image/ab", "").starts_with("v1|2:ab|"));
        assert_ne!(key("/image/a", "size=10x"), key("/image/a", "size=x10"));
        assert_ne!(key("/image/a", "format=png"), key("/image/a", ""));
    }

    /// `Accept` strings real clients send (2024–2026 releases unless named).
    const CHROME: &str = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8";
    const SAFARI: &str = "image/webp,image/avif,image/jxl,image/heic,image/heic-sequence,video/*;q=0.8,image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5";
    const FIREFOX: &str = "image/avif,image/webp,image/png,image/svg+xml,image/*;q=0.8,*/*;q=0.5";
    /// Android 7 WebView (Chrome 60 era): WebP, no AVIF.
    const OLD_WEBVIEW: &str = "image/webp,image/apng,image/*,*/*;q=0.8";
    /// Safari 13 / IE 11 era.
    const OLD_SAFARI: &str = "image/png,image/svg+xml,image/*;q=0.8,video/*;q=0.8,*/*;q=0.5";
    const CURL: &str = "*/*";

    #[test]
    fn accept_headers_collapse_to_three_classes() {
        let class = |a: &str| AcceptClass::from_accept(Some(a.as_bytes()));
        assert_eq!(class(CHROME), AcceptClass::Avif);
        assert_eq!(class(SAFARI), AcceptClass::Avif);
        assert_eq!(class(FIREFOX), AcceptClass::Avif);
        assert_eq!(class(OLD_WEBVIEW), AcceptClass::Webp);
        assert_eq!(class(OLD_SAFARI), AcceptClass::Legacy);
        assert_eq!(class(CURL), AcceptClass::Legacy);
        assert_eq!(AcceptClass::from_accept(None), AcceptClass::Legacy);
        assert_eq!(class(""), AcceptClass::Legacy);
        // q=0 refuses; wildcards promise nothing.
        assert_eq!(class("image/avif;q=0,image/webp,*/*"), AcceptClass::Webp);
        assert_eq!(
            class("image/avif; q=0.0, image/webp;q=0"),
            AcceptClass::Legacy
        );
        assert_eq!(class("image/*,*/*"), AcceptClass::Legacy);
        // Preference by q, AVIF on a tie; case and spaces do not matter.
        assert_eq!(
            class("image/avif;q=0.5, image/webp;q=0.9"),
            AcceptClass::Webp
        );
        assert_eq!(
            class("image/webp;q=0.8,image/avif;q=0.8"),
            AcceptClass::Avif
        );
        assert_eq!(class(" IMAGE/AVIF ; Q=1 "), AcceptClass::Avif);
        // Malformed q-values promise nothing.
        for bad in [
            "image/avif;q=abc",
            "image/avif;q=2",
            "image/avif;q=0.1234",
            "image/avif;q=-1",
        ] {
            assert_eq!(class(bad), AcceptClass::Legacy, "{bad}");
        }
        assert_eq!(class("image/avif;q=0.001"), AcceptClass::Avif);
        // Non-UTF-8 bytes: legacy, never a panic.
        assert_eq!(
            AcceptClass::from_accept(Some(b"image/avif\xff")),
            AcceptClass::Legacy
        );
        // Each class's representative header (warm, mirror) is read back as that class.
        for c in [AcceptClass::Avif, AcceptClass::Webp, AcceptClass::Legacy] {
            assert_eq!(
                AcceptClass::from_accept(c.accept_header().map(str::as_bytes)),
                c
            );
        }
    }

    #[test]
    fn negotiated_variants_key_on_the_class_and_sign_without_it() {
        let opts = ParseOptions::default();
        let with = |accept: Option<&str>| {
            let mut v =
                Variant::parse("/image/a.jpg", Some("size=300x&format=auto"), &opts).unwrap();
            v.negotiate(accept.map(str::as_bytes));
            v
        };
        let (chrome, safari, webview, curl) = (
            with(Some(CHROME)),
            with(Some(SAFARI)),
            with(Some(OLD_WEBVIEW)),
            with(Some(CURL)),
        );
        // Two different Accept strings, one class, one key.
        assert_eq!(chrome.cache_key(), safari.cache_key());
        let keys: std::collections::HashSet<_> = [&chrome, &webview, &curl]
            .iter()
            .map(|v| v.cache_key())
            .collect();
        assert_eq!(keys.len(), 3);
        assert!(chrome.is_negotiated());
        // The class travels to the origin and peers in the URI, which parses back to it.
        assert_eq!(
            chrome.canonical_uri(),
            "/image/a.jpg?size=300x&fit=inside&format=auto&q=80&accept=avif"
        );
        assert_eq!(
            Variant::parse(
                "/image/a.jpg",
                chrome.canonical_uri().split_once('?').map(|q| q.1),
                &opts
            )
            .unwrap(),
            chrome
        );
        assert_eq!(
            AcceptClass::of_uri(&webview.canonical_uri()),
            Some(AcceptClass::Webp)
        );
        // One signature for every class.
        assert_eq!(chrome.signed_uri(), curl.signed_uri());
        assert_eq!(
            chrome.signed_uri(),
            "/image/a.jpg?size=300x&fit=inside&format=auto&q=80"
        );
        // A client's own accept= is replaced by its header's class at the edge.
        let mut forged = Variant::parse(
            "/image/a.jpg",
            Some("size=300x&format=auto&accept=avif"),
            &opts,
        )
        .unwrap();
        forged.negotiate(Some(CURL.as_bytes()));
        assert_eq!(forged, curl);
        // No Accept at all (a replayed log line): legacy.
        let logged = Variant::parse("/image/a.jpg", Some("size=300x&format=auto"), &opts).unwrap();
        assert_eq!(logged.cache_key(), curl.cache_key());
        // Explicit formats are not negotiated; accept= needs format=auto.
        let mut explicit =
            Variant::parse("/image/a.jpg", Some("size=300x&format=avif"), &opts).unwrap();
        explicit.negotiate(Some(OLD_WEBVIEW.as_bytes()));
        assert!(!explicit.is_negotiated());
        assert_eq!(explicit.transform.unwrap().format, Some(OutputFormat::Avif));
        for q in [
            "size=300x&format=webp&accept=avif",
            "accept=webp",
            "size=3x&accept=legacy",
        ] {
            assert_eq!(
                Variant::parse("/image/a.jpg", Some(q), &opts)
                    .unwrap_err()
                    .status(),
                400,
                "{q}"
            );
        }
        assert_eq!(
            Variant::parse("/image/a.jpg", Some("format=auto&accept=jxl"), &opts)
                .unwrap_err()
                .status(),
            400
        );
    }

    #[test]
    fn default_format_auto_negotiates_transforms_only() {
        let auto = ParseOptions {
            default_format: DefaultFormat::Auto,
            ..ParseOptions::default()
        };
        let v = Variant::parse("/image/a.jpg", Some("size=300x"), &auto).unwrap();
        assert!(v.is_negotiated());
        // The same variant as an explicit format=auto.
        assert_eq!(
            v,
            Variant::parse("/image/a.jpg", Some("size=300x&format=auto"), &auto).unwrap()
        );
        // An explicit format still wins; the original is still the original.
        assert!(
            !Variant::parse("/image/a.jpg", Some("size=300x&format=png"), &auto)
                .unwrap()
                .is_negotiated()
        );
        assert!(Variant::parse("/image/a.jpg", None, &auto)
            .unwrap()
            .transform
            .is_none());
        // v1 meaning by default.
        let v1 =
            Variant::parse("/image/a.jpg", Some("size=300x"), &ParseOptions::default()).unwrap();
        assert!(!v1.is_negotiated());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn arb_param() -> impl Strategy<Value = String> {
            prop_oneof![
                (1u32..=4096, 1u32..=4096).prop_map(|(w, h)| format!("size={w}x{h}")),
                (1u32..=4096).prop_map(|w| format!("size={w}x")),
                (1u32..=4096).prop_map(|h| format!("size=x{h}")),
                prop::sample::select(vec!["cover", "inside", "fill", "contain"])
                    .prop_map(|f| format!("fit={f}")),
                prop::sample::select(vec!["ffffff", "000000", "FFFFFF", "1a2B3c"])
                    .prop_map(|b| format!("bg={b}")),
                prop::sample::select(vec!["jpeg", "jpg", "png", "webp", "avif", "auto"])
                    .prop_map(|f| format!("format={f}")),
                (1u8..=100).prop_map(|q| format!("q={q}")),
                prop::sample::select(vec!["1", "1.5", "2", "3", "4"])
                    .prop_map(|d| format!("dpr={d}")),
                "[a-z_]{1,8}=[a-z0-9]{0,6}".prop_map(|s| format!("utm_{s}")),
            ]
        }

        fn arb_query() -> impl Strategy<Value = Vec<String>> {
            // Unique known keys so the query is valid; noise may repeat.
            prop::collection::vec(arb_param(), 0..7).prop_map(|ps| {
                let mut seen = std::collections::HashSet::new();
                ps.into_iter()
                    .filter(|p| {
                        let k = p.split('=').next().unwrap_or("").to_string();
                        k.starts_with("utm_") || seen.insert(k)
                    })
                    .collect()
            })
        }

        proptest! {
            #[test]
            fn canonicalization_is_idempotent(id in "[a-z0-9]{1,8}(/[a-z0-9._-]{1,8}){0,3}", q in arb_query()) {
                prop_assume!(id.split('/').all(|s| s != "." && s != ".."));
                let path = format!("/image/{id}");
                let v = parse(&path, &q.join("&")).unwrap();
                let uri = v.canonical_uri();
                let (p2, q2) = uri.split_once('?').unwrap_or((&uri, ""));
                let v2 = parse(p2, q2).unwrap();
                prop_assert_eq!(&v, &v2);
                prop_assert_eq!(v.cache_key(), v2.cache_key());
                prop_assert_eq!(uri.clone(), v2.canonical_uri());
            }

            #[test]
            fn canonicalization_is_order_independent(q in arb_query(), seed in any::<u64>()) {
                let a = parse("/image/x.jpg", &q.join("&")).unwrap();
                let mut shuffled = q.clone();
                // Deterministic shuffle from the seed.
                let mut s = seed;
                for i in (1..shuffled.len()).rev() {
                    s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    shuffled.swap(i, (s >> 33) as usize % (i + 1));
                }
                let b = parse("/image/x.jpg", &shuffled.join("&")).unwrap();
                prop_assert_eq!(a.cache_key(), b.cache_key());
            }

            #[test]
            fn parser_never_panics(path in "/image/[ -~]{0,40}", q in "[ -~]{0,60}") {
                let _ = parse(&path, &q);
            }
        }
    }
}
