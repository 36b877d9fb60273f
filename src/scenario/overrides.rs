//! `--set a.b.c=value`: dotted-path overrides, as the course's Hydra configs allow.
//!
//! The typed file is turned into a JSON tree, the path is walked (unknown keys are errors that
//! list the known ones; a key into an enum variant the file does not select says which one it
//! selects and how to switch), the value is parsed as JSON (`5`, `0.4`, `"x"`,
//! `{"Dirichlet":{"alpha":0.1}}`), else in the scenario's own RON syntax
//! (`Dirichlet(alpha: 0.1)`, `Some(3)`, `None`, `Iid`, `(count: 4)`), else taken as a bare
//! string (`data/x.json`), and the tree is deserialised back into the typed file, so an
//! override is checked like the file.

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
        let value: Value = serde_json::from_str(raw)
            .ok()
            .or_else(|| super::ron_value::parse(raw))
            .unwrap_or_else(|| Value::String(raw.to_string()));
        let keys: Vec<&str> = path.split('.').collect();
        *walk(&mut tree, &keys).map_err(err)? = value;
        // Re-normalise through the typed file so defaults of a newly set section exist for
        // the next override (`--set dp={...} --set dp.max_epsilon=8`).
        let typed = retype(tree, &keys, raw)
            .map_err(|e| err(format!("`{path}` cannot take this value: {e}")))?;
        tree = serde_json::to_value(&typed).expect("a scenario always serialises");
    }
    Ok(serde_json::from_value(tree).expect("checked after each override"))
}

/// The node at `keys` in the scenario tree, or why there is none (an unknown field, a
/// variant the value does not select, a value that is not a section).
fn walk<'a>(tree: &'a mut Value, keys: &[&str]) -> Result<&'a mut Value, String> {
    let mut node = tree;
    for (depth, key) in keys.iter().enumerate() {
        let here = keys[..depth].join(".");
        let obj = match node {
            Value::Object(o) => o,
            other => return Err(not_a_section(&here, key, other)),
        };
        if !obj.contains_key(*key) && is_variant(key) {
            if let Some(selected) = selected_variant(obj) {
                return Err(format!(
                    "`{here}` selects `{selected}`, not `{key}`; switch variants by setting \
                     the whole value, e.g. --set '{here}={key}(…)' with all of its fields"
                ));
            }
        }
        if !obj.contains_key(*key) {
            let known: Vec<&str> = obj.keys().map(String::as_str).collect();
            return Err(format!(
                "unknown field `{key}`{}; known fields: {}",
                if here.is_empty() {
                    String::new()
                } else {
                    format!(" in `{here}`")
                },
                known.join(", ")
            ));
        }
        node = obj.get_mut(*key).expect("checked above");
    }
    Ok(node)
}

/// The tree as a typed file. A string field takes the text as written (`--set name=2024`), as
/// the docs promise for bare strings, when what it parsed as does not fit; the error is the
/// first attempt's.
fn retype(tree: Value, keys: &[&str], raw: &str) -> Result<ScenarioFile, serde_json::Error> {
    match serde_json::from_value::<ScenarioFile>(tree.clone()) {
        Ok(t) => Ok(t),
        Err(e) => {
            let mut as_text = tree;
            let mut at = &mut as_text;
            for key in keys {
                at = &mut at[*key];
            }
            *at = Value::String(raw.to_string());
            serde_json::from_value::<ScenarioFile>(as_text).map_err(|_| e)
        }
    }
}

/// Enum variants are capitalised; fields are snake_case.
fn is_variant(key: &str) -> bool {
    key.chars().next().is_some_and(char::is_uppercase)
}

/// The variant an externally tagged enum value selects (`{"Synthetic": {…}}`).
fn selected_variant(obj: &serde_json::Map<String, Value>) -> Option<&str> {
    match obj.keys().collect::<Vec<_>>()[..] {
        [only] if is_variant(only) => Some(only.as_str()),
        _ => None,
    }
}

/// Why `here` cannot be walked into with `key`.
fn not_a_section(here: &str, key: &str, node: &Value) -> String {
    let here = if here.is_empty() { "<root>" } else { here };
    match node {
        Value::Null => format!(
            "`{here}` is None; set the whole value first, e.g. --set '{here}=Some((…))', \
             then its fields"
        ),
        Value::String(v) if is_variant(v) => format!(
            "`{here}` selects `{v}`, which has no field `{key}`; switch variants by setting the \
             whole value, e.g. --set '{here}={}(…)'",
            if is_variant(key) { key } else { "Variant" }
        ),
        other => format!("`{here}` is not a section with fields (its value is {other})"),
    }
}
