//! The CLIP ViT image tower and projection.
//!
//! Mirrors `CLIPVisionTransformer` and `CLIPVisionModelWithProjection` of transformers:
//! <https://github.com/huggingface/transformers/blob/v4.57.6/src/transformers/models/clip/modeling_clip.py>
//! Weight names follow the Hugging Face checkpoint exactly. Differences in computation, all
//! exact in real arithmetic:
//! - the patch convolution (kernel = stride = patch) runs as one matrix product over
//!   flattened patches;
//! - q, k and v are one projection, concatenated at load, with q's weight and bias
//!   pre-multiplied by `head_dim^-0.5`.
//!
//! On CPU the encoder layers run through `cpu/` (direct matrix-product calls over reused
//! buffers: f32, or bf16 operands with f32 accumulation on CPUs with AMX-BF16 or AVX512-BF16)
//! instead of the candle operations here; every path is tested against transformers.

use candle_core::{D, DType, IndexOp, Module, Result, Tensor};
use candle_nn::VarBuilder;

use std::sync::Mutex;

use crate::{Activation, ClipVisionConfig};
use crate::{cpu, ops};

/// `y = x Wᵀ + b` over the last dimension of a 2-D input.
#[derive(Debug, Clone)]
struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn new(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        Ok(Linear { weight: vb.get((out_dim, in_dim), "weight")?, bias: vb.get(out_dim, "bias")? })
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)
    }
}

/// `nn.LayerNorm` over the last dimension.
#[derive(Debug, Clone)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

fn layer_norm(vb: VarBuilder, size: usize, eps: f64) -> Result<LayerNorm> {
    Ok(LayerNorm { weight: vb.get(size, "weight")?, bias: vb.get(size, "bias")?, eps })
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::layer_norm(&x.contiguous()?, &self.weight, &self.bias, self.eps as f32)
    }
}

/// `CLIPVisionEmbeddings`: patch embedding, class token, position embedding.
#[derive(Debug, Clone)]
struct Embeddings {
    /// `patch_embedding.weight` as `(hidden, channels · patch²)`.
    patch: Tensor,
    class: Tensor,
    position: Tensor,
    channels: usize,
    patch_size: usize,
    grid: usize,
    hidden: usize,
}

impl Embeddings {
    fn new(vb: VarBuilder, cfg: &ClipVisionConfig) -> Result<Self> {
        let (h, c, p) = (cfg.hidden_size, cfg.num_channels, cfg.patch_size);
        let patch = vb.get((h, c, p, p), "patch_embedding.weight")?.reshape((h, c * p * p))?;
        let class = vb.get(h, "class_embedding")?;
        let position = vb.get((cfg.num_positions(), h), "position_embedding.weight")?;
        Ok(Embeddings {
            patch,
            class,
            position,
            channels: c,
            patch_size: p,
            grid: cfg.grid_size(),
            hidden: h,
        })
    }
}

impl Module for Embeddings {
    /// `(n, c, S, S)` pixels → `(n, 1 + g², h)` tokens.
    fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let (n, c, p, g, h) =
            (pixels.dim(0)?, self.channels, self.patch_size, self.grid, self.hidden);
        // Like the strided convolution, ignore pixels past the last whole patch.
        let used = g * p;
        let pixels = pixels.narrow(2, 0, used)?.narrow(3, 0, used)?;
        let patches = pixels
            .reshape((n, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((n * g * g, c * p * p))?;
        let patches = patches.matmul(&self.patch.t()?)?.reshape((n, g * g, h))?;
        let class = self.class.reshape((1, 1, h))?.broadcast_as((n, 1, h))?;
        Tensor::cat(&[&class, &patches], 1)?.broadcast_add(&self.position.unsqueeze(0)?)
    }
}

/// `CLIPAttention` with q, k and v fused into one projection.
#[derive(Debug, Clone)]
struct Attention {
    qkv: Linear,
    out_proj: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(vb: VarBuilder, cfg: &ClipVisionConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        let scale = (cfg.head_dim() as f64).powf(-0.5);
        let q = Linear::new(vb.pp("q_proj"), h, h)?;
        let k = Linear::new(vb.pp("k_proj"), h, h)?;
        let v = Linear::new(vb.pp("v_proj"), h, h)?;
        let weight = Tensor::cat(&[(&q.weight * scale)?, k.weight, v.weight], 0)?;
        let bias = Tensor::cat(&[(&q.bias * scale)?, k.bias, v.bias], 0)?;
        Ok(Attention {
            qkv: Linear { weight, bias },
            out_proj: Linear::new(vb.pp("out_proj"), h, h)?,
            heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
        })
    }

