//! Parquet's RLE / bit-packing hybrid encoding, read as runs: the repetition and definition
//! levels of a page, and the indices of a dictionary-encoded page.
//!
//! The data is a sequence of runs, each behind a ULEB128 header: an even header `2n` is a
//! run of `n` copies of one value (stored in `ceil(bit_width / 8)` bytes); an odd header
//! `2g + 1` is `8g` values bit-packed, least significant bit first.
use bytes::Bytes;

/// The runs of one hybrid-encoded stream.
pub(super) struct Runs {
    data: Bytes,
    /// Offset of the next run's header.
    next: usize,
    bit_width: u32,
    /// Values not yet read, of all runs: the page's count, which caps the padding of a last
    /// bit-packed group.
    values_left: usize,
    run: Run,
}

#[derive(Clone, Copy)]
enum Run {
    Repeated {
        value: u32,
        left: usize,
    },
    /// `left` values from bit `bit` of `data`.
    Packed {
        bit: usize,
        left: usize,
    },
}

impl Runs {
    /// `values` values of `bit_width` bits (at most 32) encoded in `data`.
    pub fn new(data: Bytes, bit_width: u32, values: usize) -> Result<Self, String> {
        if bit_width > 32 {
            return Err(format!("a bit width of {bit_width} in a hybrid-encoded stream"));
        }
        Ok(Runs {
            data,
            next: 0,
            bit_width,
            values_left: values,
            run: Run::Repeated { value: 0, left: 0 },
        })
    }

    /// The next value and how many times it repeats from here (at least 1), without
    /// consuming them; `None` when every value has been read.
    pub fn peek(&mut self) -> Result<Option<(u32, usize)>, String> {
        if self.values_left == 0 {
            return Ok(None);
        }
        if self.run_left() == 0 {
            self.start_run()?;
        }
        Ok(Some(match self.run {
            Run::Repeated { value, left } => (value, left),
            Run::Packed { bit, left } => {
                let value = self.packed_value(bit);
                // At most 64 at a time, so that a caller consuming one value at a time does
                // not rescan a long run.
                let same = (1..left.min(64))
                    .take_while(|i| self.packed_value(bit + i * self.bit_width as usize) == value)
                    .count();
                (value, 1 + same)
            }
        }))
    }

    /// Consumes `count` values, at most as many as [`Runs::peek`] said repeat.
    pub fn consume(&mut self, count: usize) {
        self.values_left -= count;
        match &mut self.run {
            Run::Repeated { left, .. } => *left -= count,
            Run::Packed { bit, left } => {
                *bit += count * self.bit_width as usize;
                *left -= count;
            }
        }
    }

    fn run_left(&self) -> usize {
        match self.run {
            Run::Repeated { left, .. } | Run::Packed { left, .. } => left,
        }
    }

    fn start_run(&mut self) -> Result<(), String> {
        let header = self.uleb128()?;
        let width = self.bit_width as usize;
        if header & 1 == 0 {
            let count = (header >> 1) as usize;
            let bytes = width.div_ceil(8);
            let raw = self
                .data
                .get(self.next..self.next + bytes)
                .ok_or("a hybrid-encoded run ends early")?;
            let value = raw.iter().rev().fold(0u32, |v, b| (v << 8) | u32::from(*b));
            if width < 32 && value >> width != 0 {
                return Err(format!("the value {value} does not fit {width} bits"));
            }
            self.next += bytes;
            self.run = Run::Repeated { value, left: count.min(self.values_left) };
        } else {
            let groups = (header >> 1) as usize;
            let bytes = groups * width;
            if self.next + bytes > self.data.len() {
                return Err("a bit-packed run ends early".into());
            }
            let left = (groups * 8).min(self.values_left);
            self.run = Run::Packed { bit: self.next * 8, left };
            self.next += bytes;
        }
        if self.run_left() == 0 {
            return Err("an empty run in a hybrid-encoded stream".into());
        }
        Ok(())
    }

    /// The value at bit offset `bit` of the data (inside a checked bit-packed run).
    fn packed_value(&self, bit: usize) -> u32 {
        let first = bit / 8;
        let mut window = [0u8; 8];
        let end = (first + 8).min(self.data.len());
        window[..end - first].copy_from_slice(&self.data[first..end]);
        let word = u64::from_le_bytes(window) >> (bit % 8);
        (word & ((1u64 << self.bit_width) - 1)) as u32
    }

    fn uleb128(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.data.get(self.next).ok_or("a hybrid-encoded stream ends early")?;
            self.next += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("a run header longer than 64 bits".into())
    }
}

/// Bits needed for values up to `max`.
pub(super) fn bit_width(max: u32) -> u32 {
    32 - max.leading_zeros()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(runs: &mut Runs) -> Vec<u32> {
        let mut out = Vec::new();
        while let Some((value, count)) = runs.peek().unwrap() {
            out.extend(std::iter::repeat_n(value, count));
            runs.consume(count);
        }
        out
    }

    #[test]
    fn repeated_and_packed_runs_decode() {
        // 5 × 3 (width 2), then one packed group [0,1,2,3,3,3,0,1], capped at 12 values in all.
        let packed: u32 = [0u32, 1, 2, 3, 3, 3, 0, 1]
            .iter()
            .enumerate()
            .fold(0, |word, (i, v)| word | (v << (2 * i)));
        let mut data = vec![5 << 1, 3, 1 << 1 | 1];
        data.extend_from_slice(&packed.to_le_bytes()[..2]);
        let mut runs = Runs::new(Bytes::from(data), 2, 12).unwrap();
        assert_eq!(all(&mut runs), [3, 3, 3, 3, 3, 0, 1, 2, 3, 3, 3, 0]);
    }

    #[test]
    fn a_short_stream_is_an_error_not_a_panic() {
        let mut runs = Runs::new(Bytes::from(vec![3u8]), 8, 8).unwrap();
        assert!(runs.peek().is_err());
        let mut runs = Runs::new(Bytes::from(vec![4u8]), 8, 2).unwrap();
        assert!(runs.peek().is_err());
        let mut runs = Runs::new(Bytes::from(vec![4u8, 200]), 2, 2).unwrap();
        assert!(runs.peek().is_err(), "200 does not fit 2 bits");
    }

    #[test]
    fn bit_widths() {
        assert_eq!([0, 1, 2, 3, 4].map(bit_width), [0, 1, 2, 2, 3]);
    }
}
