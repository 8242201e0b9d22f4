//! `filter --scores DIR`: a new selection from the tables an earlier `score` or `filter` run
//! wrote, with no model loaded.
//!
//! Each input shard `NAME.tar` takes its rows from `DIR/NAME.parquet` and is rewritten as
//! keep-top's second pass rewrites it ([`crate::rewrite`]): the outputs are those a fresh run
//! with this selection writes, byte for byte, at the speed of copying the tars.
use std::path::Path;
use std::time::Instant;

use crate::done::{self, Settings};
use crate::outputs::{Keep, Totals};
use crate::plan::{self, ShardJob};
use crate::publish::OutputPlace;
use crate::record::error_chain;
use crate::table::{self, StoredTable};
use crate::{Error, Progress, RunConfig, RunSummary, Selection, ShardError, rewrite};

/// Writes the outputs `config` describes from the score tables in `scores_dir` (`NAME.parquet`
/// for each input `NAME.tar`, as an earlier `score` or `filter` run over the same inputs wrote
/// them) instead of running a model: the same tars and tables as [`crate::run`] with these
/// settings would write, when the tables came from the same models.
///
/// Completion records, resume, [`RunConfig::overwrite`] and [`RunConfig::partition`] work as
/// for [`crate::run`]. `--keep-top` cuts over the tables of all of this worker's shards. A
/// shard whose table is missing, unreadable or holds other keys fails, named in the summary,
/// and the others go on; with [`RunConfig::save_embeddings`], so does one whose table has no
/// embeddings. `scores_dir` may not be the output directory.
pub fn refilter(
    config: &RunConfig,
    scores_dir: &Path,
    progress: &dyn Progress,
) -> Result<RunSummary, Error> {
    let started = Instant::now();
    let config = &config.with_stores()?;
    if !scores_dir.is_dir() {
        return Err(Error::Config(format!(
            "the scores directory {} does not exist",
            scores_dir.display()
        )));
    }
    let output = config.output_dir.as_local().map(Path::canonicalize);
    if let (Ok(a), Some(Ok(b))) = (scores_dir.canonicalize(), output)
        && a == b
    {
        return Err(Error::Config(format!(
            "--scores {} is the output directory: the new tables would replace the ones read; choose another output directory",
            scores_dir.display()
        )));
    }
    let settings = Settings::of(config);
    let place = OutputPlace::prepare(config)?;
    let plan = plan::plan(config, &place.dir, &settings, place.publish.as_ref())?;
    tracing::info!(
        todo = plan.todo.len(),
        skipped = plan.done.len(),
        run_shards = plan.total_in_run,
        scores = %scores_dir.display(),
        "planned a rewrite from stored scores"
    );
    progress.started(plan.todo.len(), plan.done.len());
    let mut summary = RunSummary {
        shards: plan.todo.len() + plan.done.len(),
        skipped: plan.done.len(),
        ..RunSummary::default()
    };
    let mut totals = Totals::default();
    let finished = |totals: &mut Totals, report, scored| {
        totals.add(&report, scored);
        progress.shard_finished(&report);
    };
    let keep = match config.selection {
        Selection::Threshold(threshold) => Keep::AtLeast(threshold),
        Selection::KeepTop(fraction) if !plan.todo.is_empty() => {
            // The cut is over every shard of this worker, done or not, as in a fresh run.
            let all: Vec<&ShardJob> =
                plan.todo.iter().chain(plan.done.iter().map(|(job, _)| job)).collect();
            let missing: Vec<&ShardJob> =
                all.iter().copied().filter(|job| !job.table_path(scores_dir).is_file()).collect();
            if let Some(first) = missing.first() {
                for job in &plan.todo {
                    let error = if missing.iter().any(|m| m.name == job.name) {
                        missing_table(job, scores_dir)
                    } else {
                        ShardError::Input(format!(
                            "not cut: --keep-top cuts over the score tables of all {} shards of this worker, and {} of them are missing (first {})",
                            all.len(),
                            missing.len(),
                            first.table_path(scores_dir).display()
                        ))
                    };
                    finished(&mut totals, rewrite::failed(job, error), 0);
                }
                totals.add_rewritten_to(&mut summary);
                summary.elapsed = started.elapsed();
                return Ok(summary);
            }
            let tables: Vec<_> = all.iter().map(|job| job.table_path(scores_dir)).collect();
            Keep::AtLeast(rewrite::cut_over(tables.iter().map(|p| p.as_path()), fraction)?)
        }
        Selection::KeepTop(_) => Keep::Nothing,
    };
    for job in &plan.todo {
        let path = job.table_path(scores_dir);
        match stored_rows(config, &settings, scores_dir, job) {
            Ok(table) => {
                let target =
                    crate::run::final_target(config, table.embedding_dim, None, &place, keep);
                let remedy = "give the tables of an earlier run over these same shards";
                let (report, scored) =
                    rewrite::rewrite(config, &target, job, &path, table.rows, remedy);
                finished(&mut totals, report, scored);
            }
            Err(error) => finished(&mut totals, rewrite::failed(job, error), 0),
        }
    }
    totals.add_rewritten_to(&mut summary);
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// `job`'s stored table, checked against what this run needs from it.
fn stored_rows(
    config: &RunConfig,
    settings: &Settings,
    scores_dir: &Path,
    job: &ShardJob,
) -> Result<StoredTable, ShardError> {
    let path = job.table_path(scores_dir);
    if !path.is_file() {
        return Err(missing_table(job, scores_dir));
    }
    // The earlier run's record says how its images were decoded; the new record must not
    // claim another way.
    let record =
        done::read(&job.record_path(scores_dir)).map_err(|e| ShardError::Input(error_chain(&e)))?;
    if let Some(recorded) = record.and_then(|r| r.settings.preprocess)
        && settings.preprocess.is_some_and(|this| this != recorded)
    {
        return Err(ShardError::Input(format!(
            "{} was scored with preprocessing {recorded}, not {}; pass the --preprocess it was scored with",
            path.display(),
            settings.preprocess.expect("checked"),
        )));
    }
    let table = table::read(&path).map_err(|e| ShardError::Input(error_chain(&e)))?;
    if config.save_embeddings && table.embedding_dim.is_none() {
        return Err(ShardError::Input(format!(
            "--save-embeddings: {} has no embeddings (it was written without --save-embeddings)",
            path.display()
        )));
    }
    Ok(table)
}

fn missing_table(job: &ShardJob, scores_dir: &Path) -> ShardError {
    ShardError::Input(format!(
        "no score table for {}: {} does not exist",
        job.input,
        job.table_path(scores_dir).display()
    ))
}
