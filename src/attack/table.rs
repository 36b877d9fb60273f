//! The attack results as text tables (one comparison across runs, details per run) and as a
//! ROC chart.

use std::fmt::Write;

use super::exposure::ExposureMethod;
use super::roc::{self, RocSummary};
use super::scoring::Score;
use super::AttackReport;
use crate::chart::{self, Series};

fn f3(x: Option<f64>) -> String {
    x.map_or_else(|| "—".into(), |v| format!("{v:.3}"))
}

fn roc_of(r: &AttackReport, s: Score, control: bool) -> Option<&RocSummary> {
    let e = r.membership.scores.iter().find(|x| x.score == s)?;
    if control {
        e.control.as_ref()
    } else {
        Some(&e.roc)
    }
}

fn exposure_cell(r: &AttackReport, control: bool) -> String {
    let seen: Vec<f64> = r
        .canaries
        .iter()
        .filter(|c| c.seen)
        .map(|c| {
            if control {
                c.pretrained.exposure
            } else {
                c.run.exposure
            }
        })
        .collect();
    if seen.is_empty() {
        return "—".into();
    }
    let max_possible = r
        .canaries
        .iter()
        .filter(|c| c.seen)
        .map(|c| c.max_exposure)
        .sum::<f64>()
        / seen.len() as f64;
    format!(
        "{:.1} / {:.1}",
        seen.iter().sum::<f64>() / seen.len() as f64,
        max_possible
    )
}

fn extraction_cell(e: &super::extraction::Extraction) -> String {
    format!(
        "{}/{} ({})",
        e.training_secrets,
        e.found,
        percent(e.precision)
    )
}

/// A share as a whole percentage, or "—".
fn percent(p: Option<f64>) -> String {
    p.map_or("—".into(), |p| format!("{:.0} %", 100.0 * p))
}

/// Scores shown in the comparison table.
const TABLE_SCORES: [Score; 5] = [
    Score::Loss,
    Score::RefRatio,
    Score::Zlib,
    Score::MinK,
    Score::MinKPlus,
];

/// One row: the run's model, or (`control`) the pretrained base it started from.
fn row(out: &mut String, name: &str, r: &AttackReport, control: bool) {
    let (kind, eps, loss, ext) = if control {
        (
            "—",
            "—".to_string(),
            r.pretrained_eval_loss,
            &r.extraction_pretrained,
        )
    } else {
        (
            r.kind.label(),
            r.epsilon.map_or("—".into(), |e| format!("{e:.2}")),
            r.eval_loss,
            &r.extraction,
        )
    };
    let _ = write!(out, "{name:<22} {kind:<15} {eps:>8} {loss:>9.3}");
    for s in TABLE_SCORES {
        let _ = write!(out, " {:>10}", f3(roc_of(r, s, control).map(|x| x.auc)));
    }
    let tpr = roc_of(r, Score::Loss, control).map(|x| x.tpr_at_fpr[1]);
    let course = (!control).then_some(r.membership.course_rule_accuracy);
    let _ = writeln!(
        out,
        " {:>7} {:>7} {:>12} {:>12}",
        f3(tpr),
        f3(course),
        exposure_cell(r, control),
        extraction_cell(ext)
    );
}

/// One row per model: the pretrained base (the first run's control), then every run.
pub fn comparison(reports: &[AttackReport]) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "{:<22} {:<15} {:>8} {:>9}",
        "model", "kind", "ε", "eval loss"
    );
    for s in TABLE_SCORES {
        let _ = write!(out, " {:>10}", s.label());
    }
    let _ = writeln!(
        out,
        " {:>7} {:>7} {:>12} {:>12}",
        "TPR@1%", "course", "exposure", "extracted"
    );
    if let Some(first) = reports.first() {
        row(&mut out, "pretrained (control)", first, true);
    }
    let n = reports.first().map_or(0, |r| r.membership.members);
    for r in reports {
        row(&mut out, &r.scenario, r, false);
    }
    let _ = writeln!(
        out,
        "eval loss: held-out loss after training, nats/token (what the leakage bought); loss … \
         Min-20%++: ROC AUC of each membership score (0.5 = chance; members = records the run \
         trained on, non-members = held-out records of the same source; {} a side, so ±{:.3} is \
         a 95 % interval around 0.5); TPR@1%: the loss \
         attack's true-positive rate at 1 % false positives; course: accuracy of the course's \
         rule \"member iff PPL_ft/PPL_pre < 1\"; exposure: mean canary exposure / its maximum, \
         bits; extracted: training identifiers / identifiers found in samples (precision); ε at \
         the run's δ",
        n,
        1.96 * roc::auc_standard_error(0.5, n, n)
    );
    out
}

