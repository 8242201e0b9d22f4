//! The encoder layers on CPU, as direct matrix-product calls over buffers reused across layers
//! and calls: f32 through `gemm`, or bf16 operands with f32 accumulation through [`bf16`].
//!
//! Same arithmetic as the candle path in `model.rs`, minus its per-op tensors: biases and
//! residuals are accumulated by the matrix products themselves, q, k and v are read from the
//! fused projection in place through strides, each head's output is written straight into
//! its columns, and softmax and the activation run in place. On 2 cores the allocations and
//! passes this saves are about a quarter of the time the candle path takes. The last layer
//! runs its out projection and MLP on each image's class token alone, the one row of its
//! output that the embedding reads.
//!
//! In bf16 only the four weight products of each layer change (as under
//! `torch.autocast("cpu", bfloat16)`); layer norms, attention, softmax, the activation and the
//! residual stream stay f32.

use candle_core::{CpuStorage, Layout, Result, Storage, Tensor, bail};
use gemm::{Parallelism, gemm};
use rayon::prelude::*;
use std::sync::Mutex;

use crate::Activation;
use crate::ops::kernels;

mod aligned;
mod attention;
pub(crate) mod bf16;
mod outer;

use aligned::AlignedF32;
use attention::attention;
pub(crate) use outer::{OuterWeights, Patches};

/// Sizes of one forward pass.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    /// Images.
    pub(crate) n: usize,
    /// Tokens per image.
    pub(crate) s: usize,
    pub(crate) hidden: usize,
    pub(crate) heads: usize,
    pub(crate) intermediate: usize,
    pub(crate) eps: f32,
    pub(crate) act: Activation,
}

impl Dims {
    fn rows(&self) -> usize {
        self.n * self.s
    }

    fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }
}

/// Scratch buffers, grown on demand and kept for the next call.
#[derive(Default)]
pub(crate) struct Workspace {
    /// The residual stream, on a cache line.
    stream: AlignedF32,
    /// One image's patches per thread, flattened for the patch embedding's product.
    patches: AlignedF32,
    normed: AlignedF32,
    qkv: AlignedF32,
    attn: AlignedF32,
    mlp: AlignedF32,
    /// The bf16 operand of the current product (bf16 layers only).
    rounded: bf16::Activations,
    /// The MLP's activations, packed straight from the first MLP product for the second
    /// (bf16 layers only: their f32 `mlp` is never written).
    hidden: bf16::Activations,
    /// One attention head's scores and operands per rayon thread, kept from head to head and
    /// call to call rather than allocated per rayon job.
    heads: Vec<Mutex<HeadOperands>>,
}

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let floats = self.stream.len()
            + self.patches.len()
            + self.normed.len()
            + self.qkv.len()
            + self.attn.len()
            + self.mlp.len();
        f.debug_struct("Workspace").field("floats", &floats).finish()
    }
}

impl Workspace {
    fn fit(&mut self, d: &Dims) {
        let threads = rayon::current_num_threads().max(1);
        if self.heads.len() < threads {
            self.heads.resize_with(threads, Default::default);
        }
        let m = d.rows();
        self.stream.grow(m * d.hidden);
        self.qkv.grow(m * 3 * d.hidden);
        // The attention output, then room for the class rows the last layer gathers.
        self.attn.grow((m + d.n) * d.hidden);
        // `normed` and `mlp` only where something needs them (the tokens before the
        // pre-norm, f32 products in `run_layer`): bf16 layers norm while packing and never
        // write the MLP's f32 intermediate.
    }
}

/// The tensors of one encoder layer, in the order [`Bf16Layer::round`] and [`forward`] read them:
/// layer_norm1 weight and bias, fused qkv weight `(3h, h)` and bias, out_proj weight and bias,
/// layer_norm2 weight and bias, fc1 weight and bias, fc2 weight and bias.
pub(crate) type LayerTensors<'a> = [&'a Tensor; 12];

/// How an f32 weight matrix (`n × k`, a Linear weight, `y = x Wᵀ`) lies in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Order {
    /// Row-major `n × k`, as checkpoints hold it.
    Rows,
    /// Row-major `k × n` (`Wᵀ`): what `gemm` reads without packing it first. f32 CPU models
    /// hold their layer weights so (`ClipVision::from_var_builder`).
    Columns,
}

/// One weight matrix (`n × k`, a Linear weight) as a product reads it.
#[derive(Debug, Clone, Copy)]
enum Weight<'a> {
    F32(&'a [f32], Order),
    Bf16(bf16::Kernel, &'a bf16::PackedWeight),
    /// Values rounded to bf16, held as f32 in [`Order::Columns`]: the products of
    /// [`bf16::Route::Fma`], which round their activations in place first.
    Bf16OnFma(&'a [f32]),
}

/// What a layer's products take as operands: f32 values, or values rounded to bf16 (the
/// f32 layer's arithmetic with each product's operands rounded first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operands {
    F32,
    Bf16,
}

impl Weight<'_> {
    /// What this weight's products take as operands.
    fn operands(self) -> Operands {
        match self {
            Weight::F32(..) => Operands::F32,
            Weight::Bf16(..) | Weight::Bf16OnFma(..) => Operands::Bf16,
        }
    }

    /// `dst (m × n) += bias + a (m × k) · wᵀ` (`dst + bias` first, then the product: f32
    /// as two passes, bf16 in the product's own pass over `dst`). [`Weight::Bf16OnFma`]
    /// rounds `a` in place first; the others leave it as it is.
    #[allow(clippy::too_many_arguments)]
    fn product(
        self,
        dst: &mut [f32],
        a: &mut [f32],
        bias: &[f32],
        m: usize,
        n: usize,
        k: usize,
        ws: &mut bf16::Activations,
    ) {
        match self {
            Weight::F32(w, order) => {
                add_rows(dst, bias);
                matmul(dst, a, (w, order), (m, n, k), true)
            }
            Weight::Bf16OnFma(w) => {
                bf16::round_in_place(&mut a[..m * k], bf16::Threads::All);
                add_rows(dst, bias);
                matmul(dst, a, (w, Order::Columns), (m, n, k), true)
            }
            Weight::Bf16(kernel, w) => {
                check_packed(w, n, k);
                ws.fill_activations(a, m, k, k, bf16::Threads::All);
                bf16::matmul_acc(kernel, dst, ws, w, Some(bias));
            }
        }
    }

    /// `dst (m × n) = layer_norm(x) · wᵀ`, stored over `dst` (what it held is never read),
    /// the norm's weight and bias `ln`: f32 (and bf16 on FMAs) writes the normed rows into
    /// `normed` first (bf16 on FMAs then rounds them there); packed bf16 norms each row as it
    /// is rounded, in the same pass (`normed` unused). The caller adds
    /// the layer's bias in a pass of its own, with whatever else that pass does.
    #[allow(clippy::too_many_arguments)]
    fn product_of_norm(
        self,
        dst: &mut [f32],
        x: &[f32],
        ln: [&[f32]; 2],
        eps: f32,
        normed: &mut [f32],
        (m, n, k): (usize, usize, usize),
        ws: &mut bf16::Activations,
    ) {
        match self {
            Weight::F32(w, order) => {
                layer_norm(x, normed, ln[0], ln[1], k, eps);
                matmul(dst, normed, (w, order), (m, n, k), false);
            }
            Weight::Bf16OnFma(w) => {
                layer_norm(x, normed, ln[0], ln[1], k, eps);
                bf16::round_in_place(normed, bf16::Threads::All);
                matmul(dst, normed, (w, Order::Columns), (m, n, k), false);
            }
            Weight::Bf16(kernel, w) => {
                check_packed(w, n, k);
                fill_normed(ws, x, ln, eps, m, k);
                let layout = bf16::Output::rows(n);
                bf16::matmul_to(kernel, dst, layout, ws, w, bf16::Write::Store, None);
            }
        }
    }
}

