//! The AMX-BF16 block kernel: a 32 × 32 f32 block as 2 × 2 tiles, `tdpbf16ps` over K.
//!
//! Tiles are configured for the span of a [`Tiles`] value (one parallel task's blocks) and
//! released when it drops, so no tile state outlives the task; beyond that, the process-wide
//! permission that [`available`] requests from Linux once is all a thread needs.

use std::arch::asm;
use std::cell::Cell;
use std::sync::OnceLock;

/// `arch_prctl` request for permission to use an extended state component.
const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
/// The AMX tile data state component.
const XFEATURE_XTILEDATA: i64 = 18;

/// What stands between this process and AMX, or `None` when it may use it.
fn check() -> Option<&'static str> {
    static RESULT: OnceLock<Option<&'static str>> = OnceLock::new();
    *RESULT.get_or_init(|| {
        // CPUID leaf 7, sub-leaf 0, EDX: bit 22 AMX-BF16, bit 24 AMX-TILE.
        let leaf = std::arch::x86_64::__cpuid_count(7, 0);
        if leaf.edx & (1 << 24) == 0 || leaf.edx & (1 << 22) == 0 {
            return Some("this CPU lacks amx-tile and amx-bf16");
        }
        // Every AMX CPU has it; the kernel adds its sums to the output with it.
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return Some("this CPU has AMX but lacks avx512f");
        }
        if !cfg!(target_os = "linux") {
            return Some("AMX is only enabled on Linux (it needs the kernel's permission request)");
        }
        if request_permission() != 0 {
            return Some("Linux refused arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)");
        }
        None
    })
}

/// Whether this process may run the AMX kernel (asking Linux for tile permission once).
pub(super) fn available() -> bool {
    check().is_none()
}

/// Why the AMX kernel cannot run here, for skip messages.
#[cfg(test)]
pub(super) fn missing() -> &'static str {
    check().unwrap_or("nothing is missing")
}

/// The raw `arch_prctl` system call: 0 on success.
fn request_permission() -> i64 {
    let ret: i64;
    // SAFETY: the `arch_prctl` system call (158 on x86-64 Linux) with a request that only
    // changes which state components this process may use; it reads no memory of ours.
    // `syscall` clobbers rcx and r11.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") 158i64 => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

/// Palette 1, all eight tiles 16 rows of 64 bytes (16 f32 or 32 bf16).
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

const CONFIG: TileConfig = {
    let mut bytes = [0u8; 64];
    bytes[0] = 1;
    let mut t = 0;
    while t < 8 {
        bytes[16 + 2 * t] = 64;
        bytes[48 + t] = 16;
        t += 1;
    }
    TileConfig(bytes)
};

/// This thread's tiles, configured (palette 1, eight 16 × 64-byte tiles) for as long as the
/// value lives and released when it drops: a block kernel call needs one, so no call runs on
/// unconfigured tiles, and configuring once per task rather than per block measured 10-15 %
/// faster products. Not `Send`: tile state belongs to the thread. It also holds the buffer
/// each block's sums are stored to, made once per task rather than per block.
pub(super) struct Tiles {
    sums: Box<Sums>,
    thread_bound: std::marker::PhantomData<*const ()>,
}

impl Tiles {
    /// Loads the tile configuration on this thread.
    ///
    /// # Safety
    /// [`available`] returned true, and no other `Tiles` lives on this thread (it would be
    /// released under this one).
    pub(super) unsafe fn configure() -> Tiles {
        // SAFETY: AMX is enabled for this process (the caller checked `available`); the
        // configuration is a 64-byte static.
        unsafe { asm!("ldtilecfg [{cfg}]", cfg = in(reg) &CONFIG, options(nostack, readonly)) };
        Tiles { sums: Box::new(Sums([0.0; 32 * 32])), thread_bound: std::marker::PhantomData }
    }

    /// `c (32 × 32, stride ldc floats) += a · bᵀ` (or `=`, as `write` says), each two packed
    /// panels: the four tiles of sums start at zero, run over all of K (one [`chunk_sums`]),
    /// and are added to (or stored into) `c` at the end (loading `c` into tiles instead reads 16 rows at a stride
    /// of a multiple of 4 KiB, which share one L1 set, and measured slower). Of a block whose
    /// first `live` rows matter, at most 16, only the first row tile is computed (the other
    /// rows of `c` then hold whatever the sums buffer held).
    ///
    /// # Safety
    /// The pointers address what [`super::each_block`] passes to its `block`.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn block(
        &mut self,
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
        let s = self.sums.0.as_mut_ptr();
        if steps == 0 {
            self.sums.0.fill(0.0);
            // SAFETY: as below.
            unsafe { write_sums(c, ldc, &self.sums, write, bias) };
            return;
        }
        // SAFETY: the tiles are configured (`self`); the caller guarantees the panels are in
        // bounds for `steps` (> 0) steps; `sums` is 32 rows of 32 floats.
        unsafe {
            match live <= 16 {
                // Nothing to fetch ahead of a whole-K block: `b` again, already in cache.
                true => first_tile_sums(s, a, b, panel, steps, true, b),
                false => chunk_sums(s, a, b, panel, steps, true, b),
            }
        }
        // SAFETY: the caller guarantees 32 rows of 32 writable floats at stride `ldc`; the
        // CPU has AVX-512F (`check` requires it with AMX).
        unsafe { write_sums(c, ldc, &self.sums, write, bias) }
    }
}

