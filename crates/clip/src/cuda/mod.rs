//! The encoder on CUDA: cuBLAS matrix products and a few kernels of our own (`kernels.cu`,
//! compiled by NVRTC when the model is loaded), over buffers kept between calls.
//!
//! Nothing here is linked at build time. The NVIDIA driver (`libcuda.so.1`), cuBLAS
//! (`libcublas.so.13`) and NVRTC (`libnvrtc.so.13`) are loaded when a model is first put on a
//! CUDA device, so a binary built with the `cuda` feature runs on machines without them and
//! says which are missing only when `--device cuda` is asked for ([`missing_libraries`]).
//!
//! Same arithmetic as the CPU encoder: the matrix products take `T` operands (f32, bf16 or
//! f16) and sum in f32; the residual stream, layer norms, softmax, bias sums and activations
//! are f32, as under `torch.autocast`. f32 products run without TF32.
//!
//! The forward pass ([`Run`]) is written against [`Exec`]: buffers, kernel launches and
//! column-major products. [`driver::Driver`] executes it on a GPU; the tests run the same
//! pass on `emulator::Emulator`, which does each step on the host as cuBLAS and the kernels
//! define it, so the layouts, strides and offsets are checked against the CPU model on any
//! machine.

use std::sync::Mutex;

use half::{bf16, f16};

use crate::{Activation, ClipVisionConfig, DType};

mod driver;
#[cfg(test)]
mod emulator;

pub(crate) use driver::missing_libraries;

/// Any failure of the CUDA encoder, as text naming the step that failed.
pub(crate) type CudaResult<T> = Result<T, String>;

/// How matrix-product operands are held on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operand {
    F32,
    Bf16,
    F16,
}

impl Operand {
    fn of(dtype: DType) -> Operand {
        match dtype {
            DType::F32 => Operand::F32,
            DType::BF16 => Operand::Bf16,
            DType::F16 => Operand::F16,
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Operand::F32 => "f32",
            Operand::Bf16 => "bf16",
            Operand::F16 => "f16",
        }
    }

    fn bytes(self) -> usize {
        if self == Operand::F32 { 4 } else { 2 }
    }

    /// `values` rounded to this type, as little-endian bytes.
    fn encode(self, values: &[f32]) -> Vec<u8> {
        match self {
            Operand::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Operand::Bf16 => values.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect(),
            Operand::F16 => values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect(),
        }
    }
}

/// The kernels of `kernels.cu`; all but [`Kernel::Assemble`] exist once per operand type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    Patches,
    LayerNorm,
    /// The pre-layer-norm, whose output is the f32 residual stream whatever the operand.
    LayerNormF32,
    SplitHeads,
    Softmax,
    MergeHeads,
    BiasActivation,
    Assemble,
}

impl Kernel {
    const ALL: [Kernel; 8] = [
        Kernel::Patches,
        Kernel::LayerNorm,
        Kernel::LayerNormF32,
        Kernel::SplitHeads,
        Kernel::Softmax,
        Kernel::MergeHeads,
        Kernel::BiasActivation,
        Kernel::Assemble,
    ];

    /// The kernel's name in `kernels.cu` for `operand`.
    fn name(self, operand: Operand) -> String {
        let typed = |base: &str| format!("{base}_{}", operand.suffix());
        match self {
            Kernel::Patches => typed("patches"),
            Kernel::LayerNorm => typed("layer_norm"),
            Kernel::LayerNormF32 => "layer_norm_f32".to_string(),
            Kernel::SplitHeads => typed("split_heads"),
            Kernel::Softmax => typed("softmax"),
            Kernel::MergeHeads => typed("merge_heads"),
            Kernel::BiasActivation => typed("bias_activation"),
            Kernel::Assemble => "assemble_embeddings".to_string(),
        }
    }
}

/// A kernel argument: a device address, an `int`, a `long long` or a `float`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg {
    Ptr(u64),
    I32(i32),
    I64(i64),
    F32(f32),
}

