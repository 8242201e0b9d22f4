//! Integration tests of aesthete-clip against reference embeddings from transformers.
//!
//! Fixtures live in `fixtures/clip/` and are made by `fixtures/clip/generate.py`.

mod bf16;
mod configs;
mod errors;
mod extract;
mod matmul;
mod parity;
mod util;
mod vit_l14;
