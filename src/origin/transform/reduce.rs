//! Downsizing that reproduces libvips 8.18's `vips_resize` (as `vips_thumbnail` calls it) for
//! 8-bit images: the same samples, not just a similar Lanczos3.
//!
//! Why: our WebP output must match libvips' (SSIM >= 0.99) and libwebp is already identical on
//! both sides, so the pixels fed to it must be identical too; one-off rounding differences are
//! amplified by lossy WebP's block decisions.
//!
//! What libvips does, per axis, vertical first (`vips_reducev`, then `vips_reduceh` on its
//! 8-bit result), each with `gap = 2`:
//! - `out = round(len / shrink)`, `extra = out * shrink - len`;
//! - an integer box pre-shrink `k = floor(len / out / 2)` when `k > 1` (`vips_shrinkv/h` with
//!   `ceil`: the last partial box repeats the edge sample; 8-bit average done as
//!   `((sum + k/2) * (2^32 / (256 k))) >> 24` in wrapping u32, as its Highway code does), after
//!   which `shrink /= k`, `extra /= k`;
//! - a Lanczos3 mask of `n = 2 * rint(3 * shrink) + 1` taps, tabulated at 65 sub-pixel phases
//!   `x = t / 64` with `c_i = L3((i - (n/2 - 1) - x) / shrink)`, normalised to sum 1, and
//!   truncated to i16 in units of 1/4096;
//! - output `y` reads rows from `(int) Y - (n - 1) / 2`, with phase `t = ((int)(Y * 128) & 127
//!   + 1) >> 1`, where `Y` starts at `0.5 * shrink - 0.5 - ((1 + extra) / 2 - 1)` and steps by
//!   `shrink` (accumulated, in f64); samples past the edges repeat the edge;
//! - `(2048 + sum c_i p_i) >> 12`, clamped to 0..=255.
//!
//! Checked against libvips 8.18 (pyvips-binary) on whole images: bit-identical, see the tests
//! and `tests/data/make_reduce_refs.py`. A crop with integer bounds behaves as libvips on the
//! cropped image; a fractional crop uses the same centre convention, offset by the crop origin.

use crate::error::{Error, Result};

/// Sub-pixel phases of the mask table: `VIPS_TRANSFORM_SHIFT` is 6.
const PHASE_SHIFT: u32 = 6;
const PHASES: usize = 1 << PHASE_SHIFT;
/// Fixed-point precision of the coefficients: `VIPS_INTERPOLATE_SHIFT` is 12.
const COEF_SHIFT: u32 = 12;
const COEF_ONE: f64 = (1 << COEF_SHIFT) as f64;
const ROUND: i32 = 1 << (COEF_SHIFT - 1);
/// libvips' `gap` for `vips_resize`: leave at least a x2 reduce after the box pre-shrink.
const GAP: f64 = 2.0;
/// Lanczos lobes.
const LOBES: f64 = 3.0;

/// Resample the `crop` region `(left, top, width, height)` of `src` (`width` x `height`,
/// `channels` interleaved 8-bit samples, rows packed) to `out_w` x `out_h`, downsizing only
/// (`out_w <= crop width`, `out_h <= crop height`).
pub fn reduce(
    src: &[u8],
    width: u32,
    height: u32,
    channels: usize,
    crop: (f64, f64, f64, f64),
    out_w: u32,
    out_h: u32,
) -> Result<Vec<u8>> {
    if !(1..=4).contains(&channels) {
        return Err(bad("channels must be 1 to 4"));
    }
    let (w, h) = (width as usize, height as usize);
    let stride = w
        .checked_mul(channels)
        .ok_or_else(|| bad("size overflow"))?;
    if w == 0 || h == 0 || stride.checked_mul(h) != Some(src.len()) {
        return Err(bad("buffer does not match its size"));
    }
    let (left, top, cw, ch) = crop;
    // libvips' thumbnail uses one factor for both axes; using the same value (not merely
    // an equal ratio) is what makes the masks identical.
    let (sh, sv) = shrinks(cw, ch, out_w, out_h);
    let ax = Axis::plan(w, left, cw, out_w as usize, sh)?;
    let ay = Axis::plan(h, top, ch, out_h as usize, sv)?;
    let win_w = ax.hi - ax.lo;
    let row_len = win_w * channels;

    // Vertical first, on the columns the horizontal pass will read, as libvips does; its
    // 8-bit result is what the horizontal pass reads.
    let col0 = ax.lo * channels;
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let Scratch {
            boxed,
            mid,
            line,
            acc,
            sum16,
        } = &mut *scratch;
        stage(
            &ay,
            row_len,
            |r| {
                let at = (ay.lo + r) * stride + col0;
                src.get(at..at + row_len).unwrap_or(&[])
            },
            boxed,
            acc,
            sum16,
            mid,
        );

        let hcoef = HCoef::new(&ax, channels);
        let out_row = ax.out * channels;
        let mut out = vec![0u8; ay.out * out_row];
        // Rows are read in place; the last 16-byte load may run past a row (its coefficients
        // are 0), so the buffers end with 32 spare bytes.
        if ax.k > 1 {
            let boxed_len = ax.len_after_box * channels;
            size_scratch(line, boxed_len + 32);
            for (src_row, dst) in mid.chunks_exact(row_len).zip(out.chunks_exact_mut(out_row)) {
                box_row(src_row, channels, ax.k, line);
                horizontal(&hcoef, channels, line, dst);
            }
        } else {
            let rows = mid.len();
            mid.resize(rows + 32, 0);
            for (y, dst) in out.chunks_exact_mut(out_row).enumerate() {
                horizontal(&hcoef, channels, mid.get(y * row_len..).unwrap_or(&[]), dst);
            }
        }
        Ok(out)
    })
}

