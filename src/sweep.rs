//! `sim sweep`: one scenario, a grid of `--vary PATH=V1,V2,…` values, one run per combination,
//! and one table (printed, and written as `sweep.csv` and `sweep.txt`) of how the federation
//! degrades: final held-out loss, rounds completed, simulated time, drops by reason, ε.

use std::fmt::Write;
use std::path::PathBuf;

use serde::Serialize;

use crate::report::Summary;

/// A bad `--vary`.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// Not `PATH=V1,V2,…`.
    #[error("--vary {arg}: {message}")]
    Vary {
        /// The argument as given.
        arg: String,
        /// What is wrong.
        message: String,
    },
}

/// One varied field and its values (in the scenario's own syntax).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vary {
    /// Dotted path, as for `--set`.
    pub path: String,
    /// Values, in order.
    pub values: Vec<String>,
}

impl Vary {
    /// Parse `PATH=V1,V2,…`; commas inside brackets or quotes do not split
    /// (`partition=Dirichlet(alpha: 0.1),Iid`).
    ///
    /// # Errors
    /// [`SweepError::Vary`] for a missing `=`, an empty value or unbalanced brackets.
    pub fn parse(arg: &str) -> Result<Self, SweepError> {
        let err = |message: &str| SweepError::Vary {
            arg: arg.to_string(),
            message: message.to_string(),
        };
        let (path, list) = arg.split_once('=').ok_or_else(|| {
            err("expected PATH=V1,V2,… e.g. --vary system.crash_probability=0,0.1,0.3")
        })?;
        if path.trim().is_empty() {
            return Err(err("the path is empty"));
        }
        let (mut values, mut cur, mut depth, mut quoted) = (Vec::new(), String::new(), 0i32, false);
        for ch in list.chars() {
            match ch {
                '"' => quoted = !quoted,
                '(' | '[' | '{' if !quoted => depth += 1,
                ')' | ']' | '}' if !quoted => depth -= 1,
                ',' if depth == 0 && !quoted => {
                    values.push(std::mem::take(&mut cur));
                    continue;
                }
                _ => {}
            }
            cur.push(ch);
        }
        values.push(cur);
        if depth != 0 || quoted {
            return Err(err("unbalanced brackets or quotes"));
        }
        let values: Vec<String> = values.into_iter().map(|v| v.trim().to_string()).collect();
        if values.iter().any(String::is_empty) {
            return Err(err("a value is empty"));
        }
        Ok(Self {
            path: path.trim().to_string(),
            values,
        })
    }
}

/// Parse every `--vary`, refusing a path varied twice, or inside another varied path (one would
/// silently override the other, and the table would show values that never ran).
///
/// # Errors
/// [`SweepError::Vary`] for a bad argument or an overlapping path.
pub fn parse_all(args: &[String]) -> Result<Vec<Vary>, SweepError> {
    let varies: Vec<Vary> = args
        .iter()
        .map(|a| Vary::parse(a))
        .collect::<Result<_, _>>()?;
    let inside = |a: &str, b: &str| a == b || a.starts_with(&format!("{b}."));
    for (i, v) in varies.iter().enumerate() {
        if let Some(w) = varies[..i]
            .iter()
            .find(|w| inside(&v.path, &w.path) || inside(&w.path, &v.path))
        {
            return Err(SweepError::Vary {
                arg: args[i].clone(),
                message: format!(
                    "`{}` is already varied by --vary {}=…; one would override the other: \
                     give each path once, with all its values",
                    v.path, w.path
                ),
            });
        }
    }
    Ok(varies)
}

/// Every combination of the varied values, as `--set` arguments, first field slowest.
pub fn combinations(varies: &[Vary]) -> Vec<Vec<String>> {
    varies.iter().fold(vec![Vec::new()], |acc, v| {
        acc.iter()
            .flat_map(|prefix| {
                v.values.iter().map(move |value| {
                    let mut c = prefix.clone();
                    c.push(format!("{}={value}", v.path));
                    c
                })
            })
            .collect()
    })
}

/// A directory name for a combination: its values, made file-name safe.
pub fn run_name(index: usize, settings: &[String]) -> String {
    let mut name = format!("{:03}", index + 1);
    for s in settings {
        let value = s.split_once('=').map_or(s.as_str(), |(_, v)| v);
        name.push('_');
        name.extend(value.chars().map(|c| {
            if c.is_ascii_alphanumeric() || "-.".contains(c) {
                c
            } else {
                '-'
            }
        }));
    }
    name.chars().take(120).collect()
}

