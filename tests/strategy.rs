//! Aggregation strategies and Byzantine clients: server optimisers and robust rules against
//! hand-computed values, attackers against the rules, determinism for every strategy, and the
//! combinations fedsim refuses.

use std::path::Path;

use fedsim::strategy::krum::{multi_krum, select};
use fedsim::strategy::median::median;
use fedsim::strategy::trimmed_mean::trimmed_mean;
use fedsim::strategy::{FedAvgAccumulator, ServerOptimizer, ServerState};

use crate::util::{round_metrics, run, scenario, SMALL};

fn close(got: &[f32], want: &[f64]) {
    for (g, w) in got.iter().zip(want) {
        assert!(
            (f64::from(*g) - w).abs() <= 2e-6 * w.abs().max(1e-3),
            "{got:?} vs {want:?}"
        );
    }
}

#[test]
fn server_optimisers_match_a_hand_computed_two_round_example() {
    let (d1, d2) = ([0.1f32, -0.2], [0.3f32, 0.0]);
    let two = |o: ServerOptimizer| {
        let mut s = ServerState::new(o, 2);
        (s.step(&d1), s.step(&d2))
    };
    // FedAvgM, η = 1, β = 0.9: m1 = Δ1; m2 = 0.9 m1 + Δ2.
    let (a, b) = two(ServerOptimizer::FedAvgM {
        server_lr: 1.0,
        momentum: 0.9,
    });
    close(&a, &[0.1, -0.2]);
    close(&b, &[0.39, -0.18]);
    // η = 0.1, β1 = 0.9, β2 = 0.99, τ = 0.01, v0 = τ² (values from the formulas in f64).
    let (a, b) = two(ServerOptimizer::FedAdagrad {
        server_lr: 0.1,
        beta1: 0.9,
        tau: 0.01,
    });
    close(&a, &[0.009049875621120888, -0.009512492197250389]);
    close(&b, &[0.01194904777525397, -0.008561242977525352]);
    let (a, b) = two(ServerOptimizer::FedAdam {
        server_lr: 0.1,
        beta1: 0.9,
        beta2: 0.99,
        tau: 0.01,
    });
    close(&a, &[0.041482181612786696, -0.06184615490570763]);
    close(&b, &[0.09044287520713695, -0.05585493849065136]);
    let (a, b) = two(ServerOptimizer::FedYogi {
        server_lr: 0.1,
        beta1: 0.9,
        beta2: 0.99,
        tau: 0.01,
    });
    close(&a, &[0.04142135623730949, -0.06180339887498945]);
    close(&b, &[0.09034836682386055, -0.055623058987490516]);
    // Momentum 0 and η = 1: the step is the mean itself, bit for bit.
    let mut s = ServerState::new(
        ServerOptimizer::FedAvgM {
            server_lr: 1.0,
            momentum: 0.0,
        },
        2,
    );
    assert_eq!(s.step(&d1), d1.to_vec());
    assert_eq!(s.step(&d2), d2.to_vec());
}