/// Grid and block of a launch: `blocks` × `rows` blocks of `threads` threads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Launch {
    pub(crate) blocks: u32,
    pub(crate) rows: u32,
    pub(crate) threads: u32,
}

impl Launch {
    /// One block of 256 threads per item (layer-norm rows) or per 8 warps (softmax rows).
    fn flat(blocks: usize) -> Launch {
        Launch { blocks: blocks as u32, rows: 1, threads: 256 }
    }

    /// The elementwise kernels' 2-D grid over `rows` × `cols` (both loops stride).
    fn rows_cols(rows: usize, cols: usize) -> Launch {
        Launch {
            blocks: cols.div_ceil(256).clamp(1, 64) as u32,
            rows: rows.clamp(1, 65_535) as u32,
            threads: 256,
        }
    }
}

/// One matrix of a product: address, leading dimension, stride between batch members, and
/// whether it is stored in f32 (else in the operand type).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Matrix {
    pub(crate) ptr: u64,
    pub(crate) ld: usize,
    pub(crate) stride: usize,
    pub(crate) f32: bool,
}

/// `c = alpha · op(a) · b + beta · c` in cuBLAS's column-major terms, for `batch` members:
/// op(a) is m × k (a stored k × m when `transpose_a`), b is k × n, c is m × n.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Product {
    pub(crate) transpose_a: bool,
    pub(crate) m: usize,
    pub(crate) n: usize,
    pub(crate) k: usize,
    pub(crate) a: Matrix,
    pub(crate) b: Matrix,
    pub(crate) c: Matrix,
    pub(crate) beta: f32,
    pub(crate) batch: usize,
}

/// What a forward pass needs from a device. Calls are ordered (one stream) and made under
/// the encoder's lock, one thread at a time.
pub(crate) trait Exec: Send + Sync {
    /// `bytes` of zeroed device memory.
    fn alloc(&self, bytes: usize) -> CudaResult<Buffer>;
    /// Device memory holding `bytes`.
    fn upload(&self, bytes: &[u8]) -> CudaResult<Buffer>;
    /// `values` f32 values of host memory that `copy_in` reads fastest: page-locked on a GPU,
    /// so that the copy needs no staging and runs at the bus's speed.
    fn host_memory(&self, values: usize) -> CudaResult<Box<dyn aesthete_tensor::PixelMemory>>;
    /// Copies `src` into device `dst` on a stream of its own, so that it runs while the
    /// compute stream works on the batch before: after the compute stream's last
    /// [`Exec::release_pixels`] of `slot` (one of [`PIXEL_SLOTS`]).
    ///
    /// # Safety
    /// `src` stays alive and unwritten until the compute stream has passed the
    /// [`Exec::await_pixels`] of `slot` that follows and the caller has seen it pass (an
    /// [`Exec::await_out`] after it).
    unsafe fn copy_in_ahead(&self, slot: usize, dst: u64, src: &[f32]) -> CudaResult<()>;
    /// The compute stream waits for the last copy into `slot`.
    fn await_pixels(&self, slot: usize) -> CudaResult<()>;
    /// The compute stream has read `slot`'s pixels: the next copy into it may start.
    fn release_pixels(&self, slot: usize) -> CudaResult<()>;
    /// Copies device `src` into `dst` on the compute stream, after what is queued on it,
    /// without waiting; [`Exec::await_out`] of the same `slot` waits for it.
    ///
    /// # Safety
    /// `dst` is memory from [`Exec::host_memory`], alive and neither read nor written until
    /// that wait has returned.
    unsafe fn copy_out_later(&self, slot: usize, src: u64, dst: &mut [f32]) -> CudaResult<()>;
    /// Waits, sleeping rather than spinning (the CPU's cores are decoding), until the last
    /// copy out of `slot` and everything before it on the compute stream are done.
    fn await_out(&self, slot: usize) -> CudaResult<()>;
    /// Waits until everything queued on every stream is done (after an error, before the
    /// memory a queued copy reads is handed back).
    fn settle(&self) -> CudaResult<()>;
    fn launch(&self, kernel: Kernel, grid: Launch, args: &[Arg]) -> CudaResult<()>;
    fn product(&self, p: &Product) -> CudaResult<()>;
}

