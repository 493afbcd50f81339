//! Which AV1 encoder (libaom or rav1e, both through libavif) and at which speed imgedge's AVIF
//! output uses, and how its quality maps to WebP's. For each input and output width: the WebP
//! (libwebp 1.6, method 4) at q=Q is the reference; each encoder/speed is bisected for the lowest
//! AVIF quality whose SSIM against the resized source is at least the WebP's, then timed (one
//! thread, median of 3) at that quality.
//!
//!   cargo run --release -- IN.jpg [IN.jpg…]       (Q from WEBP_Q, default 80; ONLY=aom:8; WIDTHS=256,400)

use std::time::Instant;

use image::{imageops::FilterType, RgbImage};
use libavif_sys as a;

#[path = "../../../tests/similarity/mod.rs"]
mod similarity;

fn rgba(img: &RgbImage) -> image::RgbaImage {
    image::DynamicImage::ImageRgb8(img.clone()).to_rgba8()
}

fn webp(img: &RgbImage, q: f32) -> (Vec<u8>, RgbImage) {
    unsafe {
        let mut out = std::ptr::null_mut();
        let n = libwebp_sys::WebPEncodeRGB(
            img.as_raw().as_ptr(),
            img.width() as i32,
            img.height() as i32,
            img.width() as i32 * 3,
            q,
            &mut out,
        );
        let bytes = std::slice::from_raw_parts(out, n).to_vec();
        libwebp_sys::WebPFree(out as _);
        let (mut w, mut h) = (0, 0);
        let px = libwebp_sys::WebPDecodeRGB(bytes.as_ptr(), bytes.len(), &mut w, &mut h);
        let dec = RgbImage::from_raw(
            w as u32,
            h as u32,
            std::slice::from_raw_parts(px, (w * h * 3) as usize).to_vec(),
        )
        .unwrap();
        libwebp_sys::WebPFree(px as _);
        (bytes, dec)
    }
}

fn avif(img: &RgbImage, codec: a::avifCodecChoice, speed: i32, quality: i32) -> Vec<u8> {
    unsafe {
        let image = a::avifImageCreate(img.width(), img.height(), 8, a::AVIF_PIXEL_FORMAT_YUV420);
        let mut rgb: a::avifRGBImage = std::mem::zeroed();
        a::avifRGBImageSetDefaults(&mut rgb, image);
        rgb.format = a::AVIF_RGB_FORMAT_RGB;
        rgb.pixels = img.as_raw().as_ptr() as *mut u8;
        rgb.rowBytes = img.width() * 3;
        assert_eq!(a::avifImageRGBToYUV(image, &rgb), a::AVIF_RESULT_OK);
        let enc = a::avifEncoderCreate();
        (*enc).codecChoice = codec;
        (*enc).maxThreads = 1;
        (*enc).speed = speed;
        (*enc).quality = quality;
        let mut out: a::avifRWData = std::mem::zeroed();
        let r = a::avifEncoderWrite(enc, image, &mut out);
        assert_eq!(r, a::AVIF_RESULT_OK, "encode");
        let bytes = std::slice::from_raw_parts(out.data, out.size).to_vec();
        a::avifRWDataFree(&mut out);
        a::avifEncoderDestroy(enc);
        a::avifImageDestroy(image);
        bytes
    }
}

fn avif_decode(bytes: &[u8]) -> RgbImage {
    unsafe {
        let dec = a::avifDecoderCreate();
        (*dec).codecChoice = a::AVIF_CODEC_CHOICE_DAV1D;
        let image = a::avifImageCreateEmpty();
        assert_eq!(a::avifDecoderReadMemory(dec, image, bytes.as_ptr(), bytes.len()), a::AVIF_RESULT_OK);
        let mut rgb: a::avifRGBImage = std::mem::zeroed();
        a::avifRGBImageSetDefaults(&mut rgb, image);
        rgb.format = a::AVIF_RGB_FORMAT_RGB;
        a::avifRGBImageAllocatePixels(&mut rgb);
        assert_eq!(a::avifImageYUVToRGB(image, &mut rgb), a::AVIF_RESULT_OK);
        let mut px = Vec::with_capacity((rgb.width * rgb.height * 3) as usize);
        for y in 0..rgb.height {
            let row = std::slice::from_raw_parts(rgb.pixels.add((y * rgb.rowBytes) as usize), (rgb.width * 3) as usize);
            px.extend_from_slice(row);
        }
        let out = RgbImage::from_raw(rgb.width, rgb.height, px).unwrap();
        a::avifRGBImageFreePixels(&mut rgb);
        a::avifImageDestroy(image);
        a::avifDecoderDestroy(dec);
        out
    }
}

