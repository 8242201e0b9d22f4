//! `--keep-top FRACTION`: score everything first, then keep the best fraction of the run.
//!
//! Pass one streams every shard through the model into score tables under
//! `OUTPUT/.aesthete-keep-top/` (resumable like any run, and reused by a rerun with another
//! fraction). Pass two finds the score at the cut over all of this worker's tables, then
//! re-reads each input shard and writes its final tar and table from its scores, keeping
//! what reaches the cut. Only pass one runs the model.
use crate::done::Settings;
use crate::outputs::{Keep, ShardOutput, Target, Totals};
use crate::plan::{self, Plan, ShardJob};
use crate::publish::OutputPlace;
use crate::record::{SampleRecord, error_chain};
use crate::table::{self, StoredRow};
use crate::{Error, Models, Progress, RunConfig, RunSummary, ShardError, stages};

/// Directory of pass one's score tables inside the output directory.
pub(crate) const SCRATCH_DIR: &str = ".aesthete-keep-top";

pub(crate) fn run(
    config: &RunConfig,
    models: &Models,
    place: &OutputPlace,
    progress: &dyn Progress,
    plan: &Plan,
    fraction: f32,
    summary: &mut RunSummary,
) -> Result<(), Error> {
    if plan.todo.is_empty() {
        return Ok(());
    }
    // Keep-top runs write to local directories only (`run` refuses others): `place.dir` is
    // the output directory.
    let scoring = Target {
        dir: place.dir.join(SCRATCH_DIR),
        tar: false,
        keep: Keep::Nothing,
        settings: Settings::scores_for_cut(config),
        embedding_dim: config.save_embeddings.then(|| models.clip.embedding_dim()),
        stream_rows: None,
        publish: None,
    };
    let scoring_plan = plan::plan(config, &scoring.dir, &scoring.settings, None)?;
    let scored = stages::stream(config, models, progress, &scoring_plan.todo, &scoring)?;
    summary.images += scored.scored();

    // Every shard of this worker must have its scores before the cut means anything.
    let all_jobs: Vec<&ShardJob> =
        plan.todo.iter().chain(plan.done.iter().map(|(job, _)| job)).collect();
    let mut scores = Vec::new();
    let mut unscored = Vec::new();
    for job in &all_jobs {
        if !job.record_path(&scoring.dir).is_file() {
            unscored.push(job.input.clone());
            continue;
        }
        let rows = table::read(&job.table_path(&scoring.dir))?;
        scores.extend(rows.iter().filter_map(|row| row.result.score()));
    }
    if !unscored.is_empty() {
        summary.failed_shards.extend(scored.failed_shards().iter().cloned());
        tracing::warn!(shards = unscored.len(), "some shards could not be scored; not cutting");
        return Ok(());
    }
    let cut = cut_for(&mut scores, fraction);
    tracing::info!(fraction, cut, scored = scores.len(), "keep-top cut");

    let target = crate::run::final_target(config, models, place, Keep::AtLeast(cut));
    let mut totals = Totals::default();
    for job in &plan.todo {
        let rows = table::read(&job.table_path(&scoring.dir))?;
        let (out, read_error) = rewrite(config, &target, job, rows);
        let (report, scored) = out.finish(&target, job, read_error);
        totals.add(&report, scored);
        progress.shard_finished(&report);
    }
    totals.add_rewritten_to(summary);
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

/// Fills `job`'s final outputs from its input shard's members and its `rows` of scores.
fn rewrite(
    config: &RunConfig,
    target: &Target,
    job: &ShardJob,
    rows: Vec<StoredRow>,
) -> (ShardOutput, Option<ShardError>) {
    let mut out = ShardOutput::open(target, job);
    let mut rows = rows.into_iter();
    let mut read_error = None;
    match job.open(config.stores_ref(), config.read) {
        Err(e) => read_error = Some(ShardError::Input(error_chain(&e))),
        Ok(reader) => {
            for item in reader {
                let (key, members) = match item {
                    Ok(sample) => sample.into_parts(),
                    Err(e) => match e.skipped_sample_key() {
                        Some(key) => (key.to_string(), Vec::new()),
                        None => {
                            read_error = Some(ShardError::Input(error_chain(&e)));
                            break;
                        }
                    },
                };
                let Some(row) = rows.next().filter(|row| row.key == key) else {
                    read_error = Some(ShardError::Input(format!(
                        "{} changed since it was scored (sample {key} is not in its score table); rerun with --overwrite",
                        job.input
                    )));
                    break;
                };
                out.push(target, job, SampleRecord { key, members, result: row.result });
            }
        }
    }
    (out, read_error)
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
