//! CLIP ViT image tower and projection on candle, loaded from Hugging Face checkpoints.
#![deny(missing_docs)]
