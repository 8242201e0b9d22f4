//! libjpeg's accurate integer inverse DCT (`jpeg_idct_islow` in `jidctint.c`): 13-bit
//! constants, two extra bits between the passes, the same integer sums, so the same samples.
//!
//! One difference, only on data no encoder writes: libjpeg's C code wraps a result outside
//! -512..=511 through its range-limit table, libjpeg-turbo's SIMD code (which Pillow runs)
//! saturates; both versions here saturate, as Pillow does.

/// One 8x8 block of quantized coefficients, natural (row-major) order.
pub(super) type Block = [i16; 64];

const CONST_BITS: u32 = 13;
const PASS1_BITS: u32 = 2;
const FIX_0_298631336: i32 = 2446;
const FIX_0_390180644: i32 = 3196;
const FIX_0_541196100: i32 = 4433;
const FIX_0_765366865: i32 = 6270;
const FIX_0_899976223: i32 = 7373;
const FIX_1_175875602: i32 = 9633;
const FIX_1_501321110: i32 = 12299;
const FIX_1_847759065: i32 = 15137;
const FIX_1_961570560: i32 = 16069;
const FIX_2_053119869: i32 = 16819;
const FIX_2_562915447: i32 = 20995;
const FIX_3_072711026: i32 = 25172;

/// The eight outputs of one 1-D pass over inputs `x[0..8]`, before descaling: libjpeg's even
/// and odd parts (`tmp10 + tmp3`, `tmp11 + tmp2`, ... in its output order 0..8).
///
/// Generic over the lane type so the scalar and AVX2 versions are the same sums.
#[inline(always)]
fn butterfly<T: Lane>(x: [T; 8]) -> [T; 8] {
    // Even part.
    let (z2, z3) = (x[2], x[6]);
    let z1 = z2.add(z3).mul(FIX_0_541196100);
    let tmp2 = z1.add(z3.mul(-FIX_1_847759065));
    let tmp3 = z1.add(z2.mul(FIX_0_765366865));
    let tmp0 = x[0].add(x[4]).shl(CONST_BITS);
    let tmp1 = x[0].sub(x[4]).shl(CONST_BITS);
    let (tmp10, tmp13) = (tmp0.add(tmp3), tmp0.sub(tmp3));
    let (tmp11, tmp12) = (tmp1.add(tmp2), tmp1.sub(tmp2));
    // Odd part.
    let (t0, t1, t2, t3) = (x[7], x[5], x[3], x[1]);
    let (z1, z2, z3, z4) = (t0.add(t3), t1.add(t2), t0.add(t2), t1.add(t3));
    let z5 = z3.add(z4).mul(FIX_1_175875602);
    let (t0, t1) = (t0.mul(FIX_0_298631336), t1.mul(FIX_2_053119869));
    let (t2, t3) = (t2.mul(FIX_3_072711026), t3.mul(FIX_1_501321110));
    let (z1, z2) = (z1.mul(-FIX_0_899976223), z2.mul(-FIX_2_562915447));
    let (z3, z4) = (z3.mul(-FIX_1_961570560).add(z5), z4.mul(-FIX_0_390180644).add(z5));
    let t0 = t0.add(z1.add(z3));
    let t1 = t1.add(z2.add(z4));
    let t2 = t2.add(z2.add(z3));
    let t3 = t3.add(z1.add(z4));
    [
        tmp10.add(t3),
        tmp11.add(t2),
        tmp12.add(t1),
        tmp13.add(t0),
        tmp13.sub(t0),
        tmp12.sub(t1),
        tmp11.sub(t2),
        tmp10.sub(t3),
    ]
}

/// What [`butterfly`] needs of a lane: 32-bit wrapping integer arithmetic.
trait Lane: Copy {
    fn add(self, o: Self) -> Self;
    fn sub(self, o: Self) -> Self;
    fn mul(self, c: i32) -> Self;
    fn shl(self, bits: u32) -> Self;
}

impl Lane for i32 {
    #[inline(always)]
    fn add(self, o: Self) -> Self {
        self.wrapping_add(o)
    }
    #[inline(always)]
    fn sub(self, o: Self) -> Self {
        self.wrapping_sub(o)
    }
    #[inline(always)]
    fn mul(self, c: i32) -> Self {
        self.wrapping_mul(c)
    }
    #[inline(always)]
    fn shl(self, bits: u32) -> Self {
        self.wrapping_shl(bits)
    }
}

