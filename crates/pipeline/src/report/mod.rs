//! `aesthete report`: a look at the scores before choosing a threshold, as one HTML page.
//!
//! One streaming pass over the score tables (a record batch at a time, three columns) counts
//! the histogram, the rows kept at each threshold and the failures by kind, and chooses each
//! score bucket's gallery by a fixed hash of the keys (`sample`). With shards given, a second
//! pass decodes only the chosen samples' images (`thumbs`). The page (`html`) is written
//! atomically. Memory is bounded by a record batch and the gallery, not by the rows.
mod html;
mod sample;
mod tally;
mod thumbs;

use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::inputs::{DirFiles, expand_files};
use crate::table::{ReadColumns, TableReader};
use crate::{Error, done, plan};

use sample::Sampler;
use tally::Tally;

/// Rows read from a table at a time.
const BATCH_ROWS: usize = 64 * 1024;
/// Most pictures per bucket; more would make the page heavy to open.
const MAX_PER_BUCKET: usize = 100;

/// The settings of a report, validated.
///
/// ```
/// use aesthete_pipeline::ReportConfig;
///
/// let config = ReportConfig::new(["scores/"], "report.html")?
///     .shards(["data/shard-{000000..000009}.tar"])
///     .thumbnails_per_bucket(8)?
///     .thresholds([4.2, 5.75])?;
/// assert_eq!(config.output(), std::path::Path::new("report.html"));
/// # Ok::<(), aesthete_pipeline::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ReportConfig {
    tables: Vec<String>,
    shards: Vec<String>,
    output: PathBuf,
    per_bucket: usize,
    thumbnail_size: u32,
    thresholds: Vec<f32>,
}

impl ReportConfig {
    /// A report on the score tables `tables` (files, globs, brace patterns or list files, as
    /// [`aesthete_shards::expand_inputs`] reads them, or directories: every `.parquet` in one),
    /// written to the HTML file `output`.
    pub fn new<S: Into<String>>(
        tables: impl IntoIterator<Item = S>,
        output: impl Into<PathBuf>,
    ) -> Result<Self, Error> {
        let tables: Vec<String> = tables.into_iter().map(Into::into).collect();
        if tables.is_empty() {
            return Err(Error::Config("no score tables given".into()));
        }
        let output = output.into();
        if output.as_os_str().is_empty() {
            return Err(Error::Config("the output file name is empty".into()));
        }
        Ok(ReportConfig {
            tables,
            shards: Vec::new(),
            output,
            per_bucket: 12,
            thumbnail_size: 160,
            // Every half point from 3 to 8, LAION-2B's reference points among them.
            thresholds: (6..=16).map(|half| half as f32 / 2.0).collect(),
        })
    }

    /// The shards the tables were made from (inputs as [`aesthete_shards::expand_inputs`]
    /// reads them), for the gallery's pictures: table `NAME.parquet` is matched with shard
    /// `NAME.tar` (or `.tar.gz`, `.tgz`). Without them the gallery lists keys and scores.
    pub fn shards<S: Into<String>>(mut self, shards: impl IntoIterator<Item = S>) -> Self {
        self.shards = shards.into_iter().map(Into::into).collect();
        self
    }

    /// Samples shown per score bucket (default 12, at most 100; 0 shows none).
    pub fn thumbnails_per_bucket(mut self, count: usize) -> Result<Self, Error> {
        if count > MAX_PER_BUCKET {
            return Err(Error::Config(format!(
                "{count} thumbnails per bucket is over the limit of {MAX_PER_BUCKET}"
            )));
        }
        self.per_bucket = count;
        Ok(self)
    }

    /// The square thumbnails fit in, in pixels (default 160, from 16 to 512).
    pub fn thumbnail_size(mut self, pixels: u32) -> Result<Self, Error> {
        if !(16..=512).contains(&pixels) {
            return Err(Error::Config(format!(
                "thumbnail size {pixels} is outside 16 to 512 pixels"
            )));
        }
        self.thumbnail_size = pixels;
        Ok(self)
    }

    /// Thresholds shown besides every half point from 3 to 8.
    pub fn thresholds(mut self, extra: impl IntoIterator<Item = f32>) -> Result<Self, Error> {
        for threshold in extra {
            if !threshold.is_finite() {
                return Err(Error::Config(format!("threshold {threshold} is not a finite number")));
            }
            self.thresholds.push(threshold);
        }
        Ok(self)
    }

    /// The HTML file written.
    pub fn output(&self) -> &Path {
        &self.output
    }
}

/// What a report holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReportSummary {
    /// Score tables read.
    pub tables: usize,
    /// Rows of the tables (samples).
    pub rows: u64,
    /// Rows with a score.
    pub scored: u64,
    /// Rows without a score.
    pub failed: u64,
    /// Samples shown in the galleries.
    pub shown: usize,
    /// Of those, the ones pictured.
    pub thumbnails: usize,
    /// Shown samples whose table had a shard but whose picture could not be made (not in the
    /// shard, undecodable).
    pub missing_thumbnails: usize,
    /// Size of the page written, in bytes.
    pub bytes: u64,
}

