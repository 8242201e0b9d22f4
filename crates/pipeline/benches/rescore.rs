//! Embeddings/s of `aesthete rescore` from aesthete's own Parquet tables (`--save-embeddings`:
//! 768 float32 values per row, stored PLAIN and uncompressed), scored by a 768-d linear head.
//!
//! `cargo bench -p aesthete-pipeline --bench rescore`. Two tables of 32768 rows each (random
//! unit vectors, about 100 MB apiece) are rescored with one thread per table, so a 2-core
//! machine runs both cores; each iteration reads both files whole and writes both score
//! tables (`--overwrite`). Target: at least a million embeddings/s on 2 cores.
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aesthete_pipeline::{AestheticHead, NoProgress, RescoreConfig};
use arrow_array::builder::{FixedSizeListBuilder, Float32Builder};
use arrow_array::{ArrayRef, BooleanArray, Float32Array, RecordBatch, StringArray, UInt32Array};
use arrow_schema::{DataType, Field, Schema};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

const DIM: usize = 768;
const ROWS_PER_FILE: usize = 32768;
const FILES: usize = 2;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// A table laid out as `aesthete score --save-embeddings` writes it (`table::open_writer`'s
/// properties: snappy, but the embedding values PLAIN and uncompressed), `rows` rows,
/// written in blocks of 4096 rows.
fn write_table(path: &Path, rows: usize, seed: u64) {
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let schema = Arc::new(Schema::new(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("aesthetic_score", DataType::Float32, true),
        Field::new("kept", DataType::Boolean, false),
        Field::new("error", DataType::Utf8, true),
        Field::new("width", DataType::UInt32, true),
        Field::new("height", DataType::UInt32, true),
        Field::new("embedding", DataType::FixedSizeList(item.clone(), DIM as i32), true),
    ]));
    let values = ColumnPath::from(vec!["embedding".into(), "list".into(), "item".into()]);
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_column_dictionary_enabled(values.clone(), false)
        .set_column_compression(values, Compression::UNCOMPRESSED)
        .build();
    let mut writer =
        ArrowWriter::try_new(File::create(path).unwrap(), schema.clone(), Some(props)).unwrap();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    for start in (0..rows).step_by(4096) {
        let n = 4096.min(rows - start);
        let mut list =
            FixedSizeListBuilder::new(Float32Builder::with_capacity(n * DIM), DIM as i32)
                .with_field(item.clone());
        let mut row = vec![0f32; DIM];
        for _ in 0..n {
            row.iter_mut().for_each(|v| *v = next());
            let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
            row.iter_mut().for_each(|v| *v /= norm);
            list.values().append_slice(&row);
            list.append(true);
        }
        let arrays: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values((start..start + n).map(|i| format!("{i:09}")))),
            Arc::new(Float32Array::from(vec![5.0; n])),
            Arc::new(BooleanArray::from(vec![true; n])),
            Arc::new(StringArray::from(vec![None::<&str>; n])),
            Arc::new(UInt32Array::from(vec![640; n])),
            Arc::new(UInt32Array::from(vec![480; n])),
            Arc::new(list.finish()),
        ];
        writer.write(&RecordBatch::try_new(schema.clone(), arrays).unwrap()).unwrap();
    }
    writer.close().unwrap();
}

fn rescore(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let inputs: Vec<String> = (0..FILES)
        .map(|i| {
            let path = dir.path().join(format!("table-{i}.parquet"));
            write_table(&path, ROWS_PER_FILE, i as u64 + 1);
            path.display().to_string()
        })
        .collect();
    let head = AestheticHead::load(&fixtures().join("pipeline/head-768.safetensors")).unwrap();
    let config =
        RescoreConfig::new(inputs, dir.path().join("out")).unwrap().threads(FILES).overwrite(true);

    let mut group = c.benchmark_group("rescore");
    group.sample_size(10);
    let total = FILES * ROWS_PER_FILE;
    group.throughput(Throughput::Elements(total as u64));
    group.bench_with_input(
        BenchmarkId::new("parquet_f32_2_threads", total),
        &config,
        |b, config| {
            b.iter(|| {
                let summary = aesthete_pipeline::rescore(config, &head, &NoProgress).unwrap();
                assert_eq!(summary.images, total as u64);
            })
        },
    );
    group.finish();
}

criterion_group!(benches, rescore);
criterion_main!(benches);
