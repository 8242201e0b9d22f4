//! The head itself: loading, folding and scoring.

use std::collections::HashMap;
use std::path::Path;

use aesthete_tensor::NormalizedEmbeddings;
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::affine::{Affine, RowProblem};
use crate::layout::{Layer, Layers};
use crate::{Error, HeadKind, checkpoint};

/// The LAION improved aesthetic predictor: an MLP from an L2-normalized CLIP image embedding
/// to a score, roughly 1 (ugly) to 10 (beautiful).
///
/// Load it with [`AestheticHead::load`], score with [`AestheticHead::score`]. The input must
/// be unit-norm, as the head was trained on normalized embeddings and scores anything else
/// wrongly: [`NormalizedEmbeddings`] holds that guarantee.
///
/// Scoring runs on the CPU. Even the largest head is about a million multiply-adds per
/// embedding for the relu kind and 768 for a folded linear head, well under a millisecond
/// for a batch, so a GPU path would spend more on transfers than it saves.
#[derive(Debug, Clone)]
pub struct AestheticHead {
    kind: HeadKind,
    input_dim: usize,
    model: Model,
}

#[derive(Debug, Clone)]
enum Model {
    Folded(FoldedLinear),
    Relu(ReluMlp),
}

impl AestheticHead {
    /// Loads a head from a safetensors file or a PyTorch (zip) checkpoint holding its state
    /// dict, `layers.{i}.{weight,bias}` as saved by the reference training script.
    ///
    /// The format is told by the file's first bytes, not its extension, so `.pth`, `.pt`,
    /// `.bin`, `.ckpt` and `.safetensors` all work. The [`HeadKind`] is inferred from the
    /// layer indices, the layer widths from the weights. A [`HeadKind::Linear`] head is
    /// folded into one affine map, computed in `f64` and kept as `f32`.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let _span = tracing::debug_span!("load_head", path = %path.display()).entered();
        let tensors = checkpoint::read(path)?;
        let layers = Layers::parse(path, tensors)?;
        let head = Self::from_layers(layers).map_err(Error::compute)?;
        tracing::debug!(kind = %head.kind, input_dim = head.input_dim, "loaded aesthetic head");
        Ok(head)
    }

    fn from_layers(layers: Layers) -> candle_core::Result<Self> {
        let input_dim = layers.input_dim();
        let model = match layers.kind {
            HeadKind::Linear => Model::Folded(FoldedLinear::new(&layers.layers)?),
            HeadKind::Relu => {
                let dims: Vec<usize> = std::iter::once(input_dim)
                    .chain(layers.layers.iter().map(|l| l.weight.dims()[0]))
                    .collect();
                let indices: Vec<usize> = layers.layers.iter().map(|l| l.index).collect();
                let kind = layers.kind;
                let tensors: HashMap<String, Tensor> = layers.into_state_dict().collect();
                let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
                let model = Model::Relu(ReluMlp::new(vb.pp("layers"), &indices, &dims)?);
                return Ok(AestheticHead { kind, input_dim, model });
            }
        };
        Ok(AestheticHead { kind: layers.kind, input_dim, model })
    }

    /// Which architecture the weights have.
    pub fn kind(&self) -> HeadKind {
        self.kind
    }

    /// The length of the embeddings the head takes: 768 for the LAION ViT-L/14 heads.
    pub fn input_dim(&self) -> usize {
        self.input_dim
    }

    /// One score per embedding, in order.
    ///
    /// Fails with [`Error::InputDim`] when the embeddings' length is not
    /// [`AestheticHead::input_dim`].
    pub fn score(&self, embeddings: &NormalizedEmbeddings) -> Result<Vec<f32>, Error> {
        if embeddings.dim() != self.input_dim {
            return Err(Error::InputDim { expected: self.input_dim, actual: embeddings.dim() });
        }
        if embeddings.is_empty() {
            return Ok(Vec::new());
        }
        let rows = embeddings.as_slice();
        match &self.model {
            Model::Folded(m) => {
                Ok(rows.chunks_exact(self.input_dim).map(|row| m.affine.score_unit(row)).collect())
            }
            Model::Relu(m) => {
                let x = Tensor::from_slice(rows, (embeddings.len(), self.input_dim), &Device::Cpu);
                x.and_then(|x| m.forward(&x)?.flatten_all()?.to_vec1::<f32>())
                    .map_err(Error::compute)
            }
        }
    }

    /// Scores each row of `rows` (`input_dim` values a row) as the row divided by its L2
    /// norm, whatever its norm, into `scores` (cleared first), one entry per row; a row with a
    /// NaN or infinite value, or all zeros, gets its [`RowProblem`].
    ///
    /// A linear head reads each row once, straight from `rows`, and allocates nothing: this is
    /// `aesthete rescore`'s hot path. A relu head normalizes the good rows into a copy and runs
    /// its layers as [`AestheticHead::score`] does.
    pub fn score_rows(
        &self,
        rows: &[f32],
        scores: &mut Vec<Result<f32, RowProblem>>,
    ) -> Result<(), Error> {
        if !rows.len().is_multiple_of(self.input_dim) {
            return Err(Error::InputDim { expected: self.input_dim, actual: rows.len() });
        }
        scores.clear();
        let rows = rows.chunks_exact(self.input_dim);
        match &self.model {
            Model::Folded(m) => scores.extend(rows.map(|row| m.affine.score_normalizing(row))),
            Model::Relu(_) => {
                let mut good = Vec::new();
                for row in rows {
                    let squares: f64 = row.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
                    scores.push(if !squares.is_finite() {
                        Err(RowProblem::NotFinite)
                    } else if squares == 0.0 {
                        Err(RowProblem::ZeroNorm)
                    } else {
                        good.extend_from_slice(row);
                        Ok(0.0)
                    });
                }
                let good = NormalizedEmbeddings::normalize(good, self.input_dim)
                    .expect("rows with a finite, non-zero norm");
                let mut good_scores = self.score(&good)?.into_iter();
                for score in scores.iter_mut().filter(|s| s.is_ok()) {
                    *score = Ok(good_scores.next().expect("a score per good row"));
                }
            }
        }
        Ok(())
    }
}

