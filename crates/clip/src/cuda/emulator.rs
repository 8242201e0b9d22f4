//! [`Exec`] on the host, for tests: device memory as byte vectors, each kernel of
//! `kernels.cu` re-stated element by element, and products as cuBLAS defines
//! `cublasGemmStridedBatchedEx` (column-major, f32 sums). Running the encoder's forward
//! pass here checks its layouts, strides, offsets and call order against the CPU model on
//! machines without a GPU; the kernels' CUDA C itself is checked by NVRTC compiling it.

use std::sync::Mutex;

use half::{bf16, f16};

use super::{Arg, Buffer, CudaResult, Exec, Kernel, Launch, Operand, PIXEL_SLOTS, Product};
use crate::ops::kernels::erf;

/// Host memory standing in for a device: regions at distinct fake addresses.
pub(crate) struct Emulator {
    operand: Operand,
    regions: Mutex<Vec<(u64, Vec<u8>)>>,
    /// Where each pixel slot is in the protocol of [`Exec::copy_in_ahead`], checked at every
    /// step: a copy lands only when the compute stream awaits it (so a forgotten wait reads
    /// stale pixels), and a slot not yet released must not be copied into.
    slots: Mutex<[Slot; PIXEL_SLOTS]>,
    /// Copies out not yet awaited, per slot: what lands in the caller's memory at the wait
    /// (until then it holds NaN, so a read before the wait shows).
    outs: Mutex<[Option<PendingOut>; PIXEL_SLOTS]>,
}

/// A copy out that lands at its wait: where, and the values the device held when it was
/// queued (everything before it on the stream has run, in the emulator).
struct PendingOut {
    dst: *mut f32,
    values: Vec<f32>,
}

// SAFETY: `dst` is memory the caller keeps alive and untouched until the wait
// (`Exec::copy_out_later`), whichever thread waits.
unsafe impl Send for PendingOut {}

#[derive(Debug, Default)]
enum Slot {
    #[default]
    Free,
    Copying(u64, Vec<f32>),
    InUse,
}

/// Addresses start here and regions lie 2³² apart, so a stray offset never lands in another.
const BASE: u64 = 1 << 40;

impl Emulator {
    pub(crate) fn new(operand: Operand) -> Emulator {
        Emulator {
            operand,
            regions: Mutex::new(Vec::new()),
            slots: Mutex::default(),
            outs: Mutex::default(),
        }
    }

    fn add(&self, bytes: Vec<u8>) -> Buffer {
        let mut regions = self.regions.lock().unwrap();
        let ptr = BASE + ((regions.len() as u64) << 32);
        let len = bytes.len();
        regions.push((ptr, bytes));
        Buffer { ptr, bytes: len, _owner: Box::new(()) }
    }
}

/// The memory of one call: typed reads and writes at fake addresses.
struct Memory<'a> {
    regions: &'a mut Vec<(u64, Vec<u8>)>,
    operand: Operand,
}