/// Packs `layer_norm(x)` (`m` rows of `k`, the norm's weight and bias `ln`) as activations,
/// each row normed as it is rounded.
fn fill_normed(
    ws: &mut bf16::Activations,
    x: &[f32],
    ln: [&[f32]; 2],
    eps: f32,
    m: usize,
    k: usize,
) {
    ws.fill_activations_of(x, m, k, k, bf16::Threads::All, |row, out| {
        kernels::layer_norm(row, out, ln[0], ln[1], eps)
    });
}

fn check_packed(w: &bf16::PackedWeight, n: usize, k: usize) {
    assert!(w.n() == n && w.k() == k, "packed weight is {} × {}, not {n} × {k}", w.n(), w.k());
}

/// The weights of one encoder layer as [`run_layer`] reads them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LayerWeights<'a> {
    ln1: [&'a [f32]; 2],
    qkv: (Weight<'a>, &'a [f32]),
    out: (Weight<'a>, &'a [f32]),
    ln2: [&'a [f32]; 2],
    fc1: (Weight<'a>, &'a [f32]),
    fc2: (Weight<'a>, &'a [f32]),
}

impl<'a> LayerWeights<'a> {
    /// Reads f32 layer tensors in place (the storage guards live with the caller), each
    /// with the order its values lie in (only the four weight matrices may be transposed).
    fn from_slices(w: [(&'a [f32], Order); 12]) -> Self {
        let [ln1_w, ln1_b, qkv_w, qkv_b, out_w, out_b, ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b] =
            w;
        let weight = |(values, order): (&'a [f32], Order)| Weight::F32(values, order);
        LayerWeights {
            ln1: [ln1_w.0, ln1_b.0],
            qkv: (weight(qkv_w), qkv_b.0),
            out: (weight(out_w), out_b.0),
            ln2: [ln2_w.0, ln2_b.0],
            fc1: (weight(fc1_w), fc1_b.0),
            fc2: (weight(fc2_w), fc2_b.0),
        }
    }

    fn check(&self, d: &Dims) -> Result<()> {
        let (h, i) = (d.hidden, d.intermediate);
        let lens = |w: Weight| match w {
            Weight::F32(w, _) | Weight::Bf16OnFma(w) => w.len(),
            Weight::Bf16(_, w) => w.n() * w.k(),
        };
        let got = [
            self.ln1[0].len(),
            self.ln1[1].len(),
            lens(self.qkv.0),
            self.qkv.1.len(),
            lens(self.out.0),
            self.out.1.len(),
            self.ln2[0].len(),
            self.ln2[1].len(),
            lens(self.fc1.0),
            self.fc1.1.len(),
            lens(self.fc2.0),
            self.fc2.1.len(),
        ];
        let expect = [h, h, 3 * h * h, 3 * h, h * h, h, h, h, i * h, i, h * i, h];
        if got != expect {
            bail!("cpu encoder layer weights do not match hidden {h}, intermediate {i}");
        }
        Ok(())
    }
}

/// An encoder layer with its four weight matrices rounded to bf16 once, for the bf16
/// products, held as its [`bf16::Route`] reads them; the layer norms and biases stay f32.
#[derive(Debug)]
pub(crate) struct Bf16Layer {
    /// layer_norm1 weight, bias; qkv bias; out_proj bias; layer_norm2 weight, bias; fc1 bias;
    /// fc2 bias.
    small: [Vec<f32>; 8],
    /// qkv, out_proj, fc1, fc2.
    matrices: RoundedMatrices,
}

/// A layer's four weight matrices rounded to bf16, for one [`bf16::Route`].
#[derive(Debug)]
enum RoundedMatrices {
    /// Packed for a bf16 kernel.
    Packed(bf16::Kernel, [bf16::PackedWeight; 4]),
    /// f32 values, each a bf16 value, in [`Order::Columns`] for the f32 products.
    OnFma([Vec<f32>; 4]),
}

impl Bf16Layer {
    /// Rounds and holds f32 layer tensors (as [`LayerTensors`]) for `route`.
    pub(crate) fn round(tensors: LayerTensors<'_>, route: bf16::Route) -> Result<Self> {
        const MATRICES: [usize; 4] = [2, 4, 8, 10];
        with_f32_slices(tensors, |v| {
            let dims = |t: usize| tensors[t].dims2();
            let [qkv, out, fc1, fc2] = MATRICES;
            let matrices = match route {
                bf16::Route::Packed(kernel) => {
                    let pack = |t: usize| {
                        let (n, k) = dims(t)?;
                        Ok::<_, candle_core::Error>(bf16::PackedWeight::pack(v[t], n, k))
                    };
                    RoundedMatrices::Packed(
                        kernel,
                        [pack(qkv)?, pack(out)?, pack(fc1)?, pack(fc2)?],
                    )
                }
                bf16::Route::Fma => {
                    let round = |t: usize| {
                        let (n, k) = dims(t)?;
                        let mut values = transposed(v[t], n, k);
                        bf16::round_in_place(&mut values, bf16::Threads::All);
                        Ok::<_, candle_core::Error>(values)
                    };
                    RoundedMatrices::OnFma([round(qkv)?, round(out)?, round(fc1)?, round(fc2)?])
                }
            };
            let small = [0, 1, 3, 5, 6, 7, 9, 11].map(|t| v[t].to_vec());
            Ok(Bf16Layer { small, matrices })
        })
    }

    fn weights(&self) -> LayerWeights<'_> {
        let [ln1_w, ln1_b, qkv_b, out_b, ln2_w, ln2_b, fc1_b, fc2_b] = &self.small;
        let [qkv, out, fc1, fc2] = match &self.matrices {
            RoundedMatrices::Packed(kernel, w) => w.each_ref().map(|w| Weight::Bf16(*kernel, w)),
            RoundedMatrices::OnFma(w) => w.each_ref().map(|w| Weight::Bf16OnFma(w)),
        };
        LayerWeights {
            ln1: [ln1_w, ln1_b],
            qkv: (qkv, qkv_b),
            out: (out, out_b),
            ln2: [ln2_w, ln2_b],
            fc1: (fc1, fc1_b),
            fc2: (fc2, fc2_b),
        }
    }
}

/// A call of fewer floating-point operations than this runs on one thread: about 10 ms of
/// one core's work, against which the hand-offs of a parallel loop (several per layer) and
/// the spinning of idle pool threads cost more than they save. A tiny model (the pipeline's
/// benchmarks, a small CLIP in a pipeline whose other cores decode) then takes one core,
/// not all of them in turns.
const ONE_THREAD_BELOW_FLOPS: f64 = 1e9;

/// Floating-point operations of one forward pass (multiply-adds count two).
fn flops(d: &Dims, patches: &Patches, layers: usize) -> f64 {
    let (s, h, i) = (d.s as f64, d.hidden as f64, d.intermediate as f64);
    let per_layer = s * (2.0 * 4.0 * h * h + 2.0 * 2.0 * h * i) + 2.0 * 2.0 * s * s * h;
    let patch = (s - 1.0) * 2.0 * h * (patches.channels * patches.patch * patches.patch) as f64;
    d.n as f64 * (layers as f64 * per_layer + patch)
}

/// Which threads a forward pass runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Spread {
    /// One thread below [`ONE_THREAD_BELOW_FLOPS`], all of rayon's above.
    BySize,
    /// All of rayon's whatever the size (tests hold the two paths to each other).
    #[cfg_attr(not(test), allow(dead_code))]
    AllThreads,
}

/// The pool small calls run in: one thread, so that their parallel loops run inline.
fn one_thread() -> &'static rayon::ThreadPool {
    static POOL: std::sync::OnceLock<rayon::ThreadPool> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|_| "aesthete-clip-small".to_string())
            .build()
            .expect("a one-thread rayon pool")
    })
}

