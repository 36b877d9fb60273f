//! `sim attack`: ROC metrics, exposure, pattern matching against hand-computed values, and on
//! the tiny model, memorisation measured against the pretrained control and against DP.

use std::path::Path;

use fedsim::attack::canaries::{candidates, CandidatePlan};
use fedsim::attack::exposure::{self, SkewNormal};
use fedsim::attack::patterns::{find, PiiKind};
use fedsim::attack::roc;
use fedsim::attack::scoring::Score;
use fedsim::attack::{self, AttackPlan, AttackReport};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::util::{run, scenario, sim, SMALL};

#[test]
fn auc_tpr_and_balanced_accuracy_match_hand_computed_values_with_ties() {
    // 16 member/non-member pairs: 0.9 and 0.8 beat all 4 (8), each 0.5 beats 3 and ties 1
    // (2 × 3.5 = 7): AUC = 15/16.
    let members = [0.9, 0.8, 0.5, 0.5];
    let non = [0.5, 0.3, 0.2, 0.1];
    assert!((roc::auc(&members, &non) - 15.0 / 16.0).abs() < 1e-12);
    let s = roc::summarize(&members, &non);
    // No false positive allowed: threshold 0.8 gives TPR 1/2; at 0.5, FPR is 1/4.
    assert_eq!(s.tpr_at_fpr, [0.5, 0.5, 0.5]);
    // Best threshold 0.5: TPR 1, TNR 3/4.
    assert!((s.best_balanced_accuracy - 0.875).abs() < 1e-12);
    let curve = roc::curve(&members, &non);
    let pts: Vec<(f64, f64)> = curve.iter().map(|p| (p.fpr, p.tpr)).collect();
    assert_eq!(
        pts,
        vec![
            (0.0, 0.0),
            (0.0, 0.25),
            (0.0, 0.5),
            (0.25, 1.0),
            (0.5, 1.0),
            (0.75, 1.0),
            (1.0, 1.0)
        ]
    );
    // All tied: chance. Perfectly separated: 1 (and 0 reversed).
    assert_eq!(roc::auc(&[1.0, 1.0], &[1.0, 1.0, 1.0]), 0.5);
    assert_eq!(roc::auc(&[2.0, 3.0], &[0.0, 1.0]), 1.0);
    assert_eq!(roc::auc(&[0.0, 1.0], &[2.0, 3.0]), 0.0);
    let perfect = roc::summarize(&[2.0, 3.0], &[0.0, 1.0]);
    assert_eq!(perfect.tpr_at_fpr, [1.0, 1.0, 1.0]);
    assert_eq!(perfect.best_balanced_accuracy, 1.0);
    // 1 % FPR with 200 non-members allows 2 false positives.
    let non: Vec<f64> = (0..200).map(f64::from).collect();
    // Thresholds 199.5 (no false positive), 198.5 (1: 0.5 %), 190.5 (9: 4.5 %).
    let members = [198.5, 250.0, 190.5, 199.5];
    let s = roc::summarize(&members, &non);
    assert_eq!(s.tpr_at_fpr, [0.5, 0.75, 1.0]);
    // The standard error at AUC 0.5 equals the Mann–Whitney null variance (m + n + 1)/(12 m n).
    let se = roc::auc_standard_error(0.5, 100, 100);
    assert!((se * se - 201.0 / 120_000.0).abs() < 1e-15, "{se}");
    assert_eq!(s.auc_se, roc::auc_standard_error(s.auc, 4, 200));
    // The course's rule: member iff ratio < 1.
    assert_eq!(
        roc::rule_accuracy(&[0.5, 1.2], &[1.1, 0.9], |r| r < 1.0),
        0.5
    );
    // Signals: low loss means member, high Min-K% means member.
    assert_eq!(Score::Loss.signal(2.0), -2.0);
    assert_eq!(Score::MinK.signal(-2.0), -2.0);
}