    /// `x`: `(n · s, h)` for `n` images of `s` tokens.
    fn forward(&self, x: &Tensor, n: usize, s: usize) -> Result<Tensor> {
        let (heads, d) = (self.heads, self.head_dim);
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((n, s, 3, heads, d))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?;
        let q = qkv.i(0)?.reshape((n * heads, s, d))?;
        let k = qkv.i(1)?.reshape((n * heads, s, d))?;
        let v = qkv.i(2)?.reshape((n * heads, s, d))?;
        let weights = ops::softmax_last_dim(q.matmul(&k.t()?)?)?;
        let out = weights.matmul(&v)?.reshape((n, heads, s, d))?.transpose(1, 2)?;
        self.out_proj.forward(&out.contiguous()?.reshape((n * s, heads * d))?)
    }
}

/// `CLIPMLP`.
#[derive(Debug, Clone)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl Mlp {
    fn new(vb: VarBuilder, cfg: &ClipVisionConfig) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Mlp {
            fc1: Linear::new(vb.pp("fc1"), h, i)?,
            fc2: Linear::new(vb.pp("fc2"), i, h)?,
            act: cfg.hidden_act,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = self.fc1.forward(x)?;
        let x = match self.act {
            Activation::QuickGelu => ops::quick_gelu(x)?,
            Activation::Gelu => x.gelu_erf()?,
            Activation::GeluTanh => x.gelu()?,
        };
        self.fc2.forward(&x)
    }
}

/// `CLIPEncoderLayer`: pre-norm attention and MLP blocks with residuals.
#[derive(Debug, Clone)]
struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: Attention,
    layer_norm2: LayerNorm,
    mlp: Mlp,
}

impl EncoderLayer {
    fn new(vb: VarBuilder, cfg: &ClipVisionConfig) -> Result<Self> {
        let (h, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        Ok(EncoderLayer {
            layer_norm1: layer_norm(vb.pp("layer_norm1"), h, eps)?,
            self_attn: Attention::new(vb.pp("self_attn"), cfg)?,
            layer_norm2: layer_norm(vb.pp("layer_norm2"), h, eps)?,
            mlp: Mlp::new(vb.pp("mlp"), cfg)?,
        })
    }

    /// Holds the four weight matrices transposed in memory (`Wᵀ`, row-major `k × n`), seen
    /// through a transposed view so that every reader still sees `n × k`: the `gemm` crate
    /// reads them so without packing them first, per call. Same bits at ViT-L/14's shapes
    /// (not at the smallest, where `gemm` may add in another order); two Xeon threads,
    /// 1028-row products: 1.03-1.06 × the speed.
    fn hold_weights_transposed(&mut self) -> Result<()> {
        let attn = &mut self.self_attn;
        for linear in [&mut attn.qkv, &mut attn.out_proj, &mut self.mlp.fc1, &mut self.mlp.fc2] {
            linear.weight = cpu::held_transposed(&linear.weight)?;
        }
        Ok(())
    }

    fn cpu_tensors(&self) -> cpu::LayerTensors<'_> {
        let (attn, mlp) = (&self.self_attn, &self.mlp);
        [
            &self.layer_norm1.weight,
            &self.layer_norm1.bias,
            &attn.qkv.weight,
            &attn.qkv.bias,
            &attn.out_proj.weight,
            &attn.out_proj.bias,
            &self.layer_norm2.weight,
            &self.layer_norm2.bias,
            &mlp.fc1.weight,
            &mlp.fc1.bias,
            &mlp.fc2.weight,
            &mlp.fc2.bias,
        ]
    }

