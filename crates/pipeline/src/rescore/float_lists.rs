//! A reader of our own for the usual layout of an embedding column: a list (fixed-size or
//! not) of FLOAT, its values PLAIN or dictionary encoded, its levels RLE-encoded.
//!
//! Arrow's reader decodes one repetition and one definition level per value into buffers,
//! checks them row by row, builds list arrays and copies the values twice on the way. Here
//! the levels are walked as runs (a 768-value row is a few runs) and the values go once,
//! from the decompressed page into the caller's buffer. Pages are read and decompressed by
//! the `parquet` crate. [`ListLayout::of`] says whether a file's column has this layout;
//! any other layout (another physical type or encoding, a legacy two-level list) is left to
//! arrow.
use std::fs::File;
use std::sync::Arc;

use bytes::Bytes;
use parquet::basic::{Encoding, Repetition, Type as PhysicalType};
use parquet::column::page::{Page, PageReader};
use parquet::file::metadata::ParquetMetaData;
use parquet::file::serialized_reader::SerializedPageReader;

use super::hybrid::{Runs, bit_width};

/// Where a list of floats sits in a file and what its definition levels mean.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ListLayout {
    /// The leaf column of the list's items.
    leaf: usize,
    /// The definition level of an empty list; below it, the row is null.
    empty_list: i16,
    /// The definition level of an item with a value; one below (when items are nullable),
    /// a null item.
    value: i16,
    items_nullable: bool,
}

impl ListLayout {
    /// The layout of top-level column `name` when it is a standard three-level list
    /// (`group (LIST) { repeated group { FLOAT } }`) whose column chunks use only the
    /// encodings [`FloatLists`] reads; else `None`.
    pub fn of(metadata: &ParquetMetaData, name: &str) -> Option<ListLayout> {
        let schema = metadata.file_metadata().schema_descr();
        let mut leaves =
            (0..schema.num_columns()).filter(|&i| schema.column(i).path().parts()[0] == name);
        let (Some(leaf), None) = (leaves.next(), leaves.next()) else { return None };
        let column = schema.column(leaf);
        let root = schema.get_column_root(leaf);
        if !root.is_group() {
            return None;
        }
        let [repeated] = root.get_fields() else { return None };
        if !repeated.is_group() {
            return None;
        }
        let [item] = repeated.get_fields() else { return None };
        let repetition = |t: &parquet::schema::types::Type| {
            let info = t.get_basic_info();
            info.has_repetition().then(|| info.repetition())
        };
        let row_nullable = match repetition(root) {
            Some(Repetition::OPTIONAL) => true,
            Some(Repetition::REQUIRED) => false,
            _ => return None,
        };
        let items_nullable = match repetition(item) {
            Some(Repetition::OPTIONAL) => true,
            Some(Repetition::REQUIRED) => false,
            _ => return None,
        };
        let empty_list = i16::from(row_nullable);
        let value = empty_list + 1 + i16::from(items_nullable);
        let usable = item.is_primitive()
            && repetition(repeated) == Some(Repetition::REPEATED)
            && column.physical_type() == PhysicalType::FLOAT
            && column.max_rep_level() == 1
            && column.max_def_level() == value
            && metadata.row_groups().iter().all(|group| {
                group.column(leaf).encodings().all(|e| {
                    matches!(
                        e,
                        Encoding::PLAIN
                            | Encoding::RLE
                            | Encoding::PLAIN_DICTIONARY
                            | Encoding::RLE_DICTIONARY
                    )
                })
            });
        usable.then_some(ListLayout { leaf, empty_list, value, items_nullable })
    }
}

/// What [`FloatLists::read`] found in one row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ListRow {
    /// The row's `dim` values are in the buffer.
    Values,
    /// A null row; zeros are in the buffer.
    Null,
    /// The row cannot be used (wrong length, null items); zeros are in the buffer.
    Problem(String),
}

