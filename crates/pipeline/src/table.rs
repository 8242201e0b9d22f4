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
use arrow_array::{
    Array, ArrayRef, BooleanArray, FixedSizeListArray, Float32Array, RecordBatch, StringArray,
    UInt32Array,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::Compression;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;

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
///
/// Columns are snappy-compressed, but for the embedding values, stored PLAIN and
/// uncompressed. Float32 embedding values hardly ever repeat: the writer's dictionary
/// (which it keeps until it passes 1 MiB, then falls back to PLAIN) made 4096 rows of 768
/// values 0.6 MB (5%) bigger and a third slower to write, and snappy saved 0.2% of them
/// while reading through it cost a copy and a zeroed buffer per page.
fn open_writer(
    path: &Path,
    schema: SchemaRef,
) -> Result<(ArrowWriter<File>, Pending), ParquetError> {
    let values = ColumnPath::from(vec![columns::EMBEDDING.into(), "list".into(), "item".into()]);
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_column_dictionary_enabled(values.clone(), false)
        .set_column_compression(values, Compression::UNCOMPRESSED)
        .build();
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
    let mut reader = TableReader::open(path, ReadColumns { embedding: true }, 8192)?;
    let embedding_dim = reader.embedding_dim;
    let mut rows = Vec::new();
    while let Some(batch) = reader.next_batch()? {
        for i in 0..batch.len() {
            rows.push(stored_row(&batch.row(i)));
        }
    }
    Ok(StoredTable { rows, embedding_dim })
}

fn stored_row(row: &Row<'_>) -> StoredRow {
    let result = match row.score {
        Some(score) => SampleResult::Scored {
            size: row.size,
            score,
            embedding: row.embedding.map(<[f32]>::to_vec),
        },
        None => {
            let error = row.error.unwrap_or("not scored");
            SampleResult::Failed { size: row.size, error: SampleError::Recorded(error.to_string()) }
        }
    };
    StoredRow { key: row.key.to_string(), result }
}

/// Columns read besides `key`, `aesthetic_score`, `kept`, `error`, `width` and `height`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadColumns {
    /// The `embedding` column, when the table has one; skipped otherwise (it is nearly all
    /// of a table's bytes).
    pub embedding: bool,
}

/// A score table read a record batch at a time, so that memory is bounded by a batch, not by
/// the table. Columns are checked for their types when the table is opened; `kept`, `width`,
/// `height` and `embedding` may be absent.
pub(crate) struct TableReader {
    path: PathBuf,
    reader: ParquetRecordBatchReader,
    /// The width of the `embedding` column read, when one is.
    pub embedding_dim: Option<usize>,
}

impl TableReader {
    /// Opens the table at `path`, to be read `batch_rows` rows at a time.
    pub fn open(path: &Path, columns: ReadColumns, batch_rows: usize) -> Result<Self, Error> {
        let fail = |reason: String| Error::Table { path: path.to_path_buf(), reason };
        let file = File::open(path).map_err(|e| fail(format!("cannot open: {e}")))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| fail(format!("not a readable Parquet file: {e}")))?;
        let schema = builder.schema().clone();
        let mut roots = Vec::new();
        for (name, expected, required) in [
            (columns::KEY, DataType::Utf8, true),
            (columns::SCORE, DataType::Float32, true),
            (columns::KEPT, DataType::Boolean, false),
            (columns::ERROR, DataType::Utf8, true),
            (columns::WIDTH, DataType::UInt32, false),
            (columns::HEIGHT, DataType::UInt32, false),
        ] {
            match schema.fields().iter().position(|f| f.name() == name) {
                Some(index) => {
                    let found = schema.field(index).data_type();
                    if *found != expected {
                        return Err(fail(format!(
                            "column `{name}` is {found}; {expected} expected"
                        )));
                    }
                    roots.push(index);
                }
                None if required => {
                    return Err(fail(format!(
                        "has no `{name}` column (an aesthete score table expected)"
                    )));
                }
                None => {}
            }
        }
        let mut embedding_dim = None;
        if columns.embedding
            && let Some(index) = schema.fields().iter().position(|f| f.name() == columns::EMBEDDING)
        {
            match schema.field(index).data_type() {
                DataType::FixedSizeList(item, width) if *item.data_type() == DataType::Float32 => {
                    embedding_dim = Some(*width as usize);
                    roots.push(index)
                }
                other => {
                    return Err(fail(format!(
                        "column `{}` is {other}; fixed_size_list<float32> expected",
                        columns::EMBEDDING
                    )));
                }
            }
        }
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        let reader = builder
            .with_projection(mask)
            .with_batch_size(batch_rows.max(1))
            .build()
            .map_err(|e| fail(e.to_string()))?;
        Ok(TableReader { path: path.to_path_buf(), reader, embedding_dim })
    }

    /// The next rows, `None` after the last.
    pub fn next_batch(&mut self) -> Result<Option<Rows>, Error> {
        match self.reader.next() {
            None => Ok(None),
            Some(Err(e)) => {
                Err(Error::Table { path: self.path.clone(), reason: format!("reading rows: {e}") })
            }
            Some(Ok(batch)) => Ok(Some(Rows::new(&batch))),
        }
    }
}

/// A record batch of a score table, its columns typed (checked by [`TableReader::open`]).
pub(crate) struct Rows {
    keys: StringArray,
    scores: Float32Array,
    kept: Option<BooleanArray>,
    errors: StringArray,
    widths: Option<UInt32Array>,
    heights: Option<UInt32Array>,
    embeddings: Option<FixedSizeListArray>,
}