    fn forward(&self, x: &Tensor, n: usize, s: usize) -> Result<Tensor> {
        let attn = self.self_attn.forward(&self.layer_norm1.forward(x)?, n, s)?;
        let x = (x + attn)?;
        let mlp = self.mlp.forward(&self.layer_norm2.forward(&x)?)?;
        x + mlp
    }
}

/// A CLIP ViT image tower with its projection: pixels in, L2-normalized embeddings out.
///
/// Built from a Hugging Face checkpoint with [`ClipVision::load`] or from any candle `VarBuilder`
/// with [`ClipVision::from_var_builder`]. One instance can serve many threads.
#[derive(Debug)]
pub struct ClipVision {
    config: ClipVisionConfig,
    embeddings: Embeddings,
    pre_layrnorm: LayerNorm,
    layers: Vec<EncoderLayer>,
    post_layernorm: LayerNorm,
    /// `visual_projection.weight`, `(projection_dim, hidden)`, no bias.
    visual_projection: Tensor,
    device: crate::Device,
    /// The precision asked for: what the encoder's matrix products take as operands.
    dtype: crate::DType,
    /// On CPU in bf16: the encoder layers, their matrices rounded to bf16 once (and `layers`
    /// empty); the rest of the model is held and computed in f32.
    bf16_layers: Option<Vec<cpu::Bf16Layer>>,
    /// Scratch buffers of the CPU encoder, kept between calls; a call that finds them busy
    /// uses fresh ones.
    workspace: Mutex<cpu::Workspace>,
    /// On CUDA: the whole forward pass (and `layers` empty).
    #[cfg(feature = "cuda")]
    pub(crate) cuda: Option<crate::cuda::Encoder>,
}

impl ClipVision {
    /// Builds the model from tensors named as in a Hugging Face `CLIPModel` or
    /// `CLIPVisionModelWithProjection` checkpoint (`vision_model.*`, `visual_projection.weight`),
    /// on `vb`'s device and dtype. Any missing or mis-shaped tensor is an error.
    ///
    /// bf16 on CPU needs AMX-BF16 or AVX512-BF16: the encoder layers' weights are rounded
    /// once here (packed for the bf16 kernel, or held as f32 where the encoder runs bf16
    /// products on f32 FMAs: see [`crate::cpu_bf16_kernel`]), everything else is kept in f32.
    ///
    /// Part of the [candle door](crate::candle); [`ClipVision::load`] is the plain way in.
    pub fn from_var_builder(vb: VarBuilder, config: &ClipVisionConfig) -> Result<Self> {
        config.validate().map_err(candle_core::Error::wrap)?;
        if !vb.device().is_cpu() {
            candle_core::bail!(
                "ClipVision::from_var_builder builds CPU models; ClipVision::load puts one on CUDA"
            );
        }
        let dtype = vb.dtype();
        let Some(precision) = crate::DType::from_candle(dtype) else {
            candle_core::bail!("ClipVision computes in f32, f16 or bf16, not {dtype:?}");
        };
        let route = if dtype == DType::BF16 {
            Some(cpu::bf16::Route::detect().map_err(candle_core::Error::msg)?)
        } else {
            None
        };
        let vb = if route.is_some() { vb.set_dtype(DType::F32) } else { vb };
        // f32 tensors (f32 models, and bf16 ones outside their rounded layers) are read by
        // the CPU encoder, in the layout its products read without packing; other dtypes run
        // candle's operations.
        let cpu_encoder = vb.dtype() == DType::F32;
        let (h, eps) = (config.hidden_size, config.layer_norm_eps);
        let v = vb.pp("vision_model");
        let mut layers = (0..config.num_hidden_layers)
            .map(|i| EncoderLayer::new(v.pp("encoder").pp("layers").pp(i), config))
            .collect::<Result<Vec<_>>>()?;
        let bf16_layers = match route {
            Some(route) => {
                tracing::debug!(route = route.name(), "rounding encoder weights to bf16");
                let rounded = layers
                    .drain(..)
                    .map(|layer| cpu::Bf16Layer::round(layer.cpu_tensors(), route))
                    .collect::<Result<Vec<_>>>()?;
                Some(rounded)
            }
            None => {
                if cpu_encoder {
                    for layer in &mut layers {
                        layer.hold_weights_transposed()?;
                    }
                }
                None
            }
        };
        let mut embeddings = Embeddings::new(v.pp("embeddings"), config)?;
        if cpu_encoder {
            embeddings.patch = cpu::held_transposed(&embeddings.patch)?;
        }
        Ok(ClipVision {
            config: config.clone(),
            embeddings,
            pre_layrnorm: layer_norm(v.pp("pre_layrnorm"), h, eps)?,
            layers,
            post_layernorm: layer_norm(v.pp("post_layernorm"), h, eps)?,
            visual_projection: vb
                .pp("visual_projection")
                .get((config.projection_dim, h), "weight")?,
            device: crate::Device::Cpu,
            dtype: precision,
            bf16_layers,
            workspace: Mutex::default(),
            #[cfg(feature = "cuda")]
            cuda: None,
        })
    }

