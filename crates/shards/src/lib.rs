//! WebDataset tar shard reading and writing: streaming, size limits, atomic output.
//!
//! - [`ShardReader`] streams [`Sample`]s out of any [`Read`](std::io::Read) holding a
//!   `.tar` or `.tar.gz` (gzip detected by content), under the limits of [`ReadOptions`].
//!   A damaged shard yields its complete samples, then one typed [`Error`].
//! - [`ShardWriter`] writes samples to a deterministic tar, committed by an atomic rename.
//! - [`expand_inputs`] turns user input (files, directories, globs, `{000..099}` brace
//!   ranges, list files) into a sorted list of shard paths.
//! - A [`Sample`] is the run of consecutive members sharing a key, the member path up to
//!   the first dot of its file name ([`split_name`]); each [`Member`] keeps its name and
//!   bytes exactly as stored.
//!
//! This crate depends on no other aesthete crate.
//!
//! ```
//! use aesthete_shards::{ReadOptions, Sample, ShardReader, ShardWriter};
//!
//! # fn main() -> Result<(), aesthete_shards::Error> {
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("shard-000000.tar");
//! let mut writer = ShardWriter::create(&path)?;
//! writer.write_sample(&Sample::new("img001").with("jpg", b"\xff\xd8...").with("txt", "a cat"))?;
//! writer.commit()?;
//!
//! for sample in ShardReader::open(&path, ReadOptions::default())? {
//!     let sample = sample?;
//!     let caption = sample.member("TXT").map(|m| m.data.as_slice());
//!     assert_eq!((sample.key(), caption), ("img001", Some(&b"a cat"[..])));
//! }
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod error;
mod header;
mod inputs;
mod read;
mod sample;
mod write;

pub use crate::error::Error;
pub use crate::inputs::{expand_braces, expand_inputs, is_shard_name};
pub use crate::read::{ReadOptions, ShardReader};
pub use crate::sample::{Member, Sample, split_name};
pub use crate::write::ShardWriter;

/// The crate README's examples, compiled and run as doctests so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
