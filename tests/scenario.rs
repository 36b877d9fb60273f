//! Scenario parsing, overrides and validation: each class of bad input names the field.

use std::path::Path;

use fedsim::{Scenario, ScenarioError};

use crate::util::{root, scenario, SMALL};

fn invalid_field(r: Result<Scenario, ScenarioError>) -> (String, String) {
    match r {
        Err(ScenarioError::Invalid { field, message, .. }) => (field, message),
        Err(other) => panic!("expected a field error, got {other}"),
        Ok(_) => panic!("expected a field error, got a valid scenario"),
    }
}

#[test]
fn shipped_scenarios_validate() {
    for name in ["five_clients.ron", "centralized.ron"] {
        let s = Scenario::load(&root().join("scenarios").join(name), &[])
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(s.rounds >= 1);
    }
    let five = Scenario::load(&root().join("scenarios/five_clients.ron"), &[]).unwrap();
    assert_eq!((five.data.clients, five.sampling.sample_size(5)), (5, 2));
}

#[test]
fn syntax_errors_carry_line_and_column() {
    let broken = SMALL.replace("rounds: 4,", "rounds: 4,\n    oops");
    match scenario(&broken, &[]) {
        Err(ScenarioError::Syntax {
            line, col, message, ..
        }) => {
            assert!(line >= 4, "line {line}");
            assert!(col >= 1);
            assert!(!message.is_empty());
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
    let unknown = SMALL.replace("rounds: 4,", "rounds: 4, roundz: 5,");
    let e = scenario(&unknown, &[]).unwrap_err().to_string();
    assert!(e.contains("roundz"), "{e}");
}

#[test]
fn fraction_fit_out_of_range() {
    for bad in ["0.0", "1.5", "-0.1"] {
        let (field, msg) =
            invalid_field(scenario(SMALL, &[&format!("strategy.fraction_fit={bad}")]));
        assert_eq!(field, "strategy.fraction_fit");
        assert!(msg.contains("(0, 1]"), "{msg}");
    }
}

#[test]
fn lora_rank_zero_and_too_large() {
    let (field, msg) = invalid_field(scenario(SMALL, &["lora.r=0"]));
    assert_eq!(field, "lora.r");
    assert!(msg.contains("1..="), "{msg}");
    let (field, _) = invalid_field(scenario(SMALL, &["lora.r=1000"]));
    assert_eq!(field, "lora.r");
}

#[test]
fn unknown_target_module() {
    let (field, msg) = invalid_field(scenario(
        SMALL,
        &[r#"lora.target_modules=["q_proj","qkv_proj"]"#],
    ));
    assert_eq!(field, "lora.target_modules");
    assert!(
        msg.contains("qkv_proj") && msg.contains("gate_proj"),
        "{msg}"
    );
}

#[test]
fn min_fit_clients_above_client_count() {
    let (field, msg) = invalid_field(scenario(SMALL, &["strategy.min_fit_clients=9"]));
    assert_eq!(field, "strategy.min_fit_clients");
    assert!(msg.contains("clients.count"), "{msg}");
}

#[test]
fn missing_data_path() {
    let (field, msg) = invalid_field(scenario(
        SMALL,
        &[r#"data.source={"Alpaca":{"path":"/nonexistent/medalpaca.json"}}"#],
    ));
    assert_eq!(field, "data.source.Alpaca.path");
    assert!(msg.contains("/nonexistent/medalpaca.json"), "{msg}");
}

#[test]
fn other_ranges_are_checked() {
    for (set, field) in [
        ("rounds=0", "rounds"),
        ("data.eval_fraction=1.0", "data.eval_fraction"),
        ("train.lr_min=1.0", "train.lr_min"),
        ("train.batch_size=0", "train.batch_size"),
        ("lora.dropout=1.0", "lora.dropout"),
        ("clients.count=0", "clients.count"),
        ("slots.count=0", "slots.count"),
        (
            r#"partition={"Dirichlet":{"alpha":0.0}}"#,
            "partition.Dirichlet.alpha",
        ),
        ("name=has space", "name"),
    ] {
        let (f, _) = invalid_field(scenario(SMALL, &[set]));
        assert_eq!(f, field, "--set {set}");
    }
}

#[test]
fn overrides_apply_and_are_recorded() {
    let s = scenario(
        SMALL,
        &[
            "rounds=5",
            "clients.count=1000",
            "seed=9",
            "partition.SizeSkew.sigma=1",
        ],
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    // partition is Iid in SMALL, so a path into SizeSkew is unknown: the error lists the fields.
    assert!(s.contains("partition"), "{s}");
    let s = scenario(
        SMALL,
        &[
            "rounds=5",
            "clients.count=100",
            "seed=9",
            r#"partition={"SizeSkew":{"sigma":1.0}}"#,
        ],
    )
    .unwrap();
    assert_eq!((s.rounds, s.data.clients, s.seed), (5, 100, 9));
    let ron = s.to_ron();
    assert!(
        ron.contains("rounds: 5") && ron.contains("count: 100") && ron.contains("SizeSkew"),
        "{ron}"
    );
    // The recorded scenario parses back to the same thing.
    let again = Scenario::from_ron(&ron, Path::new("again.ron"), &[]).unwrap();
    assert_eq!(again.to_ron(), s.to_ron());
}

#[test]
fn bad_overrides_are_rejected() {
    for (set, needle) in [
        ("rounds", "PATH=VALUE"),
        ("roundz=3", "unknown field `roundz`"),
        ("strategy.fraction=0.5", "fraction_fit"),
        ("rounds=many", "rounds"),
    ] {
        match scenario(SMALL, &[set]) {
            Err(ScenarioError::Override { message, .. }) => {
                assert!(message.contains(needle), "{set}: {message}")
            }
            other => panic!("{set}: expected an override error, got {other:?}"),
        }
    }
}

#[test]
fn dp_parameters_are_checked() {
    let dp = |c: &str, z: &str, d: &str| {
        format!(
            r#"dp={{"mechanism":{{"ServerSideFixed":{{"clip_norm":{c},"noise_multiplier":{z}}}}},"delta":{d}}}"#
        )
    };
    for (set, field) in [
        (
            dp("0.5", "0.0", "1e-5"),
            "dp.mechanism.ServerSideFixed.noise_multiplier",
        ),
        (
            dp("0.5", "-1.0", "1e-5"),
            "dp.mechanism.ServerSideFixed.noise_multiplier",
        ),
        (
            dp("0.0", "1.0", "1e-5"),
            "dp.mechanism.ServerSideFixed.clip_norm",
        ),
        (dp("0.5", "1.0", "0.0"), "dp.delta"),
        (dp("0.5", "1.0", "1.0"), "dp.delta"),
    ] {
        let (f, _) = invalid_field(scenario(SMALL, &[&set]));
        assert_eq!(f, field, "{set}");
    }
    let adaptive = |z: &str, sb: &str, q: &str| {
        format!(
            r#"dp={{"mechanism":{{"Adaptive":{{"initial_clip":0.1,"target_quantile":{q},"clip_lr":0.2,"noise_multiplier":{z},"count_stddev":{sb}}}}}}}"#
        )
    };
    let (f, msg) = invalid_field(scenario(SMALL, &[&adaptive("1.0", "0.5", "0.5")]));
    assert_eq!(f, "dp.mechanism.Adaptive.count_stddev");
    assert!(msg.contains("noise_multiplier / 2"), "{msg}");
    let (f, _) = invalid_field(scenario(SMALL, &[&adaptive("1.0", "5.0", "1.0")]));
    assert_eq!(f, "dp.mechanism.Adaptive.target_quantile");
    assert!(scenario(SMALL, &[&adaptive("1.0", "5.0", "0.5")]).is_ok());
    let (f, _) = invalid_field(scenario(
        SMALL,
        &[
            &dp("0.5", "1.0", "1e-5"),
            "dp.pld=true",
            "dp.sampling=Fixed",
        ],
    ));
    assert_eq!(f, "dp.pld");
    let ok = scenario(SMALL, &[&dp("0.5", "1.0", "1e-5")]).unwrap();
    assert!(ok.dp.is_some());
}
