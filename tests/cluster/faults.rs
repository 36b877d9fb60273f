//! Workers that fail: restarted and set up again, stalled (heartbeats), all lost (the run
//! stops cleanly), and a coordinator that dies (the worker drops its jobs).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{
    cookie_file, crash_causes, free_port, run_with, worker, worker_at, workers_override,
    ONE_AT_A_TIME,
};
use crate::util::{run, scenario, SMALL};

/// Send `signal` (STOP, CONT) to process `pid`.
fn signal(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{signal} {pid}");
}

/// SMALL over `addrs` with every job remote (no local slot), `rejoin_s` and `set`.
fn remote_only(set: &[&str], addrs: &[String], cookie: &Path, rejoin_s: f64) -> fedsim::Scenario {
    let workers = workers_override(addrs, cookie, serde_json::json!({ "rejoin_s": rejoin_s }));
    let mut all = vec!["slots.count=0"];
    all.extend_from_slice(set);
    all.push(&workers);
    scenario(SMALL, &all).unwrap()
}

#[test]
fn a_worker_restarted_mid_run_is_set_up_again_and_used() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let cookie = cookie_file(tmp.path(), "cookie", "a-long-shared-secret-for-tests");
    let addr = format!("127.0.0.1:{}", free_port());
    let first = worker_at(&addr, &cookie, 1, &[]);
    let set = ["rounds=4"];
    let s = remote_only(&set, std::slice::from_ref(&addr), &cookie, 60.0);
    // Killed once round 1 is recorded, and started again on the same address: the run has no
    // other slot, so rounds 2-4 can only run on the restarted process.
    // Held here too, so the restarted process outlives the run's progress callback.
    let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(first)));
    let (c, a, held) = (cookie.clone(), addr.clone(), slot.clone());
    let progress: fedsim::sim::ProgressFn = Box::new(move |p| {
        let slot = &held;
        if let fedsim::sim::Progress::Round(r) = p {
            let mut slot = slot.lock().unwrap();
            if r.round == 1 {
                drop(slot.take());
                *slot = Some(worker_at(&a, &c, 1, &[]));
            }
        }
    });
    let dir = tmp.path().join("run");
    let report = run_with(&s, &dir, Some(progress)).expect("the run completes");
    drop(slot);
    assert_eq!(report.summary.rounds_completed, 4);
    let w = &report.summary.workers[0];
    assert!(w.losses >= 1 && w.rejoins >= 1 && !w.lost, "{w:?}");
    let causes = crash_causes(&dir);
    assert!(causes.iter().all(|c| c == "worker_lost"), "{causes:?}");
    let rounds = crate::util::round_metrics(&dir);
    assert!(
        rounds[3]["completed"].as_u64().unwrap() > 0,
        "{:?}",
        rounds[3]
    );
    // No job was in flight at the kill: the run is the local run, bit for bit.
    if causes.is_empty() {
        let local = run(&scenario(SMALL, &set).unwrap(), &tmp.path().join("local"));
        let adapter = |d: &Path| std::fs::read(d.join("adapter_model.safetensors")).unwrap();
        assert_eq!(adapter(&dir), adapter(&local.dir));
    }
}

#[test]
fn losing_every_worker_stops_the_run_with_status_workers_lost() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let cookie = cookie_file(tmp.path(), "cookie", "a-long-shared-secret-for-tests");
    let w = worker(&cookie, 1);
    let addr = w.addr.clone();
    let s = remote_only(&["rounds=6"], std::slice::from_ref(&w.addr), &cookie, 1.0);
    let doomed = std::sync::Mutex::new(Some(w));
    let progress: fedsim::sim::ProgressFn = Box::new(move |p| {
        if let fedsim::sim::Progress::Round(r) = p {
            if r.round == 1 {
                drop(doomed.lock().unwrap().take());
            }
        }
    });
    let dir = tmp.path().join("run");
    let started = Instant::now();
    let report = run_with(&s, &dir, Some(progress)).expect("a clean stop, not an error");
    let summary = &report.summary;
    assert_eq!(summary.status.as_str(), "workers_lost", "{summary:?}");
    assert!((1..6).contains(&summary.rounds_completed), "{summary:?}");
    let reason = summary.stop_reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("every worker is lost") && reason.contains("rejoin_s"),
        "{reason}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "it did not hang"
    );
    // summary.json on disk says the same.
    let on_disk: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(on_disk["status"], "workers_lost");
    // With a worker back, `sim run --resume` finishes it.
    let _back = worker_at(&addr, &cookie, 1, &[]);
    let report = crate::util::resume_full(&dir, fedsim::Shutdown::never(), None)
        .expect("the stopped run resumes");
    assert_eq!(report.summary.status.as_str(), "completed");
    assert_eq!(report.summary.rounds_completed, 6);
}

