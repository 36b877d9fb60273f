//! `sim compare RUN_DIR...`: pretrained vs. centralised vs. federated, side by side.
//!
//! Every directory gets a row: finished runs with their numbers and status, incomplete ones
//! (killed, still running, unreadable) with what is known and why. Warnings say when the runs
//! are not comparable: different base models, tokenizers or held-out sets.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use crate::report::{ReportError, RunStatus, Summary};

/// One directory as `compare` sees it.
enum Entry {
    Run(Box<Summary>),
    Unreadable(String),
}

/// Render a table of the runs' summaries.
///
/// # Errors
/// When no directory holds a readable `summary.json`.
pub fn table(dirs: &[PathBuf]) -> Result<String, ReportError> {
    let entries: Vec<(String, Entry)> = dirs
        .iter()
        .map(|d| (short(&d.display().to_string()), read(d)))
        .collect();
    let runs: Vec<(&Path, &Summary)> = dirs
        .iter()
        .zip(&entries)
        .filter_map(|(d, (_, e))| match e {
            Entry::Run(s) => Some((d.as_path(), s.as_ref())),
            Entry::Unreadable(_) => None,
        })
        .collect();
    if runs.is_empty() {
        let why: Vec<String> = entries
            .iter()
            .map(|(n, e)| match e {
                Entry::Unreadable(w) => format!("{n}: {w}"),
                Entry::Run(_) => String::new(),
            })
            .collect();
        return Err(ReportError::Format {
            path: dirs.first().cloned().unwrap_or_default(),
            message: format!("no readable run among the directories ({})", why.join("; ")),
        });
    }
    let mut out = header(&runs);
    for (name, e) in &entries {
        match e {
            Entry::Run(s) => row(&mut out, name, s),
            Entry::Unreadable(why) => {
                let _ = writeln!(out, "{name:<40} {:>16}  {why}", "unreadable");
            }
        }
    }
    task_table(&mut out, &entries);
    for w in warnings(&runs) {
        let _ = writeln!(out, "warning: {w}");
    }
    let _ = writeln!(
        out,
        "losses in nats per response token on the held-out split; MB = 10^6 bytes"
    );
    Ok(out)
}

/// The column names, and the untrained base's row when a run evaluated it.
fn header(runs: &[(&Path, &Summary)]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<40} {:>16} {:>7} {:>6} {:>10} {:>10} {:>10} {:>9} {:>11} {:>11}",
        "run",
        "status",
        "clients",
        "rounds",
        "pre loss",
        "final loss",
        "final ppl",
        "Δ loss",
        "down (MB)",
        "up (MB)"
    );
    if let Some(first) = runs
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.pretrained_eval_loss.is_finite())
    {
        let _ = writeln!(
            out,
            "{:<40} {:>16} {:>7} {:>6} {:>10.4} {:>10.4} {:>10.2} {:>9} {:>11} {:>11}",
            "pretrained (no fine-tuning)",
            "-",
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
    out
}

fn read(dir: &Path) -> Entry {
    if !dir.is_dir() {
        return Entry::Unreadable("no such directory".into());
    }
    match Summary::read(dir) {
        Ok(s) => Entry::Run(Box::new(s)),
        Err(_) if !dir.join("summary.json").exists() => {
            Entry::Unreadable(if dir.join("scenario.ron").exists() {
                "incomplete: no summary.json (stopped before its first write)".into()
            } else {
                "not a fedsim run directory (no summary.json)".into()
            })
        }
        Err(e) => Entry::Unreadable(format!("summary.json cannot be read: {e}")),
    }
}

fn row(out: &mut String, name: &str, s: &Summary) {
    let status = match s.status {
        RunStatus::Running => "incomplete".to_string(),
        other => other.to_string(),
    };
    let num = |v: f64, prec: usize| {
        if v.is_finite() {
            format!("{v:.prec$}")
        } else {
            "-".into()
        }
    };
    let delta = s.final_eval_loss - s.pretrained_eval_loss;
    let _ = writeln!(
        out,
        "{:<40} {:>16} {:>7} {:>6} {:>10} {:>10} {:>10} {:>9} {:>11.3} {:>11.3}",
        name,
        status,
        s.clients,
        format!("{}/{}", s.rounds_completed, s.rounds_planned),
        num(s.pretrained_eval_loss, 4),
        num(s.final_eval_loss, 4),
        num(s.final_eval_perplexity, 2),
        if delta.is_finite() {
            format!("{delta:+.4}")
        } else {
            "-".into()
        },
        s.bytes_down_total as f64 / 1e6,
        s.bytes_up_total as f64 / 1e6
    );
    match s.status {
        RunStatus::Running => {
            let _ = writeln!(
                out,
                "{:<40}   incomplete: still running, or killed after round {} (numbers so far)",
                "", s.rounds_completed
            );
        }
        RunStatus::Failed => {
            let _ = writeln!(
                out,
                "{:<40}   failed: {}",
                "",
                s.error.as_deref().unwrap_or("no reason recorded")
            );
        }
        _ => {}
    }
}

/// Task accuracy beside the losses, when a run scored a task: final accuracy with its
/// interval, macro-F1, the pretrained control and the majority class, time-to-accuracy.
fn task_table(out: &mut String, entries: &[(String, Entry)]) {
    let tasks: Vec<(&str, &crate::eval::progress::TaskEvalSummary)> = entries
        .iter()
        .filter_map(|(n, e)| match e {
            Entry::Run(s) => s.task_eval.as_ref().map(|t| (n.as_str(), t)),
            Entry::Unreadable(_) => None,
        })
        .collect();
    if tasks.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n{:<40} {:>8} {:>6} {:>8} {:>15} {:>8} {:>10} {:>8}  time-to-accuracy",
        "task accuracy",
        "task",
        "items",
        "accuracy",
        "95% CI",
        "macro-F1",
        "pretrained",
        "majority"
    );
    for (name, t) in tasks {
        let tta = t.time_to_accuracy.as_ref().map_or("-".to_string(), |x| {
            match (x.round, x.sim_seconds, x.bytes_up, x.bytes_down) {
                (Some(r), Some(secs), Some(up), Some(down)) => format!(
                    "{}: round {r}, {secs:.1} sim s, {:.3} MB up, {:.3} MB down",
                    x.target,
                    up as f64 / 1e6,
                    down as f64 / 1e6
                ),
                _ => format!(
                    "{}: never ({})",
                    x.target,
                    x.reason.as_deref().unwrap_or("not reached")
                ),
            }
        });
        let _ = writeln!(
            out,
            "{:<40} {:>8} {:>6} {:>8.3} {:>15} {:>8.3} {:>10} {:>8.3}  {tta}",
            name,
            t.task,
            t.items,
            t.accuracy,
            format!("[{:.3}, {:.3}]", t.ci95[0], t.ci95[1]),
            t.macro_f1,
            t.pretrained_accuracy
                .map_or("-".into(), |a| format!("{a:.3}")),
            t.majority
        );
    }
}