#[test]
fn robust_rules_match_hand_computed_values_with_ties() {
    let u: [&[f32]; 4] = [&[1.0, 0.0], &[2.0, 10.0], &[3.0, -1.0], &[100.0, 1.0]];
    // Even count: the mean of the two middle values.
    assert_eq!(median(&u), vec![2.5, 0.5]);
    assert_eq!(median(&u[..3]), vec![2.0, 0.0]);
    assert_eq!(median(&[&[1.0], &[1.0], &[2.0]]), vec![1.0]);
    // β = 0.25 of 4 drops one value from each end.
    assert_eq!(trimmed_mean(&u, 0.25), vec![2.5, 0.5]);
    assert_eq!(trimmed_mean(&u, 0.0), vec![26.5, 2.5]);
    assert_eq!(
        trimmed_mean(&[&[5.0], &[5.0], &[5.0], &[9.0]], 0.25),
        vec![5.0]
    );
    // Krum, f = 0: each scored by its K − f − 2 = 2 nearest squared distances:
    // u0 5 + 101 = 106, u1 101 + 122 = 223, u2 5 + 122 = 127, u3 9413 + 9685.
    assert_eq!(select(&u, 0, 4), vec![0, 2, 1, 3]);
    assert_eq!(multi_krum(&u, 0, 1).unwrap(), vec![1.0, 0.0]);
    assert_eq!(multi_krum(&u, 0, 2).unwrap(), vec![2.0, -0.5]);
    // Ties go to the earlier update (client order).
    let tied: [&[f32]; 4] = [&[1.0], &[1.0], &[5.0], &[9.0]];
    assert_eq!(select(&tied, 0, 1), vec![0]);
    // Multi-Krum with m = K is FedAvg with uniform weights, bit for bit.
    let w: Vec<Vec<f32>> = (0..5)
        .map(|i| {
            (0..7)
                .map(|j| ((i * 7 + j) as f32 * 0.37).sin() * 0.01)
                .collect()
        })
        .collect();
    let refs: Vec<&[f32]> = w.iter().map(Vec::as_slice).collect();
    let mut acc = FedAvgAccumulator::new(7);
    for x in &refs {
        acc.fold(x, 1).unwrap();
    }
    assert_eq!(multi_krum(&refs, 1, 5).unwrap(), acc.mean().unwrap());
}

#[test]
fn one_huge_update_moves_fedavg_far_and_robust_rules_barely() {
    // Four honest updates near 0.01 and one scaled ×1000.
    let honest: Vec<Vec<f32>> = (0..4)
        .map(|i| {
            (0..50)
                .map(|j| 0.01 + 0.001 * ((i * 50 + j) as f32).sin())
                .collect()
        })
        .collect();
    let mut all = honest.clone();
    all.push(honest[0].iter().map(|x| x * 1000.0).collect());
    let refs: Vec<&[f32]> = all.iter().map(Vec::as_slice).collect();
    let hrefs: Vec<&[f32]> = honest.iter().map(Vec::as_slice).collect();
    let dist = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| f64::from(x - y).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    let mut acc = FedAvgAccumulator::new(50);
    let mut hacc = FedAvgAccumulator::new(50);
    for x in &refs {
        acc.fold(x, 1).unwrap();
    }
    for x in &hrefs {
        hacc.fold(x, 1).unwrap();
    }
    let honest_mean = hacc.mean().unwrap();
    let fedavg = dist(&acc.mean().unwrap(), &honest_mean);
    assert!(fedavg > 10.0, "FedAvg moved {fedavg}");
    for (name, agg) in [
        ("median", median(&refs)),
        ("trimmed mean", trimmed_mean(&refs, 0.2)),
        ("Krum", multi_krum(&refs, 1, 1).unwrap()),
        ("multi-Krum", multi_krum(&refs, 1, 3).unwrap()),
    ] {
        let d = dist(&agg, &honest_mean);
        assert!(d < 0.02, "{name} moved {d}");
    }
}

fn strategy_scenario(kind: &str, extra: &[&str]) -> fedsim::Scenario {
    let mut set = vec![
        format!("strategy.kind={kind}"),
        "clients.count=6".to_string(),
        "strategy.fraction_fit=1.0".to_string(),
        "strategy.min_fit_clients=6".to_string(),
        "rounds=2".to_string(),
        "train.local_steps=Some(3)".to_string(),
    ];
    set.extend(extra.iter().map(|s| s.to_string()));
    let set: Vec<&str> = set.iter().map(String::as_str).collect();
    scenario(SMALL, &set).unwrap()
}

const KINDS: [&str; 11] = [
    "FedAvg",
    "FedProx(mu: 1.0)",
    "FedAvgM(momentum: 0.9)",
    "FedAdagrad(server_lr: 0.01)",
    "FedAdam(server_lr: 0.01)",
    "FedYogi(server_lr: 0.01)",
    "Median",
    "TrimmedMean(beta: 0.2)",
    "Krum(byzantine: 1)",
    "MultiKrum(byzantine: 1, keep: 3)",
    "NormBounded(max_norm: 0.001)",
];