impl Rows {
    fn new(batch: &RecordBatch) -> Self {
        let column = |name| batch.column_by_name(name);
        let required = |name| column(name).expect("checked when the table was opened");
        Rows {
            keys: required(columns::KEY).as_string::<i32>().clone(),
            scores: required(columns::SCORE).as_primitive::<Float32Type>().clone(),
            kept: column(columns::KEPT).map(|c| c.as_boolean().clone()),
            errors: required(columns::ERROR).as_string::<i32>().clone(),
            widths: column(columns::WIDTH).map(|c| c.as_primitive::<UInt32Type>().clone()),
            heights: column(columns::HEIGHT).map(|c| c.as_primitive::<UInt32Type>().clone()),
            embeddings: column(columns::EMBEDDING).map(|c| c.as_fixed_size_list().clone()),
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Row `i` (below [`Rows::len`]).
    pub fn row(&self, i: usize) -> Row<'_> {
        let size = match (&self.widths, &self.heights) {
            (Some(w), Some(h)) if w.is_valid(i) && h.is_valid(i) => Some((w.value(i), h.value(i))),
            _ => None,
        };
        let embedding = self.embeddings.as_ref().filter(|list| list.is_valid(i)).map(|list| {
            let dim = list.value_length() as usize;
            let start = list.value_offset_at(i);
            &list.values().as_primitive::<Float32Type>().values()[start..start + dim]
        });
        Row {
            key: self.keys.value(i),
            score: self.scores.is_valid(i).then(|| self.scores.value(i)),
            kept: self.kept.as_ref().is_some_and(|k| k.is_valid(i) && k.value(i)),
            error: self.errors.is_valid(i).then(|| self.errors.value(i)),
            size,
            embedding,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Key, score, error, embedding.
    type Written = (String, Option<f32>, Option<String>, Option<Vec<f32>>);

    fn rows() -> Vec<Written> {
        (0..7)
            .map(|i| {
                let key = format!("k{i}");
                if i % 3 == 2 {
                    (key, None, Some(format!("failure {i}")), None)
                } else {
                    (key, Some(i as f32 * 0.5), None, Some(vec![i as f32, -1.0, 0.25]))
                }
            })
            .collect()
    }

    fn write(path: &Path) {
        let mut table = TableBuilder::new(Some(3)).streaming(path, 3);
        for (i, (key, score, error, embedding)) in rows().iter().enumerate() {
            table.push(&Row {
                key,
                score: *score,
                kept: i % 2 == 0,
                error: error.as_deref(),
                size: (i != 4).then_some((10 + i as u32, 20)),
                embedding: embedding.as_deref(),
            });
        }
        table.write(path).unwrap();
    }

    /// Rows read in batches that do not line up with the written row groups are the rows
    /// written; without the embedding column asked for, none is read.
    #[test]
    fn tables_read_back_in_batches_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.parquet");
        write(&path);
        for (embedding, batch_rows) in [(true, 2), (false, 5), (true, 100)] {
            let mut reader =
                TableReader::open(&path, ReadColumns { embedding }, batch_rows).unwrap();
            let mut got = Vec::new();
            while let Some(batch) = reader.next_batch().unwrap() {
                assert!(batch.len() <= batch_rows);
                for i in 0..batch.len() {
                    let row = batch.row(i);
                    got.push((
                        row.key.to_string(),
                        row.score,
                        row.error.map(str::to_string),
                        row.embedding.map(<[f32]>::to_vec),
                        row.kept,
                        row.size,
                    ));
                }
            }
            let want: Vec<_> = rows()
                .into_iter()
                .enumerate()
                .map(|(i, (key, score, error, emb))| {
                    let size = (i != 4).then_some((10 + i as u32, 20));
                    (key, score, error, emb.filter(|_| embedding), i % 2 == 0, size)
                })
                .collect();
            assert_eq!(got, want, "embedding {embedding}, {batch_rows} rows a batch");
        }
        let stored = read(&path).unwrap();
        assert_eq!(stored.embedding_dim, Some(3));
        let stored = stored.rows;
        assert_eq!(stored.len(), 7);
        assert_eq!(stored[2].result.score(), None);
        assert_eq!(stored[3].result.score(), Some(1.5));
    }

    /// A Parquet file that is not a score table is refused, naming the column.
    #[test]
    fn other_tables_are_refused_by_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.parquet");
        let schema = Arc::new(Schema::new(vec![
            Field::new(columns::KEY, DataType::Int64, false),
            Field::new(columns::SCORE, DataType::Float32, true),
            Field::new(columns::ERROR, DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(arrow_array::Int64Array::from(vec![1])),
                Arc::new(Float32Array::from(vec![Some(1.0)])),
                Arc::new(StringArray::from(vec![None::<&str>])),
            ],
        )
        .unwrap();
        let (mut writer, pending) = open_writer(&path, schema).unwrap();
        writer.write(&batch).unwrap();
        pending.commit(writer.into_inner().unwrap()).unwrap();
        let err = TableReader::open(&path, ReadColumns { embedding: false }, 10).err().unwrap();
        assert!(err.to_string().contains("column `key` is Int64; Utf8 expected"), "{err}");
        let missing = TableReader::open(
            &dir.path().join("none.parquet"),
            ReadColumns { embedding: false },
            10,
        );
        assert!(missing.err().unwrap().to_string().contains("none.parquet: cannot open"));
    }
}
