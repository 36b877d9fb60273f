//! Helpers shared by the test modules.

use std::path::{Path, PathBuf};

use fedsim::{RunOptions, RunReport, Scenario};

/// A small scenario that trains in seconds: custom 2-layer model, 240 synthetic records.
pub const SMALL: &str = r#"(
    name: "small",
    seed: 7,
    rounds: 4,
    model: (source: Custom((
        hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2,
        num_attention_heads: 4, num_key_value_heads: 2, vocab_size: 400,
        rms_norm_eps: 1e-5, rope_theta: 10000.0, max_position_embeddings: 256,
        tie_word_embeddings: false,
    ))),
    lora: (r: 4, alpha: 8.0, dropout: 0.05,
           target_modules: ["q_proj", "v_proj", "o_proj", "down_proj"]),
    data: (source: Synthetic(records: 240), eval_fraction: 0.15, max_seq_len: 128,
           canaries: 2, canary_repeats: 3),
    partition: Iid,
    clients: (count: 4),
    strategy: (kind: FedAvg, fraction_fit: 0.5, min_fit_clients: 2, min_available_clients: 2),
    train: (local_steps: Some(8), batch_size: 4, lr_max: 5e-3, lr_min: 1e-3),
    slots: (count: 1),
)"#;

/// Client-side DP with z = 1, C = 0.5, δ = 1e-5 (as a `--set` override).
pub const DP: &str =
    r#"dp={"mechanism":{"ClientSideFixed":{"clip_norm":0.5,"noise_multiplier":1.0}},"delta":1e-5}"#;

/// `rounds.jsonl` of a run directory with the host-timing keys removed (everything else is
/// deterministic).
pub fn round_metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("rounds.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("wall_seconds");
            // Estimated from host timing, like wall_seconds.
            o.remove("host_seconds_saved");
            v
        })
        .collect()
}

/// Write the SMALL scenario into `dir` and return its path.
pub fn small_file(dir: &Path) -> PathBuf {
    let p = dir.join("small.ron");
    std::fs::write(&p, SMALL).unwrap();
    p
}

/// The crate root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared` beside the crate, as CI lays it out.
pub fn shared(rel: &str) -> Option<PathBuf> {
    let p = root().join("..").join("shared").join(rel);
    if p.exists() {
        Some(p)
    } else if std::env::var_os("CI").is_some() {
        panic!(
            "{} is missing: CI must have ../shared beside the clone",
            p.display()
        );
    } else {
        None
    }
}

/// Parse `text` with overrides.
pub fn scenario(text: &str, set: &[&str]) -> Result<Scenario, fedsim::ScenarioError> {
    let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
    Scenario::from_ron(text, Path::new("test.ron"), &set)
}

/// The error `SMALL` with `set` applied is refused with, as printed.
pub fn scenario_err(set: &[&str]) -> String {
    match scenario(SMALL, set) {
        Ok(_) => panic!("{set:?} was accepted"),
        Err(e) => e.to_string(),
    }
}

/// Run a scenario to the end into `out`.
pub fn run(s: &Scenario, out: &Path) -> RunReport {
    run_until(s, out, fedsim::Shutdown::never())
}

/// Run a scenario into `out` until `shutdown` says stop.
pub fn run_until(s: &Scenario, out: &Path, shutdown: fedsim::Shutdown) -> RunReport {
    run_full(s, out, shutdown, None, None).expect("run succeeds")
}

/// Run a scenario into `out`, feeding `telemetry` and `progress`.
pub fn run_full(
    s: &Scenario,
    out: &Path,
    shutdown: fedsim::Shutdown,
    telemetry: Option<fedsim::telemetry::Telemetry>,
    progress: Option<fedsim::sim::ProgressFn>,
) -> Result<RunReport, fedsim::SimError> {
    let opts = RunOptions {
        out: Some(out.to_path_buf()),
        progress,
        telemetry,
        pace: None,
    };
    runtime().block_on(fedsim::run(s, opts, shutdown))
}

/// Resume the stopped run in `dir` until `shutdown`, feeding `progress`.
pub fn resume_full(
    dir: &Path,
    shutdown: fedsim::Shutdown,
    progress: Option<fedsim::sim::ProgressFn>,
) -> Result<RunReport, fedsim::SimError> {
    let opts = RunOptions {
        progress,
        ..Default::default()
    };
    runtime().block_on(fedsim::sim::resume(dir, opts, shutdown))
}

/// The async runtime the library's runs are driven on in tests (as `sim` does: 2 workers).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A shutdown that asks for `level` when round `round` has been recorded, and the progress
/// callback that triggers it.
pub fn stop_after_round(
    round: usize,
    level: fedsim::StopLevel,
) -> (fedsim::Shutdown, fedsim::sim::ProgressFn) {
    let (trigger, shutdown) = fedsim::Shutdown::channel();
    let progress: fedsim::sim::ProgressFn = Box::new(move |p| {
        if let fedsim::sim::Progress::Round(r) = p {
            if r.round == round {
                trigger.request(level);
            }
        }
    });
    (shutdown, progress)
}

/// Run the `sim` binary in the crate root: (success, stdout, stderr).
pub fn sim(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sim"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// `d`'s shards cover every training record exactly once.
pub fn assert_disjoint_cover(d: &fedsim::data::FederatedData) {
    let mut all: Vec<usize> = d.shards.concat();
    all.sort();
    all.dedup();
    assert_eq!(
        all.len(),
        d.train.len(),
        "every record in exactly one shard"
    );
    assert_eq!(d.shards.iter().map(Vec::len).sum::<usize>(), d.train.len());
}

/// `sim run SCENARIO --out OUT --metrics-addr none EXTRA...`.
pub fn run_args<'a>(scen: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["run", scen, "--out", out, "--metrics-addr", "none"];
    v.extend_from_slice(extra);
    v
}

/// A labelled CSV of `n` short news-like sentences (ids from `first`), the label following a
/// word in the text so a model can learn it.
pub fn labelled_csv(dir: &Path, name: &str, first: usize, n: usize) -> PathBuf {
    let words = [("fell", 0), ("held", 2), ("rose", 1)];
    let mut text = String::from("text,label\n");
    for i in first..first + n {
        let (w, l) = words[i % 3];
        text.push_str(&format!("\"Shares of firm {i} {w}, analysts said\",{l}\n"));
    }
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// `--set` overrides giving [`SMALL`] a labelled training file (240 rows) and a task scored
/// every 2 rounds on a separate 45-item test file (subset 15, target accuracy 0.3), both
/// written into `dir`.
pub fn task_overrides(dir: &Path) -> [String; 2] {
    let train = labelled_csv(dir, "train.csv", 0, 240);
    let test = labelled_csv(dir, "test.csv", 1000, 45);
    let labels = r#"{"0": "negative", "1": "positive", "2": "neutral"}"#;
    [
        format!(
            r#"data.source=Classification(path: "{}", format: Csv, text: "text", label: "label", labels: {labels})"#,
            train.display()
        ),
        format!(
            r#"eval=Some((task: Classification(path: "{}", format: Csv, text: "text", label: "label", labels: {labels}), every: 2, subset: 15, target_accuracy: Some(0.3)))"#,
            test.display()
        ),
    ]
}
