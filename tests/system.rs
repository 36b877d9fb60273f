//! The systems simulation: availability, crashes, panics, deadlines and over-selection on the
//! virtual clock, checked against timelines computed in the test; determinism with faults on.

use std::path::Path;

use fedsim::clock::{CostModel, Timeline};
use fedsim::devices::{DeviceProfile, Fleet, Profiles};
use fedsim::faults::FaultModel;
use fedsim::report::{RunStatus, Summary};
use fedsim::ScenarioError;
use serde_json::Value;

use crate::util::{round_metrics, run, scenario, SMALL};

pub(crate) fn clients_log(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("clients.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub(crate) fn rounds(dir: &Path) -> Vec<Value> {
    round_metrics(dir)
}

pub(crate) fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
}

/// Eight clients, all sampled each round, short local training.
pub(crate) const EIGHT: [&str; 5] = [
    "clients.count=8",
    "strategy.fraction_fit=1.0",
    "strategy.min_fit_clients=1",
    "strategy.min_available_clients=1",
    "train.local_steps=Some(2)",
];

pub(crate) fn with(extra: &[&str]) -> Vec<String> {
    EIGHT.iter().chain(extra).map(|s| s.to_string()).collect()
}

pub(crate) fn sc(extra: &[&str]) -> fedsim::Scenario {
    let set = with(extra);
    let set: Vec<&str> = set.iter().map(String::as_str).collect();
    scenario(SMALL, &set).unwrap()
}

/// A trace of 8 clients whose speeds span three orders of magnitude.
pub(crate) fn trace(dir: &Path) -> String {
    let mut csv = String::from("client,flops,up_mbps,down_mbps,latency_s,windows\n");
    for c in 0..8 {
        let flops = 1e7 * 3f64.powi(c);
        csv.push_str(&format!(
            "{c},{flops},{},{},0.05,\n",
            2.0 + c as f64,
            10.0 + c as f64
        ));
    }
    let p = dir.join("trace.csv");
    std::fs::write(&p, csv).unwrap();
    p.display().to_string()
}

#[test]
fn availability_is_within_three_sigma_of_p() {
    let fleet = std::sync::Arc::new(Fleet::assign(&Profiles::default(), 500, 1).unwrap());
    let faults = FaultModel::new(0.3, 0.0, vec![], 9, fleet);
    let (n, r) = (500usize, 200usize);
    let online: usize = (1..=r)
        .map(|round| (0..n).filter(|&c| faults.available(round, c, 0.0)).count())
        .sum();
    let trials = (n * r) as f64;
    let sigma = (trials * 0.3 * 0.7).sqrt();
    assert!(
        (online as f64 - 0.3 * trials).abs() < 3.0 * sigma,
        "{online} of {trials}"
    );
    // The same through a run: what rounds.jsonl reports.
    let tmp = tempfile::tempdir().unwrap();
    let r = run(&sc(&["rounds=20", "system.availability=0.5"]), tmp.path());
    let avail: usize = r.rounds.iter().map(|x| x.available).sum();
    let trials = 8.0 * 20.0;
    let sigma = (trials * 0.25f64).sqrt();
    assert!(
        (avail as f64 - 0.5 * trials).abs() < 3.0 * sigma,
        "{avail} of {trials}"
    );
    assert!(r.rounds.iter().all(|x| x.available + x.unavailable == 8));
}

