//! The horizontal pass with AVX2: the same integer sums as the scalar pass, so the same bytes.
//!
//! `_mm256_madd_epi16` multiplies 16-bit lanes, but Pillow's weights have 22 fractional bits.
//! Each weight is split as `w = hi · 2¹¹ + lo` with `0 ≤ lo < 2¹¹` and `|hi| ≤ 2¹¹`, both
//! 16-bit; `Σ p·w = 2¹¹ · Σ p·hi + Σ p·lo` exactly (every partial sum fits in 32 bits), so
//! the rounding at the end sees the scalar pass's number. One step takes four taps: taps t
//! and t + 1 in the low 128-bit lane, t + 2 and t + 3 in the high one, each lane holding
//! `(r, r′), (g, g′), (b, b′), (0, 0)` pairs of 16-bit pixels against matching weight pairs.

use std::arch::x86_64::{
    __m256i, _mm_add_epi32, _mm_cvtsi128_si32, _mm_loadu_si128, _mm_packs_epi32, _mm_packus_epi16,
    _mm_set1_epi32, _mm_slli_epi32, _mm_srai_epi32, _mm256_add_epi32, _mm256_broadcastsi128_si256,
    _mm256_castsi256_si128, _mm256_extracti128_si256, _mm256_loadu_si256, _mm256_madd_epi16,
    _mm256_setr_epi8, _mm256_setzero_si256, _mm256_shuffle_epi8,
};

use super::{Coeffs, HALF, PRECISION_BITS};

/// Bits of a weight kept in its low half.
const LOW_BITS: i32 = 11;
/// Taps per step.
const STEP: usize = 4;
/// 16-bit weights per step: 16 low halves, then 16 high halves.
const STEP_WEIGHTS: usize = 32;

/// Whether this CPU runs the AVX2 pass (checked once per process by std).
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx2")
}

/// Lays out `c`'s weights for [`horizontal_rows`]: per output pixel, `ksize.div_ceil(4)` steps
/// of [`STEP_WEIGHTS`] 16-bit weights (taps past a pixel's count weigh 0).
pub(super) fn pack(c: &Coeffs, packed: &mut Vec<i16>) {
    let steps = c.ksize.div_ceil(STEP);
    packed.clear();
    packed.resize(c.bounds.len() * steps * STEP_WEIGHTS, 0);
    for ((&(_, n), k), out) in c
        .bounds
        .iter()
        .zip(c.weights.chunks_exact(c.ksize))
        .zip(packed.chunks_exact_mut(steps * STEP_WEIGHTS))
    {
        for (tap, &w) in k[..n].iter().enumerate() {
            let (lo, hi) = ((w & ((1 << LOW_BITS) - 1)) as i16, (w >> LOW_BITS) as i16);
            let step = &mut out[tap / STEP * STEP_WEIGHTS..][..STEP_WEIGHTS];
            // Lane 0 (16-bit slots 0..8) holds taps 0 and 1 of the step, lane 1 (8..16) taps
            // 2 and 3; in each lane, slot pairs (0, 1), (2, 3), (4, 5) are r, g, b.
            let slot = (tap % STEP / 2) * 8 + tap % 2;
            for channel in 0..3 {
                step[slot + 2 * channel] = lo;
                step[16 + slot + 2 * channel] = hi;
            }
        }
    }
}

