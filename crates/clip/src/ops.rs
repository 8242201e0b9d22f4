//! Fused CPU kernels for the hot element-wise steps, with portable candle fallbacks.
//!
//! candle's generic versions run several allocating passes with a scalar `exp`; these run one
//! pass in place over a freshly computed tensor, with an `exp` the compiler vectorizes (AVX2
//! or AVX-512 chosen at run time), and softmax over short rows in AVX-512 registers.

use candle_core::{CpuStorage, DType, InplaceOp1, Layout, Result, Tensor, bail};
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
pub(crate) mod short_softmax;

/// `x · sigmoid(1.702 x)`. `x` must be a fresh tensor whose storage nobody else shares: on CPU
/// f32 it is overwritten in place.
pub(crate) fn quick_gelu(x: Tensor) -> Result<Tensor> {
    if fast_path(&x) {
        x.inplace_op1(&QuickGelu)?;
        return Ok(x);
    }
    let gate = candle_nn::ops::sigmoid(&(&x * 1.702)?)?;
    x * gate
}

/// Softmax over the last dimension, computed in f32. `x` must be a fresh tensor whose storage
/// nobody else shares: on CPU f32 it is overwritten in place.
pub(crate) fn softmax_last_dim(x: Tensor) -> Result<Tensor> {
    if fast_path(&x) {
        let row = x.dim(candle_core::D::Minus1)?;
        x.inplace_op1(&SoftmaxLastDim { row })?;
        return Ok(x);
    }
    let dtype = x.dtype();
    candle_nn::ops::softmax_last_dim(&x.to_dtype(DType::F32)?)?.to_dtype(dtype)
}

fn fast_path(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32 && x.is_contiguous()
}

fn f32_slice<'a>(storage: &'a mut CpuStorage, layout: &Layout, op: &str) -> Result<&'a mut [f32]> {
    let CpuStorage::F32(data) = storage else { bail!("{op} expects f32") };
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("{op} expects a contiguous tensor")
    };
    Ok(&mut data[start..end])
}

struct QuickGelu;

impl InplaceOp1 for QuickGelu {
    fn name(&self) -> &'static str {
        "quick-gelu"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let data = f32_slice(storage, layout, self.name())?;
        data.par_chunks_mut(16 * 1024).for_each(kernels::quick_gelu);
        Ok(())
    }
}

struct SoftmaxLastDim {
    row: usize,
}

impl InplaceOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "softmax-last-dim"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let data = f32_slice(storage, layout, self.name())?;
        if self.row == 0 {
            return Ok(());
        }
        let row = self.row;
        data.par_chunks_mut(32 * row).for_each(|rows| kernels::softmax_rows(rows, row));
        Ok(())
    }
}

