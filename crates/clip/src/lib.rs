//! CLIP ViT image tower and projection on candle, loaded from Hugging Face checkpoints.
//!
//! - [`ClipVision`]: the model. [`ClipVision::load`] reads a Hugging Face model directory
//!   (a full `CLIPModel`, whose text tower stays on disk, or a vision tower alone);
//!   [`ClipVision::embed`] turns an [`ImageBatch`] into
//!   [`NormalizedEmbeddings`]; [`ClipVision::image_batch`] makes a batch in the memory the
//!   model's device copies from fastest (page-locked for CUDA).
//! - [`ClipVisionConfig`]: the sizes, read from `config.json` (ViT-B/32, B/16, L/14, L/14-336…).
//! - [`extract_vision_tower`]: writes a smaller vision-only checkpoint, optionally in f16;
//!   [`write_random_model`]: a model of a real shape with random weights, for benchmarks.
//! - [`parse_device`]: `cpu`, `cuda`, `cuda:N` (CUDA with the `cuda` feature);
//!   [`check_dtype`]: which precisions a device runs; [`cpu_matmul_f32`]: the CPU encoder's
//!   f32 matrix product, for benchmarks that time it apart from the forward pass.
//! - [`candle`]: the door for callers who already hold candle values (a `VarBuilder`, pixel
//!   `Tensor`s). Nothing else in the crate's signatures names a candle type.
//!
//! Every tensor is checked against the config before anything is computed: a missing or
//! mis-shaped tensor is an [`Error`] naming it, never filled in at random. The forward pass
//! runs in f32 or bf16 on CPU (bf16 on CPUs with AMX-BF16 or AVX512-BF16, see
//! [`cpu_bf16_kernel`]) and in f32, f16 or bf16 on CUDA; embeddings come back as f32.
//!
//! ```
//! use aesthete_clip::{ClipVision, DType, Device};
//!
//! let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
//!     .join("../../fixtures/clip/tiny-vit-224-768");
//! let model = ClipVision::load(&dir, &Device::Cpu, DType::F32)?;
//! let mut batch = model.image_batch(2);
//! batch.push_slot().fill(0.25);
//! let embeddings = model.embed(&batch)?;
//! assert_eq!((embeddings.len(), embeddings.dim()), (1, 768));
//! # Ok::<(), aesthete_clip::Error>(())
//! ```
#![deny(missing_docs)]

mod checkpoint;
mod config;
mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
mod device;
mod error;
mod model;
mod ops;
mod random;

pub mod candle {
    //! The candle door, for callers who already work in [candle](https://github.com/huggingface/candle):
    //! build a model from a [`VarBuilder`] with
    //! [`ClipVision::from_var_builder`](crate::ClipVision::from_var_builder), run it on a pixel
    //! [`Tensor`] with [`ClipVision::forward_tensor`](crate::ClipVision::forward_tensor) (or
    //! [`ClipVision::forward_tensor_candle_ops`](crate::ClipVision::forward_tensor_candle_ops),
    //! the same pass in candle's own operations). The crates are re-exported at the versions
    //! this crate was built with, so a caller needs no version of its own to match.
    //!
    //! Everything else in `aesthete-clip` takes and returns the crate's own types
    //! ([`ImageBatch`](aesthete_tensor::ImageBatch) in,
    //! [`NormalizedEmbeddings`](aesthete_tensor::NormalizedEmbeddings) out), so a candle
    //! upgrade changes only this door.
    pub use candle_core::{self, Tensor};
    pub use candle_nn::{self, VarBuilder};
}

use std::ops::ControlFlow;
use std::path::Path;

use aesthete_tensor::{ImageBatch, NormalizedEmbeddings};

pub use checkpoint::extract_vision_tower;
pub use config::{Activation, ClipVisionConfig};
pub use device::{DType, Device, parse_device};
pub use error::Error;
pub use model::ClipVision;
pub use random::write_random_model;