/// `c (32 × 32, stride ldc) = (c + bias) + sums` (or `= bias + sums`; no bias is zero), two
/// zmm registers a row: the order in which separate passes would add them. Written out
/// because the plain loop compiled to scalar adds, a third of the kernel's time at K = 1024
/// (perf annotate).
///
/// # Safety
/// `c` addresses 32 rows of 32 writable floats at stride `ldc`; the CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn write_sums(
    c: *mut f32,
    ldc: usize,
    sums: &Sums,
    write: super::Write,
    bias: Option<&[f32; 32]>,
) {
    use std::arch::x86_64::{_mm512_add_ps, _mm512_load_ps, _mm512_loadu_ps, _mm512_storeu_ps};
    let s = sums.0.as_ptr();
    // SAFETY: 32 floats each.
    let bias =
        bias.map(|b| unsafe { [_mm512_loadu_ps(b.as_ptr()), _mm512_loadu_ps(b.as_ptr().add(16))] });
    for r in 0..32 {
        for half in [0, 16] {
            // SAFETY: row `r` of `c` and of `sums` (64-byte aligned, 32 floats a row) hold 32
            // floats from their start, so `half + 16` stays inside both.
            unsafe {
                let d = c.add(r * ldc + half);
                let sum = _mm512_load_ps(s.add(r * 32 + half));
                let value = match (write, bias) {
                    (super::Write::Add, None) => _mm512_add_ps(_mm512_loadu_ps(d), sum),
                    (super::Write::Add, Some(bias)) => {
                        _mm512_add_ps(_mm512_add_ps(_mm512_loadu_ps(d), bias[half / 16]), sum)
                    }
                    (super::Write::Store, None) => sum,
                    (super::Write::Store, Some(bias)) => _mm512_add_ps(bias[half / 16], sum),
                };
                _mm512_storeu_ps(d, value);
            }
        }
    }
}

/// K steps of one chunk of [`Tiles::task_sums`]: a block's two A panels for a chunk (32 KiB)
/// stay in L1 while the task's column blocks pass under them.
pub(super) const CHUNK_STEPS: usize = 16;

thread_local! {
    /// Each thread's buffer of task sums, kept between tasks (only ever grown).
    static TASK_SUMS: Cell<Vec<Sums>> = const { Cell::new(Vec::new()) };
}

/// The sums of every block of one task (see [`Tiles::task_sums`]), returned to the thread's
/// buffer when dropped.
pub(super) struct TaskSums {
    sums: Vec<Sums>,
    col_blocks: usize,
}

impl TaskSums {
    /// Writes the sums of row block `bi`, column block `bj` of the task into `c` (32 × 32 at
    /// stride `ldc`) as [`Tiles::block`] writes its own.
    ///
    /// # Safety
    /// As [`write_sums`].
    pub(super) unsafe fn write(
        &self,
        c: *mut f32,
        ldc: usize,
        (bi, bj): (usize, usize),
        write: super::Write,
        bias: Option<&[f32; 32]>,
    ) {
        // SAFETY: forwarded.
        unsafe { write_sums(c, ldc, &self.sums[bi * self.col_blocks + bj], write, bias) }
    }
}

impl Drop for TaskSums {
    fn drop(&mut self) {
        TASK_SUMS.set(std::mem::take(&mut self.sums));
    }
}