/// Slice kernels, compiled three times: for the baseline target, for AVX2 + FMA and for
/// AVX-512F, picked at run time. All compile the same Rust without contracting multiply-adds,
/// and reductions keep their own lane order, so they agree bit for bit.
pub(crate) mod kernels {
    macro_rules! dispatch {
        ($(#[$doc:meta])* $name:ident, $body:ident, $avx2:ident, $avx512:ident, ($($arg:ident: $ty:ty),*)) => {
            $(#[$doc])*
            pub(crate) fn $name($($arg: $ty),*) {
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports AVX-512F, checked just above.
                    unsafe { $avx512($($arg),*) };
                    return;
                }
                #[cfg(target_arch = "x86_64")]
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU supports AVX2 and FMA, checked just above.
                    unsafe { $avx2($($arg),*) };
                    return;
                }
                $body($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            pub(super) fn $avx2($($arg: $ty),*) {
                $body($($arg),*)
            }

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f")]
            pub(super) fn $avx512($($arg: $ty),*) {
                $body($($arg),*)
            }
        };
    }

    dispatch!(
        /// `x · sigmoid(1.702 x)` in place.
        quick_gelu, quick_gelu_portable, quick_gelu_avx2, quick_gelu_avx512, (xs: &mut [f32])
    );
    dispatch!(
        /// Exact (erf) GELU in place.
        gelu_erf, gelu_erf_portable, gelu_erf_avx2, gelu_erf_avx512, (xs: &mut [f32])
    );
    dispatch!(
        /// Tanh-approximated GELU in place.
        gelu_tanh, gelu_tanh_portable, gelu_tanh_avx2, gelu_tanh_avx512, (xs: &mut [f32])
    );
    dispatch!(
        /// Softmax of one row in place.
        softmax, softmax_portable, softmax_avx2, softmax_avx512, (row: &mut [f32])
    );
    dispatch!(
        /// `dst += row`, element by element (a bias added to one row of a product).
        add, add_portable, add_avx2, add_avx512, (dst: &mut [f32], row: &[f32])
    );
    dispatch!(
        /// Layer norm of one row: `out = (x - mean) / sqrt(var + eps) · weight + bias`.
        layer_norm,
        layer_norm_portable,
        layer_norm_avx2,
        layer_norm_avx512,
        (x: &[f32], out: &mut [f32], weight: &[f32], bias: &[f32], eps: f32)
    );

    /// Softmax of each row of `row` values of `data` in place, as [`softmax`] of each: rows
    /// of up to 64 values in registers on AVX-512F ([`super::short_softmax`]).
    pub(crate) fn softmax_rows(data: &mut [f32], row: usize) {
        #[cfg(target_arch = "x86_64")]
        if (1..=super::short_softmax::MAX_ROW).contains(&row) && super::short_softmax::available() {
            // SAFETY: the CPU has AVX-512F, checked just above.
            unsafe { super::short_softmax::softmax_rows(data, row) };
            return;
        }
        data.chunks_exact_mut(row).for_each(softmax);
    }

    /// Independent accumulators of [`sum`] and [`max`]: two zmm or four ymm registers, so
    /// that the adds of a row of a few hundred values do not wait on each other, as they did
    /// on one chain of 8 lanes.
    const LANES: usize = 32;

    /// Sum with `LANES` independent accumulators, so that it vectorizes; the accumulators are
    /// then added as a tree (not a chain of `LANES` dependent adds), then the remainder.
    #[inline(always)]
    pub(crate) fn sum(xs: &[f32]) -> f32 {
        let mut acc = [0.0f32; LANES];
        let mut chunks = xs.chunks_exact(LANES);
        for c in &mut chunks {
            for j in 0..LANES {
                acc[j] += c[j];
            }
        }
        let mut width = LANES / 2;
        while width > 0 {
            for j in 0..width {
                acc[j] += acc[j + width];
            }
            width /= 2;
        }
        acc[0] + chunks.remainder().iter().sum::<f32>()
    }

    #[inline(always)]
    pub(crate) fn layer_norm_portable(
        x: &[f32],
        out: &mut [f32],
        weight: &[f32],
        bias: &[f32],
        eps: f32,
    ) {
        let n = x.len() as f32;
        let mean = sum(x) / n;
        for (o, &v) in out.iter_mut().zip(x) {
            *o = (v - mean) * (v - mean);
        }
        let inv = 1.0 / (sum(out) / n + eps).sqrt();
        for (((o, &v), &w), &b) in out.iter_mut().zip(x).zip(weight).zip(bias) {
            *o = (v - mean) * inv * w + b;
        }
    }

    #[inline(always)]
    pub(crate) fn add_portable(dst: &mut [f32], row: &[f32]) {
        for (d, &r) in dst.iter_mut().zip(row) {
            *d += r;
        }
    }

    #[inline(always)]
    pub(crate) fn gelu_erf_portable(xs: &mut [f32]) {
        for x in xs.iter_mut() {
            let v = *x;
            *x = 0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2));
        }
    }

    #[inline(always)]
    pub(crate) fn gelu_tanh_portable(xs: &mut [f32]) {
        const C: f32 = 0.797_884_6; // sqrt(2 / pi)
        for x in xs.iter_mut() {
            let v = *x;
            let z = C * (v + 0.044_715 * v * v * v);
            let tanh = 1.0 - 2.0 / (exp(2.0 * z) + 1.0);
            *x = 0.5 * v * (1.0 + tanh);
        }
    }

