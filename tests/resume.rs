//! `sim run --resume`: a run stopped after round k — by a signal, by SIGKILL at any moment —
//! and resumed ends bit-identical to the same run never stopped: the adapter, the server
//! optimiser's state and every deterministic number of `rounds.jsonl`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fedsim::report::{RunStatus, Summary};
use fedsim::{Shutdown, StopLevel};

use crate::util::{
    resume_full as resume, round_metrics, run, run_full, scenario, sim, stop_after_round, DP, SMALL,
};

/// The files a finished run's adapter and optimiser live in, byte for byte.
fn state_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    ["adapter_model.safetensors", "server_state.safetensors"]
        .iter()
        .filter_map(|n| Some((n.to_string(), std::fs::read(dir.join(n)).ok()?)))
        .collect()
}

/// The same run, whole and stopped-then-resumed, agree to the bit.
fn assert_same_run(whole: &Path, resumed: &Path) {
    assert_eq!(
        round_metrics(whole),
        round_metrics(resumed),
        "rounds.jsonl identical"
    );
    let (a, b) = (state_files(whole), state_files(resumed));
    assert!(!a.is_empty(), "the run saved an adapter");
    assert_eq!(a.len(), b.len(), "the same files");
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(
            x == y,
            "{name} differs between the whole and the resumed run"
        );
    }
    let clients = |d: &Path| std::fs::read_to_string(d.join("clients.jsonl")).unwrap();
    assert_eq!(clients(whole), clients(resumed), "clients.jsonl identical");
    let s = Summary::read(resumed).unwrap();
    assert_eq!(s.status, RunStatus::Completed);
    let w = Summary::read(whole).unwrap();
    assert_eq!(s.rounds_completed, w.rounds_completed);
    assert_eq!(s.final_eval_loss.to_bits(), w.final_eval_loss.to_bits());
    assert_eq!(s.bytes_up_total, w.bytes_up_total);
    assert_eq!(s.dp.map(|d| d.epsilon), w.dp.map(|d| d.epsilon));
    assert!(
        !resumed.join(fedsim::report::CHECKPOINT).exists(),
        "a completed run keeps no checkpoint"
    );
}

/// Stop `set`'s run after round `k` by a stop request, resume it, compare with the whole run.
fn stop_resume_compare(set: &[&str], k: usize) {
    let s = scenario(SMALL, set).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (whole, parts) = (tmp.path().join("whole"), tmp.path().join("parts"));
    run(&s, &whole);
    let (stop, progress) = stop_after_round(k, StopLevel::FinishRound);
    let first = run_full(&s, &parts, stop, None, Some(progress)).unwrap();
    assert_eq!(first.summary.status, RunStatus::Interrupted);
    assert_eq!(first.rounds.len(), k);
    let report = resume(&parts, Shutdown::never(), None).unwrap();
    assert_eq!(report.rounds.len(), s.rounds, "the outcome has every round");
    assert_same_run(&whole, &parts);
    // metrics.om counts every round, those before the stop included.
    let om = std::fs::read_to_string(parts.join("metrics.om")).unwrap();
    assert!(
        om.contains(&format!("fedsim_rounds_completed_total {}", s.rounds))
            || om.contains(&format!("fedsim_round {}", s.rounds)),
        "metrics.om covers all rounds:\n{om}"
    );
}

#[test]
fn a_run_stopped_after_round_k_resumes_bit_identical() {
    stop_resume_compare(&["rounds=4"], 2);
}

#[test]
fn a_run_scoring_a_task_resumes_with_its_pretrained_control_and_figures() {
    let tmp = tempfile::tempdir().unwrap();
    let [source, eval] = crate::util::task_overrides(tmp.path());
    stop_resume_compare(&[&source, &eval, "data.canaries=0"], 1);
    // stop_resume_compare leaves nothing behind; compare the task figures on a fresh pair.
    let s = scenario(SMALL, &[&source, &eval, "data.canaries=0"]).unwrap();
    let (whole, parts) = (tmp.path().join("w"), tmp.path().join("p"));
    run(&s, &whole);
    let (stop, progress) = stop_after_round(3, StopLevel::FinishRound);
    run_full(&s, &parts, stop, None, Some(progress)).unwrap();
    resume(&parts, Shutdown::never(), None).unwrap();
    let task = |d: &Path| serde_json::to_string(&Summary::read(d).unwrap().task_eval).unwrap();
    assert!(task(&whole).contains("pretrained_accuracy"));
    assert_eq!(task(&whole), task(&parts));
}

