//! DP with secure aggregation: noise from the server on the unmasked sum, or from the clients
//! (distributed DP) — the same released model as the plain DP run, the noise at its stated
//! scale, rounds below the calibrated minimum withheld, and what cannot be combined refused.

use crate::util::{round_metrics, run, scenario, DP, SMALL};

const SECURE: &str =
    "strategy.secure_aggregation=SecAggPlus(neighbours: 3, threshold: 2, ring_bits: None)";

fn small(set: &[&str]) -> fedsim::Scenario {
    let mut all = vec![
        "strategy.fraction_fit=1.0",
        "strategy.min_fit_clients=4",
        "rounds=3",
        DP,
    ];
    all.extend_from_slice(set);
    scenario(SMALL, &all).unwrap()
}

fn adapter(dir: &std::path::Path) -> Vec<u8> {
    std::fs::read(dir.join("adapter_model.safetensors")).unwrap()
}

#[test]
fn dp_under_secure_aggregation_releases_the_plain_dp_runs_model_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, by) in [
        ("server", "dp.noise_by=Server"),
        ("clients", "dp.noise_by=Clients(min_survivors: 2)"),
    ] {
        let set = [by, "system.crash_probability=0.3"];
        let plain = run(&small(&set), &tmp.path().join(format!("{name}-plain")));
        let secure = run(
            &small(&[by, "system.crash_probability=0.3", SECURE]),
            &tmp.path().join(format!("{name}-secure")),
        );
        assert!(
            adapter(&plain.dir) == adapter(&secure.dir),
            "{name}: adapters differ"
        );
        let (p, s) = (round_metrics(&plain.dir), round_metrics(&secure.dir));
        assert!(
            p.iter().all(|r| r["dp_epsilon"].as_f64().is_some()),
            "{name}: no ε"
        );
        for (p, s) in p.iter().zip(&s) {
            assert_eq!(p["dp_epsilon"], s["dp_epsilon"], "{name}");
            assert_eq!(p["dp_noise_stddev"], s["dp_noise_stddev"], "{name}");
            assert_eq!(p["completed"], s["completed"], "{name}");
        }
    }
}

/// The B matrices of a saved adapter (zero before training: PEFT's initialisation).
fn lora_b(dir: &std::path::Path) -> Vec<f32> {
    let bytes = adapter(dir);
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        if name.contains("lora_B") {
            out.extend(
                view.data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
        }
    }
    out
}

/// The released values `b` are noise of std `stated`: their sample std within 4 standard
/// errors (σ/√(2n)) of it, their mean within 4 of 0.
fn assert_noise_std(b: &[f32], stated: f64) {
    let n = b.len() as f64;
    let mean = b.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
    let sd = (b
        .iter()
        .map(|&x| (f64::from(x) - mean).powi(2))
        .sum::<f64>()
        / (n - 1.0))
        .sqrt();
    let se = stated / (2.0 * n).sqrt();
    assert!(
        (sd - stated).abs() < 4.0 * se,
        "std {sd} vs {stated} ± {se} over {n} values"
    );
    assert!(mean.abs() < 4.0 * stated / n.sqrt(), "mean {mean}");
}

/// Each of `cases`, added to a full-participation DP scenario, is refused naming its field.
fn assert_refused(cases: &[(Vec<&str>, &str)]) {
    for (set, field) in cases {
        let mut all = vec![
            "strategy.fraction_fit=1.0",
            "strategy.min_fit_clients=4",
            DP,
        ];
        all.extend(set.iter().copied());
        let err = scenario(SMALL, &all).unwrap_err().to_string();
        assert!(err.contains(field), "{set:?}: {err}");
    }
}

#[test]
fn the_clients_noise_sums_to_the_stated_std_on_the_release() {
    // z = 200, C = 0.5: the released B matrices (zero before round 1) are noise, the clipped
    // updates (norm ≤ 0.5 over thousands of values) negligible beside it. Each of the 4
    // clients adds N(0, (z·C)² / 2); the mean over q·N = 4 has std z·C·√4 / (√2 · 4).
    let tmp = tempfile::tempdir().unwrap();
    let z = r#"dp.mechanism=ClientSideFixed(clip_norm: 0.5, noise_multiplier: 200.0)"#;
    let s = small(&[
        z,
        "dp.noise_by=Clients(min_survivors: 2)",
        SECURE,
        "rounds=1",
    ]);
    let done = run(&s, tmp.path());
    let stated = 200.0 * 0.5 * 2.0 / (2f64.sqrt() * 4.0);
    let r = &round_metrics(&done.dir)[0];
    let reported = r["dp_noise_stddev"].as_f64().unwrap();
    assert!(
        (reported - stated).abs() < 1e-9,
        "reported {reported}, stated {stated}"
    );
    assert_noise_std(&lora_b(&done.dir), stated);
}

#[test]
fn a_round_with_fewer_updates_than_the_noise_is_calibrated_for_releases_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, secure) in [("plain", None), ("secure", Some(SECURE))] {
        let mut set = vec!["dp.noise_by=Clients(min_survivors: 5)", "rounds=2"];
        set.extend(secure);
        let done = run(&small(&set), &tmp.path().join(name));
        for r in round_metrics(&done.dir) {
            let why = r["skipped"].as_str().unwrap_or_default();
            assert!(
                why.starts_with("dp_min_survivors: 4 updates"),
                "{name}: {why}"
            );
            assert_eq!(r["completed"], 0, "{name}");
        }
    }
}

