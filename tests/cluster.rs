//! Slot workers over ractor_cluster, on loopback: `sim worker` processes serve a coordinator's
//! run (scenario `slots.workers`, as `sim run --workers` sets it) and the results are the local
//! run's, bit for bit; a wrong cookie is refused. Faults (killed, stalled, restarted workers,
//! a coordinator that dies) are in [`faults`]; TLS in [`tls`].

mod faults;
mod tls;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fedsim::cluster::Cookie;
use fedsim::sim::RunOptions;

use crate::util::{round_metrics, run, scenario, SMALL};

/// One cluster test at a time: ractor's process groups are global to the test process, and
/// two coordinators in it would share them.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A `sim worker` process, killed when dropped.
struct Worker {
    child: Child,
    addr: String,
}

/// The `--set` override that names `addrs` as the run's workers, with `extra` fields
/// (e.g. `"rejoin_s": 1.0`).
fn workers_override(addrs: &[String], cookie: &Path, extra: serde_json::Value) -> String {
    let mut section = serde_json::json!({"addrs": addrs, "cookie_file": cookie});
    if let serde_json::Value::Object(fields) = extra {
        section.as_object_mut().unwrap().extend(fields);
    }
    format!("slots.workers={section}")
}

/// SMALL with `set`, over the workers at `addrs`.
fn over_workers(set: &[&str], addrs: &[String], cookie: &Path) -> fedsim::Scenario {
    let workers = workers_override(addrs, cookie, serde_json::json!({}));
    let mut all: Vec<&str> = set.to_vec();
    all.push(&workers);
    scenario(SMALL, &all).unwrap()
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cookie_file(dir: &Path, name: &str, secret: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, secret).unwrap();
    p
}

/// A port free on loopback now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Start `sim worker` with `slots` slots and wait until it accepts connections.
fn worker(cookie: &Path, slots: usize) -> Worker {
    worker_at(&format!("127.0.0.1:{}", free_port()), cookie, slots, &[])
}

/// Start `sim worker` on `addr` with `slots` slots and `extra` arguments; wait until it
/// accepts connections.
fn worker_at(addr: &str, cookie: &Path, slots: usize, extra: &[&str]) -> Worker {
    worker_in(&crate::util::root(), addr, cookie, (slots, extra))
}

/// [`worker_at`], run from `dir` (where the scenario's relative data paths resolve).
fn worker_in(dir: &Path, addr: &str, cookie: &Path, (slots, extra): (usize, &[&str])) -> Worker {
    let child = Command::new(env!("CARGO_BIN_EXE_sim"))
        .args(["worker", "--listen", addr, "--cookie-file"])
        .arg(cookie)
        .args(["--slots", &slots.to_string()])
        .args(extra)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let w = Worker {
        child,
        addr: addr.to_string(),
    };
    let start = Instant::now();
    while std::net::TcpStream::connect(&w.addr).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "worker did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    w
}

fn run_on(
    set: &[&str],
    out: &Path,
    workers: &[&Worker],
    cookie: &Path,
) -> Result<fedsim::sim::RunReport, fedsim::SimError> {
    let addrs: Vec<String> = workers.iter().map(|w| w.addr.clone()).collect();
    run_with(&over_workers(set, &addrs, cookie), out, None)
}

