//! The data section: the source's files and limits, the split, canaries, the partitioner.

use std::path::Path;

use super::check::{field_path, Check, Range};
use crate::data::{DataSource, Partition};
use crate::eval::task::TaskSource;
use crate::model::LlamaConfig;
use crate::scenario::file::ScenarioFile;
use crate::scenario::ScenarioError;

pub(super) fn check_data(
    c: &Check<'_>,
    file: &ScenarioFile,
    model: &LlamaConfig,
) -> Result<(), ScenarioError> {
    let d = &file.data;
    match &d.source {
        DataSource::Synthetic { records } => c.ensure(
            (2..=10_000_000).contains(records),
            field_path!(file.data.source => Synthetic.records),
            format!("is {records}; it must be 2..=10000000"),
        )?,
        source => check_file_source(c, source)?,
    }
    c.finite_in(
        d.eval_fraction,
        Range::open(0.0, 1.0),
        field_path!(file.data.eval_fraction),
    )?;
    c.ensure(
        (8..=model.max_position_embeddings).contains(&d.max_seq_len),
        field_path!(file.data.max_seq_len),
        format!(
            "is {}; it must be 8..={} (the model's max_position_embeddings)",
            d.max_seq_len, model.max_position_embeddings
        ),
    )?;
    c.ensure(
        d.canaries <= 1000,
        field_path!(file.data.canaries),
        format!("is {}; it must be 0..=1000", d.canaries),
    )?;
    c.ensure(
        d.canaries == 0 || (1..=1000).contains(&d.canary_repeats),
        field_path!(file.data.canary_repeats),
        format!(
            "is {}; it must be 1..=1000 when canaries are planted",
            d.canary_repeats
        ),
    )?;
    match file.partition {
        Partition::Iid => {}
        Partition::Dirichlet { alpha } => c.finite_in(
            alpha,
            Range::open_closed(0.0, 1e6),
            field_path!(file.partition => Dirichlet.alpha),
        )?,
        Partition::SizeSkew { sigma } => c.finite_in(
            sigma,
            Range::closed(0.0, 10.0),
            field_path!(file.partition => SizeSkew.sigma),
        )?,
    }

    Ok(())
}

/// A source that reads files: they exist, `limit` is at least 2.
fn check_file_source(c: &Check<'_>, source: &DataSource) -> Result<(), ScenarioError> {
    let kind = source.kind();
    let mut files: Vec<(&Path, &str)> = source.path().map(|p| (p, "path")).into_iter().collect();
    if let DataSource::Fpb {
        test_split: Some(t),
        ..
    } = source
    {
        files.push((t, "test_split"));
    }
    for (p, field) in files {
        c.ensure(
            p.is_file(),
            &format!("data.source.{kind}.{field}"),
            format!(
                "{} does not exist or is not a file; give the path of the file",
                p.display()
            ),
        )?;
    }
    if let Some(l) = source.limit() {
        c.ensure(
            l >= 2,
            &format!("data.source.{kind}.limit"),
            format!("is {l}; it must be at least 2"),
        )?;
    }
    if let DataSource::Classification { path, labels, .. } = source {
        if let Err(e) = crate::data::labelled::LabelSet::new(labels.clone(), path) {
            return Err(c.fail("data.source.Classification.labels", e.to_string()));
        }
    }
    Ok(())
}

/// The `eval` section: a task file that exists, a LoRA trainer to score, sane numbers.
pub(super) fn check_eval(c: &Check<'_>, file: &ScenarioFile) -> Result<(), ScenarioError> {
    let Some(e) = &file.eval else {
        return Ok(());
    };
    let kind = match &e.task {
        TaskSource::Fpb(_) => "Fpb",
        TaskSource::Fiqa(_) => "Fiqa",
        TaskSource::Tfns(_) => "Tfns",
        TaskSource::PubMedQa { .. } => "PubMedQa",
        TaskSource::Classification { .. } => "Classification",
    };
    let mut files = vec![e.task.path()];
    if let TaskSource::PubMedQa { split: Some(s), .. } = &e.task {
        files.push(s);
    }
    for p in files {
        c.ensure(
            p.is_file(),
            &format!("eval.task.{kind}"),
            format!(
                "{} does not exist or is not a file; give the task's test file",
                p.display()
            ),
        )?;
    }
    c.ensure(
        file.trainer == crate::trainer::TrainerKind::Lora,
        field_path!(file.eval),
        "needs a model to score: the synthetic trainer has none (remove eval, or use trainer: Lora)",
    )?;
    c.ensure(
        e.every >= 1,
        field_path!(file.eval => every),
        format!("is {}; score the subset every 1 or more rounds", e.every),
    )?;
    c.ensure(
        e.subset >= 1,
        field_path!(file.eval => subset),
        format!("is {}; the subset needs at least 1 item", e.subset),
    )?;
    if let Some(t) = e.target_accuracy {
        c.finite_in(
            t,
            Range::open_closed(0.0, 1.0),
            field_path!(file.eval => target_accuracy),
        )?;
    }
    Ok(())
}
