//! `sim report`: one self-contained HTML page (inline SVG charts) over one or more run
//! directories. A section whose data no run has says so in a note instead of a chart.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

mod attacks;
mod task;
mod tiers;

use crate::chart::{bars, lines, Axes, Series};
use crate::report::{ReportError, Summary};

/// Errors of `sim report`.
#[derive(Debug, thiserror::Error)]
pub enum HtmlReportError {
    /// A run directory without a readable summary.
    #[error(transparent)]
    Run(#[from] ReportError),
    /// A chart could not be drawn.
    #[error("chart {title:?}: {message}")]
    Chart {
        /// Its title.
        title: String,
        /// What plotters said.
        message: String,
    },
    /// An `attack.json` that does not read.
    #[error(transparent)]
    Attack(#[from] crate::attack::AttackError),
    /// `--out` names something fedsim must not overwrite.
    #[error("{path}: {message}")]
    Out {
        /// The path given.
        path: PathBuf,
        /// Why it is refused.
        message: &'static str,
    },
}

/// What every page [`render`] writes starts with (how `write` knows a page it may replace).
const PAGE_START: &str =
    "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>fedsim report</title>";

/// Render `dirs` into `out`, atomically; `out` may be new or an earlier fedsim report, never
/// anything else (an input's file, a directory).
///
/// # Errors
/// As [`render`]; when `out` is refused or cannot be written.
pub fn write(dirs: &[PathBuf], out: &Path) -> Result<(), HtmlReportError> {
    let refuse = |message| HtmlReportError::Out {
        path: out.to_path_buf(),
        message,
    };
    if out.is_dir() {
        return Err(refuse("is a directory; --out names the HTML file to write"));
    }
    if out.exists() {
        let mut head = vec![0u8; PAGE_START.len()];
        let same = std::fs::File::open(out)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut head))
            .is_ok()
            && head == PAGE_START.as_bytes();
        if !same {
            return Err(refuse(
                "exists and is not a fedsim report; fedsim never overwrites other files: \
                 choose another --out",
            ));
        }
    }
    crate::report::write_atomically(out, render(dirs)?.as_bytes())?;
    Ok(())
}

/// What the report reads of one run.
struct Run {
    name: String,
    summary: Summary,
    rounds: Vec<Value>,
    partitions: Option<Vec<Value>>,
    eval: Option<Value>,
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

impl Run {
    fn read(dir: &Path) -> Result<Self, HtmlReportError> {
        let summary = Summary::read(dir)?;
        let rounds = std::fs::read_to_string(dir.join("rounds.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        Ok(Self {
            name: dir.display().to_string(),
            summary,
            rounds,
            partitions: read_json(&dir.join("partitions.json")).and_then(|v| v.as_array().cloned()),
            eval: read_json(&dir.join("eval.json")),
        })
    }

    /// (round, key) points of this run.
    fn series(&self, key: &str, scale: f64) -> Series {
        let points = self
            .rounds
            .iter()
            .filter_map(|r| Some((r["round"].as_f64()?, r[key].as_f64()? * scale)))
            .collect();
        Series {
            label: self.name.clone(),
            points,
        }
    }

    fn dropped(&self) -> Series {
        let keys = [
            "unavailable",
            "crashed",
            "missed_deadline",
            "failed",
            "edge_lost",
        ];
        let points = self
            .rounds
            .iter()
            .filter_map(|r| {
                let n: f64 = keys.iter().filter_map(|k| r[*k].as_f64()).sum();
                Some((r["round"].as_f64()?, n))
            })
            .collect();
        Series {
            label: format!("{} (dropped)", self.name),
            points,
        }
    }
}

/// A page being built: sections of charts and notes.
struct Page {
    html: String,
    charts: usize,
}

impl Page {
    fn section(&mut self, heading: &str) {
        let _ = writeln!(self.html, "<h2>{}</h2>", escape(heading));
    }

    fn note(&mut self, text: &str) {
        let _ = writeln!(self.html, "<p class=\"note\">{}</p>", escape(text));
    }

    fn chart(&mut self, title: &str, svg: Result<String, String>) -> Result<(), HtmlReportError> {
        let svg = svg.map_err(|message| HtmlReportError::Chart {
            title: title.to_string(),
            message,
        })?;
        self.charts += 1;
        let _ = writeln!(self.html, "<figure class=\"chart\">{svg}</figure>");
        Ok(())
    }

