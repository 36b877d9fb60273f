//! `sim report`: one chart per section over two runs, notes where a section has no data.

use crate::util::{run, scenario, sim, DP, SMALL};

pub fn a_two_run_report_has_a_chart_per_section_and_notes_for_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (plain, private) = (dir.path().join("plain"), dir.path().join("dp"));
    run(&scenario(SMALL, &[]).unwrap(), &plain);
    run(&scenario(SMALL, &[DP]).unwrap(), &private);
    let out = dir.path().join("report.html");
    let (ok, _, err) = sim(&[
        "report",
        plain.to_str().unwrap(),
        private.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let html = std::fs::read_to_string(&out).unwrap();
    // partitions, training loss, held-out loss, perplexity, ε, bytes, participation, round time
    assert_eq!(html.matches("<svg").count(), 8, "{html}");
    for title in [
        "Training examples per client",
        "Training loss",
        "Held-out loss",
        "Held-out perplexity",
        "Privacy spent",
        "Bytes per round",
        "Participation per round",
        "Simulated round time",
    ] {
        assert!(html.contains(title), "no chart titled {title:?}");
    }
    // Axis labels with units, and both runs in the legends.
    assert!(html.contains("loss (nats/token)") && html.contains("MB (10^6 bytes)"));
    assert!(html.contains(plain.to_str().unwrap()) && html.contains(private.to_str().unwrap()));
    // No eval.json: a note, not a crash.
    assert!(html.contains("no run has an eval.json"), "{html}");
    // A directory that is not a run is an error naming it.
    let (ok, _, err) = sim(&[
        "report",
        dir.path().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("summary.json"), "{err}");
}

/// Debian's Chromium, which `.ci/run` installs (the harness checks it is there).
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// Headless Chromium with the flags that keep it off the network.
fn headless(
    chromium: &std::path::Path,
    profile: &std::path::Path,
    args: &[&str],
) -> std::process::Output {
    std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .unwrap()
}

pub fn the_report_renders_in_a_browser_with_every_chart() {
    let chromium = std::path::PathBuf::from(CHROMIUM);
    let dir = tempfile::tempdir().unwrap();
    let runs = [dir.path().join("a"), dir.path().join("b")];
    run(&scenario(SMALL, &[]).unwrap(), &runs[0]);
    run(&scenario(SMALL, &["seed=8"]).unwrap(), &runs[1]);
    let html = dir.path().join("report.html");
    let (ok, _, err) = sim(&[
        "report",
        runs[0].to_str().unwrap(),
        runs[1].to_str().unwrap(),
        "--out",
        html.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let url = format!("file://{}", html.display());
    let profile = dir.path().join("profile");
    // The DOM after rendering: every chart's SVG is there and has drawn content.
    let dom = headless(&chromium, &profile, &["--dump-dom", &url]);
    let dom = String::from_utf8_lossy(&dom.stdout);
    let svgs: Vec<&str> = dom.split("<svg").skip(1).collect();
    assert_eq!(svgs.len(), 7, "charts in the DOM");
    for svg in &svgs {
        let body = &svg[..svg.find("</svg>").expect("closed svg")];
        assert!(
            body.contains("<polyline") || body.contains("<rect"),
            "an empty chart"
        );
        assert!(body.contains("<text"), "a chart without text");
    }
    // A screenshot that is not blank: a PNG with more than one colour in it.
    let png = dir.path().join("shot.png");
    let shot = headless(
        &chromium,
        &profile,
        &[
            "--window-size=1000,2400",
            &format!("--screenshot={}", png.display()),
            &url,
        ],
    );
    assert!(png.exists(), "{}", String::from_utf8_lossy(&shot.stderr));
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
    // A blank page compresses to a few kB; charts do not.
    assert!(
        bytes.len() > 30_000,
        "screenshot of {} bytes looks blank",
        bytes.len()
    );
}
