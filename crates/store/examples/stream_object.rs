//! Streams one object of `--mib` MiB (default 1024) from an S3 server on loopback to the end,
//! and prints `{"bytes", "seconds"}`: `cargo xtask bench` runs it to read the process's peak
//! RSS while a large shard streams (the in-process server's buffers included).
//!
//! `cargo run --release -p aesthete-store --features testing --example stream_object -- 1024`
use std::io::Read;
use std::time::Instant;

use aesthete_store::testing::S3Server;
use aesthete_store::{Location, Stores};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: usize = std::env::args().nth(1).map_or(Ok(1024), |a| a.parse())?;
    let root = tempfile::tempdir()?;
    std::fs::create_dir(root.path().join("bucket"))?;
    // Written a MiB at a time, so that making the object does not raise the peak.
    let mut file = std::fs::File::create(root.path().join("bucket/big.tar"))?;
    let block: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    for _ in 0..mib {
        std::io::Write::write_all(&mut file, &block)?;
    }
    drop(file);
    let server = S3Server::start(root.path())?;
    let stores = Stores::with_options(server.options())?;
    let started = Instant::now();
    let mut reader = stores.open(&Location::parse("s3://bucket/big.tar"))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        bytes += n as u64;
    }
    println!("{{\"bytes\": {bytes}, \"seconds\": {:.3}}}", started.elapsed().as_secs_f64());
    Ok(())
}
