//! The per-shard Parquet table: one row per input sample, written as samples arrive and read
//! back as [`SampleResult`]s.
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use aesthete_atomic::Pending;

use arrow_array::builder::{
    BooleanBuilder, FixedSizeListBuilder, Float32Builder, StringBuilder, UInt32Builder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, UInt32Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::errors::ParquetError;
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
///
/// By default the whole table is kept in memory and written by [`TableBuilder::write`] as one
/// record batch. [`TableBuilder::streaming`] instead hands every `rows` rows to the Parquet
/// writer as they come (into the temporary file that [`TableBuilder::write`] renames), so a
/// table of millions of rows costs memory for one batch of rows and the encoded row group.
pub(crate) struct TableBuilder {
    key: StringBuilder,
    score: Float32Builder,
    kept: BooleanBuilder,
    error: StringBuilder,
    width: UInt32Builder,
    height: UInt32Builder,
    embedding: Option<(FixedSizeListBuilder<Float32Builder>, usize)>,
    stream: Option<Stream>,
}

/// A table written as it is filled.
struct Stream {
    path: PathBuf,
    /// Rows per record batch handed to the writer.
    rows: usize,
    /// Rows in the builders, not yet handed on.
    buffered: usize,
    writer: Option<(ArrowWriter<File>, Pending)>,
    /// The first write that failed; the table is not committed.
    error: Option<ParquetError>,
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
            stream: None,
        }
    }

    /// Writes the table to `path` as it is filled, `rows` rows at a time (at least 1).
    pub fn streaming(mut self, path: &Path, rows: usize) -> Self {
        self.stream = Some(Stream {
            path: path.to_path_buf(),
            rows: rows.max(1),
            buffered: 0,
            writer: None,
            error: None,
        });
        self
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
        if let Some(stream) = &mut self.stream {
            stream.buffered += 1;
            if stream.buffered >= stream.rows
                && let Err(e) = self.flush()
            {
                let stream = self.stream.as_mut().expect("streaming");
                stream.error.get_or_insert(e);
            }
        }
    }

    /// Hands the buffered rows to the streaming writer, opening it on first use.
    fn flush(&mut self) -> Result<(), ParquetError> {
        let batch = self.take_batch()?;
        let stream = self.stream.as_mut().expect("streaming");
        stream.buffered = 0;
        if stream.error.is_some() {
            return Ok(());
        }
        if stream.writer.is_none() {
            stream.writer = Some(open_writer(&stream.path, batch.schema())?);
        }
        let (writer, _) = stream.writer.as_mut().expect("just opened");
        writer.write(&batch)
    }

    /// The schema of the table.
    fn schema(&self) -> SchemaRef {
        let mut fields = vec![
            Field::new(columns::KEY, DataType::Utf8, false),
            Field::new(columns::SCORE, DataType::Float32, true),
            Field::new(columns::KEPT, DataType::Boolean, false),
            Field::new(columns::ERROR, DataType::Utf8, true),
            Field::new(columns::WIDTH, DataType::UInt32, true),
            Field::new(columns::HEIGHT, DataType::UInt32, true),
        ];
        if let Some((_, dim)) = &self.embedding {
            let item = Arc::new(Field::new("item", DataType::Float32, false));
            fields.push(Field::new(
                columns::EMBEDDING,
                DataType::FixedSizeList(item, *dim as i32),
                true,
            ));
        }
        Arc::new(Schema::new(fields))
    }

    /// The rows pushed since the last batch, as one record batch; the builders start empty.
    fn take_batch(&mut self) -> Result<RecordBatch, ParquetError> {
        let schema = self.schema();
        let mut arrays: Vec<ArrayRef> = vec![
            Arc::new(self.key.finish()),
            Arc::new(self.score.finish()),
            Arc::new(self.kept.finish()),
            Arc::new(self.error.finish()),
            Arc::new(self.width.finish()),
            Arc::new(self.height.finish()),
        ];
        if let Some((list, _)) = &mut self.embedding {
            arrays.push(Arc::new(list.finish()));
        }
        Ok(RecordBatch::try_new(schema, arrays)?)
    }

    /// Writes the table to `path` atomically ([`aesthete_atomic`]); a streaming table finishes
    /// the file it has been writing (`path` is the one it was given).
    pub fn write(mut self, path: &Path) -> Result<(), ParquetError> {
        if self.stream.is_some() {
            self.flush()?;
            let stream = self.stream.take().expect("streaming");
            if let Some(error) = stream.error {
                return Err(error);
            }
            let (writer, pending) = stream.writer.expect("flush opens the writer");
            pending.commit(writer.into_inner()?)?;
            return Ok(());
        }
        let batch = self.take_batch()?;
        let (mut writer, pending) = open_writer(path, batch.schema())?;
        writer.write(&batch)?;
        pending.commit(writer.into_inner()?)?;
        Ok(())
    }
}

