//! Hierarchical topology: with one edge round a run is flat FedAvg bit for bit; the WAN
//! carries one global download and one partial per edge that ran; an edge crash drops exactly
//! its clients' contribution and is recorded; the per-tier clock matches a hand-computed
//! timeline; any E is deterministic across slot counts; assignments and what cannot be
//! combined are checked by name.

use serde_json::Value;

use crate::system::clients_log;
use crate::util::{round_metrics, run, scenario, SMALL};

const WAN: &str = "wan: (up_mbps: 10.0, down_mbps: 20.0, latency_s: 0.1)";

fn hier(edges: usize, e: usize, extra: &str) -> String {
    format!(
        "topology=Hierarchical(edges: {edges}, assignment: Seeded, edge_rounds: {e}, {WAN}{extra})"
    )
}

fn small(set: &[&str]) -> fedsim::Scenario {
    let mut all = vec![
        "clients.count=6",
        "strategy.fraction_fit=1.0",
        "strategy.min_fit_clients=2",
        "rounds=3",
    ];
    all.extend_from_slice(set);
    scenario(SMALL, &all).unwrap()
}

fn adapter(dir: &std::path::Path) -> Vec<u8> {
    std::fs::read(dir.join("adapter_model.safetensors")).unwrap()
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or_else(|| panic!("{k} in {v}"))
}

#[test]
fn one_edge_round_is_flat_fedavg_bit_for_bit_and_the_wan_carries_one_partial_per_edge() {
    let tmp = tempfile::tempdir().unwrap();
    let crash = "system.crash_probability=0.3";
    let flat = run(&small(&[crash]), &tmp.path().join("flat"));
    let h = hier(3, 1, "");
    let s = small(&[crash, &h]);
    let hr = run(&s, &tmp.path().join("hier"));
    assert!(adapter(&flat.dir) == adapter(&hr.dir), "adapters differ");
    let (fr, rounds) = (round_metrics(&flat.dir), round_metrics(&hr.dir));
    let values = s.lora.trainable_parameters(&s.model) as u64;
    for (a, b) in fr.iter().zip(&rounds) {
        assert_eq!(a["completed"], b["completed"]);
        assert_eq!(a["eval_loss"], b["eval_loss"]);
        let h = &b["hierarchy"];
        let ran: Vec<&Value> = h["edges"].as_array().unwrap().iter().collect();
        // One global download per edge that ran, one partial per edge that forwarded.
        assert_eq!(
            h["wan_bytes_down"].as_u64(),
            Some(ran.len() as u64 * b["bytes_down"].as_u64().unwrap() / 6)
        );
        let up: u64 = ran
            .iter()
            .map(|e| e["wan_bytes_up"].as_u64().unwrap())
            .sum();
        assert_eq!(h["wan_bytes_up"].as_u64(), Some(up));
        for e in &ran {
            let bytes = e["wan_bytes_up"].as_u64().unwrap();
            // A width byte, the weight, each exact sum in 1..=16 whole bytes.
            let width = (bytes - 9) / values;
            assert_eq!(bytes, 9 + width * values, "{e}");
            assert!((5..=8).contains(&width), "{e}");
        }
        assert_eq!(h["lan_bytes_up"], b["bytes_up"]);
        let folded: u64 = ran.iter().map(|e| e["folded"].as_u64().unwrap()).sum();
        assert_eq!(b["completed"].as_u64(), Some(folded));
    }
}