/// Batches whose pixels can be on their way to the device at once: one being computed, the
/// next one copying in.
pub(crate) const PIXEL_SLOTS: usize = 2;

/// Device memory: its address, its size, and what keeps it alive.
pub(crate) struct Buffer {
    pub(crate) ptr: u64,
    pub(crate) bytes: usize,
    pub(crate) _owner: Box<dyn std::any::Any + Send + Sync>,
}

/// The host f32 values of one encoder layer, in `cpu::LayerTensors` order.
pub(crate) struct HostLayer {
    pub(crate) values: [Vec<f32>; 12],
}

/// The host f32 values of the whole model, read from the loaded checkpoint.
pub(crate) struct HostModel {
    /// `(hidden, channels · patch²)`.
    pub(crate) patch: Vec<f32>,
    pub(crate) class: Vec<f32>,
    pub(crate) position: Vec<f32>,
    pub(crate) pre_norm: [Vec<f32>; 2],
    pub(crate) layers: Vec<HostLayer>,
    pub(crate) post_norm: [Vec<f32>; 2],
    /// `(projection_dim, hidden)`.
    pub(crate) projection: Vec<f32>,
}

struct DeviceLayer {
    norm1: [Buffer; 2],
    qkv: Buffer,
    qkv_bias: Buffer,
    out: Buffer,
    out_bias: Buffer,
    norm2: [Buffer; 2],
    fc1: Buffer,
    fc1_bias: Buffer,
    fc2: Buffer,
    fc2_bias: Buffer,
}

/// Sizes of the model.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    channels: usize,
    image: usize,
    patch: usize,
    grid: usize,
    tokens: usize,
    hidden: usize,
    heads: usize,
    head_dim: usize,
    intermediate: usize,
    projection: usize,
    eps: f32,
    /// 0 quick_gelu, 1 gelu (erf), 2 gelu (tanh), as `bias_activation` takes it.
    act: i32,
}

impl Sizes {
    fn of(c: &ClipVisionConfig) -> Sizes {
        Sizes {
            channels: c.num_channels,
            image: c.image_size,
            patch: c.patch_size,
            grid: c.grid_size(),
            tokens: c.num_positions(),
            hidden: c.hidden_size,
            heads: c.num_attention_heads,
            head_dim: c.head_dim(),
            intermediate: c.intermediate_size,
            projection: c.projection_dim,
            eps: c.layer_norm_eps as f32,
            act: match c.hidden_act {
                Activation::QuickGelu => 0,
                Activation::Gelu => 1,
                Activation::GeluTanh => 2,
            },
        }
    }

    fn patch_len(&self) -> usize {
        self.channels * self.patch * self.patch
    }

    fn pixels(&self) -> usize {
        self.channels * self.image * self.image
    }

    /// The row stride of attention scores and probabilities: tokens rounded up to 8, so that
    /// every row starts 16-byte aligned, as cuBLAS's tensor-core kernels want.
    fn score_ld(&self) -> usize {
        self.tokens.next_multiple_of(8)
    }

    /// Images whose attention scores fit in about 256 MiB of f32 at once.
    fn attention_chunk(&self) -> usize {
        let per_image = self.heads * self.tokens * self.score_ld() * 4;
        ((256 << 20) / per_image).max(1)
    }
}

