//! `float_lists` against arrow's reader on the same files, over the layouts writers make:
//! several row groups and pages, dictionary and plain pages, v1 and v2 pages, compression,
//! null rows and items, lists of other lengths; and layouts it must leave to arrow.
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{FixedSizeListBuilder, Float16Builder, Float32Builder, ListBuilder};
use arrow_array::{ArrayRef, RecordBatch, StringArray, UInt32Array};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding};
use parquet::column::page::Page;
use parquet::file::properties::{WriterProperties, WriterVersion};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::schema::types::ColumnPath;

use crate::rescore::source::{Batch, EmbeddingReader, TableSource};

/// A row's embedding: none, or its items, each of which may be null.
type Row = Option<Vec<Option<f32>>>;

#[derive(Clone, Copy)]
enum Lists {
    Fixed { embedding_nullable: bool },
    Variable,
}

struct Table {
    lists: Lists,
    dim: usize,
    items_nullable: bool,
    rows: Vec<Row>,
}

impl Table {
    /// `count` rows of `dim` values, every ninth null when the column allows it; values from
    /// `distinct` choices when given (so that a dictionary holds them all).
    fn new(lists: Lists, dim: usize, count: usize, distinct: Option<u32>) -> Self {
        let nulls = !matches!(lists, Lists::Fixed { embedding_nullable: false });
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            match distinct {
                Some(n) => (state % u64::from(n)) as f32 * 0.25 - 1.0,
                None => (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5,
            }
        };
        let rows = (0..count)
            .map(|i| (!(nulls && i % 9 == 4)).then(|| (0..dim).map(|_| Some(next())).collect()))
            .collect();
        Table { lists, dim, items_nullable: false, rows }
    }

    /// Writes the table as aesthete's columns, 50 rows per record batch.
    fn write(&self, path: &Path, props: WriterProperties) {
        let item = Arc::new(Field::new("item", DataType::Float32, self.items_nullable));
        let (list_type, nullable) = match self.lists {
            Lists::Fixed { embedding_nullable } => {
                (DataType::FixedSizeList(item.clone(), self.dim as i32), embedding_nullable)
            }
            Lists::Variable => (DataType::List(item.clone()), true),
        };
        let schema = Arc::new(Schema::new(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new("error", DataType::Utf8, true),
            Field::new("width", DataType::UInt32, true),
            Field::new("height", DataType::UInt32, true),
            Field::new("embedding", list_type, nullable),
        ]));
        let mut writer =
            ArrowWriter::try_new(File::create(path).unwrap(), schema.clone(), Some(props)).unwrap();
        for start in (0..self.rows.len()).step_by(50) {
            let range = start..(start + 50).min(self.rows.len());
            let rows = &self.rows[range.clone()];
            let embeddings: ArrayRef = match self.lists {
                Lists::Fixed { .. } => {
                    let mut list =
                        FixedSizeListBuilder::new(Float32Builder::new(), self.dim as i32)
                            .with_field(item.clone());
                    for row in rows {
                        match row {
                            Some(items) => {
                                items.iter().for_each(|v| list.values().append_option(*v))
                            }
                            None => (0..self.dim).for_each(|_| list.values().append_value(0.0)),
                        }
                        list.append(row.is_some());
                    }
                    Arc::new(list.finish())
                }
                Lists::Variable => {
                    let mut list = ListBuilder::new(Float32Builder::new()).with_field(item.clone());
                    for row in rows {
                        if let Some(items) = row {
                            items.iter().for_each(|v| list.values().append_option(*v));
                        }
                        list.append(row.is_some());
                    }
                    Arc::new(list.finish())
                }
            };
            let arrays: Vec<ArrayRef> = vec![
                Arc::new(StringArray::from_iter_values(range.clone().map(|i| format!("k{i}")))),
                Arc::new(StringArray::from_iter(
                    range.clone().map(|i| (i % 2 == 0).then(|| format!("decode failed {i}"))),
                )),
                Arc::new(UInt32Array::from_iter(
                    range.clone().map(|i| (i % 7 != 0).then_some(i as u32)),
                )),
                Arc::new(UInt32Array::from_iter(range.clone().map(|i| Some(2 * i as u32)))),
                embeddings,
            ];
            writer.write(&RecordBatch::try_new(schema.clone(), arrays).unwrap()).unwrap();
        }
        writer.close().unwrap();
    }
}

/// A row's key, size and problem, as read.
type RowRead = (String, Option<(u32, u32)>, Option<String>);

/// What reading a table gave: its rows and their values.
#[derive(Debug, PartialEq)]
struct Read {
    rows: Vec<RowRead>,
    values: Vec<u32>,
}

