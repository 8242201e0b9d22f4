//! aesthete's own tooling, run as `cargo xtask <task>`: one module per task, callable from
//! tests.
//!
//! - [`fetch`]: `fetch-models`, download, verify and convert the models.
//! - [`fixtures`]: `fixtures`, regenerate `fixtures/` with the committed Python generators.
//! - [`bench`](mod@bench): `bench`, run the criterion benches and write `BENCHMARKS.md`.
//! - [`gpu_test`]: `gpu-test`, run the CUDA integration tests where a GPU exists.
//! - [`gpu_bundle`]: `gpu-bundle`, the GPU device check as a folder for a machine without Rust.
//! - [`report_screenshot`]: `report-screenshot`, the README's picture of `aesthete report`.
#![deny(missing_docs)]

pub mod bench;
pub mod fetch;
pub mod fixtures;
pub mod gpu_bundle;
pub mod gpu_test;
pub mod report_screenshot;

use std::path::{Path, PathBuf};

/// The workspace root (the parent of `xtask/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_owned()
}