impl ClipVision {
    /// Loads `dir/config.json` and the vision tensors of `dir/model.safetensors` (or of the
    /// shards listed in `dir/model.safetensors.index.json`) onto `device` as `dtype`.
    ///
    /// Files are memory-mapped and only vision tensors are read; every one is checked for
    /// presence, shape and dtype before any is loaded. CPU runs f32, and bf16 where
    /// [`check_dtype`] allows it.
    pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<Self, Error> {
        check_dtype(device, dtype)?;
        let cuda = match *device {
            Device::Cpu => None,
            Device::Cuda(ordinal) => {
                cuda_libraries_load(device)?;
                Some(ordinal)
            }
        };
        let config = ClipVisionConfig::from_json_file(&dir.join("config.json"))?;
        let _span = tracing::info_span!("clip_load", dir = %dir.display()).entered();
        let checkpoint = checkpoint::Checkpoint::open(dir, &config)?;
        // A CUDA model is read and checked on the CPU in f32, then moved.
        let read_as = if cuda.is_some() { DType::F32 } else { dtype };
        let vb = candle_nn::VarBuilder::from_backend(
            Box::new(checkpoint.tensors),
            read_as.to_candle(),
            candle_core::Device::Cpu,
        );
        let model = ClipVision::from_var_builder(vb, &config)?;
        #[cfg(feature = "cuda")]
        let model = match cuda {
            Some(ordinal) => model.into_cuda(ordinal, dtype)?,
            None => model,
        };
        tracing::info!(
            layers = config.num_hidden_layers,
            hidden = config.hidden_size,
            image_size = config.image_size,
            embedding_dim = config.projection_dim,
            ?dtype,
            "loaded clip vision tower"
        );
        Ok(model)
    }

    /// An empty batch for up to `capacity` images of this model's size, in the memory its
    /// device copies from fastest: page-locked host memory for a CUDA model (copied to the GPU
    /// without staging, at the bus's speed), a plain `Vec` on CPU, and a `Vec` too when
    /// page-locked memory cannot be had (a warning says why). Page-locked memory is slow to
    /// get: make a few batches and reuse them.
    ///
    /// # Panics
    /// When `capacity` is zero.
    pub fn image_batch(&self, capacity: usize) -> ImageBatch {
        assert!(capacity > 0, "an image batch needs room for at least one image");
        let size = self.image_size();
        #[cfg(feature = "cuda")]
        if let Some(encoder) = &self.cuda {
            let supplied = encoder
                .host_memory(capacity * 3 * size * size)
                .and_then(|m| ImageBatch::in_memory(m, capacity, size).map_err(|e| e.to_string()));
            match supplied {
                Ok(batch) => {
                    tracing::debug!(capacity, "image batch in page-locked host memory");
                    return batch;
                }
                Err(reason) => tracing::warn!(
                    device = %encoder.description,
                    %reason,
                    "image batch in pageable memory: copies to the GPU are staged"
                ),
            }
        }
        ImageBatch::with_capacity(capacity, size)
    }

    /// Embeds `batches` in order, handing each back to `done` with its embeddings (or why
    /// there are none); `done` returns [`ControlFlow::Break`] to stop, and batches not yet
    /// handed back are then dropped. On CUDA a batch's pixels copy to the GPU while the batch
    /// before is computed, and the next batch is taken from `batches` and queued before the
    /// results of the one before are awaited, so the copy overlaps compute and the GPU has a
    /// batch to work on while `done` runs. On CUDA the model's buffers are held until this
    /// returns: other calls on the model wait, and a call on it from `done` never returns.
    /// Elsewhere this is [`ClipVision::embed`] batch after batch.
    pub fn embed_each<B: AsRef<ImageBatch>>(
        &self,
        batches: impl IntoIterator<Item = B>,
        mut done: impl FnMut(B, Result<NormalizedEmbeddings, Error>) -> ControlFlow<()>,
    ) {
        #[cfg(feature = "cuda")]
        if let Some(encoder) = &self.cuda {
            return self.embed_each_on_cuda(encoder, batches.into_iter(), done);
        }
        for batch in batches {
            let embedded = self.embed(batch.as_ref());
            if done(batch, embedded).is_break() {
                return;
            }
        }
    }

