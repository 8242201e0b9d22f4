//! A run: plan this worker's shards, then score and select them by the run's [`Selection`].
use std::time::Instant;

use crate::done::{ModelSetting, Settings};
use crate::outputs::{Keep, Target};
use crate::publish::OutputPlace;
use crate::{Error, Models, Outputs, Progress, RunConfig, RunSummary, Selection, plan, stages};

/// Runs the pipeline described by `config` with `models`.
pub fn run(
    config: &RunConfig,
    models: &Models,
    progress: &dyn Progress,
) -> Result<RunSummary, Error> {
    let started = Instant::now();
    let config = &config.with_stores()?;
    let place = OutputPlace::prepare(config)?;
    let (dim, model) = (Some(models.clip.embedding_dim()), models.setting());
    let target = final_target(config, dim, model, &place, Keep::Nothing);
    let plan = plan::plan(config, &target.dir, &target.settings, target.publish.as_ref())?;
    tracing::info!(
        todo = plan.todo.len(),
        skipped = plan.done.len(),
        run_shards = plan.total_in_run,
        worker = config.partition.index(),
        workers = config.partition.count(),
        "planned"
    );
    progress.started(plan.todo.len(), plan.done.len());
    let mut summary = RunSummary {
        shards: plan.todo.len() + plan.done.len(),
        skipped: plan.done.len(),
        ..RunSummary::default()
    };
    match config.selection {
        Selection::Threshold(threshold) => {
            let target = Target { keep: Keep::AtLeast(threshold), ..target };
            stages::stream(config, models, progress, &plan.todo, &target)?.add_to(&mut summary);
        }
        Selection::KeepTop(fraction) => {
            crate::keep_top::run(config, models, &place, progress, &plan, fraction, &mut summary)?;
        }
    }
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Where `config`'s final outputs go (`place`), keeping what `keep` keeps; `embedding_dim` is
/// the width of the embeddings there are to save (with [`RunConfig::save_embeddings`]).
pub(crate) fn final_target(
    config: &RunConfig,
    embedding_dim: Option<usize>,
    model: Option<ModelSetting>,
    place: &OutputPlace,
    keep: Keep,
) -> Target {
    Target {
        dir: place.dir.clone(),
        publish: place.publish.clone(),
        tar: config.outputs == Outputs::FilterAndScore,
        keep,
        settings: Settings::of(config).scored_by(model),
        embedding_dim: embedding_dim.filter(|_| config.save_embeddings),
        stream_rows: None,
    }
}