    /// The sizes the model was built with.
    pub fn config(&self) -> &ClipVisionConfig {
        &self.config
    }

    /// Side of the square input images in pixels.
    pub fn image_size(&self) -> usize {
        self.config.image_size
    }

    /// Length of each embedding (`projection_dim`).
    pub fn embedding_dim(&self) -> usize {
        self.config.projection_dim
    }

    /// The device the weights live on.
    pub fn device(&self) -> &crate::Device {
        &self.device
    }

    /// The dtype the model computes in (on CPU in bf16: the operands of the encoder's matrix
    /// products; the rest runs in f32).
    pub fn dtype(&self) -> crate::DType {
        self.dtype
    }

    /// The dtype the weights outside the rounded bf16 encoder layers are held in.
    fn tensor_dtype(&self) -> DType {
        if self.bf16_layers.is_some() { DType::F32 } else { self.dtype.to_candle() }
    }

    /// Embeds `(n, channels, image_size, image_size)` CPU pixels (any float dtype) into
    /// `(n, projection_dim)` f32 rows of unit L2 norm; a CUDA model embeds through
    /// [`ClipVision::embed`] only.
    ///
    /// The encoder layers run as direct matrix products over reused buffers (f32, or bf16
    /// operands with f32 sums). Part of the [candle door](crate::candle);
    /// [`ClipVision::embed`] is the plain way to embed.
    pub fn forward_tensor(&self, pixel_values: &Tensor) -> Result<Tensor> {
        self.forward_with(pixel_values, self.runs_cpu_encoder())
    }

    /// [`ClipVision::forward_tensor`] written a second way, with candle's own tensor
    /// operations layer by layer as transformers' `CLIPEncoderLayer` reads: slower, easy to
    /// check against the reference, and held to transformers by the same parity tests as the
    /// fast path. A CPU bf16 model has no such path (its weights are rounded and held for
    /// its own products).
    pub fn forward_tensor_candle_ops(&self, pixel_values: &Tensor) -> Result<Tensor> {
        if self.bf16_layers.is_some() {
            candle_core::bail!(
                "the cpu bf16 encoder runs its own products only (weights rounded and held for them at load)"
            );
        }
        self.forward_with(pixel_values, false)
    }

