//! Unknown fields are refused everywhere in the scenario schema, by construction: the schema is
//! traced with serde-reflection (every struct, every enum variant), and for a value of each
//! variant a typo is planted in each struct it holds, in the file's RON and in the JSON tree
//! `--set` deserialises. A type added to the schema without being listed here fails the test.

use std::collections::BTreeSet;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_reflection::{Samples, Tracer, TracerConfig};

use fedsim::scenario::file::*;
use fedsim::split::{CutCompression, SplitMode};

const TYPO: &str = "zz_typo";

/// Every index of `text` where a struct's fields start (`(name:`).
fn struct_starts(text: &str) -> Vec<usize> {
    let b = text.as_bytes();
    (0..b.len())
        .filter(|&i| {
            if b[i] != b'(' {
                return false;
            }
            let rest = &text[i + 1..];
            let ident: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            !ident.is_empty()
                && !ident.starts_with(|c: char| c.is_ascii_digit())
                && rest[ident.len()..].starts_with(':')
        })
        .collect()
}

/// Plant the typo into every JSON object of `v` in turn; call `check` with each.
fn json_variants(v: &serde_json::Value, out: &mut Vec<serde_json::Value>) {
    fn walk(
        root: &serde_json::Value,
        path: &mut Vec<String>,
        node: &serde_json::Value,
        out: &mut Vec<serde_json::Value>,
    ) {
        match node {
            serde_json::Value::Object(o) => {
                let mut copy = root.clone();
                let mut at = &mut copy;
                for k in path.iter() {
                    at = &mut at[k.as_str()];
                }
                at.as_object_mut()
                    .unwrap()
                    .insert(TYPO.into(), serde_json::json!(0));
                out.push(copy);
                for (k, child) in o {
                    path.push(k.clone());
                    walk(root, path, child, out);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    walk(v, &mut Vec::new(), v, out);
}

/// Trace `T` (every variant), plant typos, require refusals. Returns how many were planted.
fn refuses_typos<T: Serialize + DeserializeOwned>(tracer: &mut Tracer, samples: &Samples) -> usize {
    let name = std::any::type_name::<T>();
    let (_, values) = tracer
        .trace_type::<T>(samples)
        .unwrap_or_else(|e| panic!("tracing {name}: {e:?}"));
    let mut planted = 0;
    for v in &values {
        let text = ron::to_string(v).unwrap();
        for i in struct_starts(&text) {
            let bad = format!("{}{TYPO}:0,{}", &text[..=i], &text[i + 1..]);
            match ron::from_str::<T>(&bad) {
                Err(e) => assert!(
                    e.to_string().contains(TYPO),
                    "{name}: `{bad}` refused for another reason: {e}"
                ),
                Ok(_) => panic!("{name}: the RON typo in `{bad}` was accepted"),
            }
            planted += 1;
        }
        // Unit-like JSON (a string) holds no struct; objects are where fields go.
        let json = serde_json::to_value(v).unwrap();
        let mut bad = Vec::new();
        json_variants(&json, &mut bad);
        for b in bad {
            // A map keyed by the user (none today) would accept any key; every object here
            // is a struct or a struct variant's fields — except the variant wrapper itself,
            // `{"Variant": {...}}`, where a second key is refused as an invalid enum too.
            assert!(
                serde_json::from_value::<T>(b.clone()).is_err(),
                "{name}: the --set typo in {b} was accepted"
            );
            planted += 1;
        }
    }
    planted
}

macro_rules! schema {
    ($tracer:expr, $samples:expr, $($t:ty),* $(,)?) => {{
        let mut names = BTreeSet::new();
        let mut planted = 0;
        $(
            planted += refuses_typos::<$t>($tracer, $samples);
            names.insert(
                std::any::type_name::<$t>().rsplit("::").next().unwrap().to_string(),
            );
        )*
        (names, planted)
    }};
}

#[test]
fn every_struct_and_variant_of_the_scenario_refuses_unknown_fields() {
    use fedsim::byzantine::{Attackers, ByzantineAttack};
    use fedsim::compress::Compression;
    use fedsim::data::labelled::TableFormat;
    use fedsim::data::{DataSource, Partition};
    use fedsim::devices::{DeviceProfile, Dist, Profiles, Tier};
    use fedsim::eval::task::TaskSource;
    use fedsim::model::{
        BasePrecision, ComputeDtype, InferenceActivations, LlamaConfig, PromptInit, TargetModule,
    };
    use fedsim::privacy::{
        DpSampling, FracSeries, Mechanism, NoiseBy, NoiseDistribution, NoiseSource,
    };
    use fedsim::stragglers::{Staleness, Stragglers};
    use fedsim::topology::{Assignment, Link, NoiseAt, Topology};
    use fedsim::trainer::TrainerKind;

    let mut tracer = Tracer::new(TracerConfig::default());
    let samples = Samples::new();
    let (listed, planted) = schema!(
        &mut tracer,
        &samples,
        ScenarioFile,
        SystemSection,
        ByzantineSection,
        ShortRound,
        DpSection,
        ModelSection,
        ModelSource,
        PromptFormat,
        LoraSection,
        DataSection,
        ClientsSection,
        StrategySection,
        StrategyKind,
        TrainSection,
        SlotsSection,
        WorkersSection,
        SecureAggregation,
        HeScheme,
        TlsSection,
        SlotDevice,
        SlotAssignment,
        Attackers,
        ByzantineAttack,
        DataSource,
        Partition,
        DeviceProfile,
        Dist,
        Profiles,
        Tier,
        LlamaConfig,
        TargetModule,
        BasePrecision,
        InferenceActivations,
        ComputeDtype,
        DpSampling,
        FracSeries,
        Mechanism,
        NoiseSource,
        NoiseBy,
        NoiseDistribution,
        Staleness,
        Stragglers,
        Topology,
        Assignment,
        Link,
        NoiseAt,
        TrainerKind,
        EvalSection,
        TaskSource,
        TableFormat,
        Compression,
        AdapterSection,
        Ia3Section,
        PromptTuningSection,
        PrefixTuningSection,
        PromptInit,
        SplitMode,
        CutCompression,
    );
    // Unchecked: `#[serde(alias)]` fields confuse the tracer's field list (ModelSection's
    // `preset`), not the deserialisation the test exercised; only the names are used.
    let registry = tracer.registry_unchecked();
    let reached: BTreeSet<String> = registry.keys().cloned().collect();
    let missing: Vec<&String> = reached.difference(&listed).collect();
    assert!(
        missing.is_empty(),
        "scenario types not listed in this test (add them): {missing:?}"
    );
    eprintln!("{planted} typos planted over {} types", listed.len());
    assert!(planted > 100, "only {planted} typos planted");
}

#[test]
fn set_refuses_unknown_fields_in_every_section_and_variant_value() {
    let base = crate::util::SMALL;
    for (arg, what) in [
        (
            "strategy.kind=FedAvgM(server_lr: 1.0, momentun: 0.9)",
            "momentun",
        ),
        (
            "strategy.kind={\"FedAdam\":{\"server_lr\":0.1,\"bta1\":0.9}}",
            "bta1",
        ),
        ("strategy.kind=Krum(byzantine: 1, kep: 2)", "kep"),
        (
            "system.byzantine=Some((clients: Share(0.2), attack: SignFlip, extra: 1))",
            "extra",
        ),
        ("train.zz=1", "zz"),
        ("system.zz=1", "zz"),
        ("partition=Dirichlet(alpha: 0.5, beta: 1)", "beta"),
    ] {
        let err = crate::util::scenario(base, &[arg]).unwrap_err().to_string();
        assert!(err.contains(what), "--set {arg}: {err}");
    }
}

/// A scenario with only its required fields.
const MINIMAL: &str =
    r#"(name: "m", rounds: 1, data: (source: Synthetic(records: 100)), clients: (count: 2))"#;

#[test]
fn a_partial_section_gets_the_same_defaults_as_an_omitted_one() {
    let omitted: ScenarioFile = ron::from_str(MINIMAL).unwrap();
    let tree = serde_json::to_value(&omitted).unwrap();
    for section in ["model", "lora", "strategy", "train", "slots", "system"] {
        // The section with one field given (its default value), the rest left out.
        let fields = tree[section].as_object().unwrap();
        let (key, value) = fields.iter().next().unwrap();
        let mut partial = tree.clone();
        partial[section] = serde_json::json!({ key.clone(): value.clone() });
        let partial: ScenarioFile = serde_json::from_value(partial).unwrap();
        assert_eq!(
            partial, omitted,
            "`{section}: ({key}: …)` took other defaults"
        );
        // And in RON, with the section empty.
        let text = MINIMAL.replace("clients:", &format!("{section}: (), clients:"));
        let empty: ScenarioFile = ron::from_str(&text).unwrap();
        assert_eq!(empty, omitted, "`{section}: ()` took other defaults");
    }
}

/// docs/scenario.md shows `path` (default) for each field: every default it
/// states in the scenario's syntax must be the code's.
#[test]
fn the_documented_defaults_are_the_code_s() {
    let readme = std::fs::read_to_string(crate::util::root().join("docs/scenario.md")).unwrap();
    let omitted: ScenarioFile = ron::from_str(MINIMAL).unwrap();
    let tree = serde_json::to_value(&omitted).unwrap();
    // dp's fields have defaults once dp is on (its mechanism is required).
    let with_dp: ScenarioFile = ron::from_str(&MINIMAL.replace(
        "clients:",
        "dp: Some((mechanism: ClientSideFixed(clip_norm: 1.0, noise_multiplier: 1.0))), clients:",
    ))
    .unwrap();
    let dp_tree = serde_json::to_value(&with_dp).unwrap();
    let row = regex::Regex::new(r"(?m)^\| `([a-z_.]+)` \(([^)|]*(?:\)[^)|]*)?)\)").unwrap();
    let mut compared = 0;
    for cap in row.captures_iter(&readme) {
        let (path, doc) = (&cap[1], cap[2].trim().trim_matches('`'));
        let mut at = if path.starts_with("dp.") {
            &dp_tree
        } else {
            &tree
        };
        for k in path.split('.') {
            at = &at[k];
        }
        // The documented value in the scenario's syntax, as the JSON tree holds it.
        let documented: Option<serde_json::Value> = match doc {
            "None" => Some(serde_json::Value::Null),
            d if d.starts_with("Some(") && d.ends_with(')') => {
                serde_json::from_str(&d[5..d.len() - 1]).ok()
            }
            d if d.chars().all(|c| c.is_ascii_alphabetic()) && d != "true" && d != "false" => {
                Some(serde_json::Value::String(d.into()))
            }
            d => serde_json::from_str(d).ok(),
        };
        let Some(documented) = documented else {
            continue; // prose ("cores / slots", "Fixed(laptop)")
        };
        let same = match (documented.as_f64(), at.as_f64()) {
            (Some(a), Some(b)) => a == b,
            // `None` is an absent option, or an enum's unit variant of that name
            // (`compression`).
            _ if documented.is_null() && at.as_str() == Some("None") => true,
            _ => &documented == at,
        };
        assert!(
            same,
            "docs/scenario.md says `{path}` defaults to {doc}; the code says {at}"
        );
        compared += 1;
    }
    assert!(
        compared >= 25,
        "only {compared} documented defaults compared"
    );
}