impl Tiles {
    /// The sums of all `row_blocks × col_blocks` blocks of a task, `a` and `b` the first
    /// block's two panels each (the next block's two panels `2 · panel` u16 further), over
    /// K in chunks of [`CHUNK_STEPS`]: for each chunk, each row block's chunk of A is loaded
    /// from L1 for every column block, where whole-K blocks stream both operands from L2 at
    /// a tile load per `tdpbf16ps` (ViT-L/14's shapes on one Xeon thread: 720-950 → 950-1030
    /// GFLOP/s). B's tiles are loaded with the `T1` hint, so that they do not push A's chunk
    /// out of L1 (10 % more than without it). The sums pass between chunks through the
    /// buffer (f32 tiles stored and reloaded: the same values as one run over K).
    ///
    /// Of a row block with at most 16 of the task's `live_rows` (the matrix's last), only
    /// the first row tile is computed, as [`Tiles::block`] does: at batch 1, ViT-L/14's 257
    /// rows are 9 blocks of 32, whose last holds one row.
    ///
    /// # Safety
    /// The panels are in bounds for `row_blocks` and `col_blocks` blocks of `steps` steps.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn task_sums(
        &mut self,
        a: *const u16,
        b: *const u16,
        panel: usize,
        steps: usize,
        row_blocks: usize,
        col_blocks: usize,
        live_rows: usize,
    ) -> TaskSums {
        let mut sums = TASK_SUMS.take();
        if sums.len() < row_blocks * col_blocks {
            sums.resize_with(row_blocks * col_blocks, || Sums([0.0; 32 * 32]));
        }
        for first in (0..steps).step_by(CHUNK_STEPS) {
            let chunk = CHUNK_STEPS.min(steps - first);
            let next_chunk = CHUNK_STEPS.min(steps.saturating_sub(first + CHUNK_STEPS));
            for bi in 0..row_blocks {
                let one_tile = live_rows.saturating_sub(bi * 32) <= 16;
                for bj in 0..col_blocks {
                    let at = first * super::PANEL_STEP;
                    let sums = sums[bi * col_blocks + bj].0.as_mut_ptr();
                    // SAFETY: as the caller guarantees (the block's panels are in bounds);
                    // `sums` is one 32 × 32 block.
                    unsafe {
                        let (a, b) = (a.add(bi * 2 * panel + at), b.add(bj * 2 * panel + at));
                        let ahead = ahead_of(b, panel, chunk, next_chunk, bi);
                        match one_tile {
                            true => first_tile_sums(sums, a, b, panel, chunk, first == 0, ahead),
                            false => chunk_sums(sums, a, b, panel, chunk, first == 0, ahead),
                        }
                    };
                }
            }
        }
        TaskSums { sums, col_blocks }
    }
}

/// Where a chunk's kernel fetches B ahead, 256 bytes a step (`prefetcht1`, into L2): for
/// row blocks 1 to 8 of a task, an eighth each of the next chunk of the same column block's
/// two panels (a quarter chunk of one panel), so that by the next chunk's first row block,
/// which would otherwise wait on memory for all of it, its B is in L2. Row block 0 reads
/// the chunk's B from memory itself, and the later ones from L2; fetching the next chunk
/// meanwhile overlaps memory with their tile products. At ViT-L/14's batch 1 each weight is
/// streamed from memory for 257 rows only: bf16 batch 1 measured 4-10 % faster, batch 4
/// 2-6 % (Xeon 6/167, binaries alternated). Where there is nothing to fetch, `b` itself,
/// already in cache. A prefetch changes no value, only where it waits.
fn ahead_of(b: *const u16, panel: usize, chunk: usize, next_chunk: usize, bi: usize) -> *const u16 {
    const QUARTER: usize = CHUNK_STEPS / 4;
    let part = bi.wrapping_sub(1);
    if part >= 8 || (part % 4) * QUARTER >= next_chunk {
        return b;
    }
    // The next chunk starts `chunk` steps on; each step of a panel is PANEL_STEP values.
    let offset =
        chunk * super::PANEL_STEP + (part / 4) * panel + (part % 4) * QUARTER * super::PANEL_STEP;
    b.wrapping_add(offset)
}

/// One step's fetch ahead in a chunk loop (see [`ahead_of`]): four cache lines from
/// `{ahead}` into L2, and `{ahead}` moved past them.
macro_rules! fetch_ahead {
    () => {
        "prefetcht1 [{ahead}]\nprefetcht1 [{ahead} + 64]\nprefetcht1 [{ahead} + 128]\nprefetcht1 [{ahead} + 192]\nadd {ahead}, 256"
    };
}

