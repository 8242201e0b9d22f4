//! Softmax of rows of up to 64 values (a small model's attention: 50 tokens at the tiny
//! fixture) on AVX-512F, each row held in at most 4 zmm registers from its load to its store.
//!
//! The portable softmax makes three passes over memory; at rows of 50 each row waited on
//! the last, as the next row's first load overlapped the previous row's tail store. Here
//! the next row is loaded before this row is stored, and the lanes past a row's end enter
//! the exp as zero (as `-inf` they made `exp · 1/sum` subnormal, with an assist each). Over
//! rows of 50 it took 0.57 against 1.33 ns a value (the portable build for AVX-512).
//!
//! Bit for bit the portable [`super::kernels::softmax`]: the same `exp` in the same
//! operations, the sum's 32 lanes over whole chunks of 32 added as its tree, then the values
//! past them one after another, and the same maximum (a maximum does not depend on the
//! order it is taken in; only the sign of a zero maximum could, and `v - ±0` gives the
//! same exp).

use std::arch::x86_64::{
    __m512, __mmask16, _CMP_GT_OQ, _mm512_add_ps, _mm512_cmp_ps_mask, _mm512_cvtss_f32,
    _mm512_fmadd_ps, _mm512_fnmadd_ps, _mm512_mask_blend_ps, _mm512_mask_loadu_ps,
    _mm512_mask_storeu_ps, _mm512_maskz_sub_ps, _mm512_max_ps, _mm512_min_ps, _mm512_mul_ps,
    _mm512_permute_ps, _mm512_scalef_ps, _mm512_set1_ps, _mm512_setzero_ps, _mm512_shuffle_f32x4,
    _mm512_storeu_ps, _mm512_sub_ps,
};

/// f32 lanes of one zmm register.
const LANES: usize = 16;
/// The longest row this kernel takes: 4 registers.
pub(crate) const MAX_ROW: usize = 4 * LANES;

/// Whether this CPU has AVX-512F.
pub(crate) fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

/// Softmax of each row of `row` values of `data` in place (a trailing part row is left
/// alone).
///
/// # Safety
/// [`available`] returned true.
///
/// # Panics
/// If `row` is 0 or over [`MAX_ROW`].
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn softmax_rows(data: &mut [f32], row: usize) {
    assert!((1..=MAX_ROW).contains(&row), "short softmax rows of {row} values");
    // SAFETY: the CPU has AVX-512F (the caller's promise); `row` fits the registers.
    unsafe {
        match row.div_ceil(LANES) {
            1 => rows::<1>(data, row),
            2 => rows::<2>(data, row),
            3 => rows::<3>(data, row),
            _ => rows::<4>(data, row),
        }
    }
}

/// [`softmax_rows`] for rows of `16 (V - 1) < row ≤ 16 V` values.
#[target_feature(enable = "avx512f")]
unsafe fn rows<const V: usize>(data: &mut [f32], row: usize) {
    let count = data.len() / row;
    if count == 0 {
        return;
    }
    // Whole chunks of the sum's 32 lanes, and the vectors past them.
    let chunks = row / (2 * LANES);
    let rest = row - chunks * 2 * LANES;
    let mut masks = [0 as __mmask16; V];
    for (v, mask) in masks.iter_mut().enumerate() {
        let lanes = row.saturating_sub(v * LANES).min(LANES);
        *mask = ((1u32 << lanes) - 1) as __mmask16;
    }
    let base = data.as_mut_ptr();
    let neg = _mm512_set1_ps(f32::NEG_INFINITY);
    // SAFETY: every access is masked to lanes of a row `r < count`, inside `data`.
    unsafe {
        let mut x = load(base, &masks);
        for r in 0..count {
            let (mut even, mut odd) = (neg, neg);
            for (v, &x) in x.iter().enumerate() {
                if v % 2 == 0 {
                    even = larger(even, x);
                } else {
                    odd = larger(odd, x);
                }
            }
            let max = _mm512_set1_ps(fold(larger(even, odd), |a, b| larger(a, b)));
            let mut e = [_mm512_setzero_ps(); V];
            for (v, e) in e.iter_mut().enumerate() {
                *e = exp(_mm512_maskz_sub_ps(masks[v], x[v], max));
            }
            let (mut even, mut odd) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            for (v, &e) in e.iter().enumerate().take(2 * chunks) {
                if v % 2 == 0 {
                    even = _mm512_add_ps(even, e);
                } else {
                    odd = _mm512_add_ps(odd, e);
                }
            }
            let mut past = [0f32; 2 * LANES];
            for (v, &e) in e.iter().enumerate().skip(2 * chunks) {
                _mm512_storeu_ps(past.as_mut_ptr().add((v - 2 * chunks) * LANES), e);
            }
            let sum = fold(_mm512_add_ps(even, odd), |a, b| _mm512_add_ps(a, b))
                + past[..rest].iter().sum::<f32>();
            if r + 1 < count {
                x = load(base.add((r + 1) * row), &masks);
            }
            let inv = _mm512_set1_ps(1.0 / sum);
            for (v, &e) in e.iter().enumerate() {
                _mm512_mask_storeu_ps(
                    base.add(r * row + v * LANES),
                    masks[v],
                    _mm512_mul_ps(e, inv),
                );
            }
        }
    }
}

