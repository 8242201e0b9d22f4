//! AVX-512F kernels for one head's two attention products, register-blocked on zmm
//! accumulators: `p = q · kᵀ` on 8 rows × 48 columns, `out = p · v` on 6 rows × 64 columns.
//!
//! Each output sums its products in K order (`d` for the scores, `j` for the values), one
//! fused multiply-add at a time, so a head's outputs do not depend on the batch, the thread
//! or the head around it.

use std::arch::x86_64::{
    __m512, __mmask16, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_mask_storeu_ps,
    _mm512_maskz_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps, _mm512_storeu_ps,
};

/// f32 lanes of one zmm register.
const LANES: usize = 16;
/// Rows and register columns of one scores block: 24 accumulators.
const SCORE_ROWS: usize = 8;
const SCORE_VECTORS: usize = 3;
/// Rows and register columns of one values block: 24 accumulators.
const VALUE_ROWS: usize = 6;
const VALUE_VECTORS: usize = 4;

/// Whether this CPU has AVX-512F.
pub(super) fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

/// Row length of the keys' transpose for `s` keys: whole zmm registers.
pub(super) fn keys_row(s: usize) -> usize {
    s.next_multiple_of(LANES)
}

/// `p (s × s, rows s apart) = q (s × hd, rows q_step apart) · kᵀ`, with `kᵀ` given as
/// `keys`: `hd` rows of [`keys_row`]`(s)`, the columns past `s` zero.
///
/// # Safety
/// [`available`] returned true; the three buffers hold what those shapes and steps address.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn scores(
    q: *const f32,
    q_step: usize,
    keys: *const f32,
    s: usize,
    hd: usize,
    p: *mut f32,
) {
    let at = Scores { q, q_step, keys, keys_row: keys_row(s), s, hd, p };
    for i in (0..s).step_by(SCORE_ROWS) {
        for j in (0..s).step_by(SCORE_VECTORS * LANES) {
            let vectors = (s - j).div_ceil(LANES).min(SCORE_VECTORS);
            // SAFETY: rows i .. i + rows and columns j .. j + 16 · vectors (stored up to s)
            // lie in the operands, as the caller promises.
            unsafe {
                match (s - i).min(SCORE_ROWS) {
                    8 => at.block_of::<8>(i, j, vectors),
                    7 => at.block_of::<7>(i, j, vectors),
                    6 => at.block_of::<6>(i, j, vectors),
                    5 => at.block_of::<5>(i, j, vectors),
                    4 => at.block_of::<4>(i, j, vectors),
                    3 => at.block_of::<3>(i, j, vectors),
                    2 => at.block_of::<2>(i, j, vectors),
                    _ => at.block_of::<1>(i, j, vectors),
                }
            }
        }
    }
}

/// The operands of [`scores`].
#[derive(Clone, Copy)]
struct Scores {
    q: *const f32,
    q_step: usize,
    keys: *const f32,
    keys_row: usize,
    s: usize,
    hd: usize,
    p: *mut f32,
}

impl Scores {
    #[target_feature(enable = "avx512f")]
    unsafe fn block_of<const R: usize>(self, i: usize, j: usize, vectors: usize) {
        // SAFETY: forwarded.
        unsafe {
            match vectors {
                3 => self.block::<R, 3>(i, j),
                2 => self.block::<R, 2>(i, j),
                _ => self.block::<R, 1>(i, j),
            }
        }
    }

