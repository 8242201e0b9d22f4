//! Where stored embeddings come from, each read a batch of rows at a time so that memory is
//! bounded by a batch, not by the file:
//!
//! - `NAME.parquet`: an aesthete score table with an `embedding` column (`--save-embeddings`);
//!   its `width`, `height` and, for rows without an embedding, `error` carry over;
//! - `img_emb/img_emb_N.npy` with `metadata/metadata_N.parquet` beside `img_emb/`: the
//!   layout clip-retrieval writes, keys from a metadata column (`key` by default);
//! - `NAME.npy` with `NAME.keys.txt` beside it, one key per line;
//! - `NAME.npz` holding arrays `embeddings` (or the only array besides `keys`) and `keys`.
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float16Type, Float32Type, Int32Type, Int64Type, UInt32Type, UInt64Type};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::DataType;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use super::float_lists::{FloatLists, ListLayout, ListRow};
use super::npy::{self, FloatRows, StringRows};
use crate::table::columns;

/// Rows read from a source: keys, values (`dim` per row; zeros for a row with a problem) and
/// what the source says about each row.
pub(crate) struct Batch {
    pub dim: usize,
    pub values: Vec<f32>,
    keys: String,
    key_ends: Vec<usize>,
    pub rows: Vec<RowInfo>,
}

/// What a source knows of one row besides its values.
#[derive(Debug, Clone, Default)]
pub(crate) struct RowInfo {
    /// Width and height of the source image, from an aesthete table.
    pub size: Option<(u32, u32)>,
    /// Why the row cannot be scored (no embedding, a wrong width), found while reading.
    pub problem: Option<String>,
}

impl Batch {
    pub fn new(dim: usize) -> Self {
        Batch {
            dim,
            values: Vec::new(),
            keys: String::new(),
            key_ends: Vec::new(),
            rows: Vec::new(),
        }
    }

    pub fn clear(&mut self) {
        self.values.clear();
        self.keys.clear();
        self.key_ends.clear();
        self.rows.clear();
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn key(&self, row: usize) -> &str {
        let start = if row == 0 { 0 } else { self.key_ends[row - 1] };
        &self.keys[start..self.key_ends[row]]
    }

    fn push_key(&mut self, key: &str) {
        self.keys.push_str(key);
        self.key_ends.push(self.keys.len());
    }

    /// A row that cannot be scored: zero values in its place.
    fn push_problem(&mut self, size: Option<(u32, u32)>, problem: String) {
        self.values.resize(self.values.len() + self.dim, 0.0);
        self.rows.push(RowInfo { size, problem: Some(problem) });
    }
}

/// An open source of embeddings.
pub(crate) enum Source {
    Table(TableSource),
    Arrays { embeddings: FloatRows, keys: Keys },
}

impl Source {
    /// Opens `path`, refusing it when its embeddings are not `dim` wide or its keys do not
    /// match its rows. The error names what is wrong; the caller adds the file.
    pub fn open(
        path: &Path,
        dim: usize,
        key_column: &str,
        batch_rows: usize,
    ) -> Result<Self, String> {
        let extension =
            path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        let source = match extension.as_str() {
            "parquet" => Source::Table(TableSource::open(path, dim, batch_rows)?),
            "npy" => {
                let mut file = open(path)?;
                let header = npy::read_header(&mut file)?;
                let embeddings = FloatRows::new(&header, Box::new(BufReader::new(file)))?;
                let keys = npy_keys(path, key_column, batch_rows)?;
                Source::Arrays { embeddings, keys }
            }
            "npz" => npz(path)?,
            _ => {
                return Err(
                    "not an embeddings file (.parquet, .npy with its keys, or .npz expected)"
                        .into(),
                );
            }
        };
        if let Source::Arrays { embeddings, keys } = &source {
            if embeddings.dim() != dim {
                return Err(dim_mismatch(embeddings.dim(), dim));
            }
            if let Some(count) = keys.count()
                && count != embeddings.rows_left()
            {
                return Err(format!(
                    "{} has {count} keys for {} embeddings",
                    keys.describe(),
                    embeddings.rows_left()
                ));
            }
        }
        Ok(source)
    }

