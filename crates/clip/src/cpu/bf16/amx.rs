//! The AMX-BF16 block kernel: a 32 × 32 f32 block as 2 × 2 tiles, `tdpbf16ps` over K.
//!
//! Tiles are configured and released inside each call, so no tile state outlives it and the
//! caller's thread needs no set-up beyond the process-wide permission that [`available`]
//! requests from Linux once.

use std::arch::asm;
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

/// `c (32 × 32, stride ldc floats) += a · bᵀ`, each two packed panels.
///
/// # Safety
/// [`available`] returned true; the pointers address what [`super::Kernel::block`] says.
pub(super) unsafe fn block(
    c: *mut f32,
    ldc: usize,
    a: *const u16,
    b: *const u16,
    panel: usize,
    steps: usize,
) {
    if steps == 0 {
        return;
    }
    // SAFETY: the caller guarantees the block, rows and panels are in bounds (every address
    // below is inside them) and that AMX is enabled for this process. The tiles are loaded
    // from the configuration here and released before returning.
    unsafe {
        asm!(
            "ldtilecfg [{cfg}]",
            "tileloadd tmm0, [{c0} + {ldc}]",
            "tileloadd tmm1, [{c0} + {ldc} + 64]",
            "tileloadd tmm2, [{c1} + {ldc}]",
            "tileloadd tmm3, [{c1} + {ldc} + 64]",
            "2:",
            "tileloadd tmm4, [{a0} + {s64}]",
            "tileloadd tmm6, [{b0} + {s64}]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {s64}]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {s64}]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a0}, 1024",
            "add {a1}, 1024",
            "add {b0}, 1024",
            "add {b1}, 1024",
            "dec {steps}",
            "jnz 2b",
            "tilestored [{c0} + {ldc}], tmm0",
            "tilestored [{c0} + {ldc} + 64], tmm1",
            "tilestored [{c1} + {ldc}], tmm2",
            "tilestored [{c1} + {ldc} + 64], tmm3",
            "tilerelease",
            cfg = in(reg) &CONFIG,
            c0 = in(reg) c,
            c1 = in(reg) c.add(16 * ldc),
            ldc = in(reg) ldc * 4,
            a0 = inout(reg) a => _,
            a1 = inout(reg) a.add(panel) => _,
            b0 = inout(reg) b => _,
            b1 = inout(reg) b.add(panel) => _,
            s64 = in(reg) 64usize,
            steps = inout(reg) steps => _,
            options(nostack),
        );
    }
}