/// One run of a sweep.
#[derive(Debug, Clone, Serialize)]
pub struct SweepRow {
    /// The `--set` values of the combination.
    pub settings: Vec<String>,
    /// Its run directory.
    pub dir: PathBuf,
    /// Its summary.
    pub summary: Summary,
}

const COLUMNS: [&str; 10] = [
    "status",
    "rounds",
    "final loss",
    "sim (s)",
    "crashed",
    "deadline",
    "failed",
    "MB up",
    "epsilon",
    "wall (s)",
];

fn cells(s: &Summary) -> [String; 10] {
    let num = |v: f64, p: usize| {
        if v.is_finite() {
            format!("{v:.p$}")
        } else {
            "-".into()
        }
    };
    [
        s.status.to_string(),
        format!("{}/{}", s.rounds_completed, s.rounds_planned),
        num(s.final_eval_loss, 4),
        num(s.sim_seconds, 1),
        s.dropped.crashed.to_string(),
        s.dropped.deadline.to_string(),
        s.dropped.failed.to_string(),
        format!("{:.3}", s.bytes_up_total as f64 / 1e6),
        s.dp.as_ref()
            .map_or("-".into(), |d| format!("{:.4}", d.epsilon)),
        format!("{:.1}", s.wall_seconds),
    ]
}

/// The backdoor column, when a run planted one: success with the trigger / without it.
fn backdoor_cell(rows: &[SweepRow]) -> Option<Vec<String>> {
    rows.iter().any(|r| r.summary.backdoor.is_some()).then(|| {
        rows.iter()
            .map(|r| {
                r.summary.backdoor.map_or("-".into(), |b| {
                    format!("{:.2} / {:.2}", b.with_trigger, b.without_trigger)
                })
            })
            .collect()
    })
}

/// The withheld column, when a run used secure aggregation: its rounds that released
/// nothing (`secagg_threshold`, `dp_min_survivors`) of those it ran.
fn withheld_cell(rows: &[SweepRow]) -> Option<Vec<String>> {
    rows.iter()
        .any(|r| r.summary.secure_aggregation.is_some())
        .then(|| {
            rows.iter()
                .map(|r| {
                    let s = &r.summary;
                    s.secure_aggregation.map_or("-".into(), |a| {
                        format!("{}/{}", a.failed_rounds, s.rounds_completed)
                    })
                })
                .collect()
        })
}

/// The WAN column, when a run was hierarchical: MB that crossed the wide-area link, both
/// ways — edges ↔ cloud, or for a flat run every client ↔ the server.
/// Split learning's activations and gradients, both ways, when a run split the model.
fn cut_cell(rows: &[SweepRow]) -> Option<Vec<String>> {
    rows.iter().any(|r| r.summary.split.is_some()).then(|| {
        let mb = |t: crate::split::SplitTraffic| (t.up_bytes + t.down_bytes) as f64 / 1e6;
        rows.iter()
            .map(|r| {
                r.summary
                    .split
                    .map_or("-".into(), |t| format!("{:.1}", mb(t)))
            })
            .collect()
    })
}

fn wan_cell(rows: &[SweepRow]) -> Option<Vec<String>> {
    rows.iter().any(|r| r.summary.hierarchy.is_some()).then(|| {
        rows.iter()
            .map(|r| {
                let s = &r.summary;
                let bytes = s
                    .hierarchy
                    .map_or(s.bytes_down_total.saturating_add(s.bytes_up_total), |h| {
                        h.wan_bytes_down + h.wan_bytes_up
                    });
                format!("{:.3}", bytes as f64 / 1e6)
            })
            .collect()
    })
}

/// The task columns, when a run scored a task: final accuracy [95 % interval], macro-F1,
/// and time-to-accuracy (simulated seconds and MB up, or "never").
fn task_cells(rows: &[SweepRow]) -> Option<Vec<[String; 4]>> {
    rows.iter().any(|r| r.summary.task_eval.is_some()).then(|| {
        rows.iter()
            .map(|r| match &r.summary.task_eval {
                None => std::array::from_fn(|_| "-".to_string()),
                Some(t) => {
                    let tta = t.time_to_accuracy.as_ref();
                    let reached = tta.and_then(|x| x.sim_seconds.zip(x.bytes_up));
                    [
                        format!("{:.3} [{:.3}, {:.3}]", t.accuracy, t.ci95[0], t.ci95[1]),
                        format!("{:.3}", t.macro_f1),
                        match (tta, reached) {
                            (None, _) => "-".into(),
                            (Some(_), Some((secs, _))) => format!("{secs:.1}"),
                            (Some(_), None) => "never".into(),
                        },
                        reached.map_or("-".into(), |(_, up)| format!("{:.3}", up as f64 / 1e6)),
                    ]
                }
            })
            .collect()
    })
}

