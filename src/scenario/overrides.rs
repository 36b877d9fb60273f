//! `--set a.b.c=value`: dotted-path overrides, as the course's Hydra configs allow.
//!
//! The typed file is turned into a JSON tree, the path is walked (unknown keys are errors that
//! list the known ones), the value is parsed as JSON (`5`, `0.4`, `true`, `"x"`,
//! `{"Dirichlet":{"alpha":0.1}}`) or taken as a bare string (`Iid`, `data/x.json`), and the
//! tree is deserialised back into the typed file, so an override is checked like the file.

use serde_json::Value;

use super::{ScenarioError, ScenarioFile};

pub(super) fn apply(
    file: ScenarioFile,
    overrides: &[String],
) -> Result<ScenarioFile, ScenarioError> {
    if overrides.is_empty() {
        return Ok(file);
    }
    let mut tree = serde_json::to_value(&file).expect("a scenario always serialises");
    for arg in overrides {
        let err = |message: String| ScenarioError::Override {
            arg: arg.clone(),
            message,
        };
        let (path, raw) = arg
            .split_once('=')
            .ok_or_else(|| err("expected PATH=VALUE, e.g. --set rounds=5".into()))?;
        let value: Value =
            serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
        let mut node = &mut tree;
        let keys: Vec<&str> = path.split('.').collect();
        for (depth, key) in keys.iter().enumerate() {
            let here = keys[..depth].join(".");
            let obj = match node {
                Value::Object(o) => o,
                _ => {
                    return Err(err(format!(
                        "`{}` is not a section with fields (its value is {node})",
                        if here.is_empty() { "<root>" } else { &here }
                    )))
                }
            };
            if !obj.contains_key(*key) {
                let known: Vec<&String> = obj.keys().collect();
                return Err(err(format!(
                    "unknown field `{key}`{}; known fields: {}",
                    if here.is_empty() {
                        String::new()
                    } else {
                        format!(" in `{here}`")
                    },
                    known
                        .iter()
                        .map(|k| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            node = obj.get_mut(*key).expect("checked above");
        }
        *node = value;
        // Re-normalise through the typed file so defaults of a newly set section exist for
        // the next override (`--set dp={...} --set dp.max_epsilon=8`).
        let typed = serde_json::from_value::<ScenarioFile>(tree)
            .map_err(|e| err(format!("`{path}` cannot take this value: {e}")))?;
        tree = serde_json::to_value(&typed).expect("a scenario always serialises");
    }
    Ok(serde_json::from_value(tree).expect("checked after each override"))
}
