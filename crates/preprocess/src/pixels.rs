//! Pixel layouts: how a decoder lays an image out and how the resampler hands rows on. A leaf
//! next to [`crate::geometry`]; the engine decides which layout a decoder writes.

use crate::geometry::Window;

/// Pixels (an image, or a row of one) in the layout their producer wrote.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Pixels<'a> {
    /// Interleaved RGB8, row by row.
    Rgb(&'a [u8]),
    /// Red, green and blue planes, row by row.
    Channels([&'a [u8]; 3]),
}

impl<'a> Pixels<'a> {
    /// The pixels interleaved: as they are, or interleaved into `scratch`.
    pub(crate) fn interleaved<'b>(self, scratch: &'b mut Vec<u8>) -> &'b [u8]
    where
        'a: 'b,
    {
        match self {
            Pixels::Rgb(rgb) => rgb,
            Pixels::Channels([r, g, b]) => {
                scratch.clear();
                scratch.extend(r.iter().zip(g).zip(b).flat_map(|((&r, &g), &b)| [r, g, b]));
                scratch
            }
        }
    }
}

/// How a decoder lays out the pixels it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// Interleaved RGB .
    Rgb,
    /// Three channel planes .
    Channels,
}

/// Which layout a decoder writes for a region it is asked for: the engine chooses the rule
/// (from what its resampler reads fastest) and the decoder applies it to the size it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LayoutRule {
    /// Interleaved RGB always.
    Rgb,
    /// Channel planes when the window resizes both axes (both resampling passes run),
    /// interleaved RGB otherwise. Only the AVX2 resampler asks for it (the decoders' tests
    /// ask on every CPU).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    ChannelsWhenBothAxesResize,
}

impl LayoutRule {
    /// The layout for a `width` x `height` source whose crop window is `window`.
    pub(crate) fn layout(self, window: &Window, width: usize, height: usize) -> Layout {
        match self {
            LayoutRule::ChannelsWhenBothAxesResize
                if window.out_width != width && window.out_height != height =>
            {
                Layout::Channels
            }
            _ => Layout::Rgb,
        }
    }
}
