//! A linear head folded into one affine map, `score = w·x + b`, scored row by row straight
//! from the caller's buffer: no tensor is built, nothing is allocated per row.
//!
//! Products are summed in `f64` in eight lanes, so the result does not depend on the SIMD width
//! chosen at run time (each lane sums the same terms in the same order on every path) and is
//! within an ulp of the exact sum of the `f32` products for unit vectors.

/// Why a row has no score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RowProblem {
    /// A value is NaN or infinite.
    NotFinite,
    /// Every value is zero: the row has no direction.
    ZeroNorm,
}

/// `score = weight·x + bias`, with `weight` and `bias` as `f32` (the folded head).
#[derive(Debug, Clone)]
pub(crate) struct Affine {
    weight: Vec<f32>,
    bias: f32,
}

/// Lanes of the `f64` sums.
const LANES: usize = 8;

impl Affine {
    pub(crate) fn new(weight: Vec<f32>, bias: f32) -> Self {
        Affine { weight, bias }
    }

    /// The score of a unit-norm row.
    pub(crate) fn score_unit(&self, row: &[f32]) -> f32 {
        let (dot, _) = sums(&self.weight, row);
        (f64::from(self.bias) + dot) as f32
    }

    /// The score of `row / ‖row‖`, without writing the normalized row.
    pub(crate) fn score_normalizing(&self, row: &[f32]) -> Result<f32, RowProblem> {
        let (dot, squares) = sums(&self.weight, row);
        if !squares.is_finite() {
            return Err(RowProblem::NotFinite);
        }
        if squares == 0.0 {
            return Err(RowProblem::ZeroNorm);
        }
        Ok((f64::from(self.bias) + dot / squares.sqrt()) as f32)
    }
}

/// `(w·x, x·x)` in `f64`, with the widest SIMD the CPU has.
fn sums(weight: &[f32], row: &[f32]) -> (f64, f64) {
    debug_assert_eq!(weight.len(), row.len());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the CPU has AVX, checked just above.
        return unsafe { sums_avx(weight, row) };
    }
    sums_portable(weight, row)
}

/// [`sums_portable`] in AVX: the eight lanes are two registers of four `f64`, multiplied then
/// added (no FMA), so each lane rounds as in the portable loop.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
fn sums_avx(weight: &[f32], row: &[f32]) -> (f64, f64) {
    use std::arch::x86_64::*;
    let body = row.len() / LANES * LANES;
    let mut dot = [_mm256_setzero_pd(); 2];
    let mut squares = [_mm256_setzero_pd(); 2];
    for (w, x) in weight[..body].chunks_exact(LANES).zip(row[..body].chunks_exact(LANES)) {
        // SAFETY: each chunk holds LANES = 8 f32, what an unaligned 256-bit load reads.
        let (w, x) = unsafe { (_mm256_loadu_ps(w.as_ptr()), _mm256_loadu_ps(x.as_ptr())) };
        let halves = [
            (_mm256_castps256_ps128(w), _mm256_castps256_ps128(x)),
            (_mm256_extractf128_ps::<1>(w), _mm256_extractf128_ps::<1>(x)),
        ];
        for (half, (w, x)) in halves.into_iter().enumerate() {
            let (w, x) = (_mm256_cvtps_pd(w), _mm256_cvtps_pd(x));
            dot[half] = _mm256_add_pd(dot[half], _mm256_mul_pd(w, x));
            squares[half] = _mm256_add_pd(squares[half], _mm256_mul_pd(x, x));
        }
    }
    let mut lanes = [[0f64; LANES]; 2];
    for (out, sums) in lanes.iter_mut().zip([dot, squares]) {
        // SAFETY: `out` holds 8 f64, two unaligned 256-bit stores.
        unsafe {
            _mm256_storeu_pd(out.as_mut_ptr(), sums[0]);
            _mm256_storeu_pd(out.as_mut_ptr().add(4), sums[1]);
        }
    }
    finish(lanes[0], lanes[1], &weight[body..], &row[body..])
}

/// Eight independent lanes (vectorized by the compiler), then the lanes in order, then the
/// tail. No fused multiply-add: every path rounds alike.
#[inline(always)]
fn sums_portable(weight: &[f32], row: &[f32]) -> (f64, f64) {
    let mut dot = [0f64; LANES];
    let mut squares = [0f64; LANES];
    let body = row.len() / LANES * LANES;
    for (w, x) in weight[..body].chunks_exact(LANES).zip(row[..body].chunks_exact(LANES)) {
        for k in 0..LANES {
            let x = f64::from(x[k]);
            dot[k] += f64::from(w[k]) * x;
            squares[k] += x * x;
        }
    }
    finish(dot, squares, &weight[body..], &row[body..])
}

/// The lanes summed in order, then the tail (fewer than `LANES` values).
#[inline(always)]
fn finish(dot: [f64; LANES], squares: [f64; LANES], weight: &[f32], row: &[f32]) -> (f64, f64) {
    let (mut d, mut s) = (0.0, 0.0);
    for k in 0..LANES {
        d += dot[k];
        s += squares[k];
    }
    for (w, x) in weight.iter().zip(row) {
        let x = f64::from(*x);
        d += f64::from(*w) * x;
        s += x * x;
    }
    (d, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simd_and_portable_sums_agree_bit_for_bit() {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        for dim in [1, 7, 8, 16, 768, 1029] {
            let w: Vec<f32> = (0..dim).map(|_| next()).collect();
            let x: Vec<f32> = (0..dim).map(|_| next() * 3.0).collect();
            let portable = sums_portable(&w, &x);
            assert_eq!(sums(&w, &x), portable, "{dim}");
            let exact_dot: f64 = w.iter().zip(&x).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
            assert!((portable.0 - exact_dot).abs() <= 1e-12, "{dim}");
        }
    }

    #[test]
    fn rows_are_scored_as_if_normalized() {
        let affine = Affine::new(vec![0.5, -1.0, 2.0], 3.0);
        let unit = [0.6f32, 0.0, 0.8];
        let scaled = [6.0f32, 0.0, 8.0];
        let expected = 3.0 + 0.5 * 0.6 + 2.0 * 0.8;
        assert!((affine.score_unit(&unit) - expected).abs() < 1e-6);
        assert!((affine.score_normalizing(&scaled).unwrap() - expected).abs() < 1e-6);
        assert_eq!(affine.score_normalizing(&[0.0; 3]), Err(RowProblem::ZeroNorm));
        assert_eq!(affine.score_normalizing(&[1.0, f32::NAN, 0.0]), Err(RowProblem::NotFinite));
        assert_eq!(
            affine.score_normalizing(&[1.0, f32::INFINITY, 0.0]),
            Err(RowProblem::NotFinite)
        );
    }
}
