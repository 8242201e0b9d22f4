//! The geometry of resize + center crop: where the crop window of a source of a given size
//! lies, and which source pixels it reads. A leaf: the engine, the decoders and the resampler
//! all meet here.

use crate::config::{Filter, ResizeTarget};

/// Where the crop window of a source of a given size lies: the geometry of resize + crop.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Plan {
    pub(crate) resize: ResizeTarget,
    pub(crate) crop: u32,
    pub(crate) filter: Filter,
}

impl Plan {
    /// Resize target for a `width` x `height` source, as transformers'
    /// `get_resize_output_image_size(default_to_square=False)` computes it, and the
    /// floor-offset center crop in it.
    pub(crate) fn window(&self, width: u32, height: u32) -> Window {
        let (out_width, out_height) = match self.resize {
            ResizeTarget::ShortestEdge(edge) => {
                let (short, long) = if width <= height { (width, height) } else { (height, width) };
                // Python: int(edge * long / short), true division in f64, truncated.
                let new_long = ((edge as u64 * long as u64) as f64 / short as f64) as usize;
                if width <= height { (edge as usize, new_long) } else { (new_long, edge as usize) }
            }
            ResizeTarget::Exact { height, width } => (width as usize, height as usize),
        };
        let s = self.crop as usize;
        Window {
            out_width,
            out_height,
            left: (out_width - s) / 2,
            top: (out_height - s) / 2,
            width: s,
            height: s,
        }
    }

    /// Source columns `x0..x1` and rows `y0..y1` the window reads.
    pub(crate) fn source_region(&self, width: u32, height: u32) -> [usize; 4] {
        let w = self.window(width, height);
        let (x0, x1) = input_span(width as usize, w.out_width, self.filter, w.left, w.width);
        let (y0, y1) = input_span(height as usize, w.out_height, self.filter, w.top, w.height);
        [x0, x1, y0, y1]
    }
}

/// Where the window sits in the resized image.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    pub out_width: usize,
    pub out_height: usize,
    pub left: usize,
    pub top: usize,
    pub width: usize,
    pub height: usize,
}

/// Input indices `first..last` that Pillow's weights for outputs `start..start + count` of an
/// `in_size` → `out_size` resize read (everything a window needs from the source).
pub(crate) fn input_span(
    in_size: usize,
    out_size: usize,
    filter: Filter,
    start: usize,
    count: usize,
) -> (usize, usize) {
    if in_size == out_size {
        return (start, start + count);
    }
    let scale = in_size as f64 / out_size as f64;
    let support = filter.support() * scale.max(1.0);
    let first_center = (start as f64 + 0.5) * scale;
    let last_center = ((start + count - 1) as f64 + 0.5) * scale;
    let first = ((first_center - support + 0.5) as i64).max(0) as usize;
    let last = ((last_center + support + 0.5) as i64).min(in_size as i64) as usize;
    (first, last.max(first))
}