/// Reads the tables `config` names, pictures the chosen samples from the shards, and writes
/// the page. An unreadable table stops the report (its counts would be wrong); a sample that
/// cannot be pictured is shown without its picture.
pub fn report(config: &ReportConfig) -> Result<ReportSummary, Error> {
    let tables = expand_files(
        &config.tables,
        &DirFiles { extensions: &["parquet"], folder: Path::to_path_buf },
    )?;
    let shards = match_shards(&tables, &config.shards)?;
    tracing::info!(
        tables = tables.len(),
        with_shards = shards.iter().flatten().count(),
        "reading score tables"
    );

    let mut tally = Tally::new(&config.thresholds);
    let mut sampler = Sampler::new(config.per_bucket);
    let mut incomplete = Vec::new();
    for (index, path) in tables.iter().enumerate() {
        let mut reader = TableReader::open(path, ReadColumns { embedding: false }, BATCH_ROWS)?;
        while let Some(rows) = reader.next_batch()? {
            for i in 0..rows.len() {
                let row = rows.row(i);
                match row.score {
                    Some(score) => {
                        tally.add_score(row.key, score);
                        sampler.offer(row.key, index, score, row.size);
                    }
                    None => tally.add_error(row.key, row.error),
                }
            }
        }
        if let Some(reason) = incomplete_reason(path) {
            incomplete.push((path.clone(), reason));
        }
    }
    let buckets = sampler.into_buckets();

    let mut wanted: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for chosen in buckets.iter().flatten().filter(|c| shards[c.table].is_some()) {
        wanted.entry(chosen.table).or_default().push(chosen.key.clone());
    }
    tracing::info!(shards = wanted.len(), "making thumbnails");
    let pictures = thumbs::pictures(&wanted, &shards, config.thumbnail_size);

    let mut summary = ReportSummary {
        tables: tables.len(),
        rows: tally.rows,
        scored: tally.scored,
        failed: tally.failed(),
        ..ReportSummary::default()
    };
    let page_buckets = buckets
        .iter()
        .map(|chosen| {
            chosen
                .iter()
                .map(|c| {
                    let picture = pictures.get(&(c.table, c.key.clone()));
                    summary.shown += 1;
                    match picture {
                        Some(Ok(_)) => summary.thumbnails += 1,
                        Some(Err(_)) => summary.missing_thumbnails += 1,
                        None => {}
                    }
                    (c, picture)
                })
                .collect()
        })
        .collect();
    let page = html::Page {
        tables: &tables,
        tally: &tally,
        buckets: page_buckets,
        shards_given: !config.shards.is_empty(),
        incomplete: &incomplete,
        thumbnail_size: config.thumbnail_size,
    };
    let text = html::render(&page);
    write_page(&config.output, text.as_bytes())?;
    summary.bytes = text.len() as u64;
    Ok(summary)
}

/// For each table, the shard of the same name among `inputs`, if any.
fn match_shards(tables: &[PathBuf], inputs: &[String]) -> Result<Vec<Option<PathBuf>>, Error> {
    if inputs.is_empty() {
        return Ok(vec![None; tables.len()]);
    }
    let mut by_name: HashMap<String, PathBuf> = HashMap::new();
    for shard in aesthete_shards::expand_inputs(inputs).map_err(|e| Error::Inputs(e.into()))? {
        let name = plan::output_name(&aesthete_store::Location::Local(shard.clone()));
        if let Some(first) = by_name.get(&name) {
            tracing::warn!(first = %first.display(), ignored = %shard.display(), "two shards of the same name");
            continue;
        }
        by_name.insert(name, shard);
    }
    let matched: Vec<Option<PathBuf>> =
        tables.iter().map(|table| by_name.get(&table_name(table)).cloned()).collect();
    let unmatched = matched.iter().filter(|m| m.is_none()).count();
    if unmatched > 0 {
        tracing::warn!(tables = unmatched, "score tables without a shard of the same name");
    }
    Ok(matched)
}

/// `scores/shard-000.parquet` → `shard-000`.
fn table_name(table: &Path) -> String {
    let file = table.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    match file.len().checked_sub(".parquet".len()) {
        Some(cut) if file[cut..].eq_ignore_ascii_case(".parquet") && cut > 0 => file[..cut].into(),
        _ => file,
    }
}

/// Why the shard of `table` was not read whole, when its completion record beside it says so.
fn incomplete_reason(table: &Path) -> Option<String> {
    let record = table.with_file_name(format!("{}.done.json", table_name(table)));
    match done::read(&record) {
        Ok(Some(record)) if record.status == done::Status::Incomplete => {
            Some(record.error.unwrap_or_else(|| "not read whole".into()))
        }
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(record = %record.display(), error = %e, "unreadable completion record");
            None
        }
    }
}

fn write_page(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let err = |source| Error::Output { path: path.to_path_buf(), source };
    let mut file = aesthete_atomic::AtomicFile::create(path).map_err(err)?;
    file.file_mut().write_all(bytes).map_err(err)?;
    file.commit().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_drop_the_parquet_suffix() {
        assert_eq!(table_name(Path::new("s/shard-000.parquet")), "shard-000");
        assert_eq!(table_name(Path::new("s/A.PARQUET")), "A");
        assert_eq!(table_name(Path::new("s/.parquet")), ".parquet");
    }

    #[test]
    fn settings_out_of_range_are_refused() {
        assert!(ReportConfig::new(Vec::<String>::new(), "r.html").is_err());
        let config = ReportConfig::new(["t"], "r.html").unwrap();
        assert!(config.clone().thumbnails_per_bucket(101).is_err());
        assert!(config.clone().thumbnail_size(8).is_err());
        assert!(config.clone().thresholds([f32::NAN]).is_err());
    }
}
