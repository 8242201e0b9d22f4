//! Shared helpers.

use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use aesthete_shards::{Error, ReadOptions, Sample, ShardReader, ShardWriter};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/shards")
}

/// Reads every item of an in-memory shard.
pub fn read_all(bytes: &[u8]) -> Vec<Result<Sample, Error>> {
    read_with(bytes, ReadOptions::default())
}

pub fn read_with(bytes: &[u8], options: ReadOptions) -> Vec<Result<Sample, Error>> {
    ShardReader::new(Cursor::new(bytes), "mem.tar", options).collect()
}

/// Reads a shard that must be valid.
pub fn read_ok(bytes: &[u8]) -> Vec<Sample> {
    read_all(bytes).into_iter().map(|r| r.expect("valid shard")).collect()
}

/// Writes samples with [`ShardWriter`] to `name` in a temporary directory; returns the bytes.
pub fn write_named(samples: &[Sample], name: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    let mut writer = ShardWriter::create(&path).unwrap();
    for sample in samples {
        writer.write_sample(sample).unwrap();
    }
    writer.commit().unwrap();
    std::fs::read(&path).unwrap()
}

pub fn write(samples: &[Sample]) -> Vec<u8> {
    write_named(samples, "out.tar")
}

/// A few samples with sizes around block boundaries and short names.
pub fn small_samples() -> Vec<Sample> {
    vec![
        Sample::new("s0").with("jpg", bytes(1500, 1)).with("txt", "zero"),
        Sample::new("s1").with("JPG", bytes(512, 2)).with("cls", "1"),
        Sample::new("d/s2").with("photo.jpg", bytes(511, 3)).with("txt", ""),
        Sample::new("s3").with("png", bytes(513, 4)),
    ]
}

/// Deterministic pseudo-random bytes.
pub fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A reader that returns at most `chunk` bytes per call, like a pipe.
pub struct Trickle<R> {
    pub inner: R,
    pub chunk: usize,
}

impl<R: Read> Read for Trickle<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.chunk);
        self.inner.read(&mut buf[..n])
    }
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// A tar entry header built with the tar crate, for shards the writer would refuse.
pub fn raw_header(name: &[u8], size: u64, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_entry_type(kind);
    h.set_cksum();
    h
}

/// Builds a tar from raw entries `(name, type, data)`, names under 100 bytes.
pub fn raw_tar(entries: &[(&[u8], tar::EntryType, &[u8])]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (name, kind, data) in entries {
        builder.append(&raw_header(name, data.len() as u64, *kind), *data).unwrap();
    }
    builder.into_inner().unwrap()
}
