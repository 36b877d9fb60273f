//! Task accuracy during a run (scenario `eval`) on a small random model: scored every k
//! rounds, the same whatever the slot count, summarised with time-to-accuracy; a test split
//! that overlaps the training data is refused.

use std::path::{Path, PathBuf};

use fedsim::eval::progress::{time_to_accuracy, RoundPoint};

use crate::util::{labelled_csv, round_metrics, run, scenario, task_overrides, SMALL};

fn task_scenario(dir: &Path, set: &[&str]) -> fedsim::Scenario {
    let [source, eval] = task_overrides(dir);
    let mut all = vec![source.as_str(), eval.as_str(), "data.canaries=0"];
    all.extend_from_slice(set);
    scenario(SMALL, &all).unwrap()
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("fedsim-taskrun-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

#[test]
fn a_run_scores_its_task_every_k_rounds_and_the_whole_split_at_the_ends() {
    let d = tmp("every");
    let s = task_scenario(&d, &[]);
    assert_eq!(
        s.prompt,
        fedsim::scenario::file::PromptFormat::FinGpt,
        "labelled data picks FinGPT's prompt"
    );
    run(&s, &d.join("run"));
    let rounds = round_metrics(&d.join("run"));
    let scored: Vec<bool> = rounds
        .iter()
        .map(|r| r.get("task_accuracy").is_some())
        .collect();
    assert_eq!(
        scored,
        [false, true, false, true],
        "every 2 rounds and the last"
    );
    let t = &summary(&d.join("run"))["task_eval"];
    assert_eq!(t["task"], "classification");
    assert_eq!(t["items"], 45, "final figures on the whole split");
    assert_eq!(t["subset_items"], 15);
    let acc = t["accuracy"].as_f64().unwrap();
    let [lo, hi] = [
        t["ci95"][0].as_f64().unwrap(),
        t["ci95"][1].as_f64().unwrap(),
    ];
    assert!(lo <= acc && acc <= hi);
    assert!((t["majority"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-12);
    assert!(t["pretrained_accuracy"].is_f64());
    let counts: u64 = t["confusion"]["counts"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(counts, 45);
    let tta = &t["time_to_accuracy"];
    assert_eq!(tta["target"], 0.3);
    assert!(tta["round"].is_u64() || tta["reason"].is_string(), "{tta}");
}

#[test]
fn task_scores_do_not_depend_on_the_slot_count() {
    let d = tmp("slots");
    let one = task_scenario(&d, &["slots.count=1"]);
    let two = task_scenario(&d, &["slots.count=2", "slots.threads_per_slot=1"]);
    run(&one, &d.join("one"));
    run(&two, &d.join("two"));
    assert_eq!(round_metrics(&d.join("one")), round_metrics(&d.join("two")));
    assert_eq!(
        summary(&d.join("one"))["task_eval"],
        summary(&d.join("two"))["task_eval"]
    );
}

#[test]
fn a_test_split_inside_the_training_data_is_refused() {
    let d = tmp("overlap");
    let train = labelled_csv(&d, "train.csv", 0, 240);
    let s = task_scenario(&d, &[]);
    let mut file_eval = s.task_eval.clone().unwrap();
    if let fedsim::eval::task::TaskSource::Classification { path, .. } = &mut file_eval.task {
        *path = train;
    }
    let mut s = s;
    s.task_eval = Some(file_eval);
    let err = crate::util::run_full(&s, &d.join("run"), fedsim::Shutdown::never(), None, None)
        .err()
        .expect("refused");
    let text = fedsim::fmt::chain(&err);
    assert!(
        text.contains("train.csv") && text.contains("items of this test split"),
        "{text}"
    );
}

fn point(round: usize, accuracy: Option<f64>) -> RoundPoint {
    RoundPoint {
        round,
        accuracy,
        sim_end_s: 10.0 * round as f64,
        bytes_up: 100,
        bytes_down: 1000,
    }
}

#[test]
fn time_to_accuracy_is_the_first_round_reaching_the_target() {
    let rounds = [
        point(1, Some(0.5)),
        point(2, None),
        point(3, Some(0.8)),
        point(4, Some(0.9)),
    ];
    let t = time_to_accuracy(&rounds, 0.75, Some(0.1));
    assert_eq!((t.round, t.sim_seconds), (Some(3), Some(30.0)));
    assert_eq!(
        (t.bytes_up, t.bytes_down),
        (Some(300), Some(3000)),
        "rounds 1-3, scored or not"
    );
    assert!(t.reason.is_none());
    let t = time_to_accuracy(&rounds, 0.75, Some(0.8));
    assert_eq!(
        (t.round, t.sim_seconds, t.bytes_up),
        (Some(0), Some(0.0), Some(0)),
        "pretrained"
    );
    let t = time_to_accuracy(&rounds, 0.95, None);
    assert_eq!((t.round, t.sim_seconds, t.bytes_up), (None, None, None));
    assert!(t
        .reason
        .unwrap()
        .contains("best subset accuracy 0.900 < target 0.95"));
    let t = time_to_accuracy(&[point(1, None)], 0.5, None);
    assert!(t.reason.unwrap().contains("no round scored the task"));
}

#[test]
fn sweep_and_compare_tables_show_accuracy_and_time_to_accuracy() {
    use fedsim::sweep::{table, SweepRow, Vary};
    let d = tmp("tables");
    let s = task_scenario(&d, &["eval.target_accuracy=Some(0.01)"]);
    let r = run(&s, &d.join("run"));
    let t = r.summary.task_eval.clone().expect("a task was scored");
    let vary = Vary::parse("rounds=4").unwrap();
    let row = SweepRow {
        settings: vec!["rounds=4".into()],
        dir: d.join("run"),
        summary: r.summary.clone(),
    };
    let text = table(&[vary], &[row]);
    assert!(
        text.contains("accuracy [95% CI]") && text.contains("TTA sim (s)"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{:.3} [{:.3}, {:.3}]",
            t.accuracy, t.ci95[0], t.ci95[1]
        )),
        "{text}"
    );
    let cmp = fedsim::compare::table(&[d.join("run")]).unwrap();
    assert!(
        cmp.contains("task accuracy") && cmp.contains("0.01: round 0"),
        "{cmp}"
    );
}

#[test]
fn the_report_charts_task_accuracy_and_shows_time_to_accuracy() {
    let d = tmp("report");
    run(
        &task_scenario(&d, &["eval.target_accuracy=Some(0.01)"]),
        &d.join("run"),
    );
    let html = fedsim::html_report::render(&[d.join("run")]).unwrap();
    for want in [
        "Task accuracy per round",
        "Task accuracy per simulated second",
        "Training records per client by label",
        "0.01: round 0, 0.0 simulated s",
    ] {
        assert!(html.contains(want), "missing {want:?}");
    }
    let none = tmp("report-none");
    run(&scenario(SMALL, &["rounds=1"]).unwrap(), &none.join("run"));
    let html = fedsim::html_report::render(&[none.join("run")]).unwrap();
    assert!(html.contains("Task accuracy: no run scored a task"));
}