/// Buffers reused between images on the same (pool) thread.
#[derive(Default)]
struct Scratch {
    boxed: Vec<u8>,
    mid: Vec<u8>,
    line: Vec<u8>,
    acc: Vec<i32>,
    /// Box sums while they fit 16 bits (`k` <= 257).
    sum16: Vec<u16>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Sizes a reused scratch buffer to `len` without clearing what an earlier image left in it:
/// zeroing it cost ~2 % of a resize from kept pixels. Every pass writes all `len` values before
/// anything reads them (`acc` is reset per row); only the padding the SIMD loads may run into
/// can be stale, and it is read with zero coefficients.
fn size_scratch<T: Copy + Default>(v: &mut Vec<T>, len: usize) {
    if v.len() >= len {
        v.truncate(len);
    } else {
        v.resize(len, T::default());
    }
}

/// One axis over rows of `row_len` samples (`rows(r)`, `r` relative to the window): the box
/// pre-shrink if any, then the Lanczos pass, into `out` (`axis.out` rows).
fn stage<'a>(
    axis: &Axis,
    row_len: usize,
    rows: impl Fn(usize) -> &'a [u8],
    boxed: &mut Vec<u8>,
    acc: &mut Vec<i32>,
    sum16: &mut Vec<u16>,
    out: &mut Vec<u8>,
) {
    size_scratch(out, axis.out * row_len);
    size_scratch(acc, row_len);
    if axis.k > 1 {
        box_rows(axis, row_len, rows, boxed, acc, sum16);
        let boxed = &boxed[..];
        taps_pass(
            axis,
            row_len,
            |r| boxed.get(r * row_len..(r + 1) * row_len).unwrap_or(&[]),
            acc,
            out,
        );
    } else {
        taps_pass(axis, row_len, rows, acc, out);
    }
}

fn bad(what: &str) -> Error {
    Error::Internal(format!("reduce: {what}"))
}

/// The per-axis shrink factors, as `vips_thumbnail` → `vips_resize` → `vips_reduce[hv]` see
/// them: `1 / (1 / shrink)` (the scale is passed as its inverse and inverted back).
fn shrinks(cw: f64, ch: f64, out_w: u32, out_h: u32) -> (f64, f64) {
    let trip = |s: f64| 1.0 / (1.0 / s);
    let sh = trip(cw / f64::from(out_w));
    let sv = trip(ch / f64::from(out_h));
    let fits =
        |s: f64| round_uint(cw / s) == out_w as usize && round_uint(ch / s) == out_h as usize;
    // Which axis set the size is not known here: try the width's factor first (width-only
    // requests are the common case, and what libvips' thumbnail does for them).
    if fits(sh) {
        (sh, sh)
    } else if fits(sv) {
        (sv, sv)
    } else {
        (sh, sv)
    }
}

/// `VIPS_ROUND_UINT`: `(int) (x + 0.5)`.
fn round_uint(x: f64) -> usize {
    (x + 0.5) as usize
}

/// One axis: the source window it reads, the box pre-shrink, and per output sample the first
/// source (after the box) sample and `taps` coefficients.
struct Axis {
    /// Source window `[lo, hi)` (the crop, widened to whole samples).
    lo: usize,
    hi: usize,
    /// Box pre-shrink factor (1: none).
    k: usize,
    /// Samples after the box pre-shrink.
    len_after_box: usize,
    out: usize,
    taps: usize,
    /// Per output sample: the first input sample (window-relative, after the box).
    start: Vec<usize>,
    /// Per output sample: `taps` coefficients in 1/4096.
    coef: Vec<i32>,
}

impl Axis {
    fn plan(full: usize, origin: f64, len: f64, out: usize, shrink: f64) -> Result<Axis> {
        let end = origin + len;
        if !(origin >= 0.0 && len > 0.0 && end <= full as f64 + 1e-6 && shrink.is_finite()) {
            return Err(bad("crop outside the image"));
        }
        if out == 0 || out as f64 > len + 1e-6 {
            return Err(bad("only downsizing"));
        }
        let lo = (origin.floor() as usize).min(full - 1);
        let hi = (end.ceil() as usize).clamp(lo + 1, full);
        let win = hi - lo;
        let frac = origin - lo as f64;

        // vips_resize: never less than one pixel.
        let mut shrink = 1.0 / (1.0 / shrink).max(1.0 / len);
        let mut extra = out as f64 * shrink - len;
        let mut frac = frac;
        let mut k = ((len / out as f64 / GAP).floor() as usize).max(1);
        let mut n_in = win;
        if k > 1 {
            let boxed = win.div_ceil(k);
            let s = shrink / k as f64;
            // After the box, libvips returns the boxed image as is when nothing is left to
            // reduce; if that is not our size, do without the box.
            if s == 1.0 && boxed != out {
                k = 1;
            } else {
                shrink = s;
                extra /= k as f64;
                frac /= k as f64;
                n_in = boxed;
            }
        }

        let mut axis = Axis {
            lo,
            hi,
            k,
            len_after_box: n_in,
            out,
            taps: 1,
            start: Vec::with_capacity(out),
            coef: Vec::new(),
        };
        if shrink == 1.0 && frac == 0.0 && n_in == out {
            // Identity on this axis.
            axis.start.extend(0..out);
            axis.coef = vec![1 << COEF_SHIFT; out];
            return Ok(axis);
        }

        let n = 2 * (LOBES * shrink).round_ties_even() as usize + 1;
        let table = masks(n, shrink);
        let half = (n - 1) / 2;
        let taps = n.min(n_in);
        axis.taps = taps;
        axis.coef = vec![0; out * taps];
        let off = (1.0 + extra) / 2.0 - 1.0;
        let mut y = frac + 0.5 * shrink - 0.5 - off;
        for o in 0..out {
            let py = y as i64;
            let sy = (y * (PHASES * 2) as f64) as i64;
            let phase = (((sy & (PHASES as i64 * 2 - 1)) + 1) >> 1) as usize;
            let first = py - half as i64;
            // Taps past an edge repeat the edge sample: fold their weight into a window of
            // `taps` samples inside the axis, so the passes never clamp.
            let start = first.clamp(0, (n_in - taps) as i64) as usize;
            axis.start.push(start);
            let row = table.get(phase * n..(phase + 1) * n).unwrap_or(&[]);
            let dst = &mut axis.coef[o * taps..(o + 1) * taps];
            for (i, &c) in row.iter().enumerate() {
                let at = (first + i as i64).clamp(0, n_in as i64 - 1) as usize - start;
                if let Some(d) = dst.get_mut(at) {
                    *d += c;
                }
            }
            y += shrink;
        }
        Ok(axis)
    }
}

thread_local! {
    /// The last few mask tables made on this thread, by `(n, shrink bits)`: both axes of an
    /// image, and the sizes a site asks for, mostly share a shrink, and a table costs 65 x `n`
    /// x 2 sines (`n` up to 25: the box pre-shrink leaves a shrink under 4), ~1 % of a resize
    /// from kept pixels.
    static MASKS: std::cell::RefCell<Vec<KeptMask>> = const { std::cell::RefCell::new(Vec::new()) };
}
/// A kept mask table: its tap count, the bits of its shrink, the table.
type KeptMask = (usize, u64, std::rc::Rc<[i32]>);
/// Tables [`MASKS`] keeps per thread (each at most 65 x 25 x 4 bytes).
const MASKS_KEPT: usize = 8;

