//! `sim comm`: the course's communication figures, and a run's bytes actually sent.

use fedsim::comm::{CommInput, Messages};

use crate::util::{sim, small_file};

#[test]
fn the_course_communication_figures_are_reproduced() {
    // Lesson 3: 70,623,232 total / 196,608 trainable parameters, 2 rounds x 4 clients, 20 Mbit/s.
    let r = CommInput {
        total_params: 70_623_232,
        trainable_params: 196_608,
        bytes_per_param: 4,
        adapter_message_bytes: None,
        upload_message_bytes: None,
        messages: Messages::Planned {
            rounds: 2,
            clients_per_round: 4,
        },
        bandwidth_mbps: 20.0,
    }
    .compute()
    .unwrap();
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    assert_eq!(format!("{:.2}", mib(r.full_message_bytes)), "269.41");
    assert_eq!(format!("{:.2}", mib(r.adapter_message_bytes)), "0.75");
    assert_eq!(format!("{:.2}", r.full_message_s_course), "107.76");
    assert_eq!(format!("{:.2}", r.adapter_message_s_course), "0.30");
    // Exact units: 282,492,928 B x 8 / 20e6 bit/s.
    assert!((r.full_message_s - 282_492_928.0 * 8.0 / 20e6).abs() < 1e-9);
    assert_eq!(r.messages, 16);
    // The course's "4.2 GB" and "12.0 MB" are GiB and MiB.
    assert_eq!(
        format!("{:.1}", r.full_total_bytes as f64 / (1u64 << 30) as f64),
        "4.2"
    );
    assert_eq!(format!("{:.1}", mib(r.adapter_total_bytes)), "12.0");
    assert_eq!(format!("{:.1}", r.savings), "359.2");
    // The same through the command line, units named.
    let (ok, out, err) = sim(&[
        "comm",
        "--total-params",
        "70623232",
        "--trainable-params",
        "196608",
        "--rounds",
        "2",
        "--clients-per-round",
        "4",
        "--bandwidth-mbps",
        "20",
    ]);
    assert!(ok, "{err}");
    for want in [
        "282,492,928 B = 269.41 MiB = 282.49 MB",
        "786,432 B = 0.75 MiB = 0.79 MB",
        "107.76 s and 0.30 s",
        "full model 113.00 s",
        "4.21 GiB (4.52 GB), adapters 12.00 MiB (12.58 MB)",
        "359.2x",
    ] {
        assert!(out.contains(want), "missing {want:?} in\n{out}");
    }
    let (ok, _, err) = sim(&["comm", "--total-params", "5"]);
    assert!(!ok && err.contains("--trainable-params"), "{err}");
}

#[test]
fn a_run_directory_reports_the_bytes_it_sent_and_its_base_generates() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = small_file(dir.path());
    let out = dir.path().join("run");
    let report = crate::util::run(&fedsim::Scenario::load(&scenario, &[]).unwrap(), &out);
    let input = CommInput::from_run(&out, 20.0).unwrap();
    let r = input.compute().unwrap();
    let sum = &report.summary;
    assert_eq!(
        r.adapter_total_bytes,
        sum.bytes_down_total + sum.bytes_up_total
    );
    let size = std::fs::metadata(out.join("adapter_model.safetensors"))
        .unwrap()
        .len();
    assert_eq!(r.adapter_message_bytes, size);
    // 4 rounds x 2 sampled clients, one download and one upload each.
    assert_eq!(r.messages, 16);
    assert_eq!(
        r.full_total_bytes,
        16 * 4 * (sum.base_parameters + sum.trainable_parameters) as u64
    );
    // The run's exported base is a Hugging Face directory: `sim generate` reads it, with the
    // run's adapter merged in.
    let base = out.join("base_model");
    let (ok, _, err) = sim(&[
        "generate",
        "--model",
        base.to_str().unwrap(),
        "--adapter",
        out.to_str().unwrap(),
        "--raw",
        "--max-tokens",
        "4",
        "Patient",
    ]);
    assert!(ok && err.contains("tokens/s"), "{err}");
    // The scenario's plan gives the same message count and size.
    let (ok, planned, err) = sim(&["comm", scenario.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        planned.contains("4 rounds x 2 clients x 2 directions = 16"),
        "{planned}"
    );
    assert!(planned.contains(&fedsim::fmt::thousands(size)), "{planned}");
}

#[test]
fn compressed_uploads_count_at_their_encoded_size() {
    // scenarios/compressed_updates.ron: 10 rounds x 5 clients, top-1 % uploads.
    let (ok, out, err) = crate::util::sim(&["comm", "scenarios/compressed_updates.ron"]);
    assert!(ok, "{err}");
    let bytes = |label: &str| -> u64 {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap();
        let n = line.split_whitespace().nth(1).unwrap().replace(',', "");
        n.parse().unwrap_or_else(|_| panic!("{line}"))
    };
    let (down, up) = (bytes("adapter"), bytes("upload"));
    assert!(up * 40 < down, "top-1 % upload {up} B vs adapter {down} B");
    let total = 10 * 5 * (down + up);
    let shown = out.lines().find(|l| l.starts_with("total:")).unwrap();
    let mb = format!("{:.2} MB", total as f64 / 1e6);
    assert!(
        shown.contains(&mb) || shown.contains(&format!("{total}")),
        "{shown} vs {total} B ({mb})\n{out}"
    );
}