    /// Appends up to `max` rows to `batch`; returns how many (0 at the end). On an error the
    /// batch may hold part of the rows; they are dropped.
    pub fn read(&mut self, batch: &mut Batch, max: usize) -> Result<usize, String> {
        match self {
            Source::Table(table) => table.read(batch, max),
            Source::Arrays { embeddings, keys } => {
                let rows = embeddings.read(max, &mut batch.values)?;
                keys.read(rows, batch)?;
                batch.rows.resize(batch.rows.len() + rows, RowInfo::default());
                if rows == 0 && !keys.at_end()? {
                    return Err(format!(
                        "{} has more keys than there are embeddings",
                        keys.describe()
                    ));
                }
                Ok(rows)
            }
        }
    }
}

fn dim_mismatch(found: usize, dim: usize) -> String {
    format!("embeddings are {found}-d but the aesthetic head takes {dim}-d")
}

fn open(path: &Path) -> Result<File, String> {
    File::open(path).map_err(|e| format!("cannot open: {e}"))
}

/// The keys of a bare `.npy`: clip-retrieval's metadata when the file is
/// `img_emb/img_emb_N.npy` and `metadata/metadata_N.parquet` exists, else `NAME.keys.txt`.
fn npy_keys(path: &Path, key_column: &str, batch_rows: usize) -> Result<Keys, String> {
    if let Some(metadata) = clip_retrieval_metadata(path).filter(|m| m.is_file()) {
        return Keys::column(&metadata, key_column, batch_rows);
    }
    let list = path.with_extension("keys.txt");
    if list.is_file() {
        let file = File::open(&list).map_err(|e| format!("cannot open {}: {e}", list.display()))?;
        return Ok(Keys::Lines { path: list, lines: BufReader::new(file), line: String::new() });
    }
    let mut expected = vec![list.display().to_string()];
    if let Some(metadata) = clip_retrieval_metadata(path) {
        expected.insert(0, metadata.display().to_string());
    }
    Err(format!("no keys for it: expected {}", expected.join(" or ")))
}

/// `.../img_emb/img_emb_N.npy` → `.../metadata/metadata_N.parquet`.
pub(crate) fn clip_retrieval_metadata(npy: &Path) -> Option<PathBuf> {
    let dir = npy.parent()?;
    if dir.file_name()? != "img_emb" {
        return None;
    }
    let number = npy.file_stem()?.to_str()?.strip_prefix("img_emb_")?;
    Some(dir.parent()?.join("metadata").join(format!("metadata_{number}.parquet")))
}

/// An `.npz`: a zip of `.npy` arrays, each stored or deflated.
fn npz(path: &Path) -> Result<Source, String> {
    let mut archive = zip::ZipArchive::new(open(path)?)
        .map_err(|e| format!("not a readable .npz (zip) archive: {e}"))?;
    let names: Vec<String> =
        archive.file_names().filter_map(|n| n.ok()).map(|n| n.into_owned()).collect();
    let keys_name = "keys.npy";
    let embeddings_name = if names.iter().any(|n| n == "embeddings.npy") {
        "embeddings.npy".to_string()
    } else {
        match names.iter().filter(|n| *n != keys_name).collect::<Vec<_>>()[..] {
            [only] => only.clone(),
            _ => {
                return Err(format!(
                    "holds arrays {names:?}: an array `embeddings` (or only one besides `keys`) expected"
                ));
            }
        }
    };
    if !names.iter().any(|n| n == keys_name) {
        return Err(format!("holds arrays {names:?}: an array `keys` is expected"));
    }
    let mut member = |name: &str| -> Result<Box<dyn Read + Send>, String> {
        let entry = archive.by_name(name).map_err(|e| format!("member {name}: {e}"))?;
        let (start, size, method) =
            (entry.data_start(), entry.compressed_size(), entry.compression());
        drop(entry);
        let start = start.ok_or_else(|| format!("member {name}: no data offset"))?;
        let mut file = open(path)?;
        file.seek(SeekFrom::Start(start)).map_err(|e| format!("member {name}: {e}"))?;
        let raw = BufReader::new(file).take(size);
        match method {
            zip::CompressionMethod::Stored => Ok(Box::new(raw)),
            m if m == zip::CompressionMethod::DEFLATE => {
                Ok(Box::new(BufReader::new(flate2::read::DeflateDecoder::new(raw))))
            }
            other => Err(format!(
                "member {name} is compressed with {other:?}; stored or deflated expected"
            )),
        }
    };
    let mut data = member(&embeddings_name)?;
    let header = npy::read_header(&mut data).map_err(|e| format!("{embeddings_name}: {e}"))?;
    let embeddings =
        FloatRows::new(&header, data).map_err(|e| format!("{embeddings_name}: {e}"))?;
    let mut data = member(keys_name)?;
    let header = npy::read_header(&mut data).map_err(|e| format!("{keys_name}: {e}"))?;
    let keys = StringRows::new(&header, data).map_err(|e| format!("{keys_name}: {e}"))?;
    Ok(Source::Arrays { embeddings, keys: Keys::Npy(keys) })
}

/// The keys of an array source.
pub(crate) enum Keys {
    /// One key per line.
    Lines { path: PathBuf, lines: BufReader<File>, line: String },
    /// A string array (`keys` of an `.npz`).
    Npy(StringRows),
    /// A Parquet column (clip-retrieval metadata).
    Column {
        path: PathBuf,
        name: String,
        reader: ParquetRecordBatchReader,
        rows: usize,
        current: Option<ArrayRef>,
        at: usize,
    },
}

impl Keys {
    fn column(path: &Path, name: &str, batch_rows: usize) -> Result<Self, String> {
        let shown = path.display();
        let file = File::open(path).map_err(|e| format!("cannot open {shown}: {e}"))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| format!("{shown} is not a readable Parquet file: {e}"))?;
        let Some(index) = builder.schema().fields().iter().position(|f| f.name() == name) else {
            let names: Vec<_> =
                builder.schema().fields().iter().map(|f| f.name().clone()).collect();
            return Err(format!(
                "{shown} has no key column {name:?} (columns: {})",
                names.join(", ")
            ));
        };
        let data_type = builder.schema().field(index).data_type().clone();
        if !key_type_supported(&data_type) {
            return Err(format!(
                "{shown}: key column {name:?} is {data_type}; strings or integers expected"
            ));
        }
        let rows = builder.metadata().file_metadata().num_rows().max(0) as usize;
        let mask = ProjectionMask::roots(builder.parquet_schema(), [index]);
        let reader = builder
            .with_projection(mask)
            .with_batch_size(batch_rows.max(1))
            .build()
            .map_err(|e| format!("{shown}: {e}"))?;
        Ok(Keys::Column {
            path: path.to_path_buf(),
            name: name.to_string(),
            reader,
            rows,
            current: None,
            at: 0,
        })
    }