fn run_with(
    s: &fedsim::Scenario,
    out: &Path,
    progress: Option<fedsim::sim::ProgressFn>,
) -> Result<fedsim::sim::RunReport, fedsim::SimError> {
    let opts = RunOptions {
        out: Some(out.to_path_buf()),
        progress,
        ..Default::default()
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(fedsim::run(s, opts, fedsim::Shutdown::never()))
}

/// The crash causes of the non-completed clients in `dir`'s clients.jsonl (any other
/// outcome fails the test).
fn crash_causes(dir: &Path) -> Vec<String> {
    let clients = std::fs::read_to_string(dir.join("clients.jsonl")).unwrap();
    let mut causes = Vec::new();
    for line in clients.lines() {
        let c: serde_json::Value = serde_json::from_str(line).unwrap();
        match c["status"].as_str().unwrap() {
            "completed" => {}
            "crashed" => causes.push(c["crash_cause"].as_str().unwrap_or("?").to_string()),
            other => panic!("client {other}: {line}"),
        }
    }
    causes
}

#[test]
fn runs_over_one_two_and_three_workers_equal_the_local_run_bit_for_bit() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let cookie = cookie_file(tmp.path(), "cookie", "a-long-shared-secret-for-tests");
    let set = ["rounds=2"];
    let local = run(&scenario(SMALL, &set).unwrap(), &tmp.path().join("local"));
    let adapter = |d: &Path| std::fs::read(d.join("adapter_model.safetensors")).unwrap();
    let workers: Vec<Worker> = (0..3).map(|i| worker(&cookie, 1 + i % 2)).collect();
    for k in 1..=3 {
        let dir = tmp.path().join(format!("workers{k}"));
        let on: Vec<&Worker> = workers.iter().take(k).collect();
        let report = run_on(&set, &dir, &on, &cookie).expect("the run over workers succeeds");
        assert_eq!(report.summary.rounds_completed, 2, "{k} workers");
        // Each worker was set up and recorded; remote slots ran jobs (which slot takes a job
        // from the shared queue is up to timing, so not every worker need have one), and a
        // worker with jobs moved bytes both ways.
        let records = &report.summary.workers;
        assert_eq!(records.len(), k);
        assert!(
            records.iter().map(|r| r.jobs).sum::<u64>() > 0,
            "{records:?}"
        );
        for r in records.iter().filter(|r| r.jobs > 0) {
            assert!(r.bytes_sent > 0 && r.bytes_received > 0, "{r:?}");
        }
        assert_eq!(adapter(&dir), adapter(&local.dir), "{k} workers: adapter");
        assert_eq!(
            round_metrics(&dir),
            round_metrics(&local.dir),
            "{k} workers: round records"
        );
    }
}

#[test]
fn a_split_run_over_a_worker_equals_the_local_split_run_with_its_traffic() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let cookie = cookie_file(tmp.path(), "cookie", "a-long-shared-secret-for-tests");
    let split = "topology=Split(cut_layer: 1, mode: UShaped, activation_compression: Int8)";
    let set = ["rounds=2", split];
    let local = run(&scenario(SMALL, &set).unwrap(), &tmp.path().join("local"));
    let w = worker(&cookie, 1);
    let dir = tmp.path().join("remote");
    // No local slot: every job runs on the worker.
    let remote = ["rounds=2", split, "slots.count=0"];
    let report = run_on(&remote, &dir, &[&w], &cookie).expect("the run over a worker succeeds");
    assert!(report.summary.workers[0].jobs > 0);
    let adapter = |d: &Path| std::fs::read(d.join("adapter_model.safetensors")).unwrap();
    assert_eq!(adapter(&dir), adapter(&local.dir));
    let rounds = round_metrics(&dir);
    assert_eq!(rounds, round_metrics(&local.dir));
    // The worker's answers carried the cut's traffic.
    assert!(
        rounds
            .iter()
            .all(|r| r["split"]["messages"].as_u64() > Some(0)),
        "{rounds:?}"
    );
}

#[test]
fn a_worker_with_another_cookie_is_refused_and_a_short_cookie_is_an_error() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let ours = cookie_file(tmp.path(), "ours", "the-coordinators-secret-cookie");
    let theirs = cookie_file(tmp.path(), "theirs", "some-other-clusters-cookie!!");
    let w = worker(&theirs, 1);
    let err = match run_on(&["rounds=1"], &tmp.path().join("run"), &[&w], &ours) {
        Ok(_) => panic!("a worker with another cookie was used"),
        Err(e) => fedsim::fmt::chain(&e),
    };
    assert!(err.contains(&w.addr) && err.contains("cookie"), "{err}");
    let short = cookie_file(tmp.path(), "short", "secret");
    let err = Cookie::from_file(&short).unwrap_err().to_string();
    assert!(err.contains("at least 16"), "{err}");
}

