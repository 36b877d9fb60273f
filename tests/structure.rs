//! The code's shape, checked: the library mutates no process-wide state (only the `sim`
//! binary's `main` sets an environment variable, before any thread starts), no test hides
//! where `cargo test` never runs it, and no source file outgrows one concept.

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
fn no_test_hides_in_the_library() {
    // Cargo.toml builds no test harness for the library or the binary (`test = false`): a
    // `#[cfg(test)]` module there would compile under `cargo test --lib` only and never run
    // under README's command. Tests live in tests/.
    let hidden: Vec<String> = library_sources()
        .into_iter()
        .filter(|(_, t)| {
            t.lines()
                .any(|l| l.trim_start().starts_with("#[cfg(test)]"))
        })
        .map(|(p, _)| p.display().to_string())
        .collect();
    assert!(hidden.is_empty(), "move these tests to tests/: {hidden:?}");
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

/// The top-level library modules each source file of `module` names in code (`crate::x`),
/// comments and doc links left out.
fn module_graph() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let src = crate::util::root().join("src");
    let mut graph = std::collections::BTreeMap::<String, std::collections::BTreeSet<String>>::new();
    for (path, text) in library_sources() {
        let rel = path.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if ["main", "cli", "lib"].contains(&top.as_str()) {
            continue;
        }
        let deps = graph.entry(top.clone()).or_default();
        for line in text.lines() {
            let code = line.split("//").next().unwrap_or("");
            for part in code.split("crate::").skip(1) {
                let name: String = part
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
                    .collect();
                if !name.is_empty() && name != top {
                    deps.insert(name);
                }
            }
        }
    }
    graph
}

#[test]
fn the_library_modules_import_no_circle() {
    let graph = module_graph();
    // Depth-first search for a back edge, reporting the circle it closes.
    fn visit(
        v: &str,
        graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut std::collections::BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == v) {
            let mut circle = path[at..].to_vec();
            circle.push(v.to_string());
            return Some(circle);
        }
        if done.contains(v) {
            return None;
        }
        path.push(v.to_string());
        for w in graph.get(v).into_iter().flatten() {
            if graph.contains_key(w) {
                if let Some(c) = visit(w, graph, path, done) {
                    return Some(c);
                }
            }
        }
        path.pop();
        done.insert(v.to_string());
        None
    }
    let mut done = std::collections::BTreeSet::new();
    for v in graph.keys() {
        if let Some(circle) = visit(v, &graph, &mut Vec::new(), &mut done) {
            panic!("import circle: {}", circle.join(" → "));
        }
    }
    // The leaves import nothing of the crate.
    for leaf in ["ids", "hash", "fmt", "rng"] {
        assert!(graph[leaf].is_empty(), "{leaf} imports {:?}", graph[leaf]);
    }
}

/// Functions longer than this many lines, from a line `fn …` to its closing brace at the same
/// indentation.
const MAX_FN_LINES: usize = 70;

#[test]
fn no_function_outgrows_a_screen() {
    let root = crate::util::root();
    let mut long = Vec::new();
    for (path, text) in library_sources() {
        let rel = path.strip_prefix(&root).unwrap().display().to_string();
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        while i < lines.len() {
            let line = lines[i];
            let indent = &line[..line.len() - line.trim_start().len()];
            let t = line.trim_start();
            let t = t
                .strip_prefix("pub(super) ")
                .or_else(|| t.strip_prefix("pub(crate) "))
                .or_else(|| t.strip_prefix("pub "))
                .unwrap_or(t);
            let t = t.strip_prefix("async ").unwrap_or(t);
            let t = t.strip_prefix("const ").unwrap_or(t);
            if let Some(rest) = t.strip_prefix("fn ") {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                let close = format!("{indent}}}");
                if !line.trim_end().ends_with(';') {
                    let end = (i + 1..lines.len())
                        .find(|&j| lines[j] == close)
                        .unwrap_or(lines.len() - 1);
                    if end - i + 1 > MAX_FN_LINES {
                        long.push(format!("{rel}::{name}"));
                    }
                    i = end;
                }
            }
            i += 1;
        }
    }
    long.sort();
    assert!(
        long.is_empty(),
        "functions over {MAX_FN_LINES} lines: {long:?}"
    );
}

/// A module's children import their siblings (`super::sibling::Item`), never items of the
/// parent file: the parent is the map, its children hold the concepts. Checked where it was
/// once broken, the server's round (issue 18): the actor forwards to a round driver, so no
/// child asks which driver runs (`is_async`) and none holds an `unreachable!`.
#[test]
fn the_server_children_import_siblings_only() {
    let dir = crate::util::root().join("src/actors/server");
    let siblings: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(siblings.len() > 3, "{siblings:?}");
    for (path, text) in library_sources() {
        if !path.starts_with(&dir) {
            continue;
        }
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let at = format!("{}:{}", path.display(), i + 1);
            assert!(
                !code.contains("is_async"),
                "{at}: asks which driver runs: {line}"
            );
            assert!(!code.contains("unreachable!"), "{at}: {line}");
            for part in code.split("super::").skip(1) {
                let name: String = part
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    siblings.contains(&name),
                    "{at}: imports `super::{name}` from the parent file: {line}"
                );
            }
        }
    }
}