/// `R` rows of the horizontal pass at once (each step's weights are loaded once for all of
/// them); `packed` from [`pack`] of the same `c`. The rows are equally long.
///
/// # Safety
/// The CPU must support AVX2 ([`available`]).
#[target_feature(enable = "avx2")]
pub(super) unsafe fn horizontal_rows<const R: usize>(
    src: [&[u8]; R],
    c: &Coeffs,
    packed: &[i16],
    out: [&mut [u8]; R],
) {
    let steps = c.ksize.div_ceil(STEP);
    let len = src[0].len();
    assert!(src.iter().all(|row| row.len() == len));
    // Pixel t → 16-bit pairs (r_t, r_t+1), (g_t, g_t+1), (b_t, b_t+1), 0 in the low lane, the
    // same for t + 2 (byte 6) in the high lane; -1 zeroes a byte.
    let pairs = _mm256_setr_epi8(
        0, -1, 3, -1, 1, -1, 4, -1, 2, -1, 5, -1, -1, -1, -1, -1, //
        6, -1, 9, -1, 7, -1, 10, -1, 8, -1, 11, -1, -1, -1, -1, -1,
    );
    let half = _mm_set1_epi32(HALF);
    let mut out = out.map(|o| o.chunks_exact_mut(3));
    for ((&(xmin, n), weights), k) in c
        .bounds
        .iter()
        .zip(packed.chunks_exact(steps * STEP_WEIGHTS))
        .zip(c.weights.chunks_exact(c.ksize))
    {
        let mut px = [(); R].map(|()| &mut [][..]);
        for (px, out) in px.iter_mut().zip(&mut out) {
            *px = out.next().expect("an output pixel per weight set");
        }
        let used = n.div_ceil(STEP);
        // Each step loads 16 bytes from its first tap: fall back where that passes the row.
        if used == 0 || (xmin + (used - 1) * STEP) * 3 + 16 > len {
            for (src, px) in src.iter().zip(px) {
                super::horizontal_pixel(&src[xmin * 3..][..n * 3], &k[..n], px);
            }
            continue;
        }
        let mut acc = [(_mm256_setzero_si256(), _mm256_setzero_si256()); R];
        for (step, w) in weights.chunks_exact(STEP_WEIGHTS).take(used).enumerate() {
            // SAFETY: `w` holds 32 i16.
            let (lo, hi) = unsafe {
                (
                    _mm256_loadu_si256(w.as_ptr().cast::<__m256i>()),
                    _mm256_loadu_si256(w.as_ptr().add(16).cast::<__m256i>()),
                )
            };
            for (src, (acc_lo, acc_hi)) in src.iter().zip(&mut acc) {
                // SAFETY: the check above keeps the 16 bytes inside the row.
                let bytes =
                    unsafe { _mm_loadu_si128(src.as_ptr().add((xmin + step * STEP) * 3).cast()) };
                let pixels = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(bytes), pairs);
                *acc_lo = _mm256_add_epi32(*acc_lo, _mm256_madd_epi16(pixels, lo));
                *acc_hi = _mm256_add_epi32(*acc_hi, _mm256_madd_epi16(pixels, hi));
            }
        }
        for ((acc_lo, acc_hi), px) in acc.into_iter().zip(px) {
            let lo =
                _mm_add_epi32(_mm256_castsi256_si128(acc_lo), _mm256_extracti128_si256(acc_lo, 1));
            let hi =
                _mm_add_epi32(_mm256_castsi256_si128(acc_hi), _mm256_extracti128_si256(acc_hi, 1));
            let sum = _mm_add_epi32(_mm_add_epi32(_mm_slli_epi32(hi, LOW_BITS), lo), half);
            // (sum >> 22) clamped to 0..=255, as `clip8`: saturating packs to i16, then to u8.
            let shifted = _mm_srai_epi32(sum, PRECISION_BITS as i32);
            let narrow = _mm_packus_epi16(_mm_packs_epi32(shifted, shifted), shifted);
            let rgb = _mm_cvtsi128_si32(narrow).to_le_bytes();
            px.copy_from_slice(&rgb[..3]);
        }
    }
}

