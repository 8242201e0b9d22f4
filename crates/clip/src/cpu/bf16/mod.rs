//! Matrix products on bf16 operands with f32 accumulation, for the CPU encoder's `--dtype bf16`.
//!
//! What `torch.autocast("cpu", bfloat16)` does to a linear layer: both operands rounded to
//! bf16 (round to nearest even), products summed in f32. The weights are rounded and packed
//! once at load ([`PackedWeight`]); the activations are rounded into a padded buffer
//! ([`Activations`]) before each product. Everything else in the encoder stays f32.
//!
//! Two kernels share one packed layout, chosen at run time by [`Kernel::detect`]:
//! - [`Kernel::Amx`]: AMX tiles (`tdpbf16ps`, Intel Sapphire Rapids and later), after the
//!   Linux permission request for tile data;
//! - [`Kernel::Avx512Bf16`]: `vdpbf16ps` on zmm registers (AMD Zen 4/5, Intel Cooper Lake).
//!
//! Where `vdpbf16ps` does fewer multiply-adds a second than the f32 FMA, the encoder takes
//! [`Route::Fma`] instead: the same rounded operands through its f32 products.
//!
//! A CPU with neither kernel has no bf16 path: [`Kernel::detect`] says why.

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod softmax_panel;

use rayon::prelude::*;

use super::aligned::AlignedU16;

/// Rows and columns of one output block, and K of one step: the AMX tile shape, 2 × 2 tiles.
const BLOCK: usize = 32;
/// Columns of one packed panel (one AMX tile, one zmm register of f32).
const PANEL: usize = 16;
/// K values of one packed step: 16 pairs.
const STEP: usize = 32;
/// u16 values in one packed panel step: 16 pair-rows of 16 columns × 2.
const PANEL_STEP: usize = PANEL * STEP;

/// Why a CPU has no bf16 kernel.
pub(crate) const NO_KERNEL: &str =
    "this CPU has neither AMX-BF16 nor AVX512-BF16, the bf16 matrix instructions";

/// A bf16 matrix-product kernel this CPU runs (none but on x86-64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) enum Kernel {
    /// AMX-BF16 tiles.
    Amx,
    /// AVX512-BF16 `vdpbf16ps`.
    Avx512Bf16,
}

