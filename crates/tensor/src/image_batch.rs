/// A batch of preprocessed images: `len × 3 × size × size` `f32` values in one contiguous
/// buffer (NCHW), allocated once for `capacity` images and reused across batches.
///
/// A preprocessor writes each image into the slot returned by [`ImageBatch::push_slot`]; a
/// model reads [`ImageBatch::as_slice`] whole. [`ImageBatch::clear`] makes it ready for the
/// next batch without freeing memory.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageBatch {
    data: Vec<f32>,
    len: usize,
    capacity: usize,
    image_size: usize,
}

impl ImageBatch {
    /// A batch for up to `capacity` RGB images of `image_size × image_size` pixels.
    ///
    /// # Panics
    /// When `capacity` or `image_size` is zero.
    pub fn with_capacity(capacity: usize, image_size: usize) -> Self {
        assert!(capacity > 0, "an image batch needs room for at least one image");
        assert!(image_size > 0, "an image batch needs a non-zero image size");
        let data = vec![0.0; capacity * 3 * image_size * image_size];
        ImageBatch { data, len: 0, capacity, image_size }
    }

    /// Side of each (square) image in pixels.
    pub fn image_size(&self) -> usize {
        self.image_size
    }

    /// Number of `f32` values in one image: `3 × size × size`.
    pub fn image_len(&self) -> usize {
        3 * self.image_size * self.image_size
    }

    /// Number of images in the batch.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the batch holds no image.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Most images the batch can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Whether no further image fits.
    pub fn is_full(&self) -> bool {
        self.len == self.capacity
    }

    /// `[len, 3, size, size]`.
    pub fn shape(&self) -> [usize; 4] {
        [self.len, 3, self.image_size, self.image_size]
    }

    /// Appends an image and returns its slot (`3 × size × size` values, CHW) to fill.
    /// The slot holds whatever the previous batch left there.
    ///
    /// # Panics
    /// When the batch is full.
    pub fn push_slot(&mut self) -> &mut [f32] {
        assert!(!self.is_full(), "image batch is full ({} images)", self.capacity);
        let n = self.image_len();
        let start = self.len * n;
        self.len += 1;
        &mut self.data[start..start + n]
    }

    /// Drops the last image, for a caller whose preprocessing of it failed.
    pub fn pop(&mut self) {
        self.len = self.len.saturating_sub(1);
    }

    /// Empties the batch, keeping its memory.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// All images, NCHW.
    pub fn as_slice(&self) -> &[f32] {
        &self.data[..self.len * self.image_len()]
    }

    /// Image `i`, CHW.
    ///
    /// # Panics
    /// When `i >= len`.
    pub fn image(&self, i: usize) -> &[f32] {
        assert!(i < self.len, "image {i} of a batch of {}", self.len);
        let n = self.image_len();
        &self.data[i * n..(i + 1) * n]
    }

    /// Mutable access to image `i`, CHW.
    ///
    /// # Panics
    /// When `i >= len`.
    pub fn image_mut(&mut self, i: usize) -> &mut [f32] {
        assert!(i < self.len, "image {i} of a batch of {}", self.len);
        let n = self.image_len();
        &mut self.data[i * n..(i + 1) * n]
    }

    /// Splits the filled part of the batch into one mutable slot per image, so that slots can
    /// be filled in parallel (for example with rayon's `par_chunks_mut` over this slice).
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        let n = self.len * self.image_len();
        &mut self.data[..n]
    }

    /// Sets the number of images to `len`, for a caller that fills slots through
    /// [`ImageBatch::as_mut_slice`] after growing the batch.
    ///
    /// # Panics
    /// When `len > capacity`.
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.capacity, "{len} images do not fit a batch of {}", self.capacity);
        self.len = len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_disjoint_and_in_order() {
        let mut b = ImageBatch::with_capacity(3, 2);
        b.push_slot().fill(1.0);
        b.push_slot().fill(2.0);
        assert_eq!(b.as_slice().len(), 2 * 12);
        assert!(b.image(0).iter().all(|&v| v == 1.0));
        assert!(b.image(1).iter().all(|&v| v == 2.0));
        b.pop();
        assert_eq!(b.len(), 1);
        b.clear();
        assert!(b.is_empty());
        assert_eq!(b.capacity(), 3);
    }

    #[test]
    #[should_panic(expected = "full")]
    fn push_past_capacity_panics() {
        let mut b = ImageBatch::with_capacity(1, 1);
        b.push_slot();
        b.push_slot();
    }
}