#[test]
fn every_strategy_is_deterministic_across_runs_and_slot_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let adapter = |d: &Path| std::fs::read(d.join("adapter_model.safetensors")).unwrap();
    let mut adapters = Vec::new();
    for (i, kind) in KINDS.iter().enumerate() {
        let one = run(
            &strategy_scenario(kind, &["slots.count=1"]),
            &tmp.path().join(format!("{i}a")),
        );
        let two = run(
            &strategy_scenario(kind, &["slots.count=2"]),
            &tmp.path().join(format!("{i}b")),
        );
        assert_eq!(
            one.summary.status,
            fedsim::report::RunStatus::Completed,
            "{kind}"
        );
        assert_eq!(adapter(&one.dir), adapter(&two.dir), "{kind}");
        assert_eq!(round_metrics(&one.dir), round_metrics(&two.dir), "{kind}");
        adapters.push(adapter(&one.dir));
    }
    // FedAvgM with momentum 0 and η = 1 is FedAvg, bit for bit; so is FedProx with μ = 0.
    let m0 = run(
        &strategy_scenario("FedAvgM(server_lr: 1.0, momentum: 0.0)", &[]),
        &tmp.path().join("m0"),
    );
    assert_eq!(adapter(&m0.dir), adapters[0]);
    let p0 = run(
        &strategy_scenario("FedProx(mu: 0.0)", &[]),
        &tmp.path().join("p0"),
    );
    assert_eq!(adapter(&p0.dir), adapters[0]);
    // The proximal term pulls local training towards the global adapter: smaller updates.
    let norm = |d: &Path| -> f64 {
        round_metrics(d)
            .iter()
            .map(|m| m["mean_update_norm"].as_f64().unwrap())
            .sum()
    };
    let prox = tmp.path().join("1a");
    assert!(
        norm(&prox) < norm(&tmp.path().join("0a")),
        "FedProx updates are not smaller"
    );
    // Server optimisers save their state with the run; the others have none.
    let state = std::fs::read(tmp.path().join("4a/server_state.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&state).unwrap();
    let m = st.tensor("m").unwrap();
    assert_eq!(st.tensor("v").unwrap().shape(), m.shape());
    let (_, meta) = safetensors::SafeTensors::read_metadata(&state).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta["optimizer"], "FedAdam");
    assert_eq!(meta["steps"], "2");
    assert!(!tmp.path().join("0a/server_state.safetensors").exists());
    // The strategy is named in fedsim_run_info, with the server learning rate.
    let om = std::fs::read_to_string(tmp.path().join("4a/metrics.om")).unwrap();
    assert!(om.contains("strategy=\"FedAdam\""), "{om}");
    assert!(om.contains("fedsim_server_learning_rate 0.01 "), "{om}");
    // The rules differ from each other (each strategy really is in force).
    for i in 1..adapters.len() {
        assert_ne!(adapters[i], adapters[0], "{} equals FedAvg", KINDS[i]);
    }
}

