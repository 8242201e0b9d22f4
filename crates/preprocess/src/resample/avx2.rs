//! The resampling passes with AVX2: the same integer sums as the scalar passes, so the same
//! bytes.
//!
//! `_mm256_madd_epi16` multiplies 16-bit lanes, but Pillow's weights have 22 fractional bits.
//! Each weight is split as `w = hi · 2¹¹ + lo` with `0 ≤ lo < 2¹¹` and `|hi| ≤ 2¹¹`, both
//! 16-bit; `Σ p·w = 2¹¹ · Σ p·hi + Σ p·lo` exactly (every partial sum fits in 32 bits), so
//! the rounding at the end sees the scalar pass's number.
//!
//! [`vertical_row`] sums whole lines (sixteen bytes of two lines per pair of taps); it runs
//! both passes of the channel-plane route, the horizontal one on columns that
//! [`channel_columns`] and [`transpose`] lay out. [`horizontal_row`] is the interleaved
//! route's horizontal pass: one step takes four taps, t and t + 1 in the low 128-bit lane,
//! t + 2 and t + 3 in the high one, each lane holding `(r, r′), (g, g′), (b, b′), (0, 0)`
//! pairs of 16-bit pixels against matching weight pairs.

use std::arch::x86_64::{
    __m128i, __m256i, _mm_add_epi32, _mm_cvtsi128_si32, _mm_loadu_si128, _mm_packs_epi32,
    _mm_packus_epi16, _mm_set1_epi32, _mm_slli_epi32, _mm_srai_epi32, _mm256_add_epi32,
    _mm256_broadcastsi128_si256, _mm256_castsi256_si128, _mm256_extracti128_si256,
    _mm256_loadu_si256, _mm256_madd_epi16, _mm256_setr_epi8, _mm256_setzero_si256,
    _mm256_shuffle_epi8,
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

/// Lays out `c`'s weights for [`horizontal_row`]: per output pixel, `ksize.div_ceil(4)` steps
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

/// One row of the horizontal pass; `packed` from [`pack`] of the same `c`.
///
/// # Safety
/// The CPU must support AVX2 ([`available`]).
#[target_feature(enable = "avx2")]
pub(super) unsafe fn horizontal_row(src: &[u8], c: &Coeffs, packed: &[i16], out: &mut [u8]) {
    let steps = c.ksize.div_ceil(STEP);
    let len = src.len();
    // Pixel t → 16-bit pairs (r_t, r_t+1), (g_t, g_t+1), (b_t, b_t+1), 0 in the low lane, the
    // same for t + 2 (byte 6) in the high lane; -1 zeroes a byte.
    let pairs = _mm256_setr_epi8(
        0, -1, 3, -1, 1, -1, 4, -1, 2, -1, 5, -1, -1, -1, -1, -1, //
        6, -1, 9, -1, 7, -1, 10, -1, 8, -1, 11, -1, -1, -1, -1, -1,
    );
    let half = _mm_set1_epi32(HALF);
    for (((&(xmin, n), weights), k), px) in c
        .bounds
        .iter()
        .zip(packed.chunks_exact(steps * STEP_WEIGHTS))
        .zip(c.weights.chunks_exact(c.ksize))
        .zip(out.chunks_exact_mut(3))
    {
        let used = n.div_ceil(STEP);
        // Each step loads 16 bytes from its first tap: fall back where that passes the row.
        if used == 0 || (xmin + (used - 1) * STEP) * 3 + 16 > len {
            super::horizontal_pixel(&src[xmin * 3..][..n * 3], &k[..n], px);
            continue;
        }
        let (mut acc_lo, mut acc_hi) = (_mm256_setzero_si256(), _mm256_setzero_si256());
        for (step, w) in weights.chunks_exact(STEP_WEIGHTS).take(used).enumerate() {
            // SAFETY: `w` holds 32 i16; the check above keeps the 16 bytes inside the row.
            let (lo, hi, bytes) = unsafe {
                (
                    _mm256_loadu_si256(w.as_ptr().cast::<__m256i>()),
                    _mm256_loadu_si256(w.as_ptr().add(16).cast::<__m256i>()),
                    _mm_loadu_si128(src.as_ptr().add((xmin + step * STEP) * 3).cast()),
                )
            };
            let pixels = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(bytes), pairs);
            acc_lo = _mm256_add_epi32(acc_lo, _mm256_madd_epi16(pixels, lo));
            acc_hi = _mm256_add_epi32(acc_hi, _mm256_madd_epi16(pixels, hi));
        }
        let lo = _mm_add_epi32(_mm256_castsi256_si128(acc_lo), _mm256_extracti128_si256(acc_lo, 1));
        let hi = _mm_add_epi32(_mm256_castsi256_si128(acc_hi), _mm256_extracti128_si256(acc_hi, 1));
        let sum = _mm_add_epi32(_mm_add_epi32(_mm_slli_epi32(hi, LOW_BITS), lo), half);
        // (sum >> 22) clamped to 0..=255, as `clip8`: saturating packs to i16, then to u8.
        let shifted = _mm_srai_epi32(sum, PRECISION_BITS as i32);
        let narrow = _mm_packus_epi16(_mm_packs_epi32(shifted, shifted), shifted);
        let rgb = _mm_cvtsi128_si32(narrow).to_le_bytes();
        px.copy_from_slice(&rgb[..3]);
    }
}