/// The detail tables of one run.
pub fn details(r: &AttackReport) -> String {
    let mut out = String::new();
    let m = &r.membership;
    let _ = writeln!(
        out,
        "{} ({}): {} members from clients {:?}, {} non-members; mean loss {:.3} vs {:.3} nats/token",
        r.scenario,
        r.run.display(),
        m.members,
        m.member_clients,
        m.non_members,
        m.loss_members,
        m.loss_non_members
    );
    let _ = writeln!(
        out,
        "  {:<14} {:>13} {:>9} {:>9} {:>9} {:>9} {:>12}",
        "score", "AUC (±95 %)", "TPR@0.1%", "TPR@1%", "TPR@5%", "best acc", "control AUC"
    );
    for s in &m.scores {
        let _ = writeln!(
            out,
            "  {:<14} {:>13} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>12}",
            s.score.label(),
            format!("{:.3} ± {:.3}", s.roc.auc, 1.96 * s.roc.auc_se),
            s.roc.tpr_at_fpr[0],
            s.roc.tpr_at_fpr[1],
            s.roc.tpr_at_fpr[2],
            s.roc.best_balanced_accuracy,
            f3(s.control.as_ref().map(|c| c.auc))
        );
    }
    let _ = writeln!(
        out,
        "  course rule (PPL ratio < 1 ⇒ member): accuracy {:.3}",
        m.course_rule_accuracy
    );
    canary_lines(&mut out, r);
    for (name, e) in [
        ("run's model", &r.extraction),
        ("pretrained", &r.extraction_pretrained),
    ] {
        let _ = writeln!(
            out,
            "  extraction, {name}: {} samples, {} identifiers found, {} in the training data \
             (precision {}), canaries {:?}, per client {:?}",
            e.samples,
            e.found,
            e.training_secrets,
            percent(e.precision),
            e.canaries,
            e.by_client
        );
    }
    if let Some(inv) = &r.inversion {
        inversion_lines(&mut out, inv);
    }
    out
}

/// A split run: the share of private tokens the server recovers from the cut's activations.
pub fn inversion_lines(out: &mut String, inv: &super::inversion::Inversion) {
    let _ = writeln!(
        out,
        "  inversion of the cut's activations (server's view, cut {}, {}; decoder fitted on {} \
         held-out tokens):",
        inv.cut_layer, inv.codec, inv.fit_tokens
    );
    for (name, x) in [
        ("nearest token", &inv.nearest),
        ("learned decoder", &inv.learned),
        ("  response only", &inv.learned_response),
        ("floor (top token)", &inv.floor),
    ] {
        let _ = writeln!(
            out,
            "    {name:<18} {:>6.1} % of {} tokens [{:.1}, {:.1}]",
            100.0 * x.rate,
            x.tokens,
            100.0 * x.interval[0],
            100.0 * x.interval[1]
        );
    }
}

/// The canaries' table: each canary's exposure under the run's and the pretrained model.
fn canary_lines(out: &mut String, r: &AttackReport) {
    let _ = writeln!(
        out,
        "  {:<7} {:<14} {:>6} {:>7} {:>5} {:>11} {:>11} {:>8}  method",
        "canary", "kind", "client", "repeats", "seen", "exposure", "pretrained", "max"
    );
    for c in &r.canaries {
        let _ = writeln!(
            out,
            "  {:<7} {:<14} {:>6} {:>7} {:>5} {:>11.2} {:>11.2} {:>8.2}  {}",
            c.id,
            c.kind.label(),
            c.client,
            c.repeats,
            if c.seen { "yes" } else { "no" },
            c.run.exposure,
            c.pretrained.exposure,
            c.max_exposure,
            match c.run.method {
                ExposureMethod::Enumerated => format!("rank of {} fills", c.candidates + 1),
                ExposureMethod::SkewNormal =>
                    format!("skew-normal fit to {} sampled fills", c.candidates),
            }
        );
    }
}

/// `roc.svg`: each score's ROC curve with the run's model, and the loss attack with the
/// pretrained model alone.
///
/// # Errors
/// When plotters fails (a message).
pub fn roc_svg(r: &AttackReport) -> Result<String, String> {
    let mut series: Vec<Series> = r
        .membership
        .scores
        .iter()
        .filter(|s| {
            matches!(
                s.score,
                Score::Loss | Score::RefLogRatio | Score::Zlib | Score::MinKPlus
            )
        })
        .map(|s| Series {
            label: format!("{} (AUC {:.3})", s.score.label(), s.roc.auc),
            points: s.curve.iter().map(|p| (p.fpr, p.tpr)).collect(),
        })
        .collect();
    if let Some(s) = r.membership.scores.iter().find(|s| s.score == Score::Loss) {
        if let Some(c) = &s.control {
            series.push(Series {
                label: format!("loss, pretrained only (AUC {:.3})", c.auc),
                points: s.control_curve.iter().map(|p| (p.fpr, p.tpr)).collect(),
            });
        }
    }
    chart::roc(
        &format!("Membership inference: {} ({})", r.scenario, r.kind.label()),
        &series,
    )
}