    /// Rows `i .. i + R`, columns `j .. j + 16 V` (those past `s` computed on the zero
    /// padding and not stored).
    #[target_feature(enable = "avx512f")]
    unsafe fn block<const R: usize, const V: usize>(self, i: usize, j: usize) {
        // SAFETY: every address is inside the operands, as `scores`' caller promises.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); V]; R];
            let q = self.q.add(i * self.q_step);
            let keys = self.keys.add(j);
            for d in 0..self.hd {
                let mut k = [_mm512_setzero_ps(); V];
                for (v, k) in k.iter_mut().enumerate() {
                    *k = _mm512_loadu_ps(keys.add(d * self.keys_row + v * LANES));
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let a = _mm512_set1_ps(*q.add(r * self.q_step + d));
                    for (acc, k) in acc.iter_mut().zip(&k) {
                        *acc = _mm512_fmadd_ps(a, *k, *acc);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                let row = self.p.add((i + r) * self.s);
                for (v, acc) in acc.iter().enumerate() {
                    store(row, j + v * LANES, self.s, *acc);
                }
            }
        }
    }
}

/// Stores the lanes of `x` that fall before column `end`, from column `col` of `row` on.
#[target_feature(enable = "avx512f")]
unsafe fn store(row: *mut f32, col: usize, end: usize, x: __m512) {
    // SAFETY: columns col .. min(col + 16, end) of the row are the caller's.
    unsafe {
        if col + LANES <= end {
            _mm512_storeu_ps(row.add(col), x);
        } else {
            let mask: __mmask16 = (1u16 << (end - col)) - 1;
            _mm512_mask_storeu_ps(row.add(col), mask, x);
        }
    }
}

/// `out (s × hd, rows out_step apart) = p (s × s, rows s apart) · v (s × hd, rows hd
/// apart)`; columns past the last whole zmm register of a row masked off.
///
/// # Safety
/// [`available`] returned true; the three buffers hold what those shapes and
/// steps address.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn values(
    p: *const f32,
    s: usize,
    v: *const f32,
    hd: usize,
    out: *mut f32,
    out_step: usize,
) {
    let at = Values { p, s, v, hd, out, out_step };
    for i in (0..s).step_by(VALUE_ROWS) {
        for c in (0..hd).step_by(VALUE_VECTORS * LANES) {
            let vectors = (hd - c).div_ceil(LANES).min(VALUE_VECTORS);
            // SAFETY: rows i .. i + rows and columns c .. c + 16 · vectors lie in the
            // operands, as the caller promises.
            unsafe {
                match (s - i).min(VALUE_ROWS) {
                    6 => at.block_of::<6>(i, c, vectors),
                    5 => at.block_of::<5>(i, c, vectors),
                    4 => at.block_of::<4>(i, c, vectors),
                    3 => at.block_of::<3>(i, c, vectors),
                    2 => at.block_of::<2>(i, c, vectors),
                    _ => at.block_of::<1>(i, c, vectors),
                }
            }
        }
    }
}

/// The operands of [`values`].
#[derive(Clone, Copy)]
struct Values {
    p: *const f32,
    s: usize,
    v: *const f32,
    hd: usize,
    out: *mut f32,
    out_step: usize,
}

impl Values {
    #[target_feature(enable = "avx512f")]
    unsafe fn block_of<const R: usize>(self, i: usize, c: usize, vectors: usize) {
        // SAFETY: forwarded.
        unsafe {
            match (vectors, self.hd.is_multiple_of(LANES)) {
                (4, true) => self.block::<R, 4, false>(i, c),
                (3, true) => self.block::<R, 3, false>(i, c),
                (2, true) => self.block::<R, 2, false>(i, c),
                (_, true) => self.block::<R, 1, false>(i, c),
                (4, false) => self.block::<R, 4, true>(i, c),
                (3, false) => self.block::<R, 3, true>(i, c),
                (2, false) => self.block::<R, 2, true>(i, c),
                (_, false) => self.block::<R, 1, true>(i, c),
            }
        }
    }

    /// Rows `i .. i + R`, columns `c .. c + 16 V`; `MASKED` for heads of a part register,
    /// whose lanes past `hd` are neither read nor stored (whole registers load and store
    /// unmasked: masked, ViT-L/14 ran 4-7% slower on a Xeon).
    #[target_feature(enable = "avx512f")]
    unsafe fn block<const R: usize, const V: usize, const MASKED: bool>(self, i: usize, c: usize) {
        let mut masks = [0 as __mmask16; V];
        for (t, mask) in masks.iter_mut().enumerate() {
            let lanes = self.hd.saturating_sub(c + t * LANES).min(LANES);
            *mask = ((1u32 << lanes) - 1) as __mmask16;
        }
        // SAFETY: every address is inside the operands, as `values`' caller promises.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); V]; R];
            let p = self.p.add(i * self.s);
            let v = self.v.add(c);
            for j in 0..self.s {
                let mut x = [_mm512_setzero_ps(); V];
                for (t, x) in x.iter_mut().enumerate() {
                    let at = v.add(j * self.hd + t * LANES);
                    *x = match MASKED {
                        true => _mm512_maskz_loadu_ps(masks[t], at),
                        false => _mm512_loadu_ps(at),
                    };
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    let a = _mm512_set1_ps(*p.add(r * self.s + j));
                    for (acc, x) in acc.iter_mut().zip(&x) {
                        *acc = _mm512_fmadd_ps(a, *x, *acc);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                let row = self.out.add((i + r) * self.out_step + c);
                for (t, acc) in acc.iter().enumerate() {
                    match MASKED {
                        true => _mm512_mask_storeu_ps(row.add(t * LANES), masks[t], *acc),
                        false => _mm512_storeu_ps(row.add(t * LANES), *acc),
                    }
                }
            }
        }
    }
}