#[test]
fn a_worker_killed_mid_run_retires_and_the_run_completes_on_the_others() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let cookie = cookie_file(tmp.path(), "cookie", "a-long-shared-secret-for-tests");
    let set = ["rounds=4", "strategy.fraction_fit=1.0"];
    let (doomed, kept) = (worker(&cookie, 2), worker(&cookie, 1));
    let addrs = vec![doomed.addr.clone(), kept.addr.clone()];
    // A lost worker is not tried again here: the test is about the run going on without it.
    let s = scenario(
        SMALL,
        &[
            set[0],
            set[1],
            &workers_override(&addrs, &cookie, serde_json::json!({})),
        ],
    )
    .unwrap();
    // Killed (SIGKILL) as soon as round 1 is recorded: no goodbye on the wire.
    let doomed = std::sync::Mutex::new(Some(doomed));
    let progress: fedsim::sim::ProgressFn = Box::new(move |p| {
        if let fedsim::sim::Progress::Round(r) = p {
            if r.round == 1 {
                drop(doomed.lock().unwrap().take());
            }
        }
    });
    let dir = tmp.path().join("run");
    let report = run_with(&s, &dir, Some(progress)).expect("the run goes on");
    assert_eq!(report.summary.rounds_completed, 4);
    let records = &report.summary.workers;
    assert_eq!(records.len(), 2);
    // The lost worker is known as lost once a job tried it; clients whose job it held
    // crashed with `worker_lost`, and no client failed otherwise.
    let causes = crash_causes(&dir);
    assert!(causes.iter().all(|c| c == "worker_lost"), "{causes:?}");
    let lost_jobs = causes.len();
    assert!(
        lost_jobs <= 2,
        "at most one job per slot of the lost worker: {lost_jobs}"
    );
    assert!(records[0].lost && !records[1].lost, "{records:?}");
    // A job taken after the loss went back to the queue; when none was in flight on the
    // killed worker, nothing was lost and the run is the local run, bit for bit.
    if lost_jobs == 0 {
        let local = run(&scenario(SMALL, &set).unwrap(), &tmp.path().join("local"));
        let adapter = |d: &Path| std::fs::read(d.join("adapter_model.safetensors")).unwrap();
        assert_eq!(adapter(&dir), adapter(&local.dir));
    }
}

#[test]
fn a_worker_that_prepared_other_inputs_is_refused_naming_the_difference() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let cookie = cookie_file(tmp.path(), "cookie", "a-long-shared-secret-for-tests");
    // The same relative data path, other records where the worker runs.
    let records = |tag: &str| {
        let words = [
            "orchard", "harvest", "ripe", "basket", "market", "season", "branch", "blossom",
            "cider", "juice", "peel", "seed", "grove", "ladder", "farmer", "weather",
        ];
        let r: Vec<serde_json::Value> = (0..120)
            .map(|i| {
                let w = |k: usize| words[(i * 7 + k * 3) % words.len()];
                serde_json::json!({
                    "instruction": format!("Question {i} about {tag} and the {}?", w(1)),
                    "input": format!("{} {} {}", w(2), w(3), i * 37 % 1000),
                    "output": format!("The {tag} {} was {} in {} number {}.", w(4), w(5), w(6), i * i),
                })
            })
            .collect();
        serde_json::to_string(&r).unwrap()
    };
    let (here, there) = (tmp.path().join("coordinator"), tmp.path().join("worker"));
    for (dir, tag) in [(&here, "apples"), (&there, "pears")] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("data.json"), records(tag)).unwrap();
        std::fs::write(
            dir.join("small.ron"),
            SMALL.replace(
                "source: Synthetic(records: 240)",
                "source: Alpaca(path: \"data.json\")",
            ),
        )
        .unwrap();
    }
    let addr = format!("127.0.0.1:{}", free_port());
    let _w = worker_in(&there, &addr, &cookie, (1, &[]));
    let out = Command::new(env!("CARGO_BIN_EXE_sim"))
        .args([
            "run",
            "small.ron",
            "--metrics-addr",
            "none",
            "--workers",
            &addr,
        ])
        .arg("--cookie-file")
        .arg(&cookie)
        .current_dir(&here)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the run used a worker with other data"
    );
    assert!(
        err.contains(&addr) && err.contains("prepared other inputs"),
        "{err}"
    );
}

