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
}

impl OutputFormat {
    fn parse(s: &str) -> Result<Self> {
        match s {
            "jpeg" | "jpg" => Ok(OutputFormat::Jpeg),
            "png" => Ok(OutputFormat::Png),
            "webp" => Ok(OutputFormat::Webp),
            _ => Err(Error::bad_request("format must be jpeg, png or webp")),
        }
    }

    /// Name used in URLs and keys.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "jpeg",
            OutputFormat::Png => "png",
            OutputFormat::Webp => "webp",
        }
    }

    /// The `Content-Type` of this encoding.
    pub fn mime(self) -> &'static str {
        match self {
            OutputFormat::Jpeg => "image/jpeg",
            OutputFormat::Png => "image/png",
            OutputFormat::Webp => "image/webp",
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
    /// Output format, or `None` for automatic: the original's format when it is JPEG, PNG or
    /// WebP, else JPEG.
    pub format: Option<OutputFormat>,
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
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            max_dimension: 4096,
            default_quality: 80,
            background: [255, 255, 255],
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
        let format = match params.format.as_deref() {
            Some(f) => Some(OutputFormat::parse(f)?),
            None => None,
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

        let transform = if resize.is_some() || format.is_some() || quality.is_some() {
            let lossless = format.is_some_and(|f| !f.is_lossy());
            Some(Transform {
                resize,
                format,
                quality: if lossless {
                    None
                } else {
                    Some(quality.unwrap_or(opts.default_quality))
                },
            })
        } else {
            None
        };
        Ok(Variant { id, transform })
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
                    t.format.map_or("auto", |f| f.as_str()),
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
    /// it to the origin so both sides work from the same description.
    pub fn canonical_uri(&self) -> String {
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
                prop::sample::select(vec!["jpeg", "jpg", "png", "webp"])
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
