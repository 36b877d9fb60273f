//! End-to-end runs: training helps, runs are deterministic across repeats and slot counts,
//! the run directory holds what it promises.

use std::path::Path;

use serde_json::Value;

use crate::util::{round_metrics as metrics, run, run_full, scenario, stop_after_round, DP, SMALL};
use fedsim::report::RunStatus;
use fedsim::StopLevel;

#[test]
fn federated_run_improves_and_is_deterministic_across_slot_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let one = scenario(SMALL, &["slots.count=1"]).unwrap();
    let two = scenario(SMALL, &["slots.count=2"]).unwrap();
    let a = run(&one, &tmp.path().join("a"));
    let b = run(&one, &tmp.path().join("b"));
    let c = run(&two, &tmp.path().join("c"));

    // Training makes the model better on the held-out split.
    let s = &a.summary;
    assert_eq!(s.status, RunStatus::Completed);
    assert_eq!(s.rounds_completed, 4);
    assert!(
        s.final_eval_loss < s.pretrained_eval_loss - 0.3,
        "held-out loss {} -> {}",
        s.pretrained_eval_loss,
        s.final_eval_loss
    );
    let losses: Vec<f64> = a.rounds.iter().map(|r| r.eval_loss).collect();
    assert!(losses.windows(2).all(|w| w[1] < w[0] + 0.05), "{losses:?}");

    // Same scenario and seed: identical metrics and byte-identical adapters, 1 slot or 2.
    let adapter = |d: &Path| std::fs::read(d.join("adapter_model.safetensors")).unwrap();
    assert_eq!(metrics(&a.dir), metrics(&b.dir));
    assert_eq!(metrics(&a.dir), metrics(&c.dir));
    assert_eq!(adapter(&a.dir), adapter(&b.dir));
    assert_eq!(adapter(&a.dir), adapter(&c.dir));

    // The run directory.
    for f in [
        "scenario.ron",
        "tokenizer.json",
        "canaries.json",
        "partitions.json",
        "summary.json",
        "adapter_config.json",
    ] {
        assert!(a.dir.join(f).is_file(), "{f} missing");
    }
    let rounds = metrics(&a.dir);
    assert_eq!(rounds.len(), 4);
    for key in [
        "round",
        "sampled",
        "completed",
        "train_loss",
        "eval_loss",
        "eval_perplexity",
        "bytes_down",
        "bytes_up",
    ] {
        assert!(rounds[0].get(key).is_some(), "rounds.jsonl lacks {key}");
    }
    // 4 clients × fraction 0.5 = 2 sampled; bytes are the serialised adapter per client.
    let adapter_bytes = adapter(&a.dir).len() as u64;
    assert_eq!(rounds[0]["sampled"], 2);
    assert_eq!(rounds[0]["bytes_down"].as_u64().unwrap(), 2 * adapter_bytes);
    assert_eq!(rounds[0]["bytes_up"].as_u64().unwrap(), 2 * adapter_bytes);
    let cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(a.dir.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 4);
    assert_eq!(cfg["lora_alpha"], 8.0);
    assert_eq!(
        cfg["target_modules"],
        serde_json::json!(["down_proj", "o_proj", "q_proj", "v_proj"])
    );
    let recorded = fedsim::Scenario::load(&a.dir.join("scenario.ron"), &[]).unwrap();
    assert_eq!(recorded.to_ron(), one.to_ron());
    let canaries: Value =
        serde_json::from_str(&std::fs::read_to_string(a.dir.join("canaries.json")).unwrap())
            .unwrap();
    assert_eq!(canaries.as_array().unwrap().len(), 2);
}

#[test]
fn centralised_baseline_improves() {
    let tmp = tempfile::tempdir().unwrap();
    let s = scenario(
        SMALL,
        &[
            "name=small_centralized",
            "clients.count=1",
            "strategy.fraction_fit=1.0",
            "strategy.min_fit_clients=1",
            "strategy.min_available_clients=1",
            "train.local_steps=16",
        ],
    )
    .unwrap();
    let r = run(&s, &tmp.path().join("central"));
    assert!(
        r.summary.final_eval_loss < r.summary.pretrained_eval_loss - 0.3,
        "{:?}",
        r.summary
    );
    let table = fedsim::compare::table(std::slice::from_ref(&r.dir)).unwrap();
    assert!(
        table.contains("pretrained") && table.contains("central"),
        "{table}"
    );
}