/// Buffers for batches of up to `images` images.
struct Scratch {
    images: usize,
    /// One per pixel slot: a batch's pixels copy into one while the batch before is
    /// computed from the other.
    pixels: [Buffer; PIXEL_SLOTS],
    patches: Buffer,
    /// The residual stream, f32 `(n · tokens, hidden)`.
    stream: Buffer,
    /// Layer-norm outputs, then each head's attention output, `T`.
    normed: Buffer,
    /// f32 product sums: patches, qkv, fc1.
    wide: Buffer,
    /// q, k, v: three `(n · heads, tokens, head_dim)` planes of `T`.
    heads: Buffer,
    scores: Buffer,
    probs: Buffer,
    /// Merged heads, then the activation, `T`.
    act: Buffer,
    pooled: Buffer,
    projected: Buffer,
    /// Host memory the projections are copied back into, one per pixel slot.
    outs: [Box<dyn aesthete_tensor::PixelMemory>; PIXEL_SLOTS],
}

impl Scratch {
    fn new(exec: &dyn Exec, s: &Sizes, t: Operand, images: usize) -> CudaResult<Scratch> {
        let rows = images * s.tokens;
        let scores = s.attention_chunk().min(images) * s.heads * s.tokens * s.score_ld();
        let wide = (3 * s.hidden).max(s.intermediate) * rows;
        let tb = t.bytes();
        Ok(Scratch {
            images,
            pixels: [exec.alloc(images * s.pixels() * 4)?, exec.alloc(images * s.pixels() * 4)?],
            patches: exec.alloc(images * s.grid * s.grid * s.patch_len() * tb)?,
            stream: exec.alloc(rows * s.hidden * 4)?,
            normed: exec.alloc(rows * s.hidden * tb)?,
            wide: exec.alloc(wide * 4)?,
            heads: exec.alloc(3 * rows * s.hidden * tb)?,
            scores: exec.alloc(scores * 4)?,
            probs: exec.alloc(scores * tb)?,
            act: exec.alloc(rows * s.intermediate.max(s.hidden) * tb)?,
            pooled: exec.alloc(images * s.hidden * tb)?,
            projected: exec.alloc(images * s.projection * 4)?,
            outs: [
                exec.host_memory(images * s.projection)?,
                exec.host_memory(images * s.projection)?,
            ],
        })
    }
}

/// A CLIP vision tower on one CUDA device (or, in tests, on the emulator).
pub(crate) struct Encoder {
    exec: Box<dyn Exec>,
    operand: Operand,
    sizes: Sizes,
    patch: Buffer,
    class: Buffer,
    position: Buffer,
    pre_norm: [Buffer; 2],
    layers: Vec<DeviceLayer>,
    post_norm: [Buffer; 2],
    projection: Buffer,
    scratch: Mutex<Option<Scratch>>,
    /// The device's name and compute capability, for logs.
    pub(crate) description: String,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("cuda::Encoder")
            .field("device", &self.description)
            .field("operand", &self.operand)
            .finish_non_exhaustive()
    }
}

impl Encoder {
    /// Opens CUDA device `ordinal`, compiles the kernels and uploads `host` as `dtype`.
    pub(crate) fn open(
        host: &HostModel,
        config: &ClipVisionConfig,
        ordinal: usize,
        dtype: DType,
    ) -> CudaResult<Encoder> {
        let operand = Operand::of(dtype);
        let (driver, description) = driver::Driver::open(ordinal, operand)?;
        Encoder::new(host, config, Box::new(driver), operand, description)
    }

    fn new(
        host: &HostModel,
        config: &ClipVisionConfig,
        exec: Box<dyn Exec>,
        operand: Operand,
        description: String,
    ) -> CudaResult<Encoder> {
        let up = |v: &[f32]| exec.upload(&operand.encode(v));
        let f32s = |v: &[f32]| exec.upload(&Operand::F32.encode(v));
        let layers = host
            .layers
            .iter()
            .map(|l| {
                let v = &l.values;
                Ok(DeviceLayer {
                    norm1: [f32s(&v[0])?, f32s(&v[1])?],
                    qkv: up(&v[2])?,
                    qkv_bias: f32s(&v[3])?,
                    out: up(&v[4])?,
                    out_bias: f32s(&v[5])?,
                    norm2: [f32s(&v[6])?, f32s(&v[7])?],
                    fc1: up(&v[8])?,
                    fc1_bias: f32s(&v[9])?,
                    fc2: up(&v[10])?,
                    fc2_bias: f32s(&v[11])?,
                })
            })
            .collect::<CudaResult<Vec<_>>>()?;
        Ok(Encoder {
            patch: up(&host.patch)?,
            class: f32s(&host.class)?,
            position: f32s(&host.position)?,
            pre_norm: [f32s(&host.pre_norm[0])?, f32s(&host.pre_norm[1])?],
            layers,
            post_norm: [f32s(&host.post_norm[0])?, f32s(&host.post_norm[1])?],
            projection: up(&host.projection)?,
            scratch: Mutex::new(None),
            operand,
            sizes: Sizes::of(config),
            description,
            exec,
        })
    }

