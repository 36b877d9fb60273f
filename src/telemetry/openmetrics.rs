//! `metrics.om`: every round's values as OpenMetrics text with the round's timestamp, so a
//! finished run can be imported into Prometheus (`promtool tsdb create-blocks-from openmetrics`)
//! and browsed in Grafana after the fact — nothing is lost between scrapes.
//!
//! Same names and labels as the live exporter; counters are cumulative over rounds. The
//! histograms (`fedsim_round_wall_seconds`, `fedsim_client_update_norm`) are live-only: their
//! per-round values are in `rounds.jsonl`.

use std::fmt::Write;

use super::*;

/// One metric family: name, type, help, and samples (labels, value) per round.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    /// For each round: (label set, value) samples.
    series: Vec<(String, Vec<(f64, f64)>)>,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Self {
        Self {
            name,
            kind,
            help,
            series: Vec::new(),
        }
    }

    fn push(&mut self, labels: &str, t: f64, v: f64) {
        match self.series.iter_mut().find(|(l, _)| l == labels) {
            Some((_, pts)) => pts.push((v, t)),
            None => self.series.push((labels.to_string(), vec![(v, t)])),
        }
    }
}

/// Render `rounds` as OpenMetrics text (ends with `# EOF`).
pub fn render(rounds: &[RoundSummary], info: &RunInfo) -> String {
    let base = |n: &'static str| n.strip_suffix("_total").unwrap_or(n);
    let mut fams = vec![
        Family::new(
            RUN_INFO,
            "gauge",
            "Constant 1, labelled with the scenario, strategy, model and DP mechanism.",
        ),
        Family::new(ROUND, "gauge", "Current federated round (1-based)."),
        Family::new(base(ROUNDS_COMPLETED), "counter", "Rounds finished."),
        Family::new(CLIENTS_SAMPLED, "gauge", "Clients sampled in the round."),
        Family::new(
            base(CLIENT_UPDATES),
            "counter",
            "Client results by outcome.",
        ),
        Family::new(
            base(NETWORK_BYTES),
            "counter",
            "Serialised adapter bytes by direction.",
        ),
        Family::new(
            TRAIN_LOSS,
            "gauge",
            "Example-weighted mean local training loss (nats/token).",
        ),
        Family::new(
            EVAL_LOSS,
            "gauge",
            "Held-out loss after the round (nats/token).",
        ),
        Family::new(
            EVAL_PERPLEXITY,
            "gauge",
            "Held-out perplexity after the round.",
        ),
        Family::new(base(TOKENS), "counter", "Tokens trained on."),
        Family::new(
            DP_EPSILON,
            "gauge",
            "Epsilon after the round, by accountant.",
        ),
        Family::new(DP_DELTA, "gauge", "Delta of the reported epsilon."),
        Family::new(
            DP_NOISE,
            "gauge",
            "Std of the DP noise on the averaged update.",
        ),
        Family::new(DP_CLIP, "gauge", "Clipping norm in force."),
        Family::new(
            DP_CLIPPED_RATIO,
            "gauge",
            "Share of the round's updates that were clipped.",
        ),
        Family::new(
            base(DP_CLIPPED),
            "counter",
            "Client updates whose norm exceeded the clip.",
        ),
    ];
    let info_labels = format!(
        "scenario=\"{}\",strategy=\"{}\",model=\"{}\",dp=\"{}\"",
        escape(&info.scenario),
        escape(&info.strategy),
        escape(&info.model),
        escape(&info.dp)
    );
    let (mut done, mut ok, mut failed, mut down, mut up, mut tokens, mut clipped) =
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    for r in rounds {
        let t = r.finished_at;
        done += 1.0;
        ok += r.completed as f64;
        failed += r.failed as f64;
        down += r.bytes_down as f64;
        up += r.bytes_up as f64;
        tokens += r.tokens as f64;
        fams[0].push(&info_labels, t, 1.0);
        fams[1].push("", t, r.round as f64);
        fams[2].push("", t, done);
        fams[3].push("", t, r.sampled as f64);
        fams[4].push("outcome=\"completed\"", t, ok);
        fams[4].push("outcome=\"failed\"", t, failed);
        fams[5].push("direction=\"down\"", t, down);
        fams[5].push("direction=\"up\"", t, up);
        if r.train_loss.is_finite() {
            fams[6].push("", t, r.train_loss);
        }
        fams[7].push("", t, r.eval_loss);
        fams[8].push("", t, r.eval_perplexity);
        fams[9].push("", t, tokens);
        if let Some(dp) = &r.dp {
            fams[10].push("accountant=\"rdp\"", t, dp.dp_epsilon);
            if let Some(e) = dp.dp_epsilon_pld {
                fams[10].push("accountant=\"pld\"", t, e);
            }
            fams[11].push("", t, dp.dp_delta);
            fams[12].push("", t, dp.dp_noise_stddev);
            fams[13].push("", t, dp.dp_clip_norm);
            fams[14].push("", t, dp.dp_clipped_fraction);
            clipped += (dp.dp_clipped_fraction * r.update_norms.len() as f64).round();
            fams[15].push("", t, clipped);
        }
    }
    let mut out = String::new();
    for f in fams.iter().filter(|f| !f.series.is_empty()) {
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let sample = if f.kind == "counter" {
            format!("{}_total", f.name)
        } else {
            f.name.to_string()
        };
        for (labels, pts) in &f.series {
            let labels = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{labels}}}")
            };
            for (v, t) in pts {
                let _ = writeln!(out, "{sample}{labels} {v} {t:.3}");
            }
        }
    }
    out.push_str("# EOF\n");
    out
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