    #[cfg(feature = "cuda")]
    fn embed_each_on_cuda<B: AsRef<ImageBatch>>(
        &self,
        encoder: &cuda::Encoder,
        batches: impl Iterator<Item = B>,
        mut done: impl FnMut(B, Result<NormalizedEmbeddings, Error>) -> ControlFlow<()>,
    ) {
        let embeddings = |rows| self.cuda_embeddings(rows);
        let mut flight = encoder.flight::<cuda::Pixels<B>>();
        for batch in batches {
            let (n, room, settled) = {
                let images = batch.as_ref();
                (images.len(), images.capacity(), self.without_device(images))
            };
            let landed: Vec<(B, Result<NormalizedEmbeddings, Error>)> = match settled {
                None => {
                    // Buffers for the batch's capacity: a short batch (images that failed to
                    // decode) must not make the next, full one wait for new buffers.
                    let landed = flight.submit(cuda::Pixels(batch), n, room);
                    landed.into_iter().map(|(pixels, rows)| (pixels.0, embeddings(rows))).collect()
                }
                Some(own) => {
                    // After what is in flight, so that batches come back in order.
                    let before = flight.finish().map(|(pixels, rows)| (pixels.0, embeddings(rows)));
                    before.into_iter().chain([(batch, own)]).collect()
                }
            };
            for (batch, embedded) in landed {
                if done(batch, embedded).is_break() {
                    return;
                }
            }
        }
        if let Some((pixels, rows)) = flight.finish() {
            let _ = done(pixels.0, embeddings(rows));
        }
    }

    /// The CUDA encoder's projections of a batch, normalized, or its error named with the
    /// device.
    #[cfg(feature = "cuda")]
    fn cuda_embeddings(
        &self,
        rows: Result<Vec<f32>, String>,
    ) -> Result<NormalizedEmbeddings, Error> {
        let rows =
            rows.map_err(|reason| Error::Cuda { device: self.device().to_string(), reason })?;
        NormalizedEmbeddings::normalize(rows, self.embedding_dim()).map_err(Error::Embeddings)
    }

    /// What `batch` gives without running the model: the error of a batch of another image
    /// size, or no embeddings for an empty batch; `None` when the model must run.
    fn without_device(&self, batch: &ImageBatch) -> Option<Result<NormalizedEmbeddings, Error>> {
        if batch.image_size() != self.image_size() {
            return Some(Err(Error::ImageSize {
                expected: self.image_size(),
                actual: batch.image_size(),
            }));
        }
        batch.is_empty().then(|| {
            NormalizedEmbeddings::from_normalized(Vec::new(), self.embedding_dim())
                .map_err(Error::Embeddings)
        })
    }

    /// Embeds a batch of preprocessed images (host f32, NCHW) into host f32 rows of unit norm.
    pub fn embed(&self, batch: &ImageBatch) -> Result<NormalizedEmbeddings, Error> {
        if let Some(settled) = self.without_device(batch) {
            return settled;
        }
        #[cfg(feature = "cuda")]
        if let Some(encoder) = &self.cuda {
            return self.cuda_embeddings(encoder.forward(batch.as_slice(), batch.len()));
        }
        let rows = if self.runs_cpu_encoder() {
            self.forward_cpu(batch.as_slice(), batch.len())?
        } else {
            let pixels = candle_core::Tensor::from_slice(
                batch.as_slice(),
                &batch.shape()[..],
                &candle_core::Device::Cpu,
            )?;
            self.forward_tensor(&pixels)?.flatten_all()?.to_vec1::<f32>()?
        };
        NormalizedEmbeddings::from_normalized(rows, self.embedding_dim()).map_err(Error::Embeddings)
    }
}