    /// Host memory for `values` pixel values that this device copies from fastest.
    pub(crate) fn host_memory(
        &self,
        values: usize,
    ) -> CudaResult<Box<dyn aesthete_tensor::PixelMemory>> {
        self.exec.host_memory(values)
    }

    /// `(n, channels, image, image)` pixels → `(n, projection_dim)` f32 projections (not yet
    /// normalized).
    pub(crate) fn forward(&self, pixels: &[f32], n: usize) -> CudaResult<Vec<f32>> {
        if n == 0 {
            assert!(pixels.is_empty(), "pixel count");
            return Ok(Vec::new());
        }
        let mut flight = self.flight();
        let mut landed = flight.submit(pixels, n, n);
        landed.extend(flight.finish());
        let (_, projected) = landed.pop().expect("the batch just submitted");
        debug_assert!(landed.is_empty(), "a fresh flight holds no other batch");
        projected
    }

    /// Batches through the device one after another, each one's pixels copied in while the
    /// one before is computed; holds the encoder's buffers until dropped.
    pub(crate) fn flight<P: AsRef<[f32]>>(&self) -> Flight<'_, P> {
        Flight {
            encoder: self,
            scratch: self.scratch.lock().unwrap_or_else(|e| e.into_inner()),
            pending: None,
            next_slot: 0,
        }
    }
}

/// Batches on their way through the device: at most one computing while the caller prepares
/// or submits the next (see [`Encoder::flight`]).
pub(crate) struct Flight<'e, P> {
    encoder: &'e Encoder,
    scratch: std::sync::MutexGuard<'e, Option<Scratch>>,
    pending: Option<(P, usize, usize)>,
    next_slot: usize,
}

/// The pixels of an image batch, for a [`Flight`]: heap memory, which stays where it is when
/// the batch moves.
pub(crate) struct Pixels<B>(pub(crate) B);

impl<B: AsRef<aesthete_tensor::ImageBatch>> AsRef<[f32]> for Pixels<B> {
    fn as_ref(&self) -> &[f32] {
        self.0.as_ref().as_slice()
    }
}

/// A batch handed back with its `(n, projection_dim)` projections, or why there are none.
pub(crate) type Landed<P> = (P, CudaResult<Vec<f32>>);