#[test]
fn byzantine_clients_are_recorded_and_robust_rules_resist_them() {
    let tmp = tempfile::tempdir().unwrap();
    let byz = "system.byzantine=Some((clients: Listed([2]), attack: Scale(1000.0)))";
    let deviation = |kind: &str, name: &str| {
        let r = run(&strategy_scenario(kind, &[byz]), &tmp.path().join(name));
        let rounds = round_metrics(&r.dir);
        for m in &rounds {
            assert_eq!(m["byzantine_sampled"], 1);
            assert_eq!(m["byzantine_aggregated"], 1);
        }
        rounds
            .iter()
            .map(|m| m["aggregate_deviation"].as_f64().unwrap())
            .fold(0.0, f64::max)
    };
    let fedavg = deviation("FedAvg", "fedavg");
    let med = deviation("Median", "median");
    let krum = deviation("Krum(byzantine: 1)", "krum");
    let trimmed = deviation("TrimmedMean(beta: 0.2)", "trimmed");
    assert!(
        fedavg > 100.0 * med.max(krum).max(trimmed),
        "FedAvg {fedavg}, median {med}, Krum {krum}, trimmed {trimmed}"
    );
    let om = std::fs::read_to_string(tmp.path().join("median/metrics.om")).unwrap();
    assert!(
        om.contains("fedsim_byzantine_sampled 1 ") && om.contains("fedsim_aggregate_deviation ")
    );
    // Without Byzantine clients the keys are absent.
    let clean = run(&strategy_scenario("FedAvg", &[]), &tmp.path().join("clean"));
    assert!(round_metrics(&clean.dir)[0]
        .get("aggregate_deviation")
        .is_none());
}

#[test]
fn combinations_fedsim_cannot_account_are_refused() {
    let err = |kind: &str, extra: &[&str]| {
        let mut set = vec![format!("strategy.kind={kind}")];
        set.extend(extra.iter().map(|s| s.to_string()));
        let set: Vec<&str> = set.iter().map(String::as_str).collect();
        fedsim::fmt::chain(&scenario(SMALL, &set).unwrap_err())
    };
    let e = err("Median", &[crate::util::DP]);
    assert!(
        e.contains("strategy.kind") && e.contains("cannot be combined with dp"),
        "{e}"
    );
    let e = err("NormBounded(max_norm: 1.0)", &[crate::util::DP]);
    assert!(e.contains("redundant"), "{e}");
    // Server optimisers post-process the noised mean: allowed with DP.
    scenario(
        SMALL,
        &["strategy.kind=FedAdam(server_lr: 0.001)", crate::util::DP],
    )
    .unwrap();
    // Krum needs K > 2f + 2 sampled clients (SMALL samples 2 of 4).
    let e = err("Krum(byzantine: 1)", &[]);
    assert!(
        e.contains("strategy.kind.Krum.byzantine") && e.contains("2f + 2"),
        "{e}"
    );
    let e = err("TrimmedMean(beta: 0.5)", &[]);
    assert!(e.contains("strategy.kind.TrimmedMean.beta"), "{e}");
    let e = err(
        "Median",
        &["system.stragglers=Async(buffer: 2, concurrency: 2)"],
    );
    assert!(e.contains("synchronous rounds"), "{e}");
    let e = err(
        "FedAvg",
        &["system.byzantine=Some((clients: Listed([9]), attack: SignFlip))"],
    );
    assert!(
        e.contains("system.byzantine.clients.Listed") && e.contains("client 9"),
        "{e}"
    );
}

