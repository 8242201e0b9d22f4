//! Softmax rows packed into one bf16 activation panel on AVX-512F, the panel's rows in a
//! pipeline: first every row's maximum, then one pass over a row's vectors that makes its
//! exps and their sum and scales and rounds the row two before it, whose sum and reciprocal
//! have long been ready. A row at a time (maximum, exps, sum, scaling: each pass waiting on
//! the last one's reduction), the packer took 7.2% of a bf16 forward of ViT-L/14 at batch
//! 1; so, 6.0% (`perf`, same run otherwise).
//!
//! Bit for bit [`super::softmax_row_portable`] on each row: the same maximum (a maximum
//! does not depend on the order it is taken in; only the sign of a zero maximum could, and
//! `v - ±0` gives the same exp), the same `exp`, the sum's 32 lanes over whole chunks of 32
//! added as its tree, then the values past them one after another, and the same rounding.

use std::arch::x86_64::{
    __m512, __m512i, __mmask16, _mm256_storeu_si256, _mm512_add_epi32, _mm512_add_ps,
    _mm512_and_si512, _mm512_castps_si512, _mm512_cmpgt_epi32_mask, _mm512_cvtepi32_epi16,
    _mm512_loadu_ps, _mm512_mask_blend_epi32, _mm512_mask_loadu_ps, _mm512_maskz_loadu_ps,
    _mm512_maskz_mov_ps, _mm512_maskz_sub_ps, _mm512_mul_ps, _mm512_or_si512, _mm512_set1_epi32,
    _mm512_set1_ps, _mm512_setzero_ps, _mm512_srli_epi32, _mm512_storeu_ps,
};

use super::{PANEL, PANEL_STEP, STEP};
pub(super) use crate::ops::short_softmax::available;
use crate::ops::short_softmax::{exp, fold, larger};

/// f32 lanes of one zmm register.
const LANES: usize = 16;

/// Rows a row's scaling runs behind its exps, so that its sum and reciprocal are ready.
const LAG: usize = 2;
/// Rows of exps held: the one made and those waiting to be scaled.
const BUFFERS: usize = LAG + 1;

/// Floats of the scratch [`softmax_panel`] takes for rows of `k` values.
pub(super) fn scratch_len(k: usize) -> usize {
    BUFFERS * k.div_ceil(STEP) * STEP
}

/// Packs the softmax of each row of `scores` (rows of `k` values, at most [`PANEL`] of
/// them) into the same row of the activation panel `out` (`k / 32` rounded up steps of
/// [`PANEL_STEP`]), each probability rounded to bf16, zeros past `k`. `scratch` holds
/// [`scratch_len`] floats. The panel's other rows are not touched.
///
/// # Safety
/// [`available`] returned true.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn softmax_panel(scores: &[f32], k: usize, scratch: &mut [f32], out: &mut [u16]) {
    assert!(out.len() >= k.div_ceil(STEP) * PANEL_STEP, "panel too short");
    let out = out.as_mut_ptr();
    probabilities(scores, k, scratch, |r, v, p| {
        let at = (v / 2) * PANEL_STEP + r * STEP + (v % 2) * LANES;
        // SAFETY: row `r < PANEL` (asserted in `probabilities`), vector `v` of `k / 32`
        // rounded up steps: inside the panel, asserted above.
        unsafe { _mm256_storeu_si256(out.add(at).cast(), to_bf16(p)) };
    });
}

/// The softmax of each row of `scores` (rows of `k` values, at most [`PANEL`] of them),
/// handed to `emit(row, vector, probabilities)` in registers of 16: `k / 32` rounded up,
/// times 2, for each row, zeros past `k`.
#[inline]
#[target_feature(enable = "avx512f")]
fn probabilities(
    scores: &[f32],
    k: usize,
    scratch: &mut [f32],
    mut emit: impl FnMut(usize, usize, __m512),
) {
    let rows = scores.len().checked_div(k).unwrap_or(0);
    assert!(rows <= PANEL, "{rows} rows for one panel");
    let vectors = 2 * k.div_ceil(STEP);
    let len = vectors * LANES;
    assert!(scratch.len() >= BUFFERS * len, "softmax scratch too short");
    if rows == 0 {
        return;
    }
    // The sum's whole chunks of 32 lanes, in vectors; the vectors whose lanes all hold values.
    let summed = k / STEP * 2;
    let whole = k / LANES;
    let mask = |v: usize| {
        if v < whole {
            !0
        } else {
            ((1u32 << k.saturating_sub(v * LANES).min(LANES)) - 1) as __mmask16
        }
    };
    let row_at = |r: usize| scores.as_ptr().wrapping_add(r * k);
    // SAFETY: loads are masked to the `k` values of a row `< rows`, inside `scores`, or are
    // of one of the `BUFFERS` rows of `len` floats of `scratch`; so are the stores.
    unsafe {
        let buffers = scratch.as_mut_ptr();
        let mut max = [0f32; PANEL];
        for (r, max) in max.iter_mut().enumerate().take(rows) {
            *max = row_max(row_at(r), vectors, &mask);
        }
        let mut inv = [0f32; PANEL];
        for r in 0..rows + LAG {
            let exps = r < rows;
            let scaled = r.checked_sub(LAG);
            let m = _mm512_set1_ps(max[r.min(rows - 1)]);
            let this = buffers.add(r % BUFFERS * len);
            let (last, inv_last) = match scaled {
                Some(s) => (buffers.add(s % BUFFERS * len).cast_const(), _mm512_set1_ps(inv[s])),
                None => (this.cast_const(), _mm512_setzero_ps()),
            };
            let (mut even, mut odd) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            for v in 0..vectors {
                if let Some(s) = scaled {
                    emit(s, v, _mm512_mul_ps(_mm512_loadu_ps(last.add(v * LANES)), inv_last));
                }
                if exps {
                    let keep = mask(v);
                    let x = _mm512_maskz_loadu_ps(keep, row_at(r).wrapping_add(v * LANES));
                    let e = _mm512_maskz_mov_ps(keep, exp(_mm512_maskz_sub_ps(keep, x, m)));
                    _mm512_storeu_ps(this.add(v * LANES), e);
                    if v < summed {
                        if v % 2 == 0 {
                            even = _mm512_add_ps(even, e);
                        } else {
                            odd = _mm512_add_ps(odd, e);
                        }
                    }
                }
            }
            if exps {
                let rest = std::slice::from_raw_parts(this.add(summed * LANES), k - summed * LANES);
                let sum = fold(_mm512_add_ps(even, odd), |a, b| _mm512_add_ps(a, b))
                    + rest.iter().sum::<f32>();
                inv[r] = 1.0 / sum;
            }
        }
    }
}