/// Why the runs may not be comparable.
fn warnings(runs: &[(&Path, &Summary)]) -> Vec<String> {
    let mut out = Vec::new();
    let differ = |f: &dyn Fn(&Path, &Summary) -> Option<String>| {
        let vals: Vec<Option<String>> = runs.iter().map(|(d, s)| f(d, s)).collect();
        vals.windows(2).any(|w| w[0] != w[1])
    };
    if differ(&|_, s| Some(format!("{} {}", s.model, s.base_parameters))) {
        let models: Vec<String> = runs.iter().map(|(_, s)| s.model.clone()).collect();
        out.push(format!(
            "the runs use different base models ({})",
            models.join(", ")
        ));
    } else if differ(&|d, _| base_fingerprint(d)) {
        out.push(
            "the runs' base weights differ (generated models depend on the seed); their \
             losses start from different models"
                .into(),
        );
    }
    if differ(&|d, _| file_fingerprint(&d.join("tokenizer.json"))) {
        out.push("the runs use different tokenizers; per-token losses are not comparable".into());
    }
    if differ(&|_, s| Some(format!("{} {}", s.eval_examples, s.eval_fingerprint))) {
        let evals: Vec<String> = runs
            .iter()
            .map(|(_, s)| format!("{} examples", s.eval_examples))
            .collect();
        out.push(format!(
            "the runs were evaluated on different held-out sets ({})",
            evals.join(", ")
        ));
    }
    out
}

/// FNV-1a of a file's bytes, or `None` when it cannot be read.
/// The base weights' identity: a pretrained base's SHA-256 (`model.json`), or the fingerprint of
/// a generated base's export.
fn base_fingerprint(dir: &Path) -> Option<String> {
    let record = std::fs::read_to_string(dir.join("model.json")).ok();
    match record.and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok()) {
        Some(v) => v.get("sha256").and_then(|h| h.as_str()).map(str::to_string),
        None => file_fingerprint(&dir.join("base_model").join("model.safetensors")),
    }
}

fn file_fingerprint(path: &Path) -> Option<String> {
    std::fs::read(path)
        .ok()
        .map(|b| format!("{:016x}", crate::hash::fnv1a(&b)))
}

fn short(name: &str) -> String {
    let n = name.chars().count();
    if n > 40 {
        let tail: String = name.chars().skip(n - 39).collect();
        format!("…{tail}")
    } else {
        name.to_string()
    }
}
