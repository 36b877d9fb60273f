//! The `sim` binary: exit codes and messages a user sees.

use crate::util::{round_metrics, sim, small_file, SMALL};

#[test]
fn validate_accepts_the_shipped_scenario() {
    let (ok, out, err) = sim(&["validate", "scenarios/five_clients.ron"]);
    assert!(ok, "{err}");
    assert!(out.contains("ok") && out.contains("5 clients"), "{out}");
}

#[test]
fn validate_rejects_bad_input_without_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken.ron");
    std::fs::write(&broken, SMALL.replace("rounds: 4,", "rounds: 4,,")).unwrap();
    let broken = broken.to_str().unwrap();
    for (args, needle) in [
        (vec!["validate", broken], "broken.ron:"),
        (
            vec![
                "validate",
                "scenarios/five_clients.ron",
                "--set",
                "strategy.fraction_fit=2",
            ],
            "strategy.fraction_fit",
        ),
        (
            vec![
                "validate",
                "scenarios/five_clients.ron",
                "--set",
                "lora.r=0",
            ],
            "lora.r",
        ),
        (vec!["validate", "no/such/file.ron"], "no/such/file.ron"),
        (
            vec![
                "run",
                "scenarios/five_clients.ron",
                "--set",
                "strategy.min_fit_clients=6",
            ],
            "min_fit_clients",
        ),
    ] {
        let (ok, _, err) = sim(&args);
        assert!(!ok, "{args:?} should fail");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn run_writes_a_complete_directory_and_compare_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let scen = small_file(dir.path());
    let out = dir.path().join("run");
    let (ok, stdout, err) = sim(&[
        "run",
        scen.to_str().unwrap(),
        "--set",
        "rounds=1",
        "--out",
        out.to_str().unwrap(),
        "--metrics-addr",
        "none",
    ]);
    assert!(ok, "{err}");
    assert!(
        err.contains("trainable params:") && err.contains("partition sizes:"),
        "{err}"
    );
    assert!(err.contains("eval loss"), "per-round table missing: {err}");
    assert!(stdout.contains("completed: 1 of 1 rounds"), "{stdout}");
    assert!(out.join("summary.json").is_file());
    let (ok, table, err) = sim(&["compare", out.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(table.contains("final loss"), "{table}");
    // A finished directory is not overwritten.
    let (ok, _, err) = sim(&[
        "run",
        scen.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--metrics-addr",
        "none",
    ]);
    assert!(!ok && err.contains("already holds a finished run"), "{err}");
}

#[test]
fn privacy_calculator_prints_json_and_rejects_bad_parameters() {
    let (ok, out, err) = sim(&[
        "privacy",
        "epsilon",
        "--noise-multiplier",
        "1.0",
        "--sampling-rate",
        "0.01",
        "--rounds",
        "100",
        "--delta",
        "1e-5",
        "--accountant",
        "rdp",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        (v["epsilon"].as_f64().unwrap() - 1.214145).abs() < 1e-5,
        "{v}"
    );
    assert_eq!(v["order"].as_f64().unwrap(), 8.8);
    assert_eq!(v["accountant"], "rdp");
    assert_eq!(v["delta"].as_f64().unwrap(), 1e-5);
    let (ok, out, err) = sim(&[
        "privacy",
        "noise",
        "--target-epsilon",
        "8",
        "--sampling-rate",
        "0.4",
        "--rounds",
        "10",
        "--delta",
        "1e-5",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["epsilon"].as_f64().unwrap() <= 8.0);
    assert!(v["noise_multiplier"].as_f64().unwrap() > 1.0);
    for (flag, value, needle) in [
        ("--noise-multiplier", "0", "noise_multiplier"),
        ("--sampling-rate", "1.5", "sampling_rate"),
        ("--delta", "1", "delta"),
    ] {
        let mut args = vec![
            "privacy",
            "epsilon",
            "--noise-multiplier",
            "1",
            "--sampling-rate",
            "0.1",
            "--rounds",
            "5",
            "--delta",
            "1e-5",
        ];
        let i = args.iter().position(|a| *a == flag).unwrap();
        args[i + 1] = value;
        let (ok, _, err) = sim(&args);
        assert!(!ok && err.contains(needle), "{flag}={value}: {err}");
    }
}

#[test]
fn metrics_address_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let scen = small_file(dir.path());
    let out = dir.path().join("run");
    let (ok, _, err) = sim(&[
        "run",
        scen.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--metrics-addr",
        &addr,
    ]);
    assert!(!ok);
    assert!(
        err.contains(&addr) && err.contains("--metrics-addr"),
        "{err}"
    );
    assert!(
        !out.exists(),
        "nothing may start when the exporter cannot bind"
    );
    let (ok, _, err) = sim(&["run", scen.to_str().unwrap(), "--metrics-addr", "localhost"]);
    assert!(!ok && err.contains("HOST:PORT"), "{err}");
}

#[test]
fn pace_slows_rounds_without_changing_results() {
    let dir = tempfile::tempdir().unwrap();
    let scen = small_file(dir.path());
    let base = [
        "run",
        scen.to_str().unwrap(),
        "--set",
        "rounds=2",
        "--metrics-addr",
        "none",
        "-q",
        "--out",
    ];
    let fast = dir.path().join("fast");
    let (ok, _, err) = sim(&[&base[..], &[fast.to_str().unwrap()]].concat());
    assert!(ok, "{err}");
    let paced = dir.path().join("paced");
    let start = std::time::Instant::now();
    let (ok, _, err) = sim(&[&base[..], &[paced.to_str().unwrap(), "--pace", "2"]].concat());
    assert!(ok, "{err}");
    assert!(
        start.elapsed() >= std::time::Duration::from_secs(4),
        "2 rounds at 2 s each"
    );
    assert_eq!(round_metrics(&fast), round_metrics(&paced));
    let (ok, _, err) = sim(&[
        &base[..],
        &[dir.path().join("x").to_str().unwrap(), "--pace", "0"],
    ]
    .concat());
    assert!(!ok && err.contains("--pace"), "{err}");
}

#[test]
fn validate_prints_the_dp_plan_and_the_epsilon_it_will_charge() {
    // dp_budget.ron's z was calibrated for ε = 8 after its 10 rounds at q = 0.1.
    let (ok, out, err) = sim(&["validate", "scenarios/dp_budget.ron"]);
    assert!(ok, "{err}");
    let line = privacy_line(&out);
    assert!(
        line.contains("ε = 8.0000 if all 10 rounds run at δ = 1e-5, q = 0.1"),
        "{out}"
    );
    let ddg = "dp=Some((mechanism: ClientSideFixed(clip_norm: 0.5, noise_multiplier: 1.0), \
               noise_by: Clients(min_survivors: 4, distribution: DiscreteGaussian)))";
    // The scenario's value bound cannot hold with the clients' noise: refused, then dropped.
    let (ok, _, err) = sim(&["validate", "scenarios/secure_aggregation.ron", "--set", ddg]);
    assert!(!ok && err.contains("SecAggPlus.value_bound"), "{err}");
    let unbounded = "strategy.secure_aggregation.SecAggPlus.value_bound=None";
    let args = ["--set", ddg, "--set", unbounded];
    let (ok, out, err) =
        sim(&[&["validate", "scenarios/secure_aggregation.ron"][..], &args].concat());
    assert!(ok, "{err}");
    let line = privacy_line(&out);
    assert!(
        line.contains("discrete Gaussian shares of σ = 2.7488e11 fixed-point steps"),
        "{out}"
    );
    let (_, out, _) = sim(&[
        "validate",
        "scenarios/dp_budget.ron",
        "--set",
        "dp.max_epsilon=Some(5.0)",
    ]);
    assert!(
        out.contains("then dp.max_epsilon stops the run before round"),
        "{out}"
    );
}

/// `sim validate`'s `privacy:` line ("" when there is none).
fn privacy_line(out: &str) -> &str {
    out.lines()
        .find(|l| l.starts_with("privacy: "))
        .unwrap_or_default()
}