#[test]
fn shutdown_stops_between_rounds_and_keeps_results() {
    let tmp = tempfile::tempdir().unwrap();
    let s = scenario(SMALL, &["rounds=50"]).unwrap();
    // The stop request arrives after round 1: the run stops before its next round and still
    // writes the adapter and a summary that says it was interrupted.
    let (shutdown, progress) = stop_after_round(1, StopLevel::FinishRound);
    let r = run_full(&s, &tmp.path().join("stop"), shutdown, None, Some(progress)).unwrap();
    assert_eq!(r.summary.status, RunStatus::Interrupted);
    assert_eq!(r.summary.rounds_completed, 1);
    assert_eq!(r.summary.rounds_completed, r.rounds.len());
    let back = fedsim::report::Summary::read(&r.dir).unwrap();
    assert_eq!(back.status, RunStatus::Interrupted);
    assert!(back.final_eval_loss.is_finite());
    assert!(r.dir.join("adapter_model.safetensors").is_file());
}

#[test]
fn dp_run_reports_epsilon_per_round_and_is_deterministic() {
    use fedsim::privacy::{epsilon_after, FracSeries, SamplingScheme};
    let tmp = tempfile::tempdir().unwrap();
    let one = scenario(SMALL, &[DP, "rounds=3", "dp.pld=true"]).unwrap();
    let two = scenario(SMALL, &[DP, "rounds=3", "dp.pld=true", "slots.count=2"]).unwrap();
    let a = run(&one, &tmp.path().join("a"));
    let b = run(&two, &tmp.path().join("b"));
    assert_eq!(metrics(&a.dir), metrics(&b.dir));
    let rounds = metrics(&a.dir);
    for (i, r) in rounds.iter().enumerate() {
        // Poisson sampling with q = fraction_fit = 0.5 over 4 clients, z = 1.
        let want = epsilon_after(
            1.0,
            0.5,
            i + 1,
            1e-5,
            SamplingScheme::Poisson,
            FracSeries::AbsoluteBound,
        )
        .unwrap();
        assert!(
            (r["dp_epsilon"].as_f64().unwrap() - want.epsilon).abs() < 1e-9,
            "{r}"
        );
        assert_eq!(r["dp_delta"].as_f64().unwrap(), 1e-5);
        assert_eq!(r["dp_sampling_rate"].as_f64().unwrap(), 0.5);
        // sigma = z*C / (q*N) = 1.0*0.5 / 2.
        assert!(
            (r["dp_noise_stddev"].as_f64().unwrap() - 0.25).abs() < 1e-12,
            "{r}"
        );
        assert_eq!(r["dp_clip_norm"].as_f64().unwrap(), 0.5);
        let frac = r["dp_clipped_fraction"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&frac));
        assert!(
            r["dp_update_norm_p50"].as_f64().unwrap() <= r["dp_update_norm_max"].as_f64().unwrap()
        );
    }
    let s = &a.summary;
    let dp = s.dp.as_ref().unwrap();
    assert!((dp.epsilon - rounds[2]["dp_epsilon"].as_f64().unwrap()).abs() < 1e-12);
    assert_eq!(dp.epsilon_pld, rounds[2]["dp_epsilon_pld"].as_f64());
    assert!(dp.accountant.contains("Poisson") && dp.noise_source.contains("seeded"));
    // Non-DP runs carry no dp_* keys.
    let plain = scenario(SMALL, &["rounds=1"]).unwrap();
    let p = run(&plain, &tmp.path().join("plain"));
    assert!(metrics(&p.dir)[0].get("dp_epsilon").is_none());
    assert!(p.summary.dp.is_none());
}

#[test]
fn max_epsilon_stops_before_the_round_that_would_exceed_it() {
    use fedsim::privacy::{epsilon_after, FracSeries, SamplingScheme};
    let eps = |t| {
        epsilon_after(
            1.0,
            0.5,
            t,
            1e-5,
            SamplingScheme::Poisson,
            FracSeries::AbsoluteBound,
        )
        .unwrap()
        .epsilon
    };
    let budget = 0.5 * (eps(2) + eps(3));
    let tmp = tempfile::tempdir().unwrap();
    let s = scenario(
        SMALL,
        &[DP, "rounds=10", &format!("dp.max_epsilon={budget}")],
    )
    .unwrap();
    let r = run(&s, &tmp.path().join("budget"));
    assert_eq!(r.summary.rounds_completed, 2);
    assert_eq!(r.summary.status, RunStatus::BudgetExhausted);
    let why = r.summary.stop_reason.as_deref().unwrap();
    assert!(
        why.contains("round 3") && why.contains("max_epsilon"),
        "{why}"
    );
    assert!(r.summary.dp.as_ref().unwrap().epsilon <= budget);
    assert!(fedsim::report::Summary::read(&r.dir).is_ok());
}

