//! The two layouts of the improved-aesthetic-predictor MLP and how a state dict is matched to
//! one of them.
//!
//! The reference `MLP` in christophschuhmann/improved-aesthetic-predictor (`train_predictor.py`)
//! is an `nn.Sequential` named `layers`:
//!
//! ```text
//! linear: Linear(D,1024) Dropout Linear(1024,128) Dropout Linear(128,64) Dropout Linear(64,16) Linear(16,1)
//!         0              1       2                3       4              5       6            7
//! relu:   Linear ReLU Dropout Linear ReLU Dropout Linear ReLU Dropout Linear ReLU Linear
//!         0      1    2       3      4    5       6      7    8       9      10   11
//! ```
//!
//! The relu layout is `avaclipmlp_inf_wds-relu.py` in the same repository (the training
//! script with its commented-out `nn.ReLU()` lines restored). Dropout and ReLU hold no
//! parameters, so the indices of the `layers.{i}.weight` keys tell the layouts apart without
//! ambiguity. Layer widths are read from the weights, so heads trained on other embeddings
//! (1024 values for ViT-H/14, say) or with other widths load too.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use candle_core::{DType, Tensor};

use crate::Error;

/// Which of the two improved-aesthetic-predictor architectures a head is.
///
/// Inferred at load from the indices of the `layers.{i}` keys: `0, 2, 4, 6, 7` for
/// [`HeadKind::Linear`], `0, 3, 6, 9, 11` for [`HeadKind::Relu`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HeadKind {
    /// Five linear layers with no activation between them (`*-linearMSE`); folded into one
    /// affine map at load.
    Linear,
    /// Five linear layers with a ReLU after each of the first four (`*-reluMSE`).
    Relu,
}

impl HeadKind {
    /// The `i` in the `layers.{i}.weight` keys of this kind's five linear layers.
    pub const fn layer_indices(self) -> [usize; 5] {
        match self {
            HeadKind::Linear => [0, 2, 4, 6, 7],
            HeadKind::Relu => [0, 3, 6, 9, 11],
        }
    }
}

impl fmt::Display for HeadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HeadKind::Linear => "linear",
            HeadKind::Relu => "relu",
        })
    }
}

/// One checked linear layer: `weight` is `[out, in]`, `bias` is `[out]`.
pub(crate) struct Layer {
    pub(crate) index: usize,
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
}

/// A state dict matched to a layout, with chained shapes and finite values.
pub(crate) struct Layers {
    pub(crate) kind: HeadKind,
    pub(crate) layers: Vec<Layer>,
}

impl Layers {
    /// The layers as a state dict: `layers.{index}.{weight,bias}`, the checkpoint's own names.
    pub(crate) fn into_state_dict(self) -> impl Iterator<Item = (String, Tensor)> {
        self.layers.into_iter().flat_map(|l| {
            [
                (format!("layers.{}.weight", l.index), l.weight),
                (format!("layers.{}.bias", l.index), l.bias),
            ]
        })
    }

    /// The embedding size the first layer takes.
    pub(crate) fn input_dim(&self) -> usize {
        self.layers[0].weight.dims()[1]
    }

    /// Matches `tensors`, read from `path`, to a layout and checks every shape.
    pub(crate) fn parse(path: &Path, tensors: Vec<(String, Tensor)>) -> Result<Self, Error> {
        let mut slots: BTreeMap<usize, (Option<Tensor>, Option<Tensor>)> = BTreeMap::new();
        for (name, tensor) in tensors {
            let Some((index, param)) = split_key(&name) else {
                return Err(Error::UnexpectedTensor { path: path.to_owned(), name });
            };
            let slot = slots.entry(index).or_default();
            match param {
                Param::Weight => slot.0 = Some(tensor),
                Param::Bias => slot.1 = Some(tensor),
            }
        }
        let indices: Vec<usize> = slots.keys().copied().collect();
        let kind = [HeadKind::Linear, HeadKind::Relu]
            .into_iter()
            .find(|kind| kind.layer_indices() == indices[..])
            .ok_or_else(|| Error::UnknownLayout { path: path.to_owned(), indices })?;

        let mut layers = Vec::with_capacity(slots.len());
        let mut prev_out: Option<usize> = None;
        let last = kind.layer_indices()[4];
        for (index, (weight, bias)) in slots {
            let name = |param: &str| format!("layers.{index}.{param}");
            let missing = |param| Error::MissingTensor { path: path.to_owned(), name: name(param) };
            let weight = weight.ok_or_else(|| missing("weight"))?;
            let bias = bias.ok_or_else(|| missing("bias"))?;
            let shape_error = |param, expected: String, actual: &[usize]| Error::Shape {
                path: path.to_owned(),
                name: name(param),
                expected,
                actual: actual.to_vec(),
            };

            let &[out_dim, in_dim] = weight.dims() else {
                let expected = "[out, in] (two dimensions)".to_owned();
                return Err(shape_error("weight", expected, weight.dims()));
            };
            if let Some(prev) = prev_out
                && in_dim != prev
            {
                let expected = format!("[_, {prev}] (the previous layer has {prev} outputs)");
                return Err(shape_error("weight", expected, weight.dims()));
            }
            if index == last && out_dim != 1 {
                let expected = format!("[1, {in_dim}] (the last layer gives one score)");
                return Err(shape_error("weight", expected, weight.dims()));
            }
            if in_dim == 0 || out_dim == 0 {
                return Err(shape_error("weight", "no zero dimension".to_owned(), weight.dims()));
            }
            if bias.dims() != [out_dim] {
                return Err(shape_error("bias", format!("[{out_dim}]"), bias.dims()));
            }
            for (param, tensor) in [("weight", &weight), ("bias", &bias)] {
                if !all_finite(tensor).map_err(Error::compute)? {
                    return Err(Error::NonFinite { path: path.to_owned(), name: name(param) });
                }
            }
            prev_out = Some(out_dim);
            layers.push(Layer { index, weight, bias });
        }
        Ok(Layers { kind, layers })
    }
}

enum Param {
    Weight,
    Bias,
}

/// `layers.{i}.weight` → `(i, Weight)`.
fn split_key(name: &str) -> Option<(usize, Param)> {
    let rest = name.strip_prefix("layers.")?;
    let (index, param) = rest.split_once('.')?;
    let index = index.parse().ok()?;
    let param = match param {
        "weight" => Param::Weight,
        "bias" => Param::Bias,
        _ => return None,
    };
    Some((index, param))
}

fn all_finite(tensor: &Tensor) -> candle_core::Result<bool> {
    let values = tensor.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
    Ok(values.iter().all(|v| v.is_finite()))
}