impl Kernel {
    /// The fastest kernel this CPU and OS allow, or why there is none.
    pub(crate) fn detect() -> Result<Kernel, &'static str> {
        Kernel::available().first().copied().ok_or(NO_KERNEL)
    }

    /// Every kernel this CPU and OS allow, fastest first.
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    pub(crate) fn available() -> Vec<Kernel> {
        let mut all = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if amx::available() {
                all.push(Kernel::Amx);
            }
            if avx512::available() {
                all.push(Kernel::Avx512Bf16);
            }
        }
        all
    }

    /// The name a user sees in logs and benchmark reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kernel::Amx => "AMX-BF16",
            Kernel::Avx512Bf16 => "AVX512-BF16",
        }
    }

    /// How many multiply-adds this kernel's instruction does a second, as a multiple of the
    /// f32 FMA's on this core: measured for AVX512-BF16 by a short loop of each
    /// (`avx512::rate_against_fma`, under a millisecond); `None` for AMX, whose tiles are
    /// not timed here (the ViT-L/14 model runs 4-5 × its f32 speed on them, `BENCHMARKS.md`).
    pub(crate) fn rate_against_f32(self) -> Option<f64> {
        match self {
            Kernel::Amx => None,
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Avx512Bf16` comes only from `available`, which checked the CPU.
            Kernel::Avx512Bf16 => Some(unsafe { avx512::rate_against_fma() }),
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx512Bf16 => unreachable!("no bf16 kernel exists off x86-64"),
        }
    }
}

/// How the encoder runs its bf16 products on this CPU: the same rounding of both operands and
/// f32 sums either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// On a bf16 kernel, over weights rounded and packed at load.
    Packed(Kernel),
    /// On the f32 encoder's products (FMAs), over weights rounded at load and held as f32,
    /// with each product's activations rounded in place first: a product of two bf16 values
    /// is exact in f32, so each sum adds the terms a bf16 kernel adds. Chosen where the
    /// CPU's bf16 instruction does fewer multiply-adds a second than its FMA
    /// ([`Kernel::rate_against_f32`] under 1: `vdpbf16ps` on a Xeon whose AMX is hidden
    /// measured 0.5), so that bf16 runs at f32 speed there instead of two thirds of it.
    /// (oneDNN likewise emulates `vdpbf16ps` with FMAs on AVX-512 CPUs that lack it.)
    Fma,
}

/// What [`Route::detect`] found, once per process: the route, and the bf16 instruction's
/// rate against the FMA (`None` for AMX, not timed).
type Detected = Result<(Route, Option<f64>), &'static str>;

impl Route {
    /// The route this CPU takes, or why it has none (no bf16 instructions at all). Decided
    /// once per process (timing `vdpbf16ps` takes under a millisecond, but two timings could
    /// disagree near the threshold, and every caller must see the same route).
    pub(crate) fn detect() -> Result<Route, &'static str> {
        Route::detected().map(|(route, _)| route)
    }

    /// The rate [`Kernel::rate_against_f32`] measured when the route was chosen.
    pub(crate) fn rate_against_f32() -> Result<Option<f64>, &'static str> {
        Route::detected().map(|(_, rate)| rate)
    }

    fn detected() -> Detected {
        static DETECTED: std::sync::OnceLock<Detected> = std::sync::OnceLock::new();
        *DETECTED.get_or_init(|| {
            let kernel = Kernel::detect()?;
            let rate = kernel.rate_against_f32();
            Ok((Route::for_kernel(kernel, rate), rate))
        })
    }

    /// The route for the fastest bf16 kernel a CPU has, its instruction doing `rate` × the
    /// f32 FMA's multiply-adds a second (`None`: AMX, not timed).
    pub(crate) fn for_kernel(kernel: Kernel, rate: Option<f64>) -> Route {
        match rate {
            Some(rate) if rate < 1.0 => Route::Fma,
            _ => Route::Packed(kernel),
        }
    }

    /// The name a user sees in logs and benchmark reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Route::Packed(kernel) => kernel.name(),
            Route::Fma => crate::CPU_BF16_ON_FMA,
        }
    }
}

/// `f32` → `bf16` bits, rounding to nearest even (as PyTorch and `half` do); NaN stays NaN.
/// Branch-free, so that loops over it vectorize.
#[inline(always)]
pub(crate) fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
    let quiet = (bits >> 16) | 0x40;
    let nan = (bits & 0x7fff_ffff) > 0x7f80_0000;
    (if nan { quiet } else { rounded }) as u16
}

/// `bf16` bits → `f32`, exact.
#[cfg(test)]
fn from_bf16(x: u16) -> f32 {
    f32::from_bits(u32::from(x) << 16)
}

/// `$chooser() -> $ty`: `$portable` compiled for AVX-512F and BW (as `$avx512`) where this
/// CPU has them, the same Rust either way, so bit for bit the same results. Chosen once per
/// fill, not per row.
macro_rules! avx512_or_portable {
    ($(#[$doc:meta])* $chooser:ident -> $ty:ident, $avx512:ident, $portable:ident,
     ($($arg:ident: $arg_ty:ty),*)) => {
        $(#[$doc])*
        fn $chooser() -> $ty {
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
            {
                // SAFETY: the CPU has AVX-512F and BW, checked just above.
                return |$($arg),*| unsafe { $avx512($($arg),*) };
            }
            $portable
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx512bw")]
        fn $avx512($($arg: $arg_ty),*) {
            $portable($($arg),*)
        }
    };
}

/// Rounds `src` into `dst` (same length).
type RoundRow = fn(&[f32], &mut [u16]);

avx512_or_portable!(
    /// The row rounder for this CPU.
    row_rounder -> RoundRow, round_row_avx512, round_row_portable, (src: &[f32], dst: &mut [u16])
);

#[inline(always)]
fn round_row_portable(src: &[f32], dst: &mut [u16]) {
    dst.iter_mut().zip(src).for_each(|(d, &x)| *d = to_bf16(x));
}

/// Rounds each value to the nearest bf16 (ties to even, as [`to_bf16`]), kept as f32: what
/// [`Route::Fma`] does to a product's operands. [`Threads::All`] spreads a buffer of more
/// than 16,384 values over rayon's threads.
pub(crate) fn round_in_place(values: &mut [f32], threads: Threads) {
    const CHUNK: usize = 1 << 14;
    let round = in_place_rounder();
    if threads == Threads::This || values.len() <= CHUNK {
        round(values);
    } else {
        values.par_chunks_mut(CHUNK).for_each(round);
    }
}

type RoundInPlace = fn(&mut [f32]);

avx512_or_portable!(
    /// The in-place rounder for this CPU.
    in_place_rounder -> RoundInPlace, round_in_place_avx512, round_in_place_portable,
    (values: &mut [f32])
);

#[inline(always)]
fn round_in_place_portable(values: &mut [f32]) {
    values.iter_mut().for_each(|v| *v = f32::from_bits(u32::from(to_bf16(*v)) << 16));
}

/// Writes into one pair-row of a packed weight (32 u16) two K rows' values (up to 16 each,
/// `None` past K): column `c` gets `(even[c], odd[c])` rounded, the rest zeros.
type InterleavePair = fn(Option<&[f32]>, Option<&[f32]>, &mut [u16]);

avx512_or_portable!(
    /// The pair interleaver for this CPU.
    pair_interleaver -> InterleavePair,
    interleave_pair_avx512,
    interleave_pair_portable,
    (even: Option<&[f32]>, odd: Option<&[f32]>, dst: &mut [u16])
);

#[inline(always)]
fn interleave_pair_portable(even: Option<&[f32]>, odd: Option<&[f32]>, dst: &mut [u16]) {
    let load = |row: Option<&[f32]>| {
        let mut values = [0f32; PANEL];
        match row {
            // The whole panel: a fixed-size copy, not a call to memcpy.
            Some(row) if row.len() == PANEL => values = row.try_into().expect("16 values"),
            Some(row) => values[..row.len()].copy_from_slice(row),
            None => {}
        }
        values
    };
    let (even, odd) = (load(even), load(odd));
    let mut pairs = [0u32; PANEL];
    for ((p, &e), &o) in pairs.iter_mut().zip(&even).zip(&odd) {
        *p = u32::from(to_bf16(e)) | (u32::from(to_bf16(o)) << 16);
    }
    for (d, p) in dst.chunks_exact_mut(2).zip(pairs) {
        d[0] = p as u16;
        d[1] = (p >> 16) as u16;
    }
}

/// Packs the softmax of each row of a panel's scores (rows of `k` values, at most
/// [`PANEL`]) into the same row of its activation panel, through a scratch of floats; the
/// panel's other rows are not touched.
type SoftmaxPanel = fn(&[f32], usize, &mut [f32], &mut [u16]);

/// The softmax panel packer for this CPU and the scratch it takes for rows of `k` values:
/// [`softmax_panel`]'s on AVX-512F (every CPU with a bf16 kernel), else a row at a time.
fn softmax_panel_packer(k: usize) -> (SoftmaxPanel, usize) {
    #[cfg(target_arch = "x86_64")]
    if softmax_panel::available() {
        // SAFETY: the CPU has AVX-512F, checked just above.
        let pack: SoftmaxPanel = |scores, k, scratch, out| unsafe {
            softmax_panel::softmax_panel(scores, k, scratch, out)
        };
        return (pack, softmax_panel::scratch_len(k));
    }
    (softmax_panel_portable, k.div_ceil(STEP) * STEP)
}

fn softmax_panel_portable(scores: &[f32], k: usize, exps: &mut [f32], out: &mut [u16]) {
    if k > 0 {
        for (r, row) in scores.chunks_exact(k).enumerate() {
            softmax_row_portable(row, exps, out, r);
        }
    }
}

/// Packs the softmax of `row` (its `k` values) into row `r` of an activation panel (`steps`
/// tile rows of 32, `PANEL_STEP` apart), through `exps` (at least `steps · 32` floats):
/// the arithmetic of [`crate::ops::kernels::softmax`] in its order (the same maximum, `exp`,
/// sum and reciprocal), each probability rounded as it is made.
fn softmax_row_portable(row: &[f32], exps: &mut [f32], panel: &mut [u16], r: usize) {
    use crate::ops::kernels::{exp, max, sum};
    let k = row.len();
    let steps = k.div_ceil(STEP);
    let exps = &mut exps[..steps * STEP];
    let max = max(row);
    for (e, &v) in exps.iter_mut().zip(row) {
        *e = exp(v - max);
    }
    let inv = 1.0 / sum(&exps[..k]);
    exps[k..].fill(0.0);
    for (step, chunk) in exps.chunks_exact(STEP).enumerate() {
        let dst = &mut panel[step * PANEL_STEP + r * STEP..][..STEP];
        for (d, &e) in dst.iter_mut().zip(chunk) {
            *d = to_bf16(e * inv);
        }
    }
}

fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}

/// Which threads fill a packed operand: all of rayon's (a whole layer's operand), or only the
/// caller's (one attention head's, inside a parallel task: no nested parallel loop, whose
/// waiting could start another head's task on the same thread and its buffers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Threads {
    All,
    This,
}

/// What a product does to its output: adds the product to what is there, or stores it
/// over it (what is there is never read: no zeroing pass first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Write {
    Add,
    Store,
}

/// A matrix rounded to bf16 and packed for the kernels, in one of two roles:
/// - [`PackedWeight`]: the right operand, a Linear weight `W` (`n × k`, `y = x Wᵀ`): panels of
///   16 output columns; within a panel, steps of 32 K values; within a step, 16 rows of
///   (column, pair) for the K pairs `(2t, 2t + 1)`: the B tile of `tdpbf16ps`, and 16 zmm
///   registers for `vdpbf16ps`.
/// - [`Activations`]: the left operand (`m × k`): panels of 16 rows; within a panel, steps of
///   32 K values, each step one 16 × 32 A tile (row after row, 1 KiB contiguous).
///
/// Rows (of either) pad to 32 and K to 32, with zeros; the buffer is kept for the next fill.
#[derive(Default)]
pub(crate) struct Packed {
    data: AlignedU16,
    /// Rows of the matrix as given (`n` of a weight, `m` of activations).
    rows: usize,
    k: usize,
}

/// The right operand of a product (see [`Packed`]).
pub(crate) type PackedWeight = Packed;
/// The left operand of a product (see [`Packed`]).
pub(crate) type Activations = Packed;

impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Packed").field("rows", &self.rows).field("k", &self.k).finish()
    }
}

impl Packed {
    /// Packs a Linear weight `w` (`n × k` row-major f32).
    pub(crate) fn pack(w: &[f32], n: usize, k: usize) -> PackedWeight {
        assert_eq!(w.len(), n * k, "weight of {} values is not {n} × {k}", w.len());
        let mut packed = Packed::default();
        packed.fill_weight_rows(w, n, k, k, Threads::All);
        packed
    }

    /// Output columns of a weight, rows of activations.
    pub(crate) fn n(&self) -> usize {
        self.rows
    }

    /// Input columns (K).
    pub(crate) fn k(&self) -> usize {
        self.k
    }

    fn steps(&self) -> usize {
        round_up(self.k, STEP) / STEP
    }

    /// u16 values from one panel to the next.
    fn panel_len(&self) -> usize {
        self.steps() * PANEL_STEP
    }

    /// Makes room for `rows × k` and calls `fill(scratch, panel number, panel)` for each of
    /// its panels (none when `k` is 0), on the threads `threads` says, each thread with its
    /// own `scratch` from `init`.
    fn fill_panels<S>(
        &mut self,
        rows: usize,
        k: usize,
        threads: Threads,
        init: impl Fn() -> S + Sync + Send,
        fill: impl Fn(&mut S, usize, &mut [u16]) + Sync + Send,
    ) {
        (self.rows, self.k) = (rows, k);
        let panel_len = self.panel_len();
        let len = round_up(rows.max(1), BLOCK) / PANEL * panel_len;
        self.data.grow(len);
        let data = &mut self.data.as_mut_slice()[..len];
        match threads {
            Threads::All => data
                .par_chunks_mut(panel_len.max(1))
                .with_min_len(4)
                .enumerate()
                .for_each_init(init, |scratch, (panel, out)| fill(scratch, panel, out)),
            Threads::This => {
                let mut scratch = init();
                for (panel, out) in data.chunks_mut(panel_len.max(1)).enumerate() {
                    fill(&mut scratch, panel, out);
                }
            }
        }
    }

    /// Packs as a weight `n` rows of `k` values, row `j` starting at `src[j · stride]` (a
    /// Linear weight, or attention's keys).
    pub(crate) fn fill_weight_rows(
        &mut self,
        src: &[f32],
        n: usize,
        k: usize,
        stride: usize,
        threads: Threads,
    ) {
        assert!(n == 0 || src.len() >= (n - 1) * stride + k, "weight too short for {n} × {k}");
        let steps = round_up(k, STEP) / STEP;
        let round_row = row_rounder();
        let one_row = || vec![0u16; steps * STEP];
        self.fill_panels(n, k, threads, one_row, |row, panel, out| {
            for col in 0..PANEL {
                let j = panel * PANEL + col;
                if j < n {
                    round_row(&src[j * stride..j * stride + k], &mut row[..k]);
                } else {
                    row[..k].fill(0);
                }
                // Each K pair of the row goes to its (step, pair) row of the panel, as one u32.
                for (index, pair) in row.chunks_exact(2).enumerate() {
                    let at = (index / 16) * PANEL_STEP + (index % 16) * 2 * PANEL + 2 * col;
                    out[at..at + 2].copy_from_slice(pair);
                }
            }
        });
    }

    /// Packs as a weight the transpose of `k` rows of `n` values, row `kk` starting at
    /// `src[kk · stride]`: element `(j, kk)` is `src[kk · stride + j]` (attention's values).
    /// Each pair-row of a step is two source rows' 16 values, rounded and interleaved, built
    /// as 16 u32 (low half the even row's) in a loop that compiles to vector code.
    pub(crate) fn fill_weight_columns(
        &mut self,
        src: &[f32],
        n: usize,
        k: usize,
        stride: usize,
        threads: Threads,
    ) {
        assert!(k == 0 || src.len() >= (k - 1) * stride + n, "weight too short for {n} × {k}");
        let interleave = pair_interleaver();
        self.fill_panels(
            n,
            k,
            threads,
            || (),
            |_, panel, out| {
                let (j0, width) = (panel * PANEL, n.saturating_sub(panel * PANEL).min(PANEL));
                for (at, pair_row) in out.chunks_exact_mut(2 * PANEL).enumerate() {
                    let kk = (at / 16) * STEP + (at % 16) * 2;
                    let row = |kk: usize| {
                        (kk < k && width > 0)
                            .then(|| &src[kk * stride + j0..kk * stride + j0 + width])
                    };
                    interleave(row(kk), row(kk + 1), pair_row);
                }
            },
        );
    }

    /// Packs as activations `x`, `m` rows of `k` values, row `i` starting at `x[i · stride]`.
    pub(crate) fn fill_activations(
        &mut self,
        x: &[f32],
        m: usize,
        k: usize,
        stride: usize,
        threads: Threads,
    ) {
        self.fill_activations_mapped(x, m, k, stride, threads, None::<fn(&[f32], &mut [f32])>);
    }

    /// Packs as activations `f` of each row of `x` (`m` rows of `k` values at `stride`):
    /// `f(row, out)` writes the row's `k` values into a buffer of the thread's, and they are
    /// rounded from there. One pass instead of `f` over all of `x` into a matrix that is read
    /// again to pack it: for the layer norms before `qkv` and `fc1`, the activation before
    /// `fc2` and the softmax before `p · v`.
    pub(crate) fn fill_activations_of(
        &mut self,
        x: &[f32],
        m: usize,
        k: usize,
        stride: usize,
        threads: Threads,
        f: impl Fn(&[f32], &mut [f32]) + Sync + Send,
    ) {
        self.fill_activations_mapped(x, m, k, stride, threads, Some(f));
    }

    /// Packs as activations the softmax of each of `m` rows of `k` scores (`scores` row-major,
    /// `m × k`): bit for bit `fill_activations_of` with a row copied and its softmax taken,
    /// each probability rounded and placed as it is made (attention's `p` before `p · v`).
    pub(crate) fn fill_softmax_rows(
        &mut self,
        scores: &[f32],
        m: usize,
        k: usize,
        threads: Threads,
    ) {
        assert!(scores.len() >= m * k, "scores too short for {m} × {k}");
        let steps = round_up(k, STEP) / STEP;
        let (pack, scratch_len) = softmax_panel_packer(k);
        let scratch = || vec![0f32; scratch_len];
        self.fill_panels(m, k, threads, scratch, |scratch, panel, out| {
            let first = (panel * PANEL).min(m);
            let rows = (m - first).min(PANEL);
            pack(&scores[first * k..(first + rows) * k], k, scratch, out);
            for r in rows..PANEL {
                for step in 0..steps {
                    out[step * PANEL_STEP + r * STEP..][..STEP].fill(0);
                }
            }
        });
    }

    fn fill_activations_mapped(
        &mut self,
        x: &[f32],
        m: usize,
        k: usize,
        stride: usize,
        threads: Threads,
        f: Option<impl Fn(&[f32], &mut [f32]) + Sync + Send>,
    ) {
        assert!(m == 0 || x.len() >= (m - 1) * stride + k, "activations too short for {m} × {k}");
        let steps = round_up(k, STEP) / STEP;
        let round_row = row_rounder();
        let mapped = f.is_some();
        // Per thread: the mapped row (when `f` is given) and the row rounded whole, padded
        // with zeros to whole steps, then copied out a tile row (64 bytes) at a time: one
        // rounding call a row rather than one per step.
        let buffers =
            || (if mapped { vec![0f32; k] } else { Vec::new() }, vec![0u16; steps * STEP]);
        self.fill_panels(m, k, threads, buffers, |(mapped_row, rounded), panel, out| {
            for r in 0..PANEL {
                let i = panel * PANEL + r;
                if i < m {
                    let mut row = &x[i * stride..i * stride + k];
                    if let Some(f) = &f {
                        f(row, mapped_row);
                        row = mapped_row;
                    }
                    round_row(row, &mut rounded[..k]);
                } else {
                    rounded[..k].fill(0);
                }
                for (step, from) in rounded.chunks_exact(STEP).enumerate() {
                    out[step * PANEL_STEP + r * STEP..][..STEP].copy_from_slice(from);
                }
            }
        });
    }

    /// Makes room for `m` rows of `k` activations (a product writes them, every value of
    /// every panel, padding included).
    fn size_activations(&mut self, m: usize, k: usize) {
        (self.rows, self.k) = (m, k);
        let len = round_up(m.max(1), BLOCK) / PANEL * self.panel_len();
        self.data.grow(len);
    }

    /// The value packed as a weight for row `j`, column `kk`, as f32.
    #[cfg(test)]
    fn weight_at(&self, j: usize, kk: usize) -> f32 {
        let (panel, col, step, within) = (j / PANEL, j % PANEL, kk / STEP, kk % STEP);
        let index = panel * self.panel_len()
            + step * PANEL_STEP
            + (within / 2) * 2 * PANEL
            + col * 2
            + within % 2;
        from_bf16(self.data.as_slice()[index])
    }

    /// The value packed as activations for row `i`, column `kk`, as f32.
    #[cfg(test)]
    fn activation_at(&self, i: usize, kk: usize) -> f32 {
        let (panel, r, step, within) = (i / PANEL, i % PANEL, kk / STEP, kk % STEP);
        from_bf16(
            self.data.as_slice()[panel * self.panel_len() + step * PANEL_STEP + r * STEP + within],
        )
    }
}

/// A pointer that rayon tasks writing disjoint blocks of one matrix may share.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: every task writes its own blocks of the output, and the buffer outlives the loop.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

/// Output rows (at most) and columns of one parallel task, in blocks: big enough that the
/// task's activations and weight panels are reused from cache, small enough for many tasks.
/// 256 × 256 measured faster than 128 × 256 with the AMX kernel's K chunks (one Xeon thread
/// at ViT-L/14's shapes).
const TASK_ROWS: usize = 8 * BLOCK;
const TASK_COLS: usize = 8 * BLOCK;

/// The parallel tasks of a product. Its rows are shared out among row tasks: the blocks
/// evenly among as few tasks as hold at most [`TASK_ROWS`] each (33 blocks: 7, 7, 7, 6, 6
/// rather than 8, 8, 8, 8, 1), where a last block of at most one row tile counts as none and
/// joins the task before it. Each row task streams its columns' weight panels once more, and such a block is a
/// fraction of a full one's work: ViT-L/14 at batch 1 (257 rows: 8 blocks and one row) is
/// one row task of 9 blocks, not 5 and 4, which measured 4 % faster in bf16 (Xeon 6/167,
/// AMX), and at batch 16 the last 16 rows no longer stream every weight once more alone.
///
/// Column tasks are [`TASK_COLS`] wide; tasks are numbered down the rows first (see
/// [`matmul_acc`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tasks {
    /// Row tasks.
    row_count: usize,
    /// Rows of each row task but the last, a whole number of blocks.
    rows: usize,
    /// Where the last row task ends: `m`, or `m` rounded up to a block where the padded rows
    /// are written too.
    end: usize,
    /// Columns of the product.
    n: usize,
}

impl Tasks {
    fn new(m: usize, n: usize, end: usize) -> Tasks {
        let blocks = m.max(1).div_ceil(BLOCK);
        let tail = m % BLOCK;
        let counted = match blocks > 1 && tail != 0 && tail <= PANEL {
            true => blocks - 1,
            false => blocks,
        };
        let rows = counted.div_ceil(counted.div_ceil(TASK_ROWS / BLOCK)) * BLOCK;
        Tasks { row_count: (counted * BLOCK).div_ceil(rows), rows, end, n }
    }

    fn count(&self) -> usize {
        self.row_count * self.n.div_ceil(TASK_COLS)
    }

    /// The rows and columns of task `task`.
    fn at(&self, task: usize) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        let (row_task, col_task) = (task % self.row_count, task / self.row_count);
        let start = row_task * self.rows;
        let rows = match row_task + 1 == self.row_count {
            true => start..self.end,
            false => start..start + self.rows,
        };
        (rows, col_task * TASK_COLS..((col_task + 1) * TASK_COLS).min(self.n))
    }
}

/// `dst (m × n, row-major) += a · wᵀ` with bf16 operands and f32 sums, on every thread.
///
/// Tasks are numbered down the rows first, so the tasks one thread takes in a row share
/// their weight columns (each thread sweeps the activations, which are smaller than most
/// weights, while its weight panels stay in L2): at ViT-L/14's shapes that measured 10-15 %
/// faster end to end than numbering across the columns first, which streams every weight
/// from memory once per row task. K is not split: splitting it so that a block of each operand
/// fits in L1 (8 or 16 steps) measured slower, each pass adding its sums to the output.
///
/// With a `bias` (one value a column), `dst + bias` is formed first and the sums added to it:
/// bit for bit the separate pass over `dst` that this saves.
pub(crate) fn matmul_acc(
    kernel: Kernel,
    dst: &mut [f32],
    a: &Activations,
    w: &PackedWeight,
    bias: Option<&[f32]>,
) {
    matmul_to(kernel, dst, Output::rows(w.rows), a, w, Write::Add, bias);
}

/// Where element `(i, j)` of a product's output lives: its columns in groups of `group`,
/// each group an `m × group` row-major matrix (stride `ldc`) `group_stride` floats after the
/// one before. One group is a plain row-major matrix; groups of a head's width store `qkv`
/// head by head, so that attention reads each head's rows contiguously.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Output {
    ldc: usize,
    group: usize,
    group_stride: usize,
}

impl Output {
    /// Row-major, `n` columns.
    pub(crate) fn rows(n: usize) -> Output {
        Output::strided(n, n)
    }

    /// Row-major, `n` columns in rows `ldc` apart.
    fn strided(n: usize, ldc: usize) -> Output {
        Output { ldc, group: n.max(1), group_stride: 0 }
    }

    /// `m` rows, their columns in groups of `group`, each stored as its own `m × group`
    /// matrix after the one before.
    pub(crate) fn column_groups(m: usize, group: usize) -> Output {
        assert!(group > 0, "column groups of no columns");
        Output { ldc: group, group, group_stride: m * group }
    }

    /// Offset of element `(i, j)`.
    pub(crate) fn at(&self, i: usize, j: usize) -> usize {
        (j / self.group) * self.group_stride + i * self.ldc + j % self.group
    }

    /// Whether columns `j .. j + width` lie in one group (rows of them are contiguous).
    fn in_one_group(&self, j: usize, width: usize) -> bool {
        j % self.group + width <= self.group
    }
}

/// The product into the layout `out` (`dst` holds exactly `m × n` values in it), added to
/// `dst` or stored over it as `write` says, with the `bias` of [`matmul_acc`] (a stored product
/// is `bias + sums`).
pub(crate) fn matmul_to(
    kernel: Kernel,
    dst: &mut [f32],
    layout: Output,
    a: &Activations,
    w: &PackedWeight,
    write: Write,
    bias: Option<&[f32]>,
) {
    let (m, n) = (a.rows, w.rows);
    assert!(bias.is_none_or(|b| b.len() == n), "bias is not {n} values");
    assert_eq!(dst.len(), m * n, "output of {} values is not {m} × {n}", dst.len());
    let fits = if layout.group_stride == 0 {
        layout.ldc == n
    } else {
        n % layout.group == 0
            && layout.ldc == layout.group
            && layout.group_stride == m * layout.group
    };
    assert!(fits, "{layout:?} does not lay out {m} × {n} values");
    check_operands(a, w);
    let tasks = Tasks::new(m, n, m);
    let out = SharedMut(dst.as_mut_ptr());
    (0..tasks.count()).into_par_iter().for_each(move |task| {
        let out = out;
        let (rows, cols) = tasks.at(task);
        // SAFETY: `dst` holds m × n values laid out as `layout` (checked above); this task
        // alone writes `rows` × `cols`; the kernel came from `Kernel::detect` or
        // `Kernel::available` (nothing in the crate names a variant otherwise).
        unsafe { blocks(kernel, out.0, layout, rows, cols, a, w, write, bias) }
    });
}

/// A pointer to packed bf16 values that rayon tasks writing disjoint tiles may share.
#[derive(Clone, Copy)]
struct SharedMutU16(*mut u16);
// SAFETY: every task writes its own tiles of the packed matrix, which outlives the loop.
unsafe impl Send for SharedMutU16 {}
unsafe impl Sync for SharedMutU16 {}

impl SharedMutU16 {
    /// The pointer (a method, so closures capture the whole `Sync` value, not its field).
    fn get(self) -> *mut u16 {
        self.0
    }
}

/// `out = f(bias + a · wᵀ)` packed as the activations of the next product (`m` rows of
/// `n` K values), on every thread: the MLP's first layer and its activation, whose f32 output
/// is never stored. Each 32 × 32 output block is one K step of two row panels of `out`, so it
/// goes straight from the kernel (into a block that starts as the bias, the sums in the
/// order [`matmul_acc`] adds them) through `f` (applied to each row's live values) to its two
/// tiles, bit for bit what `matmul_acc` into a matrix holding the bias, `f` over it and
/// [`Packed::fill_activations`] give, without the f32 matrix written and read three times.
pub(crate) fn matmul_bias_into_activations(
    kernel: Kernel,
    a: &Activations,
    w: &PackedWeight,
    bias: &[f32],
    f: impl Fn(&mut [f32]) + Sync + Send,
    out: &mut Activations,
) {
    let (m, n) = (a.rows, w.rows);
    assert_eq!(bias.len(), n, "bias of {} values for {n} columns", bias.len());
    check_operands(a, w);
    out.size_activations(m, n);
    let (out_panel, out_ptr) =
        (out.panel_len(), SharedMutU16(out.data.as_mut_slice().as_mut_ptr()));
    let round_row = row_rounder();
    let tasks = Tasks::new(m, n, round_up(m.max(1), BLOCK));
    (0..tasks.count()).into_par_iter().for_each(|task| {
        let (rows, cols) = tasks.at(task);
        // SAFETY: this task's thread runs nothing else while `block_kernel` lives; `kernel`
        // came from `Kernel::available`.
        let mut block_kernel = unsafe { BlockKernel::start(kernel) };
        // SAFETY: `rows` and `cols` start on block boundaries and lie in the padded operands
        // (rows up to round_up(m, 32), which `a` is padded to).
        let task_sums = unsafe { block_kernel.task_sums(a, w, rows.clone(), cols.clone()) };
        let mut sums = Block([0.0; BLOCK * BLOCK]);
        for j in cols.clone().step_by(BLOCK) {
            let b = w.data.as_slice()[(j / PANEL) * w.panel_len()..].as_ptr();
            let width = (n - j).min(BLOCK);
            for i in rows.clone().step_by(BLOCK) {
                let live = m.saturating_sub(i).min(BLOCK);
                for row in sums.0.chunks_exact_mut(BLOCK) {
                    row[..width].copy_from_slice(&bias[j..j + width]);
                }
                if live > 0 && w.steps() > 0 {
                    let a_block = a.data.as_slice()[(i / PANEL) * a.panel_len()..].as_ptr();
                    let c = sums.0.as_mut_ptr();
                    let at = ((i - rows.start) / BLOCK, (j - cols.start) / BLOCK);
                    // SAFETY: `sums` is 32 rows of 32 floats; `a` has two panels from row `i`
                    // and `w` two from column `j` (both padded to 32 rows).
                    unsafe {
                        match &task_sums {
                            Some(task) => task.write(c, BLOCK, at, Write::Add, None),
                            None => {
                                block_kernel.block(c, BLOCK, a_block, b, w, live, Write::Add, None)
                            }
                        }
                    };
                }
                if width == BLOCK {
                    // A whole block is two whole tiles of `out` (rows 0..16 and 16..32 of one
                    // K step): the activation over its live rows and the rounding in one call
                    // each, not one a row (the calls cost more than the work at 32 values).
                    f(&mut sums.0[..live * BLOCK]);
                    sums.0[live * BLOCK..].fill(0.0);
                    for (half, block_rows) in sums.0.chunks_exact(PANEL_STEP).enumerate() {
                        let at = (i / PANEL + half) * out_panel + (j / STEP) * PANEL_STEP;
                        // SAFETY: tile `at` (512 values) lies in `out`, sized for
                        // round_up(m, 32) rows and n columns above; this task alone writes it.
                        let tile = unsafe {
                            std::slice::from_raw_parts_mut(out_ptr.get().add(at), PANEL_STEP)
                        };
                        round_row(block_rows, tile);
                    }
                    continue;
                }
                for (r, row) in sums.0.chunks_exact_mut(BLOCK).enumerate() {
                    let at = ((i + r) / PANEL) * out_panel
                        + (j / STEP) * PANEL_STEP
                        + ((i + r) % PANEL) * STEP;
                    // SAFETY: tile row `at` (32 values) lies in `out`, sized for round_up(m, 32)
                    // rows and n columns above; this task alone writes rows `rows` × steps of
                    // `cols`.
                    let tile_row =
                        unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(at), STEP) };
                    if r < live {
                        f(&mut row[..width]);
                        round_row(&row[..width], &mut tile_row[..width]);
                        tile_row[width..].fill(0);
                    } else {
                        tile_row.fill(0);
                    }
                }
            }
        }
    });
}

/// One 32 × 32 block of f32 on a cache line.
#[derive(Clone)]
#[repr(C, align(64))]
struct Block([f32; BLOCK * BLOCK]);

/// `dst[i · ldc + j] += (a · wᵀ)[i][j]` on this thread, for a product too small to split.
#[cfg(test)]
fn matmul_acc_strided(
    kernel: Kernel,
    dst: &mut [f32],
    ldc: usize,
    a: &Activations,
    w: &PackedWeight,
) {
    let (m, n) = (a.rows, w.rows);
    assert!(n <= ldc && (m == 0 || dst.len() >= (m - 1) * ldc + n), "output too short");
    // SAFETY: `dst` holds m rows of n values at stride ldc, checked above.
    unsafe { matmul_raw(kernel, dst.as_mut_ptr(), ldc, a, w, Write::Add) }
}

/// `dst[i · ldc + j] += (a · wᵀ)[i][j]` (or `=`, as `write` says) on this thread, into part
/// of a matrix that other threads write other columns of.
///
/// # Safety
/// `dst` addresses `a.n()` rows of `w.n()` values at stride `ldc`, which no one else reads
/// or writes meanwhile.
pub(crate) unsafe fn matmul_raw(
    kernel: Kernel,
    dst: *mut f32,
    ldc: usize,
    a: &Activations,
    w: &PackedWeight,
    write: Write,
) {
    check_operands(a, w);
    let layout = Output::strided(w.rows, ldc);
    // SAFETY: forwarded.
    unsafe { blocks(kernel, dst, layout, 0..a.rows, 0..w.rows, a, w, write, None) }
}

fn check_operands(a: &Activations, w: &PackedWeight) {
    assert_eq!(a.k, w.k, "activations have K = {}, weight K = {}", a.k, w.k);
    assert!(a.data.as_slice().len() >= round_up(a.rows.max(1), BLOCK) / PANEL * a.panel_len());
    assert!(w.data.as_slice().len() >= round_up(w.rows.max(1), BLOCK) / PANEL * w.panel_len());
}

/// The output blocks of `rows` × `cols` (both starting on a block boundary), on this thread.
///
/// # Safety
/// `out` addresses the elements `rows` × `cols` of a matrix laid out as `layout`, written by
/// no one else meanwhile; `a` and `w` passed [`check_operands`], `rows.end <= a.rows`,
/// `cols.end <= w.rows`; the CPU supports `kernel` (it came from [`Kernel::available`]).
#[allow(clippy::too_many_arguments)]
unsafe fn blocks(
    kernel: Kernel,
    out: *mut f32,
    layout: Output,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    a: &Activations,
    w: &PackedWeight,
    write: Write,
    bias: Option<&[f32]>,
) {
    // SAFETY: this task's thread runs nothing else while `block_kernel` lives (no rayon call
    // below); `kernel` came from `Kernel::available`.
    let mut block_kernel = unsafe { BlockKernel::start(kernel) };
    // SAFETY: forwarded from the caller (`rows` and `cols` inside the operands).
    let task_sums = unsafe { block_kernel.task_sums(a, w, rows.clone(), cols.clone()) };
    let (first_row, first_col) = (rows.start, cols.start);
    // SAFETY: forwarded from the caller. Each call gets from `each_block` a 32 × 32 block of
    // writable floats at the stride it is given and two panels of each operand from its
    // block's rows / columns, `steps` steps long: what the block kernels require.
    unsafe {
        each_block(
            out,
            layout,
            rows,
            cols,
            a,
            w,
            write,
            bias,
            |c, ldc, (i, j), a_block, b, live, bias| match &task_sums {
                Some(task) => task.write(
                    c,
                    ldc,
                    ((i - first_row) / BLOCK, (j - first_col) / BLOCK),
                    write,
                    bias,
                ),
                None => block_kernel.block(c, ldc, a_block, b, w, live, write, bias),
            },
        )
    }
}

/// What [`BlockKernel::task_sums`] returns: AMX's task sums on x86-64, nothing elsewhere.
#[cfg(target_arch = "x86_64")]
use amx::TaskSums;
#[cfg(not(target_arch = "x86_64"))]
enum TaskSums {}

#[cfg(not(target_arch = "x86_64"))]
impl TaskSums {
    unsafe fn write(
        &self,
        _: *mut f32,
        _: usize,
        _: (usize, usize),
        _: Write,
        _: Option<&[f32; BLOCK]>,
    ) {
        match *self {}
    }
}

/// A block kernel ready to run on this thread: AMX with its tiles configured, or AVX512-BF16.
struct BlockKernel {
    kernel: Kernel,
    /// This thread's configured tiles, for [`Kernel::Amx`].
    #[cfg(target_arch = "x86_64")]
    tiles: Option<amx::Tiles>,
}

impl BlockKernel {
    /// # Safety
    /// The CPU supports `kernel` (it came from [`Kernel::available`]), and no other
    /// `BlockKernel` lives on this thread while this one does (AMX tile state is per thread).
    unsafe fn start(kernel: Kernel) -> BlockKernel {
        BlockKernel {
            kernel,
            #[cfg(target_arch = "x86_64")]
            // SAFETY: forwarded.
            tiles: (kernel == Kernel::Amx).then(|| unsafe { amx::Tiles::configure() }),
        }
    }

    /// The sums of every block of a task of `rows` × `cols`, computed ahead with K in chunks
    /// ([`amx::Tiles::task_sums`]), where this kernel does that: AMX, with K longer than one
    /// chunk. `None` otherwise: each block is then computed over all of K by [`Self::block`].
    ///
    /// # Safety
    /// `rows` and `cols` start on block boundaries; `a` holds two panels from each row block
    /// and `w` from each column block (padded to 32 rows).
    unsafe fn task_sums(
        &mut self,
        a: &Activations,
        w: &PackedWeight,
        rows: std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
    ) -> Option<TaskSums> {
        #[cfg(target_arch = "x86_64")]
        if let Some(tiles) = &mut self.tiles {
            let (steps, panel) = (w.steps(), w.panel_len());
            if steps > amx::CHUNK_STEPS && !rows.is_empty() && !cols.is_empty() {
                let a_first = a.data.as_slice()[(rows.start / PANEL) * panel..].as_ptr();
                let b_first = w.data.as_slice()[(cols.start / PANEL) * panel..].as_ptr();
                let (row_blocks, col_blocks) =
                    (rows.len().div_ceil(BLOCK), cols.len().div_ceil(BLOCK));
                let live_rows = a.rows.min(rows.end).saturating_sub(rows.start);
                // SAFETY: the caller guarantees the panels of every block of the task.
                return Some(unsafe {
                    tiles.task_sums(
                        a_first, b_first, panel, steps, row_blocks, col_blocks, live_rows,
                    )
                });
            }
        }
        let _ = (a, w, rows, cols);
        None
    }

    /// `c (32 × 32, stride ldc) += a · bᵀ` over all of `w`'s K, for a block whose first
    /// `live` rows matter (the AVX512-BF16 kernel skips 8-row groups past them; AMX skips
    /// the second row tile when they fit in the first).
    ///
    /// # Safety
    /// As the block kernels: `c` addresses 32 rows of 32 writable floats at stride `ldc`, `a`
    /// and `b` two panels each of packed operands with `w`'s panel length and steps.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn block(
        &mut self,
        c: *mut f32,
        ldc: usize,
        a: *const u16,
        b: *const u16,
        w: &PackedWeight,
        live: usize,
        write: Write,
        bias: Option<&[f32; BLOCK]>,
    ) {
        let (steps, panel) = (w.steps(), w.panel_len());
        #[cfg(target_arch = "x86_64")]
        // SAFETY: forwarded; AMX's tiles were configured by `start`.
        unsafe {
            match (self.kernel, &mut self.tiles) {
                (Kernel::Amx, Some(tiles)) => {
                    tiles.block(c, ldc, a, b, panel, steps, live, write, bias)
                }
                (Kernel::Amx, None) => unreachable!("start configures tiles for AMX"),
                (Kernel::Avx512Bf16, _) => {
                    avx512::block(c, ldc, a, b, panel, steps, live, write, bias)
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (self.kernel, c, ldc, a, b, steps, panel, live, write, bias);
            unreachable!("no bf16 kernel exists off x86-64")
        }
    }
}

/// Calls `block(c, ldc, (i, j), a, b, live)` for each 32 × 32 output block of `rows` ×
/// `cols`, the one at row `i`, column `j`, where `c` addresses 32 rows of 32 writable floats
/// at stride `ldc` and `a` and `b` two panels each of the block's rows and columns (`panel`
/// u16 apart), and `live` is how many of its rows lie inside `rows` (a kernel may skip the
/// others). A partial block at the matrix's edge, or
/// one across two column groups, goes through a scratch block, copied in and out.
///
/// # Safety
/// As [`blocks`]; `block` may write only the block it is given. Blocks of `c` are 32 rows of
/// 32 floats; panels hold `panel + steps · 512` u16 from the pointer given.
#[allow(clippy::too_many_arguments)]
unsafe fn each_block(
    out: *mut f32,
    layout: Output,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    a: &Activations,
    w: &PackedWeight,
    write: Write,
    bias: Option<&[f32]>,
    mut block: impl FnMut(
        *mut f32,
        usize,
        (usize, usize),
        *const u16,
        *const u16,
        usize,
        Option<&[f32; BLOCK]>,
    ),
) {
    let panel = w.panel_len();
    let mut scratch = [0f32; BLOCK * BLOCK];
    for j in cols.clone().step_by(BLOCK) {
        let b = w.data.as_slice()[(j / PANEL) * panel..].as_ptr();
        // The block's columns of the bias, zeros past the matrix's edge.
        let bias = bias.map(|bias| {
            let mut chunk = [0f32; BLOCK];
            let width = (cols.end - j).min(BLOCK);
            chunk[..width].copy_from_slice(&bias[j..j + width]);
            chunk
        });
        for i in rows.clone().step_by(BLOCK) {
            let a_block = a.data.as_slice()[(i / PANEL) * panel..].as_ptr();
            let (h, wd) = ((rows.end - i).min(BLOCK), (cols.end - j).min(BLOCK));
            // SAFETY: every element addressed is one of `rows` × `cols` in `layout`; a whole
            // block inside one column group is 32 rows of 32 at stride `ldc`, any other goes
            // through `scratch` element by element. `a` has two panels from row `i` and `w`
            // two from column `j` (both padded to 32 rows).
            unsafe {
                if h == BLOCK && wd == BLOCK && layout.in_one_group(j, BLOCK) {
                    let (c, ldc) = (out.add(layout.at(i, j)), layout.ldc);
                    block(c, ldc, (i, j), a_block, b, BLOCK, bias.as_ref());
                } else {
                    let s = scratch.as_mut_ptr();
                    // Row by row inside one group; element by element across groups.
                    let runs = if layout.in_one_group(j, wd) { 1 } else { wd };
                    let run = wd / runs;
                    // A stored product never reads what was there.
                    for r in (0..h).filter(|_| write == Write::Add) {
                        for c in (0..wd).step_by(run) {
                            let at = out.add(layout.at(i + r, j + c));
                            std::ptr::copy_nonoverlapping(at, s.add(r * BLOCK + c), run);
                        }
                    }
                    block(s, BLOCK, (i, j), a_block, b, h, bias.as_ref());
                    for r in 0..h {
                        for c in (0..wd).step_by(run) {
                            let at = out.add(layout.at(i + r, j + c));
                            std::ptr::copy_nonoverlapping(s.add(r * BLOCK + c), at, run);
                        }
                    }
                }
            }
        }
    }
}

/// The same product by a plain loop over the packed operands, f32 accumulation in K order:
/// the reference the kernels are tested against, and the definition of what they compute.
#[cfg(test)]
fn matmul_acc_reference(dst: &mut [f32], a: &Activations, w: &PackedWeight) {
    let (m, n, k) = (a.rows, w.rows, w.k);
    for i in 0..m {
        for j in 0..n {
            let mut acc = dst[i * n + j];
            for kk in 0..k {
                acc += a.activation_at(i, kk) * w.weight_at(j, kk);
            }
            dst[i * n + j] = acc;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::random;

    /// The FMAs take the bf16 products where the bf16 instruction does fewer multiply-adds a
    /// second than they do, and only there; AMX (not timed) always keeps its tiles.
    #[test]
    fn the_fma_route_is_taken_where_the_bf16_instruction_is_slower() {
        let avx512 = Kernel::Avx512Bf16;
        assert_eq!(Route::for_kernel(avx512, Some(0.5)), Route::Fma);
        assert_eq!(Route::for_kernel(avx512, Some(0.999)), Route::Fma);
        assert_eq!(Route::for_kernel(avx512, Some(1.0)), Route::Packed(avx512));
        assert_eq!(Route::for_kernel(avx512, Some(2.0)), Route::Packed(avx512));
        assert_eq!(Route::for_kernel(Kernel::Amx, None), Route::Packed(Kernel::Amx));
        assert_eq!(Route::Fma.name(), crate::CPU_BF16_ON_FMA);
    }

    #[test]
    fn rounding_to_bf16_is_nearest_even() {
        for x in [0.0f32, -0.0, 1.0, -2.5, 1e-30, 3.4e38, f32::INFINITY, f32::MIN_POSITIVE] {
            assert_eq!(to_bf16(x), half::bf16::from_f32(x).to_bits(), "{x}");
        }
        for bits in (0..u32::MAX).step_by(65_521) {
            let x = f32::from_bits(bits);
            if x.is_nan() {
                assert!(from_bf16(to_bf16(x)).is_nan());
            } else {
                assert_eq!(to_bf16(x), half::bf16::from_f32(x).to_bits(), "{bits:#x}");
            }
        }
    }

    #[test]
    fn packing_keeps_every_value_in_its_place() {
        let (n, k) = (37, 45);
        let w = random(n * k, 3);
        let packed = PackedWeight::pack(&w, n, k);
        for j in 0..n {
            for kk in 0..k {
                assert_eq!(
                    packed.weight_at(j, kk),
                    from_bf16(to_bf16(w[j * k + kk])),
                    "({j}, {kk})"
                );
            }
        }
    }

    #[test]
    fn rows_round_as_single_values_do() {
        let x: Vec<f32> = (0..1000u32)
            .map(|i| f32::from_bits(i.wrapping_mul(0x9E37_79B9)))
            .chain([f32::NAN, -f32::NAN, f32::INFINITY, 1e-40, -1e-45])
            .collect();
        let want: Vec<u16> = x.iter().map(|&v| to_bf16(v)).collect();
        let mut got = vec![0u16; x.len()];
        row_rounder()(&x, &mut got);
        assert_eq!(got, want, "round_row on this CPU");
        round_row_portable(&x, &mut got);
        assert_eq!(got, want, "round_row_portable");
    }

    /// Values rounded in place are the bf16 values [`to_bf16`] gives (NaN stays NaN), on
    /// this CPU's rounder and the portable one, on all threads (a buffer split in chunks,
    /// its tail not a whole one) and on the caller's alone.
    #[test]
    fn values_round_in_place_as_single_values_do() {
        let x: Vec<f32> = (0..40_000u32)
            .map(|i| f32::from_bits(i.wrapping_mul(0x9E37_79B9)))
            .chain([f32::NAN, -f32::NAN, f32::INFINITY, 1e-40, -1e-45, 1.0 + 1.0 / 256.0])
            .collect();
        let want: Vec<u32> = x.iter().map(|&v| u32::from(to_bf16(v)) << 16).collect();
        let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
        let same = |got: &[f32], how: &str| {
            for (i, (g, w)) in bits(got).iter().zip(&want).enumerate() {
                let nan = f32::from_bits(*w).is_nan();
                assert!(g == w || (nan && f32::from_bits(*g).is_nan()), "{how} at {i}: {g:#x}");
            }
        };
        for threads in [Threads::All, Threads::This] {
            let mut got = x.clone();
            round_in_place(&mut got, threads);
            same(&got, &format!("{threads:?}"));
        }
        let mut got = x.clone();
        round_in_place_portable(&mut got);
        same(&got, "portable");
        // A tie goes to the even neighbour: 1 + 2^-8 lies halfway between 1 and 1 + 2^-7.
        assert_eq!(got[got.len() - 1], 1.0);
    }

    /// Each fill on all threads and on the caller's alone: the same values in the same places.
    #[test]
    fn strided_activations_and_a_transposed_weight_pack_in_place() {
        for threads in [Threads::All, Threads::This] {
            let (m, k, stride) = (19, 40, 57);
            let x = random((m - 1) * stride + k, 11);
            let mut a = Activations::default();
            a.fill_activations(&x, m, k, stride, threads);
            for i in 0..m {
                for kk in 0..k {
                    let want = from_bf16(to_bf16(x[i * stride + kk]));
                    assert_eq!(a.activation_at(i, kk), want, "{threads:?} ({i}, {kk})");
                }
            }
            // A second, smaller fill reuses the buffer and leaves no trace of the first.
            a.fill_activations(&x, 3, 5, stride, threads);
            for i in 0..3 {
                for kk in 0..32 {
                    let want = if kk < 5 { from_bf16(to_bf16(x[i * stride + kk])) } else { 0.0 };
                    assert_eq!(a.activation_at(i, kk), want, "{threads:?} ({i}, {kk})");
                }
            }
            // A row map runs over each row before it is rounded, the rows themselves untouched.
            let before = x.clone();
            a.fill_activations_of(&x, m, k, stride, threads, |row, out| {
                out.iter_mut().zip(row).enumerate().for_each(|(c, (o, v))| *o = v * 3.0 + c as f32)
            });
            assert_eq!(x, before);
            for i in 0..m {
                for kk in 0..k {
                    let want = from_bf16(to_bf16(x[i * stride + kk] * 3.0 + kk as f32));
                    assert_eq!(a.activation_at(i, kk), want, "{threads:?} mapped ({i}, {kk})");
                }
            }
            // Rows of a weight at a stride (attention's keys), 37 rows: three panels.
            let (n, kw, wstride) = (37, 45, 50);
            let src = random((n - 1) * wstride + kw, 13);
            let mut keys = PackedWeight::default();
            keys.fill_weight_rows(&src, n, kw, wstride, threads);
            for j in 0..n {
                for kk in 0..kw {
                    let want = from_bf16(to_bf16(src[j * wstride + kk]));
                    assert_eq!(keys.weight_at(j, kk), want, "{threads:?} ({j}, {kk})");
                }
            }
            // W[j][kk] = v[kk][j], as attention's p · v reads v; two panels, the second
            // partial.
            let (n, kv) = (21, 35);
            let v = random(kv * n, 12);
            let mut w = PackedWeight::default();
            w.fill_weight_columns(&v, n, kv, n, threads);
            for j in 0..n {
                for kk in 0..kv {
                    let want = from_bf16(to_bf16(v[kk * n + j]));
                    assert_eq!(w.weight_at(j, kk), want, "{threads:?} ({j}, {kk})");
                }
            }
        }
    }

    /// The softmax packed as it is made: what a copy of each row, its f32 softmax and the
    /// rounding pack, bit for bit, on this CPU's path and the portable one; rows of scores
    /// from 1 to 257 (attention's), padding rows and K zeros.
    #[test]
    fn packed_softmax_is_the_softmax_rounded() {
        for threads in [Threads::All, Threads::This] {
            for (m, k) in [
                (1, 1),
                (5, 7),
                (19, 40),
                (3, 31),
                (17, 32),
                (2, 33),
                (16, 64),
                (4, 65),
                (33, 257),
                (256, 257),
            ] {
                let scores: Vec<f32> = random(m * k, 21).iter().map(|v| v * 12.0).collect();
                let mut want = Activations::default();
                want.fill_activations_of(&scores, m, k, k, threads, |row, out| {
                    out.copy_from_slice(row);
                    crate::ops::kernels::softmax(out)
                });
                let mut got = Activations::default();
                got.fill_softmax_rows(&scores, m, k, threads);
                assert!(got.data.as_slice() == want.data.as_slice(), "{threads:?} {m} x {k}");
                let steps = round_up(k, STEP) / STEP;
                let mut portable = vec![0u16; steps * PANEL_STEP];
                let mut exps = vec![0f32; steps * STEP];
                let rows = m.min(PANEL);
                softmax_panel_portable(&scores[..rows * k], k, &mut exps, &mut portable);
                for step in 0..steps {
                    let at = step * PANEL_STEP;
                    assert_eq!(
                        &portable[at..at + rows * STEP],
                        &want.data.as_slice()[at..at + rows * STEP],
                        "portable {m} x {k}, step {step}"
                    );
                }
            }
        }
    }

    /// A product into column groups (of a width that is a multiple of the block, one that
    /// is not, and one that blocks straddle) holds the row-major product's values, moved.
    #[test]
    fn column_groups_hold_the_row_major_product() {
        let kernels = Kernel::available();
        if kernels.is_empty() {
            eprintln!("skipped column groups: {NO_KERNEL}");
        }
        for kernel in kernels {
            let (m, n, k) = (70, 192, 40);
            let mut a = Activations::default();
            a.fill_activations(&random(m * k, 21), m, k, k, Threads::All);
            let w = PackedWeight::pack(&random(n * k, 22), n, k);
            let init = random(m * n, 23);
            let bias = random(n, 77);
            let mut want = init.clone();
            matmul_acc(kernel, &mut want, &a, &w, Some(&bias));
            let mut want_stored = vec![0f32; m * n];
            matmul_acc(kernel, &mut want_stored, &a, &w, Some(&bias));
            for group in [64, 8, 48] {
                let layout = Output::column_groups(m, group);
                let mut grouped = vec![0f32; m * n];
                for i in 0..m {
                    for j in 0..n {
                        grouped[layout.at(i, j)] = init[i * n + j];
                    }
                }
                matmul_to(kernel, &mut grouped, layout, &a, &w, Write::Add, Some(&bias));
                let mut stored = vec![f32::NAN; m * n];
                matmul_to(kernel, &mut stored, layout, &a, &w, Write::Store, Some(&bias));
                for i in 0..m {
                    for j in 0..n {
                        assert_eq!(
                            grouped[layout.at(i, j)],
                            want[i * n + j],
                            "group {group} ({i}, {j})"
                        );
                        assert_eq!(
                            stored[layout.at(i, j)],
                            want_stored[i * n + j],
                            "stored, group {group} ({i}, {j})"
                        );
                    }
                }
            }
        }
    }

    /// Every kernel this CPU runs against the plain loop on the same bf16 operands, on shapes
    /// whose rows, columns and K are not multiples of the 32 × 32 block or the 32-step.
    #[test]
    fn fused_bias_and_activation_packs_what_the_separate_passes_pack() {
        // Against the unfused passes on the same kernel: the product into a matrix holding
        // the bias, the activation over it, then packing. Bit for bit, for every kernel this
        // CPU has, at shapes with partial row and column blocks (and K not a multiple of 32).
        let gelu = |row: &mut [f32]| {
            for v in row.iter_mut() {
                *v = *v / (1.0 + (-1.702 * *v).exp());
            }
        };
        let available = Kernel::available();
        if available.is_empty() {
            eprintln!("skipped fused_bias_and_activation: {NO_KERNEL}");
        }
        for kernel in available {
            for (case, &(m, n, k)) in [
                (1, 32, 32),
                (33, 65, 31),
                (257, 96, 64),
                // Two row tasks, the last with a block of 5 rows added.
                (517, 40, 70),
                (130, 300, 97),
                (70, 300, 600),
                (4, 40, 0),
            ]
            .iter()
            .enumerate()
            {
                let seed = 100 + case as u64 * 5;
                let mut a = Activations::default();
                a.fill_activations(&random(m * k, seed), m, k, k, Threads::All);
                let w = PackedWeight::pack(&random(n * k, seed + 1), n, k);
                let bias = random(n, seed + 2);
                let mut fused = Activations::default();
                // A stale buffer from a bigger product first: every value must be rewritten.
                fused.fill_activations(&random(300 * 400, seed + 3), 300, 400, 400, Threads::All);
                matmul_bias_into_activations(kernel, &a, &w, &bias, gelu, &mut fused);
                let mut h: Vec<f32> = (0..m).flat_map(|_| bias.iter().copied()).collect();
                matmul_acc(kernel, &mut h, &a, &w, None);
                h.chunks_exact_mut(n.max(1)).for_each(gelu);
                let mut separate = Activations::default();
                separate.fill_activations(&h, m, n, n, Threads::All);
                let len = round_up(m.max(1), BLOCK) / PANEL * separate.panel_len();
                assert_eq!((fused.n(), fused.k()), (m, n));
                assert!(
                    fused.data.as_slice()[..len] == separate.data.as_slice()[..len],
                    "{} {m}x{n}x{k}: fused and separate packings differ",
                    kernel.name()
                );
            }
        }
    }

    /// Row tasks cover the rows once, in order, on block boundaries, none over
    /// [`TASK_ROWS`] but a last one with a block of at most one row tile added; tasks are
    /// numbered down the rows first, then across column tasks of [`TASK_COLS`].
    #[test]
    fn tasks_share_out_every_row_and_column_once() {
        let n = 2 * TASK_COLS + 5;
        for m in 0..3000 {
            let end = round_up(m.max(1), BLOCK);
            let tasks = Tasks::new(m, n, end);
            let row_count = tasks.count() / 3;
            assert_eq!(tasks.count(), row_count * 3, "m = {m}");
            let mut next = 0;
            for task in 0..row_count {
                let (rows, cols) = tasks.at(task);
                assert_eq!(rows.start, next, "m = {m}, task {task}");
                assert_eq!(rows.start % BLOCK, 0, "m = {m}, task {task}");
                let live = rows.end.min(m).saturating_sub(rows.start);
                let most = match task + 1 == row_count {
                    true => TASK_ROWS + PANEL,
                    false => TASK_ROWS,
                };
                assert!(live <= most && !rows.is_empty(), "m = {m}, task {task}: {rows:?}");
                assert_eq!(cols, 0..TASK_COLS, "m = {m}, task {task}");
                for col_task in 1..3 {
                    let (same_rows, cols) = tasks.at(task + col_task * row_count);
                    assert_eq!(same_rows, rows, "m = {m}, task {task}, column task {col_task}");
                    let want = col_task * TASK_COLS..((col_task + 1) * TASK_COLS).min(n);
                    assert_eq!(cols, want, "m = {m}, task {task}, column task {col_task}");
                }
                next = rows.end;
            }
            assert_eq!(next, end, "m = {m}");
        }
        // ViT-L/14 at batch 1, 4 and 16.
        let counts = [257, 1028, 4112].map(|m| Tasks::new(m, TASK_COLS, m).count());
        assert_eq!(counts, [1, 4, 16]);
    }

    #[test]
    fn kernels_match_the_reference_on_edge_shapes() {
        let available = Kernel::available();
        #[cfg(target_arch = "x86_64")]
        {
            if !available.contains(&Kernel::Amx) {
                eprintln!("skipped the AMX-BF16 kernel: {}", amx::missing());
            }
            if !available.contains(&Kernel::Avx512Bf16) {
                eprintln!("skipped the AVX512-BF16 kernel: this CPU lacks avx512bf16");
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        eprintln!("skipped the bf16 kernels: they exist on x86-64 only");
        let shapes = [
            (1, 1, 1),
            (5, 3, 7),
            (32, 32, 32),
            (33, 65, 31),
            (130, 300, 97),
            (45, 40, 64),
            (257, 48, 1024),
            // K in AMX's chunks of 16 steps and a partial one; two column tasks, then one
            // row task of 9 blocks (the last of 14 rows), then two (5 and 4 blocks), then
            // two (8, and 8 with a last block of 5 rows).
            (100, 290, 545),
            (270, 40, 545),
            (275, 40, 545),
            (517, 40, 545),
            // A last row block of 18 rows, both of AMX's row tiles (100 and 270 above end
            // in blocks of 4 and 14 rows, the first tile alone).
            (50, 40, 545),
            (40, 16, 0),
        ];
        for kernel in available {
            for (case, &(m, n, k)) in shapes.iter().enumerate() {
                let seed = case as u64 * 3;
                let x = random(m * k, seed + 1);
                let w = PackedWeight::pack(&random(n * k, seed + 2), n, k);
                let init = random(m * n, seed + 3);
                let mut a = Activations::default();
                a.fill_activations(&x, m, k, k, Threads::All);
                let (mut got, mut want) = (init.clone(), init.clone());
                matmul_acc(kernel, &mut got, &a, &w, None);
                matmul_acc_reference(&mut want, &a, &w);
                // The one-thread product into every other row of a wider matrix: the same
                // sums in the same order, and nothing outside its columns touched.
                let ldc = n + 3;
                let mut wide = vec![7.0f32; m * ldc];
                for i in 0..m {
                    wide[i * ldc..i * ldc + n].copy_from_slice(&init[i * n..(i + 1) * n]);
                }
                matmul_acc_strided(kernel, &mut wide, ldc, &a, &w);
                for i in 0..m {
                    assert_eq!(&wide[i * ldc..i * ldc + n], &got[i * n..(i + 1) * n], "row {i}");
                    assert!(wide[i * ldc + n..(i + 1) * ldc].iter().all(|&v| v == 7.0));
                }
                // A bias in the product: the separate pass over `dst` first, bit for bit.
                let bias = random(n, seed + 4);
                let mut fused = init.clone();
                matmul_acc(kernel, &mut fused, &a, &w, Some(&bias));
                let mut separate = init.clone();
                for row in separate.chunks_exact_mut(n) {
                    row.iter_mut().zip(&bias).for_each(|(v, b)| *v += b);
                }
                matmul_acc(kernel, &mut separate, &a, &w, None);
                assert!(
                    fused == separate,
                    "{} {m}x{n}x{k}: bias in the product differs",
                    kernel.name()
                );
                // Stored over NaN (never read): the product alone, as added to zeros.
                let mut zeros = vec![0.0f32; m * n];
                matmul_acc(kernel, &mut zeros, &a, &w, None);
                let mut stored = vec![f32::NAN; m * ldc];
                for i in 0..m {
                    stored[i * ldc + n..(i + 1) * ldc].fill(7.0);
                }
                // SAFETY: `stored` holds m rows of n values at stride ldc.
                unsafe { matmul_raw(kernel, stored.as_mut_ptr(), ldc, &a, &w, Write::Store) };
                for i in 0..m {
                    assert_eq!(
                        &stored[i * ldc..i * ldc + n],
                        &zeros[i * n..(i + 1) * n],
                        "row {i}"
                    );
                    assert!(stored[i * ldc + n..(i + 1) * ldc].iter().all(|&v| v == 7.0));
                }
                for i in 0..m {
                    for j in 0..n {
                        // Any order of f32 summation of k + 1 terms (fused or not) is within
                        // (k + 1) · eps · Σ|terms| of the exact sum, so within twice that of
                        // the reference's own order.
                        let magnitude = init[i * n + j].abs()
                            + (0..k)
                                .map(|t| (a.activation_at(i, t) * w.weight_at(j, t)).abs())
                                .sum::<f32>();
                        let bound = 2.0 * (k + 1) as f32 * f32::EPSILON * magnitude;
                        let diff = (got[i * n + j] - want[i * n + j]).abs();
                        assert!(
                            diff <= bound,
                            "{} {m}x{n}x{k} at ({i}, {j}): got {}, want {}, diff {diff} > {bound}",
                            kernel.name(),
                            got[i * n + j],
                            want[i * n + j],
                        );
                    }
                }
            }
        }
    }
}