/// The encoder layers of a model: f32 tensors read in place, or rounded for bf16 products.
pub(crate) enum Layers<'a> {
    F32(Vec<LayerTensors<'a>>),
    Bf16(&'a [Bf16Layer]),
}

/// The whole forward pass of `dims.n` images (`pixels`, cut as `patches` says) to their
/// L2-normalized embeddings (`n × outer.projection_dim`), every large buffer the workspace's.
pub(crate) fn forward(
    pixels: &[f32],
    patches: &Patches,
    outer: &OuterWeights<'_>,
    layers: Layers<'_>,
    dims: &Dims,
    spread: Spread,
    ws: &mut Workspace,
) -> Result<Vec<f32>> {
    ws.fit(dims);
    let layer_count = match &layers {
        Layers::F32(layers) => layers.len(),
        Layers::Bf16(layers) => layers.len(),
    };
    let mut stream = std::mem::take(&mut ws.stream);
    let x = &mut stream.as_mut_slice()[..dims.rows() * dims.hidden];
    let run = || {
        outer::tokens(pixels, patches, outer, dims, [&mut ws.patches, &mut ws.normed], x)?;
        let outputs = |index: usize| match index + 1 == layer_count {
            true => Outputs::ClassTokens,
            false => Outputs::AllTokens,
        };
        match layers {
            Layers::F32(layers) => {
                for (index, tensors) in layers.into_iter().enumerate() {
                    with_f32_matrices(tensors, |w| {
                        run_layer(x, &LayerWeights::from_slices(w), dims, ws, outputs(index))
                    })?;
                }
            }
            Layers::Bf16(layers) => {
                for (index, layer) in layers.iter().enumerate() {
                    run_layer(x, &layer.weights(), dims, ws, outputs(index))?;
                }
            }
        }
        Ok(outer::embeddings(x, outer, dims))
    };
    let small = flops(dims, patches, layer_count) < ONE_THREAD_BELOW_FLOPS;
    let result = if spread == Spread::BySize && small { one_thread().install(run) } else { run() };
    ws.stream = stream;
    result
}

/// Runs `f` over the layer tensors' f32 values, read in place.
pub(crate) fn with_f32_slices<R, const N: usize>(
    tensors: [&Tensor; N],
    f: impl FnOnce([&[f32]; N]) -> Result<R>,
) -> Result<R> {
    let guards = tensors.map(|t| t.storage_and_layout());
    let mut slices = [&[][..]; N];
    for (slot, (storage, layout)) in slices.iter_mut().zip(&guards) {
        *slot = f32_data(storage, layout)?;
    }
    f(slices)
}

/// `w` (an f32 CPU matrix `n × k`) with its values laid out transposed (row-major `k × n`),
/// seen through a transposed view: still `n × k` to every reader ([`Order::Columns`] to
/// [`with_f32_matrices`]). Blocks of 16 K rows in parallel: each reads one cache line of
/// each weight row and writes 16 output rows in sequence (about 10 × faster than candle's
/// strided copy, which took 1.5 s of a ViT-L/14 load on a Xeon core).
pub(crate) fn held_transposed(w: &Tensor) -> Result<Tensor> {
    let (n, k) = w.dims2()?;
    let w = w.contiguous()?;
    let values = with_f32_slices([&w], |[w]| Ok(transposed(w, n, k)))?;
    Tensor::from_vec(values, (k, n), w.device())?.t()
}

/// The row-major `n × k` matrix `w` transposed (row-major `k × n`), for [`held_transposed`].
fn transposed(w: &[f32], n: usize, k: usize) -> Vec<f32> {
    const ROWS: usize = 16;
    assert_eq!(w.len(), n * k, "a {n} × {k} matrix");
    let mut out = vec![0f32; k * n];
    if n == 0 {
        return out;
    }
    out.par_chunks_mut(ROWS * n).enumerate().for_each(|(block, out)| {
        let k0 = block * ROWS;
        let rows = out.len() / n;
        for (j, row) in w.chunks_exact(k).enumerate() {
            for (t, &v) in row[k0..k0 + rows].iter().enumerate() {
                out[t * n + j] = v;
            }
        }
    });
    out
}

/// Runs `f` over the f32 values of 1-D and 2-D tensors, read in place, each with its
/// [`Order`]: contiguous (`Rows`), or a transposed view of a contiguous matrix (`Columns`).
pub(crate) fn with_f32_matrices<R, const N: usize>(
    tensors: [&Tensor; N],
    f: impl FnOnce([(&[f32], Order); N]) -> Result<R>,
) -> Result<R> {
    let guards = tensors.map(|t| t.storage_and_layout());
    let mut slices = [(&[][..], Order::Rows); N];
    for (slot, (storage, layout)) in slices.iter_mut().zip(&guards) {
        *slot = match f32_data(storage, layout) {
            Ok(values) => (values, Order::Rows),
            Err(e) => match layout.transpose(0, 1) {
                Ok(transposed) if layout.dims().len() == 2 => {
                    (f32_data(storage, &transposed)?, Order::Columns)
                }
                _ => return Err(e),
            },
        };
    }
    f(slices)
}

fn f32_data<'a>(storage: &'a Storage, layout: &Layout) -> Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((start, end))) => Ok(&v[start..end]),
        _ => bail!("cpu encoder needs contiguous f32 weights on the cpu"),
    }
}