/// One output row of the vertical pass: `out[i] = clip8(HALF + Σ_t line_t[i] · k[t])` where
/// line `t` is `src[first + t · stride..][..out.len()]`.
///
/// Pairs of taps go through `_mm256_madd_epi16` as in the horizontal pass (weights split in
/// 11-bit halves), sixteen bytes at a time with the sums kept in registers over all taps.
///
/// # Safety
/// The CPU must support AVX2 ([`available`]).
#[target_feature(enable = "avx2")]
pub(super) unsafe fn vertical_row(
    src: &[u8],
    first: usize,
    stride: usize,
    k: &[i32],
    out: &mut [u8],
) {
    use std::arch::x86_64::{
        _mm_storeu_si128, _mm256_cvtepu8_epi16, _mm256_packs_epi32, _mm256_packus_epi16,
        _mm256_permute4x64_epi64, _mm256_set1_epi32, _mm256_slli_epi32, _mm256_srai_epi32,
        _mm256_unpackhi_epi16, _mm256_unpacklo_epi16,
    };

    let len = out.len();
    let n = k.len();
    // Up to 256 taps here (a source up to about 64 times the target); more take the scalar
    // pass.
    const MAX_PAIRS: usize = 128;
    if n == 0 || n.div_ceil(2) > MAX_PAIRS {
        return super::vertical_scalar(src, first, stride, k, out);
    }
    assert!(first + (n - 1) * stride + len <= src.len());
    // Weight pairs (k[t], k[t + 1]) as 32-bit lanes of two 16-bit halves; an odd last tap is
    // paired with weight 0 (and reads its own line twice).
    let pair = |t: usize, shift: i32, mask: i32| {
        let a = (k[t] >> shift) & mask;
        let b = if t + 1 < n { (k[t + 1] >> shift) & mask } else { 0 };
        (a & 0xffff) | (b << 16)
    };
    let half = _mm256_set1_epi32(HALF);
    // The weight pairs of every tap pair, made once for all blocks of the row.
    let mut pairs = [(0, 0); MAX_PAIRS];
    let pairs = &mut pairs[..n.div_ceil(2)];
    for (p, t) in pairs.iter_mut().zip((0..n).step_by(2)) {
        *p = (pair(t, 0, (1 << LOW_BITS) - 1), pair(t, LOW_BITS, -1));
    }
    let blocks = len / 16;
    for block in 0..blocks {
        let i = block * 16;
        let zero = _mm256_setzero_si256();
        let (mut lo0, mut lo1, mut hi0, mut hi1) = (zero, zero, zero, zero);
        for (&(wlo, whi), t) in pairs.iter().zip((0..n).step_by(2)) {
            let second = if t + 1 < n { t + 1 } else { t };
            // SAFETY: the assert above keeps every line's 16 bytes at `i` inside `src`.
            let (a, b) = unsafe {
                (
                    _mm_loadu_si128(src.as_ptr().add(first + t * stride + i).cast()),
                    _mm_loadu_si128(src.as_ptr().add(first + second * stride + i).cast()),
                )
            };
            let (a, b) = (_mm256_cvtepu8_epi16(a), _mm256_cvtepu8_epi16(b));
            // Bytes 0-3 and 8-11 in `p0`, 4-7 and 12-15 in `p1`, as (a, b) pairs.
            let (p0, p1) = (_mm256_unpacklo_epi16(a, b), _mm256_unpackhi_epi16(a, b));
            let (wlo, whi) = (_mm256_set1_epi32(wlo), _mm256_set1_epi32(whi));
            lo0 = _mm256_add_epi32(lo0, _mm256_madd_epi16(p0, wlo));
            lo1 = _mm256_add_epi32(lo1, _mm256_madd_epi16(p1, wlo));
            hi0 = _mm256_add_epi32(hi0, _mm256_madd_epi16(p0, whi));
            hi1 = _mm256_add_epi32(hi1, _mm256_madd_epi16(p1, whi));
        }
        let s0 = _mm256_add_epi32(_mm256_add_epi32(_mm256_slli_epi32(hi0, LOW_BITS), lo0), half);
        let s1 = _mm256_add_epi32(_mm256_add_epi32(_mm256_slli_epi32(hi1, LOW_BITS), lo1), half);
        let (s0, s1) = (
            _mm256_srai_epi32(s0, PRECISION_BITS as i32),
            _mm256_srai_epi32(s1, PRECISION_BITS as i32),
        );
        // packs puts bytes 0-7 in the low lane and 8-15 in the high lane, in order; packus
        // narrows each lane to bytes; the permute brings the two 8-byte halves together.
        let words = _mm256_packs_epi32(s0, s1);
        let bytes = _mm256_permute4x64_epi64(_mm256_packus_epi16(words, words), 0b1000);
        // SAFETY: `i + 16 <= len`.
        unsafe { _mm_storeu_si128(out.as_mut_ptr().add(i).cast(), _mm256_castsi256_si128(bytes)) };
    }
    let done = blocks * 16;
    super::vertical_scalar(&src[done..], first, stride, k, &mut out[done..]);
}