impl<P: AsRef<[f32]>> Flight<'_, P> {
    /// Queues `n` images of pixels (`pixels.as_ref()`, which must stay where it is when
    /// `pixels` moves: heap memory, as a `Vec`'s, an image batch's or a borrowed slice) and
    /// hands back, in order, what has landed: the batch queued before, once its projections
    /// are back, and this one at once if it could not be queued. Buffers made here hold
    /// `room` images (at least `n`), so that batches up to that size reuse them.
    pub(crate) fn submit(&mut self, pixels: P, n: usize, room: usize) -> Vec<Landed<P>> {
        let e = self.encoder;
        assert!(n > 0, "an empty batch goes nowhere");
        let mut landed = Vec::new();
        if self.scratch.as_ref().is_none_or(|b| b.images < n) {
            // The batch in flight computes in the buffers about to go.
            landed.extend(self.finish());
            *self.scratch = None;
            match Scratch::new(&*e.exec, &e.sizes, e.operand, room.max(n)) {
                Ok(b) => *self.scratch = Some(b),
                Err(reason) => {
                    landed.push((pixels, Err(reason)));
                    return landed;
                }
            }
        }
        let slot = self.next_slot;
        self.next_slot = (slot + 1) % PIXEL_SLOTS;
        if let Err(reason) = self.queue(&pixels, n, slot) {
            // Nothing may still read these pixels when they go back.
            let _ = e.exec.settle();
            landed.extend(self.finish());
            landed.push((pixels, Err(reason)));
            return landed;
        }
        if let Some(before) = self.pending.replace((pixels, slot, n)) {
            landed.push(self.land(before));
        }
        landed
    }

    /// The copy in, the pass and the copy out of one batch, queued.
    fn queue(&mut self, pixels: &P, n: usize, slot: usize) -> CudaResult<()> {
        let e = self.encoder;
        let s = e.sizes;
        let b = self.scratch.as_mut().expect("buffers made before queueing");
        // Read once: what is checked is what is copied.
        let src = pixels.as_ref();
        assert_eq!(src.len(), n * s.pixels(), "pixel count");
        let fits = src.len() * 4 <= b.pixels[slot].bytes;
        assert!(fits && n * s.projection * 4 <= b.projected.bytes, "buffers fit the batch");
        // SAFETY: the caller moves `pixels` into `pending`, its values where they are, until
        // `land` has seen the copy out that follows their wait on the compute stream (or, on
        // an error, until every stream has settled).
        unsafe { e.exec.copy_in_ahead(slot, b.pixels[slot].ptr, src)? };
        Run { e, x: &*e.exec, b, n }.all(slot)?;
        let out = &mut b.outs[slot].values_mut()[..n * s.projection];
        // SAFETY: `out` is host memory from `host_memory`, read only in `land` after the wait.
        unsafe { e.exec.copy_out_later(slot, b.projected.ptr, out) }
    }

    /// The batch still in flight, once its projections are back; `None` when there is none.
    pub(crate) fn finish(&mut self) -> Option<Landed<P>> {
        let pending = self.pending.take()?;
        Some(self.land(pending))
    }

    fn land(&mut self, (pixels, slot, n): (P, usize, usize)) -> Landed<P> {
        let exec = &self.encoder.exec;
        let projected = match exec.await_out(slot) {
            Ok(()) => {
                let b = self.scratch.as_ref().expect("a batch in flight has buffers");
                Ok(b.outs[slot].values()[..n * self.encoder.sizes.projection].to_vec())
            }
            Err(reason) => {
                // The batch goes back: nothing may still copy from or into its memory.
                let _ = exec.settle();
                Err(reason)
            }
        };
        (pixels, projected)
    }
}

impl<P> Drop for Flight<'_, P> {
    fn drop(&mut self) {
        // A batch still queued reads its pixels and writes its host memory: wait for it
        // before both can go.
        if let Some((pixels, slot, _)) = self.pending.take() {
            if self.encoder.exec.await_out(slot).is_err() {
                let _ = self.encoder.exec.settle();
            }
            drop(pixels);
        }
    }
}

/// One forward pass over `n` images.
struct Run<'a> {
    e: &'a Encoder,
    x: &'a dyn Exec,
    b: &'a Scratch,
    n: usize,
}

