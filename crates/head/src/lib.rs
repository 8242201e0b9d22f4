//! The LAION improved aesthetic predictor head on candle-nn.
//!
//! The head maps an L2-normalized CLIP image embedding to an aesthetic score (roughly 1 to 10).
//!
//! - [`AestheticHead`] loads a head from a `.safetensors` file or a PyTorch `.pth` state dict
//!   (keys `layers.{i}.{weight,bias}`, as the reference training script saves them) and
//!   scores [`NormalizedEmbeddings`](aesthete_tensor::NormalizedEmbeddings) a batch at a time.
//! - [`HeadKind`] tells the linear heads (`sac+logos+ava1-l14-linearMSE`,
//!   `ava+logos-l14-linearMSE`), folded into one affine map at load, from the relu one
//!   (`ava+logos-l14-reluMSE`). It is inferred from the weights.
//! - [`convert_pth_to_safetensors`] turns a `.pth` head into safetensors.
//! - [`Error`] says which file and which tensor a failure is about.
//!
//! ```
//! use std::path::Path;
//! use aesthete_head::{AestheticHead, HeadKind};
//! use aesthete_tensor::NormalizedEmbeddings;
//!
//! # let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/head");
//! // A tiny head with 16 inputs; the LAION ViT-L/14 heads take 768.
//! let head = AestheticHead::load(&dir.join("tiny-linear.safetensors"))?;
//! assert_eq!(head.kind(), HeadKind::Linear);
//!
//! let embeddings = NormalizedEmbeddings::normalize(vec![1.0; 2 * head.input_dim()], head.input_dim())?;
//! let scores = head.score(&embeddings)?;
//! assert_eq!(scores.len(), 2);
//! assert_eq!(scores[0], scores[1]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

mod affine;
mod checkpoint;
mod convert;
mod error;
mod head;
mod layout;

pub use affine::RowProblem;
pub use convert::convert_pth_to_safetensors;
pub use error::Error;
pub use head::AestheticHead;
pub use layout::HeadKind;

/// The crate README's examples, compiled and run as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