    /// A line chart of `key` per round, or a note when no run has it.
    fn per_round(
        &mut self,
        runs: &[Run],
        title: &str,
        axes: Axes<'_>,
        series: impl Fn(&Run) -> Vec<Series>,
    ) -> Result<(), HtmlReportError> {
        let all: Vec<Series> = runs
            .iter()
            .flat_map(&series)
            .filter(|s| !s.points.is_empty())
            .collect();
        if all.is_empty() {
            self.note(&format!("{title}: no run recorded it."));
            return Ok(());
        }
        self.chart(title, lines(title, axes, &all))
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The report for `dirs`.
///
/// # Errors
/// A run directory without a readable `summary.json`, or a chart that cannot be drawn.
pub fn render(dirs: &[PathBuf]) -> Result<String, HtmlReportError> {
    // A study directory (study.json, one run directory per arm) stands for its arms.
    let dirs = expand_studies(dirs);
    // A sweep directory (sweep.txt, one run directory per combination) gets its own section.
    let (sweeps, dirs): (Vec<&PathBuf>, Vec<&PathBuf>) = dirs
        .iter()
        .partition(|d| d.join("sweep.txt").is_file() && !d.join("summary.json").exists());
    let runs = dirs
        .iter()
        .map(|d| Run::read(d))
        .collect::<Result<Vec<_>, _>>()?;
    let mut page = Page {
        html: String::new(),
        charts: 0,
    };
    runs_table(&mut page, &runs);
    partitions(&mut page, &runs)?;
    loss_charts(&mut page, &runs)?;
    system_charts(&mut page, &runs)?;
    tiers::section(&mut page, &runs)?;
    for sweep in &sweeps {
        sweep_section(&mut page, sweep)?;
    }
    if sweeps.is_empty() {
        page.section("Sweeps");
        page.note(
            "Sweeps: no sweep directory given (sim report SWEEP_DIR adds its table and curves).",
        );
    }
    attacks::section(&mut page, &attacks::read(&dirs)?)?;
    Ok(wrap(&page.html, page.charts))
}

/// The per-round charts of loss, perplexity and task accuracy.
fn loss_charts(page: &mut Page, runs: &[Run]) -> Result<(), HtmlReportError> {
    page.section("Loss and perplexity per round");
    let loss = |key: &'static str| move |r: &Run| vec![r.series(key, 1.0)];
    page.per_round(
        runs,
        "Training loss",
        Axes {
            x: "round",
            y: "loss (nats/token)",
        },
        loss("train_loss"),
    )?;
    page.per_round(
        runs,
        "Held-out loss",
        Axes {
            x: "round",
            y: "loss (nats/token)",
        },
        loss("eval_loss"),
    )?;
    page.per_round(
        runs,
        "Held-out perplexity",
        Axes {
            x: "round",
            y: "perplexity",
        },
        loss("eval_perplexity"),
    )?;
    task::section(page, runs)?;
    accuracy(page, runs)?;
    Ok(())
}

/// The per-round charts of privacy, communication, participation and simulated time.
fn system_charts(page: &mut Page, runs: &[Run]) -> Result<(), HtmlReportError> {
    let loss = |key: &'static str| move |r: &Run| vec![r.series(key, 1.0)];
    page.section("Privacy");
    page.per_round(
        runs,
        "Privacy spent (ε at the run's δ)",
        Axes {
            x: "round", y: "ε"
        },
        loss("dp_epsilon"),
    )?;
    page.section("Communication and participation");
    page.per_round(
        runs,
        "Bytes per round (down + up)",
        Axes {
            x: "round",
            y: "MB (10^6 bytes)",
        },
        |r| {
            let down = r.series("bytes_down", 1e-6);
            let up = r.series("bytes_up", 1e-6);
            let points = down
                .points
                .iter()
                .zip(&up.points)
                .map(|(d, u)| (d.0, d.1 + u.1))
                .collect();
            vec![Series {
                label: r.name.clone(),
                points,
            }]
        },
    )?;
    page.per_round(
        runs,
        "Participation per round",
        Axes {
            x: "round",
            y: "clients",
        },
        |r| {
            let mut done = r.series("completed", 1.0);
            done.label = format!("{} (completed)", r.name);
            vec![done, r.dropped()]
        },
    )?;
    page.per_round(
        runs,
        "Simulated round time",
        Axes {
            x: "round",
            y: "seconds (virtual clock)",
        },
        loss("sim_duration_s"),
    )?;
    Ok(())
}

/// Every directory, with a study directory (`sim study`: `study.json` and no summary.json)
/// replaced by its arms' run directories, in the study's order.
fn expand_studies(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in dirs {
        let arms = read_json(&d.join("study.json"))
            .filter(|_| !d.join("summary.json").exists())
            .and_then(|v| v["arms"].as_array().cloned());
        match arms {
            Some(arms) => out.extend(arms.iter().filter_map(|a| a.as_str()).map(|a| d.join(a))),
            None => out.push(d.clone()),
        }
    }
    out
}

/// A sweep: its table as written, and each combination's held-out loss per round.
fn sweep_section(page: &mut Page, dir: &Path) -> Result<(), HtmlReportError> {
    page.section(&format!("Sweep {}", dir.display()));
    let table = std::fs::read_to_string(dir.join("sweep.txt")).unwrap_or_default();
    let _ = writeln!(page.html, "<pre>{}</pre>", escape(&table));
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    subdirs.retain(|d| d.join("summary.json").is_file());
    subdirs.sort();
    let runs: Vec<Run> = subdirs.iter().filter_map(|d| Run::read(d).ok()).collect();
    let loss = |r: &Run| {
        let mut s = r.series("eval_loss", 1.0);
        s.label = r.summary.scenario.clone();
        vec![s]
    };
    let title = "Sweep: held-out loss per round, one line per combination";
    page.per_round(
        &runs,
        title,
        Axes {
            x: "round",
            y: "loss (nats/token)",
        },
        loss,
    )
}

fn runs_table(page: &mut Page, runs: &[Run]) {
    page.section("Runs");
    let mut t = String::from(
        "<table><tr><th>run</th><th>status</th><th>rounds</th><th>pretrained loss</th>\
         <th>final loss</th><th>final perplexity</th><th>MB down / up</th></tr>\n",
    );
    for r in runs {
        let s = &r.summary;
        let _ = writeln!(
            t,
            "<tr><td>{}</td><td>{}</td><td>{}/{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.2}</td><td>{:.3} / {:.3}</td></tr>",
            escape(&r.name),
            s.status.as_str(),
            s.rounds_completed,
            s.rounds_planned,
            s.pretrained_eval_loss,
            s.final_eval_loss,
            s.final_eval_perplexity,
            s.bytes_down_total as f64 / 1e6,
            s.bytes_up_total as f64 / 1e6
        );
    }
    page.html.push_str(&t);
    page.html.push_str(
        "</table>\n<p>Losses in nats per response token on each run's held-out split.</p>\n",
    );
}

fn partitions(page: &mut Page, runs: &[Run]) -> Result<(), HtmlReportError> {
    page.section("Client partitions");
    let with: Vec<&Run> = runs.iter().filter(|r| r.partitions.is_some()).collect();
    let most = with
        .iter()
        .filter_map(|r| r.partitions.as_ref())
        .map(Vec::len)
        .max()
        .unwrap_or(0);
    if most == 0 {
        page.note("Client partitions: no run recorded partitions.json.");
        return Ok(());
    }
    let categories: Vec<String> = (0..most).map(|c| c.to_string()).collect();
    let series: Vec<(String, Vec<f64>)> = with
        .iter()
        .map(|r| {
            let sizes = r
                .partitions
                .iter()
                .flatten()
                .map(|p| p["examples"].as_f64().unwrap_or(0.0));
            (r.name.clone(), sizes.collect())
        })
        .collect();
    let title = "Training examples per client";
    page.chart(
        title,
        bars(
            title,
            Axes {
                x: "client",
                y: "examples",
            },
            &categories,
            &series,
        ),
    )
}

fn accuracy(page: &mut Page, runs: &[Run]) -> Result<(), HtmlReportError> {
    page.section("PubMedQA accuracy");
    let mut categories = Vec::new();
    let mut likelihood = Vec::new();
    let mut generation = Vec::new();
    let mut majority = Vec::new();
    for r in runs {
        let Some(models) = r.eval.as_ref().and_then(|e| e["models"].as_array()) else {
            continue;
        };
        for m in models {
            let q = &m["pubmedqa"];
            let name = m["model"].as_str().unwrap_or("?").to_string();
            // The pretrained model once, however many runs evaluated it beside their adapter.
            if q.is_null() || (name == "pretrained" && categories.contains(&name)) {
                continue;
            }
            categories.push(name);
            likelihood.push(q["accuracy_likelihood"].as_f64().unwrap_or(f64::NAN));
            generation.push(q["accuracy_generation"].as_f64().unwrap_or(f64::NAN));
            majority.push(q["majority_baseline"].as_f64().unwrap_or(f64::NAN));
        }
    }
    if categories.is_empty() {
        page.note(
            "PubMedQA accuracy: no run has an eval.json with PubMedQA results (run sim eval).",
        );
        return Ok(());
    }
    let series = vec![
        ("by log-likelihood".to_string(), likelihood),
        ("by generation".to_string(), generation),
        ("majority baseline".to_string(), majority),
    ];
    let title = "PubMedQA accuracy: pretrained vs. fine-tuned";
    page.chart(
        title,
        bars(
            title,
            Axes {
                x: "model",
                y: "accuracy (share right)",
            },
            &categories,
            &series,
        ),
    )
}

fn wrap(body: &str, charts: usize) -> String {
    format!(
        "{PAGE_START}\n<style>body{{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}\
         td:first-child{{text-align:left}}.note{{color:#666;font-style:italic}}\
         figure.chart{{margin:1em 0}}</style></head><body>\n<h1>fedsim report</h1>\n\
         <p>{charts} charts. Made by fedsim {}.</p>\n{body}</body></html>\n",
        env!("CARGO_PKG_VERSION")
    )
}
