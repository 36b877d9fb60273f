//! Directories fedsim writes are owned: locked while written, reused only when fedsim's marker
//! says they hold an unfinished run of the same scenario, never deleted otherwise; a closed
//! standard output ends a command quietly.

use std::path::Path;
use std::process::{Command, Stdio};

use fedsim::report::{DirKind, Marker, RunDir};

use crate::util::{run, run_args, scenario, sim, small_file, SMALL};

fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let bytes = std::fs::read(e.path()).unwrap_or_default();
            (e.file_name().to_string_lossy().into_owned(), bytes)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_locked_directory_is_refused_naming_its_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let scen = small_file(tmp.path());
    let out = tmp.path().join("run");
    let s = scenario(SMALL, &[]).unwrap();
    let claim = RunDir::claim(Some(&out), &fedsim::sim::run_marker(&s)).unwrap();
    let (ok, _, err) = sim(&run_args(
        scen.to_str().unwrap(),
        out.to_str().unwrap(),
        &[],
    ));
    let pid = std::process::id().to_string();
    assert!(
        !ok && err.contains("is in use by fedsim process") && err.contains(&pid),
        "{err}"
    );
    // A second claim in this process is refused too (the lock is per open file).
    let again = RunDir::claim(Some(&out), &fedsim::sim::run_marker(&s)).unwrap_err();
    assert!(again.to_string().contains("in use"), "{again}");
    // A claim dropped before its run began leaves no directory behind.
    drop(claim);
    assert!(!out.exists());
}

#[test]
fn peft_folders_corrupt_runs_and_other_scenarios_are_refused_and_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let scen = small_file(tmp.path());
    let run_into = |out: &Path, set: &str| {
        sim(&run_args(
            scen.to_str().unwrap(),
            out.to_str().unwrap(),
            &["--set", set, "-q"],
        ))
    };
    // A PEFT adapter folder is not a run directory.
    let peft = tmp.path().join("peft");
    std::fs::create_dir(&peft).unwrap();
    std::fs::write(peft.join("adapter_model.safetensors"), b"weights").unwrap();
    std::fs::write(peft.join("adapter_config.json"), b"{}").unwrap();
    let before = listing(&peft);
    let (ok, _, err) = run_into(&peft, "rounds=1");
    assert!(!ok && err.contains("fedsim did not create it"), "{err}");
    assert_eq!(listing(&peft), before, "the PEFT folder is untouched");
    // A finished run whose summary.json is corrupt is refused, not wiped.
    let done = tmp.path().join("done");
    run(&scenario(SMALL, &["rounds=1"]).unwrap(), &done);
    std::fs::write(done.join("summary.json"), b"{ not json").unwrap();
    let before = listing(&done);
    let (ok, _, err) = run_into(&done, "rounds=1");
    assert!(!ok && err.contains("summary.json cannot be read"), "{err}");
    assert_eq!(listing(&done), before, "the corrupt run is untouched");
    // A fedsim marker that is not readable is refused too.
    std::fs::write(done.join(fedsim::report::MARKER_FILE), b"?").unwrap();
    let (ok, _, err) = run_into(&done, "rounds=1");
    assert!(!ok && err.contains("not a fedsim marker"), "{err}");
}

#[test]
fn sweep_study_and_report_never_overwrite_an_input() {
    let tmp = tempfile::tempdir().unwrap();
    let scen = small_file(tmp.path());
    let done = tmp.path().join("done");
    run(&scenario(SMALL, &["rounds=1"]).unwrap(), &done);
    let before = listing(&done);
    let (ok, _, err) = sim(&[
        "sweep",
        scen.to_str().unwrap(),
        "--vary",
        "seed=1,2",
        "--out",
        done.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("holds a fedsim run"), "{err}");
    // A sweep directory cannot be taken for a run either.
    let marked = tmp.path().join("sweep");
    let dir = RunDir::create(Some(&marked), &Marker::new(DirKind::Sweep, "s")).unwrap();
    std::fs::create_dir(marked.join("00-seed=1")).unwrap();
    drop(dir);
    let (ok, _, err) = sim(&run_args(
        scen.to_str().unwrap(),
        marked.to_str().unwrap(),
        &[],
    ));
    assert!(!ok && err.contains("holds a fedsim sweep"), "{err}");
    // report --out onto an input's file, or onto a directory, is refused.
    let summary = done.join("summary.json");
    for target in [summary.as_path(), done.as_path()] {
        let (ok, _, err) = sim(&[
            "report",
            done.to_str().unwrap(),
            "--out",
            target.to_str().unwrap(),
        ]);
        assert!(!ok && err.contains(&target.display().to_string()), "{err}");
    }
    assert_eq!(listing(&done), before, "the run is untouched");
    // An earlier report is replaced.
    let page = tmp.path().join("report.html");
    for _ in 0..2 {
        let (ok, _, err) = sim(&[
            "report",
            done.to_str().unwrap(),
            "--out",
            page.to_str().unwrap(),
        ]);
        assert!(ok, "{err}");
    }
}

#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sim"))
        .args([
            "privacy",
            "epsilon",
            "--noise-multiplier",
            "1.0",
            "--sampling-rate",
            "0.1",
            "--rounds",
            "10",
            "--delta",
            "1e-5",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before the command writes anything (`| head -0`).
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {err}", out.status);
    assert!(!err.contains("panicked"), "{err}");
}
