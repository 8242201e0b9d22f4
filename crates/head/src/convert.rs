//! `.pth` → `.safetensors`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;

use crate::Error;
use crate::checkpoint::{self, Format};
use crate::layout::Layers;

/// Converts a head's PyTorch checkpoint into a safetensors file with the same tensor names,
/// shapes and dtypes, so that [`AestheticHead::load`](crate::AestheticHead::load) and other
/// tools read it without a pickle parser.
///
/// The state dict is checked as a load would check it before anything is written, and the
/// output is written atomically ([`aesthete_atomic`]), so `dst` is either absent or complete.
pub fn convert_pth_to_safetensors(src: &Path, dst: &Path) -> Result<(), Error> {
    let _span =
        tracing::debug_span!("convert_head", src = %src.display(), dst = %dst.display()).entered();
    if checkpoint::sniff(src)? != Format::Pth {
        return Err(Error::UnknownFormat {
            path: src.to_owned(),
            hint: " (expected a PyTorch checkpoint)",
        });
    }
    let tensors = checkpoint::read_pth(src)?;
    let layers = Layers::parse(src, tensors)?;
    let kind = layers.kind;
    let tensors: HashMap<String, Tensor> = layers
        .into_state_dict()
        .map(|(name, t)| t.contiguous().map(|t| (name, t)))
        .collect::<candle_core::Result<_>>()
        .map_err(Error::compute)?;

    let write_error = |source: Box<dyn std::error::Error + Send + Sync>| Error::Write {
        path: dst.to_owned(),
        source,
    };
    let pending = aesthete_atomic::Pending::create(dst).map_err(|e| write_error(Box::new(e)))?;
    candle_core::safetensors::save(&tensors, pending.temp_path())
        .map_err(|e| write_error(Box::new(e)))?;
    pending.commit_written().map_err(|e| write_error(Box::new(e)))?;
    tracing::debug!(%kind, tensors = tensors.len(), "converted aesthetic head");
    Ok(())
}
