//! `--keep-top FRACTION`: score everything first, then keep the best fraction of the run.
//!
//! Pass one streams every shard through the model into score tables under
//! `OUTPUT/.aesthete-keep-top/` (resumable like any run). Pass two finds the score at the cut
//! over all of this worker's tables, then re-reads each input shard and writes its final tar
//! and table with that cut as the threshold. Only pass one runs the model.
use std::fs::File;
use std::path::{Path, PathBuf};

use aesthete_shards::ShardReader;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, UInt32Type};
use arrow_array::{Array, RecordBatch};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::plan::{self, OutputSettings, Plan, ShardJob};
use crate::run::{self, Entry, Outcome};
use crate::table::columns;
use crate::{Error, Models, Outputs, Progress, RunConfig, RunSummary, Selection};

/// Directory of pass one's score tables inside the output directory.
pub(crate) const SCRATCH_DIR: &str = ".aesthete-keep-top";

pub(crate) fn run(
    config: &RunConfig,
    models: &Models,
    progress: &dyn Progress,
    plan: &Plan,
    fraction: f32,
    summary: &mut RunSummary,
) -> Result<(), Error> {
    if plan.todo.is_empty() {
        return Ok(());
    }
    let mut scoring = config.clone();
    scoring.output_dir = config.output_dir.join(SCRATCH_DIR);
    scoring.outputs = Outputs::ScoresOnly;
    scoring.selection = Selection::Threshold(f32::INFINITY);
    let scoring_plan = plan::plan(&scoring)?;
    let mut scoring_summary = RunSummary::default();
    run::stream(&scoring, models, progress, &scoring_plan.todo, &|_| false, &mut scoring_summary)?;
    summary.images += scoring_summary.images;

    // Every shard of this worker must have its scores before the cut means anything.
    let all_jobs: Vec<&ShardJob> =
        plan.todo.iter().chain(plan.done.iter().map(|(job, _)| job)).collect();
    let mut scores = Vec::new();
    let mut unscored = Vec::new();
    for job in &all_jobs {
        let record = scoring.output_dir.join(format!("{}.done.json", job.name));
        if !record.is_file() {
            unscored.push(job.input.clone());
            continue;
        }
        let table = read_table(&job.table_path(&scoring.output_dir))?;
        scores.extend(table.iter().filter_map(|row| row.score));
    }
    if !unscored.is_empty() {
        summary.failed_shards.extend(scoring_summary.failed_shards);
        tracing::warn!(shards = unscored.len(), "some shards could not be scored; not cutting");
        return Ok(());
    }
    let cut = cut_for(&mut scores, fraction);
    tracing::info!(fraction, cut, scored = scores.len(), "keep-top cut");

    let settings = OutputSettings::of(config);
    let embedding_dim = config.save_embeddings.then(|| models.clip.embedding_dim());
    let keep = move |score: f32| score >= cut;
    for job in &plan.todo {
        let table = read_table(&job.table_path(&scoring.output_dir))?;
        let (out, read_error) = rewrite(config, job, table, embedding_dim, &keep, summary);
        let report = run::finish_output(config, job, &settings, out, read_error);
        summary.processed += 1;
        if report.error.is_some() {
            summary.failed_shards.push(report.clone());
        }
        progress.shard_finished(&report);
    }
    Ok(())
}

/// The lowest score among the best `fraction` of `scores` (`+inf` when there are none).
fn cut_for(scores: &mut [f32], fraction: f32) -> f32 {
    if scores.is_empty() {
        return f32::INFINITY;
    }
    scores.sort_by(|a, b| b.total_cmp(a));
    // A hair below the product, so that 5 × 0.4 (0.4 is not exact in binary) keeps 2, not 3.
    let keep = ((scores.len() as f64) * f64::from(fraction) - 1e-6).ceil().max(1.0) as usize;
    scores[keep.min(scores.len()) - 1]
}

/// Writes `job`'s final outputs from its input shard and its pass-one table.
fn rewrite(
    config: &RunConfig,
    job: &ShardJob,
    table: Vec<TableRow>,
    embedding_dim: Option<usize>,
    keep: &(dyn Fn(f32) -> bool + Sync),
    summary: &mut RunSummary,
) -> (run::ShardOutput, Option<String>) {
    let mut out = run::open_output(config, job, embedding_dim);
    let mut rows = table.into_iter();
    let mut read_error = None;
    let mut written = run::Written::default();
    match ShardReader::open(&job.input, config.read) {
        Err(e) => read_error = Some(run::error_chain(&e)),
        Ok(reader) => {
            for item in reader {
                let (key, members) = match item {
                    Ok(sample) => (sample.key, sample.members),
                    Err(e) => match e.skipped_sample_key() {
                        Some(key) => (key.to_string(), Vec::new()),
                        None => {
                            read_error = Some(run::error_chain(&e));
                            break;
                        }
                    },
                };
                let Some(row) = rows.next().filter(|row| row.key == key) else {
                    read_error = Some(format!(
                        "{} changed since it was scored (sample {key} is not in its score table); rerun with --overwrite",
                        job.input.display()
                    ));
                    break;
                };
                let outcome = match (row.score, row.error) {
                    (Some(score), _) => Outcome::Scored {
                        size: row.size.unwrap_or((0, 0)),
                        score,
                        embedding: row.embedding,
                    },
                    (None, error) => Outcome::Failed {
                        size: row.size,
                        error: error.unwrap_or_else(|| "not scored".into()),
                    },
                };
                let entry = Entry { shard: 0, key, members, image: None, outcome };
                run::write_entry(&mut out, entry, keep, &mut written);
            }
        }
    }
    summary.samples += written.samples;
    summary.kept += written.kept;
    summary.failed_samples += written.failed_samples;
    (out, read_error)
}

struct TableRow {
    key: String,
    score: Option<f32>,
    error: Option<String>,
    size: Option<(u32, u32)>,
    embedding: Option<Vec<f32>>,
}

fn read_table(path: &Path) -> Result<Vec<TableRow>, Error> {
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

fn read_batch(batch: &RecordBatch, rows: &mut Vec<TableRow>, path: &Path) -> Result<(), Error> {
    let column = |name: &str| {
        batch.column_by_name(name).ok_or_else(|| Error::Output {
            path: PathBuf::from(path),
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
        rows.push(TableRow {
            key: keys.value(i).to_string(),
            score: scores.is_valid(i).then(|| scores.value(i)),
            error: errors.is_valid(i).then(|| errors.value(i).to_string()),
            size: (widths.is_valid(i) && heights.is_valid(i))
                .then(|| (widths.value(i), heights.value(i))),
            embedding: embeddings
                .filter(|list| list.is_valid(i))
                .map(|list| list.value(i).as_primitive::<Float32Type>().values().to_vec()),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::cut_for;

    #[test]
    fn cut_keeps_the_best_fraction() {
        let mut scores = vec![1.0, 5.0, 3.0, 4.0, 2.0];
        assert_eq!(cut_for(&mut scores, 0.4), 4.0);
        assert_eq!(cut_for(&mut scores, 1.0), 1.0);
        assert_eq!(cut_for(&mut scores, 0.01), 5.0);
        assert_eq!(cut_for(&mut [], 0.5), f32::INFINITY);
    }
}