    /// How many keys there are, when known before reading them.
    fn count(&self) -> Option<usize> {
        match self {
            Keys::Lines { .. } => None,
            Keys::Npy(rows) => Some(rows.rows_left()),
            Keys::Column { rows, .. } => Some(*rows),
        }
    }

    fn describe(&self) -> String {
        match self {
            Keys::Lines { path, .. } => format!("key list {}", path.display()),
            Keys::Npy(_) => "array `keys`".to_string(),
            Keys::Column { path, name, .. } => format!("column {name:?} of {}", path.display()),
        }
    }

    /// Appends the next `count` keys to `batch`.
    fn read(&mut self, count: usize, batch: &mut Batch) -> Result<(), String> {
        let describe = self.describe();
        match self {
            Keys::Lines { lines, line, .. } => {
                for _ in 0..count {
                    line.clear();
                    let n =
                        lines.read_line(line).map_err(|e| format!("reading {describe}: {e}"))?;
                    if n == 0 {
                        return Err(format!("{describe} has fewer keys than there are embeddings"));
                    }
                    batch.push_key(line.trim_end_matches(['\n', '\r']));
                }
                Ok(())
            }
            Keys::Npy(rows) => rows.read(count, |key| batch.push_key(key)),
            Keys::Column { reader, current, at, .. } => {
                let mut left = count;
                while left > 0 {
                    let array = match current {
                        Some(array) if *at < array.len() => array,
                        _ => {
                            let next = reader
                                .next()
                                .ok_or_else(|| {
                                    format!("{describe} has fewer keys than there are embeddings")
                                })?
                                .map_err(|e| format!("reading {describe}: {e}"))?;
                            *at = 0;
                            current.insert(next.column(0).clone())
                        }
                    };
                    let take = left.min(array.len() - *at);
                    push_keys(array, *at, take, batch);
                    *at += take;
                    left -= take;
                }
                Ok(())
            }
        }
    }