/// The largest of a row's `k` values (`vectors` registers, lanes past `k` masked off).
///
/// # Safety
/// The lanes `mask` keeps, from `row` on, are readable.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn row_max(row: *const f32, vectors: usize, mask: &impl Fn(usize) -> __mmask16) -> f32 {
    let neg = _mm512_set1_ps(f32::NEG_INFINITY);
    let (mut even, mut odd) = (neg, neg);
    for v in 0..vectors {
        // SAFETY: the caller's promise.
        let x = unsafe { _mm512_mask_loadu_ps(neg, mask(v), row.wrapping_add(v * LANES)) };
        if v % 2 == 0 {
            even = larger(even, x);
        } else {
            odd = larger(odd, x);
        }
    }
    fold(larger(even, odd), |a, b| larger(a, b))
}

/// [`super::to_bf16`] on 16 lanes: round to nearest even, NaN kept quiet.
#[inline]
#[target_feature(enable = "avx512f")]
fn to_bf16(x: __m512) -> std::arch::x86_64::__m256i {
    let bits: __m512i = _mm512_castps_si512(x);
    let one = _mm512_set1_epi32(1);
    let odd = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), one);
    let rounded = _mm512_srli_epi32::<16>(_mm512_add_epi32(
        bits,
        _mm512_add_epi32(_mm512_set1_epi32(0x7fff), odd),
    ));
    let quiet = _mm512_or_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(0x40));
    let magnitude = _mm512_and_si512(bits, _mm512_set1_epi32(0x7fff_ffff));
    let nan = _mm512_cmpgt_epi32_mask(magnitude, _mm512_set1_epi32(0x7f80_0000));
    _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(nan, rounded, quiet))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::kernels;
    use crate::ops::short_softmax::spread_scores;

    /// The probabilities before rounding, bit for bit the portable softmax of each row: row
    /// lengths around the sum's chunks of 32 and attention's 257, 1 to 16 rows, values
    /// spread so that the sum's order shows in its last bits (rounded to bf16, it seldom
    /// would).
    #[test]
    fn probabilities_are_the_portable_softmax_bit_for_bit() {
        if !available() {
            eprintln!(
                "skipped probabilities_are_the_portable_softmax_bit_for_bit: this CPU lacks AVX-512F"
            );
            return;
        }
        for k in [1, 7, 16, 31, 32, 33, 50, 64, 65, 96, 257] {
            for rows in [1, 2, 5, PANEL] {
                let scores = spread_scores(rows * k, (k * 100 + rows) as u64);
                let mut want = scores.clone();
                want.chunks_exact_mut(k).for_each(kernels::softmax_portable);
                let vectors = 2 * k.div_ceil(STEP);
                let mut got = vec![f32::NAN; rows * vectors * LANES];
                let mut scratch = vec![0f32; scratch_len(k)];
                // SAFETY: the CPU has AVX-512F, checked above.
                unsafe {
                    #[target_feature(enable = "avx512f")]
                    fn run(scores: &[f32], k: usize, scratch: &mut [f32], got: &mut [f32]) {
                        let vectors = 2 * k.div_ceil(STEP);
                        probabilities(scores, k, scratch, |r, v, p| {
                            let at = (r * vectors + v) * LANES;
                            // SAFETY: row r < rows, vector v < vectors.
                            unsafe { _mm512_storeu_ps(got.as_mut_ptr().add(at), p) };
                        });
                    }
                    run(&scores, k, &mut scratch, &mut got);
                }
                for r in 0..rows {
                    let row = &got[r * vectors * LANES..][..vectors * LANES];
                    for (i, (w, g)) in want[r * k..][..k].iter().zip(row).enumerate() {
                        assert_eq!(
                            w.to_bits(),
                            g.to_bits(),
                            "k {k}, row {r}, value {i}: {w} against {g}"
                        );
                    }
                    assert!(
                        row[k..].iter().all(|&g| g.to_bits() == 0),
                        "k {k}, row {r}: not zero past k"
                    );
                }
            }
        }
    }
}
