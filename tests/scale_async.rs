//! The systems simulation at scale and in its other modes: the synthetic trainer, sweeps, slot
//! assignment and resources, asynchronous aggregation (split from `system.rs`, whose helpers it
//! shares).

use std::path::Path;

use fedsim::report::RunStatus;
use fedsim::ScenarioError;
use serde_json::Value;

use crate::system::{clients_log, f, rounds, sc, trace, with};
use crate::util::{round_metrics, run, scenario, SMALL};

const SYNTHETIC: &str = r#"(
    name: "syn",
    rounds: 3,
    trainer: Synthetic(params: 4608),
    data: (source: Synthetic(records: 100000), max_seq_len: 64),
    clients: (count: 10000),
    strategy: (fraction_fit: 0.05, min_fit_clients: 1, min_available_clients: 1),
    train: (local_steps: Some(2), batch_size: 4, lr_max: 1e-3, lr_min: 1e-4),
    slots: (count: 2, threads_per_slot: Some(1)),
    system: (availability: 0.9, crash_probability: 0.05, deadline_s: Some(30.0), stragglers: Drop,
             profiles: Drawn(flops: LogNormal(median: 1e9, sigma: 1.0), up_mbps: Fixed(10.0),
                             down_mbps: Fixed(40.0), latency_s: Fixed(0.05))),
)"#;

#[test]
fn ten_thousand_synthetic_clients_run_three_rounds() {
    let tmp = tempfile::tempdir().unwrap();
    let s = scenario(SYNTHETIC, &[]).unwrap();
    let a = run(&s, &tmp.path().join("a"));
    assert_eq!(a.summary.status, RunStatus::Completed);
    assert_eq!(a.rounds.len(), 3);
    // Real payload sizes: a safetensors buffer of 4608 f32 values per message.
    let payload = 4608 * 4 + 256; // values + the safetensors header
    for r in &a.rounds {
        assert!(r.sampled > 300, "{r:?}");
        assert_eq!(
            r.sampled,
            r.completed + r.crashed + r.missed_deadline + r.failed
        );
        let per = r.bytes_up / r.completed as u64;
        assert!(
            (4608 * 4..payload).contains(&(per as usize)),
            "{per} bytes per update"
        );
        assert_eq!(r.bytes_down / r.sampled as u64, per);
        assert!(r.eval_loss.is_nan(), "no model, no evaluation");
    }
    assert!(a.rounds.iter().any(|r| r.crashed > 0));
    assert!(!a.dir.join("adapter_model.safetensors").exists());
    // Deterministic whatever the slots.
    let b = run(
        &scenario(SYNTHETIC, &["slots.count=1"]).unwrap(),
        &tmp.path().join("b"),
    );
    assert_eq!(round_metrics(&a.dir), round_metrics(&b.dir));
    assert_eq!(clients_log(&a.dir), clients_log(&b.dir));
}