#[test]
fn exposure_is_the_rank_formula_on_a_toy_candidate_set() {
    // The canary scores 1.0; the other fills 0.5, 1.0 (a tie, counted against it), 2.0, 3.0:
    // rank 3 of |R| = 5.
    let others = [0.5, 1.0, 2.0, 3.0];
    assert_eq!(exposure::rank(1.0, &others), 3);
    let e = exposure::exposure_from_rank(5.0, 3);
    assert!((e - (5f64.log2() - 3f64.log2())).abs() < 1e-12);
    // Best of all: log2 |R|; worst: 0.
    assert_eq!(exposure::exposure_from_rank(1024.0, 1), 10.0);
    assert_eq!(exposure::exposure_from_rank(1024.0, 1024), 0.0);
    // A sample of 100 fills out of 10^6 with 1 at or below the canary: rank ≈ 1 + 10^4.
    let e = exposure::exposure_from_sample(1e6, 1, 100);
    assert!((e - (1e6f64.log2() - 10_001f64.log2())).abs() < 1e-9);

    // Enumeration: every fill of "AB-##" but the canary's own, each once, in the format.
    let plan = CandidatePlan {
        enumerate_up_to: 100,
        sampled: 10,
    };
    let all = candidates("AB-##", "AB-42", plan, 1);
    assert_eq!(all.len(), 99);
    assert!(!all.contains(&"AB-42".to_string()));
    assert!(all.iter().all(|c| c.len() == 5 && c.starts_with("AB-")));
    let distinct: std::collections::BTreeSet<_> = all.iter().collect();
    assert_eq!(distinct.len(), 99);
    // Sampling: distinct fills, seeded.
    let plan = CandidatePlan {
        enumerate_up_to: 10,
        sampled: 30,
    };
    let a = candidates("MRN-######", "MRN-123456", plan, 5);
    assert_eq!(a, candidates("MRN-######", "MRN-123456", plan, 5));
    assert_eq!(
        a.iter().collect::<std::collections::BTreeSet<_>>().len(),
        30
    );
}