#[test]
fn drop_excludes_exactly_the_clients_past_the_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let path = trace(tmp.path());
    let profiles = format!("system.profiles=Trace(path: \"{path}\")");
    // First without a deadline, to see the timelines; then a deadline at their median.
    let wait = run(&sc(&["rounds=2", &profiles]), &tmp.path().join("wait"));
    let waited = clients_log(&wait.dir);
    let mut durations: Vec<f64> = waited
        .iter()
        .map(|c| f(c, "finish") - f(c, "start"))
        .collect();
    durations.sort_by(f64::total_cmp);
    let deadline = durations[durations.len() / 2];
    let drop = run(
        &sc(&[
            "rounds=2",
            &profiles,
            &format!("system.deadline_s=Some({deadline})"),
            "system.stragglers=Drop",
        ]),
        &tmp.path().join("drop"),
    );
    let rows = rounds(&drop.dir);
    let clients = clients_log(&drop.dir);
    let (mut kept, mut dropped) = (0, 0);
    for c in &clients {
        let id = c["client"].as_u64().unwrap() as usize;
        let round = c["round"].as_u64().unwrap() as usize;
        // Transfers recomputed here from the trace and the bytes sent.
        let r = &rows[round - 1];
        let bytes = f(r, "bytes_down") / f(r, "sampled");
        let (up, down) = (2.0 + id as f64, 10.0 + id as f64);
        assert!(
            (f(c, "download") - (0.05 + 8.0 * bytes / (down * 1e6))).abs() < 1e-9,
            "{c}"
        );
        assert!(
            (f(c, "upload") - (0.05 + 8.0 * bytes / (up * 1e6))).abs() < 1e-9,
            "{c}"
        );
        let finish = f(c, "start") + f(c, "download") + f(c, "compute") + f(c, "upload");
        let late = finish - (f(r, "sim_start_s") + deadline);
        if late > 0.0 {
            assert_eq!(c["status"], "missed_deadline", "{c}");
            assert!((f(c, "late_by") - late).abs() < 1e-6, "{c}");
            dropped += 1;
        } else {
            assert_eq!(c["status"], "completed", "{c}");
            kept += 1;
        }
        // The same client's timeline as without a deadline: dropping changes nothing else.
        let twin = waited
            .iter()
            .find(|w| w["client"] == c["client"] && w["round"] == c["round"])
            .unwrap();
        assert_eq!(twin["compute"], c["compute"]);
    }
    assert!(kept > 0 && dropped > 0, "{kept} kept, {dropped} dropped");
    // Phase statistics of the round are those of its completed clients.
    for r in &rows {
        let round = r["round"].as_u64().unwrap();
        let mut compute: Vec<f64> = clients
            .iter()
            .filter(|c| c["round"].as_u64() == Some(round) && c["status"] == "completed")
            .map(|c| f(c, "compute"))
            .collect();
        compute.sort_by(f64::total_cmp);
        let p90 = compute[((compute.len() - 1) as f64 * 0.9).round() as usize];
        assert_eq!(f(r, "compute_s_p90"), p90);
        let mean = compute.iter().sum::<f64>() / compute.len() as f64;
        assert!((f(r, "compute_s_mean") - mean).abs() < 1e-12);
    }
    for r in &rows {
        let missed = r["missed_deadline"].as_u64().unwrap();
        assert_eq!(r["completed"].as_u64().unwrap() + missed, 8);
        if missed > 0 {
            assert!((f(r, "sim_duration_s") - deadline).abs() < 1e-9, "{r}");
        }
    }
}

#[test]
fn over_select_keeps_the_first_to_finish() {
    let tmp = tempfile::tempdir().unwrap();
    let path = trace(tmp.path());
    let r = run(
        &sc(&[
            "rounds=3",
            &format!("system.profiles=Trace(path: \"{path}\")"),
            "strategy.fraction_fit=0.25",
            "system.stragglers=OverSelect(extra: 3)",
        ]),
        &tmp.path().join("run"),
    );
    let clients = clients_log(&r.dir);
    for x in &r.rounds {
        assert_eq!(
            (x.sampled, x.completed, x.missed_deadline),
            (5, 2, 3),
            "{x:?}"
        );
        let of = |status: &str| -> Vec<f64> {
            clients
                .iter()
                .filter(|c| c["round"].as_u64() == Some(x.round as u64) && c["status"] == status)
                .map(|c| f(c, "finish"))
                .collect()
        };
        let (kept, late) = (of("completed"), of("missed_deadline"));
        let last_kept = kept.iter().copied().fold(f64::MIN, f64::max);
        assert!(late.iter().all(|&l| l >= last_kept), "{kept:?} vs {late:?}");
        assert!((x.sim_start_s + x.sim_duration_s - last_kept).abs() < 1e-9);
    }
}