/// Reads the whole table at `path`, `max` rows at a time from record batches of
/// `batch_rows`; says whether `float_lists` read the embeddings.
fn read(
    path: &Path,
    dim: usize,
    batch_rows: usize,
    max: usize,
    with: EmbeddingReader,
) -> (bool, Read) {
    let mut source = TableSource::open_with(path, dim, batch_rows, with).unwrap();
    let ours = source.reads_lists_itself();
    let mut batch = Batch::new(dim);
    let mut read = Read { rows: Vec::new(), values: Vec::new() };
    loop {
        batch.clear();
        let n = source.read(&mut batch, max).unwrap();
        assert_eq!((batch.len(), batch.values.len()), (n, n * dim));
        if n == 0 {
            break;
        }
        for (i, info) in batch.rows.iter().enumerate() {
            read.rows.push((batch.key(i).to_string(), info.size, info.problem.clone()));
        }
        read.values.extend(batch.values.iter().map(|v| v.to_bits()));
    }
    (ours, read)
}

/// Reads `table` (written at `path`) with both readers at several batch sizes: the same rows
/// and values (bit for bit) each time, the values those written, and `float_lists` used or not
/// as `ours` says.
fn check(table: &Table, path: &Path, ours: bool) {
    let dim = table.dim;
    for (batch_rows, max) in [(1024, 1024), (10, 7), (3, 5), (64, 1)] {
        let (used, mine) = read(path, dim, batch_rows, max, EmbeddingReader::OursWhereItCan);
        let (_, arrow) = read(path, dim, batch_rows, max, EmbeddingReader::Arrow);
        assert_eq!(used, ours, "float_lists used");
        assert_eq!(mine.rows.len(), table.rows.len());
        assert_eq!(mine, arrow, "batches of {max} from record batches of {batch_rows}");
        for (i, row) in table.rows.iter().enumerate() {
            let usable = row
                .as_ref()
                .is_some_and(|items| items.len() == dim && items.iter().all(Option::is_some));
            let got = &mine.values[i * dim..(i + 1) * dim];
            if usable {
                let want: Vec<u32> =
                    row.as_ref().unwrap().iter().map(|v| v.unwrap().to_bits()).collect();
                assert_eq!(got, want, "row {i}");
                assert_eq!(mine.rows[i].2, None, "row {i}");
            } else {
                assert!(got.iter().all(|v| *v == 0), "row {i} is zeros");
                assert!(mine.rows[i].2.is_some(), "row {i} has a problem");
            }
        }
    }
}

/// Dictionary and data pages of the embedding column, over all row groups, and the
/// encodings of its values.
fn pages(path: &Path) -> (usize, usize, Vec<Encoding>) {
    let reader = SerializedFileReader::new(File::open(path).unwrap()).unwrap();
    let leaf = reader.metadata().file_metadata().schema_descr().num_columns() - 1;
    let (mut dictionaries, mut data, mut encodings) = (0, 0, Vec::new());
    for group in 0..reader.num_row_groups() {
        let mut pages = reader.get_row_group(group).unwrap().get_column_page_reader(leaf).unwrap();
        while let Some(page) = pages.get_next_page().unwrap() {
            match page {
                Page::DictionaryPage { .. } => dictionaries += 1,
                Page::DataPage { encoding, .. } | Page::DataPageV2 { encoding, .. } => {
                    data += 1;
                    if !encodings.contains(&encoding) {
                        encodings.push(encoding);
                    }
                }
            }
        }
    }
    (dictionaries, data, encodings)
}

fn row_groups(path: &Path) -> usize {
    SerializedFileReader::new(File::open(path).unwrap()).unwrap().num_row_groups()
}

#[test]
fn plain_uncompressed_pages_over_row_groups() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.parquet");
    let table = Table::new(Lists::Fixed { embedding_nullable: false }, 3, 1000, None);
    let props = WriterProperties::builder()
        .set_compression(Compression::UNCOMPRESSED)
        .set_dictionary_enabled(false)
        .set_data_page_size_limit(64)
        .set_write_batch_size(5)
        .set_max_row_group_row_count(Some(128))
        .build();
    table.write(&path, props);
    assert!(row_groups(&path) > 1);
    let (dictionaries, data, encodings) = pages(&path);
    assert_eq!((dictionaries, encodings), (0, vec![Encoding::PLAIN]));
    assert!(data > 2 * row_groups(&path), "{data} pages");
    check(&table, &path, true);
}

#[test]
fn dictionary_then_plain_pages_snappy() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.parquet");
    let table = Table::new(Lists::Fixed { embedding_nullable: true }, 768, 300, None);
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_dictionary_page_size_limit(16 * 1024)
        .set_data_page_size_limit(32 * 1024)
        .build();
    table.write(&path, props);
    let (dictionaries, data, encodings) = pages(&path);
    assert_eq!(dictionaries, 1);
    assert!(data > 2, "{data} pages");
    assert!(encodings.contains(&Encoding::RLE_DICTIONARY), "{encodings:?}");
    assert!(encodings.contains(&Encoding::PLAIN), "{encodings:?}");
    check(&table, &path, true);
}

