//! Image similarity for tests: SSIM (7x7 uniform windows, the scikit-image default) and mean
//! absolute difference, on RGBA8 with colour premultiplied by alpha so invisible pixels do not
//! count.
#![allow(dead_code)]

use image::RgbaImage;

/// Premultiplied planes: R, G, B (times alpha) and A, as f64.
fn planes(img: &RgbaImage) -> [Vec<f64>; 4] {
    let mut p: [Vec<f64>; 4] = Default::default();
    for px in img.pixels() {
        let a = f64::from(px[3]) / 255.0;
        for c in 0..3 {
            p[c].push(f64::from(px[c]) * a);
        }
        p[3].push(f64::from(px[3]));
    }
    p
}

/// Mean SSIM of one plane pair over all 7x7 windows (whole image when smaller).
fn ssim_plane(a: &[f64], b: &[f64], w: usize, h: usize) -> f64 {
    let win = 7.min(w).min(h);
    let (c1, c2) = ((0.01f64 * 255.0).powi(2), (0.03f64 * 255.0).powi(2));
    // Integral images of a, b, a², b², ab.
    let stride = w + 1;
    let mut sums = vec![[0f64; 5]; stride * (h + 1)];
    for y in 0..h {
        for x in 0..w {
            let (va, vb) = (a[y * w + x], b[y * w + x]);
            let v = [va, vb, va * va, vb * vb, va * vb];
            for k in 0..5 {
                sums[(y + 1) * stride + x + 1][k] =
                    v[k] + sums[y * stride + x + 1][k] + sums[(y + 1) * stride + x][k]
                        - sums[y * stride + x][k];
            }
        }
    }
    let n = (win * win) as f64;
    let mut total = 0.0;
    let mut count = 0usize;
    for y in 0..=h - win {
        for x in 0..=w - win {
            let s = |k: usize| {
                sums[(y + win) * stride + x + win][k]
                    - sums[y * stride + x + win][k]
                    - sums[(y + win) * stride + x][k]
                    + sums[y * stride + x][k]
            };
            let (ma, mb) = (s(0) / n, s(1) / n);
            // Sample (co)variances, as scikit-image computes them.
            let k = n / (n - 1.0).max(1.0);
            let va = (s(2) / n - ma * ma) * k;
            let vb = (s(3) / n - mb * mb) * k;
            let cov = (s(4) / n - ma * mb) * k;
            total += ((2.0 * ma * mb + c1) * (2.0 * cov + c2))
                / ((ma * ma + mb * mb + c1) * (va + vb + c2));
            count += 1;
        }
    }
    total / count as f64
}

/// Mean SSIM over the premultiplied R, G, B and A planes. Panics on a size mismatch.
pub fn ssim(a: &RgbaImage, b: &RgbaImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions(), "sizes differ");
    let (w, h) = (a.width() as usize, a.height() as usize);
    let (pa, pb) = (planes(a), planes(b));
    (0..4)
        .map(|c| ssim_plane(&pa[c], &pb[c], w, h))
        .sum::<f64>()
        / 4.0
}

/// Mean absolute difference per premultiplied sample, 0..=255.
pub fn mean_abs_diff(a: &RgbaImage, b: &RgbaImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions(), "sizes differ");
    let (pa, pb) = (planes(a), planes(b));
    let mut sum = 0.0;
    let mut n = 0usize;
    for c in 0..4 {
        for (x, y) in pa[c].iter().zip(&pb[c]) {
            sum += (x - y).abs();
            n += 1;
        }
    }
    sum / n as f64
}

/// Decode any image the `image` crate reads into RGBA8.
pub fn rgba(bytes: &[u8]) -> RgbaImage {
    image::load_from_memory(bytes)
        .expect("decodable output")
        .to_rgba8()
}