#[test]
fn the_per_tier_clock_follows_a_hand_computed_timeline() {
    let tmp = tempfile::tempdir().unwrap();
    let h = hier(2, 2, "");
    let s = small(&[
        &h,
        "system.profiles=Fixed((flops: 1e9, up_mbps: 5.0, down_mbps: 8.0, latency_s: 0.02))",
    ]);
    let r = run(&s, &tmp.path().join("hier"));
    let rounds = round_metrics(&r.dir);
    let clients = clients_log(&r.dir);
    let global = rounds[0]["bytes_down"].as_u64().unwrap() / (6 * 2);
    for r in &rounds {
        let start = f(r, "sim_start_s");
        let h = &r["hierarchy"];
        // The global crosses the WAN down: latency + 8·bytes / (20 Mbit/s).
        let reach = start + 0.1 + 8.0 * global as f64 / 20e6;
        let mut close: f64 = 0.0;
        // (start, end) of every edge round.
        let mut spans: Vec<(f64, f64)> = Vec::new();
        for e in h["edges"].as_array().unwrap() {
            assert!((f(e, "start_s") - reach).abs() < 1e-9, "{e}");
            let rounds_s = e["edge_rounds_s"].as_array().unwrap();
            assert_eq!(rounds_s.len(), 2);
            let mut t = reach;
            for span in rounds_s {
                spans.push((t, t + span.as_f64().unwrap()));
                t += span.as_f64().unwrap();
            }
            // Forwarded over the WAN up: latency + 8·bytes / (10 Mbit/s).
            let bytes = e["wan_bytes_up"].as_u64().unwrap();
            let forward = t + 0.1 + 8.0 * bytes as f64 / 10e6;
            assert!((f(e, "forward_at_s") - forward).abs() < 1e-9, "{e}");
            close = close.max(forward);
        }
        // Each edge round starts when the last closed and closes with its last upload (Wait):
        // the clients that started at t finish, at the latest, when the edge rounds that
        // started at t end.
        let mine: Vec<&Value> = (clients.iter())
            .filter(|c| c["round"] == r["round"])
            .collect();
        assert_eq!(mine.len(), 6 * 2);
        for c in &mine {
            let t = f(c, "start");
            let ends = spans.iter().filter(|s| (s.0 - t).abs() < 1e-9);
            let end = ends.map(|s| s.1).fold(f64::NAN, f64::max);
            let last = (mine.iter())
                .filter(|d| (f(d, "start") - t).abs() < 1e-9)
                .map(|d| f(d, "finish"))
                .fold(t, f64::max);
            assert!((end - last).abs() < 1e-9, "{c}: {end} vs {last}");
        }
        assert!((start + f(r, "sim_duration_s") - close).abs() < 1e-9, "{r}");
        for c in clients.iter().filter(|c| c["round"] == r["round"]) {
            // Client ↔ edge over the client's link: 8·bytes / 8 Mbit/s + 20 ms down.
            let down = 0.02 + 8.0 * global as f64 / 8e6;
            assert!((f(c, "download") - down).abs() < 1e-9, "{c}");
        }
    }
}

#[test]
fn edge_rounds_are_deterministic_across_slot_counts_and_lower_the_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let h = hier(2, 3, "");
    let one = run(
        &small(&[&h, "system.crash_probability=0.2"]),
        &tmp.path().join("one"),
    );
    let two = run(
        &small(&[&h, "system.crash_probability=0.2", "slots.count=2"]),
        &tmp.path().join("two"),
    );
    assert!(adapter(&one.dir) == adapter(&two.dir), "adapters differ");
    assert_eq!(round_metrics(&one.dir), round_metrics(&two.dir));
    let rounds = round_metrics(&one.dir);
    let first = f(&rounds[0], "eval_loss");
    let last = f(rounds.last().unwrap(), "eval_loss");
    assert!(last < first, "{first} -> {last}");
    // Three edge rounds: every client trains three times a cloud round.
    let clients = clients_log(&one.dir);
    let r1 = clients.iter().filter(|c| c["round"] == 1).count();
    assert_eq!(r1, 6 * 3);
    // E = 3 differs from E = 1 (the edges' own rounds move the model).
    let e1 = run(
        &small(&[&hier(2, 1, ""), "system.crash_probability=0.2"]),
        &tmp.path().join("e1"),
    );
    assert!(adapter(&one.dir) != adapter(&e1.dir));
}

#[test]
fn a_lost_edge_drops_exactly_its_clients_and_is_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let h = hier(
        3,
        1,
        ", edge_crash_probability: 0.4, edge_availability: 0.7",
    );
    let r = run(&small(&[&h, "rounds=6"]), &tmp.path().join("hier"));
    let rounds = round_metrics(&r.dir);
    let clients = clients_log(&r.dir);
    let (mut crashed, mut offline) = (0, 0);
    for r in &rounds {
        let h = &r["hierarchy"];
        let edges = h["edges"].as_array().unwrap();
        let mut lost_clients = 0;
        let mut folded = 0;
        for e in edges {
            let n = e["clients"].as_u64().unwrap();
            match e["status"].as_str().unwrap() {
                "forwarded" => folded += e["folded"].as_u64().unwrap(),
                "crashed" => {
                    crashed += 1;
                    lost_clients += n;
                    // It trained and folded, but sent nothing up.
                    assert_eq!(e["wan_bytes_up"], 0);
                    assert!(e["folded"].as_u64().unwrap() > 0);
                }
                "unavailable" => {
                    offline += 1;
                    lost_clients += n;
                    assert_eq!(e["folded"], 0);
                }
                s => panic!("{s}"),
            }
        }
        assert_eq!(r["completed"].as_u64(), Some(folded), "{r}");
        assert_eq!(r["edge_lost"].as_u64().unwrap_or(0), lost_clients, "{r}");
        let lost = edges.iter().filter(|e| e["status"] != "forwarded").count();
        assert_eq!(h["edges_lost"].as_u64(), Some(lost as u64));
        // An offline edge's clients are recorded as edge_lost and never train.
        let recorded = (clients.iter())
            .filter(|c| c["round"] == r["round"] && c["status"] == "edge_lost")
            .count() as u64;
        let offline_clients: u64 = (edges.iter())
            .filter(|e| e["status"] == "unavailable")
            .map(|e| e["clients"].as_u64().unwrap())
            .sum();
        assert_eq!(recorded, offline_clients);
    }
    assert!(
        crashed > 0 && offline > 0,
        "crashed {crashed}, offline {offline}"
    );
}

