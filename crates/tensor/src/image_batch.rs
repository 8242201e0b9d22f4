use crate::ShapeError;

/// A batch of preprocessed images: `len × 3 × size × size` `f32` values in one contiguous
/// buffer (NCHW), allocated once for `capacity` images and reused across batches.
///
/// A preprocessor writes each image into the slot returned by [`ImageBatch::push_slot`]; a
/// model reads [`ImageBatch::as_slice`] whole. [`ImageBatch::clear`] makes it ready for the
/// next batch without freeing memory.
///
/// The values live in a `Vec` ([`ImageBatch::with_capacity`]) or in memory a model supplies
/// ([`ImageBatch::in_memory`]), such as page-locked host memory that a GPU copies from
/// without staging it first.
pub struct ImageBatch {
    data: Values,
    len: usize,
    capacity: usize,
    image_size: usize,
}

/// Memory an [`ImageBatch`] can keep its values in instead of a `Vec`: page-locked host
/// memory that a GPU reads directly, for one. Its length never changes.
pub trait PixelMemory: Send + Sync {
    /// Every value, in order.
    fn values(&self) -> &[f32];
    /// Every value, in order, to write.
    fn values_mut(&mut self) -> &mut [f32];
}

/// A plain buffer, as [`ImageBatch::with_capacity`] holds it; for callers that hand memory
/// over through the same door (tests, host stand-ins for a device).
impl PixelMemory for Vec<f32> {
    fn values(&self) -> &[f32] {
        self
    }

    fn values_mut(&mut self) -> &mut [f32] {
        self
    }
}

enum Values {
    Vec(Vec<f32>),
    Supplied(Box<dyn PixelMemory>),
}

impl Values {
    fn all(&self) -> &[f32] {
        match self {
            Values::Vec(v) => v,
            Values::Supplied(m) => m.values(),
        }
    }

    fn all_mut(&mut self) -> &mut [f32] {
        match self {
            Values::Vec(v) => v,
            Values::Supplied(m) => m.values_mut(),
        }
    }
}

impl std::fmt::Debug for ImageBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageBatch")
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .field("image_size", &self.image_size)
            .field("supplied_memory", &self.in_supplied_memory())
            .finish_non_exhaustive()
    }
}

impl AsRef<ImageBatch> for ImageBatch {
    fn as_ref(&self) -> &ImageBatch {
        self
    }
}

/// A copy in a `Vec`, whatever memory the original is in.
impl Clone for ImageBatch {
    fn clone(&self) -> Self {
        ImageBatch { data: Values::Vec(self.data.all().to_vec()), ..*self }
    }
}

/// Equal shapes and equal images (what lies past `len` is not compared).
impl PartialEq for ImageBatch {
    fn eq(&self, other: &Self) -> bool {
        self.shape() == other.shape() && self.as_slice() == other.as_slice()
    }
}

impl ImageBatch {
    /// A batch for up to `capacity` RGB images of `image_size × image_size` pixels.
    ///
    /// # Panics
    /// When `capacity` or `image_size` is zero.
    pub fn with_capacity(capacity: usize, image_size: usize) -> Self {
        assert!(capacity > 0, "an image batch needs room for at least one image");
        assert!(image_size > 0, "an image batch needs a non-zero image size");
        let data = Values::Vec(vec![0.0; capacity * 3 * image_size * image_size]);
        ImageBatch { data, len: 0, capacity, image_size }
    }

    /// A batch for up to `capacity` RGB images of `image_size × image_size` pixels whose values
    /// live in `memory`, which must hold exactly `capacity × 3 × size × size` of them.
    ///
    /// # Panics
    /// When `capacity` or `image_size` is zero.
    pub fn in_memory(
        memory: Box<dyn PixelMemory>,
        capacity: usize,
        image_size: usize,
    ) -> Result<Self, ShapeError> {
        assert!(capacity > 0, "an image batch needs room for at least one image");
        assert!(image_size > 0, "an image batch needs a non-zero image size");
        let expected = capacity * 3 * image_size * image_size;
        let len = memory.values().len();
        if len != expected {
            return Err(ShapeError::MemoryLength { len, expected });
        }
        Ok(ImageBatch { data: Values::Supplied(memory), len: 0, capacity, image_size })
    }

    /// Whether the values live in memory given to [`ImageBatch::in_memory`].
    pub fn in_supplied_memory(&self) -> bool {
        matches!(self.data, Values::Supplied(_))
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
        &mut self.data.all_mut()[start..start + n]
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
        &self.data.all()[..self.len * self.image_len()]
    }

    /// Image `i`, CHW.
    ///
    /// # Panics
    /// When `i >= len`.
    pub fn image(&self, i: usize) -> &[f32] {
        assert!(i < self.len, "image {i} of a batch of {}", self.len);
        let n = self.image_len();
        &self.data.all()[i * n..(i + 1) * n]
    }

    /// Mutable access to image `i`, CHW.
    ///
    /// # Panics
    /// When `i >= len`.
    pub fn image_mut(&mut self, i: usize) -> &mut [f32] {
        assert!(i < self.len, "image {i} of a batch of {}", self.len);
        let n = self.image_len();
        &mut self.data.all_mut()[i * n..(i + 1) * n]
    }

    /// Splits the filled part of the batch into one mutable slot per image, so that slots can
    /// be filled in parallel (for example with rayon's `par_chunks_mut` over this slice).
    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        let n = self.len * self.image_len();
        &mut self.data.all_mut()[..n]
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

    /// Values in supplied memory: written and read through it, its length checked, and
    /// compared and cloned like a `Vec`'s.
    #[test]
    fn supplied_memory_holds_the_values() {
        let wrong = ImageBatch::in_memory(Box::new(vec![0.0; 23]), 2, 2);
        assert_eq!(wrong.unwrap_err(), ShapeError::MemoryLength { len: 23, expected: 24 });
        let mut b = ImageBatch::in_memory(Box::new(vec![9.0; 24]), 2, 2).unwrap();
        assert!(b.in_supplied_memory() && b.is_empty());
        b.push_slot().fill(1.0);
        let mut v = ImageBatch::with_capacity(2, 2);
        v.push_slot().fill(1.0);
        assert_eq!(b, v);
        assert!(!v.in_supplied_memory());
        let copy = b.clone();
        assert!(!copy.in_supplied_memory() && copy == b);
        b.image_mut(0)[3] = 2.0;
        assert_ne!(b, v);
    }

    #[test]
    #[should_panic(expected = "full")]
    fn push_past_capacity_panics() {
        let mut b = ImageBatch::with_capacity(1, 1);
        b.push_slot();
        b.push_slot();
    }
}
