//! The documentation shows today's CLI: every `sim …` command line in README.md and docs/
//! (in code blocks, after an optional `$ `, `cargo run --release --`, a `/usr/bin/time …`
//! prefix or a path to the binary) parses.

use std::path::PathBuf;

/// The `sim` arguments of a documented command line, if it is one: `sim …` (or a path to the
/// binary), `cargo run --release -- …`, optionally after `$ `, environment assignments, or
/// `time`/`/usr/bin/time -f FORMAT`/`timeout N`.
fn sim_args(line: &str) -> Option<Vec<String>> {
    let line = line.trim().trim_start_matches("$ ");
    let words = shlex::split(line)?;
    let mut at = 0;
    while let Some(w) = words.get(at) {
        let env = w.split_once('=').is_some_and(|(k, _)| {
            !k.is_empty() && k.chars().all(|c| c.is_ascii_uppercase() || c == '_')
        });
        match w.as_str() {
            _ if env => at += 1,
            "time" => at += 1,
            "/usr/bin/time" => {
                at += if words.get(at + 1).is_some_and(|f| f == "-f") {
                    3
                } else {
                    1
                }
            }
            "timeout" => at += 2,
            _ => break,
        }
    }
    let first = words.get(at)?;
    let start = if first == "sim" || first.ends_with("/sim") {
        at + 1
    } else if first == "cargo" && words.get(at + 1).is_some_and(|w| w == "run") {
        at + words[at..].iter().position(|w| w == "--")? + 1
    } else {
        return None;
    };
    let args = &words[start..];
    // A pipe, a redirection or a second command ends it.
    let end = args
        .iter()
        .position(|a| a == "|" || a.starts_with('>') || a == "&&" || a == "2>&1" || a == ";")
        .unwrap_or(args.len());
    (end > 0).then(|| args[..end].to_vec())
}

/// Every code-block line of the README and the docs, joined across `\` continuations.
fn documented_lines() -> Vec<(PathBuf, usize, String)> {
    let root = crate::util::root();
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let mut in_code = false;
        let mut pending: Option<(usize, String)> = None;
        for (i, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("```") {
                in_code = !in_code;
                continue;
            }
            if !in_code {
                continue;
            }
            let (start, mut joined) = pending.take().unwrap_or((i + 1, String::new()));
            joined.push_str(line.trim_end().trim_end_matches('\\'));
            if line.trim_end().ends_with('\\') {
                joined.push(' ');
                pending = Some((start, joined));
            } else {
                out.push((f.clone(), start, joined));
            }
        }
    }
    out
}

#[test]
fn every_documented_sim_command_line_parses_with_todays_cli() {
    let mut checked = 0;
    let mut bad = Vec::new();
    for (file, line, text) in documented_lines() {
        let Some(args) = sim_args(&text) else {
            continue;
        };
        // Placeholders in usage lines are not commands.
        if args.iter().any(|a| a.contains('…') || a == "...") {
            continue;
        }
        checked += 1;
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sim"))
            .args(&args)
            .arg("--parse-only")
            .output()
            .unwrap();
        if !out.status.success() {
            bad.push(format!(
                "{}:{line}: sim {}\n{}",
                file.display(),
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    assert!(checked >= 40, "only {checked} command lines found");
}

/// Every sample output (a code block that starts with a `$ ` command) says how
/// `scripts/regen_docs.py` regenerates it: `<!-- regen: quick -->`, `slow` (the real model),
/// optionally `; stdout` and `; setup: COMMANDS`, or `manual; why: REASON` — so no output in
/// the docs is typed by hand or left behind by a change.
#[test]
fn every_sample_output_is_regenerated_by_the_script() {
    let root = crate::util::root();
    let mut files = vec![root.join("README.md")];
    for e in std::fs::read_dir(root.join("docs")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "md") {
            files.push(p);
        }
    }
    let script = std::fs::read_to_string(root.join("scripts/regen_docs.py")).unwrap();
    assert!(
        script.contains("<!-- regen: (quick|slow|manual)(; stdout)?"),
        "the script's marker changed"
    );
    let (mut samples, mut bad) = (0, Vec::new());
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let mut in_code = false;
        for (i, line) in lines.iter().enumerate() {
            if !line.starts_with("```") {
                continue;
            }
            in_code = !in_code;
            if !in_code || !lines.get(i + 1).is_some_and(|l| l.starts_with("$ ")) {
                continue;
            }
            samples += 1;
            let marker = lines[..i].iter().rev().find(|l| !l.trim().is_empty());
            let ok = marker.is_some_and(|m| {
                let Some(inner) = m
                    .strip_prefix("<!-- regen: ")
                    .and_then(|m| m.strip_suffix(" -->"))
                else {
                    return false;
                };
                let (kind, rest) = inner.split_once("; ").unwrap_or((inner, ""));
                let rest = rest
                    .strip_prefix("stdout")
                    .map_or(rest, |r| r.strip_prefix("; ").unwrap_or(r));
                match kind {
                    "quick" | "slow" => rest.is_empty() || rest.starts_with("setup: "),
                    "manual" => rest.starts_with("why: ") && rest.len() > 10,
                    _ => false,
                }
            });
            if !ok {
                bad.push(format!("{}:{}", f.display(), i + 1));
            }
        }
    }
    assert!(samples >= 25, "only {samples} sample outputs found");
    assert!(
        bad.is_empty(),
        "sample outputs without a regen marker: {bad:?}"
    );
}