/// [`mask_table`], from this thread's recent tables when it has this one.
fn masks(n: usize, shrink: f64) -> std::rc::Rc<[i32]> {
    MASKS.with(|m| {
        let mut m = m.borrow_mut();
        let key = (n, shrink.to_bits());
        if let Some(at) = m.iter().position(|(kn, ks, _)| (*kn, *ks) == key) {
            // Most recent first.
            let hit = m.remove(at);
            let table = hit.2.clone();
            m.insert(0, hit);
            return table;
        }
        let table: std::rc::Rc<[i32]> = mask_table(n, shrink).into();
        m.insert(0, (n, key.1, table.clone()));
        m.truncate(MASKS_KEPT);
        table
    })
}

/// The 65 masks (phases 0..=64, `n` taps each) as libvips' `vips_reduce_make_mask` + int cast.
fn mask_table(n: usize, shrink: f64) -> Vec<i32> {
    let mut table = Vec::with_capacity((PHASES + 1) * n);
    let mut c = vec![0f64; n];
    let centre = n as f64 / 2.0 - 1.0;
    for t in 0..=PHASES {
        let x = f64::from(t as f32 / PHASES as f32);
        let mut sum = 0.0;
        for (i, ci) in c.iter_mut().enumerate() {
            *ci = lanczos3((i as f64 - centre - x) / shrink);
            sum += *ci;
        }
        // Truncation toward zero, as C's int conversion.
        table.extend(
            c.iter()
                .map(|ci| ((ci / sum) * COEF_ONE) as i32 as i16 as i32),
        );
    }
    table
}

fn lanczos3(x: f64) -> f64 {
    use std::f64::consts::PI;
    if x == 0.0 {
        1.0
    } else if !(-LOBES..=LOBES).contains(&x) {
        0.0
    } else {
        LOBES * (PI * x).sin() * (PI * x / LOBES).sin() / (PI * PI * x * x)
    }
}

/// libvips' 8-bit box average (`vips_shrinkv/h` Highway path): exact for k = 2, an
/// approximation by a 32-bit reciprocal otherwise, reproduced as is.
#[inline(always)]
fn box_avg(sum: u32, k: usize) -> u8 {
    let mult = ((1u64 << 32) / (256 * k as u64)) as u32;
    (sum.wrapping_add(k as u32 / 2).wrapping_mul(mult) >> 24).min(255) as u8
}

/// Vertical box pre-shrink of the window's rows (`ceil`: the last box repeats the last row).
fn box_rows<'a>(
    ay: &Axis,
    row_len: usize,
    rows: impl Fn(usize) -> &'a [u8],
    out: &mut Vec<u8>,
    sum: &mut [i32],
    sum16: &mut Vec<u16>,
) {
    let win = ay.hi - ay.lo;
    let k = ay.k;
    size_scratch(out, ay.len_after_box * row_len);
    // k sums of 255 fit 16 bits up to k = 257: half the accumulator traffic of i32, twice the
    // samples per instruction.
    let narrow = k <= 257;
    if narrow {
        size_scratch(sum16, row_len);
    }
    for (j, dst) in out.chunks_exact_mut(row_len).enumerate() {
        let row = |t: usize| rows((j * k + t).min(win - 1));
        if k == 2 {
            // For k = 2 the reciprocal is exact: the rounded mean.
            average2(dst, row(0), row(1));
        } else if narrow {
            sum16.iter_mut().for_each(|s| *s = 0);
            for t in 0..k {
                add_row16(sum16, row(t));
            }
            box_finish16(sum16, k, dst);
        } else {
            sum.iter_mut().for_each(|s| *s = 0);
            for t in 0..k {
                add_row(sum, row(t));
            }
            for (d, &s) in dst.iter_mut().zip(sum.iter()) {
                *d = box_avg(s as u32, k);
            }
        }
    }
}

/// Horizontal box pre-shrink of one row into `dst` (`ceil`: the last box repeats the edge).
fn box_row(line: &[u8], channels: usize, k: usize, dst: &mut [u8]) {
    match channels {
        1 => box_row_n::<1>(line, k, dst),
        2 => box_row_n::<2>(line, k, dst),
        3 => box_row_n::<3>(line, k, dst),
        _ => box_row_n::<4>(line, k, dst),
    }
}

fn box_row_n<const C: usize>(line: &[u8], k: usize, dst: &mut [u8]) {
    let n = line.len() / C;
    let full = n / k;
    let mut px = dst.chunks_exact_mut(C);
    if k == 2 {
        // Exact reciprocal for k = 2: the rounded mean of each pixel pair.
        for (block, d) in line.chunks_exact(2 * C).zip(px.by_ref()) {
            for c in 0..C {
                d[c] = ((u16::from(block[c]) + u16::from(block[C + c]) + 1) >> 1) as u8;
            }
        }
    }
    for (block, d) in line
        .chunks_exact(k * C)
        .skip(if k == 2 { full } else { 0 })
        .zip(px.by_ref())
    {
        let mut sum = [0u32; C];
        for p in block.chunks_exact(C) {
            for c in 0..C {
                sum[c] += u32::from(p[c]);
            }
        }
        for c in 0..C {
            d[c] = box_avg(sum[c], k);
        }
    }
    if full * k < n {
        if let Some(d) = px.next() {
            for (c, dc) in d.iter_mut().enumerate() {
                let sum: u32 = (full * k..full * k + k)
                    .map(|x| u32::from(line.get(x.min(n - 1) * C + c).copied().unwrap_or(0)))
                    .sum();
                *dc = box_avg(sum, k);
            }
        }
    }
}