impl Run<'_> {
    /// Row-major `c (m × n) = beta · c + a (m × k) · w (n × k)ᵀ`, `w` a PyTorch `Linear`
    /// weight: in column-major terms `cᵀ = wᵀ-op · aᵀ`.
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &self,
        a: u64,
        w: u64,
        c: u64,
        m: usize,
        n: usize,
        k: usize,
        beta: f32,
    ) -> CudaResult<()> {
        self.x.product(&Product {
            transpose_a: true,
            m: n,
            n: m,
            k,
            a: Matrix { ptr: w, ld: k, stride: 0, f32: false },
            b: Matrix { ptr: a, ld: k, stride: 0, f32: false },
            c: Matrix { ptr: c, ld: n, stride: 0, f32: true },
            beta,
            batch: 1,
        })
    }

    /// `out = LayerNorm(x (+ add_bias, written back to x))` over `rows` rows of `hidden`.
    #[allow(clippy::too_many_arguments)]
    fn layer_norm(
        &self,
        kernel: Kernel,
        (x, ldx): (u64, usize),
        (out, ldo): (u64, usize),
        norm: &[Buffer; 2],
        add_bias: Option<&Buffer>,
        rows: usize,
    ) -> CudaResult<()> {
        let s = self.e.sizes;
        let args = [
            Arg::Ptr(x),
            Arg::I64(ldx as i64),
            Arg::Ptr(out),
            Arg::I64(ldo as i64),
            Arg::Ptr(norm[0].ptr),
            Arg::Ptr(norm[1].ptr),
            Arg::Ptr(add_bias.map_or(0, |b| b.ptr)),
            Arg::I32(s.hidden as i32),
            Arg::F32(s.eps),
        ];
        self.x.launch(kernel, Launch::flat(rows), &args)
    }

    /// Queues the whole pass over the pixels copying into `slot`, through the projections.
    fn all(&self, slot: usize) -> CudaResult<()> {
        let (e, b, n) = (self.e, self.b, self.n);
        let s = e.sizes;
        let rows = n * s.tokens;
        let h = s.hidden;
        let int = |v: usize| Arg::I32(v as i32);
        self.x.await_pixels(slot)?;

        // Embeddings: patches · patch weightᵀ, then class token and positions.
        let patch_rows = n * s.grid * s.grid;
        let args = [
            Arg::Ptr(b.pixels[slot].ptr),
            Arg::Ptr(b.patches.ptr),
            int(n),
            int(s.channels),
            int(s.image),
            int(s.patch),
            int(s.grid),
        ];
        self.x.launch(Kernel::Patches, Launch::rows_cols(patch_rows, s.patch_len()), &args)?;
        self.x.release_pixels(slot)?;
        self.linear(b.patches.ptr, e.patch.ptr, b.wide.ptr, patch_rows, h, s.patch_len(), 0.0)?;
        let args = [
            Arg::Ptr(b.stream.ptr),
            Arg::Ptr(b.wide.ptr),
            Arg::Ptr(e.class.ptr),
            Arg::Ptr(e.position.ptr),
            int(n),
            int(s.tokens),
            int(h),
        ];
        self.x.launch(Kernel::Assemble, Launch::rows_cols(rows, h), &args)?;
        // The pre-layer-norm output is the residual stream (f32, in place).
        let stream = (b.stream.ptr, h);
        self.layer_norm(Kernel::LayerNormF32, stream, stream, &e.pre_norm, None, rows)?;

        let mut pending_bias: Option<&Buffer> = None;
        for layer in &e.layers {
            // Attention; the previous layer's fc2 bias joins the stream in this norm.
            let normed = (b.normed.ptr, h);
            self.layer_norm(Kernel::LayerNorm, stream, normed, &layer.norm1, pending_bias, rows)?;
            self.linear(b.normed.ptr, layer.qkv.ptr, b.wide.ptr, rows, 3 * h, h, 0.0)?;
            let heads = [int(n), int(s.tokens), int(s.heads), int(s.head_dim)];
            let args = [Arg::Ptr(b.wide.ptr), Arg::Ptr(layer.qkv_bias.ptr), Arg::Ptr(b.heads.ptr)];
            self.x.launch(
                Kernel::SplitHeads,
                Launch::rows_cols(rows, 3 * h),
                &[&args[..], &heads].concat(),
            )?;
            self.attention()?;
            // Heads merged into `act` (free until the MLP), then out-projection into the stream.
            let args = [Arg::Ptr(b.normed.ptr), Arg::Ptr(b.act.ptr)];
            self.x.launch(
                Kernel::MergeHeads,
                Launch::rows_cols(rows, h),
                &[&args[..], &heads].concat(),
            )?;
            self.linear(b.act.ptr, layer.out.ptr, b.stream.ptr, rows, h, h, 1.0)?;
            // MLP; the out-projection's bias joins the stream in this norm.
            self.layer_norm(
                Kernel::LayerNorm,
                stream,
                normed,
                &layer.norm2,
                Some(&layer.out_bias),
                rows,
            )?;
            self.linear(b.normed.ptr, layer.fc1.ptr, b.wide.ptr, rows, s.intermediate, h, 0.0)?;
            let args = [
                Arg::Ptr(b.wide.ptr),
                Arg::Ptr(layer.fc1_bias.ptr),
                Arg::Ptr(b.act.ptr),
                int(rows),
                int(s.intermediate),
                Arg::I32(s.act),
            ];
            let grid = Launch::rows_cols(rows, s.intermediate);
            self.x.launch(Kernel::BiasActivation, grid, &args)?;
            self.linear(b.act.ptr, layer.fc2.ptr, b.stream.ptr, rows, h, s.intermediate, 1.0)?;
            pending_bias = Some(&layer.fc2_bias);
        }
        // Post-norm of each image's class row (rows tokens · hidden apart), then projection.
        let class_rows = (b.stream.ptr, s.tokens * h);
        self.layer_norm(
            Kernel::LayerNorm,
            class_rows,
            (b.pooled.ptr, h),
            &e.post_norm,
            pending_bias,
            n,
        )?;
        self.linear(b.pooled.ptr, e.projection.ptr, b.projected.ptr, n, s.projection, h, 0.0)
    }

    /// Scores, softmax and probabilities · v for every head, in chunks of images; each
    /// head's output lands in `normed`, `(n · heads, tokens, head_dim)`.
    fn attention(&self) -> CudaResult<()> {
        let (s, b) = (self.e.sizes, self.b);
        let t = self.e.operand.bytes();
        let (st, hd, ld) = (s.tokens, s.head_dim, s.score_ld());
        let per_head = st * hd;
        let plane = (self.n * s.heads * per_head * t) as u64;
        let mut first = 0;
        while first < self.n {
            let images = s.attention_chunk().min(self.n - first);
            let batch = images * s.heads;
            let offset = (first * s.heads * per_head * t) as u64;
            let q = b.heads.ptr + offset;
            let (k, v) = (q + plane, q + 2 * plane);
            let head = |ptr| Matrix { ptr, ld: hd, stride: per_head, f32: false };
            // Column-major scores (s_k × s_q) = kᵀ-op · q: row-major scores[q][k], with q
            // already scaled by head_dim^-0.5 in its weights.
            self.x.product(&Product {
                transpose_a: true,
                m: st,
                n: st,
                k: hd,
                a: head(k),
                b: head(q),
                c: Matrix { ptr: b.scores.ptr, ld, stride: st * ld, f32: true },
                beta: 0.0,
                batch,
            })?;
            let args = [
                Arg::Ptr(b.scores.ptr),
                Arg::Ptr(b.probs.ptr),
                Arg::I64((batch * st) as i64),
                Arg::I32(st as i32),
                Arg::I32(ld as i32),
            ];
            let warps = Launch::flat((batch * st).div_ceil(8));
            self.x.launch(Kernel::Softmax, warps, &args)?;
            // Column-major o (hd × s_q) = v · p (p stored row-major s_q × s_k is column-major
            // s_k × s_q): row-major o[q][d].
            self.x.product(&Product {
                transpose_a: false,
                m: hd,
                n: st,
                k: st,
                a: head(v),
                b: Matrix { ptr: b.probs.ptr, ld, stride: st * ld, f32: false },
                c: Matrix { ptr: b.normed.ptr + offset, ld: hd, stride: per_head, f32: false },
                beta: 0.0,
                batch,
            })?;
            first += images;
        }
        Ok(())
    }
}