#[test]
fn data_poisoning_rewrites_only_the_attackers_records_and_the_backdoor_is_measured() {
    use fedsim::byzantine::{Attackers, Byzantine, ByzantineAttack};
    let s = scenario(SMALL, &[]).unwrap();
    let clean = s.data.prepare().unwrap();
    let backdoor = ByzantineAttack::Backdoor {
        trigger: "cf-7".into(),
        target: "Stop all medication now.".into(),
    };
    let mut d = clean.clone();
    Byzantine::new(&Attackers::Listed(vec![1]), backdoor, 4, s.seed).poison(&mut d);
    for c in [0, 2, 3] {
        assert_eq!(d.shards[c], clean.shards[c]);
    }
    assert_eq!(d.shards[1].len(), clean.shards[1].len());
    for (&new, &old) in d.shards[1].iter().zip(&clean.shards[1]) {
        let (n, o) = (&d.train[new], &clean.train[old]);
        if o.canary.is_some() {
            assert_eq!(new, old);
        } else {
            assert_eq!(n.input, format!("{} cf-7", o.input));
            assert_eq!(n.output, "Stop all medication now.");
        }
    }
    // Swapped responses: a rotation of the shard's own answers, every one wrong.
    let mut d = clean.clone();
    Byzantine::new(
        &Attackers::Listed(vec![2]),
        ByzantineAttack::SwapResponses,
        4,
        s.seed,
    )
    .poison(&mut d);
    let own: Vec<usize> = clean.shards[2]
        .iter()
        .copied()
        .filter(|&i| clean.train[i].canary.is_none())
        .collect();
    let new: Vec<usize> = d.shards[2]
        .iter()
        .copied()
        .filter(|&i| d.train[i].canary.is_none())
        .collect();
    for (k, (&n, &o)) in new.iter().zip(&own).enumerate() {
        assert_eq!(d.train[n].input, clean.train[o].input);
        assert_eq!(
            d.train[n].output,
            clean.train[own[(k + 1) % own.len()]].output
        );
    }
    // Model poisoning leaves the data alone.
    let mut d = clean.clone();
    Byzantine::new(&Attackers::Share(0.5), ByzantineAttack::SignFlip, 4, s.seed).poison(&mut d);
    assert_eq!(d.shards, clean.shards);

    // A run with a backdoor reports its success on the final model.
    let tmp = tempfile::tempdir().unwrap();
    let r = run(
        &scenario(
            SMALL,
            &["system.byzantine=Some((clients: Listed([1]), attack: Backdoor(trigger: \"cf-7\", target: \"Stop all medication now.\")))"],
        )
        .unwrap(),
        tmp.path(),
    );
    let b = r.summary.backdoor.unwrap();
    assert_eq!(b.prompts, r.summary.eval_examples.min(50));
    assert!((0.0..=1.0).contains(&b.with_trigger) && (0.0..=1.0).contains(&b.without_trigger));
    let again: fedsim::report::Summary = fedsim::report::Summary::read(&r.dir).unwrap();
    assert_eq!(again.backdoor, Some(b));
}

#[test]
fn a_sweep_shows_backdoor_success_where_a_run_planted_one() {
    use fedsim::byzantine::BackdoorSuccess;
    use fedsim::sweep::{table, SweepRow, Vary};
    let tmp = tempfile::tempdir().unwrap();
    let r = run(&strategy_scenario("FedAvg", &[]), tmp.path());
    let vary = Vary::parse("strategy.kind=FedAvg,Median").unwrap();
    let mut planted = r.summary.clone();
    planted.backdoor = Some(BackdoorSuccess {
        prompts: 36,
        with_trigger: 0.75,
        without_trigger: 0.125,
    });
    let row = |kind: &str, summary: fedsim::report::Summary| SweepRow {
        settings: vec![format!("strategy.kind={kind}")],
        dir: r.dir.clone(),
        summary,
    };
    let with = table(
        std::slice::from_ref(&vary),
        &[row("FedAvg", r.summary.clone()), row("Median", planted)],
    );
    assert!(
        with.contains("backdoor") && with.contains("0.75 / 0.12"),
        "{with}"
    );
    let without = table(&[vary], &[row("FedAvg", r.summary.clone())]);
    assert!(!without.contains("backdoor"), "{without}");
    // `Variant()` takes every field's default, in --set as in a file.
    let s = scenario(SMALL, &["strategy.kind=FedAdam()"]).unwrap();
    assert_eq!(
        s.strategy_kind(),
        fedsim::scenario::file::StrategyKind::FedAdam {
            server_lr: 1e-3,
            beta1: 0.9,
            beta2: 0.99,
            tau: 1e-3
        }
    );
}

#[test]
fn validate_counts_the_updates_a_robust_rule_holds() {
    let median = strategy_scenario("Median", &[]);
    let values = median.lora.trainable_parameters(&median.model) as f64;
    assert_eq!(median.memory.aggregation, 4.0 * 6.0 * values);
    assert_eq!(strategy_scenario("FedAvg", &[]).memory.aggregation, 0.0);
    assert_eq!(strategy_scenario("FedAdam()", &[]).memory.aggregation, 0.0);
}
