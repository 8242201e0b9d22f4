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
    /// Copies `src` to `dst` on the device.
    fn copy_in(&self, dst: u64, src: &[f32]) -> CudaResult<()>;
    /// Copies device `src` into `dst` and waits for everything before it.
    fn copy_out(&self, src: u64, dst: &mut [f32]) -> CudaResult<()>;
    fn launch(&self, kernel: Kernel, grid: Launch, args: &[Arg]) -> CudaResult<()>;
    fn product(&self, p: &Product) -> CudaResult<()>;
}

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
    pixels: Buffer,
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
}

impl Scratch {
    fn new(exec: &dyn Exec, s: &Sizes, t: Operand, images: usize) -> CudaResult<Scratch> {
        let rows = images * s.tokens;
        let scores = s.attention_chunk().min(images) * s.heads * s.tokens * s.score_ld();
        let wide = (3 * s.hidden).max(s.intermediate) * rows;
        let tb = t.bytes();
        Ok(Scratch {
            images,
            pixels: exec.alloc(images * s.pixels() * 4)?,
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
        let s = self.sizes;
        assert_eq!(pixels.len(), n * s.pixels(), "pixel count");
        let mut out = vec![0f32; n * s.projection];
        if n == 0 {
            return Ok(out);
        }
        let mut scratch = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        if scratch.as_ref().is_none_or(|b| b.images < n) {
            *scratch = None;
            *scratch = Some(Scratch::new(&*self.exec, &s, self.operand, n)?);
        }
        let b = scratch.as_ref().expect("allocated above");
        assert!(pixels.len() * 4 <= b.pixels.bytes && out.len() * 4 <= b.projected.bytes);
        let run = Run { e: self, x: &*self.exec, b, n };
        run.all(pixels)?;
        self.exec.copy_out(b.projected.ptr, &mut out)?;
        Ok(out)
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

    fn all(&self, pixels: &[f32]) -> CudaResult<()> {
        let (e, b, n) = (self.e, self.b, self.n);
        let s = e.sizes;
        let rows = n * s.tokens;
        let h = s.hidden;
        let int = |v: usize| Arg::I32(v as i32);
        self.x.copy_in(b.pixels.ptr, pixels)?;

        // Embeddings: patches · patch weightᵀ, then class token and positions.
        let patch_rows = n * s.grid * s.grid;
        let args = [
            Arg::Ptr(b.pixels.ptr),
            Arg::Ptr(b.patches.ptr),
            int(n),
            int(s.channels),
            int(s.image),
            int(s.patch),
            int(s.grid),
        ];
        self.x.launch(Kernel::Patches, Launch::rows_cols(patch_rows, s.patch_len()), &args)?;
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