/// `(x + 2^(bits-1)) >> bits`, libjpeg's `DESCALE`.
#[inline(always)]
fn descale(x: i32, bits: u32) -> i32 {
    x.wrapping_add(1 << (bits - 1)) >> bits
}

/// The sample of a block whose only nonzero coefficient is the dequantized DC `dc`: the
/// full sums with zero AC terms, written out.
#[inline(always)]
fn flat(dc: i32) -> i32 {
    let pass1 = descale(dc.shl(CONST_BITS), CONST_BITS - PASS1_BITS);
    descale(pass1.shl(CONST_BITS), CONST_BITS + PASS1_BITS + 3) + 128
}

/// The inverse DCT of `block` dequantized by `quant` into 8 rows of 8 samples at
/// `out[row * stride..]`: AVX2 where the CPU has it.
#[inline]
pub(super) fn idct(block: &Block, quant: &[i16; 64], out: &mut [u8], stride: usize) {
    #[cfg(target_arch = "x86_64")]
    if super::avx2_available() {
        // SAFETY: the CPU has AVX2; `avx2::idct` checks the extent of `out`.
        unsafe { avx2::idct(block, quant, out, stride) };
        return;
    }
    idct_scalar(block, quant, out, stride);
}

/// [`idct`], portable version.
pub(super) fn idct_scalar(block: &Block, quant: &[i16; 64], out: &mut [u8], stride: usize) {
    let mut ws = [0i32; 64];
    for col in 0..8 {
        let x: [i32; 8] =
            std::array::from_fn(|k| block[k * 8 + col] as i32 * quant[k * 8 + col] as i32);
        for (k, v) in butterfly(x).into_iter().enumerate() {
            ws[k * 8 + col] = descale(v, CONST_BITS - PASS1_BITS);
        }
    }
    for row in 0..8 {
        let x: [i32; 8] = std::array::from_fn(|k| ws[row * 8 + k]);
        let line = &mut out[row * stride..][..8];
        for (o, v) in line.iter_mut().zip(butterfly(x)) {
            *o = (descale(v, CONST_BITS + PASS1_BITS + 3) + 128).clamp(0, 255) as u8;
        }
    }
}

/// A reduced inverse DCT to `k` x `k` samples (`k` of 1, 2, 4) for fast mode's DCT-domain
/// downscaling: the 8-point reconstruction from the block's lowest `k` x `k` frequencies,
/// averaged over each cell of `8 / k` x `8 / k` pixels, in `f32`. Not libjpeg's reduced IDCT,
/// and not exact; fast mode's error bound covers it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Reduced {
    k: usize,
    /// `basis[x][u]`: the weight of frequency `u` at output sample `x`.
    basis: [[f32; 4]; 4],
}

impl Reduced {
    pub(super) fn new(k: usize) -> Self {
        assert!(matches!(k, 1 | 2 | 4), "reduced IDCT to {k} samples");
        let m = (8 / k) as f64;
        let mut basis = [[0f32; 4]; 4];
        for (x, row) in basis.iter_mut().enumerate().take(k) {
            for (u, w) in row.iter_mut().enumerate().take(k) {
                let theta = u as f64 * std::f64::consts::PI / 16.0;
                // JPEG's 1-D normalization: 1/2 · C(u), C(0) = 1/√2.
                let c = if u == 0 { 0.5 * std::f64::consts::FRAC_1_SQRT_2 } else { 0.5 };
                // The mean of cos((2i + 1)θ) over the cell's m pixels i = m·x .. m·x + m.
                let mean = if u == 0 {
                    1.0
                } else {
                    (m * theta).sin() / (m * theta.sin()) * ((2.0 * m * x as f64 + m) * theta).cos()
                };
                *w = (c * mean) as f32;
            }
        }
        Reduced { k, basis }
    }

    /// Samples of `block` dequantized by `quant` into `k` rows of `k` at `out[row * stride..]`.
    pub(super) fn transform(
        &self,
        block: &Block,
        quant: &[i16; 64],
        out: &mut [u8],
        stride: usize,
    ) {
        match self.k {
            1 => self.transform_k::<1>(block, quant, out, stride),
            2 => self.transform_k::<2>(block, quant, out, stride),
            #[cfg(target_arch = "x86_64")]
            _ => self.transform_4x4_sse2(block, quant, out, stride),
            #[cfg(not(target_arch = "x86_64"))]
            _ => self.transform_k::<4>(block, quant, out, stride),
        }
    }

