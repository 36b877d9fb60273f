//! `metrics.om`: per-round OpenMetrics with timestamps, importable by promtool.

use std::process::Command;

use crate::util::{run, scenario, SMALL};

const DP: &str =
    r#"dp={"mechanism":{"ClientSideFixed":{"clip_norm":0.5,"noise_multiplier":1.0}},"delta":1e-5}"#;

/// The samples of `series` (exact name + labels) as (value, timestamp).
fn samples(text: &str, series: &str) -> Vec<(f64, f64)> {
    text.lines()
        .filter_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .map(|r| {
            let mut it = r.split_whitespace();
            (
                it.next().unwrap().parse().unwrap(),
                it.next().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn openmetrics_file_has_every_round_and_imports_with_promtool() {
    let tmp = tempfile::tempdir().unwrap();
    let s = scenario(SMALL, &[DP, "rounds=3"]).unwrap();
    let r = run(&s, &tmp.path().join("om"));
    let text = std::fs::read_to_string(r.dir.join("metrics.om")).unwrap();
    assert!(text.ends_with("# EOF\n"));
    let eval = samples(&text, "fedsim_eval_loss");
    assert_eq!(eval.len(), 3);
    for (i, (v, _)) in eval.iter().enumerate() {
        assert_eq!(*v, r.rounds[i].eval_loss);
    }
    assert!(
        eval.windows(2).all(|w| w[1].1 > w[0].1),
        "timestamps increase: {eval:?}"
    );
    let up = samples(&text, "fedsim_network_bytes_total{direction=\"up\"}");
    assert_eq!(
        up.last().unwrap().0,
        r.rounds.iter().map(|x| x.bytes_up as f64).sum::<f64>()
    );
    assert_eq!(
        samples(&text, "fedsim_rounds_completed_total")
            .last()
            .unwrap()
            .0,
        3.0
    );
    assert_eq!(
        samples(&text, "fedsim_dp_epsilon{accountant=\"rdp\"}").len(),
        3
    );
    // Every family is announced before its samples.
    assert!(
        text.find("# TYPE fedsim_eval_loss gauge").unwrap()
            < text.find("\nfedsim_eval_loss ").unwrap()
    );

    let promtool = Command::new("promtool").arg("--version").output();
    if promtool.is_err() {
        if std::env::var_os("CI").is_some() {
            panic!("promtool is missing under CI: .ci/run must install Debian's prometheus");
        }
        eprintln!("SKIPPED: promtool not installed (apt-get install prometheus); the import check did not run");
        return;
    }
    let db = tmp.path().join("tsdb");
    let out = Command::new("promtool")
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(r.dir.join("metrics.om"))
        .arg(&db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::create_dir_all(db.join("wal")).unwrap();
    let dump = Command::new("promtool")
        .args(["tsdb", "dump"])
        .arg(&db)
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&dump.stdout);
    let imported: Vec<&str> = dump
        .lines()
        .filter(|l| l.starts_with("{__name__=\"fedsim_eval_loss\"}"))
        .collect();
    assert_eq!(imported.len(), 3, "every round is in the TSDB:\n{dump}");
    for (line, (v, t)) in imported.iter().zip(&eval) {
        let mut it = line.split_whitespace().skip(1);
        let value: f64 = it.next().unwrap().parse().unwrap();
        let ts: i64 = it.next().unwrap().parse().unwrap();
        assert_eq!(value, *v);
        assert_eq!(ts, (t * 1000.0).round() as i64);
    }
}