/// Reads a column with a [`ListLayout`] row by row, in file order.
pub(crate) struct FloatLists {
    file: Arc<File>,
    metadata: Arc<ParquetMetaData>,
    layout: ListLayout,
    dim: usize,
    /// The row group whose pages are being read, and its page reader.
    group: usize,
    pages: Option<SerializedPageReader<File>>,
    /// Rows finished in the current row group.
    group_rows: usize,
    dictionary: Vec<f32>,
    page: Option<DataPage>,
    row: Option<OpenRow>,
}

/// The row being read: it ends where the next one starts, or with its row group.
struct OpenRow {
    /// Where its values start in the output.
    start: usize,
    /// Items seen, with or without a value.
    items: usize,
    null: bool,
    null_items: bool,
}

/// The undecoded rest of a data page.
struct DataPage {
    reps: Runs,
    defs: Runs,
    values: Values,
}

enum Values {
    Plain { data: Bytes, at: usize },
    Dictionary(Runs),
}

/// Where the reader stands, for [`FloatLists::read`]'s loop.
enum Next {
    /// A repetition and a definition level, and how many times the pair repeats.
    Levels {
        rep: u32,
        def: u32,
        count: usize,
    },
    EndOfRowGroup,
    EndOfFile,
}

impl FloatLists {
    /// A reader of the column `layout` describes in `file`, whose rows must hold `dim`
    /// values.
    pub fn new(
        file: Arc<File>,
        metadata: Arc<ParquetMetaData>,
        layout: ListLayout,
        dim: usize,
    ) -> Self {
        FloatLists {
            file,
            metadata,
            layout,
            dim,
            group: 0,
            pages: None,
            group_rows: 0,
            dictionary: Vec::new(),
            page: None,
            row: None,
        }
    }

    /// Appends up to `max` rows: `dim` values per row to `values` (zeros for a row that has
    /// none) and what each row holds to `rows`; returns how many (fewer at the end of the
    /// file only).
    pub fn read(
        &mut self,
        max: usize,
        values: &mut Vec<f32>,
        rows: &mut Vec<ListRow>,
    ) -> Result<usize, String> {
        let mut read = 0;
        while read < max {
            match self.next()? {
                Next::EndOfFile => break,
                Next::EndOfRowGroup => {
                    read += self.finish_row(values, rows);
                    let expected = self.metadata.row_group(self.group).num_rows();
                    if self.group_rows as i64 != expected {
                        return Err(format!(
                            "row group {} has {} lists in its embedding column for {expected} rows",
                            self.group, self.group_rows
                        ));
                    }
                    (self.group, self.group_rows, self.pages) = (self.group + 1, 0, None);
                }
                Next::Levels { rep: 0, def, .. } => {
                    if self.row.is_some() {
                        read += self.finish_row(values, rows);
                        if read == max {
                            // This level starts the next call's first row.
                            break;
                        }
                    }
                    self.start_row(def, values)?;
                    self.consume(1);
                }
                Next::Levels { rep: 1, def, count } => {
                    self.continue_row(def, count, values)?;
                    self.consume(count);
                }
                Next::Levels { rep, .. } => {
                    return Err(format!("a repetition level of {rep} in a list of floats"));
                }
            }
        }
        Ok(read)
    }

    /// The levels ahead, reading pages as needed.
    fn next(&mut self) -> Result<Next, String> {
        loop {
            if let Some(page) = &mut self.page {
                match (page.reps.peek()?, page.defs.peek()?) {
                    (Some((rep, a)), Some((def, b))) => {
                        return Ok(Next::Levels { rep, def, count: a.min(b) });
                    }
                    (None, None) => self.page = None,
                    _ => return Err("a page has fewer definition than repetition levels".into()),
                }
            }
            if self.pages.is_none() {
                if self.group == self.metadata.num_row_groups() {
                    return Ok(Next::EndOfFile);
                }
                let column = self.metadata.row_group(self.group).column(self.layout.leaf);
                let rows = self.metadata.row_group(self.group).num_rows().max(0) as usize;
                let pages = SerializedPageReader::new(self.file.clone(), column, rows, None)
                    .map_err(|e| format!("embedding column of row group {}: {e}", self.group))?;
                self.pages = Some(pages);
                self.dictionary.clear();
            }
            let pages = self.pages.as_mut().expect("opened above");
            let page = pages
                .get_next_page()
                .map_err(|e| format!("embedding column of row group {}: {e}", self.group))?;
            match page {
                None => return Ok(Next::EndOfRowGroup),
                Some(page) => self.open_page(page)?,
            }
        }
    }