#[test]
fn the_synthetic_trainer_refuses_what_it_cannot_do() {
    match scenario(SYNTHETIC, &["data.canaries=2"]) {
        Err(ScenarioError::Invalid { field, .. }) => assert_eq!(field, "data.canaries"),
        other => panic!("{other:?}"),
    }
    match scenario(SYNTHETIC, &["trainer=Synthetic(params: 0)"]) {
        Err(ScenarioError::Invalid { field, .. }) => assert_eq!(field, "trainer.Synthetic.params"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn sweep_runs_every_combination_and_writes_a_table_that_the_report_shows() {
    let tmp = tempfile::tempdir().unwrap();
    let scen = crate::util::small_file(tmp.path());
    let out = tmp.path().join("sweep");
    let (ok, stdout, err) = crate::util::sim(&[
        "sweep",
        scen.to_str().unwrap(),
        "--vary",
        "system.crash_probability=0,0.5",
        "--vary",
        "partition=Iid,Dirichlet(alpha: 0.5)",
        "--set",
        "rounds=2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(
        stdout.contains("system.crash_probability") && stdout.contains("Dirichlet(alpha: 0.5)"),
        "{stdout}"
    );
    let csv = std::fs::read_to_string(out.join("sweep.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 4, "{csv}");
    assert!(
        csv.lines()
            .nth(1)
            .unwrap()
            .starts_with("0,Iid,completed,2/2,"),
        "{csv}"
    );
    for line in csv.lines().skip(1) {
        let dir = line.rsplit(',').next().unwrap();
        assert!(Path::new(dir).join("summary.json").is_file(), "{dir}");
    }
    // Crashes show up where they were asked for.
    let crashed = |row: usize| {
        csv.lines()
            .nth(row)
            .unwrap()
            .split(',')
            .nth(6)
            .unwrap()
            .parse::<usize>()
            .unwrap()
    };
    assert_eq!(crashed(1) + crashed(2), 0);
    // `sim report` on the sweep directory: its table, and a curve per combination.
    let html = tmp.path().join("sweep.html");
    let (ok, _, err) = crate::util::sim(&[
        "report",
        out.to_str().unwrap(),
        "--out",
        html.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let html = std::fs::read_to_string(html).unwrap();
    assert!(
        html.contains("system.crash_probability") && html.contains("<pre>"),
        "{html}"
    );
    assert!(html.contains("one line per combination"));
    assert_eq!(
        html.matches("<svg").count(),
        1,
        "only the sweep's curves: no run given"
    );
    // A bad value is found before anything runs.
    let (ok, _, err) = crate::util::sim(&[
        "sweep",
        scen.to_str().unwrap(),
        "--vary",
        "system.crash_probability=0,2",
        "--out",
        tmp.path().join("bad").to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("system.crash_probability") && err.contains("combination"),
        "{err}"
    );
    assert!(!tmp.path().join("bad").exists());
}

#[test]
fn pinned_slots_give_the_same_results_and_gpu_requests_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let free = run(
        &sc(&[
            "rounds=2",
            "slots.count=2",
            "slots.threads_per_slot=Some(1)",
        ]),
        &tmp.path().join("free"),
    );
    let pinned = run(
        &sc(&[
            "rounds=2",
            "slots.count=2",
            "slots.threads_per_slot=Some(1)",
            "slots.assignment=Pinned",
        ]),
        &tmp.path().join("pinned"),
    );
    assert_eq!(round_metrics(&free.dir), round_metrics(&pinned.dir));
    assert!(
        pinned.summary.slot_busy_seconds.iter().all(|&s| s > 0.0),
        "{:?}",
        pinned.summary
    );
    let set = with(&["slots.device=Cuda(0)"]);
    let set: Vec<&str> = set.iter().map(String::as_str).collect();
    match scenario(SMALL, &set) {
        Err(ScenarioError::Invalid { field, message, .. }) => {
            assert_eq!(field, "slots.device");
            assert!(
                message.contains("no GPU support") && message.contains("Cpu"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn staleness_weights_follow_the_formula() {
    use fedsim::stragglers::Staleness;
    for s in 0..6 {
        let sqrt = 1.0 / (1.0 + s as f64).sqrt();
        assert_eq!(Staleness::InverseSqrt.factor(s), sqrt);
        assert_eq!(Staleness::Constant.factor(s), 1.0);
        assert_eq!(
            Staleness::Polynomial { a: 0.5 }.factor(s),
            (1.0 + s as f64).powf(-0.5)
        );
        assert_eq!(
            Staleness::InverseSqrt.weight(30, s),
            (30.0 * sqrt * 65536.0).round() as u64
        );
    }
    assert_eq!(
        Staleness::InverseSqrt.weight(1, 10_000_000),
        21,
        "never zero"
    );
}

#[test]
fn async_aggregates_the_earliest_arrivals_with_their_staleness() {
    let tmp = tempfile::tempdir().unwrap();
    let path = trace(tmp.path());
    let set = [
        "rounds=6",
        &format!("system.profiles=Trace(path: \"{path}\")"),
        "system.stragglers=Async(buffer: 2, concurrency: 4)",
    ];
    let a = run(&sc(&set), &tmp.path().join("a"));
    assert_eq!(a.summary.status, RunStatus::Completed);
    let rows = rounds(&a.dir);
    let clients = clients_log(&a.dir);
    // When each aggregation closed.
    let closes: Vec<f64> = rows
        .iter()
        .map(|r| f(r, "sim_start_s") + f(r, "sim_duration_s"))
        .collect();
    let mut completed: Vec<&Value> = clients
        .iter()
        .filter(|c| c["status"] == "completed")
        .collect();
    completed.sort_by(|x, y| f(x, "finish").total_cmp(&f(y, "finish")));
    assert_eq!(completed.len(), 12, "6 aggregations of 2");
    for (k, pair) in completed.chunks(2).enumerate() {
        let round = k + 1;
        // The k-th pair of arrivals in virtual time is what aggregation k took…
        for c in pair {
            assert_eq!(c["round"].as_u64().unwrap() as usize, round, "{c}");
        }
        assert!((closes[k] - f(pair[1], "finish")).abs() < 1e-9);
        // …and each update's staleness is the aggregations that closed after it started.
        let stale: Vec<usize> = pair
            .iter()
            .map(|c| {
                let started = f(c, "start");
                let before = closes.iter().filter(|&&t| t <= started).count();
                k - before
            })
            .collect();
        let r = &rows[k];
        assert_eq!(
            r["staleness_max"].as_u64().unwrap() as usize,
            *stale.iter().max().unwrap()
        );
        let mean = stale.iter().sum::<usize>() as f64 / 2.0;
        assert!((f(r, "staleness_mean") - mean).abs() < 1e-12, "{r}");
    }
    assert!(
        rows.iter()
            .any(|r| r["staleness_max"].as_u64().unwrap() > 0),
        "some staleness"
    );
    // Deterministic whatever the slots.
    let two = [
        &set[..],
        &["slots.count=2", "slots.threads_per_slot=Some(1)"],
    ]
    .concat();
    let b = run(&sc(&two), &tmp.path().join("b"));
    assert_eq!(round_metrics(&a.dir), round_metrics(&b.dir));
    let adapter = |d: &Path| std::fs::read(d.join("adapter_model.safetensors")).unwrap();
    assert_eq!(adapter(&a.dir), adapter(&b.dir));
    // DP with Async is refused.
    let dp = [&set[..], &[crate::util::DP]].concat();
    let dp = with(&dp);
    let dp: Vec<&str> = dp.iter().map(String::as_str).collect();
    assert!(
        matches!(scenario(SMALL, &dp), Err(ScenarioError::Invalid { field, .. }) if field == "dp")
    );
}

#[test]
fn client_resources_take_several_slots_per_job_with_the_same_results() {
    let tmp = tempfile::tempdir().unwrap();
    let one = run(
        &sc(&[
            "rounds=2",
            "slots.count=2",
            "slots.threads_per_slot=Some(1)",
        ]),
        &tmp.path().join("one"),
    );
    let two = run(
        &sc(&[
            "rounds=2",
            "slots.count=2",
            "slots.threads_per_slot=Some(1)",
            "slots.client_resources=2",
        ]),
        &tmp.path().join("two"),
    );
    assert_eq!(round_metrics(&one.dir), round_metrics(&two.dir));
    let set = with(&["slots.count=2", "slots.client_resources=3"]);
    let set: Vec<&str> = set.iter().map(String::as_str).collect();
    assert!(
        matches!(scenario(SMALL, &set), Err(ScenarioError::Invalid { field, .. }) if field == "slots.client_resources")
    );
}

#[test]
fn async_with_frequent_crashes_still_progresses() {
    // Each dispatch draws its own fate: a client that crashed is not bound to crash again
    // in the same window (the loop once spun forever on 2 always-crashing clients).
    let tmp = tempfile::tempdir().unwrap();
    let r = run(
        &sc(&[
            "rounds=3",
            "clients.count=2",
            "system=(crash_probability: 0.7, stragglers: Async(buffer: 1, concurrency: 2))",
        ]),
        tmp.path(),
    );
    assert_eq!(r.summary.status, RunStatus::Completed);
    assert_eq!(r.rounds.len(), 3);
    assert!(r.rounds.iter().map(|x| x.crashed).sum::<usize>() > 0);
}
