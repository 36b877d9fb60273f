//! The code's shape, checked: the library mutates no process-wide state (only the `sim`
//! binary's `main` sets an environment variable, before any thread starts), and no source
//! file outgrows one concept.

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

fn library_sources() -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    sources(&crate::util::root().join("src"), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect()
}

#[test]
fn only_main_sets_environment_variables() {
    for (path, text) in library_sources() {
        if path.ends_with("src/main.rs") {
            continue;
        }
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            assert!(
                !code.contains("set_var(") && !code.contains("remove_var("),
                "{}:{}: the library sets a process-wide variable: {line}",
                path.display(),
                i + 1
            );
        }
    }
}

#[test]
fn no_source_file_outgrows_one_concept() {
    // ~500 lines, with a little slack for a file at the edge.
    const MAX_LINES: usize = 520;
    let long: Vec<String> = library_sources()
        .into_iter()
        .filter(|(_, t)| t.lines().count() > MAX_LINES)
        .map(|(p, t)| format!("{}: {} lines", p.display(), t.lines().count()))
        .collect();
    assert!(long.is_empty(), "split these: {long:?}");
}
