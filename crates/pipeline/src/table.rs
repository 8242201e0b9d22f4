//! The per-shard Parquet table: one row per input sample, written as samples arrive and read
//! back as [`SampleResult`]s.
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, FixedSizeListBuilder, Float32Builder, StringBuilder, UInt32Builder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, UInt32Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use crate::Error;
use crate::record::{SampleError, SampleResult};

/// Column names, as documented in the README.
pub(crate) mod columns {
    pub const KEY: &str = "key";
    pub const SCORE: &str = "aesthetic_score";
    pub const KEPT: &str = "kept";
    pub const ERROR: &str = "error";
    pub const WIDTH: &str = "width";
    pub const HEIGHT: &str = "height";
    pub const EMBEDDING: &str = "embedding";
}

/// One sample's row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row<'a> {
    pub key: &'a str,
    pub score: Option<f32>,
    pub kept: bool,
    pub error: Option<&'a str>,
    pub size: Option<(u32, u32)>,
    pub embedding: Option<&'a [f32]>,
}

/// Builds a shard's table column by column as samples arrive.
pub(crate) struct TableBuilder {
    key: StringBuilder,
    score: Float32Builder,
    kept: BooleanBuilder,
    error: StringBuilder,
    width: UInt32Builder,
    height: UInt32Builder,
    embedding: Option<(FixedSizeListBuilder<Float32Builder>, usize)>,
}

impl TableBuilder {
    /// A table; with `embedding_dim`, an `embedding` column of that size.
    pub fn new(embedding_dim: Option<usize>) -> Self {
        TableBuilder {
            key: StringBuilder::new(),
            score: Float32Builder::new(),
            kept: BooleanBuilder::new(),
            error: StringBuilder::new(),
            width: UInt32Builder::new(),
            height: UInt32Builder::new(),
            embedding: embedding_dim.map(|dim| {
                let values = Float32Builder::with_capacity(dim * 64);
                let field = Arc::new(Field::new("item", DataType::Float32, false));
                (FixedSizeListBuilder::new(values, dim as i32).with_field(field), dim)
            }),
        }
    }

    pub fn push(&mut self, row: &Row<'_>) {
        self.key.append_value(row.key);
        self.score.append_option(row.score);
        self.kept.append_value(row.kept);
        self.error.append_option(row.error);
        self.width.append_option(row.size.map(|s| s.0));
        self.height.append_option(row.size.map(|s| s.1));
        if let Some((list, dim)) = &mut self.embedding {
            match row.embedding {
                Some(values) => {
                    debug_assert_eq!(values.len(), *dim);
                    list.values().append_slice(values);
                    list.append(true);
                }
                None => {
                    list.values().append_nulls(*dim);
                    list.append(false);
                }
            }
        }
    }

    /// Writes the table to `path` atomically ([`aesthete_atomic`]).
    pub fn write(mut self, path: &Path) -> Result<(), parquet::errors::ParquetError> {
        let mut fields = vec![
            Field::new(columns::KEY, DataType::Utf8, false),
            Field::new(columns::SCORE, DataType::Float32, true),
            Field::new(columns::KEPT, DataType::Boolean, false),
            Field::new(columns::ERROR, DataType::Utf8, true),
            Field::new(columns::WIDTH, DataType::UInt32, true),
            Field::new(columns::HEIGHT, DataType::UInt32, true),
        ];
        let mut arrays: Vec<ArrayRef> = vec![
            Arc::new(self.key.finish()),
            Arc::new(self.score.finish()),
            Arc::new(self.kept.finish()),
            Arc::new(self.error.finish()),
            Arc::new(self.width.finish()),
            Arc::new(self.height.finish()),
        ];
        if let Some((list, dim)) = &mut self.embedding {
            let item = Arc::new(Field::new("item", DataType::Float32, false));
            fields.push(Field::new(
                columns::EMBEDDING,
                DataType::FixedSizeList(item, *dim as i32),
                true,
            ));
            arrays.push(Arc::new(list.finish()));
        }
        let schema = Arc::new(Schema::new(fields));
        let batch = RecordBatch::try_new(schema.clone(), arrays)?;
        let props = WriterProperties::builder().set_compression(Compression::SNAPPY).build();

        let (file, pending) = aesthete_atomic::AtomicFile::create(path)?.into_parts();
        let mut writer = ArrowWriter::try_new(file, schema, Some(props))?;
        writer.write(&batch)?;
        pending.commit(writer.into_inner()?)?;
        Ok(())
    }
}

/// A row read back: the sample's key and its result as recorded.
pub(crate) struct StoredRow {
    pub key: String,
    pub result: SampleResult,
}

/// Every row of the table at `path`, in order.
pub(crate) fn read(path: &Path) -> Result<Vec<StoredRow>, Error> {
    let err = |e: parquet::errors::ParquetError| Error::Output {
        path: path.to_path_buf(),
        source: std::io::Error::other(e),
    };
    let file = File::open(path).map_err(|source| Error::Output { path: path.into(), source })?;
    let reader =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(err)?.build().map_err(err)?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| err(e.into()))?;
        read_batch(&batch, &mut rows, path)?;
    }
    Ok(rows)
}

fn read_batch(batch: &RecordBatch, rows: &mut Vec<StoredRow>, path: &Path) -> Result<(), Error> {
    let column = |name: &str| {
        batch.column_by_name(name).ok_or_else(|| Error::Output {
            path: path.to_path_buf(),
            source: std::io::Error::other(format!("score table has no column {name}")),
        })
    };
    let keys = column(columns::KEY)?.as_string::<i32>();
    let scores = column(columns::SCORE)?.as_primitive::<Float32Type>();
    let errors = column(columns::ERROR)?.as_string::<i32>();
    let widths = column(columns::WIDTH)?.as_primitive::<UInt32Type>();
    let heights = column(columns::HEIGHT)?.as_primitive::<UInt32Type>();
    let embeddings = batch.column_by_name(columns::EMBEDDING).map(|c| c.as_fixed_size_list());
    for i in 0..batch.num_rows() {
        let size = (widths.is_valid(i) && heights.is_valid(i))
            .then(|| (widths.value(i), heights.value(i)));
        let result = if scores.is_valid(i) {
            SampleResult::Scored {
                size: size.unwrap_or((0, 0)),
                score: scores.value(i),
                embedding: embeddings
                    .filter(|list| list.is_valid(i))
                    .map(|list| list.value(i).as_primitive::<Float32Type>().values().to_vec()),
            }
        } else {
            let error = if errors.is_valid(i) { errors.value(i) } else { "not scored" };
            SampleResult::Failed { size, error: SampleError::Recorded(error.to_string()) }
        };
        rows.push(StoredRow { key: keys.value(i).to_string(), result });
    }
    Ok(())
}