/// Which tokens of an encoder layer's output are read after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outputs {
    /// Every token: the next layer reads them all.
    AllTokens,
    /// Each image's class token alone: the last layer, whose output only
    /// `post_layernorm` of the class token reads (`get_image_features`). Attention still
    /// reads every token's keys and values, but the out projection, the MLP and their
    /// residuals run on `n` rows instead of `n · s`: about 3% of ViT-L/14's operations.
    ClassTokens,
}

fn run_layer(
    x: &mut [f32],
    w: &LayerWeights<'_>,
    d: &Dims,
    ws: &mut Workspace,
    outputs: Outputs,
) -> Result<()> {
    w.check(d)?;
    let (m, h) = (d.rows(), d.hidden);
    attention_block(x, w, d, ws);
    let mut attn = std::mem::take(&mut ws.attn);
    match outputs {
        Outputs::AllTokens => mlp_block(x, &mut attn.as_mut_slice()[..m * h], w, d, ws),
        Outputs::ClassTokens => {
            // Each image's class row of `x` and of the attention output, gathered into
            // `n` consecutive rows (of `attn`'s own space, read before it is written), run
            // through the rest of the layer, and put back where the embeddings read them.
            let class = Dims { s: 1, ..*d };
            let (n, s) = (d.n, d.s);
            let all = attn.as_mut_slice();
            let (rows, class_x) = all[..m * h + n * h].split_at_mut(m * h);
            for image in 0..n {
                rows.copy_within(image * s * h..image * s * h + h, image * h);
                class_x[image * h..][..h].copy_from_slice(&x[image * s * h..][..h]);
            }
            mlp_block(class_x, &mut rows[..n * h], w, &class, ws);
            for image in 0..n {
                x[image * s * h..][..h].copy_from_slice(&class_x[image * h..][..h]);
            }
        }
    }
    ws.attn = attn;
    Ok(())
}

/// The layer's first half: `layer_norm1`, the fused q, k, v projection and attention over
/// every token, into `ws.attn`.
fn attention_block(x: &[f32], w: &LayerWeights<'_>, d: &Dims, ws: &mut Workspace) {
    let (m, h) = (d.rows(), d.hidden);
    let qkv = &mut ws.qkv.as_mut_slice()[..m * 3 * h];
    let attn = &mut ws.attn.as_mut_slice()[..m * h];
    let rounded = &mut ws.rounded;
    match w.qkv.0 {
        Weight::F32(..) | Weight::Bf16OnFma(..) => {
            ws.normed.grow(m * h);
            let normed = &mut ws.normed.as_mut_slice()[..m * h];
            w.qkv.0.product_of_norm(qkv, x, w.ln1, d.eps, normed, (m, 3 * h, h), rounded);
            add_rows(qkv, w.qkv.1);
            let operands = w.qkv.0.operands();
            if operands == Operands::Bf16 {
                // q, k and v are both products' operands: rounded once, here.
                bf16::round_in_place(qkv, bf16::Threads::All);
            }
            attention(qkv, attn, &ws.heads, operands, d)
        }
        Weight::Bf16(kernel, packed) => {
            // q, k and v head by head (3 · heads groups of head_dim columns, each its own
            // m × head_dim matrix), so that each head's operands are read contiguously.
            // The bias goes in with the sums (stored over `qkv`, never read).
            let layout = qkv_by_head(d);
            check_packed(packed, 3 * h, h);
            fill_normed(rounded, x, w.ln1, d.eps, m, h);
            let (store, bias) = (bf16::Write::Store, Some(w.qkv.1));
            bf16::matmul_to(kernel, qkv, layout, rounded, packed, store, bias);
            attention_bf16(kernel, qkv, attn, &ws.heads, d)
        }
    }
}

/// The layer's second half on the `d.rows()` rows of `x` and of the attention output `attn`:
/// the out projection and the MLP, each added to `x` with its bias. bf16 on FMAs rounds
/// `attn` in place.
fn mlp_block(x: &mut [f32], attn: &mut [f32], w: &LayerWeights<'_>, d: &Dims, ws: &mut Workspace) {
    let (m, h, i) = (d.rows(), d.hidden, d.intermediate);
    let rounded = &mut ws.rounded;
    w.out.0.product(x, attn, w.out.1, m, h, h, rounded);

    let act = match d.act {
        Activation::QuickGelu => kernels::quick_gelu,
        Activation::Gelu => kernels::gelu_erf,
        Activation::GeluTanh => kernels::gelu_tanh,
    };
    if let (Weight::Bf16(kernel, fc1), Weight::Bf16(_, fc2)) = (w.fc1.0, w.fc2.0) {
        // fc1's output goes through the activation into fc2's packed operand block by block.
        check_packed(fc1, i, h);
        check_packed(fc2, h, i);
        fill_normed(rounded, x, w.ln2, d.eps, m, h);
        bf16::matmul_bias_into_activations(kernel, rounded, fc1, w.fc1.1, act, &mut ws.hidden);
        bf16::matmul_acc(kernel, x, &ws.hidden, fc2, Some(w.fc2.1));
        return;
    }
    ws.normed.grow(m * h);
    ws.mlp.grow(m * i);
    let normed = &mut ws.normed.as_mut_slice()[..m * h];
    let mlp = &mut ws.mlp.as_mut_slice()[..m * i];
    // The product stored, then the bias and the activation in one pass over each row: one
    // pass over the m × intermediate matrix less than a bias written first and read back by
    // the product.
    w.fc1.0.product_of_norm(mlp, x, w.ln2, d.eps, normed, (m, i, h), rounded);
    let bias = w.fc1.1;
    mlp.par_chunks_mut(i).with_min_len(4).for_each(|row| {
        kernels::add(row, bias);
        act(row)
    });
    w.fc2.0.product(x, mlp, w.fc2.1, m, h, i, rounded);
}

