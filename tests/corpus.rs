//! The transform engine on every file of the corpus (tests/corpus, a copy of the shared image
//! corpus with its manifest.tsv), through the same entry point the resize pool calls.
//!
//! Valid files are compared with references Pillow computed independently
//! (tests/corpus/make_refs.py: LittleCMS for ICC, EXIF transpose, Lanczos in premultiplied
//! alpha) by SSIM and mean difference. Hostile files must be refused with 422, quickly.
//! tests/hostile.rs repeats the hostile half through the real binary, watching its memory.

mod similarity;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use imgedge::metrics::metrics;
use imgedge::origin::mezzanine::Mezzanines;
use imgedge::origin::transform::resize as transform_resize;
use imgedge::origin::transform::{
    decode, prepare_via, transform, Output, TransformLimits, TransformSettings,
};
use imgedge::variant::{ParseOptions, Variant};
use similarity::{mean_abs_diff, rgba, ssim};

/// Lowest SSIM and highest mean difference accepted against Pillow's reference. The engines
/// differ in JPEG IDCT scaling, Lanczos kernels and colour-management rounding; an unmanaged
/// ICC decode, a missed rotation or a dark alpha fringe is far outside these.
const MIN_SSIM: f64 = 0.97;
const MAX_DIFF: f64 = 3.0;

fn corpus(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(rel)
}

struct Row {
    file: String,
    expected: String,
    width: Option<u32>,
    height: Option<u32>,
    note: String,
}

fn manifest() -> Vec<Row> {
    let text = std::fs::read_to_string(corpus("manifest.tsv")).unwrap();
    text.lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            Row {
                file: f[0].to_string(),
                expected: f[1].to_string(),
                width: f[3].parse().ok(),
                height: f[4].parse().ok(),
                note: f[8].to_string(),
            }
        })
        .collect()
}

fn settings() -> TransformSettings {
    TransformSettings {
        limits: TransformLimits::default(),
        background: [255, 255, 255],
        default_quality: 80,
        avif_speed: imgedge::origin::transform::encode::AVIF_SPEED,
        planar_jpeg: true,
    }
}

fn run_with(bytes: &[u8], query: &str, s: &TransformSettings) -> imgedge::error::Result<Output> {
    let t = Variant::parse("/image/x", Some(query), &ParseOptions::default())
        .unwrap()
        .transform
        .unwrap();
    transform(bytes, &t, s)
}