/// One chunk of `steps` steps into the block of sums `c` (rows of 32 floats): its tiles
/// start at zero (`first`) or at what `c` holds, and are stored back. Meanwhile the
/// `steps × 256` bytes from `ahead` are fetched into L2 (see [`ahead_of`]).
///
/// # Safety
/// Tiles are configured; the panels hold `steps` steps from `a`, `a + panel`, `b` and
/// `b + panel`; `c` is 32 × 32 writable floats.
unsafe fn chunk_sums(
    c: *mut f32,
    a: *const u16,
    b: *const u16,
    panel: usize,
    steps: usize,
    first: bool,
    ahead: *const u16,
) {
    // SAFETY: as the caller guarantees; `steps` > 0 (a chunk of a non-empty K).
    unsafe {
        if first {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            );
        } else {
            asm!(
                "tileloadd tmm0, [{c0} + {s128}]",
                "tileloadd tmm1, [{c0} + {s128} + 64]",
                "tileloadd tmm2, [{c1} + {s128}]",
                "tileloadd tmm3, [{c1} + {s128} + 64]",
                c0 = in(reg) c,
                c1 = in(reg) c.add(16 * 32),
                s128 = in(reg) 128usize,
                options(nostack, readonly),
            );
        }
        asm!(
            "2:",
            "tileloadd tmm4, [{a0} + {s64}]",
            "tileloaddt1 tmm6, [{b0} + {s64}]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloaddt1 tmm7, [{b1} + {s64}]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {s64}]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a0}, 1024",
            "add {a1}, 1024",
            "add {b0}, 1024",
            "add {b1}, 1024",
            fetch_ahead!(),
            "dec {steps}",
            "jnz 2b",
            "tilestored [{c0} + {s128}], tmm0",
            "tilestored [{c0} + {s128} + 64], tmm1",
            "tilestored [{c1} + {s128}], tmm2",
            "tilestored [{c1} + {s128} + 64], tmm3",
            a0 = inout(reg) a => _,
            a1 = inout(reg) a.add(panel) => _,
            b0 = inout(reg) b => _,
            b1 = inout(reg) b.add(panel) => _,
            c0 = in(reg) c,
            c1 = in(reg) c.add(16 * 32),
            s64 = in(reg) 64usize,
            s128 = in(reg) 128usize,
            steps = inout(reg) steps => _,
            ahead = inout(reg) ahead => _,
            options(nostack),
        );
    }
}

/// As [`chunk_sums`] for the block's first row tile alone (rows 0..16 of `c`); rows 16..32
/// of `c` are left as they are.
///
/// # Safety
/// As [`chunk_sums`] (`a + panel` is not read).
unsafe fn first_tile_sums(
    c: *mut f32,
    a: *const u16,
    b: *const u16,
    panel: usize,
    steps: usize,
    first: bool,
    ahead: *const u16,
) {
    // SAFETY: as the caller guarantees; `steps` > 0.
    unsafe {
        if first {
            asm!("tilezero tmm0", "tilezero tmm1", options(nostack, nomem));
        } else {
            asm!(
                "tileloadd tmm0, [{c0} + {s128}]",
                "tileloadd tmm1, [{c0} + {s128} + 64]",
                c0 = in(reg) c,
                s128 = in(reg) 128usize,
                options(nostack, readonly),
            );
        }
        asm!(
            "2:",
            "tileloadd tmm4, [{a0} + {s64}]",
            "tileloaddt1 tmm6, [{b0} + {s64}]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloaddt1 tmm7, [{b1} + {s64}]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "add {a0}, 1024",
            "add {b0}, 1024",
            "add {b1}, 1024",
            fetch_ahead!(),
            "dec {steps}",
            "jnz 2b",
            "tilestored [{c0} + {s128}], tmm0",
            "tilestored [{c0} + {s128} + 64], tmm1",
            a0 = inout(reg) a => _,
            b0 = inout(reg) b => _,
            b1 = inout(reg) b.add(panel) => _,
            c0 = in(reg) c,
            s64 = in(reg) 64usize,
            s128 = in(reg) 128usize,
            steps = inout(reg) steps => _,
            ahead = inout(reg) ahead => _,
            options(nostack),
        );
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: the tiles were configured by `configure`; releasing returns them to the
        // initial state, which no later code on this thread depends on.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// One block's sums, stored from the tiles on a cache line.
#[repr(C, align(64))]
struct Sums([f32; 32 * 32]);