    fn open_page(&mut self, page: Page) -> Result<(), String> {
        let level_width = bit_width(self.layout.value as u32);
        let (buf, count, encoding, reps, defs) = match page {
            Page::DictionaryPage { buf, num_values, encoding, .. } => {
                if !matches!(encoding, Encoding::PLAIN | Encoding::PLAIN_DICTIONARY) {
                    return Err(format!("a dictionary page encoded {encoding}"));
                }
                let count = num_values as usize;
                let data = buf.get(..count * 4).ok_or("a dictionary page ends early")?;
                self.dictionary.clear();
                push_plain(data, &mut self.dictionary);
                return Ok(());
            }
            Page::DataPage {
                buf,
                num_values,
                encoding,
                def_level_encoding,
                rep_level_encoding,
                ..
            } => {
                if rep_level_encoding != Encoding::RLE || def_level_encoding != Encoding::RLE {
                    return Err(format!(
                        "levels encoded {rep_level_encoding} and {def_level_encoding}; RLE expected"
                    ));
                }
                let count = num_values as usize;
                let (reps, rest) = prefixed(&buf, 0)?;
                let (defs, rest) = prefixed(&buf, rest)?;
                (buf.slice(rest..), count, encoding, reps, defs)
            }
            Page::DataPageV2 {
                buf,
                num_values,
                encoding,
                def_levels_byte_len,
                rep_levels_byte_len,
                ..
            } => {
                let (rep_end, def_end) = (
                    rep_levels_byte_len as usize,
                    rep_levels_byte_len as usize + def_levels_byte_len as usize,
                );
                if def_end > buf.len() {
                    return Err("a page's levels run past its end".into());
                }
                let count = num_values as usize;
                (
                    buf.slice(def_end..),
                    count,
                    encoding,
                    buf.slice(..rep_end),
                    buf.slice(rep_end..def_end),
                )
            }
        };
        let values = match encoding {
            Encoding::PLAIN => Values::Plain { data: buf, at: 0 },
            Encoding::PLAIN_DICTIONARY | Encoding::RLE_DICTIONARY => {
                let width = *buf.first().ok_or("a dictionary-encoded page without data")?;
                Values::Dictionary(Runs::new(buf.slice(1..), u32::from(width), count)?)
            }
            other => return Err(format!("values encoded {other} in the embedding column")),
        };
        self.page = Some(DataPage {
            reps: Runs::new(reps, 1, count)?,
            defs: Runs::new(defs, level_width, count)?,
            values,
        });
        Ok(())
    }

    fn consume(&mut self, count: usize) {
        let page = self.page.as_mut().expect("levels come from a page");
        page.reps.consume(count);
        page.defs.consume(count);
    }

    fn start_row(&mut self, def: u32, values: &mut Vec<f32>) -> Result<(), String> {
        let def = self.checked_def(def)?;
        let empty_list = self.layout.empty_list;
        self.row = Some(OpenRow {
            start: values.len(),
            items: 0,
            null: def < empty_list,
            null_items: false,
        });
        if def > empty_list { self.add_items(def, 1, values) } else { Ok(()) }
    }

    /// `count` more items of the open row, all with definition level `def`.
    fn continue_row(
        &mut self,
        def: u32,
        count: usize,
        values: &mut Vec<f32>,
    ) -> Result<(), String> {
        let def = self.checked_def(def)?;
        if self.row.as_ref().is_none_or(|row| row.items == 0) {
            return Err("a list continues a null or empty one, or from another row group".into());
        }
        self.add_items(def, count, values)
    }