/// The Lanczos pass: each output row is a weighted sum of `taps` whole input rows.
fn taps_pass<'a>(
    ay: &Axis,
    row_len: usize,
    rows: impl Fn(usize) -> &'a [u8],
    acc: &mut [i32],
    out: &mut [u8],
) {
    #[cfg(target_arch = "x86_64")]
    let avx2 = std::arch::is_x86_feature_detected!("avx2");
    let mut taps: Vec<&[u8]> = Vec::with_capacity(ay.taps);
    #[cfg(target_arch = "x86_64")]
    let mut pairs: Vec<(&[u8], &[u8], i32)> = Vec::with_capacity(ay.taps.div_ceil(2));
    for (o, dst) in out.chunks_exact_mut(row_len).enumerate() {
        let start = ay.start.get(o).copied().unwrap_or(0);
        let coef = ay.coef.get(o * ay.taps..(o + 1) * ay.taps).unwrap_or(&[]);
        taps.clear();
        taps.extend((start..start + coef.len()).map(&rows));
        #[cfg(target_arch = "x86_64")]
        if avx2 && taps.iter().all(|r| r.len() >= row_len) {
            // Rows and packed coefficients by pairs, once per output row rather than per 32
            // samples; an odd last tap is paired with itself at a zero coefficient.
            pairs.clear();
            pairs.extend(taps.chunks(2).zip(coef.chunks(2)).map(|(r, k)| {
                let b = r.get(1).copied().unwrap_or(r[0]);
                (r[0], b, pack_pair(k[0], k.get(1).copied().unwrap_or(0)))
            }));
            // SAFETY: AVX2 is present, checked above; every row holds `dst.len()` samples.
            unsafe { vertical_avx2(&pairs, dst) };
            continue;
        }
        acc.iter_mut().for_each(|a| *a = ROUND);
        let mut pairs = taps.chunks_exact(2).zip(coef.chunks_exact(2));
        // Two rows per sweep halves the accumulator traffic.
        for (r, k) in pairs.by_ref() {
            accumulate2(acc, r[0], k[0], r[1], k[1]);
        }
        if let (Some(&r), Some(&k)) = (taps.get(coef.len() & !1), coef.get(coef.len() & !1)) {
            accumulate1(acc, r, k);
        }
        finish(acc, dst);
    }
}

/// Two i16 coefficients in the layout `pmaddwd` pairs them with (low: first row or pixel).
fn pack_pair(a: i32, b: i32) -> i32 {
    ((u32::from(b as i16 as u16) << 16) | u32::from(a as i16 as u16)) as i32
}

/// libvips' vertical kernel (reducev_hwy): 32 samples at a time, two rows interleaved into
/// i16 pairs and `pmaddwd`-ed with two coefficients, the sums kept in registers over all the
/// taps. `pairs`: both rows of each tap pair and their packed coefficients ([`pack_pair`]).
/// Integer sums, so the same result as the portable path. Every row must hold at least
/// `dst.len()` samples.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn vertical_avx2(pairs: &[(&[u8], &[u8], i32)], dst: &mut [u8]) {
    use std::arch::x86_64::*;
    let n = dst.len();
    let zero = _mm256_setzero_si256();
    let round = _mm256_set1_epi32(ROUND);
    let mut x = 0;
    while x + 32 <= n {
        let (mut s0, mut s1, mut s2, mut s3) = (round, round, round, round);
        for &(ra, rb, k) in pairs {
            // SAFETY: x + 32 <= n <= both rows' length.
            let a = _mm256_loadu_si256(ra.as_ptr().add(x) as *const __m256i);
            let b = _mm256_loadu_si256(rb.as_ptr().add(x) as *const __m256i);
            let k = _mm256_set1_epi32(k);
            let lo = _mm256_unpacklo_epi8(a, b);
            let hi = _mm256_unpackhi_epi8(a, b);
            s0 = _mm256_add_epi32(s0, _mm256_madd_epi16(_mm256_unpacklo_epi8(lo, zero), k));
            s1 = _mm256_add_epi32(s1, _mm256_madd_epi16(_mm256_unpackhi_epi8(lo, zero), k));
            s2 = _mm256_add_epi32(s2, _mm256_madd_epi16(_mm256_unpacklo_epi8(hi, zero), k));
            s3 = _mm256_add_epi32(s3, _mm256_madd_epi16(_mm256_unpackhi_epi8(hi, zero), k));
        }
        // The in-lane unpacks above and the in-lane packs here cancel out: samples come back
        // in memory order.
        let p01 = _mm256_packs_epi32(
            _mm256_srai_epi32(s0, COEF_SHIFT as i32),
            _mm256_srai_epi32(s1, COEF_SHIFT as i32),
        );
        let p23 = _mm256_packs_epi32(
            _mm256_srai_epi32(s2, COEF_SHIFT as i32),
            _mm256_srai_epi32(s3, COEF_SHIFT as i32),
        );
        // SAFETY: x + 32 <= dst.len().
        _mm256_storeu_si256(
            dst.as_mut_ptr().add(x) as *mut __m256i,
            _mm256_packus_epi16(p01, p23),
        );
        x += 32;
    }
    for (j, d) in dst.iter_mut().enumerate().skip(x) {
        let sum = pairs.iter().fold(ROUND, |s, &(ra, rb, k)| {
            let (ka, kb) = (i32::from(k as i16), i32::from((k >> 16) as i16));
            let (a, b) = (ra.get(j).copied(), rb.get(j).copied());
            s + ka * i32::from(a.unwrap_or(0)) + kb * i32::from(b.unwrap_or(0))
        });
        *d = (sum >> COEF_SHIFT).clamp(0, 255) as u8;
    }
}