    fn forward_with(&self, pixel_values: &Tensor, cpu_encoder: bool) -> Result<Tensor> {
        #[cfg(feature = "cuda")]
        if self.cuda.is_some() {
            candle_core::bail!("a CUDA model embeds through ClipVision::embed");
        }
        let (n, c, height, width) = pixel_values.dims4()?;
        let (s, cc) = (self.config.image_size, self.config.num_channels);
        if (c, height, width) != (cc, s, s) {
            candle_core::bail!(
                "pixel_values have shape {:?}, expected (n, {cc}, {s}, {s})",
                pixel_values.dims()
            );
        }
        let _span = tracing::trace_span!("clip_forward", images = n).entered();
        if cpu_encoder {
            let pixels = pixel_values.to_dtype(DType::F32)?.contiguous()?;
            let rows = cpu::with_f32_slices([&pixels], |[pixels]| self.forward_cpu(pixels, n))?;
            return Tensor::from_vec(rows, (n, self.config.projection_dim), pixel_values.device());
        }
        let x = self.embeddings.forward(&pixel_values.to_dtype(self.tensor_dtype())?)?;
        let tokens = x.dim(1)?;
        let mut x =
            self.pre_layrnorm.forward(&x)?.reshape((n * tokens, self.config.hidden_size))?;
        for layer in &self.layers {
            x = layer.forward(&x, n, tokens)?;
        }
        let class = x.reshape((n, tokens, self.config.hidden_size))?.i((.., 0))?;
        let pooled = self.post_layernorm.forward(&class.contiguous()?)?;
        let projected = pooled.matmul(&self.visual_projection.t()?)?.to_dtype(DType::F32)?;
        let norm = projected.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
        projected.broadcast_div(&norm)
    }

    /// Whether [`ClipVision::forward_cpu`] runs this model: on CPU in f32, or in bf16 with
    /// its layers rounded at load.
    pub(crate) fn runs_cpu_encoder(&self) -> bool {
        self.tensor_dtype() == DType::F32
    }

    /// The CPU forward pass of `n` images of f32 pixels, `(n, channels, size, size)` in a
    /// row, to `n × projection_dim` normalized embeddings, over the workspace's buffers.
    pub(crate) fn forward_cpu(&self, pixels: &[f32], n: usize) -> Result<Vec<f32>> {
        self.forward_cpu_spread(pixels, n, cpu::Spread::BySize)
    }

    fn forward_cpu_spread(
        &self,
        pixels: &[f32],
        n: usize,
        spread: cpu::Spread,
    ) -> Result<Vec<f32>> {
        let cfg = &self.config;
        let dims = cpu::Dims {
            n,
            s: cfg.num_positions(),
            hidden: cfg.hidden_size,
            heads: cfg.num_attention_heads,
            intermediate: cfg.intermediate_size,
            eps: cfg.layer_norm_eps as f32,
            act: cfg.hidden_act,
        };
        let patches = cpu::Patches {
            channels: cfg.num_channels,
            size: cfg.image_size,
            patch: cfg.patch_size,
            grid: cfg.grid_size(),
        };
        let mut fresh = cpu::Workspace::default();
        let mut guard = self.workspace.try_lock();
        let ws = match &mut guard {
            Ok(ws) => &mut **ws,
            Err(_) => &mut fresh,
        };
        let layers = match &self.bf16_layers {
            Some(layers) => cpu::Layers::Bf16(layers),
            None => cpu::Layers::F32(self.layers.iter().map(EncoderLayer::cpu_tensors).collect()),
        };
        let (e, pre, post) = (&self.embeddings, &self.pre_layrnorm, &self.post_layernorm);
        let outer = [
            &e.class,
            &e.position,
            &pre.weight,
            &pre.bias,
            &post.weight,
            &post.bias,
            &self.visual_projection,
        ];
        let read = |[patch]: [(&[f32], cpu::Order); 1]| {
            cpu::with_f32_slices(outer, |[class, position, pw, pb, qw, qb, projection]| {
                let outer = cpu::OuterWeights {
                    patch,
                    class,
                    position,
                    pre_norm: [pw, pb],
                    post_norm: [qw, qb],
                    projection,
                    projection_dim: cfg.projection_dim,
                };
                cpu::forward(pixels, &patches, &outer, layers, &dims, spread, ws)
            })
        };
        cpu::with_f32_matrices([&e.patch], read)
    }
}