#[test]
fn assignments_follow_tiers_and_trace_regions_and_bad_ones_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let tiers = "system.profiles=Tiers([(name: \"phone\", share: 0.5, profile: (flops: 1e9, \
                 up_mbps: 5.0, down_mbps: 10.0, latency_s: 0.05)), (name: \"laptop\", share: 0.5, \
                 profile: (flops: 1e10, up_mbps: 20.0, down_mbps: 50.0, latency_s: 0.02))])";
    let by_tier = format!("topology=Hierarchical(edges: 2, assignment: ByTier, {WAN})");
    assert!(scenario(SMALL, &["clients.count=6", tiers, &by_tier]).is_ok());
    let three = format!("topology=Hierarchical(edges: 3, assignment: ByTier, {WAN})");
    let err = scenario(SMALL, &["clients.count=6", tiers, &three])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("topology.Hierarchical.assignment") && err.contains("2 tiers"),
        "{err}"
    );
    let err = scenario(SMALL, &["clients.count=6", &by_tier])
        .unwrap_err()
        .to_string();
    assert!(err.contains("ByTier needs system.profiles: Tiers"), "{err}");
    // Regions from the trace's 7th column.
    let trace = tmp.path().join("trace.csv");
    let mut csv = "client,flops,up_mbps,down_mbps,latency_s,windows,region\n".to_string();
    for c in 0..6 {
        csv += &format!("{c},1e10,10,20,0.05,,{}\n", c % 2);
    }
    std::fs::write(&trace, csv).unwrap();
    let profiles = format!(
        "system.profiles=Trace(path: {:?})",
        trace.display().to_string()
    );
    let by_region = format!("topology=Hierarchical(edges: 2, assignment: ByRegion, {WAN})");
    let s = small(&[&profiles, &by_region, "rounds=1"]);
    let r = run(&s, &tmp.path().join("region"));
    let edges = &round_metrics(&r.dir)[0]["hierarchy"]["edges"];
    assert_eq!(edges[0]["clients"], 3);
    assert_eq!(edges[1]["clients"], 3);
    let one = format!("topology=Hierarchical(edges: 1, assignment: ByRegion, {WAN})");
    let err = scenario(SMALL, &["clients.count=6", &profiles, &one])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("client 1's region is 1; regions must be 0..1"),
        "{err}"
    );
    let err = scenario(SMALL, &["clients.count=6", &by_region])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("needs system.profiles: Trace with a `region` column"),
        "{err}"
    );
    // Out of range, and not combinable yet.
    let err = scenario(SMALL, &["clients.count=6", &hier(7, 1, "")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("topology.Hierarchical.edges") && err.contains("[1, 6]"),
        "{err}"
    );
    let err = scenario(SMALL, &[&hier(2, 0, "")]).unwrap_err().to_string();
    assert!(err.contains("topology.Hierarchical.edge_rounds"), "{err}");
}