#[test]
fn a_worker_holding_another_base_model_is_refused_naming_both_hashes() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let cookie = cookie_file(tmp.path(), "cookie", "a-long-shared-secret-for-tests");
    // The worker's cache holds SmolLM2 with one weight byte changed: it loads, but it is not
    // the coordinator's file.
    let real = crate::smollm2::gguf_path();
    let cache = tmp.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let copy = cache.join(real.file_name().unwrap());
    let mut bytes = std::fs::read(&real).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&copy, bytes).unwrap();
    let cache_arg = cache.to_str().unwrap();
    let w = worker_at(
        &format!("127.0.0.1:{}", free_port()),
        &cookie,
        1,
        &["--cache", cache_arg],
    );
    let custom = &SMALL[SMALL.find("model:").unwrap()..SMALL.find("lora:").unwrap()];
    let file = tmp.path().join("real.ron");
    let text = SMALL.replace(
        custom,
        "model: (source: Pretrained(\"smollm2-135m-instruct\")),\n    ",
    );
    std::fs::write(&file, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sim"))
        .arg("run")
        .arg(&file)
        .args(["--metrics-addr", "none", "--set", "rounds=1", "--out"])
        .arg(tmp.path().join("run"))
        .args(["--workers", &w.addr, "--cookie-file"])
        .arg(&cookie)
        .current_dir(crate::util::root())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the run used a worker with another base"
    );
    assert!(
        err.contains(&w.addr) && err.contains("holds another base model"),
        "{err}"
    );
    // A cache that is not a directory is refused before the worker starts.
    let out = Command::new(env!("CARGO_BIN_EXE_sim"))
        .args(["worker", "--cookie-file"])
        .arg(&cookie)
        .args(["--cache", "/nonexistent/models"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("--cache"), "{err}");
}

#[test]
fn synthetic_jobs_over_a_worker_give_the_local_rounds() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let cookie = cookie_file(tmp.path(), "cookie", "a-long-shared-secret-for-tests");
    let w = worker(&cookie, 1);
    // The synthetic trainer reports no loss: its answers are not malformed for that.
    let set = [
        "trainer=Synthetic(params: 1000)",
        "data.canaries=0",
        "clients.count=50",
        "strategy.fraction_fit=0.2",
        "rounds=2",
    ];
    let local = run(&scenario(SMALL, &set).unwrap(), &tmp.path().join("local"));
    let mut remote: Vec<&str> = set.to_vec();
    remote.push("slots.count=0");
    let dir = tmp.path().join("remote");
    let report = run_on(&remote, &dir, &[&w], &cookie).expect("the run completes");
    assert_eq!(
        report.summary.workers[0].jobs, 20,
        "{:?}",
        report.summary.workers
    );
    assert!(crash_causes(&dir).is_empty());
    assert_eq!(round_metrics(&dir), round_metrics(&local.dir));
}

#[test]
fn malformed_worker_answers_are_errors_never_panics() {
    use fedsim::cluster::coordinator::{read_trained, TrainAnswer};
    use fedsim::cluster::{F32s, JobRes};
    let layout = std::sync::Arc::new(fedsim::model::AdapterLayout::flat(6));
    let answer = |values: usize, loss: f64, secs: f64| JobRes::Trained {
        update: F32s(vec![0.5; values]),
        train_loss: loss,
        steps: 3,
        tokens: 12,
        host_seconds: secs,
        split: None,
    };
    let malformed =
        |res: JobRes, loss_expected: bool| match read_trained(res, &layout, loss_expected) {
            TrainAnswer::Malformed(why) => why,
            other => panic!("accepted: {other:?}"),
        };
    assert!(matches!(
        read_trained(answer(6, 1.5, 0.2), &layout, true),
        TrainAnswer::Trained(_)
    ));
    // The synthetic trainer reports no loss (NaN); a LoRA worker must.
    assert!(matches!(
        read_trained(answer(6, f64::NAN, 0.2), &layout, false),
        TrainAnswer::Trained(_)
    ));
    assert!(malformed(answer(6, f64::NAN, 0.2), true).contains("loss"));
    assert!(malformed(answer(6, f64::INFINITY, 0.2), false).contains("loss"));
    assert!(malformed(answer(5, 1.5, 0.2), true).contains("5 values"));
    assert!(malformed(answer(6, 1.5, -1.0), true).contains("host seconds"));
    assert!(malformed(answer(6, 1.5, f64::NAN), true).contains("host seconds"));
    let eval = JobRes::Evaluated(fedsim::messages::EvaluateRes::none(1));
    assert!(malformed(eval, true).contains("evaluation"));
    assert!(matches!(
        read_trained(JobRes::Failed("diverged".into()), &layout, true),
        TrainAnswer::Failed(_)
    ));
    // Bytes that are not an answer, or f32 bytes cut short, fail to decode: errors, as data.
    for garbage in [&b"\xff\x00garbage"[..], &[0x81, 0xa7][..], &[][..]] {
        assert!(rmp_serde::from_slice::<JobRes>(garbage).is_err());
    }
    let mut cut = rmp_serde::to_vec(&answer(6, 1.5, 0.2)).unwrap();
    cut.truncate(cut.len() / 2);
    assert!(rmp_serde::from_slice::<JobRes>(&cut).is_err());
}