#[test]
fn dp_and_a_server_optimiser_resume_bit_identical() {
    // Ledger (ε composition, replayed) and FedAdam's moments (saved exactly).
    stop_resume_compare(
        &[
            "rounds=4",
            DP,
            "strategy.kind=FedAdam(server_lr: 0.01)",
            "dp.max_epsilon=None",
        ],
        1,
    );
}

#[test]
fn a_hierarchical_run_with_edge_noise_resumes_bit_identical() {
    // Edge rounds, edge faults and edge-level DP: nothing of the hierarchy outlives a round.
    stop_resume_compare(
        &[
            "rounds=4",
            "clients.count=6",
            DP,
            "dp.sampling=Fixed",
            "dp.max_epsilon=None",
            "topology=Hierarchical(edges: 2, assignment: Seeded, edge_rounds: 2, wan: (up_mbps: \
             5.0, down_mbps: 10.0, latency_s: 0.1), edge_availability: 0.8, noise_at: Edges)",
        ],
        2,
    );
}

#[test]
fn error_feedback_residuals_resume_bit_identical() {
    // Each client's residual is saved with the checkpoint: a resumed client adds what its
    // earlier rounds did not send, as the uninterrupted run does.
    stop_resume_compare(
        &[
            "rounds=4",
            "strategy.fraction_fit=1.0",
            "compression=TopK(fraction: 0.02, error_feedback: true)",
        ],
        2,
    );
}

#[test]
fn asynchronous_aggregation_resumes_with_its_clients_in_flight() {
    // Clients still training at the stop train again from the model they started from.
    stop_resume_compare(
        &[
            "rounds=5",
            "clients.count=6",
            "system.stragglers=Async(buffer: 2, concurrency: 3)",
            "system.profiles=Drawn(flops: LogNormal(median: 2e9, sigma: 1.5), up_mbps: \
             LogNormal(median: 1.0, sigma: 1.0), down_mbps: LogNormal(median: 20.0, sigma: 0.5), \
             latency_s: Uniform(low: 0.02, high: 0.3))",
        ],
        2,
    );
}

#[test]
fn crashed_clients_stay_dead_after_a_resume() {
    stop_resume_compare(
        &[
            "rounds=4",
            "system.inject_panic=[1]",
            "strategy.fraction_fit=1.0",
            "system.crash_probability=0.2",
        ],
        2,
    );
}

/// The scenario file for the process tests, with `rounds`.
fn small_rounds(dir: &Path, rounds: usize) -> PathBuf {
    let p = dir.join("small.ron");
    std::fs::write(&p, SMALL.replace("rounds: 4", &format!("rounds: {rounds}"))).unwrap();
    p
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
}

#[test]
fn a_run_killed_at_any_moment_resumes_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let scen = small_rounds(tmp.path(), 6);
    let scen = scen.to_str().unwrap();
    let whole = tmp.path().join("whole");
    let (ok, _, err) = sim(&crate::util::run_args(scen, whole.to_str().unwrap(), &[]));
    assert!(ok, "{err}");
    // Killed at a few moments: after round 1 is recorded, and a little later (mid-round or
    // between the round log and the checkpoint, wherever the kill falls).
    for (i, extra_ms) in [0u64, 150].into_iter().enumerate() {
        let dir = tmp.path().join(format!("killed{i}"));
        let args = crate::util::run_args(scen, dir.to_str().unwrap(), &[]);
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sim"))
            .args(&args)
            .current_dir(crate::util::root())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while lines(&dir.join("rounds.jsonl")) < 1 + i {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "no round recorded"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(extra_ms));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        assert_eq!(Summary::read(&dir).unwrap().status, RunStatus::Running);
        let (ok, _, err) = sim(&[
            "run",
            "--resume",
            dir.to_str().unwrap(),
            "--metrics-addr",
            "none",
        ]);
        assert!(ok, "resume after SIGKILL {i}: {err}");
        assert!(err.contains("resuming"), "{err}");
        assert_same_run(&whole, &dir);
    }
}