    /// Whether every key has been read.
    fn at_end(&mut self) -> Result<bool, String> {
        Ok(match self {
            Keys::Lines { lines, .. } => {
                lines.fill_buf().map_err(|e| e.to_string())?.iter().all(|b| b.is_ascii_whitespace())
            }
            Keys::Npy(rows) => rows.rows_left() == 0,
            Keys::Column { reader, current, at, .. } => {
                current.as_ref().is_none_or(|a| *at >= a.len())
                    && reader.next().is_none_or(|b| b.is_ok_and(|b| b.num_rows() == 0))
            }
        })
    }
}

fn key_type_supported(data_type: &DataType) -> bool {
    matches!(
        data_type,
        DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt32
            | DataType::UInt64
    )
}

/// Appends rows `at..at + count` of a key column to `batch`; a null key is empty.
fn push_keys(array: &ArrayRef, at: usize, count: usize, batch: &mut Batch) {
    use std::fmt::Write as _;
    for i in at..at + count {
        if array.is_null(i) {
            batch.push_key("");
            continue;
        }
        match array.data_type() {
            DataType::Utf8 => batch.push_key(array.as_string::<i32>().value(i)),
            DataType::LargeUtf8 => batch.push_key(array.as_string::<i64>().value(i)),
            DataType::Utf8View => batch.push_key(array.as_string_view().value(i)),
            data_type => {
                let _ = match data_type {
                    DataType::Int32 => {
                        write!(batch.keys, "{}", array.as_primitive::<Int32Type>().value(i))
                    }
                    DataType::Int64 => {
                        write!(batch.keys, "{}", array.as_primitive::<Int64Type>().value(i))
                    }
                    DataType::UInt32 => {
                        write!(batch.keys, "{}", array.as_primitive::<UInt32Type>().value(i))
                    }
                    _ => write!(batch.keys, "{}", array.as_primitive::<UInt64Type>().value(i)),
                };
                batch.key_ends.push(batch.keys.len());
            }
        }
    }
}

/// An aesthete score table with an `embedding` column.
pub(crate) struct TableSource {
    /// The table's columns but the embeddings when `lists` reads them.
    reader: ParquetRecordBatchReader,
    /// The embedding column, when it has the usual layout (see `float_lists`).
    lists: Option<Box<FloatLists>>,
    /// What `lists` found in the rows being appended.
    list_rows: Vec<ListRow>,
    dim: usize,
    pending: Option<RecordBatch>,
    at: usize,
}

/// Which reader takes an aesthete table's embedding column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EmbeddingReader {
    /// `float_lists` when the column's layout is one it reads, else arrow's.
    OursWhereItCan,
    /// Arrow's, whatever the layout: what `float_lists` is checked against.
    #[cfg(test)]
    Arrow,
}

