//! Signals and output directories, on a real `sim` child process: SIGTERM finishes the round,
//! a second signal abandons it at once, a signal ends `--linger` at once, SIGKILL leaves a
//! directory that says it is incomplete; `--out` never mixes a run with foreign files.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fedsim::report::{RunStatus, Summary};

use crate::util::{root, run_args, small_file};

/// A `sim` child whose stderr is collected as it comes.
struct Sim {
    child: Child,
    stderr: Arc<Mutex<String>>,
}

impl Sim {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sim"))
            .args(args)
            .current_dir(root())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (pipe, sink) = (child.stderr.take().unwrap(), stderr.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Self { child, stderr }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Wait until `ready` holds (panics after `limit`).
    fn wait_until(&self, limit: Duration, what: &str, ready: impl Fn() -> bool) {
        let start = Instant::now();
        while !ready() {
            assert!(
                start.elapsed() < limit,
                "timed out waiting for {what}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait for the exit; returns (success, seconds it took).
    fn wait_exit(&mut self, limit: Duration) -> (bool, f64) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.success(), start.elapsed().as_secs_f64());
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!(
                    "sim did not exit within {limit:?}; stderr:\n{}",
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn rounds_logged(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("rounds.jsonl")).map_or(0, |t| t.lines().count())
}

fn setup() -> (tempfile::TempDir, String, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let scen = small_file(dir.path()).to_str().unwrap().to_string();
    let out = dir.path().join("run");
    (dir, scen, out)
}

/// Start a long run, wait for round 1, send `sig`: the run finishes the round and exits 0.
fn stop_with(sig: &str) {
    let (_tmp, scen, out) = setup();
    let mut sim = Sim::start(&run_args(
        &scen,
        out.to_str().unwrap(),
        &["--set", "rounds=500"],
    ));
    sim.wait_until(Duration::from_secs(120), "round 1", || {
        rounds_logged(&out) >= 1
    });
    sim.signal(sig);
    let (ok, _) = sim.wait_exit(Duration::from_secs(60));
    assert!(ok, "{}", sim.stderr());
    let s = Summary::read(&out).unwrap();
    assert_eq!(s.status, RunStatus::Interrupted);
    assert!(s.rounds_completed >= 1 && s.rounds_completed < 500);
    assert_eq!(s.rounds_completed, rounds_logged(&out));
    assert!(out.join("adapter_model.safetensors").is_file());
    assert!(out.join("metrics.om").is_file());
    assert!(
        sim.stderr().contains(&format!("SIG{sig}")),
        "{}",
        sim.stderr()
    );
}

#[test]
fn sigterm_finishes_the_round_and_writes_the_results() {
    stop_with("TERM");
}

#[test]
fn sighup_is_a_stop_request_too() {
    stop_with("HUP");
}

#[test]
fn a_second_signal_abandons_the_round_within_a_second() {
    let (_tmp, scen, out) = setup();
    // Rounds of thousands of steps: finishing one would take far longer than a second.
    let mut sim = Sim::start(&run_args(
        &scen,
        out.to_str().unwrap(),
        &[
            "--set",
            "rounds=3",
            "--set",
            "train.local_steps=Some(100000)",
        ],
    ));
    sim.wait_until(Duration::from_secs(120), "the run directory", || {
        Summary::read(&out).is_ok()
    });
    std::thread::sleep(Duration::from_millis(500));
    sim.signal("TERM");
    std::thread::sleep(Duration::from_millis(200));
    sim.signal("INT");
    let (ok, secs) = sim.wait_exit(Duration::from_secs(30));
    assert!(ok, "{}", sim.stderr());
    assert!(secs < 1.0, "took {secs:.2} s after the second signal");
    let s = Summary::read(&out).unwrap();
    assert_eq!(s.status, RunStatus::Interrupted);
    assert_eq!(s.rounds_completed, 0);
    assert!(out.join("adapter_model.safetensors").is_file());
    assert!(sim.stderr().contains("abandoning"), "{}", sim.stderr());
}

#[test]
fn a_signal_ends_linger_at_once_and_port_zero_prints_the_bound_port() {
    let (_tmp, scen, out) = setup();
    let mut sim = Sim::start(&[
        "run",
        &scen,
        "--out",
        out.to_str().unwrap(),
        "--set",
        "rounds=1",
        "--metrics-addr",
        "127.0.0.1:0",
        "--linger",
        "600",
    ]);
    sim.wait_until(Duration::from_secs(120), "linger", || {
        sim.stderr().contains("serving the final metrics")
    });
    let err = sim.stderr();
    let port: u16 = err
        .split("metrics: http://127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no bound port printed: {err}"));
    assert_ne!(port, 0);
    // The printed port really serves the metrics.
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    use std::io::{Read, Write};
    write!(conn, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    conn.read_to_string(&mut body).unwrap();
    assert!(body.contains("fedsim_round"), "{body}");
    sim.signal("TERM");
    let (ok, secs) = sim.wait_exit(Duration::from_secs(30));
    assert!(ok && secs < 1.0, "took {secs:.2} s");
    assert_eq!(Summary::read(&out).unwrap().status, RunStatus::Completed);
}

#[test]
fn sigkill_leaves_a_directory_that_compare_reports_as_incomplete() {
    let (_tmp, scen, out) = setup();
    let mut sim = Sim::start(&run_args(
        &scen,
        out.to_str().unwrap(),
        &["--set", "rounds=500"],
    ));
    sim.wait_until(Duration::from_secs(120), "round 1", || {
        rounds_logged(&out) >= 1
    });
    sim.signal("KILL");
    let (ok, _) = sim.wait_exit(Duration::from_secs(30));
    assert!(!ok);
    let s = Summary::read(&out).unwrap();
    assert_eq!(s.status, RunStatus::Running);
    assert!(s.rounds_completed >= 1);
    let res = Command::new(env!("CARGO_BIN_EXE_sim"))
        .args(["compare", out.to_str().unwrap()])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&res.stdout);
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert!(table.contains("incomplete"), "{table}");
    // Another scenario may not take the unfinished directory over: nothing is deleted.
    let before = rounds_logged(&out);
    let (ok, err) = self::sim(&run_args(
        &scen,
        out.to_str().unwrap(),
        &["--set", "rounds=1", "-q"],
    ));
    assert!(
        !ok && err.contains("unfinished run of another scenario"),
        "{err}"
    );
    assert_eq!(rounds_logged(&out), before, "nothing deleted");
    // The same scenario does not start over on it (its rounds would be lost): it says how to
    // continue, and --resume does.
    let (ok, err) = self::sim(&run_args(
        &scen,
        out.to_str().unwrap(),
        &["--set", "rounds=500", "-q"],
    ));
    assert!(!ok && err.contains("sim run --resume"), "{err}");
    assert_eq!(rounds_logged(&out), before, "nothing deleted");
    let mut again = Sim::start(&[
        "run",
        "--resume",
        out.to_str().unwrap(),
        "--metrics-addr",
        "none",
        "--pace",
        "60",
    ]);
    again.wait_until(Duration::from_secs(150), "a resumed round", || {
        rounds_logged(&out) > before
    });
    std::thread::sleep(Duration::from_millis(300));
    again.signal("INT");
    let (ok, secs) = again.wait_exit(Duration::from_secs(30));
    assert!(ok && secs < 1.0, "took {secs:.2} s: {}", again.stderr());
    assert!(again.stderr().contains("resuming"), "{}", again.stderr());
    let s = Summary::read(&out).unwrap();
    assert_eq!(s.status, RunStatus::Interrupted);
    assert_eq!(s.rounds_completed, rounds_logged(&out));
}

fn sim(args: &[&str]) -> (bool, String) {
    let (ok, _, err) = crate::util::sim(args);
    (ok, err)
}

#[test]
fn out_never_mixes_a_run_with_foreign_files() {
    let (tmp, scen, _) = setup();
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
    let (ok, err) = sim(&run_args(&scen, foreign.to_str().unwrap(), &[]));
    assert!(
        !ok && err.contains("fedsim did not create it") && err.contains("notes.txt"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(&foreign).unwrap().count(),
        1,
        "nothing written"
    );
    let file = tmp.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let (ok, err) = sim(&run_args(&scen, file.to_str().unwrap(), &[]));
    assert!(!ok && err.contains("not a directory"), "{err}");
}

#[test]
fn os_errors_are_printed_once_and_bad_durations_are_refused() {
    let (ok, err) = sim(&["validate", "scenarios"]);
    assert!(!ok);
    assert_eq!(err.matches("os error").count(), 1, "{err}");
    let (tmp, scen, out) = setup();
    let _ = tmp;
    for (flag, value) in [
        ("--linger", "1e300"),
        ("--linger", "-1"),
        ("--pace", "1e300"),
        ("--linger", "NaN"),
    ] {
        let arg = format!("{flag}={value}");
        let (ok, err) = sim(&run_args(&scen, out.to_str().unwrap(), &[&arg]));
        assert!(
            !ok && err.contains(flag) && !err.contains("panicked"),
            "{flag} {value}: {err}"
        );
        assert!(err.len() < 300, "{err}");
    }
}

#[test]
fn a_signal_ends_a_pace_wait_at_once() {
    let (_tmp, scen, out) = setup();
    // Each round waits until 60 s have passed; a signal after round 1 must not wait for that.
    let mut sim = Sim::start(&run_args(
        &scen,
        out.to_str().unwrap(),
        &["--set", "rounds=3", "--pace", "60"],
    ));
    sim.wait_until(Duration::from_secs(120), "round 1", || {
        rounds_logged(&out) >= 1
    });
    std::thread::sleep(Duration::from_millis(300));
    sim.signal("INT");
    let (ok, secs) = sim.wait_exit(Duration::from_secs(30));
    assert!(ok && secs < 1.0, "took {secs:.2} s: {}", sim.stderr());
    let s = Summary::read(&out).unwrap();
    assert_eq!((s.status, s.rounds_completed), (RunStatus::Interrupted, 1));
}

#[test]
fn a_second_run_on_the_same_out_is_refused_and_the_first_keeps_its_files() {
    let (_tmp, scen, out) = setup();
    let mut first = Sim::start(&run_args(
        &scen,
        out.to_str().unwrap(),
        &["--set", "rounds=500"],
    ));
    first.wait_until(Duration::from_secs(120), "round 1", || {
        rounds_logged(&out) >= 1
    });
    let (ok, err) = sim(&run_args(
        &scen,
        out.to_str().unwrap(),
        &["--set", "rounds=500"],
    ));
    let pid = first.child.id().to_string();
    assert!(
        !ok && err.contains("is in use by fedsim process") && err.contains(&pid),
        "{err}"
    );
    first.signal("TERM");
    let (ok, _) = first.wait_exit(Duration::from_secs(60));
    assert!(ok, "{}", first.stderr());
    let s = Summary::read(&out).unwrap();
    assert_eq!(s.status, RunStatus::Interrupted);
    assert_eq!(s.rounds_completed, rounds_logged(&out));
}

/// Start a run whose preparation is long, wait for `stage`, send SIGTERM: the run stops within
/// a few seconds, says nothing was written, and leaves no directory.
fn stop_during(stage: &str, records: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let scen = tmp.path().join("big.ron");
    std::fs::write(&scen, big_scenario(records)).unwrap();
    let out = tmp.path().join("run");
    let mut sim = Sim::start(&run_args(
        scen.to_str().unwrap(),
        out.to_str().unwrap(),
        &[],
    ));
    sim.wait_until(Duration::from_secs(300), stage, || {
        sim.stderr().contains(stage)
    });
    sim.signal("TERM");
    let (ok, secs) = sim.wait_exit(Duration::from_secs(60));
    assert!(!ok, "{}", sim.stderr());
    assert!(secs < 3.0, "{stage}: the stop took {secs:.1} s");
    assert!(
        sim.stderr().contains("nothing was written"),
        "{}",
        sim.stderr()
    );
    assert!(!out.exists(), "no directory is left behind");
}

fn big_scenario(records: usize) -> String {
    format!(
        r#"(name: "big", seed: 7, rounds: 2, model: (source: Tiny(vocab_size: 400)),
           data: (source: Synthetic(records: {records}), eval_fraction: 0.01, max_seq_len: 64),
           clients: (count: 4),
           train: (local_steps: Some(1), batch_size: 2, lr_max: 5e-3, lr_min: 1e-3))"#
    )
}

/// In the process, deterministically: a stop requested at a stage's first report ends
/// preparation before that stage's next report, for every stage that reports as it goes.
#[test]
fn preparation_hears_a_stop_at_every_stage() {
    let s = fedsim::Scenario::from_ron(&big_scenario(60_000), Path::new("big.ron"), &[]).unwrap();
    for stage in ["generating records", "partitioning", "tokenising"] {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("run");
        let (trigger, shutdown) = fedsim::Shutdown::channel();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let progress: fedsim::sim::ProgressFn = Box::new(move |p| {
            if let fedsim::sim::Progress::Stage {
                stage: st, done, ..
            } = p
            {
                log.lock().unwrap().push((st.to_string(), done));
                if st == stage {
                    trigger.request(fedsim::StopLevel::FinishRound);
                }
            }
        });
        let err = crate::util::run_full(&s, &out, shutdown, None, Some(progress)).unwrap_err();
        assert!(
            matches!(err, fedsim::SimError::InterruptedBeforeStart),
            "{stage}: {err}"
        );
        let seen = seen.lock().unwrap();
        let last = seen.last().unwrap();
        assert_eq!(
            last.0, stage,
            "{stage}: reports went on after the stop: {seen:?}"
        );
        assert_eq!(
            seen.iter().filter(|(st, _)| st == stage).count(),
            1,
            "{stage}: {seen:?}"
        );
        assert!(!out.exists(), "{stage}: no directory is left behind");
    }
}

#[test]
fn a_stop_during_tokenising_is_heard_within_seconds() {
    stop_during("tokenising", 400_000);
}

#[test]
fn sim_attack_hears_sigterm_between_batches_and_writes_nothing() {
    let (_tmp, scen, out) = setup();
    let (ok, err) = sim(&run_args(
        &scen,
        out.to_str().unwrap(),
        &["--set", "rounds=1", "-q"],
    ));
    assert!(ok, "{err}");
    let mut attack = Sim::start(&[
        "attack",
        out.to_str().unwrap(),
        "--candidates",
        "200000",
        "--batch",
        "8",
    ]);
    attack.wait_until(Duration::from_secs(120), "canary scoring", || {
        attack.stderr().contains("canary exposure")
    });
    attack.signal("TERM");
    let (ok, secs) = attack.wait_exit(Duration::from_secs(30));
    let err = attack.stderr();
    assert!(!ok && secs < 5.0, "took {secs:.2} s: {err}");
    assert!(
        err.contains("SIGTERM: stopping") && err.contains("attack.json was not written"),
        "{err}"
    );
    assert!(!out.join("attack.json").exists());
}

#[test]
fn sim_sweep_hears_sigterm_mid_run_and_writes_the_table_of_what_ran() {
    let (tmp, scen, _) = setup();
    let out = tmp.path().join("sweep");
    let mut sweep = Sim::start(&[
        "sweep",
        &scen,
        "--vary",
        "seed=1,2",
        "--set",
        "rounds=500",
        "--out",
        out.to_str().unwrap(),
    ]);
    sweep.wait_until(Duration::from_secs(120), "the first run's round 1", || {
        std::fs::read_dir(&out)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| rounds_logged(&e.path()) >= 1)
    });
    sweep.signal("TERM");
    let (ok, secs) = sweep.wait_exit(Duration::from_secs(60));
    let err = sweep.stderr();
    assert!(ok && secs < 10.0, "took {secs:.2} s: {err}");
    assert!(err.contains("stopped after 1 of 2 runs"), "{err}");
    let table = std::fs::read_to_string(out.join("sweep.csv")).unwrap();
    assert_eq!(
        table.lines().count(),
        2,
        "header and the interrupted run:\n{table}"
    );
    assert!(table.contains("interrupted"), "{table}");
}

#[test]
fn sim_study_hears_sigterm_in_its_attack_stage() {
    let (tmp, _, _) = setup();
    let path = tmp.path().join("study.ron");
    std::fs::write(
        &path,
        format!(
            "(name: \"stop\", base: {}, arms: [(name: \"fed\", set: [\"rounds=1\"])], \
             attack: (members: 20, candidates: 200000, samples: 1, max_tokens: 8))",
            crate::util::SMALL.trim()
        ),
    )
    .unwrap();
    let out = tmp.path().join("study");
    let mut study = Sim::start(&[
        "study",
        path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    study.wait_until(Duration::from_secs(180), "canary scoring", || {
        study.stderr().contains("canary exposure")
    });
    study.signal("TERM");
    let (ok, secs) = study.wait_exit(Duration::from_secs(30));
    let err = study.stderr();
    assert!(!ok && secs < 5.0, "took {secs:.2} s: {err}");
    assert!(err.contains("attack.json was not written"), "{err}");
    assert!(!out.join("fed").join("attack.json").exists());
}