#[test]
fn what_cannot_be_resumed_is_refused_and_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let scen = small_rounds(tmp.path(), 2);
    let scen = scen.to_str().unwrap();
    let done = tmp.path().join("done");
    assert!(sim(&crate::util::run_args(scen, done.to_str().unwrap(), &[])).0);
    let before = std::fs::read(done.join("rounds.jsonl")).unwrap();
    let (ok, _, err) = sim(&["run", "--resume", done.to_str().unwrap()]);
    assert!(
        !ok && err.contains("status completed") && err.contains("nothing to resume"),
        "{err}"
    );
    assert_eq!(std::fs::read(done.join("rounds.jsonl")).unwrap(), before);
    // Not a run directory.
    let (ok, _, err) = sim(&["run", "--resume", tmp.path().to_str().unwrap()]);
    assert!(!ok && err.contains("no scenario.ron"), "{err}");
    // --resume takes no scenario, --set or --out.
    let (ok, _, err) = sim(&["run", scen, "--resume", done.to_str().unwrap()]);
    assert!(!ok && err.contains("cannot be used with"), "{err}");

    // An interrupted run: `--out` on it refuses and says how to continue; an edited
    // scenario.ron is refused by --resume.
    let s = scenario(SMALL, &["rounds=3"]).unwrap();
    let part = tmp.path().join("part");
    let (stop, progress) = stop_after_round(1, StopLevel::FinishRound);
    run_full(&s, &part, stop, None, Some(progress)).unwrap();
    let (ok, _, err) = sim(&crate::util::run_args(scen, part.to_str().unwrap(), &[]));
    assert!(!ok && err.contains("sim run --resume"), "{err}");
    let recorded = std::fs::read_to_string(part.join("scenario.ron")).unwrap();
    std::fs::write(
        part.join("scenario.ron"),
        recorded.replace("seed: 7", "seed: 8"),
    )
    .unwrap();
    let (ok, _, err) = sim(&["run", "--resume", part.to_str().unwrap()]);
    assert!(!ok && err.contains("scenario.ron was changed"), "{err}");
    std::fs::write(part.join("scenario.ron"), &recorded).unwrap();
    // Restored, it resumes (and can be stopped and resumed again).
    let (stop, progress) = stop_after_round(2, StopLevel::FinishRound);
    let r = resume(&part, stop, Some(progress)).unwrap();
    assert_eq!(r.summary.status, RunStatus::Interrupted);
    assert_eq!(r.rounds.len(), 2);
    let r = resume(&part, Shutdown::never(), None).unwrap();
    assert_eq!(r.summary.status, RunStatus::Completed);
    assert_eq!(r.rounds.len(), 3);
}

#[test]
fn a_run_stopped_before_its_first_checkpoint_starts_again_in_place() {
    // What a kill between round 1's log line and its checkpoint leaves.
    let s = scenario(SMALL, &["rounds=2"]).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let (whole, part) = (tmp.path().join("whole"), tmp.path().join("part"));
    run(&s, &whole);
    let (stop, progress) = stop_after_round(1, StopLevel::FinishRound);
    run_full(&s, &part, stop, None, Some(progress)).unwrap();
    std::fs::remove_file(part.join(fedsim::report::CHECKPOINT)).unwrap();
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    let progress: fedsim::sim::ProgressFn = Box::new(move |p| {
        if let fedsim::sim::Progress::Setup(line) = p {
            sink.lock().unwrap().push(line.to_string());
        }
    });
    let report = resume(&part, Shutdown::never(), Some(progress)).unwrap();
    let said = lines.lock().unwrap().clone();
    assert!(said.iter().any(|l| l.contains("from round 1")), "{said:?}");
    assert_eq!(report.rounds.len(), 2);
    assert_same_run(&whole, &part);
}