/// One row's `V` registers from `at`, lanes past the row (`masks`) `-inf`.
///
/// # Safety
/// The lanes `masks` keep, from `at` on, are readable.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn load<const V: usize>(at: *const f32, masks: &[__mmask16; V]) -> [__m512; V] {
    let neg = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut x = [neg; V];
    for (v, x) in x.iter_mut().enumerate() {
        // SAFETY: the caller's promise.
        *x = unsafe { _mm512_mask_loadu_ps(neg, masks[v], at.add(v * LANES)) };
    }
    x
}

/// `if b > a { b } else { a }` per lane: the portable maximum's step.
#[inline]
#[target_feature(enable = "avx512f")]
pub(crate) fn larger(a: __m512, b: __m512) -> __m512 {
    _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(b, a), a, b)
}

/// The portable reductions' tree over 16 lanes: lane `j` takes `f(lane j, lane j + w)` for
/// `w` = 8, 4, 2, 1; lane 0.
#[inline]
#[target_feature(enable = "avx512f")]
pub(crate) fn fold(a: __m512, f: impl Fn(__m512, __m512) -> __m512) -> f32 {
    let a = f(a, _mm512_shuffle_f32x4::<0b11_10_11_10>(a, a));
    let a = f(a, _mm512_shuffle_f32x4::<0b01_01_01_01>(a, a));
    let a = f(a, _mm512_permute_ps::<0b11_10_11_10>(a));
    let a = f(a, _mm512_permute_ps::<0b01_01_01_01>(a));
    _mm512_cvtss_f32(a)
}

/// [`super::kernels::exp`] on 16 lanes, bit for bit: its operations, the last four (the
/// power of two built from bits, and the product) as one `vscalefps`.
#[inline]
#[target_feature(enable = "avx512f")]
pub(crate) fn exp(x: __m512) -> __m512 {
    const ROUND: f32 = 12_582_912.0;
    {
        // `max(c, x)` and `min(c, x)` return `x` where it is NaN, as the portable clamps do.
        let x = _mm512_max_ps(_mm512_set1_ps(-87.0), x);
        let x = _mm512_min_ps(_mm512_set1_ps(88.0), x);
        let t = _mm512_fmadd_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E), _mm512_set1_ps(ROUND));
        let n = _mm512_sub_ps(t, _mm512_set1_ps(ROUND));
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0));
        // `y · 2ⁿ`, rounded once, as the portable product with `2ⁿ` built from bits is (the
        // clamps keep n in -126..=127, where 2ⁿ is a normal f32); one instruction for four.
        _mm512_scalef_ps(y, n)
    }
}

/// Values of a spread that puts some exps at the clamp and some probabilities subnormal, for
/// tests of softmax kernels.
#[cfg(test)]
pub(crate) fn spread_scores(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let unit = (state >> 40) as f32 / (1u64 << 24) as f32;
            let scale = [1.0, 12.0, 60.0][(state >> 20) as usize % 3];
            (unit - 0.5) * scale
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::kernels;
    use super::*;

    #[test]
    fn exp_is_the_portable_exp_bit_for_bit() {
        if !available() {
            eprintln!("skipped exp_is_the_portable_exp_bit_for_bit: this CPU lacks AVX-512F");
            return;
        }
        let mut xs: Vec<f32> = (0..200_000).map(|i| -100.0 + i as f32 * 1e-3).collect();
        xs.extend([f32::NEG_INFINITY, f32::INFINITY, -0.0, 0.0, f32::MIN, f32::MAX, 1e-40]);
        while !xs.len().is_multiple_of(LANES) {
            xs.push(0.5);
        }
        for chunk in xs.chunks_exact(LANES) {
            let mut got = [0f32; LANES];
            // SAFETY: the CPU has AVX-512F, checked above; both arrays hold 16 values.
            unsafe {
                #[target_feature(enable = "avx512f")]
                fn run(chunk: &[f32], got: &mut [f32; LANES]) {
                    // SAFETY: 16 values each.
                    unsafe {
                        let x = std::arch::x86_64::_mm512_loadu_ps(chunk.as_ptr());
                        _mm512_storeu_ps(got.as_mut_ptr(), exp(x));
                    }
                }
                run(chunk, &mut got);
            }
            for (x, got) in chunk.iter().zip(got) {
                assert_eq!(got.to_bits(), kernels::exp(*x).to_bits(), "exp({x})");
            }
        }
    }

    /// Every row length the kernel takes, 5 rows and a part row after them, against the
    /// portable softmax of each row.
    #[test]
    fn rows_are_the_portable_softmax_bit_for_bit() {
        if !available() {
            eprintln!("skipped rows_are_the_portable_softmax_bit_for_bit: this CPU lacks AVX-512F");
            return;
        }
        for row in 1..=MAX_ROW {
            let x = spread_scores(5 * row + row / 2, row as u64);
            let mut want = x.clone();
            want.chunks_exact_mut(row).for_each(kernels::softmax_portable);
            let mut got = x.clone();
            // SAFETY: the CPU has AVX-512F, checked above.
            unsafe { softmax_rows(&mut got, row) };
            for (i, (w, g)) in want.iter().zip(&got).enumerate() {
                assert_eq!(w.to_bits(), g.to_bits(), "rows of {row}, value {i}: {w} against {g}");
            }
            assert_eq!(got[5 * row..], x[5 * row..], "the part row is left alone");
        }
    }
}
