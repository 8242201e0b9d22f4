use crate::ShapeError;

/// How far from 1 a row's L2 norm may be for [`NormalizedEmbeddings::from_normalized`] to take
/// it: f32 normalization on any device (and f16 models) lands well inside this.
const NORM_TOLERANCE: f32 = 1e-2;

/// Embeddings whose rows each have unit L2 norm, `len × dim` `f32`, row-major.
///
/// The aesthetic head is trained on L2-normalized CLIP embeddings and scores anything else
/// wrongly; holding this type is the proof that normalization happened.
#[derive(Debug, Clone, PartialEq)]
pub struct NormalizedEmbeddings {
    data: Vec<f32>,
    dim: usize,
}

impl NormalizedEmbeddings {
    /// Normalizes each row of `data` (row length `dim`) to unit L2 norm.
    pub fn normalize(mut data: Vec<f32>, dim: usize) -> Result<Self, ShapeError> {
        check_rows(data.len(), dim)?;
        for (row, values) in data.chunks_exact_mut(dim).enumerate() {
            let norm = l2_norm(values);
            if !(norm.is_finite() && norm > 0.0) {
                return Err(ShapeError::Degenerate { row, norm });
            }
            let inv = 1.0 / norm;
            values.iter_mut().for_each(|v| *v *= inv);
        }
        Ok(NormalizedEmbeddings { data, dim })
    }

    /// Takes rows that are already normalized, checking each norm is 1 within 1e-2.
    pub fn from_normalized(data: Vec<f32>, dim: usize) -> Result<Self, ShapeError> {
        check_rows(data.len(), dim)?;
        for (row, values) in data.chunks_exact(dim).enumerate() {
            let norm = l2_norm(values);
            if norm.is_nan() || (norm - 1.0).abs() > NORM_TOLERANCE {
                return Err(ShapeError::NotNormalized { row, norm });
            }
        }
        Ok(NormalizedEmbeddings { data, dim })
    }

    /// Length of each embedding.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of embeddings.
    pub fn len(&self) -> usize {
        self.data.len().checked_div(self.dim).unwrap_or(0)
    }

    /// Whether there is no embedding.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Embedding `i`.
    ///
    /// # Panics
    /// When `i >= len`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    /// The embeddings in order.
    pub fn rows(&self) -> std::slice::ChunksExact<'_, f32> {
        self.data.chunks_exact(self.dim.max(1))
    }

    /// All values, row-major.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    /// The values, row-major.
    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }
}

fn check_rows(len: usize, dim: usize) -> Result<(), ShapeError> {
    if dim == 0 || !len.is_multiple_of(dim) {
        return Err(ShapeError::NotRows { len, row_len: dim });
    }
    Ok(())
}

fn l2_norm(values: &[f32]) -> f32 {
    values.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_makes_unit_rows() {
        let e = NormalizedEmbeddings::normalize(vec![3.0, 4.0, 0.0, 2.0], 2).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e.row(0), &[0.6, 0.8]);
        assert_eq!(e.row(1), &[0.0, 1.0]);
    }

    #[test]
    fn zero_row_is_refused() {
        let err = NormalizedEmbeddings::normalize(vec![1.0, 0.0, 0.0, 0.0], 2).unwrap_err();
        assert_eq!(err, ShapeError::Degenerate { row: 1, norm: 0.0 });
    }

    #[test]
    fn from_normalized_checks_norms() {
        assert!(NormalizedEmbeddings::from_normalized(vec![0.6, 0.8], 2).is_ok());
        let err = NormalizedEmbeddings::from_normalized(vec![3.0, 4.0], 2).unwrap_err();
        assert!(matches!(err, ShapeError::NotNormalized { row: 0, .. }));
        let err = NormalizedEmbeddings::from_normalized(vec![1.0, 0.0, 0.0], 2).unwrap_err();
        assert_eq!(err, ShapeError::NotRows { len: 3, row_len: 2 });
    }
}
