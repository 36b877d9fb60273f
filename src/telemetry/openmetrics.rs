//! `metrics.om`: every round's values as OpenMetrics text with the round's timestamp, so a
//! finished run can be imported into Prometheus (`promtool tsdb create-blocks-from openmetrics`)
//! and browsed in Grafana after the fact — nothing is lost between scrapes.
//!
//! Same names, labels and help texts as the live exporter (one table, [`super::DEFS`]);
//! counters are cumulative over rounds. The histograms (round wall and simulated time, client
//! phases, update norms) are live-only: their per-round values are in `rounds.jsonl`.
//! `fedsim_slot_busy_seconds_total` is live-only too (it has no per-round value).

use std::fmt::Write;

use super::*;

/// One metric family: name, type, help, and samples (labels, value) per round.
struct Family {
    name: &'static str,
    kind: &'static str,
    /// For each round: (label set, value) samples.
    series: Vec<(String, Vec<(f64, f64)>)>,
}

impl Family {
    fn new(name: &'static str) -> Self {
        let kind = match DEFS.iter().find(|d| d.name == name).map(|d| d.kind) {
            Some(Kind::Counter) => "counter",
            _ => "gauge",
        };
        Self {
            name: name.strip_suffix("_total").unwrap_or(name),
            kind,
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

/// The families of `metrics.om`, in order (the histograms are live-only).
const FAMILIES: [&str; 32] = [
    RUN_INFO,
    ROUND,
    ROUNDS_COMPLETED,
    CLIENTS_SAMPLED,
    CLIENT_UPDATES,
    NETWORK_BYTES,
    TRAIN_LOSS,
    EVAL_LOSS,
    EVAL_PERPLEXITY,
    TOKENS,
    DP_EPSILON,
    DP_DELTA,
    DP_NOISE,
    DP_CLIP,
    DP_CLIPPED_RATIO,
    DP_CLIPPED,
    CLIENTS_AVAILABLE,
    DROPOUTS,
    SIM_TIME,
    LATE_MAX,
    HOST_SAVED,
    SLOT_BUSY,
    SERVER_LR,
    BYZANTINE_SAMPLED,
    AGG_DEVIATION,
    EVAL_ACCURACY,
    EVAL_MACRO_F1,
    SECAGG_BYTES,
    SECAGG_FAILED,
    TIER_BYTES,
    EDGES_LOST,
    SPLIT_BYTES,
];

/// Render `rounds` as OpenMetrics text (ends with `# EOF`).
pub fn render(rounds: &[RoundSummary], info: &RunInfo) -> String {
    let mut fams: Vec<Family> = FAMILIES.iter().map(|n| Family::new(n)).collect();
    let info_labels = format!(
        "scenario=\"{}\",strategy=\"{}\",model=\"{}\",dp=\"{}\"",
        escape(&info.scenario),
        escape(&info.strategy),
        escape(&info.model),
        escape(&info.dp)
    );
    let (mut done, mut ok, mut failed, mut down, mut up, mut tokens, mut clipped) =
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut dropped, mut saved) = ([0.0f64; super::DROP_REASONS], 0.0);
    let mut secure = Secure::default();
    let mut tiers = Tiers::default();
    let mut split = [0.0f64; 2];
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
        if r.eval_loss.is_finite() {
            fams[7].push("", t, r.eval_loss);
            fams[8].push("", t, r.eval_perplexity);
        }
        fams[9].push("", t, tokens);
        fams[16].push("", t, r.available as f64);
        for (i, (reason, n)) in super::dropouts(r).into_iter().enumerate() {
            dropped[i] += n as f64;
            fams[17].push(&format!("reason=\"{reason}\""), t, dropped[i]);
        }
        fams[18].push("", t, r.sim_start_s + r.sim_duration_s);
        fams[19].push("", t, r.late_max_s);
        saved += r.host_seconds_saved;
        fams[20].push("", t, saved);
        if let Some(lr) = info.server_lr {
            fams[22].push("", t, lr);
        }
        clipped = optional_families(&mut fams, r, info, t, clipped);
        secure.push(&mut fams, r, t);
        tiers.push(&mut fams, r, t);
        if let Some(s) = &r.split {
            split[0] += s.up_bytes as f64;
            split[1] += s.down_bytes as f64;
            fams[31].push("direction=\"up\"", t, split[0]);
            fams[31].push("direction=\"down\"", t, split[1]);
        }
    }
    write_families(&fams)
}

/// The families with samples, in the exposition format, ended by `# EOF`.
fn write_families(fams: &[Family]) -> String {
    let mut out = String::new();
    for f in fams.iter().filter(|f| !f.series.is_empty()) {
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
        let full = if f.kind == "counter" {
            format!("{}_total", f.name)
        } else {
            f.name.to_string()
        };
        let _ = writeln!(out, "# HELP {} {}", f.name, help(&full));
        for (labels, pts) in &f.series {
            let labels = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{labels}}}")
            };
            for (v, t) in pts {
                let _ = writeln!(out, "{full}{labels} {v} {t:.3}");
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

/// The families only some runs have: task accuracy, Byzantine clients, DP. Returns the
/// cumulative count of clipped updates.
fn optional_families(
    fams: &mut [Family],
    r: &RoundSummary,
    info: &RunInfo,
    t: f64,
    clipped: f64,
) -> f64 {
    let mut clipped = clipped;
    if let (Some(task), Some(a), Some(f)) = (&info.task, r.task_accuracy, r.task_macro_f1) {
        let label = format!("task=\"{}\"", escape(task));
        fams[25].push(&label, t, a);
        fams[26].push(&label, t, f);
    }
    if let Some(b) = &r.byzantine {
        fams[23].push("", t, b.byzantine_sampled as f64);
        if let Some(d) = b.aggregate_deviation {
            fams[24].push("", t, d);
        }
    }
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
    clipped
}

/// Secure aggregation's cumulative counters.
#[derive(Default)]
struct Secure {
    /// keys, shares, masked, unmask, key_holders.
    bytes: [f64; 5],
    failed: f64,
}

/// Running totals of a hierarchical run's tiers.
#[derive(Default)]
struct Tiers {
    /// client_edge down, up; edge_cloud down, up.
    bytes: [f64; 4],
    lost: f64,
}

impl Tiers {
    fn push(&mut self, fams: &mut [Family], r: &RoundSummary, t: f64) {
        let Some(h) = &r.hierarchy else {
            return;
        };
        let add = [
            h.lan_bytes_down,
            h.lan_bytes_up,
            h.wan_bytes_down,
            h.wan_bytes_up,
        ];
        let labels = [
            "tier=\"client_edge\",direction=\"down\"",
            "tier=\"client_edge\",direction=\"up\"",
            "tier=\"edge_cloud\",direction=\"down\"",
            "tier=\"edge_cloud\",direction=\"up\"",
        ];
        for (i, n) in add.into_iter().enumerate() {
            self.bytes[i] += n as f64;
            fams[29].push(labels[i], t, self.bytes[i]);
        }
        self.lost += h.edges_lost as f64;
        fams[30].push("", t, self.lost);
    }
}

impl Secure {
    fn push(&mut self, fams: &mut [Family], r: &RoundSummary, t: f64) {
        let Some(c) = &r.secure_aggregation else {
            return;
        };
        for (i, (phase, p)) in c.phases().into_iter().enumerate() {
            self.bytes[i] += (p.up_bytes + p.down_bytes) as f64;
            fams[27].push(&format!("phase=\"{phase}\""), t, self.bytes[i]);
        }
        self.bytes[4] += c.key_holder_bytes as f64;
        if self.bytes[4] > 0.0 {
            fams[27].push("phase=\"key_holders\"", t, self.bytes[4]);
        }
        self.failed += f64::from(u8::from(r.skipped.is_some()));
        fams[28].push("", t, self.failed);
    }
}