/// Whether [`ClipVision`] runs in `dtype` on `device`, checked before anything is loaded; the
/// error says which precisions the device takes.
///
/// CUDA runs f32, f16 and bf16; CPU runs f32 everywhere and bf16 where the CPU has AMX-BF16
/// or AVX512-BF16 (bf16 operands, f32 sums), never f16.
pub fn check_dtype(device: &Device, dtype: DType) -> Result<(), Error> {
    let hint = match (device, dtype) {
        (Device::Cpu, DType::F32) => return Ok(()),
        (Device::Cpu, DType::BF16) => match cpu::bf16::Route::detect() {
            Ok(_) => return Ok(()),
            Err(_) => {
                " (this CPU has neither AMX-BF16 nor AVX512-BF16, the bf16 matrix instructions; \
                 use f32 here, or bf16 on a CPU that has them or on --device cuda)"
            }
        },
        (Device::Cpu, _) => " (the CPU encoder runs f32, and bf16 on CPUs with AMX or AVX512-BF16)",
        (Device::Cuda(_), _) => return Ok(()),
    };
    Err(Error::UnsupportedDtype { dtype, device: device.to_string(), hint })
}

/// Whether the CUDA libraries load, or which are missing (or that the crate has no CUDA).
#[cfg(feature = "cuda")]
fn cuda_libraries_load(device: &Device) -> Result<(), Error> {
    let missing = cuda::missing_libraries();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::CudaUnavailable { device: device.to_string(), missing: missing.join(", ") })
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda_libraries_load(device: &Device) -> Result<(), Error> {
    Err(Error::CudaNotCompiled(device.to_string()))
}

/// What [`cpu_bf16_kernel`] says where the CPU encoder runs its bf16 products on f32 FMAs.
pub const CPU_BF16_ON_FMA: &str = "f32 FMA on bf16 operands";

/// How the CPU encoder runs bf16 products on this CPU (`"AMX-BF16"` or `"AVX512-BF16"`, or
/// [`CPU_BF16_ON_FMA`] where the CPU's bf16 instruction is slower than its f32 FMA: see
/// [`cpu_bf16_rate_against_f32`]), or why there is no bf16 at all.
pub fn cpu_bf16_kernel() -> Result<&'static str, &'static str> {
    cpu::bf16::Route::detect().map(cpu::bf16::Route::name)
}

/// Whether `--dtype bf16` is faster than f32 on this CPU, as far as its instructions tell:
/// how many multiply-adds a second its bf16 instruction does against the f32 FMA's, or why
/// there is no bf16 at all.
///
/// For AVX512-BF16 it is measured once per process by a short loop of each instruction
/// (under a millisecond): 2 where `vdpbf16ps` (two products a lane) issues as fast as an FMA,
/// 0.5 on an Intel Xeon whose AMX is hidden (family 6 model 207). Under 1, the encoder runs
/// its bf16 products on f32 FMAs instead ([`cpu_bf16_kernel`] says so), at about its f32
/// speed (`vdpbf16ps` ran the ViT-L/14 model at 0.65 × it there). AMX tiles are not timed
/// (`None`): the model runs 4-5 × its f32 speed on them.
pub fn cpu_bf16_rate_against_f32() -> Result<Option<f64>, &'static str> {
    cpu::bf16::Route::rate_against_f32()
}

/// `dst (m × n) = a (m × k) · b (k × n)`, all three row-major f32, stored over `dst`: the
/// matrix product the CPU encoder's f32 linear layers run (`b` is a layer's weight
/// transposed, as the encoder holds it; two of its four products a layer add into the
/// residual stream instead of storing), on rayon's threads, split as the encoder splits it.
/// For benchmarks that time the encoder's products apart from the rest of its forward pass
/// (`cargo bench -p aesthete-clip --bench vit`), and for callers who want the same products.
///
/// # Panics
/// When a slice's length is not its matrix's size.
pub fn cpu_matmul_f32(dst: &mut [f32], a: &[f32], b: &[f32], (m, n, k): (usize, usize, usize)) {
    cpu::matmul_f32(dst, a, b, (m, n, k))
}

/// The crate README's examples, compiled and run as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
