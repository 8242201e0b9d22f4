//! libjpeg's accurate integer inverse DCT (`jpeg_idct_islow` in `jidctint.c`): 13-bit
//! constants, two extra bits between the passes, the same integer sums, so the same samples.
//!
//! Like libjpeg-turbo's SIMD code (which Pillow runs), both versions here hold the dequantized
//! coefficients and the results of the first pass in 16 bits: a product `coefficient ·
//! quantizer` wraps, a first-pass result saturates, and a sample outside 0..=255 saturates.
//! None of that happens on data an encoder writes from 8-bit samples (there the sums are the C
//! code's exactly); it only pins down what garbage coefficients give. (libjpeg-turbo's SIMD
//! code also adds some inputs in 16 bits inside each pass, which can wrap on such garbage; that
//! is not copied, so on it the two may still differ.)

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
/// and odd parts (`tmp10 + tmp3`, `tmp11 + tmp2`, ... in its output order 0..8). With 16-bit
/// inputs every sum fits in 32 bits.
#[cfg_attr(all(target_arch = "x86_64", not(test)), allow(dead_code, reason = "tests' reference"))]
#[inline(always)]
fn butterfly(x: [i32; 8]) -> [i32; 8] {
    // Even part.
    let (z2, z3) = (x[2], x[6]);
    let z1 = (z2 + z3) * FIX_0_541196100;
    let tmp2 = z1 + z3 * -FIX_1_847759065;
    let tmp3 = z1 + z2 * FIX_0_765366865;
    let tmp0 = (x[0] + x[4]) << CONST_BITS;
    let tmp1 = (x[0] - x[4]) << CONST_BITS;
    let (tmp10, tmp13) = (tmp0 + tmp3, tmp0 - tmp3);
    let (tmp11, tmp12) = (tmp1 + tmp2, tmp1 - tmp2);
    // Odd part.
    let (t0, t1, t2, t3) = (x[7], x[5], x[3], x[1]);
    let (z1, z2, z3, z4) = (t0 + t3, t1 + t2, t0 + t2, t1 + t3);
    let z5 = (z3 + z4) * FIX_1_175875602;
    let (t0, t1) = (t0 * FIX_0_298631336, t1 * FIX_2_053119869);
    let (t2, t3) = (t2 * FIX_3_072711026, t3 * FIX_1_501321110);
    let (z1, z2) = (z1 * -FIX_0_899976223, z2 * -FIX_2_562915447);
    let (z3, z4) = (z3 * -FIX_1_961570560 + z5, z4 * -FIX_0_390180644 + z5);
    let t0 = t0 + z1 + z3;
    let t1 = t1 + z2 + z4;
    let t2 = t2 + z2 + z3;
    let t3 = t3 + z1 + z4;
    [tmp10 + t3, tmp11 + t2, tmp12 + t1, tmp13 + t0, tmp13 - t0, tmp12 - t1, tmp11 - t2, tmp10 - t3]
}

/// `(x + 2^(bits-1)) >> bits`, libjpeg's `DESCALE`.
#[inline(always)]
fn descale(x: i32, bits: u32) -> i32 {
    (x + (1 << (bits - 1))) >> bits
}

/// A dequantized coefficient, held in 16 bits.
#[inline(always)]
fn dequantize(coefficient: i16, quantizer: i16) -> i32 {
    coefficient.wrapping_mul(quantizer) as i32
}

/// A first-pass result, saturated to 16 bits.
#[inline(always)]
fn pass1(v: i32) -> i32 {
    descale(v, CONST_BITS - PASS1_BITS).clamp(i16::MIN as i32, i16::MAX as i32)
}

/// A sample from a second-pass result.
#[inline(always)]
fn sample(v: i32) -> u8 {
    (descale(v, CONST_BITS + PASS1_BITS + 3) + 128).clamp(0, 255) as u8
}