#[test]
fn skew_normal_cdf_and_fit_match_closed_forms() {
    // α = 0: the normal CDF; α = 1: Φ(z)²; α = −1: 1 − (1 − Φ(z))² (closed forms of
    // ∫ 2φ(t)Φ(αt) dt), deep into the left tail.
    let phi_m3 = 0.001_349_898_031_630_094_6_f64;
    let phi_m8 = 6.220_960_574_271_785e-16_f64;
    let std = |shape| SkewNormal {
        location: 0.0,
        scale: 1.0,
        shape,
    };
    let close = |a: f64, b: f64| (a - b).abs() < 2e-3 * b.abs().max(1.0);
    assert!(close(std(0.0).log_cdf(-3.0), phi_m3.ln()));
    assert!(close(std(0.0).log_cdf(-8.0), phi_m8.ln()));
    assert!(close(std(1.0).log_cdf(-8.0), 2.0 * phi_m8.ln()));
    assert!(close(std(1.0).log_cdf(-3.0), 2.0 * phi_m3.ln()));
    let minus = 1.0 - (1.0 - phi_m3).powi(2);
    assert!(close(std(-1.0).log_cdf(-3.0), minus.ln()));
    assert!(std(0.0).log_cdf(8.0).abs() < 1e-9);
    // Location and scale: F(ξ + ωz) = F_std(z).
    let shifted = SkewNormal {
        location: 70.0,
        scale: 6.0,
        shape: 1.0,
    };
    assert!(close(shifted.log_cdf(70.0 - 18.0), 2.0 * phi_m3.ln()));
    // Exposure: −log2 F, capped at log2 |R|.
    let e = std(0.0).exposure(-3.0, 1e6);
    assert!((e - (-phi_m3.log2())).abs() < 0.01);
    assert_eq!(std(0.0).exposure(-40.0, 1e6), 1e6f64.log2());

    // Method of moments recovers a skew-normal from 200 000 draws.
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let normal = |rng: &mut ChaCha8Rng| {
        let (u, v): (f64, f64) = (rng.random(), rng.random());
        (-2.0 * (1.0 - u).ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    };
    let (xi, omega, alpha) = (50.0, 4.0, -3.0);
    let delta = alpha / (1.0f64 + alpha * alpha).sqrt();
    let xs: Vec<f64> = (0..200_000)
        .map(|_| {
            let (a, b) = (normal(&mut rng), normal(&mut rng));
            xi + omega * (delta * a.abs() + (1.0 - delta * delta).sqrt() * b)
        })
        .collect();
    let fit = SkewNormal::fit(&xs).unwrap();
    assert!((fit.location - xi).abs() < 0.3, "{fit:?}");
    assert!((fit.scale - omega).abs() < 0.2, "{fit:?}");
    assert!((fit.shape - alpha).abs() < 0.8, "{fit:?}");
    assert!(SkewNormal::fit(&[1.0, 1.0, 1.0]).is_none());
}

#[test]
fn patterns_find_identifiers_and_not_false_friends() {
    let text =
        "Write to ilse.varga.0627@mail-example.org or see https://clinic.example.com/a?b=1. \
                Call +1-555-931-0173, (555) 123-4567 or 555.987.6543; record MRN-199455. \
                Also www.example.org/path.";
    let found: Vec<(PiiKind, String)> = find(text).into_iter().map(|f| (f.kind, f.text)).collect();
    assert_eq!(
        found,
        vec![
            (PiiKind::Email, "ilse.varga.0627@mail-example.org".into()),
            (PiiKind::Url, "https://clinic.example.com/a?b=1".into()),
            (PiiKind::Url, "www.example.org/path".into()),
            (PiiKind::Phone, "+1-555-931-0173".into()),
            (PiiKind::Phone, "(555) 123-4567".into()),
            (PiiKind::Phone, "555.987.6543".into()),
            (PiiKind::RecordNumber, "MRN-199455".into()),
        ]
    );
    for friend in [
        "Seen on 2024-11-29 at 10:30.",
        "ISBN 978-3-16-148410-0",
        "a dose of 500 mg twice daily, 1.5 mg/kg",
        "user@localhost and @mention",
        "version 1.2.3, pi 3.14159",
        "SSN-like 123-45-6789 and 12345-678-9012",
        "call 555-1234",
        "MRN-123 is too short",
        "phone 123-456-78901",
    ] {
        assert_eq!(find(friend), vec![], "{friend}");
    }
}

/// A small corpus the tiny model memorises: one client, many epochs, 8 copies per canary.
const MEMORISE: &str = r#"(
    name: "memorise",
    seed: 11,
    rounds: 8,
    model: (source: Tiny(vocab_size: 512)),
    lora: (r: 16, alpha: 32.0, dropout: 0.0,
           target_modules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    data: (source: Synthetic(records: 240), eval_fraction: 0.25, max_seq_len: 96,
           canaries: 3, canary_repeats: 8),
    partition: Iid,
    clients: (count: 1),
    strategy: (kind: FedAvg, fraction_fit: 1.0, min_fit_clients: 1, min_available_clients: 1),
    train: (local_steps: Some(30), batch_size: 8, lr_max: 5e-3, lr_min: 1e-3),
    slots: (count: 1),
)"#;

fn quick_plan() -> AttackPlan {
    let mut plan = AttackPlan::default();
    plan.candidates.sampled = 300;
    plan.samples.per_prompt = 2;
    plan.samples.max_tokens = 24;
    plan
}

fn attack_dir(dir: &Path) -> AttackReport {
    attack::attack(dir, quick_plan(), &mut |_, _, _| Ok(())).unwrap()
}

fn mean_exposure(r: &AttackReport) -> f64 {
    r.canaries.iter().map(|c| c.run.exposure).sum::<f64>() / r.canaries.len() as f64
}

#[test]
fn memorisation_shows_against_the_control_and_strong_dp_lowers_exposure() {
    let tmp = tempfile::tempdir().unwrap();
    let central = run(
        &scenario(MEMORISE, &[]).unwrap(),
        &tmp.path().join("central"),
    );
    // The same data and seed, 4 clients all sampled, client-level DP with z = 2.
    let dp = scenario(
        MEMORISE,
        &[
            "name=dp",
            "clients.count=4",
            "strategy.min_fit_clients=4",
            "strategy.min_available_clients=4",
            "train.local_steps=Some(8)",
            r#"dp={"mechanism":{"ClientSideFixed":{"clip_norm":0.5,"noise_multiplier":2.0}},"delta":1e-5}"#,
        ],
    )
    .unwrap();
    let dp = run(&dp, &tmp.path().join("dp"));
    let c = attack_dir(&central.dir);
    let d = attack_dir(&dp.dir);

    // Centralised: every canary ranks first, exposure at (or within a bit of) log2 |R|.
    for k in &c.canaries {
        assert!(k.seen);
        assert!(k.run.exposure >= k.max_exposure - 1.0, "{k:?}");
        assert!(k.pretrained.exposure < k.max_exposure - 5.0, "{k:?}");
    }
    // Membership: the loss attack works on the run's model; the pretrained model alone is at
    // chance on a same-distribution split.
    let loss = c
        .membership
        .scores
        .iter()
        .find(|s| s.score == Score::Loss)
        .unwrap();
    let control = loss.control.as_ref().unwrap().auc;
    assert!(loss.roc.auc > 0.7, "AUC {}", loss.roc.auc);
    assert!(
        loss.roc.auc > control + 0.15,
        "{} vs {control}",
        loss.roc.auc
    );
    assert!((control - 0.5).abs() < 0.12, "control AUC {control}");
    assert!(c.membership.loss_members < c.membership.loss_non_members);
    assert_eq!(c.membership.members, c.membership.non_members);
    assert_eq!(c.kind, attack::RunKind::Centralised);

    // DP with strong noise: far less exposure, and an ε to show for it.
    assert_eq!(d.kind, attack::RunKind::FederatedDp);
    assert!(d.epsilon.unwrap().is_finite());
    assert!(
        mean_exposure(&d) < mean_exposure(&c) - 5.0,
        "DP {} vs centralised {}",
        mean_exposure(&d),
        mean_exposure(&c)
    );

    // Files: attack.json is the report and reads back; roc.svg is an SVG with the curves.
    let text = std::fs::read_to_string(central.dir.join("attack.json")).unwrap();
    assert_eq!(text, serde_json::to_string_pretty(&c).unwrap() + "\n");
    let back = attack::read(&central.dir).unwrap().unwrap();
    assert_eq!((back.kind, back.canaries.len()), (c.kind, c.canaries.len()));
    let svg = std::fs::read_to_string(central.dir.join("roc.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("loss, pretrained only"));
    // Deterministic, whatever the scoring slots: one slot of two threads gives the same numbers
    // as the default (a slot per core, one thread each).
    let mut plan = quick_plan();
    (plan.slots, plan.threads_per_slot) = (1, 2);
    let again = attack::attack(&central.dir, plan, &mut |_, _, _| Ok(())).unwrap();
    assert_eq!(again.membership, c.membership);
    assert_eq!(again.canaries, c.canaries);
    assert_eq!(again.extraction, c.extraction);
    let table = fedsim::attack::table::comparison(&[c, d]);
    assert!(table.contains("pretrained (control)") && table.contains("federated + DP"));
}

#[test]
fn runs_without_an_adapter_or_with_another_base_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let a = run(&scenario(SMALL, &[]).unwrap(), &tmp.path().join("a"));
    let b = run(
        &scenario(SMALL, &["model.source.Custom.hidden_size=32"]).unwrap(),
        &tmp.path().join("b"),
    );
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to.join("base_model")).unwrap();
        for e in std::fs::read_dir(from)
            .unwrap()
            .chain(std::fs::read_dir(from.join("base_model")).unwrap())
        {
            let e = e.unwrap();
            if e.path().is_file() {
                let rel = e.path().strip_prefix(from).unwrap().to_path_buf();
                std::fs::copy(e.path(), to.join(rel)).unwrap();
            }
        }
    };
    let err = |dir: &Path| {
        fedsim::fmt::chain(&attack::attack(dir, quick_plan(), &mut |_, _, _| Ok(())).unwrap_err())
    };
    // No adapter.
    let no_adapter = tmp.path().join("no_adapter");
    copy(&a.dir, &no_adapter);
    std::fs::remove_file(no_adapter.join("adapter_model.safetensors")).unwrap();
    let e = err(&no_adapter);
    assert!(
        e.contains("adapter_model.safetensors") && e.contains("missing"),
        "{e}"
    );
    // Another base model (b's, hidden size 32) under a's adapter.
    let swapped = tmp.path().join("swapped");
    copy(&a.dir, &swapped);
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(
            b.dir.join("base_model").join(f),
            swapped.join("base_model").join(f),
        )
        .unwrap();
    }
    let e = err(&swapped);
    assert!(e.contains("does not fit the run's base model"), "{e}");
    // A pretrained base whose file changed since the run (SHA-256 mismatch).
    let changed = tmp.path().join("changed");
    copy(&a.dir, &changed);
    std::fs::write(
        changed.join("model.json"),
        serde_json::json!({"source": "x", "path": changed.join("base_model"), "sha256": "00"})
            .to_string(),
    )
    .unwrap();
    let e = err(&changed);
    assert!(
        e.contains("is not the base model the run trained on"),
        "{e}"
    );
    // Not a run directory at all; and through the CLI, the file is named.
    let e = err(tmp.path());
    assert!(e.contains("summary.json") && e.contains("missing"), "{e}");
    let (ok, _, stderr) = sim(&["attack", no_adapter.to_str().unwrap()]);
    assert!(!ok);
    assert!(stderr.contains("adapter_model.safetensors"), "{stderr}");
}