fn run(bytes: &[u8], query: &str) -> imgedge::error::Result<Output> {
    run_with(bytes, query, &settings())
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(corpus(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn reference(file: &str, suffix: &str) -> image::RgbaImage {
    let name = file.trim_start_matches("valid/");
    rgba(&std::fs::read(corpus(&format!("ref/{name}{suffix}"))).unwrap())
}

#[test]
fn manifest_lists_every_corpus_file() {
    let rows = manifest();
    assert_eq!(rows.len(), 71);
    for dir in ["valid", "hostile"] {
        for entry in std::fs::read_dir(corpus(dir)).unwrap() {
            let name = format!("{dir}/{}", entry.unwrap().file_name().to_string_lossy());
            assert!(
                rows.iter().any(|r| r.file == name),
                "{name} not in manifest"
            );
        }
    }
}

#[test]
fn every_valid_file_matches_an_independent_reference() {
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for row in manifest().iter().filter(|r| r.file.starts_with("valid/")) {
        let bytes = read(&row.file);
        let result = run(&bytes, "size=256x256&fit=inside&format=png");
        let out = match result {
            Ok(o) => o,
            Err(e) => {
                failures.push(format!("{}: {e}", row.file));
                continue;
            }
        };
        let got = rgba(&out.bytes);
        let want = reference(&row.file, ".png");
        if got.dimensions() != want.dimensions() {
            failures.push(format!(
                "{}: {:?} but the reference is {:?}",
                row.file,
                got.dimensions(),
                want.dimensions()
            ));
            continue;
        }
        let (s, d) = (ssim(&got, &want), mean_abs_diff(&got, &want));
        report.push(format!("{:<44} ssim {s:.4} diff {d:.2}", row.file));
        if s < MIN_SSIM || d > MAX_DIFF {
            failures.push(format!("{}: ssim {s:.4}, mean diff {d:.2}", row.file));
        }
    }
    println!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// An AVIF output as a browser decodes it: libavif (the library Chrome and Firefox use),
/// here with libaom's decoder, and its default bilinear chroma upsampling; as RGBA8.
fn avif_rgba(bytes: &[u8]) -> image::RgbaImage {
    use libavif_sys as a;
    // SAFETY: libavif's documented decode sequence on buffers it allocates and we free.
    unsafe {
        let dec = a::avifDecoderCreate();
        let image = a::avifImageCreateEmpty();
        let r = a::avifDecoderReadMemory(dec, image, bytes.as_ptr(), bytes.len());
        assert_eq!(r, a::AVIF_RESULT_OK, "decodable AVIF");
        assert_eq!(
            (*image).icc.size,
            0,
            "outputs are tagged sRGB, never an ICC profile"
        );
        let mut rgb: a::avifRGBImage = std::mem::zeroed();
        a::avifRGBImageSetDefaults(&mut rgb, image);
        rgb.format = a::AVIF_RGB_FORMAT_RGBA;
        rgb.depth = 8;
        assert_eq!(a::avifRGBImageAllocatePixels(&mut rgb), a::AVIF_RESULT_OK);
        assert_eq!(a::avifImageYUVToRGB(image, &mut rgb), a::AVIF_RESULT_OK);
        let mut px = Vec::with_capacity((rgb.width * rgb.height * 4) as usize);
        for y in 0..rgb.height {
            let row = rgb.pixels.add((y * rgb.rowBytes) as usize);
            px.extend_from_slice(std::slice::from_raw_parts(row, (rgb.width * 4) as usize));
        }
        let out = image::RgbaImage::from_raw(rgb.width, rgb.height, px).unwrap();
        a::avifRGBImageFreePixels(&mut rgb);
        a::avifImageDestroy(image);
        a::avifDecoderDestroy(dec);
        out
    }
}

/// AVIF and WebP outputs of every valid file: against the same independent references as the
/// PNG output, with a lossy tolerance (orientation, ICC → sRGB and alpha: SSIM premultiplies by
/// alpha, so a lost or darkened alpha shows; a missed rotation or an unmanaged profile scores
/// far below it); and against this engine's own lossless output of the same request, where
/// only the encoder differs: AVIF at the default quality is visibly equal to WebP at it (the
/// quality mapping's promise), file by file and on the median.
#[test]
fn avif_and_webp_outputs_of_every_valid_file_match_the_references() {
    const LOSSY_MIN_SSIM: f64 = 0.85;
    const LOSSY_MAX_DIFF: f64 = 6.0;
    const TINY_MIN_SSIM: f64 = 0.70;
    let (mut report, mut failures, mut gaps) = (Vec::new(), Vec::new(), Vec::new());
    for row in manifest().iter().filter(|r| r.file.starts_with("valid/")) {
        let bytes = read(&row.file);
        let want = reference(&row.file, ".png");
        let lossless = match run(&bytes, "size=256x256&fit=inside&format=png") {
            Ok(o) => rgba(&o.bytes),
            Err(e) => {
                failures.push(format!("{} png: {e}", row.file));
                continue;
            }
        };
        let mut own = Vec::new();
        for format in ["webp", "avif"] {
            let out = match run(&bytes, &format!("size=256x256&fit=inside&format={format}")) {
                Ok(o) => o,
                Err(e) => {
                    failures.push(format!("{} {format}: {e}", row.file));
                    continue;
                }
            };
            assert_eq!(out.format.as_str(), format);
            let got = match format {
                "avif" => avif_rgba(&out.bytes),
                _ => rgba(&out.bytes),
            };
            if got.dimensions() != want.dimensions() {
                failures.push(format!(
                    "{} {format}: {:?} but the reference is {:?}",
                    row.file,
                    got.dimensions(),
                    want.dimensions()
                ));
                continue;
            }
            let (s, d) = (ssim(&got, &want), mean_abs_diff(&got, &want));
            let o = ssim(&got, &lossless);
            report.push(format!(
                "{:<44} {format} vs reference: ssim {s:.4} diff {d:.2}; vs lossless: ssim {o:.4}; {} bytes",
                row.file,
                out.bytes.len()
            ));
            // Tiny outputs (PngSuite's 32 px tests) are mostly edges, where a lossy encoder
            // rings: SSIM still catches a wrong orientation, profile or alpha there.
            let tiny = got.width().min(got.height()) < 64;
            let min_ssim = if tiny { TINY_MIN_SSIM } else { LOSSY_MIN_SSIM };
            if s < min_ssim || (d > LOSSY_MAX_DIFF && !tiny) {
                failures.push(format!(
                    "{} {format}: ssim {s:.4}, mean diff {d:.2}",
                    row.file
                ));
            }
            own.push(o);
        }
        if let [webp, avif] = own[..] {
            gaps.push(avif - webp);
            if avif < webp - 0.03 {
                failures.push(format!(
                    "{}: avif ssim {avif:.4} well below webp's {webp:.4} (vs lossless)",
                    row.file
                ));
            }
        }
    }
    gaps.sort_by(|a, b| a.total_cmp(b));
    let median = gaps[gaps.len() / 2];
    println!(
        "{}\nmedian avif - webp ssim (vs lossless): {median:.4}",
        report.join("\n")
    );
    assert!(
        median > -0.005,
        "AVIF below WebP on the median: {median:.4}"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn icc_profiles_are_what_makes_the_colours_match() {
    for file in [
        "valid/jpeg-icc-adobergb-1600x1082.jpg",
        "valid/jpeg-icc-displayp3-1920x1200.jpg",
    ] {
        let out = run(&read(file), "size=256x256&fit=inside&format=png").unwrap();
        let got = rgba(&out.bytes);
        let managed = reference(file, ".png");
        let unmanaged = reference(file, ".unmanaged.png");
        let (ours, without) = (
            mean_abs_diff(&got, &managed),
            mean_abs_diff(&unmanaged, &managed),
        );
        // The test can fail: skipping the profile lands as far off as Pillow's unmanaged decode.
        assert!(
            ours * 3.0 < without,
            "{file}: diff {ours:.2}, unmanaged would be {without:.2}"
        );
    }
}

#[test]
fn exif_orientation_gives_upright_sizes_and_outputs_carry_no_metadata() {
    for (file, upright) in [
        ("valid/jpeg-exif-orientation-3.jpg", (1680, 1050)),
        ("valid/jpeg-exif-orientation-6.jpg", (1600, 1000)),
        ("valid/jpeg-exif-orientation-8.jpg", (1600, 1000)),
        ("valid/jpeg-baseline-2560x1600.jpg", (2560, 1600)),
    ] {
        let src = read(file);
        for fmt in ["jpeg", "png", "webp"] {
            let out = run(&src, &format!("size=800x&format={fmt}")).unwrap();
            let want_h = (800.0 * upright.1 as f64 / upright.0 as f64).round() as u32;
            let img = image::load_from_memory(&out.bytes).unwrap();
            assert_eq!((img.width(), img.height()), (800, want_h), "{file} {fmt}");
            for needle in [
                &b"Exif"[..],
                b"ICC_PROFILE",
                b"iCCP",
                b"eXIf",
                b"ICCP",
                b"XMP",
            ] {
                assert!(
                    !out.bytes.windows(needle.len()).any(|w| w == needle),
                    "{file} {fmt}: output carries {:?}",
                    String::from_utf8_lossy(needle)
                );
            }
        }
    }
}

#[test]
fn alpha_is_kept_for_png_and_webp_and_flattened_for_jpeg() {
    // The same photo with the same radial alpha, as PNG and as AVIF (auxiliary alpha item).
    for file in [
        "valid/png-rgba-photo-alpha-512x512.png",
        "valid/avif-alpha-512x512.avif",
    ] {
        alpha_kept_and_flattened(file);
    }
}

fn alpha_kept_and_flattened(file: &str) {
    let src = read(file);
    for fmt in ["png", "webp"] {
        let out = run(&src, &format!("size=128x128&format={fmt}")).unwrap();
        let img = rgba(&out.bytes);
        assert_eq!(
            img.get_pixel(0, 0)[3],
            0,
            "{file} {fmt}: transparent corner"
        );
        assert_eq!(img.get_pixel(64, 64)[3], 255, "{file} {fmt}: opaque centre");
    }
    // JPEG: flattened onto the configured background, with no dark fringe where alpha fades.
    let mut s = settings();
    s.background = [0, 0, 255];
    let out = run_with(&src, "size=128x128&format=jpeg", &s).unwrap();
    let img = image::load_from_memory(&out.bytes).unwrap().to_rgb8();
    let c = img.get_pixel(1, 1);
    assert!(
        c[2] > 230 && c[0] < 30 && c[1] < 30,
        "{file}: corner is the background: {c:?}"
    );
    let want = rgba(&run(&src, "size=128x128&format=png").unwrap().bytes);
    // Premultiplied resize: a half-transparent pixel flattened onto blue is its colour mixed
    // with blue, never darker than both.
    for (x, y) in [(20, 20), (30, 25), (108, 108)] {
        let (p, q) = (img.get_pixel(x, y), want.get_pixel(x, y));
        let a = f64::from(q[3]) / 255.0;
        let expect_b = f64::from(q[2]) * a + 255.0 * (1.0 - a);
        assert!(
            (f64::from(p[2]) - expect_b).abs() < 24.0,
            "{file} ({x},{y}): {p:?} vs {q:?}"
        );
    }
}

#[test]
fn avif_sources_decode_with_their_limits_checked_first() {
    // Opaque 8-bit 4:2:0 (BT.601 matrix, full range per its nclx) into every output format.
    let src = read("valid/avif-1600x1066.avif");
    for fmt in ["jpeg", "png", "webp"] {
        let out = run(&src, &format!("size=400x&format={fmt}")).unwrap();
        let img = image::load_from_memory(&out.bytes).unwrap();
        assert_eq!((img.width(), img.height()), (400, 267), "{fmt}");
    }
    // The pixel limit is checked against the container's declared size (ispe), so a limit just
    // under 1600x1066 refuses it with the reason, and one at it accepts it.
    let mut s = settings();
    s.limits.max_source_pixels = 1600 * 1066 - 1;
    let err = run_with(&src, "size=100x", &s).unwrap_err();
    assert_eq!(err.status(), 422);
    assert!(err.to_string().contains("1600x1066"), "{err}");
    s.limits.max_source_pixels = 1600 * 1066;
    assert!(run_with(&src, "size=100x", &s).is_ok());
    // A bomb: the same file declaring 60000x60000 is refused from the container, at once.
    let ispe = src.windows(4).position(|w| w == b"ispe").unwrap() + 8; // after version/flags
    let mut bomb = src.clone();
    bomb[ispe..ispe + 8].copy_from_slice(&[0, 0, 0xEA, 0x60, 0, 0, 0xEA, 0x60]);
    let t = Instant::now();
    let err = run(&bomb, "size=100x").unwrap_err();
    assert!(err.to_string().contains("60000x60000"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // A container that understates its size (16x16) is still held to the limit by the AV1
    // sequence header, before the decoder is opened.
    let mut liar = src.clone();
    liar[ispe..ispe + 8].copy_from_slice(&[0, 0, 0, 16, 0, 0, 0, 16]);
    s.limits.max_source_pixels = 100_000;
    let err = run_with(&liar, "size=100x", &s).unwrap_err();
    assert_eq!(err.status(), 422);
    assert!(err.to_string().contains("1600x1066"), "{err}");
    // Cut anywhere, it is a clean 422, never a panic or a grey guess.
    for cut in [100, 300, src.len() / 2, src.len() - 1000] {
        let err = run(&src[..cut], "size=100x").unwrap_err();
        assert_eq!(err.status(), 422, "cut at {cut}: {err}");
    }
}

#[test]
fn avif_rotation_alpha_and_high_bit_depth_match_libvips_decoding() {
    // tests/data: 64x48 crops of the corpus astronaut. One written by Pillow with alpha, an sRGB
    // ICC profile and irot=3 (displays as 48x64); one by libvips at 10 bits, 4:4:4, with no colr
    // box (CICP from the AV1 sequence header). References: libvips (libheif) decodes, upright.
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    for (file, upright) in [
        ("avif-alpha-irot-64x48.avif", (48, 64)),
        ("avif-10bit-444-64x48.avif", (64, 48)),
    ] {
        let src = std::fs::read(data.join(file)).unwrap();
        let out = run(&src, "format=png").unwrap();
        let got = rgba(&out.bytes);
        let want = rgba(&std::fs::read(data.join(format!("{file}.ref.png"))).unwrap());
        assert_eq!(got.dimensions(), upright, "{file}");
        assert_eq!(want.dimensions(), upright, "{file}");
        let (s, d) = (ssim(&got, &want), mean_abs_diff(&got, &want));
        assert!(
            s >= MIN_SSIM && d <= MAX_DIFF,
            "{file}: ssim {s:.4}, diff {d:.2}"
        );
    }
}

#[test]
fn contain_pads_to_exactly_the_box_with_the_background() {
    let src = read("valid/jpeg-baseline-2560x1600.jpg");
    let out = run(&src, "size=300x300&fit=contain&bg=ff0000&format=png").unwrap();
    let img = rgba(&out.bytes);
    assert_eq!(img.dimensions(), (300, 300));
    // 2560x1600 fits as 300x188, centred: 56 rows of padding above, 56 below.
    for (x, y) in [(0, 0), (299, 55), (150, 299), (10, 245)] {
        assert_eq!(img.get_pixel(x, y).0, [255, 0, 0, 255], "({x},{y})");
    }
    let inside = run(&src, "size=300x300&fit=inside&format=png").unwrap();
    let inside = rgba(&inside.bytes);
    assert_eq!(inside.dimensions(), (300, 188));
    let middle = image::imageops::crop_imm(&img, 0, 56, 300, 188).to_image();
    assert!(ssim(&middle, &inside) > 0.999);
}

#[test]
fn animations_give_their_first_frame_and_frame_counts_are_limited() {
    for file in [
        "valid/gif-animated-320x240.gif",
        "valid/webp-animated-480x270.webp",
    ] {
        let src = read(file);
        assert!(run(&src, "size=100x").is_ok(), "{file}");
        let mut s = settings();
        s.limits.max_frames = 5;
        let err = run_with(&src, "size=100x", &s).unwrap_err();
        assert_eq!(err.status(), 422, "{file}");
        assert!(err.to_string().contains("frames"), "{file}: {err}");
    }
}

#[test]
fn large_jpegs_decode_at_reduced_scale_and_stay_sharp() {
    // 5312 → 300 is a shrink of ~18: decoded at 1/8 in the IDCT, then Lanczos. The reference
    // is a full-size decode with Pillow, so any softness or misplaced crop shows.
    let file = "valid/jpeg-large-15.9mp-5312x2988.jpg";
    let out = run(&read(file), "size=256x256&fit=inside&format=png").unwrap();
    let s = ssim(&rgba(&out.bytes), &reference(file, ".png"));
    assert!(s > 0.97, "{s}");
    // Cover crops the centre at reduced scale too.
    let out = run(&read(file), "size=200x200&format=png").unwrap();
    assert_eq!((out.width, out.height), (200, 200));
}

#[test]
fn every_hostile_file_is_refused_quickly_or_reencoded() {
    for row in manifest().iter().filter(|r| r.file.starts_with("hostile/")) {
        let bytes = read(&row.file);
        for q in ["size=200x200", "format=png"] {
            let t = Instant::now();
            let result = run(&bytes, q);
            let took = t.elapsed();
            assert!(took < Duration::from_secs(1), "{} {q}: {took:?}", row.file);
            match row.expected.as_str() {
                "reject" => {
                    let err = result
                        .err()
                        .unwrap_or_else(|| panic!("{} {q} was accepted ({})", row.file, row.note));
                    assert_eq!(err.status(), 422, "{}: {err}", row.file);
                }
                _ => {
                    let out = result.unwrap_or_else(|e| panic!("{}: {e}", row.file));
                    assert!(!out.bytes.windows(4).any(|w| w == b"PK\x03\x04"));
                    let (w, h) = (row.width.unwrap(), row.height.unwrap());
                    let img = image::load_from_memory(&out.bytes).unwrap();
                    assert!(img.width() <= w && img.height() <= h, "{}", row.file);
                }
            }
        }
    }
}

#[test]
fn fuzz_regressions_are_answered_without_a_crash() {
    // Inputs that once crashed a decoder (fuzz/regressions; CI's fuzz run replays them too).
    // Each must come back as an image or a clean 422, never take the process down.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        for q in ["size=100x100", "format=png"] {
            if let Err(e) = run(&bytes, q) {
                assert_eq!(e.status(), 422, "{}: {e}", path.display());
            }
        }
        seen += 1;
    }
    assert!(seen > 0, "no regression inputs found");
}

/// Decode once, serve many sizes: on every valid file, a product page's sizes in the order a
/// cold page asks for them go through one mezzanine cache. The first decodes at the scale its
/// size needs, the first size it cannot serve decodes once more (large enough for all), and
/// every other size is resized from kept pixels; each output is the one a node without the cache
/// makes or, made from a larger decode, within SSIM 0.99 of a direct resize of the full decode
/// or no further from it than that node's (orientation, ICC, alpha and crops included). A new identity (a changed
/// original's ETag) never reuses the old pixels.
/// The planar JPEG → JPEG path against the RGB path (`planar_jpeg: false`) on every valid
/// JPEG it takes, at sizes with and without the box pre-shrink, odd sizes (the encoder's
/// padded planes) and a cover crop: same size and format, the same bytes when asked twice,
/// and as close as the RGB path's JPEG to the RGB path's lossless resize (both carry Q80's
/// loss: two JPEGs of one picture are ~0.98-0.99 SSIM apart, so each is held to the lossless
/// target instead).
#[test]
fn planar_jpeg_outputs_are_as_good_as_the_rgb_paths() {
    let rgb = TransformSettings {
        planar_jpeg: false,
        ..settings()
    };
    let queries = [
        "size=1200x",
        "size=640x",
        "size=401x301&fit=cover",
        "size=300x",
        "size=200x125&fit=fill",
        "size=150x150",
        "size=64x",
    ];
    let (mut took, mut report, mut failures) = (0, Vec::new(), Vec::new());
    for row in manifest().iter().filter(|r| r.file.starts_with("valid/")) {
        if !row.file.ends_with(".jpg") {
            continue;
        }
        let bytes = read(&row.file);
        for q in queries {
            let (a, b) = (run(&bytes, q).unwrap(), run_with(&bytes, q, &rgb).unwrap());
            assert_eq!(
                (a.format, a.width, a.height),
                (b.format, b.width, b.height),
                "{} {q}",
                row.file
            );
            assert_eq!(run(&bytes, q).unwrap().bytes, a.bytes, "{} {q}", row.file);
            if a.bytes == b.bytes {
                continue;
            }
            took += 1;
            let target = rgba(
                &run_with(&bytes, &format!("{q}&format=png"), &rgb)
                    .unwrap()
                    .bytes,
            );
            let (sa, sb) = (
                ssim(&rgba(&a.bytes), &target),
                ssim(&rgba(&b.bytes), &target),
            );
            report.push(format!(
                "{:<44} {q:<24} planar {sa:.4} rgb {sb:.4}",
                row.file
            ));
            if sa < sb - 0.005 {
                failures.push(format!("{} {q}: planar {sa:.4}, rgb {sb:.4}", row.file));
            }
        }
    }
    println!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(took >= 20, "the planar path took only {took} outputs");
}

#[test]
fn mezzanines_serve_further_sizes_as_a_direct_decode_would() {
    // The RGB path's mezzanines here; the planar path's at the end.
    let planar = settings();
    let settings = || TransformSettings {
        planar_jpeg: false,
        ..planar
    };
    let cache = Mezzanines::new(256 << 20);
    let lookups = |r: &str| metrics().mezzanine_lookups.with_label_values(&[r]).get();
    let sizes = [
        "size=150x150",
        "size=64x",
        "size=640x",
        "size=300x",
        "size=200x200&fit=cover",
        "size=400x300&fit=inside&format=png",
        "size=1024x&format=webp",
        "size=100x100&fit=contain",
    ];
    let mut files = 0;
    for row in manifest().iter().filter(|r| r.expected == "ok") {
        let bytes = read(&row.file);
        if imgedge::origin::transform::require_image(&bytes).is_err() {
            continue;
        }
        let before = (lookups("miss"), lookups("upgrade"), lookups("hit"));
        for query in sizes {
            let t = Variant::parse("/image/x", Some(query), &ParseOptions::default())
                .unwrap()
                .transform
                .unwrap();
            // A direct resize of the full decode: what every size is an approximation of.
            let direct = prepare_via(&bytes, &t, &settings(), |format, limits, resize| {
                let d = decode::decode_scaled(&bytes, format, limits, resize, 8)?;
                Ok((transform_resize::resize(d.pixels, &d.plan)?, d.plan))
            })
            .and_then(|p| p.encode())
            .unwrap();
            let kept = cache.transform(&row.file, &bytes, &t, &settings()).unwrap();
            assert_eq!(
                (kept.format, kept.width, kept.height),
                (direct.format, direct.width, direct.height),
                "{} {query}",
                row.file
            );
            // Made as without the cache (a first decode at the size's own scale), or from a
            // larger decode: then within 0.99 of the direct resize, or at least no further from
            // it than without the cache (tiny outputs of a shrink-on-load decode are not).
            let plain = transform(&bytes, &t, &settings()).unwrap();
            if kept.bytes != plain.bytes && kept.width >= 7 && kept.height >= 7 {
                let s = ssim(&rgba(&kept.bytes), &rgba(&direct.bytes));
                let p = ssim(&rgba(&plain.bytes), &rgba(&direct.bytes));
                assert!(
                    s >= 0.99 || s >= p - 0.005,
                    "{} {query}: SSIM {s:.4} against a direct resize (without the cache {p:.4})",
                    row.file
                );
            }
        }
        let (miss, upgrade, hit) = (
            lookups("miss") - before.0,
            lookups("upgrade") - before.1,
            lookups("hit") - before.2,
        );
        // A full decode over an eighth of the budget (32 MiB: the 14.7 MP PNG, the 16.8 MP
        // WebP) is not kept; JPEGs are kept at a reduced scale instead.
        let pixels = u64::from(row.width.unwrap_or(0)) * u64::from(row.height.unwrap_or(0));
        if !row.file.ends_with(".jpg") && pixels * 3 > 32 << 20 {
            assert_eq!((miss, hit), (sizes.len() as u64, 0), "{}", row.file);
            continue;
        }
        assert_eq!(miss, 1, "{}: one first decode", row.file);
        assert!(upgrade <= 1, "{}: {upgrade} upgrades", row.file);
        assert_eq!(hit + upgrade, sizes.len() as u64 - 1, "{}", row.file);
        files += 1;
    }
    assert!(files >= 10, "only {files} valid files");
    // Same bytes under another identity: decoded afresh.
    let bytes = read("valid/jpeg-baseline-2560x1600.jpg");
    let t = Variant::parse("/image/x", Some("size=300x"), &ParseOptions::default())
        .unwrap()
        .transform
        .unwrap();
    let misses = lookups("miss");
    cache
        .transform("other\netag", &bytes, &t, &settings())
        .unwrap();
    assert_eq!(lookups("miss"), misses + 1);

    // The planar path keeps planes under keys of its own: one first decode, at most one
    // upgrade, hits for the rest, each output as the planar path makes it without the cache
    // or within 0.99 of it.
    let before = (lookups("miss"), lookups("upgrade"), lookups("hit"));
    let queries = [
        "size=300x",
        "size=150x150",
        "size=640x",
        "size=1200x",
        "size=64x",
    ];
    for q in queries {
        let t = Variant::parse("/image/x", Some(q), &ParseOptions::default())
            .unwrap()
            .transform
            .unwrap();
        let kept = cache
            .transform("planar\netag", &bytes, &t, &planar)
            .unwrap();
        let plain = transform(&bytes, &t, &planar).unwrap();
        assert_eq!(
            (kept.width, kept.height),
            (plain.width, plain.height),
            "{q}"
        );
        if kept.bytes != plain.bytes {
            let s = ssim(&rgba(&kept.bytes), &rgba(&plain.bytes));
            assert!(
                s >= 0.99,
                "{q}: SSIM {s:.4} against the planar path without the cache"
            );
        }
    }
    let (miss, upgrade, hit) = (
        lookups("miss") - before.0,
        lookups("upgrade") - before.1,
        lookups("hit") - before.2,
    );
    assert_eq!(miss, 1);
    assert!(upgrade <= 1, "{upgrade} upgrades");
    assert_eq!(hit + upgrade, queries.len() as u64 - 1);
}
