//! The AVX512-BF16 block kernel: `vdpbf16ps` on 8 rows × 32 columns of zmm accumulators.
//!
//! A packed step row (16 columns × one K pair) is one zmm register; each activation pair is
//! broadcast to all 16 lanes, so one instruction adds two products to 16 outputs.

use std::arch::x86_64::{
    __m512, __m512bh, _mm512_add_ps, _mm512_dpbf16_ps, _mm512_loadu_ps, _mm512_set1_epi32,
    _mm512_setzero_ps, _mm512_storeu_ps,
};

/// Whether this CPU has AVX512-BF16 (and the AVX-512F it extends).
pub(super) fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bf16")
}

/// How many f32 multiply-adds `vdpbf16ps` does a second on this core, as a multiple of what
/// `vfmadd231ps` does: each from a loop of 12 independent zmm chains, the fastest of 16 tries
/// of 24,000 instructions each (well under a millisecond in all). `vdpbf16ps` adds two
/// products a lane, so 2 means it issues as fast as an FMA; measured 0.5 on a Xeon of family
/// 6 model 207 with its AMX hidden, where one `vdpbf16ps` takes four FMAs' time.
///
/// # Safety
/// [`available`] returned true.
pub(super) unsafe fn rate_against_fma() -> f64 {
    use std::arch::asm;
    use std::time::{Duration, Instant};

    const ROUNDS: u64 = 2_000;
    macro_rules! twelve_chains {
        ($op:literal) => {
            || {
                let start = Instant::now();
                // SAFETY: register-only arithmetic on zmm registers, which it declares.
                unsafe {
                    asm!(
                        "vpxord zmm0, zmm0, zmm0",
                        "vpxord zmm1, zmm1, zmm1",
                        "2:",
                        concat!($op, " zmm2, zmm0, zmm1"),
                        concat!($op, " zmm3, zmm0, zmm1"),
                        concat!($op, " zmm4, zmm0, zmm1"),
                        concat!($op, " zmm5, zmm0, zmm1"),
                        concat!($op, " zmm6, zmm0, zmm1"),
                        concat!($op, " zmm7, zmm0, zmm1"),
                        concat!($op, " zmm8, zmm0, zmm1"),
                        concat!($op, " zmm9, zmm0, zmm1"),
                        concat!($op, " zmm10, zmm0, zmm1"),
                        concat!($op, " zmm11, zmm0, zmm1"),
                        concat!($op, " zmm12, zmm0, zmm1"),
                        concat!($op, " zmm13, zmm0, zmm1"),
                        "dec {rounds}",
                        "jnz 2b",
                        rounds = inout(reg) ROUNDS => _,
                        out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _,
                        out("zmm4") _, out("zmm5") _, out("zmm6") _, out("zmm7") _,
                        out("zmm8") _, out("zmm9") _, out("zmm10") _, out("zmm11") _,
                        out("zmm12") _, out("zmm13") _,
                        options(nomem, nostack),
                    )
                };
                start.elapsed()
            }
        };
    }
    let (fma, dp) = (twelve_chains!("vfmadd231ps"), twelve_chains!("vdpbf16ps"));
    let (mut fastest_fma, mut fastest_dp) = (Duration::MAX, Duration::MAX);
    for _ in 0..16 {
        fastest_fma = fastest_fma.min(fma());
        fastest_dp = fastest_dp.min(dp());
    }
    2.0 * fastest_fma.as_secs_f64() / fastest_dp.as_secs_f64().max(f64::MIN_POSITIVE)
}

/// Rows of one register block.
const ROWS: usize = 8;

/// `c (32 × 32, stride ldc floats) += a · bᵀ` (or `=`, as `write` says), each two packed
/// panels, for the 8-row groups
/// that hold the first `live` rows (the rest of `c` is left as it is: an edge block's rows
/// past the matrix are never read back).
///
/// # Safety
/// [`available`] returned true; the pointers address what [`super::each_block`] passes to its `block`.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn block(
    c: *mut f32,
    ldc: usize,
    a: *const u16,
    b: *const u16,
    panel: usize,
    steps: usize,
    live: usize,
    write: super::Write,
    bias: Option<&[f32; 32]>,
) {
    for r in (0..live.min(super::BLOCK)).step_by(ROWS) {
        let a = a.wrapping_add((r / super::PANEL) * panel + (r % super::PANEL) * super::STEP);
        // SAFETY: forwarded, for rows r .. r + 8 of the block (within one 16-row panel).
        unsafe { rows(c.add(r * ldc), ldc, a, b, panel, steps, write, bias) }
    }
}

#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows(
    c: *mut f32,
    ldc: usize,
    a: *const u16,
    b: *const u16,
    panel: usize,
    steps: usize,
    write: super::Write,
    bias: Option<&[f32; 32]>,
) {
    // SAFETY: every address is inside the caller's block, rows or panels.
    unsafe {
        // Sums start from the output plus the bias (or the bias alone): the order in which
        // separate passes would add them.
        let bias = bias.map_or([_mm512_setzero_ps(); 2], |b| {
            [_mm512_loadu_ps(b.as_ptr()), _mm512_loadu_ps(b.as_ptr().add(16))]
        });
        let mut acc: [[__m512; 2]; ROWS] = std::array::from_fn(|r| match write {
            super::Write::Add => [
                _mm512_add_ps(_mm512_loadu_ps(c.add(r * ldc)), bias[0]),
                _mm512_add_ps(_mm512_loadu_ps(c.add(r * ldc + 16)), bias[1]),
            ],
            super::Write::Store => bias,
        });
        for step in 0..steps {
            for pair in 0..super::STEP / 2 {
                let offset = step * super::PANEL_STEP + pair * 2 * super::PANEL;
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_ps(b.add(offset).cast()));
                let b1: __m512bh =
                    std::mem::transmute(_mm512_loadu_ps(b.add(panel + offset).cast()));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let at = a.add(step * super::PANEL_STEP + r * super::STEP + 2 * pair);
                    let pair: __m512bh =
                        std::mem::transmute(_mm512_set1_epi32(at.cast::<i32>().read_unaligned()));
                    acc[0] = _mm512_dpbf16_ps(acc[0], pair, b0);
                    acc[1] = _mm512_dpbf16_ps(acc[1], pair, b1);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            _mm512_storeu_ps(c.add(r * ldc), acc[0]);
            _mm512_storeu_ps(c.add(r * ldc + 16), acc[1]);
        }
    }
}

#[cfg(test)]
mod tests {
    /// The rate comes out a plain positive number (it is only ever compared with 1 and 1.25,
    /// to decide what a run says about bf16): 0.5 on a Xeon with AMX hidden, where one
    /// `vdpbf16ps` takes four FMAs' time.
    #[test]
    fn the_rate_against_fma_is_measured() {
        if !super::available() {
            eprintln!("the_rate_against_fma_is_measured: skipped, this CPU lacks AVX512-BF16");
            return;
        }
        // SAFETY: checked just above.
        let rate = unsafe { super::rate_against_fma() };
        eprintln!(
            "the_rate_against_fma_is_measured: vdpbf16ps does {rate:.2} x the FMA's multiply-adds here"
        );
        assert!(rate.is_finite() && (0.05..=50.0).contains(&rate), "{rate}");
    }
}