#[test]
fn the_shipped_study_validates_and_bad_studies_are_refused_by_field() {
    let study =
        fedsim::study::Study::load(&crate::util::root().join("scenarios/privacy_study.ron"))
            .unwrap();
    let names: Vec<&str> = study.arms.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "centralised",
            "federated",
            "federated_dp_z0.3",
            "federated_dp_z1"
        ]
    );
    assert_eq!(study.arms[0].1.data.clients, 1);
    assert!(study.arms[3].1.dp.is_some());
    let tmp = tempfile::tempdir().unwrap();
    let base = SMALL.trim();
    let check = |arms: &str, want: &[&str]| {
        let path = tmp.path().join("s.ron");
        std::fs::write(
            &path,
            format!("(name: \"s\", base: {base}, arms: [{arms}])"),
        )
        .unwrap();
        let e = fedsim::fmt::chain(&fedsim::study::Study::load(&path).unwrap_err());
        for w in want {
            assert!(e.contains(w), "{e} lacks {w}");
        }
    };
    check(
        "(name: \"a\"), (name: \"b\", set: [\"seed=8\"])",
        &["arms.b.set", "changes the seed"],
    );
    check(
        "(name: \"a\"), (name: \"b\", set: [\"data.canaries=5\"])",
        &["same data, model and seed"],
    );
    check("", &["arms", "is empty"]);
    check("(name: \"a\"), (name: \"a\")", &["\"a\" is used twice"]);
    check("(name: \"../x\")", &["cannot name a directory"]);
    check("(name: \"a\", set: [\"rounds=0\"])", &["arm `a`", "rounds"]);
    check("(name: \"a\", sett: [])", &["s.ron:", "sett"]);
}

