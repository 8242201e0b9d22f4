//! Read throughput of `ShardReader` on a generated shard: 2000 samples of ~100 KB
//! jpg-like bytes plus a small .txt and .json, from memory and from a file in the page
//! cache, plain and gzip. Reported both as bytes/s and as samples/s.

use std::hint::black_box;
use std::io::Write;
use std::path::Path;

use aesthete_shards::{ReadOptions, Sample, ShardReader, ShardWriter};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const SAMPLES: usize = 2000;

fn samples(n: usize) -> Vec<Sample> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut noise = |len: usize| -> Vec<u8> {
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    (0..n)
        .map(|i| {
            let jpg_len = 90_000 + (i * 7919) % 20_000;
            Sample::new(format!("images/{i:08}"))
                .with("jpg", noise(jpg_len))
                .with("txt", format!("caption number {i}"))
                .with("json", format!("{{\"width\": 512, \"height\": 512, \"index\": {i}}}"))
        })
        .collect()
}

fn write(path: &Path, samples: &[Sample]) {
    let mut writer = ShardWriter::create(path).unwrap();
    for sample in samples {
        writer.write_sample(sample).unwrap();
    }
    writer.commit().unwrap();
}

/// Reads a whole shard; returns samples and member bytes so nothing is optimised away.
fn drain<R: std::io::Read>(reader: ShardReader<R>) -> (usize, usize) {
    let mut samples = 0;
    let mut bytes = 0;
    for sample in reader {
        let sample = sample.unwrap();
        samples += 1;
        bytes += sample.members().iter().map(|m| m.data.len()).sum::<usize>();
        black_box(&sample);
    }
    (samples, bytes)
}

fn read(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let tar_path = dir.path().join("bench.tar");
    let gz_path = dir.path().join("bench.tar.gz");
    let samples = samples(SAMPLES);
    write(&tar_path, &samples);
    write(&gz_path, &samples[..SAMPLES / 10]);
    drop(samples);
    let tar = std::fs::read(&tar_path).unwrap(); // also warms the page cache
    let gz_tar_len = {
        let mut decoder = flate2::read::GzDecoder::new(std::fs::File::open(&gz_path).unwrap());
        std::io::copy(&mut decoder, &mut std::io::sink()).unwrap()
    };
    let options = ReadOptions::default();
    assert_eq!(drain(ShardReader::new(&tar[..], "mem", options)).0, SAMPLES);
    let mut out = std::io::stderr();
    writeln!(out, "shard: {SAMPLES} samples, {} bytes", tar.len()).unwrap();

    let mut group = c.benchmark_group("read");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(tar.len() as u64));
    group.bench_function("memory/bytes", |b| {
        b.iter(|| drain(ShardReader::new(&tar[..], "mem", options)))
    });
    group.bench_function("file/bytes", |b| {
        b.iter(|| drain(ShardReader::open(&tar_path, options).unwrap()))
    });
    group.throughput(Throughput::Elements(SAMPLES as u64));
    group.bench_function("memory/samples", |b| {
        b.iter(|| drain(ShardReader::new(&tar[..], "mem", options)))
    });
    group.bench_function("file/samples", |b| {
        b.iter(|| drain(ShardReader::open(&tar_path, options).unwrap()))
    });
    // gzip: bytes of the decompressed tar per second; 1/10 of the samples
    group.throughput(Throughput::Bytes(gz_tar_len));
    group.bench_function("file-gzip/bytes", |b| {
        b.iter(|| drain(ShardReader::open(&gz_path, options).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, read);
criterion_main!(benches);