/// `dst (m × n) += a (m × k) · wᵀ` for `w` stored `n × k` row-major (a Linear weight).
#[cfg(test)]
fn matmul_acc(dst: &mut [f32], a: &[f32], w: &[f32], m: usize, n: usize, k: usize) {
    matmul(dst, a, (w, Order::Rows), (m, n, k), true)
}

/// Columns of one part of a split f32 product at the least: narrower parts would read all of
/// `a` for too little work each.
const PART_COLS_MIN: usize = 128;

/// How a product of `m × n` outputs is split among `threads`: (column parts, row parts), each
/// part one single-threaded `gemm` call. Columns first: each part then packs only its own
/// slice of the weight. On two Xeon threads at ViT-L/14's shapes, batch 4, two column halves
/// measured 1.18 × (out_proj, 1028 × 1024 × 1024) and 1.15-1.19 × (fc2, 1028 × 1024 × 4096)
/// the speed of one `gemm` call spread by `gemm` itself, and the same at the wider products;
/// the sums are the same bits either way (`gemm` adds over K in the same order however the
/// outputs are cut).
fn split(m: usize, n: usize, threads: usize) -> (usize, usize) {
    let cols = threads.min(n / PART_COLS_MIN).max(1);
    let rows = threads.div_ceil(cols).min(m.div_ceil(16)).max(1);
    (cols, rows)
}

/// `dst (m × n) = a (m × k) · b (k × n)`, all row-major: [`matmul`] over a weight held as
/// f32 models hold theirs ([`Order::Columns`], `b = Wᵀ`).
pub(crate) fn matmul_f32(dst: &mut [f32], a: &[f32], b: &[f32], (m, n, k): (usize, usize, usize)) {
    matmul(dst, a, (b, Order::Columns), (m, n, k), false)
}

/// `dst (m × n) = a (m × k) · wᵀ`, or `+=` with `add` (else what `dst` held is never read),
/// for a weight `w` (`n × k`) in either [`Order`].
fn matmul(
    dst: &mut [f32],
    a: &[f32],
    (w, order): (&[f32], Order),
    (m, n, k): (usize, usize, usize),
    add: bool,
) {
    assert!(dst.len() == m * n && a.len() == m * k && w.len() == n * k);
    let (cols, rows) = split(m, n, rayon::current_num_threads().max(1));
    // Part boundaries on whole vectors of 16 columns, and whole rows.
    let width = n.div_ceil(cols).div_ceil(16) * 16;
    let height = m.div_ceil(rows);
    let out = SharedMut(dst.as_mut_ptr());
    (0..cols * rows).into_par_iter().for_each(move |part| {
        let out = out;
        let (j0, i0) = ((part % cols) * width, (part / cols) * height);
        let (nj, mi) = (n.saturating_sub(j0).min(width), m.saturating_sub(i0).min(height));
        if nj == 0 || mi == 0 {
            return;
        }
        // SAFETY: the assert above keeps every access of the three matrices in bounds: rows
        // `i0 .. i0 + mi` of `a` and `dst`, columns `j0 .. j0 + nj` of the product (of `w`,
        // as `order` lays them out); each part
        // writes only its own block of `dst` (parts do not overlap), which does not overlap
        // the inputs and outlives the loop.
        unsafe {
            product(
                (mi, nj, k),
                Strided::rows(out.0.add(i0 * n + j0), n),
                Strided::rows(a.as_ptr().add(i0 * k), k),
                order.transposed(w.as_ptr(), n, k).at_column(j0),
                add,
            )
        }
    });
}

/// One operand of a [`product`]: where element (0, 0) lies and the steps, in elements,
/// from one row and from one column to the next.
#[derive(Clone, Copy)]
struct Strided<P> {
    at: P,
    row_step: isize,
    col_step: isize,
}

impl Order {
    /// `Wᵀ` (`k × n`) of a weight `W` (`n × k`) at `w` held in this order: the right operand
    /// of `x · Wᵀ`.
    fn transposed(self, w: *const f32, n: usize, k: usize) -> Strided<*const f32> {
        match self {
            Order::Rows => Strided::columns(w, k),
            Order::Columns => Strided::rows(w, n),
        }
    }
}

impl Strided<*const f32> {
    /// The same matrix seen from column `j` on.
    ///
    /// # Safety
    /// Column `j` lies in the matrix's buffer.
    unsafe fn at_column(self, j: usize) -> Self {
        // SAFETY: as the caller promises.
        Strided { at: unsafe { self.at.offset(j as isize * self.col_step) }, ..self }
    }
}

impl<P> Strided<P> {
    /// The transpose: rows become columns.
    fn t(self) -> Self {
        Strided { at: self.at, row_step: self.col_step, col_step: self.row_step }
    }

    /// Row-major with rows `row_len` apart.
    fn rows(at: P, row_len: usize) -> Self {
        Strided { at, row_step: row_len as isize, col_step: 1 }
    }

    /// Column-major with columns `col_len` apart.
    fn columns(at: P, col_len: usize) -> Self {
        Strided { at, row_step: 1, col_step: col_len as isize }
    }
}