    /// `erf` within 1.5e-7 (Abramowitz & Stegun 7.1.26).
    #[inline(always)]
    pub(crate) fn erf(x: f32) -> f32 {
        let a = x.abs();
        let t = 1.0 / (1.0 + 0.327_591_1 * a);
        let mut p = 1.061_405_4;
        p = p * t - 1.453_152_1;
        p = p * t + 1.421_413_8;
        p = p * t - 0.284_496_72;
        p = p * t + 0.254_829_6;
        let y = 1.0 - p * t * exp(-a * a);
        if x < 0.0 { -y } else { y }
    }

    #[inline(always)]
    pub(crate) fn quick_gelu_portable(xs: &mut [f32]) {
        for x in xs.iter_mut() {
            let v = *x;
            *x = v / (1.0 + exp(-1.702 * v));
        }
    }

    /// The largest value (NaN ignored; -inf when there is none) with `LANES` independent
    /// maxima, so that it vectorizes, folded as a tree.
    #[inline(always)]
    pub(crate) fn max(xs: &[f32]) -> f32 {
        let larger = |a: f32, b: f32| if b > a { b } else { a };
        let mut lanes = [f32::NEG_INFINITY; LANES];
        let mut chunks = xs.chunks_exact(LANES);
        for c in &mut chunks {
            for j in 0..LANES {
                lanes[j] = larger(lanes[j], c[j]);
            }
        }
        let mut width = LANES / 2;
        while width > 0 {
            for j in 0..width {
                lanes[j] = larger(lanes[j], lanes[j + width]);
            }
            width /= 2;
        }
        // The tail through the same comparison as the lanes (the same maximum: NaN never
        // reaches them). `f32::max` adds a compare and a blend to each step of the chain:
        // softmax over rows of 50 values, a small model's tokens, was 17% slower so.
        chunks.remainder().iter().fold(lanes[0], |m, &v| larger(m, v))
    }

    #[inline(always)]
    pub(crate) fn softmax_portable(row: &mut [f32]) {
        let m = max(row);
        for v in row.iter_mut() {
            *v = exp(*v - m);
        }
        let inv = 1.0 / sum(row);
        for v in row.iter_mut() {
            *v *= inv;
        }
    }

    /// `e^x` within 2 ulp over the f32 range, as straight-line code that vectorizes (Cephes
    /// `expf`: range reduction by `ln 2`, degree-6 polynomial, exponent built from bits).
    /// Clamps to `[-87, 88]`, so `exp` of very negative inputs is ~1.6e-38, not 0.
    ///
    /// The multiply-adds are fused (`mul_add`): one FMA instruction each in the AVX2 and
    /// AVX-512 builds, which made `quick_gelu` over 1,024 values 25-33% faster on a Xeon with
    /// AVX-512 (the exp is most of softmax and of the activations). The portable build gets
    /// the same bits: where the CPU has no FMA, `mul_add` is libm's correctly rounded `fmaf`.
    #[inline(always)]
    pub(crate) fn exp(x: f32) -> f32 {
        const LOG2E: f32 = std::f32::consts::LOG2_E;
        const LN2_HI: f32 = 0.693_359_4;
        const LN2_LO: f32 = -2.121_944_4e-4;
        // 1.5 · 2^23: adding it rounds to an integer held in the low mantissa bits.
        const ROUND: f32 = 12_582_912.0;
        let x = if x < -87.0 { -87.0 } else { x };
        let x = if x > 88.0 { 88.0 } else { x };
        let t = x.mul_add(LOG2E, ROUND);
        let n = t - ROUND;
        let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
        let mut p: f32 = 1.987_569_1e-4;
        p = p.mul_add(r, 1.398_199_9e-3);
        p = p.mul_add(r, 8.333_452e-3);
        p = p.mul_add(r, 4.166_579_6e-2);
        p = p.mul_add(r, 0.166_666_65);
        p = p.mul_add(r, 0.5);
        let y = p.mul_add(r * r, r) + 1.0;
        let exponent = t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23;
        y * f32::from_bits(exponent)
    }
}