/// The inverse DCT of `block` dequantized by `quant` into 8 rows of 8 samples at
/// `out[row * stride..]`: SSE2 on x86-64 (every such CPU has it), else portable.
#[inline]
pub(super) fn idct(block: &Block, quant: &[i16; 64], out: &mut [u8], stride: usize) {
    #[cfg(target_arch = "x86_64")]
    return sse2::idct(block, quant, out, stride);
    #[cfg(not(target_arch = "x86_64"))]
    idct_scalar(block, quant, out, stride);
}

/// [`idct`], portable version (the reference for the SSE2 one).
#[cfg_attr(all(target_arch = "x86_64", not(test)), allow(dead_code, reason = "tests' reference"))]
pub(super) fn idct_scalar(block: &Block, quant: &[i16; 64], out: &mut [u8], stride: usize) {
    let mut ws = [0i32; 64];
    for col in 0..8 {
        let x: [i32; 8] =
            std::array::from_fn(|k| dequantize(block[k * 8 + col], quant[k * 8 + col]));
        for (k, v) in butterfly(x).into_iter().enumerate() {
            ws[k * 8 + col] = pass1(v);
        }
    }
    for row in 0..8 {
        let x: [i32; 8] = std::array::from_fn(|k| ws[row * 8 + k]);
        let line = &mut out[row * stride..][..8];
        for (o, v) in line.iter_mut().zip(butterfly(x)) {
            *o = sample(v);
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
    /// `columns[u][x] = basis[x][u]`.
    columns: [[f32; 4]; 4],
    /// `splat[y][v]`: `basis[y][v]` four times (a register's worth for the second pass).
    #[cfg(target_arch = "x86_64")]
    splat: [[[f32; 4]; 4]; 4],
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
        let columns = std::array::from_fn(|u| std::array::from_fn(|x| basis[x][u]));
        Reduced {
            k,
            basis,
            columns,
            #[cfg(target_arch = "x86_64")]
            splat: basis.map(|row| row.map(|b| [b; 4])),
        }
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
            let columns: [__m128; 4] = self.columns.map(|c| _mm_loadu_ps(c.as_ptr()));
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
                    let b = _mm_loadu_ps(self.splat[y][v].as_ptr());
                    acc = _mm_add_ps(acc, _mm_mul_ps(b, *t));
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
        let columns = &self.columns;
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
pub(super) mod sse2 {
    //! Eight columns (then eight rows) of 16-bit values in one register. Each pair of
    //! multiplications that libjpeg adds is one `_mm_madd_epi16` on interleaved inputs, with
    //! libjpeg's constants combined (`z1 = (z2 + z3) · c` distributed over `z2` and `z3`, and
    //! so on): the same integer sums, which fit in 32 bits for any 16-bit inputs.

    use std::arch::x86_64::*;

    use super::{
        Block, CONST_BITS, FIX_0_298631336 as F0298, FIX_0_390180644 as F0390,
        FIX_0_541196100 as F0541, FIX_0_765366865 as F0765, FIX_0_899976223 as F0899,
        FIX_1_175875602 as F1175, FIX_1_501321110 as F1501, FIX_1_847759065 as F1847,
        FIX_1_961570560 as F1961, FIX_2_053119869 as F2053, FIX_2_562915447 as F2562,
        FIX_3_072711026 as F3072, PASS1_BITS,
    };

    /// A pair of 16-bit weights `(a, b)` for `_mm_madd_epi16` on `(x, y)` pairs: `a·x + b·y`.
    #[inline(always)]
    fn pair(a: i32, b: i32) -> __m128i {
        // SAFETY: SSE2 is part of x86-64.
        unsafe { _mm_set1_epi32((a & 0xffff) | (b << 16)) }
    }

    /// Both halves (lanes 0..4 and 4..8) of a 32-bit result.
    #[derive(Clone, Copy)]
    struct Wide(__m128i, __m128i);

    impl Wide {
        #[inline(always)]
        fn add(self, o: Wide) -> Wide {
            // SAFETY: SSE2 is part of x86-64.
            unsafe { Wide(_mm_add_epi32(self.0, o.0), _mm_add_epi32(self.1, o.1)) }
        }
        #[inline(always)]
        fn sub(self, o: Wide) -> Wide {
            // SAFETY: as in `add`.
            unsafe { Wide(_mm_sub_epi32(self.0, o.0), _mm_sub_epi32(self.1, o.1)) }
        }
    }

    /// `a·x + b·y` lane by lane, in 32 bits.
    #[inline(always)]
    fn madd(x: __m128i, y: __m128i, a: i32, b: i32) -> Wide {
        // SAFETY: SSE2 is part of x86-64.
        unsafe {
            let w = pair(a, b);
            Wide(
                _mm_madd_epi16(_mm_unpacklo_epi16(x, y), w),
                _mm_madd_epi16(_mm_unpackhi_epi16(x, y), w),
            )
        }
    }

    /// `a·x + b·y + c·z + d·w`.
    #[inline(always)]
    fn madd4(x: [__m128i; 4], c: [i32; 4]) -> Wide {
        madd(x[0], x[1], c[0], c[1]).add(madd(x[2], x[3], c[2], c[3]))
    }

    /// [`super::butterfly`] on eight lanes of 16-bit inputs.
    #[inline(always)]
    fn butterfly(x: [__m128i; 8]) -> [Wide; 8] {
        let one = 1 << CONST_BITS;
        // Even part: tmp0, tmp1 = (x0 ± x4) << 13; tmp3, tmp2 from z1 = (x2 + x6) · F0541.
        let tmp0 = madd(x[0], x[4], one, one);
        let tmp1 = madd(x[0], x[4], one, -one);
        let tmp3 = madd(x[2], x[6], F0541 + F0765, F0541);
        let tmp2 = madd(x[2], x[6], F0541, F0541 - F1847);
        let (tmp10, tmp13) = (tmp0.add(tmp3), tmp0.sub(tmp3));
        let (tmp11, tmp12) = (tmp1.add(tmp2), tmp1.sub(tmp2));
        // Odd part, each output a sum over (t0, t1, t2, t3) = (x7, x5, x3, x1).
        let t = [x[7], x[5], x[3], x[1]];
        let t0 = madd4(t, [F0298 - F0899 - F1961 + F1175, F1175, F1175 - F1961, F1175 - F0899]);
        let t1 = madd4(t, [F1175, F2053 - F2562 - F0390 + F1175, F1175 - F2562, F1175 - F0390]);
        let t2 = madd4(t, [F1175 - F1961, F1175 - F2562, F3072 - F2562 - F1961 + F1175, F1175]);
        let t3 = madd4(t, [F1175 - F0899, F1175 - F0390, F1175, F1501 - F0899 - F0390 + F1175]);
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

    /// `(v + round) >> SHIFT` on both halves, saturated to 16 bits.
    #[inline(always)]
    fn narrow<const SHIFT: i32>(v: Wide, round: i32) -> __m128i {
        // SAFETY: SSE2 is part of x86-64.
        unsafe {
            let r = _mm_set1_epi32(round);
            _mm_packs_epi32(
                _mm_srai_epi32::<SHIFT>(_mm_add_epi32(v.0, r)),
                _mm_srai_epi32::<SHIFT>(_mm_add_epi32(v.1, r)),
            )
        }
    }

    /// Transposes 8 rows of 8 16-bit lanes: three rounds interleaving 16-, 32- and 64-bit
    /// lanes of registers `step` = 1, 2, 4 apart.
    #[inline(always)]
    fn transpose(r: [__m128i; 8]) -> [__m128i; 8] {
        #[inline(always)]
        fn round(
            r: [__m128i; 8],
            step: usize,
            unpack: impl Fn(__m128i, __m128i) -> [__m128i; 2],
        ) -> [__m128i; 8] {
            let mut out = r;
            for (p, i) in (0..8).filter(|i| i & step == 0).enumerate() {
                [out[2 * p], out[2 * p + 1]] = unpack(r[i], r[i + step]);
            }
            out
        }
        // SAFETY (closures): SSE2 is part of x86-64.
        let r = round(r, 1, |a, b| unsafe { [_mm_unpacklo_epi16(a, b), _mm_unpackhi_epi16(a, b)] });
        let r = round(r, 2, |a, b| unsafe { [_mm_unpacklo_epi32(a, b), _mm_unpackhi_epi32(a, b)] });
        round(r, 4, |a, b| unsafe { [_mm_unpacklo_epi64(a, b), _mm_unpackhi_epi64(a, b)] })
    }

    /// [`super::idct_scalar`] in SSE2; a block whose AC coefficients are all zero takes
    /// libjpeg's own shortcut (a flat block, the value the full sums give).
    pub(in super::super) fn idct(block: &Block, quant: &[i16; 64], out: &mut [u8], stride: usize) {
        assert!(out.len() >= 7 * stride + 8);
        // SAFETY: SSE2 is part of x86-64; every load reads 8 of the 64 coefficients or
        // quantizers, every store 8 bytes of a row the assert keeps inside `out`.
        unsafe {
            let load = |p: &[i16; 64], k: usize| _mm_loadu_si128(p.as_ptr().add(k * 8).cast());
            let rows: [__m128i; 8] = std::array::from_fn(|k| load(block, k));
            let mut ac = _mm_or_si128(
                _mm_or_si128(_mm_or_si128(rows[1], rows[2]), _mm_or_si128(rows[3], rows[4])),
                _mm_or_si128(_mm_or_si128(rows[5], rows[6]), rows[7]),
            );
            // Row 0 without its first lane, the DC.
            ac = _mm_or_si128(ac, _mm_srli_si128::<2>(rows[0]));
            if _mm_movemask_epi8(_mm_cmpeq_epi16(ac, _mm_setzero_si128())) == 0xffff {
                let dc = super::dequantize(block[0], quant[0]);
                let v = super::sample(super::pass1(dc << CONST_BITS) << CONST_BITS);
                for r in 0..8 {
                    out[r * stride..][..8].fill(v);
                }
                return;
            }
            // Pass 1: lanes are columns; dequantized in 16 bits.
            let x: [__m128i; 8] = std::array::from_fn(|k| _mm_mullo_epi16(rows[k], load(quant, k)));
            const SHIFT1: i32 = (CONST_BITS - PASS1_BITS) as i32;
            let ws = butterfly(x).map(|v| narrow::<SHIFT1>(v, 1 << (SHIFT1 - 1)));
            // Pass 2: lanes are rows; the 128 of the samples rides in the rounding term.
            const SHIFT2: i32 = (CONST_BITS + PASS1_BITS + 3) as i32;
            let round = (1 << (SHIFT2 - 1)) + (128 << SHIFT2);
            let y = butterfly(transpose(ws)).map(|v| narrow::<SHIFT2>(v, round));
            let rows = transpose(y);
            for pair in 0..4 {
                let bytes = _mm_packus_epi16(rows[2 * pair], rows[2 * pair + 1]);
                let (a, b) = out.split_at_mut((2 * pair + 1) * stride);
                _mm_storel_epi64(a[2 * pair * stride..][..8].as_mut_ptr().cast(), bytes);
                _mm_storel_epi64(b[..8].as_mut_ptr().cast(), _mm_unpackhi_epi64(bytes, bytes));
            }
        }
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// The SSE2 inverse DCT equals the portable one on random blocks, from sparse to full and
    /// from small to extreme coefficients and quantizers.
    #[test]
    fn idct_versions_agree() {
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
            sse2::idct(&block, &quant, &mut got, 11);
            assert_eq!(got, expected, "round {round}: {block:?} {quant:?}");
        }
    }

    /// The SSE2 4 x 4 reduced transform gives the portable one's samples, give or take the
    /// rounding of exact halves (one level).
    #[test]
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