#[test]
fn validate_states_the_edges_and_the_shipped_scenario_runs_hierarchically() {
    let (ok, out, err) = crate::util::sim(&["validate", "scenarios/hierarchical.ron"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("topology: hierarchical, 3 edges of [20, 20, 20] clients, 2 edge round(s)"),
        "{out}"
    );
    let (ok, _, err) = crate::util::sim(&[
        "validate",
        "scenarios/hierarchical.ron",
        "--set",
        "topology.Hierarchical.edges=61",
    ]);
    assert!(!ok && err.contains("topology.Hierarchical.edges"), "{err}");
}

#[test]
fn dp_at_the_root_is_flat_dp_bit_for_bit_and_at_the_edges_charges_e_compositions() {
    let tmp = tempfile::tempdir().unwrap();
    let dp = crate::util::DP; // ClientSideFixed, C = 0.5, z = 1
    let flat = run(&small(&[dp]), &tmp.path().join("flat"));
    let root = run(&small(&[dp, &hier(3, 1, "")]), &tmp.path().join("root"));
    assert!(adapter(&flat.dir) == adapter(&root.dir), "adapters differ");
    let (fr, rr) = (round_metrics(&flat.dir), round_metrics(&root.dir));
    for (a, b) in fr.iter().zip(&rr) {
        for k in [
            "dp_epsilon",
            "dp_noise_stddev",
            "dp_sampling_rate",
            "eval_loss",
        ] {
            assert_eq!(a[k], b[k], "{k}");
        }
    }
    // Noise at the edges, E = 2: each edge noises each edge round; the accountant charges
    // one Gaussian with z/√2 per round — a flat run with z = 1/√2 spends the same ε.
    let edges = hier(3, 2, ", noise_at: Edges");
    let fixed = "dp.sampling=Fixed";
    let he = run(&small(&[dp, fixed, &edges]), &tmp.path().join("edges"));
    let z = 1.0 / 2f64.sqrt();
    let same = format!(
        r#"dp={{"mechanism":{{"ClientSideFixed":{{"clip_norm":0.5,"noise_multiplier":{z}}}}},"delta":1e-5}}"#
    );
    let reference = run(&small(&[&same, fixed]), &tmp.path().join("reference"));
    let (er, refr) = (round_metrics(&he.dir), round_metrics(&reference.dir));
    for (a, b) in er.iter().zip(&refr) {
        let (x, y) = (f(a, "dp_epsilon"), f(b, "dp_epsilon"));
        assert!((x - y).abs() <= 1e-9 * y, "{x} vs {y}");
        // σ on the average: √(edges forwarded) · z·C / updates in the last edge rounds.
        let h = &a["hierarchy"];
        let forwarded = (h["edges"].as_array().unwrap().iter())
            .filter(|e| e["status"] == "forwarded")
            .count() as f64;
        let weight: f64 = (h["edges"].as_array().unwrap().iter())
            .map(|e| f(e, "weight"))
            .sum();
        let sd = forwarded.sqrt() * 1.0 * 0.5 / weight;
        assert!((f(a, "dp_noise_stddev") - sd).abs() < 1e-12, "{a}");
    }
    assert!(adapter(&he.dir) != adapter(&root.dir));
    // What cannot be accounted is refused by name.
    let err = scenario(SMALL, &[dp, &hier(3, 2, "")])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("topology.Hierarchical.noise_at") && err.contains("un-noised edge models"),
        "{err}"
    );
    let poisson = "dp.sampling=Poisson";
    let err = scenario(SMALL, &[dp, poisson, &edges])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`dp.sampling`") && err.contains("use dp.sampling: Fixed"),
        "{err}"
    );
}

#[test]
fn a_robust_rule_runs_at_each_edge_against_byzantine_clients() {
    let tmp = tempfile::tempdir().unwrap();
    let byz = "system.byzantine=Some((clients: Listed([0]), attack: Scale(50.0)))";
    let h = hier(2, 2, "");
    let median = run(
        &small(&[byz, &h, "strategy.kind=Median"]),
        &tmp.path().join("median"),
    );
    let mean = run(&small(&[byz, &h]), &tmp.path().join("mean"));
    let (m, a) = (round_metrics(&median.dir), round_metrics(&mean.dir));
    let loss = |r: &[Value]| f(r.last().unwrap(), "eval_loss");
    // The median at the attacker's edge holds it off; FedAvg there does not.
    assert!(
        loss(&m) < loss(&a),
        "median {} vs mean {}",
        loss(&m),
        loss(&a)
    );
    assert!(loss(&m) < f(&m[0], "eval_loss") + 1.0);
    // The deviation from the honest aggregate is not computed under a hierarchy.
    assert!(m[0].get("aggregate_deviation").is_none(), "{}", m[0]);
    assert_eq!(m[0]["byzantine_sampled"], 1);
    assert_eq!(m[0]["byzantine_aggregated"], 1);
    let two = run(
        &small(&[byz, &h, "strategy.kind=Median", "slots.count=2"]),
        &tmp.path().join("two"),
    );
    assert!(adapter(&median.dir) == adapter(&two.dir));
}