impl Memory<'_> {
    fn locate(&self, addr: u64, bytes: usize) -> (usize, usize) {
        let index = ((addr - BASE) >> 32) as usize;
        let offset = (addr - self.regions[index].0) as usize;
        assert!(offset + bytes <= self.regions[index].1.len(), "access past the end of a buffer");
        (index, offset)
    }

    fn f32_at(&self, addr: u64, i: usize) -> f32 {
        let (r, o) = self.locate(addr + 4 * i as u64, 4);
        f32::from_le_bytes(self.regions[r].1[o..o + 4].try_into().unwrap())
    }

    fn set_f32(&mut self, addr: u64, i: usize, v: f32) {
        let (r, o) = self.locate(addr + 4 * i as u64, 4);
        self.regions[r].1[o..o + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// Element `i` of a matrix stored in f32 or in the operand type.
    fn value(&self, addr: u64, i: usize, f32: bool) -> f32 {
        if f32 || self.operand == Operand::F32 {
            return self.f32_at(addr, i);
        }
        let (r, o) = self.locate(addr + 2 * i as u64, 2);
        let bits = u16::from_le_bytes(self.regions[r].1[o..o + 2].try_into().unwrap());
        match self.operand {
            Operand::Bf16 => bf16::from_bits(bits).to_f32(),
            _ => f16::from_bits(bits).to_f32(),
        }
    }

    fn store(&mut self, addr: u64, i: usize, v: f32, f32: bool) {
        if f32 || self.operand == Operand::F32 {
            return self.set_f32(addr, i, v);
        }
        let bits = match self.operand {
            Operand::Bf16 => bf16::from_f32(v).to_bits(),
            _ => f16::from_f32(v).to_bits(),
        };
        let (r, o) = self.locate(addr + 2 * i as u64, 2);
        self.regions[r].1[o..o + 2].copy_from_slice(&bits.to_le_bytes());
    }
}

fn ptr(a: Arg) -> u64 {
    match a {
        Arg::Ptr(p) => p,
        other => panic!("expected an address, got {other:?}"),
    }
}

fn int(a: Arg) -> usize {
    match a {
        Arg::I32(v) => v as usize,
        Arg::I64(v) => v as usize,
        other => panic!("expected an integer, got {other:?}"),
    }
}

impl Exec for Emulator {
    fn alloc(&self, bytes: usize) -> CudaResult<Buffer> {
        Ok(self.add(vec![0; bytes]))
    }

    fn upload(&self, bytes: &[u8]) -> CudaResult<Buffer> {
        Ok(self.add(bytes.to_vec()))
    }

    fn host_memory(&self, values: usize) -> CudaResult<Box<dyn aesthete_tensor::PixelMemory>> {
        Ok(Box::new(vec![0.0f32; values]))
    }

    unsafe fn copy_in_ahead(&self, slot: usize, dst: u64, src: &[f32]) -> CudaResult<()> {
        let mut slots = self.slots.lock().unwrap();
        assert!(
            matches!(slots[slot], Slot::Free),
            "pixel slot {slot} copied into before the compute stream released it"
        );
        slots[slot] = Slot::Copying(dst, src.to_vec());
        Ok(())
    }

    fn await_pixels(&self, slot: usize) -> CudaResult<()> {
        let mut slots = self.slots.lock().unwrap();
        let Slot::Copying(dst, values) = std::mem::replace(&mut slots[slot], Slot::InUse) else {
            panic!("pixel slot {slot} awaited with no copy into it");
        };
        let mut regions = self.regions.lock().unwrap();
        let mut m = Memory { regions: &mut regions, operand: self.operand };
        for (i, &v) in values.iter().enumerate() {
            m.set_f32(dst, i, v);
        }
        Ok(())
    }

    fn release_pixels(&self, slot: usize) -> CudaResult<()> {
        let mut slots = self.slots.lock().unwrap();
        assert!(matches!(slots[slot], Slot::InUse), "pixel slot {slot} released unused");
        slots[slot] = Slot::Free;
        Ok(())
    }

    unsafe fn copy_out_later(&self, slot: usize, src: u64, dst: &mut [f32]) -> CudaResult<()> {
        let mut outs = self.outs.lock().unwrap();
        assert!(outs[slot].is_none(), "copy out of slot {slot} queued twice without a wait");
        let mut regions = self.regions.lock().unwrap();
        let m = Memory { regions: &mut regions, operand: self.operand };
        let values = (0..dst.len()).map(|i| m.f32_at(src, i)).collect();
        dst.fill(f32::NAN);
        outs[slot] = Some(PendingOut { dst: dst.as_mut_ptr(), values });
        Ok(())
    }

    fn settle(&self) -> CudaResult<()> {
        Ok(())
    }

    fn await_out(&self, slot: usize) -> CudaResult<()> {
        let mut outs = self.outs.lock().unwrap();
        let out =
            outs[slot].take().unwrap_or_else(|| panic!("slot {slot} awaited with no copy out"));
        // SAFETY: the caller keeps `dst` alive and untouched until this wait (the contract of
        // `copy_out_later`), and it holds `values.len()` f32 values.
        unsafe { std::ptr::copy_nonoverlapping(out.values.as_ptr(), out.dst, out.values.len()) };
        Ok(())
    }

    fn launch(&self, kernel: Kernel, grid: Launch, a: &[Arg]) -> CudaResult<()> {
        let mut regions = self.regions.lock().unwrap();
        let mut m = Memory { regions: &mut regions, operand: self.operand };
        match kernel {
            Kernel::Patches => {
                let (pixels, out) = (ptr(a[0]), ptr(a[1]));
                let (n, c, size, p, g) = (int(a[2]), int(a[3]), int(a[4]), int(a[5]), int(a[6]));
                let cols = c * p * p;
                for e in 0..n * g * g * cols {
                    let (row, col) = (e / cols, e % cols);
                    let (image, cell) = (row / (g * g), row % (g * g));
                    let (gy, gx) = (cell / g, cell % g);
                    let (ch, ky, kx) = (col / (p * p), (col / p) % p, col % p);
                    let at = ((image * c + ch) * size + gy * p + ky) * size + gx * p + kx;
                    let v = m.f32_at(pixels, at);
                    m.store(out, e, v, false);
                }
            }
            Kernel::Assemble => {
                let (x, patches, class, position) = (ptr(a[0]), ptr(a[1]), ptr(a[2]), ptr(a[3]));
                let (n, tokens, hidden) = (int(a[4]), int(a[5]), int(a[6]));
                for e in 0..n * tokens * hidden {
                    let (h, row) = (e % hidden, e / hidden);
                    let (image, t) = (row / tokens, row % tokens);
                    let v = if t == 0 {
                        m.f32_at(class, h)
                    } else {
                        m.f32_at(patches, (image * (tokens - 1) + t - 1) * hidden + h)
                    };
                    let sum = v + m.f32_at(position, t * hidden + h);
                    m.set_f32(x, e, sum);
                }
            }
            Kernel::LayerNorm | Kernel::LayerNormF32 => {
                let (x, ldx, out, ldo) = (ptr(a[0]), int(a[1]), ptr(a[2]), int(a[3]));
                let (weight, bias, add) = (ptr(a[4]), ptr(a[5]), ptr(a[6]));
                let cols = int(a[7]);
                let Arg::F32(eps) = a[8] else { panic!("eps") };
                let f32_out = kernel == Kernel::LayerNormF32;
                for r in 0..grid.blocks as usize {
                    let mut row: Vec<f32> = (0..cols).map(|c| m.f32_at(x, r * ldx + c)).collect();
                    if add != 0 {
                        for (c, v) in row.iter_mut().enumerate() {
                            *v += m.f32_at(add, c);
                            m.set_f32(x, r * ldx + c, *v);
                        }
                    }
                    let mean = row.iter().sum::<f32>() / cols as f32;
                    let var =
                        row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / cols as f32;
                    let rstd = 1.0 / (var + eps).sqrt();
                    for (c, v) in row.iter().enumerate() {
                        let y = (v - mean) * rstd * m.f32_at(weight, c) + m.f32_at(bias, c);
                        m.store(out, r * ldo + c, y, f32_out);
                    }
                }
            }
            Kernel::SplitHeads => {
                let (qkv, bias, q) = (ptr(a[0]), ptr(a[1]), ptr(a[2]));
                let (n, s, heads, hd) = (int(a[3]), int(a[4]), int(a[5]), int(a[6]));
                let hidden = heads * hd;
                let per = n * s * hidden;
                for e in 0..3 * per {
                    let (col, row) = (e % (3 * hidden), e / (3 * hidden));
                    let (image, t) = (row / s, row % s);
                    let (which, h, d) = (col / hidden, (col % hidden) / hd, col % hd);
                    let at = which * per + ((image * heads + h) * s + t) * hd + d;
                    let v = m.f32_at(qkv, e) + m.f32_at(bias, col);
                    m.store(q, at, v, false);
                }
            }
            Kernel::Softmax => {
                let (scores, p, rows, cols, ld) =
                    (ptr(a[0]), ptr(a[1]), int(a[2]), int(a[3]), int(a[4]));
                for r in 0..rows {
                    let x: Vec<f32> = (0..cols).map(|c| m.f32_at(scores, r * ld + c)).collect();
                    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let sum: f32 = x.iter().map(|v| (v - max).exp()).sum();
                    for (c, v) in x.iter().enumerate() {
                        m.store(p, r * ld + c, (v - max).exp() / sum, false);
                    }
                }
            }
            Kernel::MergeHeads => {
                let (o, out) = (ptr(a[0]), ptr(a[1]));
                let (n, s, heads, hd) = (int(a[2]), int(a[3]), int(a[4]), int(a[5]));
                let hidden = heads * hd;
                for e in 0..n * s * hidden {
                    let (col, row) = (e % hidden, e / hidden);
                    let (image, t, h, d) = (row / s, row % s, col / hd, col % hd);
                    let v = m.value(o, ((image * heads + h) * s + t) * hd + d, false);
                    m.store(out, e, v, false);
                }
            }
            Kernel::BiasActivation => {
                let (h, bias, out) = (ptr(a[0]), ptr(a[1]), ptr(a[2]));
                let (rows, cols, act) = (int(a[3]), int(a[4]), int(a[5]));
                for e in 0..rows * cols {
                    let x = m.f32_at(h, e) + m.f32_at(bias, e % cols);
                    let y = match act {
                        0 => x / (1.0 + (-1.702 * x).exp()),
                        1 => 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2)),
                        _ => {
                            let inner = 0.797_884_6 * (x + 0.044715 * x * x * x);
                            0.5 * x * (1.0 + inner.tanh())
                        }
                    };
                    m.store(out, e, y, false);
                }
            }
        }
        Ok(())
    }

    fn product(&self, p: &Product) -> CudaResult<()> {
        let mut regions = self.regions.lock().unwrap();
        let mut mem = Memory { regions: &mut regions, operand: self.operand };
        for batch in 0..p.batch {
            let (a, b, c) = (p.a.ptr, p.b.ptr, p.c.ptr);
            let (sa, sb, sc) = (batch * p.a.stride, batch * p.b.stride, batch * p.c.stride);
            for j in 0..p.n {
                for i in 0..p.m {
                    let mut sum = 0f32;
                    for l in 0..p.k {
                        let at_a = if p.transpose_a { l + i * p.a.ld } else { i + l * p.a.ld };
                        sum += mem.value(a, sa + at_a, p.a.f32)
                            * mem.value(b, sb + l + j * p.b.ld, p.b.f32);
                    }
                    let at_c = sc + i + j * p.c.ld;
                    let old =
                        if p.beta != 0.0 { p.beta * mem.value(c, at_c, p.c.f32) } else { 0.0 };
                    mem.store(c, at_c, sum + old, p.c.f32);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::Encoder;
    use crate::{ClipVision, DType, Device};

    fn fixture(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/clip").join(name)
    }

    fn pixels(n: usize, size: usize) -> Vec<f32> {
        (0..n * 3 * size * size).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect()
    }

    fn cosine(a: &[f32], b: &[f32]) -> f64 {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64) * (*y as f64)).sum();
        let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        dot / (na * nb)
    }

    /// The CUDA forward pass, run on the emulator, against the CPU model, for each fixture
    /// shape (quick_gelu and gelu, 224 and non-multiple image sizes) and each operand type.
    #[test]
    fn cuda_forward_pass_matches_the_cpu_model_on_the_emulator() {
        for name in ["tiny-vision-32", "tiny-gelu-28", "tiny-vit-224-768"] {
            let cpu = ClipVision::load(&fixture(name), &Device::Cpu, DType::F32).unwrap();
            let config = cpu.config().clone();
            let host = cpu.host_model().unwrap();
            let n = 3;
            let px = pixels(n, config.image_size);
            let mut batch = aesthete_tensor::ImageBatch::with_capacity(n, config.image_size);
            for i in 0..n {
                batch.push_slot().copy_from_slice(&px[i * px.len() / n..(i + 1) * px.len() / n]);
            }
            let reference = cpu.embed(&batch).unwrap();
            // (operand, least cosine per image against the f32 CPU model). Measured here:
            // f32 1 - 4e-14, bf16 ≥ 0.999996, f16 ≥ 0.99999992; a wrong stride or a lost
            // bias gives 0.98–0.9986 in f32.
            for (operand, least) in
                [(Operand::F32, 0.999_999_9), (Operand::Bf16, 0.9999), (Operand::F16, 0.99999)]
            {
                let encoder = Encoder::new(
                    &host,
                    &config,
                    Box::new(Emulator::new(operand)),
                    operand,
                    "emulator".to_string(),
                )
                .unwrap();
                let out = encoder.forward(&px, n).unwrap();
                let d = config.projection_dim;
                for i in 0..n {
                    let c = cosine(&out[i * d..(i + 1) * d], reference.row(i));
                    assert!(c >= least, "{name} {operand:?} image {i}: cosine {c} < {least}");
                }
                // A second, smaller batch reuses the buffers.
                let again = encoder.forward(&px[..px.len() / n], 1).unwrap();
                assert_eq!(again, out[..d], "{name} {operand:?}: batch of one differs");
                // Pixels in the encoder's own host memory (page-locked on a GPU) give the
                // same projections.
                let memory = encoder.host_memory(px.len()).unwrap();
                let mut held =
                    aesthete_tensor::ImageBatch::in_memory(memory, n, config.image_size).unwrap();
                held.set_len(n);
                held.as_mut_slice().copy_from_slice(&px);
                assert!(held.in_supplied_memory());
                let from_held = encoder.forward(held.as_slice(), n).unwrap();
                assert_eq!(from_held, out, "{name} {operand:?}: from host memory");
            }
        }
    }

    /// Batches in flight come back in order, each with the projections `forward` gives it
    /// alone, through a change of buffer size with a batch in flight; the emulator checks
    /// the slot protocol (a copy awaited before it is read, a slot released before it is
    /// copied into again, every copy out awaited).
    #[test]
    fn batches_in_flight_land_in_order_with_their_own_projections() {
        let cpu = ClipVision::load(&fixture("tiny-vision-32"), &Device::Cpu, DType::F32).unwrap();
        let config = cpu.config().clone();
        let host = cpu.host_model().unwrap();
        let emulator = Box::new(Emulator::new(Operand::F32));
        let encoder =
            Encoder::new(&host, &config, emulator, Operand::F32, "emulator".to_string()).unwrap();
        let image = 3 * config.image_size * config.image_size;
        let all = pixels(8, config.image_size);
        // (first image, images): a larger batch third, so the buffers grow in flight.
        let batches = [(0, 2), (2, 2), (1, 5), (7, 1), (3, 2)];
        let alone: Vec<Vec<f32>> = batches
            .iter()
            .map(|&(first, n)| encoder.forward(&all[first * image..][..n * image], n).unwrap())
            .collect();
        let mut landed = Vec::new();
        let mut flight = encoder.flight();
        for (index, &(first, n)) in batches.iter().enumerate() {
            let px = all[first * image..][..n * image].to_vec();
            for (i, out) in flight.submit(Tagged(index, px), n, n) {
                landed.push((i.0, out.unwrap()));
            }
        }
        landed.extend(flight.finish().map(|(i, out)| (i.0, out.unwrap())));
        assert!(flight.finish().is_none());
        let order: Vec<usize> = landed.iter().map(|(i, _)| *i).collect();
        assert_eq!(order, [0, 1, 2, 3, 4]);
        for (i, out) in landed {
            assert_eq!(out, alone[i], "batch {i} in flight against alone");
        }
    }

    /// Pixels with a tag saying which batch they are.
    struct Tagged(usize, Vec<f32>);

    impl AsRef<[f32]> for Tagged {
        fn as_ref(&self) -> &[f32] {
            &self.1
        }
    }
}