#[test]
fn what_distributed_noise_and_secure_aggregation_cannot_do_is_refused_by_name() {
    let adaptive = r#"dp.mechanism=Adaptive(initial_clip: 0.5, target_quantile: 0.5, clip_lr: 0.2, noise_multiplier: 1.0, count_stddev: 1.0)"#;
    let server = r#"dp.mechanism=ServerSideFixed(clip_norm: 0.5, noise_multiplier: 1.0)"#;
    assert_refused(&[
        (
            vec![adaptive, "dp.noise_by=Clients(min_survivors: 2)"],
            "dp.noise_by",
        ),
        (
            vec!["dp.noise_by=Clients(min_survivors: 0)"],
            "min_survivors",
        ),
        (vec![server, SECURE], "dp.mechanism"),
        (vec![adaptive, SECURE], "dp.mechanism"),
    ]);
}

const DISCRETE: &str = "dp.noise_by=Clients(min_survivors: 2, distribution: DiscreteGaussian)";
const HE: &str = "strategy.secure_aggregation=HomomorphicEncryption(scheme: Bfv(degree: 4096), \
                  key_holders: 2)";

#[test]
fn discrete_gaussian_shares_release_one_model_under_secagg_and_he() {
    // The same integer shares, summed in SecAgg+'s ring or under BFV: the same adapter bit
    // for bit, with crashes; ε is the DDG's, above the Gaussian's at the same z.
    let tmp = tempfile::tempdir().unwrap();
    let crash = "system.crash_probability=0.3";
    let masked = run(
        &small(&[DISCRETE, SECURE, crash]),
        &tmp.path().join("masked"),
    );
    let encrypted = run(
        &small(&[DISCRETE, HE, crash]),
        &tmp.path().join("encrypted"),
    );
    let gaussian = run(
        &small(&["dp.noise_by=Clients(min_survivors: 2)", SECURE, crash]),
        &tmp.path().join("gaussian"),
    );
    assert!(
        adapter(&masked.dir) == adapter(&encrypted.dir),
        "adapters differ"
    );
    // The shares are priced on each client's timeline: one draw per value.
    let bytes = adapter(&masked.dir);
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let values: usize = st.tensors().iter().map(|(_, v)| v.data().len() / 4).sum();
    let (dm, gm) = (
        crate::system::clients_log(&masked.dir),
        crate::system::clients_log(&gaussian.dir),
    );
    for (d, g) in dm.iter().zip(&gm) {
        let extra = d["mask"].as_f64().unwrap() - g["mask"].as_f64().unwrap();
        let want = values as f64 / fedsim::privacy::discrete::SHARES_PER_S;
        assert!((extra - want).abs() < 1e-9, "{extra} vs {want}");
    }
    assert!(
        adapter(&masked.dir) != adapter(&gaussian.dir),
        "no discrete noise"
    );
    let (m, e, g) = (
        round_metrics(&masked.dir),
        round_metrics(&encrypted.dir),
        round_metrics(&gaussian.dir),
    );
    assert!(m.iter().any(|r| r["completed"].as_u64() > Some(0)));
    for ((m, e), g) in m.iter().zip(&e).zip(&g) {
        assert_eq!(m["dp_epsilon"], e["dp_epsilon"]);
        assert_eq!(m["completed"], e["completed"]);
        let (d, c) = (
            m["dp_epsilon"].as_f64().unwrap(),
            g["dp_epsilon"].as_f64().unwrap(),
        );
        assert!(d >= c, "DDG ε {d} below the Gaussian's {c}");
    }
}

#[test]
fn the_discrete_shares_sum_to_their_std_on_the_release() {
    // As the Gaussian test above: z = 200, C = 0.5, 4 clients, m = 2. Each share is
    // N_Z(0, σ²) in steps of 2⁻⁴⁰ with σ = z·C·(1 + 2⁻²³)·2⁴⁰/√2 (rounded up to t·u).
    let tmp = tempfile::tempdir().unwrap();
    let z = r#"dp.mechanism=ClientSideFixed(clip_norm: 0.5, noise_multiplier: 200.0)"#;
    let done = run(&small(&[z, DISCRETE, SECURE, "rounds=1"]), tmp.path());
    let share = fedsim::privacy::discrete::DistributedNoise::new(200.0, 0.5, 2)
        .unwrap()
        .share;
    let stated = share.std() / 2f64.powi(40) * 2.0 / 4.0;
    let reported = round_metrics(&done.dir)[0]["dp_noise_stddev"]
        .as_f64()
        .unwrap();
    assert!(
        (reported - stated).abs() < 1e-12 * stated,
        "reported {reported}, stated {stated}"
    );
    assert_noise_std(&lora_b(&done.dir), stated);
}

#[test]
fn what_the_discrete_gaussian_cannot_do_is_refused_by_name() {
    let tiny = r#"dp.mechanism=ClientSideFixed(clip_norm: 1e-9, noise_multiplier: 1e-4)"#;
    assert_refused(&[
        (vec![DISCRETE], "dp.noise_by.Clients.distribution"),
        (vec![DISCRETE, SECURE, "dp.sampling=Fixed"], "dp.sampling"),
        (vec![DISCRETE, SECURE, "dp.pld=true"], "dp.pld"),
        (vec![DISCRETE, SECURE, tiny], "dp.mechanism"),
    ]);
}
