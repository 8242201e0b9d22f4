//! Host-side batch types that aesthete's crates meet at.
//!
//! - [`ImageBatch`]: preprocessed images, `N×3×S×S` `f32`, contiguous, filled slot by slot
//!   by a preprocessor and read whole by a model.
//! - [`PixelMemory`]: memory a model can supply for an [`ImageBatch`]'s values instead of a
//!   `Vec` (page-locked host memory for a GPU).
//! - [`NormalizedEmbeddings`]: `N×D` `f32` rows of unit L2 norm, as CLIP produces them and as
//!   the aesthetic head expects them.
//!
//! This crate depends on no tensor library and no image library on purpose: it is the door
//! between them.
//!
//! ```
//! use aesthete_tensor::{ImageBatch, NormalizedEmbeddings};
//!
//! let mut batch = ImageBatch::with_capacity(2, 4);
//! batch.push_slot().fill(0.5);
//! assert_eq!(batch.len(), 1);
//! assert_eq!(batch.shape(), [1, 3, 4, 4]);
//!
//! let e = NormalizedEmbeddings::normalize(vec![3.0, 4.0], 2).unwrap();
//! assert_eq!(e.row(0), &[0.6, 0.8]);
//! ```
#![deny(missing_docs)]

mod embeddings;
mod image_batch;

pub use embeddings::NormalizedEmbeddings;
pub use image_batch::{ImageBatch, PixelMemory};

/// A buffer whose length does not fit the shape it was given.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ShapeError {
    /// The data length is not a multiple of the row length.
    #[error("{len} values do not split into rows of {row_len}")]
    NotRows {
        /// Number of values given.
        len: usize,
        /// Expected length of one row.
        row_len: usize,
    },
    /// A row that should have unit L2 norm does not.
    #[error("row {row} has L2 norm {norm}, expected 1")]
    NotNormalized {
        /// Index of the offending row.
        row: usize,
        /// Its L2 norm.
        norm: f32,
    },
    /// Memory given to an image batch does not hold exactly its capacity's values.
    #[error("memory of {len} values for an image batch of {expected}")]
    MemoryLength {
        /// Values the memory holds.
        len: usize,
        /// Values the batch's capacity and image size need.
        expected: usize,
    },
    /// A row whose values are all zero (or not finite) cannot be normalized.
    #[error("row {row} has no direction (norm {norm})")]
    Degenerate {
        /// Index of the offending row.
        row: usize,
        /// Its L2 norm.
        norm: f32,
    },
}

/// The crate README's examples, compiled and run as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