impl TableSource {
    fn open(path: &Path, dim: usize, batch_rows: usize) -> Result<Self, String> {
        Self::open_with(path, dim, batch_rows, EmbeddingReader::OursWhereItCan)
    }

    pub(crate) fn open_with(
        path: &Path,
        dim: usize,
        batch_rows: usize,
        embeddings: EmbeddingReader,
    ) -> Result<Self, String> {
        let builder = ParquetRecordBatchReaderBuilder::try_new(open(path)?)
            .map_err(|e| format!("not a readable Parquet file: {e}"))?;
        let schema = builder.schema().clone();
        let index = |name: &str| schema.fields().iter().position(|f| f.name() == name);
        let (Some(key), Some(embedding)) = (index(columns::KEY), index(columns::EMBEDDING)) else {
            return Err(format!(
                "has no `{}` and `{}` columns (an aesthete table written with --save-embeddings expected)",
                columns::KEY,
                columns::EMBEDDING
            ));
        };
        match schema.field(key).data_type() {
            DataType::Utf8 => {}
            other => return Err(format!("its `key` column is {other}; utf8 expected")),
        }
        let item = match schema.field(embedding).data_type() {
            DataType::FixedSizeList(item, width) => {
                if *width as usize != dim {
                    return Err(dim_mismatch(*width as usize, dim));
                }
                item.data_type().clone()
            }
            DataType::List(item) | DataType::LargeList(item) => item.data_type().clone(),
            other => {
                return Err(format!(
                    "its `embedding` column is {other}; a list of float32 or float16 expected"
                ));
            }
        };
        if !matches!(item, DataType::Float32 | DataType::Float16) {
            return Err(format!(
                "its `embedding` column holds {item}; float32 or float16 expected"
            ));
        }
        let layout = match embeddings {
            EmbeddingReader::OursWhereItCan => {
                ListLayout::of(builder.metadata(), columns::EMBEDDING)
            }
            #[cfg(test)]
            EmbeddingReader::Arrow => None,
        };
        let lists = match (&item, layout) {
            (DataType::Float32, Some(layout)) => {
                // A file of its own, so that its offset is not shared with arrow's reader.
                let file = Arc::new(open(path)?);
                Some(Box::new(FloatLists::new(file, builder.metadata().clone(), layout, dim)))
            }
            _ => None,
        };
        let mut roots = vec![key];
        if lists.is_none() {
            roots.push(embedding);
        }
        for name in [columns::ERROR, columns::WIDTH, columns::HEIGHT] {
            roots.extend(index(name));
        }
        let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
        let reader = builder
            .with_projection(mask)
            .with_batch_size(batch_rows.max(1))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(TableSource { reader, lists, list_rows: Vec::new(), dim, pending: None, at: 0 })
    }

    /// Whether `float_lists` reads the embedding column.
    #[cfg(test)]
    pub(crate) fn reads_lists_itself(&self) -> bool {
        self.lists.is_some()
    }

    pub(crate) fn read(&mut self, batch: &mut Batch, max: usize) -> Result<usize, String> {
        let mut read = 0;
        while read < max {
            let record = match &self.pending {
                Some(record) if self.at < record.num_rows() => record,
                _ => match self.reader.next() {
                    None => break,
                    Some(record) => {
                        self.at = 0;
                        self.pending.insert(record.map_err(|e| format!("reading rows: {e}"))?)
                    }
                },
            };
            let take = (max - read).min(record.num_rows() - self.at);
            let lists = match &mut self.lists {
                Some(lists) => {
                    self.list_rows.clear();
                    let got = lists
                        .read(take, &mut batch.values, &mut self.list_rows)
                        .map_err(|e| format!("reading rows: {e}"))?;
                    if got != take {
                        return Err(
                            "reading rows: the embedding column ends before the table".into()
                        );
                    }
                    Some(&mut self.list_rows[..])
                }
                None => None,
            };
            append_table_rows(record, self.at, take, self.dim, lists, batch)?;
            self.at += take;
            read += take;
        }
        Ok(read)
    }
}

