//! Numbers and inputs that cannot lie: non-finite inputs are refused by name (adapters, base
//! weights, PEFT configs), NaN scores cannot hang the ROC code, user numbers cannot wrap,
//! profiles keep simulated time finite, errors name the real cause, empty sets are not scored,
//! and validate's memory estimate counts what a run holds.

use std::path::Path;

use fedsim::attack::{self, roc, AttackPlan};

use crate::util::{run, scenario, sim, SMALL};

/// Overwrite the first value of tensor `name` in safetensors file `path` with `value`.
fn poke(path: &Path, name: &str, value: f32) {
    let mut bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let start = header[name]["data_offsets"][0].as_u64().unwrap() as usize + 8 + n;
    bytes[start..start + 4].copy_from_slice(&value.to_le_bytes());
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn nan_scores_rank_lowest_and_never_hang() {
    let members = [f64::NAN, 3.0, 2.0];
    let non = [1.0, f64::NAN, f64::NAN, 0.5];
    // NaN is below every real score, tied with NaN: members 3, 2 beat all 4 non-members (8),
    // the member NaN beats none and ties the two NaN non-members (½ each = 1): 9 / 12.
    assert!((roc::auc(&members, &non) - 9.0 / 12.0).abs() < 1e-12);
    let curve = roc::curve(&members, &non);
    assert_eq!(curve.last().unwrap(), &roc::RocPoint { fpr: 1.0, tpr: 1.0 });
    assert_eq!(curve.len(), 6, "{curve:?}");
    let s = roc::summarize(&members, &non);
    assert_eq!(s.nan_scores, 3);
    let all_nan = roc::summarize(&[f64::NAN; 4], &[f64::NAN; 4]);
    assert_eq!(all_nan.auc, 0.5);
}

#[test]
fn nan_adapters_and_base_weights_are_refused_naming_the_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    let r = run(
        &scenario(SMALL, &["rounds=1"]).unwrap(),
        &tmp.path().join("a"),
    );
    let tensor = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight";
    poke(&r.dir.join("adapter_model.safetensors"), tensor, f32::NAN);
    let base = r.dir.join("base_model");
    // generate and eval refuse the adapter, naming the tensor and the file.
    let (ok, _, err) = sim(&[
        "generate",
        "--model",
        base.to_str().unwrap(),
        "--adapter",
        r.dir.to_str().unwrap(),
        "--max-tokens",
        "2",
        "hi",
    ]);
    assert!(
        !ok && err.contains(tensor) && err.contains("non-finite") && err.contains("adapter_model"),
        "{err}"
    );
    let (ok, _, err) = sim(&[
        "eval",
        "--model",
        base.to_str().unwrap(),
        "--adapter",
        r.dir.to_str().unwrap(),
        "--out",
        tmp.path().join("eval.json").to_str().unwrap(),
        "--prompt",
        "hi",
        "--max-tokens",
        "2",
    ]);
    assert!(
        !ok && err.contains(tensor) && err.contains("non-finite"),
        "{err}"
    );
    // attack says the adapter is unusable (not a mismatch with the base).
    let plan = AttackPlan {
        members: 8,
        ..AttackPlan::default()
    };
    let e = fedsim::fmt::chain(&attack::attack(&r.dir, plan, &mut |_, _, _| Ok(())).unwrap_err());
    assert!(e.contains(tensor) && !e.contains("does not fit"), "{e}");
    // A base weight with an infinity is named, not taken for a diverged run.
    poke(
        &base.join("model.safetensors"),
        "model.norm.weight",
        f32::INFINITY,
    );
    let (ok, _, err) = sim(&[
        "generate",
        "--model",
        base.to_str().unwrap(),
        "--max-tokens",
        "2",
        "hi",
    ]);
    assert!(
        !ok && err.contains("model.norm.weight") && err.contains("non-finite"),
        "{err}"
    );
}

#[test]
fn peft_configs_with_non_finite_numbers_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let r = run(
        &scenario(SMALL, &["rounds=1"]).unwrap(),
        &tmp.path().join("a"),
    );
    let cfg = r.dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["lora_dropout"] = serde_json::json!(1.5);
    std::fs::write(&cfg, v.to_string()).unwrap();
    let (ok, _, err) = sim(&[
        "generate",
        "--model",
        r.dir.join("base_model").to_str().unwrap(),
        "--adapter",
        r.dir.to_str().unwrap(),
        "hi",
    ]);
    assert!(
        !ok && err.contains("adapter_config.json") && err.contains("lora_dropout"),
        "{err}"
    );
}

#[test]
fn user_numbers_that_multiply_are_checked_not_wrapped() {
    // Krum's 2f + 2 with f near the top of usize.
    let e = scenario(
        SMALL,
        &["strategy.kind=Krum(byzantine: 18446744073709551615)"],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("strategy.kind.Krum.byzantine") && e.contains("2f + 2"),
        "{e}"
    );
    // sim comm: messages × bytes beyond 64 bits.
    let (ok, _, err) = sim(&[
        "comm",
        "--total-params",
        "18446744073709551615",
        "--trainable-params",
        "1",
        "--rounds",
        "10",
        "--clients-per-round",
        "10",
    ]);
    assert!(
        !ok && err.contains("overflows 64 bits") && !err.contains("panicked"),
        "{err}"
    );
}