fn median_ms(mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..3)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[1]
}

fn main() {
    let q: f32 = std::env::var("WEBP_Q").ok().and_then(|s| s.parse().ok()).unwrap_or(80.0);
    let configs: &[(&str, a::avifCodecChoice, i32)] = &[
        ("aom", a::AVIF_CODEC_CHOICE_AOM, 6),
        ("aom", a::AVIF_CODEC_CHOICE_AOM, 7),
        ("aom", a::AVIF_CODEC_CHOICE_AOM, 8),
        ("aom", a::AVIF_CODEC_CHOICE_AOM, 9),
        ("rav1e", a::AVIF_CODEC_CHOICE_RAV1E, 6),
        ("rav1e", a::AVIF_CODEC_CHOICE_RAV1E, 8),
        ("rav1e", a::AVIF_CODEC_CHOICE_RAV1E, 10),
    ];
    // ONLY=aom:8 restricts the run to one encoder and speed (for the quality mapping).
    let only = std::env::var("ONLY").ok();
    let configs: Vec<_> = configs
        .iter()
        .copied()
        .filter(|(l, _, s)| only.as_deref().is_none_or(|o| o == format!("{l}:{s}")))
        .collect();
    let configs = &configs[..];
    // Tiny outputs: can each encoder make them at all?
    for &(label, codec, speed) in configs.iter().filter(|_| std::env::var("TINY").is_ok()) {
        for side in [1u32, 2, 8, 15, 16] {
            let img = RgbImage::from_pixel(side, side, image::Rgb([200, 100, 50]));
            let ok = std::panic::catch_unwind(|| avif_decode(&avif(&img, codec, speed, 60)))
                .map(|d| d.width() == side && d.height() == side);
            println!("tiny\t{label}\tspeed {speed}\t{side}x{side}\t{ok:?}");
        }
    }
    println!("input\twidth\tencoder\tspeed\tquality\tms\tbytes\tbytes/webp\tssim\twebp_ms\twebp_bytes\twebp_ssim");
    for path in std::env::args().skip(1) {
        let src = image::open(&path).unwrap().to_rgb8();
        let name = std::path::Path::new(&path).file_stem().unwrap().to_string_lossy().to_string();
        let widths: Vec<u32> = std::env::var("WIDTHS")
            .ok()
            .map(|w| w.split(',').filter_map(|x| x.parse().ok()).collect())
            .unwrap_or_else(|| vec![400, 1200]);
        for &width in &widths {
            let h = (src.height() as u64 * width as u64 / src.width() as u64) as u32;
            let img = image::imageops::resize(&src, width, h, FilterType::Lanczos3);
            let reference = rgba(&img);
            let (wb, wd) = webp(&img, q);
            let webp_ms = median_ms(|| {
                webp(&img, q);
            });
            let target = similarity::ssim(&reference, &rgba(&wd));
            for &(label, codec, speed) in configs {
                // Lowest quality in 1..=100 whose SSIM reaches the WebP's (SSIM rises with quality).
                let (mut lo, mut hi) = (1, 100);
                let mut best = None;
                while lo <= hi {
                    let mid = (lo + hi) / 2;
                    let bytes = avif(&img, codec, speed, mid);
                    let s = similarity::ssim(&reference, &rgba(&avif_decode(&bytes)));
                    if s >= target {
                        best = Some((mid, bytes.len(), s));
                        hi = mid - 1;
                    } else {
                        lo = mid + 1;
                    }
                }
                let Some((quality, len, s)) = best else {
                    println!("{name}\t{width}\t{label}\t{speed}\t-\t-\t-\t-\t-\t{webp_ms:.1}\t{}\t{target:.4}", wb.len());
                    continue;
                };
                let ms = median_ms(|| {
                    avif(&img, codec, speed, quality);
                });
                println!(
                    "{name}\t{width}\t{label}\t{speed}\t{quality}\t{ms:.1}\t{len}\t{:.2}\t{s:.4}\t{webp_ms:.1}\t{}\t{target:.4}",
                    len as f64 / wb.len() as f64,
                    wb.len()
                );
            }
        }
    }
}