    /// [`Reduced::transform_k`] for 4 x 4 in SSE2 registers (every x86-64 CPU has them): the
    /// same sums, rounded to nearest-even instead of half up, in `f32`.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn transform_4x4_sse2(&self, block: &Block, quant: &[i16; 64], out: &mut [u8], stride: usize) {
        use std::arch::x86_64::*;
        assert!(out.len() >= 3 * stride + 4);
        // SAFETY: SSE2 is part of x86-64; loads read 4 of the 64 coefficients or weights, the
        // stores 4 bytes of a row the assert keeps inside `out`.
        unsafe {
            // The first 4 coefficients of row `v`, sign-extended to i32, as f32.
            let row = |p: &[i16; 64], v: usize| {
                let x = _mm_loadl_epi64(p.as_ptr().add(v * 8).cast());
                _mm_cvtepi32_ps(_mm_srai_epi32::<16>(_mm_unpacklo_epi16(x, x)))
            };
            let columns: [__m128; 4] = std::array::from_fn(|u| {
                _mm_setr_ps(self.basis[0][u], self.basis[1][u], self.basis[2][u], self.basis[3][u])
            });
            let tmp: [__m128; 4] = std::array::from_fn(|v| {
                let f = _mm_mul_ps(row(block, v), row(quant, v));
                let lane = |u: i32| match u {
                    0 => _mm_shuffle_ps::<0x00>(f, f),
                    1 => _mm_shuffle_ps::<0x55>(f, f),
                    2 => _mm_shuffle_ps::<0xAA>(f, f),
                    _ => _mm_shuffle_ps::<0xFF>(f, f),
                };
                let mut t = _mm_mul_ps(lane(0), columns[0]);
                for (u, column) in columns.iter().enumerate().skip(1) {
                    t = _mm_add_ps(t, _mm_mul_ps(lane(u as i32), *column));
                }
                t
            });
            let mut rows = [_mm_setzero_si128(); 4];
            for (y, r) in rows.iter_mut().enumerate() {
                let mut acc = _mm_set1_ps(128.0);
                for (v, t) in tmp.iter().enumerate() {
                    acc = _mm_add_ps(acc, _mm_mul_ps(_mm_set1_ps(self.basis[y][v]), *t));
                }
                *r = _mm_cvtps_epi32(acc);
            }
            // Saturate to 16 bits, then to bytes: row y in bytes 4y..4y + 4.
            let bytes = _mm_packus_epi16(
                _mm_packs_epi32(rows[0], rows[1]),
                _mm_packs_epi32(rows[2], rows[3]),
            );
            let words: [u32; 4] = std::mem::transmute(bytes);
            for (y, w) in words.iter().enumerate() {
                out[y * stride..][..4].copy_from_slice(&w.to_le_bytes());
            }
        }
    }

    /// Both passes as sums of 4-wide rows (which compile to SIMD): `tmp[v] = Σ_u F[v][u] ·
    /// basisᵀ[u]`, then `out[y] = Σ_v basis[y][v] · tmp[v]`.
    #[inline(always)]
    fn transform_k<const K: usize>(
        &self,
        block: &Block,
        quant: &[i16; 64],
        out: &mut [u8],
        stride: usize,
    ) {
        let columns: [[f32; 4]; 4] =
            std::array::from_fn(|u| std::array::from_fn(|x| self.basis[x][u]));
        let mut tmp = [[0f32; 4]; K];
        for (v, t) in tmp.iter_mut().enumerate() {
            for (u, column) in columns.iter().enumerate().take(K) {
                let f = (block[v * 8 + u] as i32 * quant[v * 8 + u] as i32) as f32;
                for (t, &b) in t.iter_mut().zip(column) {
                    *t += f * b;
                }
            }
        }
        for y in 0..K {
            let mut row = [128.5f32; 4];
            for (t, &b) in tmp.iter().zip(&self.basis[y]) {
                for (r, &t) in row.iter_mut().zip(t) {
                    *r += b * t;
                }
            }
            // Round half up: `as` truncates after the clamp.
            for (o, &r) in out[y * stride..][..K].iter_mut().zip(&row) {
                *o = r.clamp(0.0, 255.0) as u8;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) mod avx2 {
    //! Eight columns (then eight rows) at once in 32-bit lanes: the scalar sums lane by lane.

    use std::arch::x86_64::*;

    use super::{Block, CONST_BITS, Lane, PASS1_BITS, butterfly};

    #[derive(Clone, Copy)]
    struct V(__m256i);

    impl Lane for V {
        #[inline(always)]
        fn add(self, o: Self) -> Self {
            // SAFETY: only reached from `idct`, which requires AVX2.
            V(unsafe { _mm256_add_epi32(self.0, o.0) })
        }
        #[inline(always)]
        fn sub(self, o: Self) -> Self {
            // SAFETY: as in `add`.
            V(unsafe { _mm256_sub_epi32(self.0, o.0) })
        }
        #[inline(always)]
        fn mul(self, c: i32) -> Self {
            // SAFETY: as in `add`.
            V(unsafe { _mm256_mullo_epi32(self.0, _mm256_set1_epi32(c)) })
        }
        #[inline(always)]
        fn shl(self, bits: u32) -> Self {
            // SAFETY: as in `add`.
            V(unsafe { _mm256_sll_epi32(self.0, _mm_cvtsi32_si128(bits as i32)) })
        }
    }

    /// Transposes 8 rows of 8 32-bit lanes.
    #[inline(always)]
    unsafe fn transpose(r: [V; 8]) -> [V; 8] {
        // SAFETY: callers run with AVX2.
        unsafe {
            let t0 = _mm256_unpacklo_epi32(r[0].0, r[1].0);
            let t1 = _mm256_unpackhi_epi32(r[0].0, r[1].0);
            let t2 = _mm256_unpacklo_epi32(r[2].0, r[3].0);
            let t3 = _mm256_unpackhi_epi32(r[2].0, r[3].0);
            let t4 = _mm256_unpacklo_epi32(r[4].0, r[5].0);
            let t5 = _mm256_unpackhi_epi32(r[4].0, r[5].0);
            let t6 = _mm256_unpacklo_epi32(r[6].0, r[7].0);
            let t7 = _mm256_unpackhi_epi32(r[6].0, r[7].0);
            let u0 = _mm256_unpacklo_epi64(t0, t2);
            let u1 = _mm256_unpackhi_epi64(t0, t2);
            let u2 = _mm256_unpacklo_epi64(t1, t3);
            let u3 = _mm256_unpackhi_epi64(t1, t3);
            let u4 = _mm256_unpacklo_epi64(t4, t6);
            let u5 = _mm256_unpackhi_epi64(t4, t6);
            let u6 = _mm256_unpacklo_epi64(t5, t7);
            let u7 = _mm256_unpackhi_epi64(t5, t7);
            [
                V(_mm256_permute2x128_si256(u0, u4, 0x20)),
                V(_mm256_permute2x128_si256(u1, u5, 0x20)),
                V(_mm256_permute2x128_si256(u2, u6, 0x20)),
                V(_mm256_permute2x128_si256(u3, u7, 0x20)),
                V(_mm256_permute2x128_si256(u0, u4, 0x31)),
                V(_mm256_permute2x128_si256(u1, u5, 0x31)),
                V(_mm256_permute2x128_si256(u2, u6, 0x31)),
                V(_mm256_permute2x128_si256(u3, u7, 0x31)),
            ]
        }
    }

    /// [`super::idct_scalar`] with AVX2; a block whose AC coefficients are all zero takes
    /// libjpeg's own shortcut (a flat block, the same value the full sums give).
    ///
    /// # Safety
    /// The CPU must support AVX2, and `out` must hold 8 rows of 8 bytes at `stride`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn idct(block: &Block, quant: &[i16; 64], out: &mut [u8], stride: usize) {
        assert!(out.len() >= 7 * stride + 8);
        // SAFETY: AVX2 is enabled; every load reads 16 of the 64 coefficients or weights, and
        // every store writes 8 bytes of a row the assert keeps inside `out`.
        unsafe {
            let load = |p: &[i16; 64], row: usize| {
                _mm256_cvtepi16_epi32(_mm_loadu_si128(p.as_ptr().add(row * 8).cast()))
            };
            // Coefficients 1..64 OR-ed together (the DC, 16-bit lane 0 of the first load,
            // masked out).
            let load16 = |at: usize| _mm256_loadu_si256(block.as_ptr().add(at).cast::<__m256i>());
            let no_dc =
                _mm256_setr_epi16(0, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
            let ac = _mm256_or_si256(
                _mm256_or_si256(_mm256_and_si256(load16(0), no_dc), load16(16)),
                _mm256_or_si256(load16(32), load16(48)),
            );
            let dc_only = _mm256_testz_si256(ac, ac) == 1;
            if dc_only {
                let dc = block[0] as i32 * quant[0] as i32;
                let v = super::flat(dc);
                let row = [v.clamp(0, 255) as u8; 8];
                for r in 0..8 {
                    out[r * stride..][..8].copy_from_slice(&row);
                }
                return;
            }
            // Pass 1: lanes are columns, rows are coefficient rows.
            let x: [V; 8] =
                std::array::from_fn(|k| V(_mm256_mullo_epi32(load(block, k), load(quant, k))));
            let round1 = _mm256_set1_epi32(1 << (CONST_BITS - PASS1_BITS - 1));
            let ws = butterfly(x).map(|v| {
                V(_mm256_srai_epi32::<{ (CONST_BITS - PASS1_BITS) as i32 }>(_mm256_add_epi32(
                    v.0, round1,
                )))
            });
            // Pass 2: lanes are rows.
            let y = butterfly(transpose(ws));
            let round2 = _mm256_set1_epi32(1 << (CONST_BITS + PASS1_BITS + 2));
            let center = _mm256_set1_epi32(128);
            let y = y.map(|v| {
                let shifted = _mm256_srai_epi32::<{ (CONST_BITS + PASS1_BITS + 3) as i32 }>(
                    _mm256_add_epi32(v.0, round2),
                );
                V(_mm256_add_epi32(shifted, center))
            });
            // Back to rows of samples: saturate to 16 bits, then to 0..=255.
            let rows = transpose(y);
            // packs interleaves per 128-bit lane ([a 0..4, b 0..4 | a 4..8, b 4..8]); the
            // permute puts row a in the low lane and row b in the high one.
            let words = |a: usize, b: usize| {
                _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(rows[a].0, rows[b].0))
            };
            for quad in [0, 4] {
                // Qwords: row q, row q + 2, row q + 1, row q + 3.
                let bytes = _mm256_packus_epi16(words(quad, quad + 1), words(quad + 2, quad + 3));
                let qwords = [
                    _mm256_extract_epi64::<0>(bytes),
                    _mm256_extract_epi64::<2>(bytes),
                    _mm256_extract_epi64::<1>(bytes),
                    _mm256_extract_epi64::<3>(bytes),
                ];
                for (r, q) in qwords.into_iter().enumerate() {
                    out[(quad + r) * stride..][..8].copy_from_slice(&q.to_le_bytes());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 inverse DCT equals the portable one on random blocks, from sparse to full and
    /// from small to extreme coefficients and quantizers.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn idct_versions_agree() {
        if crate::decode::jpeg::skip_without_avx2() {
            return;
        }
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || crate::xorshift(&mut state);
        for round in 0..20_000 {
            let magnitude = [8, 64, 1024, 32768][round % 4];
            let density = [1, 4, 16, 64][round / 4 % 4];
            let block: Block = std::array::from_fn(|_| {
                let r = next();
                if r % 64 < density {
                    let v = ((r >> 16) % (2 * magnitude)) as i64 - magnitude as i64;
                    v.clamp(i16::MIN as i64, i16::MAX as i64) as i16
                } else {
                    0
                }
            });
            let quant: [i16; 64] = std::array::from_fn(|_| {
                if round % 7 == 0 { (next() >> 20) as i16 } else { 1 + (next() % 100) as i16 }
            });
            let (mut expected, mut got) = ([0u8; 8 * 11], [0u8; 8 * 11]);
            idct_scalar(&block, &quant, &mut expected, 11);
            // SAFETY: AVX2 checked above.
            unsafe { avx2::idct(&block, &quant, &mut got, 11) };
            assert_eq!(got, expected, "round {round}: {block:?} {quant:?}");
        }
    }

    /// The SSE2 4 x 4 reduced transform gives the portable one's samples, give or take the
    /// rounding of exact halves (one level).
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn reduced_versions_agree() {
        let reduced = Reduced::new(4);
        let mut state = 0x0123_4567_89ab_cdefu64;
        for round in 0..5_000 {
            let block: Block = std::array::from_fn(|_| {
                let r = crate::xorshift(&mut state);
                if r.is_multiple_of(3) { ((r >> 20) % 512) as i16 - 256 } else { 0 }
            });
            let quant: [i16; 64] = std::array::from_fn(|i| 1 + (i as i16 * 7 + round as i16) % 60);
            let (mut expected, mut got) = ([0u8; 4 * 9], [0u8; 4 * 9]);
            reduced.transform_k::<4>(&block, &quant, &mut expected, 9);
            reduced.transform_4x4_sse2(&block, &quant, &mut got, 9);
            for (a, b) in got.iter().zip(&expected) {
                assert!(a.abs_diff(*b) <= 1, "round {round}: {got:?} vs {expected:?}");
            }
        }
    }
}