/// A Parquet writer into the temporary file that becomes `path`.
fn open_writer(
    path: &Path,
    schema: SchemaRef,
) -> Result<(ArrowWriter<File>, Pending), ParquetError> {
    let props = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
    let (file, pending) = aesthete_atomic::AtomicFile::create(path)?.into_parts();
    Ok((ArrowWriter::try_new(file, schema, Some(props))?, pending))
}

/// A row read back: the sample's key and its result as recorded.
pub(crate) struct StoredRow {
    pub key: String,
    pub result: SampleResult,
}

/// A table read back whole.
pub(crate) struct StoredTable {
    pub rows: Vec<StoredRow>,
    /// The width of its `embedding` column, when it has one.
    pub embedding_dim: Option<usize>,
}

/// Every row of the table at `path`, in order.
pub(crate) fn read(path: &Path) -> Result<StoredTable, Error> {
    let err = |source: Box<dyn std::error::Error + Send + Sync>| Error::ScoreTable {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(|e| err(e.into()))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| err(e.into()))?;
    let embedding_dim = match builder.schema().field_with_name(columns::EMBEDDING) {
        Ok(field) => match field.data_type() {
            DataType::FixedSizeList(_, width) => Some(*width as usize),
            other => {
                return Err(err(
                    format!("its embedding column is {other}, not a fixed-size list").into()
                ));
            }
        },
        Err(_) => None,
    };
    let reader = builder.build().map_err(|e| err(e.into()))?;
    let mut rows = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| err(e.into()))?;
        read_batch(&batch, &mut rows).map_err(|e| err(e.into()))?;
    }
    Ok(StoredTable { rows, embedding_dim })
}

fn read_batch(batch: &RecordBatch, rows: &mut Vec<StoredRow>) -> Result<(), String> {
    let column =
        |name: &str| batch.column_by_name(name).ok_or_else(|| format!("it has no column {name}"));
    let wrong = |name: &str| format!("its column {name} is not of the type aesthete writes");
    let string = |name| column(name)?.as_string_opt::<i32>().ok_or_else(|| wrong(name));
    let uint = |name| column(name)?.as_primitive_opt::<UInt32Type>().ok_or_else(|| wrong(name));
    let keys = string(columns::KEY)?;
    let scores = column(columns::SCORE)?
        .as_primitive_opt::<Float32Type>()
        .ok_or_else(|| wrong(columns::SCORE))?;
    let errors = string(columns::ERROR)?;
    let widths = uint(columns::WIDTH)?;
    let heights = uint(columns::HEIGHT)?;
    let embeddings = match batch.column_by_name(columns::EMBEDDING) {
        None => None,
        Some(c) => match c.as_fixed_size_list_opt() {
            Some(list) if list.values().as_primitive_opt::<Float32Type>().is_some() => Some(list),
            _ => return Err(wrong(columns::EMBEDDING)),
        },
    };
    for i in 0..batch.num_rows() {
        let size = (widths.is_valid(i) && heights.is_valid(i))
            .then(|| (widths.value(i), heights.value(i)));
        let result = if scores.is_valid(i) {
            SampleResult::Scored {
                size,
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
