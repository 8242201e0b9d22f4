//! Shard read throughput through `Stores::open`: a local file against the same bytes from an
//! S3 server on loopback (s3s over a directory, signed requests, in this process).
//!
//! `cargo bench -p aesthete-store --features testing --bench read`. Each iteration streams a
//! 64 MiB object to the end in 1 MiB reads, as the shard reader consumes it.
use std::io::Read;

use aesthete_store::testing::S3Server;
use aesthete_store::{Location, Stores};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const SIZE: usize = 64 << 20;

fn drain(stores: &Stores, location: &Location, buf: &mut [u8]) -> usize {
    let mut reader = stores.open(location).unwrap();
    let mut total = 0;
    loop {
        let n = reader.read(buf).unwrap();
        if n == 0 {
            return total;
        }
        total += n;
    }
}

fn read(c: &mut Criterion) {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("bucket")).unwrap();
    let bytes: Vec<u8> = (0..SIZE).map(|i| (i * 31 % 251) as u8).collect();
    // s3s-fs keeps each object as a file: the same bytes serve both sides.
    let file = root.path().join("bucket/shard.tar");
    std::fs::write(&file, &bytes).unwrap();
    let server = S3Server::start(root.path()).unwrap();
    let s3 = Stores::with_options(server.options()).unwrap();
    let local = Stores::with_options(Vec::new()).unwrap();
    let mut buf = vec![0u8; 1 << 20];

    let mut group = c.benchmark_group("store_read");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(SIZE as u64));
    let file = Location::Local(file);
    group.bench_function(BenchmarkId::new("local", "64MiB"), |b| {
        b.iter(|| assert_eq!(drain(&local, &file, &mut buf), SIZE))
    });
    let url = Location::parse("s3://bucket/shard.tar");
    group.bench_function(BenchmarkId::new("s3_loopback", "64MiB"), |b| {
        b.iter(|| assert_eq!(drain(&s3, &url, &mut buf), SIZE))
    });
    group.finish();
}

criterion_group!(benches, read);
criterion_main!(benches);