#[test]
fn adaptive_clipping_run_raises_a_too_small_clip() {
    use fedsim::privacy::{epsilon_after, FracSeries, SamplingScheme};
    let tmp = tempfile::tempdir().unwrap();
    let adaptive = r#"dp={"mechanism":{"Adaptive":{"initial_clip":0.001,"target_quantile":0.5,"clip_lr":0.2,"noise_multiplier":0.1,"count_stddev":0.1}}}"#;
    let s = scenario(SMALL, &[adaptive, "rounds=3"]).unwrap();
    let r = run(&s, &tmp.path().join("adaptive"));
    let rounds = metrics(&r.dir);
    let clips: Vec<f64> = rounds
        .iter()
        .map(|r| r["dp_clip_norm"].as_f64().unwrap())
        .collect();
    assert_eq!(clips[0], 0.001);
    assert!(
        clips.windows(2).all(|w| w[1] > w[0]),
        "every update exceeds the clip, so it grows: {clips:?}"
    );
    for (i, r) in rounds.iter().enumerate() {
        assert!(r["dp_noised_unclipped_fraction"].is_number(), "{r}");
        let want = epsilon_after(
            0.1,
            0.5,
            i + 1,
            1e-5,
            SamplingScheme::Poisson,
            FracSeries::AbsoluteBound,
        )
        .unwrap();
        assert!((r["dp_epsilon"].as_f64().unwrap() - want.epsilon).abs() < 1e-9);
    }
    assert!(r.summary.dp.as_ref().unwrap().clip_norm > clips[2]);
}

#[test]
fn metrics_exposition_matches_the_round_log() {
    let tmp = tempfile::tempdir().unwrap();
    let telemetry = fedsim::telemetry::Telemetry::unserved();
    let s = scenario(SMALL, &[DP, "rounds=2", "dp.pld=true"]).unwrap();
    let r = crate::util::run_full(
        &s,
        &tmp.path().join("m"),
        fedsim::Shutdown::never(),
        Some(telemetry.clone()),
        None,
    )
    .unwrap();
    let text = telemetry.render();
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .unwrap_or_else(|| panic!("{series} missing in:\n{text}"))
            .trim()
            .parse()
            .unwrap()
    };
    let rounds = metrics(&r.dir);
    let sum = |k: &str| rounds.iter().map(|r| r[k].as_f64().unwrap()).sum::<f64>();
    assert_eq!(value("fedsim_rounds_completed_total"), 2.0);
    assert_eq!(value("fedsim_round"), 2.0);
    assert_eq!(
        value("fedsim_network_bytes_total{direction=\"down\"}"),
        sum("bytes_down")
    );
    assert_eq!(
        value("fedsim_network_bytes_total{direction=\"up\"}"),
        sum("bytes_up")
    );
    assert_eq!(
        value("fedsim_client_updates_total{outcome=\"completed\"}"),
        sum("completed")
    );
    assert_eq!(
        value("fedsim_eval_loss"),
        rounds[1]["eval_loss"].as_f64().unwrap()
    );
    assert_eq!(
        value("fedsim_dp_epsilon{accountant=\"rdp\"}"),
        rounds[1]["dp_epsilon"].as_f64().unwrap()
    );
    assert_eq!(
        value("fedsim_dp_epsilon{accountant=\"pld\"}"),
        rounds[1]["dp_epsilon_pld"].as_f64().unwrap()
    );
    assert_eq!(
        value("fedsim_dp_noise_stddev"),
        rounds[1]["dp_noise_stddev"].as_f64().unwrap()
    );
    // Histograms carry explicit buckets (not summaries), so histogram_quantile works.
    assert!(
        text.contains("# TYPE fedsim_client_update_norm histogram"),
        "{text}"
    );
    assert!(
        text.contains("fedsim_round_wall_seconds_bucket{le=\"+Inf\"} 2"),
        "{text}"
    );
    assert_eq!(value("fedsim_client_update_norm_count"), sum("completed"));
    assert!(
        text.contains("fedsim_run_info{scenario=\"small\",strategy=\"FedAvg\""),
        "{text}"
    );
}