macro_rules! multiversion {
    ($(fn $name:ident($($arg:ident: $ty:ty),*) $body:block)*) => {$(
        fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn generic($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2")]
            fn avx2($($arg: $ty),*) {
                generic($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2, checked just above.
                return unsafe { avx2($($arg),*) };
            }
            generic($($arg),*)
        }
    )*};
}

multiversion! {
    fn accumulate2(acc: &mut [i32], a: &[u8], ka: i32, b: &[u8], kb: i32) {
        for ((s, &p), &q) in acc.iter_mut().zip(a).zip(b) {
            *s += ka * i32::from(p) + kb * i32::from(q);
        }
    }
    fn accumulate1(acc: &mut [i32], a: &[u8], ka: i32) {
        for (s, &p) in acc.iter_mut().zip(a) {
            *s += ka * i32::from(p);
        }
    }
    fn add_row(acc: &mut [i32], a: &[u8]) {
        // Wrapping, as libvips' u32 box sums (over 8 million rows of 255 only).
        for (s, &p) in acc.iter_mut().zip(a) {
            *s = s.wrapping_add(i32::from(p));
        }
    }
    fn add_row16(acc: &mut [u16], a: &[u8]) {
        for (s, &p) in acc.iter_mut().zip(a) {
            *s += u16::from(p);
        }
    }
    fn box_finish16(acc: &[u16], k: usize, dst: &mut [u8]) {
        for (d, &s) in dst.iter_mut().zip(acc) {
            *d = box_avg(u32::from(s), k);
        }
    }
    fn average2(dst: &mut [u8], a: &[u8], b: &[u8]) {
        for ((d, &p), &q) in dst.iter_mut().zip(a).zip(b) {
            *d = ((u16::from(p) + u16::from(q) + 1) >> 1) as u8;
        }
    }
    fn finish(acc: &[i32], dst: &mut [u8]) {
        for (d, &s) in dst.iter_mut().zip(acc) {
            *d = (s >> COEF_SHIFT).clamp(0, 255) as u8;
        }
    }
}

/// Horizontal coefficients, tap count rounded up to even, as i16 pairs packed in an i32 (the
/// operand layout of `pmaddwd`).
struct HCoef {
    start: Vec<usize>,
    pairs: usize,
    packed: Vec<i32>,
    /// For the AVX2 kernel, per output pixel pair and tap pair: both pixels' packed pairs
    /// broadcast into one 256-bit operand (low lane: the first pixel), tap pairs padded with
    /// zeros to an even count. Loading these beats building them from scalars in the loop
    /// (two broadcasts and a blend per operand); built once per resize, not per row.
    lanes: Vec<[i32; 8]>,
    /// For the one-channel AVX2 kernel, per output pixel pair and group of 8 taps: both
    /// pixels' coefficients as i16 (first 8: the first pixel), taps padded with zeros to a
    /// multiple of 8. Built only for one-channel images, as `lanes` only for 3 and 4.
    singles: Vec<[i16; 16]>,
    /// The same coefficients, unpacked, for the portable path.
    coef: Vec<i32>,
    taps: usize,
}

impl HCoef {
    fn new(ax: &Axis, channels: usize) -> HCoef {
        let pairs = ax.taps.div_ceil(2);
        let mut packed = Vec::with_capacity(ax.out * pairs);
        for c in ax.coef.chunks_exact(ax.taps) {
            for p in c.chunks(2) {
                packed.push(pack_pair(p[0], p.get(1).copied().unwrap_or(0)));
            }
        }
        let even = pairs.div_ceil(2) * 2;
        let wide = channels >= 3;
        let mut lanes = Vec::with_capacity(if wide { ax.out / 2 * even } else { 0 });
        for two in packed
            .chunks_exact(2 * pairs)
            .take(if wide { usize::MAX } else { 0 })
        {
            let (a, b) = two.split_at(pairs);
            for p in 0..even {
                let (ka, kb) = (
                    a.get(p).copied().unwrap_or(0),
                    b.get(p).copied().unwrap_or(0),
                );
                lanes.push([ka, ka, ka, ka, kb, kb, kb, kb]);
            }
        }
        let groups = ax.taps.div_ceil(8);
        let mut singles = Vec::with_capacity(if channels == 1 {
            ax.out / 2 * groups
        } else {
            0
        });
        for two in
            ax.coef
                .chunks_exact(2 * ax.taps)
                .take(if channels == 1 { usize::MAX } else { 0 })
        {
            let (a, b) = two.split_at(ax.taps);
            for g in 0..groups {
                let mut l = [0i16; 16];
                for i in 0..8 {
                    l[i] = a.get(8 * g + i).map_or(0, |&c| c as i16);
                    l[8 + i] = b.get(8 * g + i).map_or(0, |&c| c as i16);
                }
                singles.push(l);
            }
        }
        HCoef {
            start: ax.start.clone(),
            pairs,
            packed,
            lanes,
            singles,
            coef: ax.coef.clone(),
            taps: ax.taps,
        }
    }
}

/// Horizontal pass over one row (`line`: the window, padded by 16 bytes).
fn horizontal(h: &HCoef, channels: usize, line: &[u8], dst: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if channels == 1 && std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present, checked here.
        unsafe { horizontal1_avx2(h, line, dst) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if (channels == 3 || channels == 4) && std::arch::is_x86_feature_detected!("ssse3") {
        // SAFETY: SSSE3 (and AVX2 where used) is present, checked here.
        unsafe {
            match (channels, std::arch::is_x86_feature_detected!("avx2")) {
                (3, true) => horizontal_avx2::<3>(h, line, dst),
                (_, true) => horizontal_avx2::<4>(h, line, dst),
                (3, false) => horizontal_ssse3::<3>(&h.start, &h.packed, h.pairs, line, dst),
                _ => horizontal_ssse3::<4>(&h.start, &h.packed, h.pairs, line, dst),
            }
        };
        return;
    }
    match channels {
        1 => horizontal_n::<1>(h, line, dst),
        2 => horizontal_n::<2>(h, line, dst),
        3 => horizontal_n::<3>(h, line, dst),
        _ => horizontal_n::<4>(h, line, dst),
    }
}

fn horizontal_n<const C: usize>(h: &HCoef, line: &[u8], dst: &mut [u8]) {
    for ((px, &start), coef) in dst
        .chunks_exact_mut(C)
        .zip(&h.start)
        .zip(h.coef.chunks_exact(h.taps))
    {
        let src = line.get(start * C..(start + h.taps) * C).unwrap_or(&[]);
        let mut acc = [ROUND; C];
        for (p, &k) in src.chunks_exact(C).zip(coef) {
            for c in 0..C {
                acc[c] += k * i32::from(p[c]);
            }
        }
        for c in 0..C {
            px[c] = (acc[c] >> COEF_SHIFT).clamp(0, 255) as u8;
        }
    }
}

/// The two `pshufb` masks that spread a tap pair's pixels (`C` = 3 or 4 bytes each) into
/// `c0 c1` i16 pairs for `pmaddwd`: `lo` for the first pair of a 16-byte load, `hi` for the
/// second.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse2")]
#[inline]
fn pair_shuffles<const C: usize>() -> (std::arch::x86_64::__m128i, std::arch::x86_64::__m128i) {
    use std::arch::x86_64::_mm_setr_epi8;
    if C == 3 {
        (
            _mm_setr_epi8(0, -1, 3, -1, 1, -1, 4, -1, 2, -1, 5, -1, -1, -1, -1, -1),
            _mm_setr_epi8(6, -1, 9, -1, 7, -1, 10, -1, 8, -1, 11, -1, -1, -1, -1, -1),
        )
    } else {
        (
            _mm_setr_epi8(0, -1, 4, -1, 1, -1, 5, -1, 2, -1, 6, -1, 3, -1, 7, -1),
            _mm_setr_epi8(8, -1, 12, -1, 9, -1, 13, -1, 10, -1, 14, -1, 11, -1, 15, -1),
        )
    }
}

/// libvips' own scheme (reduceh_hwy): per output pixel and tap pair, the pixels are shuffled
/// into `r0 r1 g0 g1 b0 b1 (a0 a1)` as i16 and `pmaddwd`-ed with the two coefficients; four
/// taps per 16-byte load. Integer sums: the result is the portable path's, bit for bit.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "ssse3")]
unsafe fn horizontal_ssse3<const C: usize>(
    starts: &[usize],
    packed: &[i32],
    pairs: usize,
    line: &[u8],
    dst: &mut [u8],
) {
    use std::arch::x86_64::*;
    let (lo, hi) = pair_shuffles::<C>();
    let round = _mm_set1_epi32(ROUND);
    let step = 2 * C;
    for ((px, &start), coef) in dst
        .chunks_exact_mut(C)
        .zip(starts)
        .zip(packed.chunks_exact(pairs))
    {
        // The window: every 16-byte load below stays inside it.
        let from = start * C;
        let Some(win) = line.get(from..from + pairs * step + 16) else {
            continue;
        };
        let p = win.as_ptr();
        let mut sum = round;
        let mut quads = coef.chunks_exact(2);
        let mut at = 0;
        for k in quads.by_ref() {
            // SAFETY: at + 16 <= pairs * step + 16 <= win.len().
            let bytes = _mm_loadu_si128(p.add(at) as *const __m128i);
            sum = _mm_add_epi32(
                sum,
                _mm_madd_epi16(_mm_shuffle_epi8(bytes, lo), _mm_set1_epi32(k[0])),
            );
            sum = _mm_add_epi32(
                sum,
                _mm_madd_epi16(_mm_shuffle_epi8(bytes, hi), _mm_set1_epi32(k[1])),
            );
            at += 2 * step;
        }
        if let Some(&k) = quads.remainder().first() {
            // SAFETY: as above.
            let bytes = _mm_loadl_epi64(p.add(at) as *const __m128i);
            sum = _mm_add_epi32(
                sum,
                _mm_madd_epi16(_mm_shuffle_epi8(bytes, lo), _mm_set1_epi32(k)),
            );
        }
        let v = _mm_srai_epi32(sum, COEF_SHIFT as i32);
        let v = _mm_packus_epi16(_mm_packs_epi32(v, v), v);
        let b = (_mm_cvtsi128_si32(v) as u32).to_le_bytes();
        px.copy_from_slice(&b[..C]);
    }
}

/// [`horizontal_ssse3`] two output pixels at a time, one per 128-bit lane, with the
/// coefficient operands precomputed ([`HCoef::lanes`]) and two accumulators, so the loop is
/// one load, two shuffles and two `pmaddwd` per four taps. Integer sums: bit for bit the same.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn horizontal_avx2<const C: usize>(h: &HCoef, line: &[u8], dst: &mut [u8]) {
    use std::arch::x86_64::*;
    let (lo, hi) = pair_shuffles::<C>();
    let (lo, hi) = (_mm256_set_m128i(lo, lo), _mm256_set_m128i(hi, hi));
    let round = _mm256_set1_epi32(ROUND);
    let zero = _mm256_setzero_si256();
    let step = 2 * C;
    let even = h.pairs.div_ceil(2) * 2;
    let span = even * step;
    let mut out = dst.chunks_exact_mut(2 * C);
    let mut starts = h.start.chunks_exact(2);
    for ((px, s), lanes) in out
        .by_ref()
        .zip(starts.by_ref())
        .zip(h.lanes.chunks_exact(even))
    {
        // Both windows: every 16-byte load below stays inside them.
        let (Some(wa), Some(wb)) = (
            line.get(s[0] * C..s[0] * C + span + 16),
            line.get(s[1] * C..s[1] * C + span + 16),
        ) else {
            continue;
        };
        let (mut s0, mut s1) = (round, zero);
        let mut at = 0;
        for k in lanes.chunks_exact(2) {
            // SAFETY: at + 16 <= span + 16 <= both windows' length; each `k` is 8 i32s.
            let bytes = _mm256_loadu2_m128i(
                wb.as_ptr().add(at) as *const __m128i,
                wa.as_ptr().add(at) as *const __m128i,
            );
            let k0 = _mm256_loadu_si256(k[0].as_ptr() as *const __m256i);
            let k1 = _mm256_loadu_si256(k[1].as_ptr() as *const __m256i);
            s0 = _mm256_add_epi32(s0, _mm256_madd_epi16(_mm256_shuffle_epi8(bytes, lo), k0));
            s1 = _mm256_add_epi32(s1, _mm256_madd_epi16(_mm256_shuffle_epi8(bytes, hi), k1));
            at += 2 * step;
        }
        let v = _mm256_srai_epi32(_mm256_add_epi32(s0, s1), COEF_SHIFT as i32);
        let v = _mm256_packus_epi16(_mm256_packs_epi32(v, v), v);
        let a = (_mm256_extract_epi32::<0>(v) as u32).to_le_bytes();
        let b = (_mm256_extract_epi32::<4>(v) as u32).to_le_bytes();
        px[..C].copy_from_slice(&a[..C]);
        px[C..].copy_from_slice(&b[..C]);
    }
    // An odd last pixel.
    let done = dst.len() / (2 * C) * 2;
    horizontal_ssse3::<C>(
        h.start.get(done..).unwrap_or(&[]),
        h.packed.get(done * h.pairs..).unwrap_or(&[]),
        h.pairs,
        line,
        dst.get_mut(done * C..).unwrap_or(&mut []),
    );
}

/// One channel (grey, or one plane of a planar image), two output pixels at a time, one per
/// 128-bit lane: 8 taps per step, zero-extended to i16 and `pmaddwd`-ed with [`HCoef::singles`],
/// the lane's four partial sums added at the end. Integer sums: bit for bit the portable path.
/// `line` must hold 8 bytes past the last tap of the last output pixel (the callers pad by 32).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn horizontal1_avx2(h: &HCoef, line: &[u8], dst: &mut [u8]) {
    use std::arch::x86_64::*;
    let groups = h.taps.div_ceil(8);
    let span = groups * 8;
    let round = _mm256_set1_epi32(ROUND);
    let last = dst.len().wrapping_sub(1);
    let mut out = dst.chunks_exact_mut(2);
    for ((px, s), k) in out
        .by_ref()
        .zip(h.start.chunks_exact(2))
        .zip(h.singles.chunks_exact(groups))
    {
        // Both windows: every 8-byte load below stays inside them.
        let (Some(wa), Some(wb)) = (line.get(s[0]..s[0] + span), line.get(s[1]..s[1] + span))
        else {
            continue;
        };
        let mut sum = _mm256_setzero_si256();
        for (g, k) in k.iter().enumerate() {
            // SAFETY: 8 * g + 8 <= span, the windows' length; each `k` is 16 i16s.
            let a = _mm_loadl_epi64(wa.as_ptr().add(8 * g) as *const __m128i);
            let b = _mm_loadl_epi64(wb.as_ptr().add(8 * g) as *const __m128i);
            let p = _mm256_cvtepu8_epi16(_mm_unpacklo_epi64(a, b));
            let k = _mm256_loadu_si256(k.as_ptr() as *const __m256i);
            sum = _mm256_add_epi32(sum, _mm256_madd_epi16(p, k));
        }
        // Each lane's four partial sums into its first element.
        let s1 = _mm256_hadd_epi32(sum, sum);
        let s2 = _mm256_hadd_epi32(s1, s1);
        let v = _mm256_srai_epi32(_mm256_add_epi32(s2, round), COEF_SHIFT as i32);
        px[0] = _mm256_extract_epi32::<0>(v).clamp(0, 255) as u8;
        px[1] = _mm256_extract_epi32::<4>(v).clamp(0, 255) as u8;
    }
    // An odd last pixel.
    if let ([d], Some(&start)) = (out.into_remainder(), h.start.get(last)) {
        let coef = h.coef.chunks_exact(h.taps).nth(last).unwrap_or(&[]);
        let src = line.get(start..start + h.taps).unwrap_or(&[]);
        let sum = src
            .iter()
            .zip(coef)
            .fold(ROUND, |s, (&p, &k)| s + k * i32::from(p));
        *d = (sum >> COEF_SHIFT).clamp(0, 255) as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::{
        box_avg, box_rows, horizontal, horizontal_n, mask_table, masks, reduce, taps_pass, Axis,
        HCoef, COEF_SHIFT, LOBES, MASKS, MASKS_KEPT, ROUND,
    };

    fn load(name: &str) -> (Vec<u8>, u32, u32, usize) {
        let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
        let img = image::load_from_memory(&std::fs::read(path).unwrap()).unwrap();
        let (w, h) = (img.width(), img.height());
        match img {
            image::DynamicImage::ImageLuma8(g) => (g.into_raw(), w, h, 1),
            other => (other.to_rgb8().into_raw(), w, h, 3),
        }
    }

    /// libvips 8.18's output for the same input and width (tests/data/make_reduce_refs.py):
    /// identical samples, through the plain reduce, the box pre-shrink, and tiny sizes.
    #[test]
    fn matches_libvips_sample_for_sample() {
        for (name, widths) in [
            ("reduce-rgb-120x75", &[71u32, 53, 30, 24, 13, 5, 1][..]),
            ("reduce-grey-37x23", &[30, 5][..]),
        ] {
            let (src, w, h, c) = load(&format!("{name}.png"));
            for &tw in widths {
                let (want, ow, oh, _) = load(&format!("{name}-to-{tw}.png"));
                let crop = (0.0, 0.0, f64::from(w), f64::from(h));
                let got = reduce(&src, w, h, c, crop, ow, oh).unwrap();
                let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
                assert_eq!(got.len(), want.len(), "{name} -> {tw}");
                assert_eq!(differ, 0, "{name} -> {ow}x{oh}: {differ} samples differ");
            }
        }
    }

    /// An integer crop is the cropped image, reduced.
    #[test]
    fn integer_crop_is_the_cropped_image() {
        let (src, w, _, _) = load("reduce-rgb-120x75.png");
        let (l, t, cw, ch) = (17usize, 9usize, 80usize, 50usize);
        let sub: Vec<u8> = (t..t + ch)
            .flat_map(|y| src[(y * w as usize + l) * 3..(y * w as usize + l + cw) * 3].to_vec())
            .collect();
        let crop = (l as f64, t as f64, cw as f64, ch as f64);
        let a = reduce(&src, w, 75, 3, crop, 33, 21).unwrap();
        let b = reduce(&sub, 80, 50, 3, (0.0, 0.0, 80.0, 50.0), 33, 21).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn bad_arguments_are_errors_not_panics() {
        let px = vec![0u8; 10 * 8 * 3];
        let whole = (0.0, 0.0, 10.0, 8.0);
        assert!(reduce(&px, 10, 8, 5, whole, 5, 4).is_err());
        assert!(reduce(&px, 10, 8, 0, whole, 5, 4).is_err());
        assert!(reduce(&px[1..], 10, 8, 3, whole, 5, 4).is_err());
        assert!(reduce(&px, 0, 8, 3, whole, 5, 4).is_err());
        assert!(reduce(&px, 10, 8, 3, whole, 11, 4).is_err());
        assert!(reduce(&px, 10, 8, 3, whole, 0, 4).is_err());
        assert!(reduce(&px, 10, 8, 3, (5.0, 0.0, 10.0, 8.0), 5, 4).is_err());
        assert!(reduce(&px, 10, 8, 3, (-1.0, 0.0, 10.0, 8.0), 5, 4).is_err());
        assert!(reduce(&px, 10, 8, 3, (0.0, 0.0, f64::NAN, 8.0), 5, 4).is_err());
        assert!(reduce(&px, u32::MAX, u32::MAX, 3, whole, 5, 4).is_err());
    }

    /// Every small size, channel count and fractional crop: the right length, no panic, and a
    /// flat image stays flat.
    #[test]
    fn small_sizes_and_fractional_crops() {
        for c in 1..=4usize {
            for w in 1..=9u32 {
                for h in 1..=7u32 {
                    let px = vec![77u8; w as usize * h as usize * c];
                    for ow in 1..=w {
                        for oh in 1..=h {
                            for crop in [
                                (0.0, 0.0, f64::from(w), f64::from(h)),
                                (0.25, 0.5, f64::from(w) - 0.25, f64::from(h) - 0.5),
                            ] {
                                if f64::from(ow) > crop.2 || f64::from(oh) > crop.3 {
                                    continue;
                                }
                                let out = reduce(&px, w, h, c, crop, ow, oh).unwrap();
                                assert_eq!(out.len(), (ow * oh) as usize * c);
                                assert!(out.iter().all(|&v| v == 77), "{w}x{h}x{c} -> {ow}x{oh}");
                            }
                        }
                    }
                }
            }
        }
    }

    /// Scratch buffers keep what earlier images left in them: a resize after larger and smaller
    /// ones on the same thread gives the bytes it gives on a fresh thread (nothing stale shows
    /// through), with and without the box pre-shrink, 3 and 4 channels.
    #[test]
    fn reused_scratch_changes_nothing() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let cases: Vec<(u32, u32, usize, u32, u32)> = vec![
            (1414, 1414, 3, 150, 150),
            (1000, 750, 3, 400, 300),
            (301, 203, 4, 97, 65),
            (1790, 1119, 3, 1024, 640),
            (640, 480, 3, 33, 25),
            (97, 61, 4, 96, 60),
        ];
        let images: Vec<Vec<u8>> = cases
            .iter()
            .map(|&(w, h, c, _, _)| {
                (0..w as usize * h as usize * c)
                    .map(|_| rng.gen())
                    .collect()
            })
            .collect();
        let run = |k: usize| {
            let (w, h, c, ow, oh) = cases[k];
            reduce(&images[k], w, h, c, (0.0, 0.0, w as f64, h as f64), ow, oh).unwrap()
        };
        let fresh: Vec<Vec<u8>> = (0..cases.len())
            .map(|k| std::thread::scope(|s| s.spawn(|| run(k)).join().unwrap()))
            .collect();
        for k in (0..cases.len()).chain((0..cases.len()).rev()) {
            assert!(run(k) == fresh[k], "case {k} after the others");
        }
    }

    #[test]
    fn kept_mask_tables_are_the_ones_asked_for() {
        // More shrinks than are kept, asked for in an order that both hits and evicts; pairs
        // of them share a tap count, so a table is told by its shrink, not only by its size.
        let shrinks: Vec<f64> = (0..MASKS_KEPT + 3)
            .map(|i| 1.25 + (i / 2) as f64 * 0.7 + (i % 2) as f64 * 0.02)
            .collect();
        for &s in shrinks.iter().chain(shrinks.iter().rev()).chain(&shrinks) {
            let n = 2 * (LOBES * s).round_ties_even() as usize + 1;
            assert_eq!(&masks(n, s)[..], &mask_table(n, s)[..], "shrink {s}");
            assert_eq!(&masks(n, s)[..], &mask_table(n, s)[..], "shrink {s}, kept");
        }
        assert_eq!(MASKS.with(|m| m.borrow().len()), MASKS_KEPT);
    }

    /// The SIMD horizontal kernels (whichever this CPU runs) against the portable one, on noise,
    /// for even and odd output widths, tap counts odd and even in pairs, with and without the
    /// box pre-shrink: the same bytes.
    #[test]
    fn simd_horizontal_is_the_portable_one() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for &(w, outs) in &[
            (37usize, &[36usize, 30, 19, 18, 5, 1][..]),
            (1414, &[1280, 1024, 801, 640, 400, 300, 151, 64][..]),
            (1790, &[1600, 200, 100, 63][..]),
            (895, &[100, 63][..]),
        ] {
            for &out in outs {
                let ax = Axis::plan(w, 0.0, w as f64, out, w as f64 / out as f64).unwrap();
                for channels in [1, 3, 4] {
                    let h = HCoef::new(&ax, channels);
                    let len = (ax.hi - ax.lo).max(ax.len_after_box) * channels + 32;
                    let line: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                    let mut simd = vec![0u8; out * channels];
                    let mut portable = vec![1u8; out * channels];
                    horizontal(&h, channels, &line, &mut simd);
                    match channels {
                        1 => horizontal_n::<1>(&h, &line, &mut portable),
                        3 => horizontal_n::<3>(&h, &line, &mut portable),
                        _ => horizontal_n::<4>(&h, &line, &mut portable),
                    }
                    assert!(simd == portable, "{w} -> {out}, {channels} channels");
                }
            }
        }
    }

    /// The vertical box pre-shrink is libvips' average of `k` rows (the last box repeating the
    /// last row) for every `k`: the exact mean at 2, 16-bit sums up to 257, 32-bit sums above.
    #[test]
    fn box_rows_average_k_rows_for_every_k() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let row_len = 3 * 77 + 1;
        for (k, height) in [
            (2usize, 9usize),
            (3, 10),
            (4, 8),
            (13, 40),
            (257, 514),
            (258, 600),
            (300, 301),
        ] {
            // Mostly 255s, so the sums come near what 16 bits hold.
            let src: Vec<u8> = (0..height * row_len)
                .map(|_| if rng.gen_bool(0.9) { 255 } else { rng.gen() })
                .collect();
            let boxed = height.div_ceil(k);
            let ay = Axis {
                lo: 0,
                hi: height,
                k,
                len_after_box: boxed,
                out: 1,
                taps: 1,
                start: vec![0],
                coef: vec![1 << COEF_SHIFT],
            };
            let (mut out, mut sum, mut sum16) = (Vec::new(), vec![0i32; row_len], Vec::new());
            let rows = |r: usize| &src[r * row_len..(r + 1) * row_len];
            box_rows(&ay, row_len, rows, &mut out, &mut sum, &mut sum16);
            assert_eq!(out.len(), boxed * row_len);
            for j in 0..boxed {
                for x in 0..row_len {
                    let s: u32 = (0..k)
                        .map(|t| u32::from(src[(j * k + t).min(height - 1) * row_len + x]))
                        .sum();
                    assert_eq!(
                        out[j * row_len + x],
                        box_avg(s, k),
                        "k {k}, row {j}, sample {x}"
                    );
                }
            }
        }
    }

    /// The vertical pass (AVX2 where the CPU has it) against a plain weighted sum, on noise:
    /// odd and even tap counts, rows whose length is not a multiple of the SIMD width, negative
    /// lobes and sums past 0..=255 (clamped).
    #[test]
    fn vertical_pass_is_the_weighted_sum() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let (height, row_len) = (40usize, 3 * 333 + 2);
        let src: Vec<u8> = (0..height * row_len).map(|_| rng.gen()).collect();
        for taps in 1..=25usize {
            let out_rows = 5;
            let start: Vec<usize> = (0..out_rows)
                .map(|o| o * (height - taps) / out_rows)
                .collect();
            let coef: Vec<i32> = (0..out_rows * taps)
                .map(|_| rng.gen_range(-900..2600))
                .collect();
            let ay = Axis {
                lo: 0,
                hi: height,
                k: 1,
                len_after_box: height,
                out: out_rows,
                taps,
                start: start.clone(),
                coef: coef.clone(),
            };
            let mut got = vec![0u8; out_rows * row_len];
            let mut acc = vec![0i32; row_len];
            taps_pass(
                &ay,
                row_len,
                |r| &src[r * row_len..(r + 1) * row_len],
                &mut acc,
                &mut got,
            );
            for o in 0..out_rows {
                for j in 0..row_len {
                    let sum = (0..taps).fold(ROUND, |s, t| {
                        s + coef[o * taps + t] * i32::from(src[(start[o] + t) * row_len + j])
                    });
                    let want = (sum >> COEF_SHIFT).clamp(0, 255) as u8;
                    assert_eq!(
                        got[o * row_len + j],
                        want,
                        "{taps} taps, row {o}, sample {j}"
                    );
                }
            }
        }
    }
}
