//! Streaming orchestration of aesthete: WebDataset shards in, aesthetic scores and filtered
//! shards out.
//!
//! A run lists its input shards ([`aesthete_shards::expand_inputs`]), keeps this worker's part
//! ([`Partition`]), skips shards whose outputs are complete, and streams the rest through
//! decode + CLIP preprocessing (in parallel), the CLIP image tower and the aesthetic head, in
//! batches that may span shards. For each input `NAME.tar` it writes, atomically:
//!
//! - `NAME.tar`: every member of each kept sample, original bytes and names, in input order;
//! - `NAME.parquet`: one row per input sample: `key`, `aesthetic_score`, `kept`, `error`,
//!   `width`, `height`, and with [`RunConfig::save_embeddings`] `embedding`;
//! - `NAME.done.json`: the completion record, written last; a rerun skips shards that have one.
//!
//! A sample that fails (no image, undecodable image) is recorded with its error and the run
//! goes on; a shard that cannot be read whole keeps what was salvaged and is reported in the
//! [`RunSummary`].
//!
//! Key types: [`RunConfig`] (validated settings), [`Models`] (loaded with [`ModelPaths`]),
//! [`run`], [`Progress`] and [`RunSummary`].
//!
//! [`refilter`] writes the same outputs for a new threshold or `--keep-top` from the tables
//! of an earlier run, with no model.
//!
//! [`rescore`] scores embeddings stored earlier (aesthete tables written with
//! [`RunConfig::save_embeddings`], clip-retrieval's `img_emb/*.npy`, `.npy` with a key list,
//! `.npz`) with the head alone, configured by [`RescoreConfig`], writing the same tables.
//!
//! [`report`] reads score tables (and, for pictures, the shards) into one self-contained HTML
//! page: the score histogram against LAION-2B's reference shares, the samples kept at each
//! threshold, a gallery per score bucket and the failures by kind; see [`ReportConfig`].
//!
//! ```
//! use aesthete_pipeline::{Outputs, Partition, RunConfig, Selection};
//!
//! let config = RunConfig::new(["data/shard-{000000..000009}.tar"], "out")?
//!     .selection(Selection::Threshold(5.0))?
//!     .batch_size(32)?
//!     .partition(Partition::new(1, 4)?)
//!     .outputs(Outputs::FilterAndScore);
//! assert_eq!(config.output_dir(), &aesthete_pipeline::Location::parse("out"));
//! # Ok::<(), aesthete_pipeline::Error>(())
//! ```
#![deny(missing_docs)]

mod config;
mod done;
mod error;
mod inputs;
mod keep_top;
mod models;
mod outputs;
mod plan;
mod progress;
mod publish;
mod record;
mod refilter;
mod report;
mod rescore;
mod rewrite;
mod run;
mod stages;
mod table;

// What a caller needs to configure a run and load its models, from the crates that define
// it, so that depending on aesthete-pipeline alone is enough.
pub use aesthete_clip::{DType, Device};
pub use aesthete_head::AestheticHead;
pub use aesthete_preprocess::{Mode, PreprocessOptions};
pub use aesthete_shards::ReadOptions;
pub use aesthete_store::{Location, Stores};
pub use config::{Outputs, Partition, RunConfig, Selection};
pub use error::Error;
pub use models::{CLIP_DIR_NAME, HEAD_FILE_NAME, ModelPaths, Models, default_model_dirs};
pub use progress::{NoProgress, Progress, RunSummary, ShardError, ShardReport};
pub use refilter::refilter;
pub use report::{ReportConfig, ReportSummary, report};
pub use rescore::{RescoreConfig, rescore};
pub use run::run;

/// The crate README's examples, compiled and run as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
