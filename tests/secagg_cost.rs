//! What secure aggregation costs on the virtual clock and in the records: the phase
//! arithmetic against hand-computed values, and a run whose timelines, bytes, summary and
//! `metrics.om` follow from its own records.

use fedsim::devices::DeviceProfile;
use fedsim::secagg::cost::{self, ClientSetup, Compute};
use serde_json::Value;

use crate::system::{clients_log, f};
use crate::util::{round_metrics, run, scenario, SMALL};

const SECURE: &str =
    "strategy.secure_aggregation=SecAggPlus(neighbours: 3, threshold: 2, ring_bits: None)";

fn profile(up_mbps: f64, down_mbps: f64, latency_s: f64) -> DeviceProfile {
    DeviceProfile {
        flops: 1e11,
        up_mbps,
        down_mbps,
        latency_s,
    }
}

#[test]
fn each_phase_lasts_its_slowest_client_and_the_server_compute_follows_the_throughput() {
    let fast = profile(80.0, 80.0, 0.01);
    let slow = profile(8.0, 16.0, 0.1);
    let setup = |keys_up, keys_down, shares_up, shares_down| ClientSetup {
        keys_up,
        keys_down,
        shares_up,
        shares_down,
        masks: 3,
    };
    // Keys: slowest upload 0.1 + 8·100/8e6 = 0.1001 s; slowest download 0.1 + 8·400/16e6
    // = 0.1002 s. Shares: the fast client's 1,000,000-byte upload, 0.01 + 0.1 = 0.11 s, beats
    // the slow one's 0.1 + 0.0002 s; downloads 0.1 + 8·2000/16e6 = 0.101 s.
    let (keys, shares) = cost::setup(&[
        (fast, setup(100, 400, 1_000_000, 2000)),
        (slow, setup(100, 400, 200, 2000)),
    ]);
    assert_eq!((keys.up_bytes, keys.down_bytes), (200, 800));
    assert!((keys.seconds - (0.1001 + 0.1002)).abs() < 1e-12, "{keys:?}");
    assert_eq!((shares.up_bytes, shares.down_bytes), (1_000_200, 4000));
    assert!(
        (shares.seconds - (0.11 + 0.101)).abs() < 1e-12,
        "{shares:?}"
    );
    let compute = Compute {
        client_elements_per_s: 1e6,
        server_elements_per_s: 2e6,
    };
    // 3 masks of 1,000 elements at 1e6 a second.
    assert!((cost::mask_seconds(3, 1000.0, &compute) - 0.003).abs() < 1e-15);
    // Unmasking: the slow survivor's 0.1 + 8·16/16e6 down and 0.1 + 8·80/8e6 up, then
    // (5 masks + the last sum) · 1,000 elements at 2e6 a second.
    let (phase, server) = cost::unmask(&[(fast, 16, 80), (slow, 16, 80)], 5, 1000.0, &compute);
    assert!((server - 0.003).abs() < 1e-15);
    let expect = 0.1 + 8e-6 + 0.1 + 8e-5 + 0.003;
    assert!((phase.seconds - expect).abs() < 1e-12, "{phase:?}");
    assert_eq!((phase.up_bytes, phase.down_bytes), (160, 32));
    // A 56-bit ring's 7-byte elements cost 0.7 of the measured 10-byte ones; 80 bits, 1.
    let ring = |b| fedsim::secagg::Ring::new(b).unwrap();
    assert_eq!(cost::reference_elements(1000, ring(56)), 700.0);
    assert_eq!(cost::reference_elements(1000, ring(80)), 1000.0);
}

fn secure_phase(r: &Value, phase: &str, k: &str) -> f64 {
    f(&r["secure_aggregation"][phase], k)
}