/// Taps `t` and `t + 1` of the weights `k` as two 32-bit lanes, each of two 16-bit weights:
/// the low [`LOW_BITS`] bits of both, then the high bits of both (a missing `t + 1` weighs 0).
pub(super) fn tap_pair(k: &[i32], t: usize) -> (i32, i32) {
    let pair = |shift: i32, mask: i32| {
        let a = (k[t] >> shift) & mask;
        let b = k.get(t + 1).map_or(0, |&w| (w >> shift) & mask);
        (a & 0xffff) | (b << 16)
    };
    (pair(0, (1 << LOW_BITS) - 1), pair(LOW_BITS, -1))
}

/// One output row of the vertical pass: `out[i] = clip8(HALF + Σ_t line_t[i] · k[t])`, line
/// `t` being `src[first + t · stride..][..out.len()]`; `pairs` holds `k` in pairs of taps
/// ([`tap_pair`]).
///
/// Pairs of taps go through `_mm256_madd_epi16` as in the horizontal pass (weights split in
/// 11-bit halves), 32 bytes at a time (then 16) with the sums kept in registers over all
/// taps; the last bytes as in the scalar pass.
///
/// # Safety
/// The CPU must support AVX2 ([`available`]).
#[target_feature(enable = "avx2")]
pub(super) unsafe fn vertical_row(
    src: &[u8],
    first: usize,
    stride: usize,
    k: &[i32],
    pairs: &[(i32, i32)],
    out: &mut [u8],
) {
    let len = out.len();
    let n = k.len();
    assert_eq!(pairs.len(), n.div_ceil(2));
    if n > 0 {
        assert!(first + (n - 1) * stride + len <= src.len());
    }
    let mut done = 0;
    if n > 0 {
        while done + 32 <= len {
            // SAFETY: the assert keeps every line's bytes done..done + 32 inside `src`.
            unsafe { vertical_blocks::<2>(src, first + done, stride, n, pairs, &mut out[done..]) };
            done += 32;
        }
        if done + 16 <= len {
            // SAFETY: as above, for 16 bytes.
            unsafe { vertical_blocks::<1>(src, first + done, stride, n, pairs, &mut out[done..]) };
            done += 16;
        }
    }
    if done < len {
        super::vertical_scalar(&src[done..], first, stride, k, &mut out[done..]);
    }
}

