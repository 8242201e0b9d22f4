//! Integration tests of aesthete-preprocess, one binary with topic modules.
//!
//! Fixtures live in `fixtures/preprocess/` (see its README.md): images in every format,
//! malformed files, configs, and references made by transformers' `CLIPImageProcessor`.

mod api;
mod bad;
mod common;
mod config;
mod parity;