#[test]
fn sim_study_trains_attacks_and_reports_every_arm() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("study.ron");
    std::fs::write(
        &path,
        format!(
            "(name: \"mini\", base: {}, arms: [(name: \"central\", set: [\"clients.count=1\", \
             \"strategy.min_fit_clients=1\", \"strategy.min_available_clients=1\", \
             \"strategy.fraction_fit=1.0\"]), (name: \"fed\")], attack: (members: 20, \
             candidates: 50, samples: 1, max_tokens: 8))",
            SMALL.trim()
        ),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let (ok, stdout, stderr) = sim(&[
        "study",
        path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("pretrained (control)"), "{stdout}");
    assert!(
        stdout.contains("central ") && stdout.contains("fed "),
        "{stdout}"
    );
    for arm in ["central", "fed"] {
        assert!(out.join(arm).join("attack.json").is_file());
        assert!(out.join(arm).join("roc.svg").is_file());
    }
    assert_eq!(
        std::fs::read_to_string(out.join("attack.txt")).unwrap(),
        stdout[stdout.find("model ").unwrap()..stdout.find("study directory").unwrap()]
    );
    // The report over the study directory shows both arms and the attack section.
    let (ok, _, stderr) = sim(&[
        "report",
        out.to_str().unwrap(),
        "--out",
        tmp.path().join("r.html").to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    let html = std::fs::read_to_string(tmp.path().join("r.html")).unwrap();
    assert!(html.contains("Attacks: what fine-tuning leaked"));
    assert!(html.contains("Membership inference: central (centralised)"));
    assert!(html.contains("Membership inference: fed (federated)"));
    assert!(html.contains("Canary exposure"));
    assert_eq!(
        html,
        std::fs::read_to_string(out.join("report.html")).unwrap()
    );
}

#[test]
fn a_stop_is_heard_at_every_attack_stage_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let r = run(
        &scenario(MEMORISE, &["rounds=1", "train.local_steps=Some(2)"]).unwrap(),
        &tmp.path().join("run"),
    );
    // Every stage, and how often canary scoring reports: at least once per scoring batch (a
    // stop is heard within a batch, not a canary's thousand candidates).
    let mut stages: Vec<String> = Vec::new();
    let mut canary_reports = 0;
    let mut plan = quick_plan();
    plan.candidates.sampled = 900; // many scoring batches per canary
    plan.batch = 32;
    attack::attack(&r.dir, plan, &mut |stage, _, _| {
        canary_reports += usize::from(stage == "canary exposure");
        if stages.last().map(String::as_str) != Some(stage) {
            stages.push(stage.to_string());
        }
        Ok(())
    })
    .unwrap();
    std::fs::remove_file(r.dir.join("attack.json")).unwrap();
    assert!(stages.len() >= 5, "{stages:?}");
    // 3 canaries × 2 models × ⌈901 / (32 × slots)⌉ batches, plus one report per canary.
    let batches = 901usize.div_ceil(32 * plan.slots);
    assert!(
        canary_reports >= 3 * (2 * batches + 1),
        "{canary_reports} reports for {batches} batches per canary and model"
    );
    for stop_at in &stages {
        let e = attack::attack(&r.dir, quick_plan(), &mut |stage, _, _| {
            if stage == stop_at {
                Err(attack::Stopped)
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert!(
            matches!(e, attack::AttackError::Stopped(_)),
            "{stop_at}: {e}"
        );
        assert!(
            !r.dir.join("attack.json").exists(),
            "{stop_at}: nothing written"
        );
    }
}

#[test]
fn cholesky_solves_a_known_system() {
    // A = [[4, 2], [2, 3]], X = [[1, -1], [2, 0.5]] → B = A X.
    let a = vec![4.0, 2.0, 2.0, 3.0];
    let x = [1.0, -1.0, 2.0, 0.5];
    let b = vec![
        4.0 * x[0] + 2.0 * x[2],
        4.0 * x[1] + 2.0 * x[3],
        2.0 * x[0] + 3.0 * x[2],
        2.0 * x[1] + 3.0 * x[3],
    ];
    let got = fedsim::attack::inversion::cholesky_solve(a, b, 2, 2);
    for (g, w) in got.iter().zip(x) {
        assert!((g - w).abs() < 1e-12, "{got:?}");
    }
}
