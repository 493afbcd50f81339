//! Colour: embedded ICC profiles to sRGB (moxcms, pure Rust), and CMYK to RGB.
//!
//! Conversion runs after the resize, on output-sized pixels, so a profile costs little even on a
//! 50 MP source. Transforms are cached per thread by profile bytes: a catalogue from one camera
//! or one export preset repeats the same profile, and building a transform costs more than
//! applying it to a thumbnail.

use std::cell::RefCell;
use std::sync::Arc;

use moxcms::{
    CicpColorPrimaries, CicpProfile, ColorProfile, DataColorSpace, Layout, MatrixCoefficients,
    TransferCharacteristics, Transform8BitExecutor, TransformOptions,
};

/// Profiles whose transform is kept per thread.
const CACHED_TRANSFORMS: usize = 4;

type Cached = (Vec<u8>, Option<Arc<Transform8BitExecutor>>);

thread_local! {
    static TRANSFORMS: RefCell<Vec<Cached>> = const { RefCell::new(Vec::new()) };
}

/// An sRGB transform for `icc` with the given 3- or 4-channel layout, or `None` when the profile
/// is unusable, not RGB, or already sRGB (nothing to do).
fn transform_for(icc: &[u8], layout: Layout) -> Option<Arc<Transform8BitExecutor>> {
    let build = || {
        let src = ColorProfile::new_from_slice(icc).ok()?;
        if src.color_space != DataColorSpace::Rgb {
            return None;
        }
        let srgb = ColorProfile::new_srgb();
        if is_srgb(&src, &srgb) {
            return None;
        }
        src.create_transform_8bit(layout, &srgb, layout, TransformOptions::default())
            .map_err(|e| tracing::debug!("icc profile not usable: {e:?}"))
            .ok()
    };
    let mut key = Vec::with_capacity(icc.len() + 1);
    key.push(layout as u8);
    key.extend_from_slice(icc);
    TRANSFORMS.with(|cell| {
        let mut cache = cell.borrow_mut();
        if let Some(pos) = cache.iter().position(|(k, _)| *k == key) {
            let hit = cache.remove(pos);
            let t = hit.1.clone();
            cache.push(hit);
            return t;
        }
        let t = build();
        if cache.len() == CACHED_TRANSFORMS {
            cache.remove(0);
        }
        cache.push((key, t.clone()));
        t
    })
}

/// Same primaries and white point as sRGB (to 1e-3): converting would be a no-op up to rounding.
fn is_srgb(p: &ColorProfile, srgb: &ColorProfile) -> bool {
    let close = |a: moxcms::Xyzd, b: moxcms::Xyzd| {
        (a.x - b.x).abs() < 1e-3 && (a.y - b.y).abs() < 1e-3 && (a.z - b.z).abs() < 1e-3
    };
    p.is_matrix_shaper()
        && close(p.red_colorant, srgb.red_colorant)
        && close(p.green_colorant, srgb.green_colorant)
        && close(p.blue_colorant, srgb.blue_colorant)
        && p.red_trc == srgb.red_trc
}

/// Convert RGB8 (`channels` = 3) or RGBA8 (4, alpha untouched) pixels in place from `icc` to
/// sRGB. Profiles that cannot be used leave the pixels as they are (the common browser
/// behaviour for a broken profile), with a debug log.
pub fn to_srgb(data: &mut [u8], channels: usize, icc: &[u8]) {
    let layout = if channels == 4 {
        Layout::Rgba
    } else {
        Layout::Rgb
    };
    let Some(t) = transform_for(icc, layout) else {
        return;
    };
    let src = data.to_vec();
    if let Err(e) = t.transform(&src, data) {
        tracing::debug!("icc transform failed: {e:?}");
        data.copy_from_slice(&src);
    }
}

/// An ICC profile for pixels described only by CICP code points (AVIF `nclx`), or `None` when
/// they are sRGB already (BT.709 or unspecified primaries with an SDR transfer), or when the
/// transfer is HDR (PQ, HLG: tone mapping is not done here) or unknown to moxcms.
pub fn cicp_profile(primaries: u8, transfer: u8) -> Option<Vec<u8>> {
    const SDR: [u8; 6] = [1, 2, 6, 13, 14, 15];
    if !SDR.contains(&transfer) || matches!(primaries, 1 | 2) {
        return None;
    }
    // Unspecified transfer with wide primaries: sRGB's curve, as browsers assume.
    let transfer = if transfer == 2 { 13 } else { transfer };
    let cicp = CicpProfile {
        color_primaries: CicpColorPrimaries::try_from(primaries).ok()?,
        transfer_characteristics: TransferCharacteristics::try_from(transfer).ok()?,
        matrix_coefficients: MatrixCoefficients::Bt709, // RGB samples: unused
        full_range: true,
    };
    ColorProfile::new_from_cicp(cicp).encode().ok()
}

/// CMYK8 to RGB8. `inverted` is the Adobe convention (Photoshop writes 255 = no ink), which
/// every CMYK JPEG with an Adobe marker uses; without a CMYK profile the naive conversion is
/// what browsers and Pillow do.
pub fn cmyk_to_rgb(cmyk: &[u8], inverted: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(cmyk.len() / 4 * 3);
    for p in cmyk.chunks_exact(4) {
        let (c, m, y, k) = if inverted {
            (p[0], p[1], p[2], p[3])
        } else {
            (255 - p[0], 255 - p[1], 255 - p[2], 255 - p[3])
        };
        // Stored values are "255 - ink"; R = (1 - C)(1 - K).
        let k = u32::from(k);
        for v in [c, m, y] {
            out.push(((u32::from(v) * k + 127) / 255) as u8);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmyk_conversion_handles_both_conventions() {
        // Plain CMYK: full cyan, no black → (0, 255, 255).
        assert_eq!(cmyk_to_rgb(&[255, 0, 0, 0], false), vec![0, 255, 255]);
        // Adobe inverted: the same ink is stored as 255 - ink.
        assert_eq!(cmyk_to_rgb(&[0, 255, 255, 255], true), vec![0, 255, 255]);
        // Full black.
        assert_eq!(cmyk_to_rgb(&[0, 0, 0, 255], false), vec![0, 0, 0]);
    }

    #[test]
    fn srgb_profiles_are_left_alone_and_wide_gamut_ones_convert() {
        let srgb = ColorProfile::new_srgb().encode().unwrap();
        let mut px = vec![200, 30, 30];
        to_srgb(&mut px, 3, &srgb);
        assert_eq!(px, vec![200, 30, 30]);
        let p3 = ColorProfile::new_display_p3().encode().unwrap();
        let mut px = vec![200, 30, 30, 128];
        to_srgb(&mut px, 4, &p3);
        // P3 red is more saturated than sRGB red: red goes up (or clips), alpha stays.
        assert!(px[0] > 200 && px[3] == 128, "{px:?}");
    }

    #[test]
    fn cicp_gives_a_profile_only_for_wide_gamut_sdr() {
        assert_eq!(cicp_profile(1, 13), None); // sRGB
        assert_eq!(cicp_profile(2, 2), None); // unspecified: taken as sRGB
        assert_eq!(cicp_profile(9, 16), None); // BT.2020 PQ: HDR, left alone
        let p3 = cicp_profile(12, 13).expect("Display P3");
        let mut px = vec![200, 30, 30];
        to_srgb(&mut px, 3, &p3);
        assert!(px[0] > 200, "{px:?}");
    }
}