#[cfg(feature = "cuda")]
impl ClipVision {
    /// Moves an f32 CPU model onto CUDA device `ordinal`, computing in `dtype`; the host copy
    /// of the encoder layers is dropped.
    pub(crate) fn into_cuda(
        mut self,
        ordinal: usize,
        dtype: crate::DType,
    ) -> std::result::Result<Self, crate::Error> {
        let host = self.host_model()?;
        let device = crate::Device::Cuda(ordinal);
        let encoder = crate::cuda::Encoder::open(&host, &self.config, ordinal, dtype)
            .map_err(|reason| crate::Error::Cuda { device: device.to_string(), reason })?;
        tracing::info!(device = %encoder.description, dtype = dtype.as_str(), "clip encoder on cuda");
        self.layers.clear();
        self.device = device;
        self.dtype = dtype;
        self.cuda = Some(encoder);
        Ok(self)
    }

    /// The f32 values of every weight of an f32 CPU model, for a device encoder.
    pub(crate) fn host_model(&self) -> Result<crate::cuda::HostModel> {
        // `contiguous` first: f32 CPU models hold their layer weights transposed in memory.
        let values =
            |t: &Tensor| -> Result<Vec<f32>> { t.contiguous()?.flatten_all()?.to_vec1::<f32>() };
        let pair =
            |n: &LayerNorm| -> Result<[Vec<f32>; 2]> { Ok([values(&n.weight)?, values(&n.bias)?]) };
        let layers = self
            .layers
            .iter()
            .map(|layer| {
                let mut out: [Vec<f32>; 12] = Default::default();
                for (slot, t) in out.iter_mut().zip(layer.cpu_tensors()) {
                    *slot = values(t)?;
                }
                Ok(crate::cuda::HostLayer { values: out })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(crate::cuda::HostModel {
            patch: values(&self.embeddings.patch)?,
            class: values(&self.embeddings.class)?,
            position: values(&self.embeddings.position)?,
            pre_norm: pair(&self.pre_layrnorm)?,
            layers,
            post_norm: pair(&self.post_layernorm)?,
            projection: values(&self.visual_projection)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DType, Device};

    /// Small models run on one thread (`cpu::Spread::BySize`), so the fixtures' parity tests
    /// no longer reach the parallel loops: each fixture on all threads against one thread,
    /// bit for bit (every loop splits rows, columns or heads, never a sum), f32 and bf16.
    #[test]
    fn all_threads_and_one_thread_agree_bit_for_bit() {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/clip");
        let mut dtypes = vec![DType::F32];
        match cpu::bf16::Kernel::detect() {
            Ok(_) => dtypes.push(DType::BF16),
            Err(why) => {
                eprintln!("all_threads_and_one_thread_agree_bit_for_bit: bf16 skipped: {why}")
            }
        }
        for name in ["tiny-vit-224-768", "tiny-gelu-28", "tiny-vision-32"] {
            for &dtype in &dtypes {
                let model =
                    crate::ClipVision::load(&fixtures.join(name), &Device::Cpu, dtype).unwrap();
                let (n, s) = (3, model.image_size());
                let pixels: Vec<f32> =
                    (0..n * 3 * s * s).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
                let one = model.forward_cpu_spread(&pixels, n, cpu::Spread::BySize).unwrap();
                let all = model.forward_cpu_spread(&pixels, n, cpu::Spread::AllThreads).unwrap();
                assert_eq!(one, all, "{name} {dtype:?}");
            }
        }
    }
}