/// `B` blocks of 16 output bytes of [`vertical_row`], from `src[first + t · stride..]`.
///
/// # Safety
/// The CPU must support AVX2; `n > 0`, `16 · B` bytes of every line `t < n` lie inside `src`
/// and `out` holds at least `16 · B`.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn vertical_blocks<const B: usize>(
    src: &[u8],
    first: usize,
    stride: usize,
    n: usize,
    pairs: &[(i32, i32)],
    out: &mut [u8],
) {
    use std::arch::x86_64::{
        _mm_setr_epi8, _mm_shuffle_epi8, _mm_storeu_si128, _mm_unpackhi_epi8, _mm_unpacklo_epi8,
        _mm256_cvtepu8_epi16, _mm256_packs_epi32, _mm256_set1_epi32, _mm256_slli_epi32,
        _mm256_srai_epi32,
    };
    assert!(out.len() >= 16 * B);
    let zero = _mm256_setzero_si256();
    // Per block: low and high weight halves' sums for bytes 0-7 and for bytes 8-15.
    let mut acc = [[zero; 4]; B];
    for (&(wlo, whi), t) in pairs.iter().zip((0..n).step_by(2)) {
        let second = if t + 1 < n { t + 1 } else { t };
        let (wlo, whi) = (_mm256_set1_epi32(wlo), _mm256_set1_epi32(whi));
        for (b, [lo0, lo1, hi0, hi1]) in acc.iter_mut().enumerate() {
            // SAFETY: as the caller promises.
            let (x, y) = unsafe {
                (
                    _mm_loadu_si128(src.as_ptr().add(first + t * stride + 16 * b).cast()),
                    _mm_loadu_si128(src.as_ptr().add(first + second * stride + 16 * b).cast()),
                )
            };
            // Bytes 0-7 then 8-15 of both lines as (x, y) pairs of 16-bit lanes.
            let p0 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(x, y));
            let p1 = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(x, y));
            *lo0 = _mm256_add_epi32(*lo0, _mm256_madd_epi16(p0, wlo));
            *lo1 = _mm256_add_epi32(*lo1, _mm256_madd_epi16(p1, wlo));
            *hi0 = _mm256_add_epi32(*hi0, _mm256_madd_epi16(p0, whi));
            *hi1 = _mm256_add_epi32(*hi1, _mm256_madd_epi16(p1, whi));
        }
    }
    let half = _mm256_set1_epi32(HALF);
    // packs gives words of bytes 0-3, 8-11 (low lane), 4-7, 12-15 (high lane); after packus
    // this puts them back in order.
    let order = _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15);
    for (b, [lo0, lo1, hi0, hi1]) in acc.into_iter().enumerate() {
        let sum = |lo, hi| {
            let s = _mm256_add_epi32(_mm256_add_epi32(_mm256_slli_epi32(hi, LOW_BITS), lo), half);
            _mm256_srai_epi32(s, PRECISION_BITS as i32)
        };
        let words = _mm256_packs_epi32(sum(lo0, hi0), sum(lo1, hi1));
        let bytes =
            _mm_packus_epi16(_mm256_castsi256_si128(words), _mm256_extracti128_si256(words, 1));
        // SAFETY: `out` holds 16 · B bytes.
        unsafe {
            _mm_storeu_si128(out.as_mut_ptr().add(16 * b).cast(), _mm_shuffle_epi8(bytes, order))
        };
    }
}

/// Sixteen registers, `f(0)` to `f(15)`, written out so that they stay in registers.
#[inline(always)]
fn sixteen(mut f: impl FnMut(usize) -> __m128i) -> [__m128i; 16] {
    [
        f(0),
        f(1),
        f(2),
        f(3),
        f(4),
        f(5),
        f(6),
        f(7),
        f(8),
        f(9),
        f(10),
        f(11),
        f(12),
        f(13),
        f(14),
        f(15),
    ]
}

/// A 16x16 block of bytes transposed: four rounds of one perfect shuffle (row `i` interleaved
/// with row `i + 8`), each of which rotates the bits of the (row, column) index by one.
#[inline(always)]
fn transpose_16x16(rows: [__m128i; 16]) -> [__m128i; 16] {
    use std::arch::x86_64::{_mm_unpackhi_epi8, _mm_unpacklo_epi8};
    #[inline(always)]
    fn round(m: [__m128i; 16]) -> [__m128i; 16] {
        // SAFETY: SSE2 is part of x86-64.
        sixteen(|i| unsafe {
            let (a, b) = (m[i / 2], m[i / 2 + 8]);
            if i % 2 == 0 { _mm_unpacklo_epi8(a, b) } else { _mm_unpackhi_epi8(a, b) }
        })
    }
    round(round(round(round(rows))))
}