const TASK_COLUMNS: [&str; 4] = ["accuracy [95% CI]", "macro-F1", "TTA sim (s)", "TTA MB up"];

/// The sweep as an aligned text table (losses in nats per response token).
pub fn table(varied: &[Vary], rows: &[SweepRow]) -> String {
    let backdoor = backdoor_cell(rows);
    let withheld = withheld_cell(rows);
    let wan = wan_cell(rows);
    let cut = cut_cell(rows);
    let task = task_cells(rows);
    let heads: Vec<String> = varied
        .iter()
        .map(|v| v.path.clone())
        .chain(COLUMNS.iter().map(|c| c.to_string()))
        .chain(task.iter().flat_map(|_| TASK_COLUMNS.map(String::from)))
        .chain(backdoor.as_ref().map(|_| "backdoor".to_string()))
        .chain(withheld.as_ref().map(|_| "withheld".to_string()))
        .chain(wan.as_ref().map(|_| "WAN MB".to_string()))
        .chain(cut.as_ref().map(|_| "cut MB".to_string()))
        .collect();
    let body: Vec<Vec<String>> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            r.settings
                .iter()
                .map(|s| s.split_once('=').map_or(s.clone(), |(_, v)| v.to_string()))
                .chain(cells(&r.summary))
                .chain(task.iter().flat_map(|t| t[i].clone()))
                .chain(backdoor.as_ref().map(|b| b[i].clone()))
                .chain(withheld.as_ref().map(|w| w[i].clone()))
                .chain(wan.as_ref().map(|w| w[i].clone()))
                .chain(cut.as_ref().map(|c| c[i].clone()))
                .collect()
        })
        .collect();
    let widths: Vec<usize> = (0..heads.len())
        .map(|i| {
            body.iter()
                .map(|row| row[i].chars().count())
                .chain([heads[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in std::iter::once(&heads).chain(&body) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:>w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  "));
    }
    let optional = [
        backdoor.is_some(),
        withheld.is_some(),
        wan.is_some(),
        cut.is_some(),
    ];
    footnotes(&mut out, optional);
    out
}

/// The lines under the table: units, and what each optional column means.
fn footnotes(out: &mut String, [backdoor, withheld, wan, cut]: [bool; 4]) {
    let _ = writeln!(
        out,
        "final loss in nats per response token on the held-out split; sim = simulated seconds; \
         crashed / deadline / failed = sampled clients without an update; MB = 10^6 bytes{}",
        if backdoor {
            "; backdoor = share of held-out questions answered with the target, with the \
             trigger / without it"
        } else {
            ""
        }
    );
    if withheld {
        let _ = writeln!(
            out,
            "withheld = secure rounds that released nothing (secagg_threshold, dp_min_survivors) \
             / rounds run"
        );
    }
    if wan {
        let _ = writeln!(
            out,
            "WAN MB = bytes over the wide-area link, both ways: edges <-> cloud (hierarchical), \
             every client <-> the server (flat)"
        );
    }
    if cut {
        let _ = writeln!(
            out,
            "cut MB = split learning's messages, both ways: activations (and labels) up, \
             gradients down, every step of every client; MB up counts only the client-side \
             adapter"
        );
    }
}

/// The sweep as CSV (one header row, one row per run, plus the run directory).
pub fn csv(varied: &[Vary], rows: &[SweepRow]) -> String {
    let quote = |s: &str| {
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    let mut out = String::new();
    let heads: Vec<String> = varied
        .iter()
        .map(|v| quote(&v.path))
        .chain(COLUMNS.iter().map(|c| quote(c)))
        .chain(["dir".to_string()])
        .collect();
    let _ = writeln!(out, "{}", heads.join(","));
    for r in rows {
        let cols: Vec<String> = r
            .settings
            .iter()
            .map(|s| quote(s.split_once('=').map_or(s, |(_, v)| v)))
            .chain(cells(&r.summary).iter().map(|c| quote(c)))
            .chain([quote(&r.dir.display().to_string())])
            .collect();
        let _ = writeln!(out, "{}", cols.join(","));
    }
    out
}
