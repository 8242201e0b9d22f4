//! Reads one WebDataset shard and lists its samples: `cargo run -p aesthete-shards --example
//! read_shard [SHARD.tar]` (default: a fixture shard).
use aesthete_shards::{ReadOptions, ShardReader};

fn main() -> Result<(), aesthete_shards::Error> {
    let path = std::env::args().nth(1).unwrap_or_else(|| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/pipeline/shards/good-000000.tar")
            .into()
    });
    for sample in ShardReader::open(&path, ReadOptions::default())? {
        let sample = sample?;
        let members: Vec<&str> = sample.members().iter().map(|m| m.extension()).collect();
        println!("{} ({} bytes): {}", sample.key(), sample.data_len(), members.join(", "));
    }
    Ok(())
}