#[test]
fn a_secure_runs_timelines_bytes_and_metrics_follow_its_phases() {
    let tmp = tempfile::tempdir().unwrap();
    let set = [
        SECURE,
        "strategy.fraction_fit=1.0",
        "strategy.min_fit_clients=4",
        "rounds=3",
        "system.crash_probability=0.3",
    ];
    let s = scenario(SMALL, &set).unwrap();
    let n = s.lora.trainable_parameters(&s.model) + 1;
    // The ring's elements priced as elements of the measured 10-byte width (72 bits here).
    let ring = (s.secagg_ring(s.check_data().unwrap().train as u64).unwrap()).unwrap();
    assert_eq!(ring.element_bytes(), 9);
    let elements = cost::reference_elements(n, ring);
    let done = run(&s, tmp.path());
    let rounds = round_metrics(&done.dir);
    let clients = clients_log(&done.dir);
    let rate = cost::CLIENT_ELEMENTS_PER_S;
    let mut crashed_any = false;
    for r in &rounds {
        let round = r["round"].as_u64().unwrap();
        let start = f(r, "sim_start_s");
        let setup = secure_phase(r, "keys", "seconds") + secure_phase(r, "shares", "seconds");
        assert!(setup > 0.0);
        let mine: Vec<&Value> = (clients.iter())
            .filter(|c| c["round"].as_u64() == Some(round))
            .collect();
        let completed: Vec<&&Value> = mine.iter().filter(|c| c["status"] == "completed").collect();
        // Training starts after the keys and shares phases; each of the 4 clients masks with
        // itself and its 3 neighbours (the complete graph).
        for c in &mine {
            assert!((f(c, "start") - (start + setup)).abs() < 1e-9, "{c}");
            let mask = f(c, "mask");
            assert!((mask - 4.0 * elements / rate).abs() < 1e-12, "{c}");
        }
        // The server regenerates each survivor's self mask and, for each client that dropped
        // after sharing, its pairwise mask with each survivor.
        let (survivors, dropped) = (completed.len(), mine.len() - completed.len());
        crashed_any |= dropped > 0;
        let masks = r["secure_aggregation"]["masks_regenerated"]
            .as_u64()
            .unwrap() as usize;
        assert_eq!(masks, survivors + dropped * survivors, "round {round}");
        let server = f(&r["secure_aggregation"], "server_compute_s");
        let expect = (masks + 1) as f64 * elements / cost::SERVER_ELEMENTS_PER_S;
        assert!((server - expect).abs() < 1e-12);
        // The unmasking phase follows the last upload.
        let last = completed.iter().map(|c| f(c, "finish")).fold(0.0, f64::max);
        let unmask = secure_phase(r, "unmask", "seconds");
        assert!(unmask > server);
        let end = start + f(r, "sim_duration_s");
        assert!(
            (end - (last + unmask)).abs() < 1e-9,
            "round {round}: {end} vs {last} + {unmask}"
        );
        // Every masked vector is in the round's uploads, and so are the protocol's messages.
        let masked = secure_phase(r, "masked", "up_bytes") as u64;
        let protocol_up: u64 = ["keys", "shares", "unmask"]
            .iter()
            .map(|p| secure_phase(r, p, "up_bytes") as u64)
            .sum();
        assert_eq!(r["bytes_up"].as_u64().unwrap(), masked + protocol_up);
        assert!(masked as usize >= survivors * n * 9, "9+ bytes an element");
    }
    assert!(
        crashed_any,
        "no client crashed: the dropped path was not exercised"
    );
    // summary.json: the rounds' costs summed.
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(done.dir.join("summary.json")).unwrap())
            .unwrap();
    let total = &summary["secure_aggregation"];
    for phase in ["keys", "shares", "masked", "unmask"] {
        let sum: f64 = rounds
            .iter()
            .map(|r| secure_phase(r, phase, "up_bytes"))
            .sum();
        assert_eq!(f(&total[phase], "up_bytes"), sum, "{phase}");
    }
    assert_eq!(total["failed_rounds"].as_u64(), Some(0));
    // metrics.om: the cumulative bytes of each phase, and the failed rounds.
    let om = std::fs::read_to_string(done.dir.join("metrics.om")).unwrap();
    for phase in ["keys", "shares", "masked", "unmask"] {
        assert!(
            om.contains(&format!(
                "fedsim_secure_aggregation_bytes_total{{phase=\"{phase}\"}}"
            )),
            "{phase} missing from metrics.om"
        );
    }
    assert!(om.contains("fedsim_secure_aggregation_failed_rounds_total 0"));
}

#[test]
fn a_sweep_counts_the_secure_rounds_that_released_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let scen = crate::util::small_file(tmp.path());
    let out = tmp.path().join("sweep");
    // Half the clients crash: with t = 3 of k = 3 any crash withholds the round.
    let (ok, stdout, err) = crate::util::sim(&[
        "sweep",
        scen.to_str().unwrap(),
        "--set",
        SECURE,
        "--set",
        "strategy.fraction_fit=1.0",
        "--set",
        "strategy.min_fit_clients=4",
        "--set",
        "rounds=3",
        "--set",
        "system.crash_probability=0.5",
        "--vary",
        "strategy.secure_aggregation.SecAggPlus.threshold=2,3",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("withheld = secure rounds that released nothing"));
    let csv = std::fs::read_to_string(out.join("sweep.csv")).unwrap();
    let rows: Vec<&str> = stdout.lines().filter(|l| l.contains("completed")).collect();
    let mut withheld_any = 0;
    for (row, line) in rows.iter().zip(csv.lines().skip(1)) {
        let dir = std::path::Path::new(line.rsplit(',').next().unwrap());
        let skipped = round_metrics(dir)
            .iter()
            .filter(|r| {
                r["skipped"]
                    .as_str()
                    .is_some_and(|w| w.starts_with("secagg_threshold"))
            })
            .count();
        withheld_any += skipped;
        assert!(
            row.trim_end().ends_with(&format!("{skipped}/3")),
            "{stdout}"
        );
    }
    assert_eq!(rows.len(), 2, "{stdout}");
    assert!(
        withheld_any > 0,
        "no round withheld: the column was not exercised\n{stdout}"
    );
}