#[test]
fn rounds_where_everyone_drops_are_recorded_without_deadlock() {
    let tmp = tempfile::tempdir().unwrap();
    // A deadline nobody meets: every round closes at it with no update.
    let r = run(
        &sc(&[
            "rounds=3",
            "system.deadline_s=Some(1e-6)",
            "system.stragglers=Drop",
        ]),
        &tmp.path().join("deadline"),
    );
    assert_eq!(r.summary.status, RunStatus::Completed);
    for x in &r.rounds {
        assert_eq!((x.completed, x.missed_deadline), (0, 8), "{x:?}");
        assert!((x.sim_duration_s - 1e-6).abs() < 1e-12);
    }
    assert_eq!(r.summary.final_eval_loss, r.summary.pretrained_eval_loss);
    // Nobody online: recorded as skipped rounds, or the run stops, as the scenario says.
    let skip = run(
        &sc(&["rounds=3", "system.availability=1e-9"]),
        &tmp.path().join("skip"),
    );
    assert_eq!(skip.rounds.len(), 3);
    assert!(skip.rounds.iter().all(|x| x
        .skipped
        .as_deref()
        .is_some_and(|w| w.contains("available"))));
    assert_eq!(
        skip.rounds[2].sim_start_s, 120.0,
        "a short round waits 60 virtual seconds"
    );
    let stop = run(
        &sc(&[
            "rounds=3",
            "system.availability=1e-9",
            "system.short_round=Stop",
        ]),
        &tmp.path().join("stop"),
    );
    assert_eq!(stop.summary.status, RunStatus::TooFewClients);
    assert!(stop
        .summary
        .stop_reason
        .as_deref()
        .unwrap()
        .contains("round 1"));
    assert_eq!(
        Summary::read(&stop.dir).unwrap().status,
        RunStatus::TooFewClients
    );
}

#[test]
fn crashes_and_panics_are_recorded_and_the_run_completes() {
    let tmp = tempfile::tempdir().unwrap();
    let r = run(
        &sc(&["rounds=4", "system.crash_probability=0.4"]),
        &tmp.path().join("crash"),
    );
    assert_eq!(r.summary.status, RunStatus::Completed);
    let crashed: usize = r.rounds.iter().map(|x| x.crashed).sum();
    assert!(crashed > 0);
    for x in &r.rounds {
        assert_eq!(
            x.sampled,
            x.completed + x.crashed + x.missed_deadline + x.failed
        );
    }
    // A client actor that panics mid-fit: crashed (learned by supervision), never sampled again.
    let r = run(
        &sc(&["rounds=3", "system.inject_panic=[3]"]),
        &tmp.path().join("panic"),
    );
    assert_eq!(r.summary.status, RunStatus::Completed);
    assert_eq!((r.rounds[0].crashed, r.rounds[0].completed), (1, 7));
    assert!(r.rounds[1..]
        .iter()
        .all(|x| x.sampled == 7 && x.crashed == 0));
    let log = clients_log(&r.dir);
    assert!(log
        .iter()
        .any(|c| c["client"] == 3 && c["status"] == "crashed"));
}

