//! `--keep-top FRACTION`: score everything first, then keep the best fraction of the run.
//!
//! Pass one streams every shard through the model into score tables under
//! `OUTPUT/.aesthete-keep-top/` (resumable like any run, and reused by a rerun with another
//! fraction; for an object-store output, in the run's staging directory, scored again by a
//! rerun). Pass two finds the score at the cut over all of this worker's tables, then
//! re-reads each input shard and writes its final tar and table from its scores, keeping
//! what reaches the cut ([`crate::rewrite`]). Only pass one runs the model.
use crate::done::Settings;
use crate::outputs::{Keep, Target, Totals};
use crate::plan::{self, Plan, ShardJob};
use crate::publish::OutputPlace;
use crate::{Error, Models, Progress, RunConfig, RunSummary, rewrite, stages, table};

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
    let embedding_dim = models.clip.embedding_dim();
    // Pass one's tables go beside the outputs: in the output directory, or, for an object
    // store, in the run's staging directory (not uploaded: a rerun scores again the shards
    // whose final outputs are not yet in the store, and those of its other shards, for the cut).
    let scoring = Target {
        dir: place.dir.join(SCRATCH_DIR),
        tar: false,
        keep: Keep::Nothing,
        settings: Settings::scores_for_cut(config).scored_by(models.setting()),
        embedding_dim: config.save_embeddings.then_some(embedding_dim),
        stream_rows: None,
        publish: None,
    };
    let scoring_plan = plan::plan(config, &scoring.dir, &scoring.settings, None)?;
    let scored = stages::stream(config, models, progress, &scoring_plan.todo, &scoring)?;
    summary.images += scored.scored();

    // Every shard of this worker must have its scores before the cut means anything.
    let all_jobs: Vec<&ShardJob> =
        plan.todo.iter().chain(plan.done.iter().map(|(job, _)| job)).collect();
    if all_jobs.iter().any(|job| !job.record_path(&scoring.dir).is_file()) {
        summary.failed_shards.extend(scored.failed_shards().iter().cloned());
        tracing::warn!("some shards could not be scored; not cutting");
        return Ok(());
    }
    let tables: Vec<_> = all_jobs.iter().map(|job| job.table_path(&scoring.dir)).collect();
    let cut = rewrite::cut_over(tables.iter().map(|p| p.as_path()), fraction)?;

    let (dim, model) = (Some(embedding_dim), models.setting());
    let target = crate::run::final_target(config, dim, model, place, Keep::AtLeast(cut));
    let mut totals = Totals::default();
    for job in &plan.todo {
        let path = job.table_path(&scoring.dir);
        let rows = table::read(&path)?.rows;
        let remedy = "the shard changed since it was scored; rerun with --overwrite";
        let (report, scored) = rewrite::rewrite(config, &target, job, &path, rows, remedy);
        totals.add(&report, scored);
        progress.shard_finished(&report);
    }
    totals.add_rewritten_to(summary);
    Ok(())
}
