//! Shards where they live: local paths and object-store URLs (`s3://`, `gs://`, `az://`,
//! `abfs://`, `https://`) behind one door, for callers that are not async.
//!
//! [`Location`] says where a shard or an output is. [`Stores`] holds one client per bucket,
//! container or host, made from the environment's credentials (never logged), and:
//! [`Stores::expand`] turns inputs (brace ranges, globs over listed prefixes, list files)
//! into locations; [`Stores::open`] streams one, downloading as it is read with bounded memory
//! ([`READ_AHEAD_CHUNKS`]), retrying with backoff and resuming a cut connection from the byte
//! reached, on the same object version; [`Stores::read`] and [`Stores::put_file`] move whole
//! small objects and finished files (one PUT, or a multipart upload completed only at the
//! end), so outputs appear whole or not at all. Permanent answers (404, 403) are errors that
//! name the URL.
//!
//! ```
//! use aesthete_store::{Location, Stores};
//!
//! let stores = Stores::with_options(Vec::new())?;
//! let dir = tempfile::tempdir()?;
//! let file = dir.path().join("x.txt");
//! std::fs::write(&file, b"hello")?;
//! let copy = Location::Local(dir.path().to_path_buf()).join("y.txt");
//! stores.put_file(&file, &copy)?;
//! assert_eq!(stores.read(&copy)?.as_deref(), Some(&b"hello"[..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

mod error;
mod expand;
mod location;
mod profile;
mod reader;
mod stores;

pub use error::Error;
pub use location::Location;
pub use reader::READ_AHEAD_CHUNKS;
pub use stores::{RetryPolicy, Stores};

use reader::ObjectReader;

#[cfg(feature = "testing")]
pub mod testing;

/// The crate README's example, compiled and run as a doctest so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