#[test]
fn dictionary_pages_v2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.parquet");
    let table = Table::new(Lists::Fixed { embedding_nullable: true }, 5, 500, Some(7));
    let props = WriterProperties::builder()
        .set_writer_version(WriterVersion::PARQUET_2_0)
        .set_compression(Compression::SNAPPY)
        .set_data_page_size_limit(256)
        .set_write_batch_size(8)
        .set_max_row_group_row_count(Some(200))
        .build();
    table.write(&path, props);
    let (dictionaries, data, encodings) = pages(&path);
    assert_eq!((dictionaries, encodings), (row_groups(&path), vec![Encoding::RLE_DICTIONARY]));
    assert!(data > row_groups(&path), "{data} pages");
    check(&table, &path, true);
}

#[test]
fn lists_of_other_lengths_and_null_items() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.parquet");
    let mut table = Table::new(Lists::Variable, 4, 400, None);
    table.items_nullable = true;
    for (i, row) in table.rows.iter_mut().enumerate() {
        let Some(items) = row else { continue };
        match i % 11 {
            1 => items.clear(),
            2 => items.truncate(3),
            3 => items.extend([Some(0.5), Some(0.25)]),
            5 => items.extend(std::iter::repeat_n(Some(1.0), 40)),
            7 => items[2] = None,
            8 => *items = vec![None; 4],
            _ => {}
        }
    }
    for version in [WriterVersion::PARQUET_1_0, WriterVersion::PARQUET_2_0] {
        let props = WriterProperties::builder()
            .set_writer_version(version)
            .set_data_page_size_limit(128)
            .set_write_batch_size(3)
            .set_dictionary_page_size_limit(256)
            .set_max_row_group_row_count(Some(150))
            .build();
        table.write(&path, props);
        check(&table, &path, true);
    }
}

#[test]
fn fixed_lists_with_null_items() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.parquet");
    let mut table = Table::new(Lists::Fixed { embedding_nullable: true }, 6, 200, None);
    table.items_nullable = true;
    for row in table.rows.iter_mut().skip(3).step_by(10).flatten() {
        row[5] = None;
    }
    table.write(&path, WriterProperties::builder().set_data_page_size_limit(100).build());
    check(&table, &path, true);
}

#[test]
fn byte_stream_split_is_left_to_arrow() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.parquet");
    let table = Table::new(Lists::Fixed { embedding_nullable: true }, 4, 100, None);
    let leaf = ColumnPath::from(vec!["embedding".into(), "list".into(), "item".into()]);
    let props = WriterProperties::builder()
        .set_column_dictionary_enabled(leaf.clone(), false)
        .set_column_encoding(leaf, Encoding::BYTE_STREAM_SPLIT)
        .build();
    table.write(&path, props);
    assert_eq!(pages(&path).2, vec![Encoding::BYTE_STREAM_SPLIT]);
    check(&table, &path, false);
}

#[test]
fn half_floats_are_left_to_arrow() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.parquet");
    let item = Arc::new(Field::new("item", DataType::Float16, false));
    let schema = Arc::new(Schema::new(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("embedding", DataType::FixedSizeList(item.clone(), 2), true),
    ]));
    let mut list = FixedSizeListBuilder::new(Float16Builder::new(), 2).with_field(item);
    for i in 0..10 {
        list.values().append_value(half::f16::from_f32(i as f32));
        list.values().append_value(half::f16::from_f32(0.5));
        list.append(true);
    }
    let keys = StringArray::from_iter_values((0..10).map(|i| format!("k{i}")));
    let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(keys), Arc::new(list.finish())])
        .unwrap();
    let mut writer = ArrowWriter::try_new(File::create(&path).unwrap(), schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    let (ours, read) = read(&path, 2, 1024, 1024, EmbeddingReader::OursWhereItCan);
    assert!(!ours);
    assert_eq!(read.values[6..8], [3.0f32.to_bits(), 0.5f32.to_bits()]);
}

/// `fixtures/rescore/bad/table.parquet`, written by pyarrow (dictionary, snappy, v1 pages): a
/// list of 767 values, a null list with its error, a good row.
#[test]
fn a_table_pyarrow_wrote() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/rescore/bad/table.parquet");
    let (ours, mine) = read(&path, 768, 1024, 1024, EmbeddingReader::OursWhereItCan);
    let (_, arrow) = read(&path, 768, 1024, 1024, EmbeddingReader::Arrow);
    assert!(ours);
    assert_eq!(mine, arrow);
    assert_eq!(mine.rows.len(), 3);
}