#[test]
fn every_kind_of_profile_is_held_to_one_range() {
    let tmp = tempfile::tempdir().unwrap();
    let fixed = "(flops: 1e-300, up_mbps: 1, down_mbps: 1, latency_s: 0)";
    for (set, field) in [
        (format!("system.profiles=Fixed({fixed})"), "system.profiles.Fixed.flops"),
        (
            format!("system.profiles=Tiers([(name: \"t\", share: 1.0, profile: {fixed})])"),
            "system.profiles.Tiers[0].profile.flops",
        ),
        (
            "system.profiles=Drawn(flops: Fixed(1e-300), up_mbps: Fixed(1), down_mbps: Fixed(1), latency_s: Fixed(0))".into(),
            "system.profiles.Drawn.flops.Fixed",
        ),
        (
            "system.profiles=Drawn(flops: Fixed(1e9), up_mbps: Fixed(1), down_mbps: Fixed(1), latency_s: Uniform(low: 0, high: 1e300))".into(),
            "system.profiles.Drawn.latency_s.Uniform.high",
        ),
    ] {
        let e = scenario(SMALL, &[&set]).unwrap_err().to_string();
        let range = e.contains("[1000, 1e18]") || e.contains("[0, 3600]");
        assert!(e.contains(field) && range, "{set}: {e}");
    }
    let csv = tmp.path().join("trace.csv");
    let mut text = String::from("client,flops,up_mbps,down_mbps,latency_s,windows\n");
    for c in 0..4 {
        let flops = if c == 2 { "1e-300" } else { "1e9" };
        text.push_str(&format!("{c},{flops},10,10,0.1,\n"));
    }
    std::fs::write(&csv, text).unwrap();
    let set = format!(
        "system.profiles=Trace(path: {:?})",
        csv.display().to_string()
    );
    let e = fedsim::fmt::chain(&scenario(SMALL, &[&set]).unwrap_err());
    assert!(
        e.contains("trace.csv:4:3") && e.contains("[1000, 1e18]"),
        "{e}"
    );
}

#[test]
fn errors_name_the_real_cause_and_documented_forms_are_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    // A UTF-8 byte-order mark before the scenario is not part of it.
    let bom = tmp.path().join("bom.ron");
    std::fs::write(&bom, format!("\u{feff}{SMALL}")).unwrap();
    let (ok, _, err) = sim(&["validate", bom.to_str().unwrap()]);
    assert!(ok, "{err}");
    // A bare string is a string, whatever else it would parse as; variants still switch.
    let s = scenario(
        SMALL,
        &["name=2024", "strategy.kind=FedAvgM(server_lr: 0.5)"],
    )
    .unwrap();
    assert_eq!(s.name, "2024");
    assert!(s.to_ron().contains("FedAvgM"), "{}", s.to_ron());
    let e = scenario(SMALL, &["rounds=abc"]).unwrap_err().to_string();
    assert!(e.contains("rounds"), "{e}");
    // localhost:PORT is a HOST:PORT.
    let out = tmp.path().join("run");
    let (ok, _, err) = sim(&[
        "run",
        bom.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--metrics-addr",
        "localhost:0",
        "--set",
        "rounds=1",
        "-q",
    ]);
    assert!(ok, "{err}");
    // A server optimiser that overflows names its server_lr, not train.lr_max.
    let s = scenario(
        SMALL,
        &["rounds=2", "strategy.kind=FedAvgM(server_lr: 1e38)"],
    )
    .unwrap();
    let r = crate::util::run_full(
        &s,
        &tmp.path().join("lr"),
        fedsim::Shutdown::never(),
        None,
        None,
    );
    let e = fedsim::fmt::chain(&r.unwrap_err());
    assert!(e.contains("server_lr, now 1e38"), "{e}");
}

#[test]
fn empty_sets_and_overlapping_varies_are_refused_not_scored() {
    let tmp = tempfile::tempdir().unwrap();
    // An empty PubMedQA file, and a split that keeps nothing.
    let data = tmp.path().join("ori_pqal.json");
    std::fs::write(&data, "{}").unwrap();
    let e = fedsim::eval::pubmedqa::load(&data, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ori_pqal.json") && e.contains("no PubMedQA items"),
        "{e}"
    );
    // The same --vary path twice, or one inside another, would print values that never ran.
    for args in [
        vec!["seed=1,2", "seed=3"],
        vec![
            "strategy.kind=Krum(byzantine: 1)",
            "strategy.kind.Krum.byzantine=1,2",
        ],
    ] {
        let args: Vec<String> = args.into_iter().map(String::from).collect();
        let e = fedsim::sweep::parse_all(&args).unwrap_err().to_string();
        assert!(e.contains("already varied"), "{args:?}: {e}");
    }
    let ok: Vec<String> = vec!["seed=1,2".into(), "rounds=1,2".into()];
    assert_eq!(fedsim::sweep::parse_all(&ok).unwrap().len(), 2);
}

#[test]
fn validate_counts_canary_copies_in_the_memory_estimate() {
    let none = scenario(SMALL, &["data.canaries=0"]).unwrap();
    let many = scenario(SMALL, &["data.canaries=1000", "data.canary_repeats=1000"]).unwrap();
    // A million planted copies are a million more training records (~1.5 KB each).
    let extra = many.memory.data - none.memory.data;
    assert!((extra - 1536.0 * 1e6).abs() < 1.0, "{extra}");
}