/// `dst (m × n) = lhs (m × k) · rhs (k × n)`, or `+=` with `add` (else what `dst` held is
/// never read): one `gemm` call on the calling thread.
///
/// # Safety
/// Every element of the three operands at those shapes and steps lies in its buffer, and
/// `dst` overlaps neither input nor anything another thread touches meanwhile.
unsafe fn product(
    (m, n, k): (usize, usize, usize),
    dst: Strided<*mut f32>,
    lhs: Strided<*const f32>,
    rhs: Strided<*const f32>,
    add: bool,
) {
    // SAFETY: as the caller promises.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst.at,
            dst.col_step,
            dst.row_step,
            add,
            lhs.at,
            lhs.col_step,
            lhs.row_step,
            rhs.at,
            rhs.col_step,
            rhs.row_step,
            if add { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

fn add_rows(dst: &mut [f32], row: &[f32]) {
    dst.par_chunks_mut(row.len()).with_min_len(16).for_each(|d| kernels::add(d, row));
}

fn layer_norm(x: &[f32], out: &mut [f32], weight: &[f32], bias: &[f32], h: usize, eps: f32) {
    out.par_chunks_mut(h)
        .zip(x.par_chunks(h))
        .with_min_len(16)
        .for_each(|(o, x)| kernels::layer_norm(x, o, weight, bias, eps));
}

/// A pointer that rayon tasks writing disjoint parts of one buffer may share.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: every task writes a disjoint set of elements (its own block of a product's output,
// or its own head's columns of its own image's rows), and the buffer outlives the parallel
// loop.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

/// The layout of bf16 layers' `qkv`: head by head, 3 · heads column groups of head_dim.
fn qkv_by_head(d: &Dims) -> bf16::Output {
    bf16::Output::column_groups(d.rows(), d.head_dim())
}

/// One head's attention scores and the operands of its two products, kept for the next head
/// on the same thread (so that they stay in its cache).
#[derive(Default)]
struct HeadOperands {
    scores: Vec<f32>,
    /// The keys transposed, f32 (f32 layers on AVX-512F: [`attention()`]).
    #[cfg(target_arch = "x86_64")]
    keys: Vec<f32>,
    /// The values in contiguous rows, f32 (as `keys`).
    #[cfg(target_arch = "x86_64")]
    values: Vec<f32>,
    q: bf16::Activations,
    k: bf16::PackedWeight,
    p: bf16::Activations,
    v: bf16::PackedWeight,
}

impl HeadOperands {
    /// This rayon thread's operands, from one per thread. A poisoned lock only means another
    /// task panicked: every buffer is refilled before it is read.
    fn of_this_thread(all: &[Mutex<HeadOperands>]) -> std::sync::MutexGuard<'_, HeadOperands> {
        let thread = rayon::current_thread_index().unwrap_or(0) % all.len();
        all[thread].lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The first `len` values of `buffer`, grown to hold them: stored over, never read first,
/// so only grown, never cleared.
fn grown(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    &mut buffer[..len]
}

/// [`attention()`] with both products on bf16 operands and f32 sums, as autocast runs them,
/// over `qkv` laid out head by head ([`qkv_by_head`]):
/// q, k and v rounded, the softmax in f32 and its probabilities rounded for `p · v`. Each
/// task takes its thread's operands from `heads` (one per rayon thread; nothing inside a task
/// starts parallel work, so no thread wants its operands twice at once).
fn attention_bf16(
    kernel: bf16::Kernel,
    qkv: &[f32],
    out: &mut [f32],
    heads_operands: &[Mutex<HeadOperands>],
    d: &Dims,
) {
    let (s, h, heads, hd) = (d.s, d.hidden, d.heads, d.head_dim());
    assert!(qkv.len() == d.rows() * 3 * h && out.len() == d.rows() * h);
    assert!(!heads_operands.is_empty(), "no attention operands");
    let layout = qkv_by_head(d);
    let out = SharedMut(out.as_mut_ptr());
    let this = bf16::Threads::This;
    (0..d.n * heads).into_par_iter().for_each(move |task| {
        let out = out;
        let mut ops = HeadOperands::of_this_thread(heads_operands);
        let ops = &mut *ops;
        let (image, head) = (task / heads, task % heads);
        // Where this head's q, k and v start: `s` rows of `hd`, contiguous.
        let [q, k, v] = [0, h, 2 * h].map(|third| layout.at(image * s, third + head * hd));
        // p = q · kᵀ (q pre-scaled)
        ops.q.fill_activations(&qkv[q..], s, hd, hd, this);
        ops.k.fill_weight_rows(&qkv[k..], s, hd, hd, this);
        let p = grown(&mut ops.scores, s * s);
        // SAFETY: `p` is this task's own s × s buffer.
        unsafe { bf16::matmul_raw(kernel, p.as_mut_ptr(), s, &ops.q, &ops.k, bf16::Write::Store) };
        // out = softmax(p) · v, as softmax(p) times the weight vᵀ; the softmax runs on each
        // row as it is rounded and packed.
        ops.p.fill_softmax_rows(p, s, s, this);
        ops.v.fill_weight_columns(&qkv[v..], hd, s, hd, this);
        let dst = out.0.wrapping_add(image * s * h + head * hd);
        // SAFETY: rows `image · s ..` and columns `head · hd ..` of `out` (n · s × h, inside
        // it by the assert above) belong to this task alone.
        unsafe { bf16::matmul_raw(kernel, dst, h, &ops.p, &ops.v, bf16::Write::Store) };
    });
}

/// `len` values in [-0.5, 0.5) from an xorshift generator seeded with `seed`: the operands of
/// the encoder's kernel tests.
#[cfg(test)]
pub(crate) fn random(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect()
}

#[cfg(test)]
mod tests {
    /// A weight held transposed reads as the same `n × k` matrix, through candle and through
    /// the encoder's slices (`Order::Columns`, the transpose's values).
    #[test]
    fn a_weight_held_transposed_is_the_same_matrix() {
        use candle_core::{Device, Tensor};
        for (n, k) in [(3, 5), (40, 33), (17, 16)] {
            let values: Vec<f32> = (0..n * k).map(|i| i as f32 * 0.5 - 7.0).collect();
            let w = Tensor::from_vec(values.clone(), (n, k), &Device::Cpu).unwrap();
            let held = super::held_transposed(&w).unwrap();
            assert_eq!(held.dims(), &[n, k]);
            assert_eq!(held.flatten_all().unwrap().to_vec1::<f32>().unwrap(), values);
            super::with_f32_matrices([&held], |[(slice, order)]| {
                assert_eq!(order, super::Order::Columns);
                for (i, &v) in slice.iter().enumerate() {
                    assert_eq!(v, values[(i % n) * k + i / n], "{n}x{k} at {i}");
                }
                Ok(())
            })
            .unwrap();
        }
    }

    /// `matmul_acc` (the `gemm` crate, AVX-512F, AVX2+FMA or portable kernels as this CPU
    /// has them) against a plain f64 triple loop, on shapes that are not multiples of any
    /// kernel's tile, K included; split among 1, 2, 3 and 5 threads (the same bits), and with
    /// the weight held transposed.
    #[test]
    fn matmul_matches_a_scalar_reference() {
        #[cfg(target_arch = "x86_64")]
        eprintln!(
            "matmul_matches_a_scalar_reference: gemm runs its {} kernels here",
            if std::arch::is_x86_feature_detected!("avx512f") {
                "AVX-512F"
            } else if std::arch::is_x86_feature_detected!("avx2") {
                "AVX2+FMA"
            } else {
                "baseline"
            }
        );
        for (m, n, k) in
            [(1, 1, 1), (5, 3, 7), (17, 33, 65), (257, 48, 31), (64, 1031, 97), (70, 300, 40)]
        {
            let (a, w, init) =
                (super::random(m * k, 1), super::random(n * k, 2), super::random(m * n, 3));
            // One thread (one `gemm` call), and pools that split the product into column
            // and row parts: every split gives the same bits.
            let mut got = init.clone();
            super::matmul_acc(&mut got, &a, &w, m, n, k);
            for threads in [1, 2, 3, 5] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let mut split = init.clone();
                pool.install(|| super::matmul_acc(&mut split, &a, &w, m, n, k));
                let parts = super::split(m, n, threads);
                assert!(split == got, "{m}x{n}x{k}: {threads} threads, parts {parts:?}");
            }
            // The weight held transposed (`Order::Columns`, as f32 models hold theirs): `gemm`
            // may add in another order (it does at the smallest shapes), so it is held to the
            // reference on its own.
            let wt: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
            let mut transposed = init.clone();
            let weight = (&wt[..], super::Order::Columns);
            super::matmul(&mut transposed, &a, weight, (m, n, k), true);
            for (got, order) in [(&got, "rows"), (&transposed, "columns")] {
                for i in 0..m {
                    for j in 0..n {
                        let products =
                            (0..k).map(|t| f64::from(a[i * k + t]) * f64::from(w[j * k + t]));
                        let c = f64::from(init[i * n + j]);
                        let want = c + products.clone().sum::<f64>();
                        let magnitude = c.abs() + products.map(f64::abs).sum::<f64>();
                        // The forward error bound of any order of f32 summation of k + 1
                        // terms (fused or not): (k + 1) · eps · Σ|terms|.
                        let bound = (k + 1) as f64 * f64::from(f32::EPSILON) * magnitude;
                        let diff = (f64::from(got[i * n + j]) - want).abs();
                        let at = format!("{m}x{n}x{k}, weight in {order}, at ({i}, {j})");
                        assert!(diff <= bound, "{at}: {diff} > {bound}");
                    }
                }
            }
        }
    }

    /// The last layer run on each image's class token alone (`Outputs::ClassTokens`) gives
    /// the class rows that running it on every token gives: with f32 weights, held in either
    /// order, and on every bf16 route this CPU has. Rows that are not multiples of any
    /// tile (3 images of 7 tokens), on 1 and 3 threads.
    #[test]
    fn the_last_layer_on_class_tokens_alone_gives_their_rows() {
        use super::{Bf16Layer, LayerWeights, Outputs, random};
        use candle_core::Tensor;
        let d = layer_dims(3, 7);
        let h = d.hidden;
        let tensors = layer_tensors(&d);
        let transposed: Vec<Tensor> = tensors
            .iter()
            .map(|t| match t.rank() {
                2 => super::held_transposed(t).unwrap(),
                _ => t.clone(),
            })
            .collect();
        let input = random(d.rows() * h, 5);
        let compare = |what: &str, weights: &LayerWeights<'_>| {
            for threads in [1, 3] {
                let all = one_layer(weights, &d, &input, Outputs::AllTokens, threads);
                let class = one_layer(weights, &d, &input, Outputs::ClassTokens, threads);
                for image in 0..d.n {
                    let row = image * d.s * h..(image * d.s + 1) * h;
                    let (want, got) = (&all[row.clone()], &class[row]);
                    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                    for (j, (w, g)) in want.iter().zip(got).enumerate() {
                        let diff = (w - g).abs();
                        let at = format!("{what}, {threads} threads, image {image} at {j}");
                        assert!(diff <= 1e-5 * scale, "{at}: {g} against {w}");
                    }
                }
            }
        };
        for (what, held) in [("f32 rows", &tensors), ("f32 columns", &transposed)] {
            let held: [&Tensor; 12] = std::array::from_fn(|t| &held[t]);
            super::with_f32_matrices(held, |w| {
                compare(what, &LayerWeights::from_slices(w));
                Ok(())
            })
            .unwrap();
        }
        for route in bf16_routes() {
            let held: [&Tensor; 12] = std::array::from_fn(|t| &tensors[t]);
            let layer = Bf16Layer::round(held, route).unwrap();
            compare(&format!("bf16 on {}", route.name()), &layer.weights());
        }
    }

    /// One layer on every bf16 route this CPU has, against an f64 reference of the same layer
    /// with its operands rounded to bf16 where the routes round them (weights; the normed
    /// rows before qkv and fc1; q, k and v; the probabilities; the attention output; the
    /// activated MLP rows): each route lands far closer to it than the f32 layer does
    /// (a route that skipped one rounding would land about as far off as f32). The reference
    /// rounds values it computed in f64, so a value next to a rounding boundary can round
    /// the other way; that costs a few bf16 units in the last place of a few operands.
    #[test]
    fn every_bf16_route_runs_the_bf16_layer() {
        use super::{Bf16Layer, LayerWeights, Outputs, random};
        use candle_core::Tensor;
        let d = layer_dims(2, 17);
        let tensors = layer_tensors(&d);
        let held: [&Tensor; 12] = std::array::from_fn(|t| &tensors[t]);
        let input = random(d.rows() * d.hidden, 9);
        let want = bf16_layer_reference(&tensors, &d, &input);
        let largest_diff = |got: &[f32]| {
            got.iter().zip(&want).fold(0f64, |m, (g, w)| m.max((f64::from(*g) - w).abs()))
        };
        let f32_out = super::with_f32_matrices(held, |w| {
            Ok(one_layer(&LayerWeights::from_slices(w), &d, &input, Outputs::AllTokens, 2))
        })
        .unwrap();
        let f32_off = largest_diff(&f32_out);
        let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
        eprintln!(
            "f32 layer against the bf16 reference: largest |Δ| {f32_off:.3e} (scale {scale:.3})"
        );
        // Rounding really moves this layer: by some bf16 units in the last place, no more.
        assert!(f32_off > 1e-3 * scale && f32_off < 2e-2 * scale, "{f32_off} (scale {scale})");
        for route in bf16_routes() {
            let layer = Bf16Layer::round(held, route).unwrap();
            let off = largest_diff(&one_layer(&layer.weights(), &d, &input, Outputs::AllTokens, 2));
            eprintln!("bf16 on {}: largest |Δ| {off:.3e}", route.name());
            assert!(off <= 0.05 * f32_off, "{}: {off} off, f32 {f32_off} off", route.name());
        }
    }

    /// [`every_bf16_route_runs_the_bf16_layer`]'s reference: the layer in f64 on `x`, each
    /// operand of a product rounded to bf16 first.
    fn bf16_layer_reference(
        tensors: &[candle_core::Tensor],
        d: &super::Dims,
        x: &[f32],
    ) -> Vec<f64> {
        let round =
            |v: f64| f64::from(f32::from_bits(u32::from(super::bf16::to_bf16(v as f32)) << 16));
        let values = |t: usize| -> Vec<f64> {
            let v = tensors[t].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            v.into_iter().map(f64::from).collect()
        };
        let weight = |t: usize| values(t).into_iter().map(round).collect::<Vec<f64>>();
        let (m, h, i, heads) = (d.rows(), d.hidden, d.intermediate, d.heads);
        let hd = h / heads;
        let norm = |x: &[f64], w: &[f64], b: &[f64]| -> Vec<f64> {
            x.chunks_exact(h)
                .flat_map(|row| {
                    let mean = row.iter().sum::<f64>() / h as f64;
                    let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / h as f64;
                    let inv = 1.0 / (var + f64::from(d.eps)).sqrt();
                    row.iter().zip(w).zip(b).map(move |((v, w), b)| round((v - mean) * inv * w + b))
                })
                .collect()
        };
        // a (m × k, rounded) · wᵀ (w: n × k, rounded) + bias.
        let linear = |a: &[f64], w: &[f64], bias: &[f64], n: usize, k: usize| -> Vec<f64> {
            a.chunks_exact(k)
                .flat_map(|row| {
                    (0..n).map(move |j| {
                        bias[j] + row.iter().zip(&w[j * k..][..k]).map(|(a, w)| a * w).sum::<f64>()
                    })
                })
                .collect()
        };
        let mut x: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
        let qkv: Vec<f64> =
            linear(&norm(&x, &values(0), &values(1)), &weight(2), &values(3), 3 * h, h)
                .into_iter()
                .map(round)
                .collect();
        let mut attn = vec![0f64; m * h];
        for image in 0..d.n {
            for head in 0..heads {
                let at = |token: usize, third: usize, c: usize| {
                    qkv[(image * d.s + token) * 3 * h + third * h + head * hd + c]
                };
                for q in 0..d.s {
                    let scores: Vec<f64> = (0..d.s)
                        .map(|k| (0..hd).map(|c| at(q, 0, c) * at(k, 1, c)).sum())
                        .collect();
                    let max = scores.iter().copied().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    let p: Vec<f64> = e.iter().map(|e| round(e / sum)).collect();
                    for c in 0..hd {
                        let out: f64 = (0..d.s).map(|k| p[k] * at(k, 2, c)).sum();
                        attn[(image * d.s + q) * h + head * hd + c] = round(out);
                    }
                }
            }
        }
        let out = linear(&attn, &weight(4), &values(5), h, h);
        x.iter_mut().zip(&out).for_each(|(x, o)| *x += o);
        let hidden: Vec<f64> =
            linear(&norm(&x, &values(6), &values(7)), &weight(8), &values(9), i, h)
                .into_iter()
                .map(|v| round(v / (1.0 + (-1.702 * v).exp())))
                .collect();
        let out = linear(&hidden, &weight(10), &values(11), h, i);
        x.iter_mut().zip(&out).for_each(|(x, o)| *x += o);
        x
    }

    /// Every bf16 route this CPU runs, the FMA route last (it runs everywhere); a line for
    /// each kernel it lacks.
    fn bf16_routes() -> Vec<super::bf16::Route> {
        use super::bf16::{Kernel, Route};
        let available = Kernel::available();
        let mut routes = Vec::new();
        for kernel in [Kernel::Amx, Kernel::Avx512Bf16] {
            match available.contains(&kernel) {
                true => routes.push(Route::Packed(kernel)),
                false => {
                    eprintln!("skipped bf16 on {}: this CPU or OS does not allow it", kernel.name())
                }
            }
        }
        routes.push(Route::Fma);
        routes
    }

    /// A small layer's sizes: `n` images of `s` tokens, 64 wide in 4 heads.
    fn layer_dims(n: usize, s: usize) -> super::Dims {
        super::Dims {
            n,
            s,
            hidden: 64,
            heads: 4,
            intermediate: 96,
            eps: 1e-5,
            act: crate::Activation::QuickGelu,
        }
    }

    /// `x` after one layer on `threads` threads.
    fn one_layer(
        weights: &super::LayerWeights<'_>,
        d: &super::Dims,
        x: &[f32],
        outputs: super::Outputs,
        threads: usize,
    ) -> Vec<f32> {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut ws = super::Workspace::default();
            ws.fit(d);
            let mut x = x.to_vec();
            super::run_layer(&mut x, weights, d, &mut ws, outputs).unwrap();
            x
        })
    }

    /// A layer's twelve tensors ([`super::LayerTensors`]'s order) for `d`: norm weights
    /// about 1, everything else small.
    fn layer_tensors(d: &super::Dims) -> Vec<candle_core::Tensor> {
        use candle_core::{Device, Tensor};
        let (h, i) = (d.hidden, d.intermediate);
        let shapes = [
            vec![h],
            vec![h],
            vec![3 * h, h],
            vec![3 * h],
            vec![h, h],
            vec![h],
            vec![h],
            vec![h],
            vec![i, h],
            vec![i],
            vec![h, i],
            vec![h],
        ];
        shapes
            .iter()
            .enumerate()
            .map(|(t, shape)| {
                let len = shape.iter().product();
                let values = super::random(len, 11 + t as u64);
                let values = match t {
                    0 | 6 => values.iter().map(|v| 1.0 + v).collect(),
                    _ => values.iter().map(|v| v * 0.5).collect(),
                };
                Tensor::from_vec(values, shape.as_slice(), &Device::Cpu).unwrap()
            })
            .collect()
    }
}