/// `dst[j · dst_stride + i] = src[i · src_stride + j]` for `i < rows`, `j < cols`.
///
/// # Safety
/// The CPU must support AVX2 ([`available`]).
#[target_feature(enable = "avx2")]
pub(super) unsafe fn transpose(
    src: &[u8],
    src_stride: usize,
    rows: usize,
    cols: usize,
    dst: &mut [u8],
    dst_stride: usize,
) {
    use std::arch::x86_64::_mm_storeu_si128;
    if rows == 0 || cols == 0 {
        return;
    }
    assert!((rows - 1) * src_stride + cols <= src.len());
    assert!((cols - 1) * dst_stride + rows <= dst.len());
    let (full_rows, full_cols) = (rows / 16 * 16, cols / 16 * 16);
    for i in (0..full_rows).step_by(16) {
        for j in (0..full_cols).step_by(16) {
            // SAFETY: the asserts keep rows i..i + 16, columns j..j + 16 inside both slices.
            unsafe {
                let block =
                    sixteen(|r| _mm_loadu_si128(src.as_ptr().add((i + r) * src_stride + j).cast()));
                for (c, column) in transpose_16x16(block).into_iter().enumerate() {
                    _mm_storeu_si128(dst.as_mut_ptr().add((j + c) * dst_stride + i).cast(), column);
                }
            }
        }
    }
    // The edges: columns past the last whole block on every row, then the last rows.
    for i in 0..rows {
        let from = if i < full_rows { full_cols } else { 0 };
        for j in from..cols {
            dst[j * dst_stride + i] = src[i * src_stride + j];
        }
    }
}

/// Pixels `x0..x0 + cols` of rows `y0..y0 + rows` of the RGB8 image `src` (rows of `stride`
/// bytes) as three channel planes stored column by column, `lines` bytes per column:
/// `out[(c · cols + x) · lines + y] = src[(y0 + y) · stride + (x0 + x) · 3 + c]`.
///
/// # Safety
/// The CPU must support AVX2 ([`available`]).
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn channel_columns(
    src: &[u8],
    stride: usize,
    x0: usize,
    cols: usize,
    y0: usize,
    rows: usize,
    lines: usize,
    out: &mut [u8],
) {
    use std::arch::x86_64::{_mm_or_si128, _mm_setr_epi8, _mm_shuffle_epi8, _mm_storeu_si128};
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(rows <= lines && out.len() >= 3 * cols * lines);
    assert!((y0 + rows - 1) * stride + (x0 + cols) * 3 <= src.len());
    // Channel c of 16 pixels (48 bytes in three registers): each register's bytes of that
    // channel moved to their place, -1 zeroing the rest, then or-ed.
    let masks = |c: i8| {
        let pick = |from: i8| {
            let mut m = [-1i8; 16];
            for (slot, m) in m.iter_mut().enumerate() {
                let byte = 3 * slot as i8 + c - from;
                if (0..16).contains(&byte) {
                    *m = byte;
                }
            }
            _mm_setr_epi8(
                m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7], m[8], m[9], m[10], m[11], m[12],
                m[13], m[14], m[15],
            )
        };
        [pick(0), pick(16), pick(32)]
    };
    let masks = [masks(0), masks(1), masks(2)];
    let (full_rows, full_cols) = (rows / 16 * 16, cols / 16 * 16);
    for y in (0..full_rows).step_by(16) {
        for x in (0..full_cols).step_by(16) {
            for (c, m) in masks.iter().enumerate() {
                // Row r's 16 pixels of channel c: the bytes of that channel from each of the
                // three registers holding the pixels, or-ed.
                // SAFETY: the assert keeps the 48 bytes of pixels x..x + 16 in the row.
                let channel = sixteen(|r| unsafe {
                    let at = src.as_ptr().add((y0 + y + r) * stride + (x0 + x) * 3);
                    let part =
                        |k: usize| _mm_shuffle_epi8(_mm_loadu_si128(at.add(16 * k).cast()), m[k]);
                    _mm_or_si128(_mm_or_si128(part(0), part(1)), part(2))
                });
                for (i, column) in transpose_16x16(channel).into_iter().enumerate() {
                    // SAFETY: column x + i < cols, rows y..y + 16 <= lines.
                    unsafe {
                        let at = (c * cols + x + i) * lines + y;
                        _mm_storeu_si128(out.as_mut_ptr().add(at).cast(), column);
                    }
                }
            }
        }
    }
    for y in 0..rows {
        let from = if y < full_rows { full_cols } else { 0 };
        let row = &src[(y0 + y) * stride..];
        for x in from..cols {
            for c in 0..3 {
                out[(c * cols + x) * lines + y] = row[(x0 + x) * 3 + c];
            }
        }
    }
}