    fn add_items(&mut self, def: i16, count: usize, values: &mut Vec<f32>) -> Result<(), String> {
        let layout = self.layout;
        let row = self.row.as_mut().expect("a row is open");
        if def == layout.value {
            // Values past `dim` are skipped, not kept: the row is refused anyway.
            let keep = count.min(self.dim.saturating_sub(row.items));
            row.items += count;
            let page = self.page.as_mut().expect("levels come from a page");
            take(&mut page.values, keep, &self.dictionary, values)?;
            skip(&mut page.values, count - keep, &self.dictionary)?;
        } else if layout.items_nullable && def == layout.value - 1 {
            row.items += count;
            row.null_items = true;
        } else {
            return Err(format!("a definition level of {def} inside a list"));
        }
        Ok(())
    }

    fn checked_def(&self, def: u32) -> Result<i16, String> {
        i16::try_from(def)
            .ok()
            .filter(|d| *d <= self.layout.value)
            .ok_or_else(|| format!("a definition level of {def} above the column's maximum"))
    }

    /// Ends the open row, if any, leaving `dim` values for it; returns how many rows ended.
    fn finish_row(&mut self, values: &mut Vec<f32>, rows: &mut Vec<ListRow>) -> usize {
        let Some(row) = self.row.take() else { return 0 };
        self.group_rows += 1;
        let dim = self.dim;
        let outcome = if row.null {
            ListRow::Null
        } else if row.items != dim {
            ListRow::Problem(format!(
                "embedding has {} values; the aesthetic head takes {dim}",
                row.items
            ))
        } else if row.null_items {
            ListRow::Problem("embedding has null values".into())
        } else {
            rows.push(ListRow::Values);
            return 1;
        };
        values.truncate(row.start);
        values.resize(row.start + dim, 0.0);
        rows.push(outcome);
        1
    }
}

/// A level stream behind its 4-byte length at `at` in a v1 data page; returns it and where
/// the page goes on.
fn prefixed(buf: &Bytes, at: usize) -> Result<(Bytes, usize), String> {
    let length = buf.get(at..at + 4).ok_or("a page ends in its levels")?;
    let length = u32::from_le_bytes(length.try_into().expect("4 bytes")) as usize;
    let end = at + 4 + length;
    if end > buf.len() {
        return Err("a page's levels run past its end".into());
    }
    Ok((buf.slice(at + 4..end), end))
}

/// Appends the little-endian floats of `data` to `out`.
fn push_plain(data: &[u8], out: &mut Vec<f32>) {
    out.extend(data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))));
}

/// Appends the next `count` values of a page to `out`.
fn take(
    values: &mut Values,
    count: usize,
    dictionary: &[f32],
    out: &mut Vec<f32>,
) -> Result<(), String> {
    match values {
        Values::Plain { data, at } => {
            let bytes =
                data.get(*at..*at + count * 4).ok_or("a page has fewer values than levels")?;
            push_plain(bytes, out);
            *at += count * 4;
        }
        Values::Dictionary(indices) => {
            let mut left = count;
            while left > 0 {
                let (index, run) = indices.peek()?.ok_or("a page has fewer values than levels")?;
                let value = *dictionary
                    .get(index as usize)
                    .ok_or_else(|| format!("dictionary index {index} of {}", dictionary.len()))?;
                let n = run.min(left);
                out.extend(std::iter::repeat_n(value, n));
                indices.consume(n);
                left -= n;
            }
        }
    }
    Ok(())
}

/// Passes over the next `count` values of a page.
fn skip(values: &mut Values, count: usize, dictionary: &[f32]) -> Result<(), String> {
    match values {
        Values::Plain { data, at } => {
            if *at + count * 4 > data.len() {
                return Err("a page has fewer values than levels".into());
            }
            *at += count * 4;
            Ok(())
        }
        Values::Dictionary(_) => {
            let mut scratch = Vec::new();
            let mut left = count;
            while left > 0 {
                let n = left.min(4096);
                scratch.clear();
                take(values, n, dictionary, &mut scratch)?;
                left -= n;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests;