#[test]
fn non_finite_global_state_fails_the_run_and_compare_still_reads_it() {
    let tmp = tempfile::tempdir().unwrap();
    // Poisson sampling at q = 1e-300: the noised average divides by q·N ≈ 4e-300 and
    // overflows f32 in round 1.
    let s = scenario(SMALL, &[DP, "strategy.fraction_fit=1e-300", "rounds=3"]).unwrap();
    let dir = tmp.path().join("inf");
    let err = run_full(&s, &dir, fedsim::Shutdown::never(), None, None).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("round 1") && msg.contains("non-finite"),
        "{msg}"
    );
    let back = fedsim::report::Summary::read(&dir).unwrap();
    assert_eq!(back.status, RunStatus::Failed);
    assert!(
        back.error.as_deref().unwrap().contains("DP noise"),
        "{back:?}"
    );
    assert_eq!(back.rounds_completed, 0);
    // The adapter kept is the last finite one.
    let bytes = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for (_, t) in st.tensors() {
        assert!(t
            .data()
            .chunks(4)
            .all(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite()));
    }
    let table = fedsim::compare::table(&[dir]).unwrap();
    assert!(
        table.contains("failed") && table.contains("non-finite"),
        "{table}"
    );
}

#[test]
fn compare_warns_when_runs_are_not_comparable() {
    let tmp = tempfile::tempdir().unwrap();
    let a = run(
        &scenario(SMALL, &["rounds=1"]).unwrap(),
        &tmp.path().join("a"),
    );
    let b = run(
        &scenario(SMALL, &["rounds=1", "seed=8"]).unwrap(),
        &tmp.path().join("b"),
    );
    let c = run(
        &scenario(SMALL, &["rounds=1", "clients.count=2"]).unwrap(),
        &tmp.path().join("c"),
    );
    let same = fedsim::compare::table(&[a.dir.clone(), c.dir.clone()]).unwrap();
    assert!(!same.contains("warning"), "{same}");
    assert!(same.contains("completed"), "{same}");
    let differ = fedsim::compare::table(&[a.dir.clone(), b.dir.clone()]).unwrap();
    assert!(differ.contains("base weights differ"), "{differ}");
    assert!(differ.contains("different held-out sets"), "{differ}");
    assert!(differ.contains("different tokenizers"), "{differ}");
    // A directory that is not a run is a row that says so, not a failure.
    let mixed = fedsim::compare::table(&[a.dir, tmp.path().to_path_buf()]).unwrap();
    assert!(mixed.contains("not a fedsim run directory"), "{mixed}");
}

#[test]
fn a_failed_fit_is_recorded_with_its_kind_and_its_error_chain() {
    use fedsim::messages::{ClientRecord, ClientStatus, FailureKind, FitFailure, UploadFailure};
    use std::sync::Arc;
    let diverged = FitFailure::Training(Arc::new(fedsim::train::TrainError::Diverged(f32::NAN, 3)));
    assert_eq!(diverged.kind(), FailureKind::Training);
    assert!(diverged
        .to_string()
        .contains("training diverged: loss is NaN at step 3"));
    let compress = FitFailure::Upload(UploadFailure::Serialise(Arc::new(
        fedsim::model::ModelError::Layout("bad header".into()),
    )));
    assert_eq!(compress.kind(), FailureKind::Upload);
    assert!(
        compress.to_string().starts_with("serialising its update: ")
            && compress.to_string().contains("bad header"),
        "{compress}"
    );
    assert_eq!(diverged, diverged.clone());
    assert_ne!(diverged, FitFailure::AggregatorGone);
    let record = ClientRecord {
        round: 2,
        client: 5,
        status: ClientStatus::Failed,
        timeline: Default::default(),
        finish: 0.0,
        late_by: None,
        crashed_at: None,
        crash_cause: None,
        failure_kind: Some(diverged.kind()),
        failure: Some(diverged.to_string()),
        tokens: 0,
    };
    let line: serde_json::Value = serde_json::to_value(&record).unwrap();
    assert_eq!(line["status"], "failed");
    assert_eq!(line["failure_kind"], "training");
    assert!(line["failure"].as_str().unwrap().contains("diverged"));
}