#[test]
fn faults_and_profiles_are_deterministic_across_runs_and_slot_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let set = [
        "rounds=3",
        "system=(profiles: Drawn(flops: LogNormal(median: 1e9, sigma: 1.5), up_mbps: Uniform(low: 1.0, high: 20.0), down_mbps: Fixed(50.0), latency_s: Normal(mean: 0.05, std: 0.02)), availability: 0.8, crash_probability: 0.2, deadline_s: Some(2.0), stragglers: Drop)",
    ];
    let a = run(&sc(&set), &tmp.path().join("a"));
    let b = run(&sc(&set), &tmp.path().join("b"));
    let two = [
        &set[..],
        &["slots.count=2", "slots.threads_per_slot=Some(1)"],
    ]
    .concat();
    let c = run(&sc(&two), &tmp.path().join("c"));
    for other in [&b, &c] {
        assert_eq!(round_metrics(&a.dir), round_metrics(&other.dir));
        assert_eq!(clients_log(&a.dir), clients_log(&other.dir));
        let adapter = |d: &Path| std::fs::read(d.join("adapter_model.safetensors")).unwrap();
        assert_eq!(adapter(&a.dir), adapter(&other.dir));
    }
    let total: usize = a.rounds.iter().map(|x| x.crashed + x.missed_deadline).sum();
    assert!(total > 0, "faults actually happened");
}

fn trace_error(csv: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("t.csv");
    std::fs::write(&p, csv).unwrap();
    let set = with(&[&format!("system.profiles=Trace(path: \"{}\")", p.display())]);
    let set: Vec<&str> = set.iter().map(String::as_str).collect();
    match scenario(SMALL, &set) {
        Err(ScenarioError::Invalid { field, message, .. }) => {
            assert_eq!(field, "system.profiles.Trace.path");
            message
        }
        other => panic!("expected a trace error, got {other:?}"),
    }
}

#[test]
fn bad_traces_name_file_line_and_column() {
    let head = "client,flops,up_mbps,down_mbps,latency_s,windows\n";
    let good: String = (1..8).map(|c| format!("{c},1e9,10,10,0.1,\n")).collect();
    let e = trace_error(&format!("{head}{good}"));
    assert!(e.contains("no row for client 0"), "{e}");
    let e = trace_error(&format!("{head}0,-5,10,10,0.1,\n{good}"));
    assert!(
        e.contains("t.csv:2:3") && e.contains("must lie in [1000, 1e18]"),
        "{e}"
    );
    let e = trace_error(&format!("{head}0,fast,10,10,0.1,\n{good}"));
    assert!(e.contains("t.csv:2:3") && e.contains("not a number"), "{e}");
    let e = trace_error(&format!("{head}0,1e9,10,10,0.1,5-2\n{good}"));
    assert!(e.contains("t.csv:2:") && e.contains("START < END"), "{e}");
    let e = trace_error(&format!("{head}0,1e9,10\n{good}"));
    assert!(e.contains("t.csv:2:1") && e.contains("3 fields"), "{e}");
    let e = trace_error(&format!("id,speed\n{good}"));
    assert!(e.contains("t.csv:1:1") && e.contains("header"), "{e}");
    let e = trace_error(&format!("{head}0,1e9,10,10,0.1,\n0,1e9,10,10,0.1,\n{good}"));
    assert!(e.contains("t.csv:3:1") && e.contains("twice"), "{e}");
    let e = trace_error(&format!("{head}9,1e9,10,10,0.1,\n{good}"));
    assert!(e.contains("out of range"), "{e}");
}

#[test]
fn system_section_is_validated() {
    for (set, field) in [
        ("system.availability=0", "system.availability"),
        ("system.crash_probability=1", "system.crash_probability"),
        ("system.stragglers=Drop", "system.stragglers"),
        ("system.stragglers=OverSelect(extra: 0)", "system.stragglers.OverSelect.extra"),
        ("system.deadline_s=Some(-1)", "system.deadline_s"),
        ("system.inject_panic=[99]", "system.inject_panic"),
        ("system.profiles=Fixed((flops: 0, up_mbps: 1, down_mbps: 1, latency_s: 0))", "system.profiles.Fixed.flops"),
        ("system.profiles=Tiers([(name: \"a\", share: 0.5, profile: (flops: 1e9, up_mbps: 1, down_mbps: 1, latency_s: 0))])", "system.profiles.Tiers.share"),
    ] {
        let all = with(&[set]);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        match scenario(SMALL, &all) {
            Err(ScenarioError::Invalid { field: got, .. }) => assert_eq!(got, field, "{set}"),
            other => panic!("{set}: {other:?}"),
        }
    }
}

