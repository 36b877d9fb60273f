//! What `sim run` shows while it works: set-up lines, a progress bar (on a terminal) or
//! periodic lines (in a log) while data are prepared, then one table row per round.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use fedsim::messages::RoundSummary;
use fedsim::sim::Progress;
use indicatif::{ProgressBar, ProgressStyle};

/// The run's display on stderr.
pub struct Display {
    terminal: bool,
    bar: Option<(String, ProgressBar)>,
    /// In a log: the stage, when it started, when its last line was printed.
    log_stage: Option<(String, Instant, Option<Instant>)>,
    header: bool,
}

impl Display {
    /// A display; bars only when stderr is a terminal.
    pub fn new() -> Self {
        Self {
            terminal: std::io::stderr().is_terminal(),
            bar: None,
            log_stage: None,
            header: false,
        }
    }

    /// Show one event.
    pub fn show(&mut self, p: Progress<'_>) {
        match p {
            Progress::Setup(line) => {
                self.end_bar();
                eprintln!("{line}");
            }
            Progress::Stage { stage, done, total } => self.stage(stage, done, total),
            Progress::Round(r) => {
                self.end_bar();
                self.round(r);
            }
        }
    }

    fn end_bar(&mut self) {
        if let Some((_, bar)) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    fn stage(&mut self, stage: &str, done: usize, total: usize) {
        if self.terminal {
            if self.bar.as_ref().is_none_or(|(s, _)| s != stage) {
                self.end_bar();
                let bar = ProgressBar::new(total as u64);
                bar.set_style(
                    ProgressStyle::with_template("{msg:>24} [{bar:40}] {pos}/{len} ({eta})")
                        .expect("a valid template")
                        .progress_chars("=> "),
                );
                bar.set_message(stage.to_string());
                self.bar = Some((stage.to_string(), bar));
            }
            if let Some((_, bar)) = &self.bar {
                bar.set_position(done as u64);
            }
        } else {
            // In a log: stages that take over 2 s get a line every 10 s and one at the end.
            let now = Instant::now();
            let fresh = self.log_stage.as_ref().is_none_or(|(s, _, _)| s != stage);
            if fresh {
                self.log_stage = Some((stage.to_string(), now, None));
            }
            let Some((_, started, last)) = self.log_stage.as_mut() else {
                return;
            };
            let due = match last {
                None => now.duration_since(*started) >= Duration::from_secs(2),
                Some(t) => now.duration_since(*t) >= Duration::from_secs(10),
            } || (done == total && last.is_some());
            if due {
                eprintln!(
                    "{stage}: {done}/{total} ({:.0}%)",
                    100.0 * done as f64 / total.max(1) as f64
                );
                *last = Some(now);
            }
        }
    }

    fn round(&mut self, r: &RoundSummary) {
        if !self.header {
            header(r);
            self.header = true;
        }
        let dp = r.dp.as_ref().map_or(String::new(), |d| {
            let pld = d
                .dp_epsilon_pld
                .map_or(String::new(), |e| format!(" {e:>10.4}"));
            format!(
                " {:>10.4}{pld} {:>7.0}% {:>10.3e}",
                d.dp_epsilon,
                100.0 * d.dp_clipped_fraction,
                d.dp_noise_stddev
            )
        });
        // No client finished (Poisson sampling picked nobody, all failed): no train loss.
        let train = if r.train_loss.is_finite() {
            format!("{:.4}", r.train_loss)
        } else {
            "-".to_string()
        };
        let num = |v: f64, prec: usize| {
            if v.is_finite() {
                format!("{v:.prec$}")
            } else {
                "-".to_string()
            }
        };
        let task = match (r.task_accuracy, r.task_macro_f1) {
            (Some(a), Some(f)) => format!("  accuracy {a:.3} (macro-F1 {f:.3})"),
            _ => String::new(),
        };
        eprintln!(
            "{:>5} {:>6} {:>7} {:>9} {:>7} {:>10} {:>10} {:>9} {:>11} {:>11} {:>9.1} {:>8.2}{dp}{task}{}",
            r.round,
            r.available,
            r.sampled,
            r.completed,
            r.crashed + r.missed_deadline + r.failed,
            train,
            num(r.eval_loss, 4),
            num(r.eval_perplexity, 2),
            r.bytes_down,
            r.bytes_up,
            r.sim_duration_s,
            r.wall_seconds,
            r.skipped
                .as_ref()
                .map_or(String::new(), |why| format!("  skipped: {why}"))
        );
    }
}

/// The round table's column names (the DP columns when the run has DP).
fn header(r: &RoundSummary) {
    eprintln!(
        "{:>5} {:>6} {:>7} {:>9} {:>7} {:>10} {:>10} {:>9} {:>11} {:>11} {:>9} {:>8}{}",
        "round",
        "avail",
        "sampled",
        "completed",
        "dropped",
        "train loss",
        "eval loss",
        "eval ppl",
        "down (B)",
        "up (B)",
        "sim (s)",
        "wall (s)",
        match &r.dp {
            Some(d) if d.dp_epsilon_pld.is_some() => format!(
                " {:>10} {:>10} {:>8} {:>10}",
                "epsilon", "eps (PLD)", "clipped", "noise std"
            ),
            Some(_) => format!(" {:>10} {:>8} {:>10}", "epsilon", "clipped", "noise std"),
            None => String::new(),
        }
    );
}