#[test]
fn a_stalled_worker_misses_heartbeats_is_lost_and_comes_back() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let cookie = cookie_file(tmp.path(), "cookie", "a-long-shared-secret-for-tests");
    let (stalled, kept) = (worker(&cookie, 1), worker(&cookie, 1));
    let pid = stalled.child.id();
    let addrs = vec![stalled.addr.clone(), kept.addr.clone()];
    let s = remote_only(
        &["rounds=30", "strategy.fraction_fit=1.0"],
        &addrs,
        &cookie,
        60.0,
    );
    // SIGSTOP after round 1: the TCP session stays open, only heartbeats can tell. SIGCONT
    // 14 s later (the heartbeat allows 10 s); at a second a round the run outlasts it.
    let progress: fedsim::sim::ProgressFn = Box::new(move |p| {
        if let fedsim::sim::Progress::Round(r) = p {
            if r.round == 1 {
                signal(pid, "STOP");
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_secs(14));
                    signal(pid, "CONT");
                });
            }
        }
    });
    let dir = tmp.path().join("run");
    let opts = fedsim::sim::RunOptions {
        out: Some(dir.clone()),
        progress: Some(progress),
        pace: Some(Duration::from_secs(1)),
        ..Default::default()
    };
    let report = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(fedsim::run(&s, opts, fedsim::Shutdown::never()))
        .expect("the run completes");
    drop((stalled, kept));
    assert_eq!(report.summary.rounds_completed, 30);
    let w = &report.summary.workers;
    assert!(w[0].losses >= 1 && w[0].rejoins >= 1, "{w:?}");
    assert_eq!(w[1].losses, 0, "{w:?}");
    let causes = crash_causes(&dir);
    assert!(causes.iter().all(|c| c == "worker_lost"), "{causes:?}");
}

/// CPU seconds process `pid` has used (user + system), from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0 // USER_HZ is 100 on Linux
}

/// CPU seconds `pid` uses over the next `secs` seconds.
fn cpu_over(pid: u32, secs: f64) -> f64 {
    let before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs_f64(secs));
    cpu_seconds(pid) - before
}

#[test]
fn a_coordinator_that_dies_leaves_its_workers_idle_not_training() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let cookie = cookie_file(tmp.path(), "cookie", "a-long-shared-secret-for-tests");
    let w = worker(&cookie, 1);
    let file = crate::util::small_file(tmp.path());
    // Jobs of 100,000 steps: far longer than the test.
    let workers = workers_override(
        std::slice::from_ref(&w.addr),
        &cookie,
        serde_json::json!({}),
    );
    let mut coordinator = Command::new(env!("CARGO_BIN_EXE_sim"))
        .arg("run")
        .arg(&file)
        .args(["--metrics-addr", "none", "--out"])
        .arg(tmp.path().join("run"))
        .args([
            "--set",
            "slots.count=0",
            "--set",
            "train.local_steps=100000",
        ])
        .args(["--set", &workers])
        .current_dir(crate::util::root())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = w.child.id();
    // Wait until the worker trains (a core busy), then kill the coordinator with no goodbye.
    let started = Instant::now();
    while cpu_over(pid, 1.0) < 0.5 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the worker never trained"
        );
    }
    coordinator.kill().unwrap();
    coordinator.wait().unwrap();
    // Its session closes; the worker drops the job before its next step.
    std::thread::sleep(Duration::from_secs(2));
    let idle = cpu_over(pid, 2.0);
    assert!(
        idle < 0.3,
        "the worker kept training for a dead coordinator: {idle} CPU s in 2 s"
    );
    // It still serves: a new coordinator's run completes on it.
    let report = super::run_on(&["rounds=1"], &tmp.path().join("next"), &[&w], &cookie)
        .expect("the worker serves the next coordinator");
    assert_eq!(report.summary.rounds_completed, 1);
}