#[cfg(test)]
mod tests {
    use super::kernels::{exp, gelu_erf, gelu_tanh, layer_norm};
    use super::*;

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = f64::from(x).exp();
            let got = f64::from(exp(x));
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) < 1e-37 && exp(-1000.0) >= 0.0);
        assert!(exp(1000.0).is_finite());
    }

    #[test]
    fn erf_and_gelus_are_accurate() {
        let xs = sample(2001);
        let (mut erf_gelu, mut tanh_gelu) = (xs.clone(), xs.clone());
        gelu_erf(&mut erf_gelu);
        gelu_tanh(&mut tanh_gelu);
        for ((&x, &e), &t) in xs.iter().zip(&erf_gelu).zip(&tanh_gelu) {
            let x = f64::from(x);
            let c = (2.0 / std::f64::consts::PI).sqrt();
            let want_tanh = 0.5 * x * (1.0 + (c * (x + 0.044715 * x.powi(3))).tanh());
            assert!((f64::from(t) - want_tanh).abs() < 1e-5, "gelu_tanh({x}) = {t}");
            let want_erf = 0.5 * x * (1.0 + erf64(x / 2f64.sqrt()));
            assert!((f64::from(e) - want_erf).abs() < 1e-5, "gelu_erf({x}) = {e}");
        }
    }

    /// erf by its Taylor series below 4 (cancellation costs < 1e-9 there), ±1 beyond
    /// (1 - erf(4) < 2e-8).
    fn erf64(x: f64) -> f64 {
        if x.abs() >= 4.0 {
            return x.signum();
        }
        let (mut term, mut total, mut n) = (x, x, 0.0);
        while term.abs() > 1e-17 {
            n += 1.0;
            term *= -x * x / n;
            total += term / (2.0 * n + 1.0);
        }
        total * 2.0 / std::f64::consts::PI.sqrt()
    }

    #[test]
    fn layer_norm_matches_candle() -> Result<()> {
        let dev = candle_core::Device::Cpu;
        let x = sample(3 * 37);
        let w: Vec<f32> = (0..37).map(|i| 1.0 + i as f32 / 50.0).collect();
        let b: Vec<f32> = (0..37).map(|i| i as f32 / 10.0 - 1.0).collect();
        let mut got = vec![0.0; x.len()];
        for (o, r) in got.chunks_exact_mut(37).zip(x.chunks_exact(37)) {
            layer_norm(r, o, &w, &b, 1e-5);
        }
        let want = candle_nn::ops::layer_norm(
            &Tensor::from_vec(x, (3, 37), &dev)?,
            &Tensor::new(w.as_slice(), &dev)?,
            &Tensor::new(b.as_slice(), &dev)?,
            1e-5,
        )?;
        let diff = (want - Tensor::from_vec(got, (3, 37), &dev)?)?.abs()?.max_all()?;
        assert!(diff.to_scalar::<f32>()? < 1e-5);
        Ok(())
    }

    fn sample(n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 37.0).collect()
    }

    #[cfg(target_arch = "x86_64")]
    type InPlace = fn(&mut [f32]);
    #[cfg(target_arch = "x86_64")]
    type LayerNorm = fn(&[f32], &mut [f32], &[f32], &[f32], f32);
    #[cfg(target_arch = "x86_64")]
    type Add = fn(&mut [f32], &[f32]);

    /// One build of every kernel against the portable build on the same inputs, bit for bit,
    /// at lengths with tails past 8 and 16 lanes.
    #[cfg(target_arch = "x86_64")]
    fn assert_build_matches_portable(
        build: &str,
        in_place: [(&str, InPlace); 4],
        layer_norm_built: LayerNorm,
        add_built: Add,
    ) {
        use super::kernels::*;
        let portable: [InPlace; 4] =
            [quick_gelu_portable, gelu_erf_portable, gelu_tanh_portable, softmax_portable];
        for len in [1, 7, 8, 15, 16, 37, 1037] {
            let x = sample(len);
            for ((name, built), portable) in in_place.iter().zip(portable) {
                let (mut a, mut b) = (x.clone(), x.clone());
                portable(&mut a);
                built(&mut b);
                assert!(
                    a.iter().zip(&b).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{build} {name} {len}"
                );
            }
            let w: Vec<f32> = (0..len).map(|i| 1.0 + i as f32 / 50.0).collect();
            let bias: Vec<f32> = (0..len).map(|i| i as f32 / 10.0 - 1.0).collect();
            let (mut a, mut b) = (vec![0.0; len], vec![0.0; len]);
            layer_norm_portable(&x, &mut a, &w, &bias, 1e-5);
            layer_norm_built(&x, &mut b, &w, &bias, 1e-5);
            assert!(
                a.iter().zip(&b).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{build} layer_norm {len}"
            );
            let (mut a, mut b) = (x.clone(), x.clone());
            add_portable(&mut a, &bias);
            add_built(&mut b, &bias);
            assert!(a.iter().zip(&b).all(|(a, b)| a.to_bits() == b.to_bits()), "{build} add {len}");
            assert!(a.iter().zip(&x).zip(&bias).all(|((a, x), b)| *a == x + b), "add {len}");
        }
    }

    /// Every AVX2 + FMA kernel against its portable version; skipped on a CPU without them.
    #[test]
    fn avx2_kernels_match_portable_bit_for_bit() {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            use super::kernels::*;
            // SAFETY (each): the CPU has AVX2 and FMA, checked above.
            assert_build_matches_portable(
                "avx2",
                [
                    ("quick_gelu", |x| unsafe { quick_gelu_avx2(x) }),
                    ("gelu_erf", |x| unsafe { gelu_erf_avx2(x) }),
                    ("gelu_tanh", |x| unsafe { gelu_tanh_avx2(x) }),
                    ("softmax", |x| unsafe { softmax_avx2(x) }),
                ],
                |x, o, w, b, eps| unsafe { layer_norm_avx2(x, o, w, b, eps) },
                |d, r| unsafe { add_avx2(d, r) },
            );
            return;
        }
        eprintln!("skipped avx2_kernels_match_portable_bit_for_bit: this CPU lacks AVX2 or FMA");
    }

    /// Every AVX-512F kernel against its portable version; skipped on a CPU without AVX-512F.
    #[test]
    fn avx512_kernels_match_portable_bit_for_bit() {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            use super::kernels::*;
            // SAFETY (each): the CPU has AVX-512F, checked above.
            assert_build_matches_portable(
                "avx512",
                [
                    ("quick_gelu", |x| unsafe { quick_gelu_avx512(x) }),
                    ("gelu_erf", |x| unsafe { gelu_erf_avx512(x) }),
                    ("gelu_tanh", |x| unsafe { gelu_tanh_avx512(x) }),
                    ("softmax", |x| unsafe { softmax_avx512(x) }),
                ],
                |x, o, w, b, eps| unsafe { layer_norm_avx512(x, o, w, b, eps) },
                |d, r| unsafe { add_avx512(d, r) },
            );
            return;
        }
        eprintln!("skipped avx512_kernels_match_portable_bit_for_bit: this CPU lacks AVX-512F");
    }

    #[test]
    fn fused_ops_match_candle() -> Result<()> {
        let dev = candle_core::Device::Cpu;
        let x = Tensor::from_vec(sample(6 * 257), (6, 257), &dev)?;
        let want = (&x * candle_nn::ops::sigmoid(&(&x * 1.702)?)?)?;
        let got = super::quick_gelu(x.copy()?)?;
        let diff = (want - got)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "quick_gelu differs by {diff}");
        let want = candle_nn::ops::softmax_last_dim(&x)?;
        let got = super::softmax_last_dim(x.copy()?)?;
        let diff = (want - got)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-6, "softmax differs by {diff}");
        Ok(())
    }
}