#[test]
fn tiers_assign_profiles_in_proportion() {
    let tier = |name: &str, share: f64, flops: f64| fedsim::devices::Tier {
        name: name.into(),
        share,
        profile: DeviceProfile {
            flops,
            ..DeviceProfile::LAPTOP
        },
    };
    let p = Profiles::Tiers(vec![
        tier("phone", 0.2, 1e9),
        tier("laptop", 0.7, 1e11),
        tier("workstation", 0.1, 1e13),
    ]);
    let fleet = Fleet::assign(&p, 10_000, 3).unwrap();
    for (flops, share) in [(1e9, 0.2f64), (1e11, 0.7), (1e13, 0.1)] {
        let n = (0..10_000)
            .filter(|&c| fleet.profile(c).flops == flops)
            .count() as f64;
        let sigma = (10_000.0 * share * (1.0 - share)).sqrt();
        assert!((n - 10_000.0 * share).abs() < 3.0 * sigma, "{flops}: {n}");
    }
}

#[test]
fn flops_and_transfers_match_hand_computed_values() {
    use fedsim::model::{LlamaConfig, LoraConfig};
    let cfg = LlamaConfig {
        hidden_size: 8,
        intermediate_size: 16,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        num_key_value_heads: 1,
        vocab_size: 10,
        rms_norm_eps: 1e-5,
        rope_theta: 1e4,
        max_position_embeddings: 32,
        tie_word_embeddings: true,
    };
    let lora = LoraConfig::qv(2, 4.0);
    // Per layer: q 8·8, k 4·8, v 4·8, o 8·8, gate/up 16·8 each, down 8·16 = 576; ×2 layers
    // + head 10·8 = 1232 weights. LoRA: q 2·(8+8) + v 2·(8+4) = 56 per layer, 112 in all.
    // A 3-token sequence: 4·1232·3 + 4·(2·8)·9 + 6·112·3 = 14784 + 576 + 2016.
    let cost = CostModel::lora(&cfg, &lora);
    assert_eq!(cost.sequence_flops(3), 14784.0 + 576.0 + 2016.0);
    assert_eq!(cost.step_flops(), 0.0);
    // Prompt tuning's 2 virtual tokens: a 5-token sequence through the base, no adapter
    // matmuls: 4·1232·5 + 4·16·25. Prefix tuning's 2: 3 tokens attending to 2 more keys each,
    // 4·1232·3 + 4·16·9 + 8·16·3·2.
    let prompt = CostModel::lora(&cfg, &LoraConfig::prompt_tuning(2, Default::default()));
    assert_eq!(
        prompt.sequence_flops(3),
        4.0 * 1232.0 * 5.0 + 4.0 * 16.0 * 25.0
    );
    let prefix = CostModel::lora(&cfg, &LoraConfig::prefix_tuning(2));
    assert_eq!(prefix.sequence_flops(3), 14784.0 + 576.0 + 8.0 * 16.0 * 6.0);
    // DoRA: LoRA's per token, and once per step the row norms of q (8·8) and v (4·8):
    // (2·2 + 3)·(64 + 32) per layer, ×2 layers.
    let dora = fedsim::model::LoraConfig {
        method: fedsim::model::AdapterMethod::Dora,
        ..lora.clone()
    };
    let dora = CostModel::lora(&cfg, &dora);
    assert_eq!(dora.sequence_flops(3), cost.sequence_flops(3));
    assert_eq!(dora.step_flops(), 2.0 * 7.0 * 96.0);
    let p = DeviceProfile {
        flops: 1e3,
        up_mbps: 8.0,
        down_mbps: 16.0,
        latency_s: 0.1,
    };
    let t = Timeline::of(&p, 10.0, 1_000_000, 5e3, 500_000);
    assert_eq!(
        (t.download, t.compute, t.upload),
        (0.1 + 0.5, 5.0, 0.1 + 0.5)
    );
    assert_eq!(t.finish(), 16.2);
}
