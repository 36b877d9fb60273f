//! `metrics.om`: per-round OpenMetrics with timestamps, importable by promtool.

use std::process::Command;

use crate::util::{run, scenario, DP, SMALL};

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

pub fn openmetrics_file_has_every_round_and_imports_with_promtool() {
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

/// Kills a child process when dropped (a failing assertion must not leave servers running).
struct Reaper(std::process::Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

fn promql(prom: &str, expr: &str) -> (bool, String) {
    let out = Command::new("promtool")
        .args(["query", "instant", &format!("http://{prom}"), expr])
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Start `sim run` with its exporter and a real Prometheus scraping it every second, then query
/// every panel expression of `grafana/dashboards/fedsim.json`.
pub fn every_dashboard_panel_returns_data_from_a_real_prometheus() {
    let tmp = tempfile::tempdir().unwrap();
    let sim_addr = format!("127.0.0.1:{}", free_port());
    // A second run, under secure aggregation, so its panels have data.
    let secure_addr = format!("127.0.0.1:{}", free_port());
    // A third, under edge aggregators, so the hierarchy's panels have data.
    let hier_addr = format!("127.0.0.1:{}", free_port());
    // A fourth, split at a cut, so the split panel has data.
    let split_addr = format!("127.0.0.1:{}", free_port());
    let prom_addr = format!("127.0.0.1:{}", free_port());
    let cfg = tmp.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: fedsim\n    static_configs:\n      - targets: [\"{sim_addr}\", \"{secure_addr}\", \"{hier_addr}\", \"{split_addr}\"]\n"),
    )
    .unwrap();
    let _prom = Reaper(
        Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                tmp.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(tmp.path().join("prometheus.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let scen = tmp.path().join("small.ron");
    std::fs::write(&scen, crate::util::SMALL).unwrap();
    // A slot worker beside the local slot, so the workers' panels have data.
    let worker_addr = format!("127.0.0.1:{}", free_port());
    let cookie = tmp.path().join("cookie");
    std::fs::write(&cookie, "a-long-shared-secret-for-tests").unwrap();
    let _worker = Reaper(
        Command::new(env!("CARGO_BIN_EXE_sim"))
            .args(["worker", "--listen", &worker_addr, "--cookie-file"])
            .arg(&cookie)
            .current_dir(crate::util::root())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let listening = std::time::Instant::now();
    while std::net::TcpStream::connect(&worker_addr).is_err() {
        assert!(
            listening.elapsed().as_secs() < 20,
            "the worker did not listen"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // A labelled task, so the accuracy panel has data.
    let [source, eval] = crate::util::task_overrides(tmp.path());
    let _sim = Reaper(
        Command::new(env!("CARGO_BIN_EXE_sim"))
            .args([
                "run",
                scen.to_str().unwrap(),
                "-q",
                "--linger",
                "60",
                "--metrics-addr",
                &sim_addr,
            ])
            .args(["--out", tmp.path().join("run").to_str().unwrap()])
            .args(["--set", DP, "--set", "dp.pld=true", "--set", "rounds=3"])
            .args(["--set", &source, "--set", &eval])
            .args(["--workers", &worker_addr, "--cookie-file"])
            .arg(&cookie)
            // A server optimiser and a Byzantine client, so the strategy panels have data.
            .args([
                "--set",
                "strategy.kind=FedAvgM(server_lr: 1.0, momentum: 0.5)",
            ])
            .args([
                "--set",
                "system.byzantine=Some((clients: Listed([0]), attack: SignFlip))",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let background = |name: &str, addr: &str, sets: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_sim"));
        cmd.args(["run", scen.to_str().unwrap(), "-q", "--linger", "60"])
            .args(["--metrics-addr", addr])
            .args(["--out", tmp.path().join(name).to_str().unwrap()])
            .args(["--set", "rounds=3"]);
        for set in sets {
            cmd.args(["--set", set]);
        }
        let null = std::process::Stdio::null;
        Reaper(cmd.stdout(null()).stderr(null()).spawn().unwrap())
    };
    let _secure = background(
        "secure",
        &secure_addr,
        &[
            "strategy.min_fit_clients=4",
            "strategy.fraction_fit=1.0",
            "system.crash_probability=0.3",
            "strategy.secure_aggregation=SecAggPlus(neighbours: 3, threshold: 2, ring_bits: None)",
        ],
    );
    let _hier = background(
        "hier",
        &hier_addr,
        &[
            "strategy.fraction_fit=1.0",
            "topology=Hierarchical(edges: 2, assignment: Seeded, edge_rounds: 2, \
             wan: (up_mbps: 10.0, down_mbps: 10.0, latency_s: 0.1), edge_availability: 0.6)",
        ],
    );
    let _split = background(
        "split",
        &split_addr,
        &["topology=Split(cut_layer: 1, mode: UShaped, activation_compression: Int8)"],
    );
    // Wait for the runs to finish and Prometheus to have scraped their final values twice.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    loop {
        let (_, out) = promql(&prom_addr, "count(fedsim_rounds_completed_total == 3)");
        if out.contains("=> 4 @") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "Prometheus never saw round 3: {out}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    // At least two more scrapes (1 s apart) of the final values.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let (_, out) = promql(
        &prom_addr,
        "min(count_over_time(fedsim_rounds_completed_total[5m]))",
    );
    let scrapes: f64 = out
        .split("=> ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(scrapes >= 2.0, "fewer than 2 scrapes: {out}");
    // The exposition itself passes promtool's linter.
    let scrape = http_get(&sim_addr, "/metrics");
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        check
            .stdin
            .take()
            .unwrap()
            .write_all(scrape.as_bytes())
            .unwrap();
    }
    let check = check.wait_with_output().unwrap();
    assert!(
        check.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    // Every panel's every expression parses and returns data.
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(crate::util::root().join("grafana/dashboards/fedsim.json"))
            .unwrap(),
    )
    .unwrap();
    let mut checked = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            let (ok, out) = promql(&prom_addr, expr);
            assert!(
                ok && out.contains("=>"),
                "panel {:?}: {expr} returned no data: {out}",
                panel["title"]
            );
            checked += 1;
        }
    }
    assert!(checked >= 29, "only {checked} expressions");
}