#[test]
fn secagg_at_each_edge_releases_the_plain_hierarchys_adapter_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let h = hier(2, 2, "");
    let base = ["strategy.min_fit_clients=3", h.as_str()];
    let plain = run(&small(&base), &tmp.path().join("plain"));
    let secagg =
        "strategy.secure_aggregation=SecAggPlus(neighbours: 2, threshold: 2, ring_bits: None)";
    let secure = run(
        &small(&[base[0], base[1], secagg]),
        &tmp.path().join("secure"),
    );
    assert!(
        adapter(&plain.dir) == adapter(&secure.dir),
        "adapters differ"
    );
    let (pr, sr) = (round_metrics(&plain.dir), round_metrics(&secure.dir));
    for (p, s) in pr.iter().zip(&sr) {
        assert_eq!(p["eval_loss"], s["eval_loss"]);
        // The WAN carries the same partials; the edges' LAN carries the protocol too.
        assert_eq!(
            p["hierarchy"]["wan_bytes_up"],
            s["hierarchy"]["wan_bytes_up"]
        );
        assert!(s["bytes_up"].as_u64() > p["bytes_up"].as_u64());
        let sa = &s["secure_aggregation"];
        for phase in ["keys", "shares", "unmask"] {
            assert!(sa[phase]["up_bytes"].as_u64().unwrap() > 0, "{phase}: {sa}");
        }
        // Keys, shares and unmasking lengthen each edge round.
        let spans = |r: &Value| -> f64 {
            (r["hierarchy"]["edges"].as_array().unwrap().iter())
                .flat_map(|e| e["edge_rounds_s"].as_array().unwrap().clone())
                .map(|x| x.as_f64().unwrap())
                .sum()
        };
        assert!(spans(s) > spans(p));
    }
    let he = "strategy.secure_aggregation=HomomorphicEncryption(scheme: Bfv(degree: 4096))";
    let err = scenario(SMALL, &[base[0], base[1], he])
        .unwrap_err()
        .to_string();
    assert!(err.contains("HomomorphicEncryption at the edge"), "{err}");
}

#[test]
fn over_selection_keeps_each_edges_share_of_the_target() {
    let tmp = tempfile::tempdir().unwrap();
    let h = hier(2, 2, "");
    // 6 clients, a target of 4 plus 2 over-selected: each edge of 3 keeps its first 2.
    let s = small(&[
        &h,
        "strategy.fraction_fit=0.67",
        "system.stragglers=OverSelect(extra: 2)",
        "system.profiles=Drawn(flops: LogNormal(median: 1e9, sigma: 0.5), up_mbps: Fixed(10.0), \
         down_mbps: Fixed(20.0), latency_s: Fixed(0.05))",
    ]);
    let r = run(&s, &tmp.path().join("over"));
    let clients = clients_log(&r.dir);
    for r in round_metrics(&r.dir) {
        assert_eq!(r["sampled"], 6);
        let mine: Vec<&Value> = clients
            .iter()
            .filter(|c| c["round"] == r["round"])
            .collect();
        let done = mine.iter().filter(|c| c["status"] == "completed").count();
        let dropped = mine
            .iter()
            .filter(|c| c["status"] == "missed_deadline")
            .count();
        // 2 edges × 2 edge rounds × (2 kept, 1 dropped).
        assert_eq!((done, dropped), (8, 4), "{r}");
    }
}

#[test]
fn the_report_charts_wan_bytes_and_a_sweep_adds_the_wan_column() {
    let tmp = tempfile::tempdir().unwrap();
    let scen = crate::util::small_file(tmp.path());
    let out = tmp.path().join("sweep");
    let vary = format!("topology=Flat,Hierarchical(edges: 2, assignment: Seeded, {WAN})");
    let (ok, _, err) = crate::util::sim(&[
        "sweep",
        scen.to_str().unwrap(),
        "--vary",
        &vary,
        "--set",
        "rounds=2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let table = std::fs::read_to_string(out.join("sweep.txt")).unwrap();
    assert!(
        table.contains("WAN MB") && table.contains("edges <-> cloud"),
        "{table}"
    );
    let runs: Vec<std::path::PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("summary.json").is_file())
        .collect();
    assert_eq!(runs.len(), 2);
    let html = fedsim::html_report::render(&runs).unwrap();
    assert!(html.contains("WAN bytes per round"), "no WAN chart");
}