/// Appends rows `at..at + count` of an aesthete table's record batch to `batch`. With
/// `lists`, the rows' values are in `batch` already and `lists` says what each holds; else
/// they come from the record's embedding column.
fn append_table_rows(
    record: &RecordBatch,
    at: usize,
    count: usize,
    dim: usize,
    lists: Option<&mut [ListRow]>,
    batch: &mut Batch,
) -> Result<(), String> {
    let keys = record.column_by_name(columns::KEY).expect("projected").as_string::<i32>();
    let errors = record.column_by_name(columns::ERROR).and_then(|c| c.as_string_opt::<i32>());
    let widths =
        record.column_by_name(columns::WIDTH).and_then(|c| c.as_primitive_opt::<UInt32Type>());
    let heights =
        record.column_by_name(columns::HEIGHT).and_then(|c| c.as_primitive_opt::<UInt32Type>());
    let no_embedding = |i: usize| {
        let recorded = errors.filter(|e| e.is_valid(i)).map(|e| e.value(i).to_string());
        recorded.unwrap_or_else(|| "no embedding in the input table".into())
    };
    if let Some(lists) = lists {
        for (i, row) in (at..at + count).zip(lists) {
            batch.push_key(keys.value(i));
            let size = match (widths, heights) {
                (Some(w), Some(h)) if w.is_valid(i) && h.is_valid(i) => {
                    Some((w.value(i), h.value(i)))
                }
                _ => None,
            };
            let problem = match std::mem::replace(row, ListRow::Values) {
                ListRow::Values => None,
                ListRow::Null => Some(no_embedding(i)),
                ListRow::Problem(problem) => Some(problem),
            };
            batch.rows.push(RowInfo { size, problem });
        }
        return Ok(());
    }
    let embeddings = record.column_by_name(columns::EMBEDDING).expect("projected");
    // The common case, an aesthete table's fixed-width float32 column without null items: rows
    // are slices of one buffer, with no array made per row.
    let flat = match embeddings.data_type() {
        DataType::FixedSizeList(item, _) if *item.data_type() == DataType::Float32 => {
            let list = embeddings.as_fixed_size_list();
            (list.values().null_count() == 0)
                .then(|| (list, list.values().as_primitive::<Float32Type>().values()))
        }
        _ => None,
    };
    for i in at..at + count {
        batch.push_key(keys.value(i));
        let size = match (widths, heights) {
            (Some(w), Some(h)) if w.is_valid(i) && h.is_valid(i) => Some((w.value(i), h.value(i))),
            _ => None,
        };
        if let Some((list, values)) = flat
            && list.is_valid(i)
        {
            let start = list.value_offset_at(i);
            batch.values.extend_from_slice(&values[start..start + dim]);
            batch.rows.push(RowInfo { size, problem: None });
            continue;
        }
        let values = if embeddings.is_null(i) {
            None
        } else {
            Some(match embeddings.data_type() {
                DataType::FixedSizeList(..) => embeddings.as_fixed_size_list().value(i),
                DataType::List(_) => embeddings.as_list::<i32>().value(i),
                _ => embeddings.as_list::<i64>().value(i),
            })
        };
        let Some(values) = values else {
            batch.push_problem(size, no_embedding(i));
            continue;
        };
        if values.len() != dim {
            let problem =
                format!("embedding has {} values; the aesthetic head takes {dim}", values.len());
            batch.push_problem(size, problem);
            continue;
        }
        if values.null_count() > 0 {
            batch.push_problem(size, "embedding has null values".into());
            continue;
        }
        match values.data_type() {
            DataType::Float32 => {
                batch.values.extend_from_slice(values.as_primitive::<Float32Type>().values())
            }
            _ => batch
                .values
                .extend(values.as_primitive::<Float16Type>().values().iter().map(|v| v.to_f32())),
        }
        batch.rows.push(RowInfo { size, problem: None });
    }
    Ok(())
}