/// A linear head's five layers folded into `score = w·x + b`.
///
/// With `Lₖ(x) = Wₖx + bₖ`, `L₄∘…∘L₀(x) = (W₄W₃W₂W₁W₀)x + (W₄(W₃(W₂(W₁b₀ + b₁) + b₂) + b₃) + b₄)`,
/// computed from the last layer back so every product is a row vector times a matrix.
#[derive(Debug, Clone)]
struct FoldedLinear {
    affine: Affine,
}

impl FoldedLinear {
    fn new(layers: &[Layer]) -> candle_core::Result<Self> {
        let f64_of = |t: &Tensor| t.to_dtype(DType::F64);
        let (last, rest) = layers.split_last().expect("a head has five layers");
        let mut row = f64_of(&last.weight)?; // [1, out_k]
        let mut offset = f64_of(&last.bias)?; // [1]
        for layer in rest.iter().rev() {
            let bias = f64_of(&layer.bias)?.unsqueeze(1)?; // [out_k, 1]
            offset = (offset + row.matmul(&bias)?.flatten_all()?)?;
            row = row.matmul(&f64_of(&layer.weight)?)?;
        }
        let weight = row.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let bias = offset.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(FoldedLinear { affine: Affine::new(weight, bias[0]) })
    }
}

/// Linear layers with a ReLU after all but the last, as `nn.Sequential` holds them
/// (the Dropouts between them are identities at inference).
#[derive(Debug, Clone)]
struct ReluMlp {
    layers: Vec<Linear>,
}

impl ReluMlp {
    /// `vb` is rooted at `layers`; `indices[k]` is layer `k`'s index in the `Sequential`,
    /// which maps `dims[k]` values to `dims[k + 1]`.
    fn new(vb: VarBuilder, indices: &[usize], dims: &[usize]) -> candle_core::Result<Self> {
        let layers = indices
            .iter()
            .zip(dims.windows(2))
            .map(|(&i, d)| candle_nn::linear(d[0], d[1], vb.pp(i)))
            .collect::<candle_core::Result<_>>()?;
        Ok(ReluMlp { layers })
    }
}

impl Module for ReluMlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (last, hidden) = self.layers.split_last().expect("a head has five layers");
        let mut x = x.clone();
        for layer in hidden {
            x = layer.forward(&x)?.relu()?;
        }
        last.forward(&x)
    }
}
