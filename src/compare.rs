//! `sim compare RUN_DIR...`: pretrained vs. centralised vs. federated, side by side.

use std::fmt::Write;
use std::path::PathBuf;

use crate::report::{ReportError, Summary};

/// Render a table of the runs' summaries.
///
/// # Errors
/// A directory without a readable `summary.json` (unfinished or not a run).
pub fn table(dirs: &[PathBuf]) -> Result<String, ReportError> {
    let runs: Vec<(String, Summary)> = dirs
        .iter()
        .map(|d| Ok((d.display().to_string(), Summary::read(d)?)))
        .collect::<Result<_, ReportError>>()?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<40} {:>7} {:>6} {:>10} {:>10} {:>10} {:>9} {:>11} {:>11}",
        "run",
        "clients",
        "rounds",
        "pre loss",
        "final loss",
        "final ppl",
        "Δ loss",
        "down (MB)",
        "up (MB)"
    );
    if let Some((_, first)) = runs.first() {
        let _ = writeln!(
            out,
            "{:<40} {:>7} {:>6} {:>10.4} {:>10.4} {:>10.2} {:>9} {:>11} {:>11}",
            "pretrained (no fine-tuning)",
            "-",
            0,
            first.pretrained_eval_loss,
            first.pretrained_eval_loss,
            first.pretrained_eval_perplexity,
            "0",
            "0",
            "0"
        );
    }
    for (name, s) in &runs {
        let name = if name.len() > 40 {
            format!("…{}", &name[name.len() - 39..])
        } else {
            name.clone()
        };
        let _ = writeln!(
            out,
            "{:<40} {:>7} {:>6} {:>10.4} {:>10.4} {:>10.2} {:>+9.4} {:>11.3} {:>11.3}",
            name,
            s.clients,
            s.rounds_completed,
            s.pretrained_eval_loss,
            s.final_eval_loss,
            s.final_eval_perplexity,
            s.final_eval_loss - s.pretrained_eval_loss,
            s.bytes_down_total as f64 / 1e6,
            s.bytes_up_total as f64 / 1e6
        );
    }
    let evals: Vec<usize> = runs.iter().map(|(_, s)| s.eval_examples).collect();
    if evals.windows(2).any(|w| w[0] != w[1]) {
        let _ = writeln!(
            out,
            "warning: the runs were evaluated on different held-out sets ({evals:?} examples)"
        );
    }
    let _ = writeln!(
        out,
        "losses in nats per response token on the held-out split"
    );
    Ok(out)
}
