//! Inputs that used to be accepted and then gave wrong results, or failed late: unknown fields
//! at every nesting level, `--set` in the scenario's own syntax, limits `validate` checks, and
//! what only the data can tell.

use fedsim::ScenarioError;

use crate::util::{scenario, SMALL};

/// SMALL with its `model.source` replaced by `preset`.
fn with_model(preset: &str) -> String {
    let start = SMALL.find("model: (source: Custom((").unwrap();
    let end = start + SMALL[start..].find(")))").unwrap() + 3;
    format!(
        "{}model: (source: {preset}){}",
        &SMALL[..start],
        &SMALL[end..]
    )
}

/// The scenario with `from` replaced by `to` must be refused, naming `typo`.
fn rejects(from: &str, to: &str) {
    let text = SMALL.replace(from, to);
    assert_ne!(text, SMALL, "{from:?} is not in the scenario");
    match scenario(&text, &[]) {
        Err(ScenarioError::Syntax { message, line, .. }) => {
            assert!(message.contains("typo"), "{message}");
            assert!(line >= 1);
        }
        Err(other) => panic!("expected a syntax error naming the field, got {other}"),
        Ok(_) => panic!("an unknown field in {to:?} was accepted"),
    }
}

macro_rules! unknown_field {
    ($($name:ident: $from:expr => $to:expr;)*) => {
        $(
            #[test]
            fn $name() {
                rejects($from, $to);
            }
        )*
    };
}

const DP_SOME: &str = "slots: (count: 1),\n    dp: Some((mechanism: ";

unknown_field! {
    unknown_field_at_top_level: "rounds: 4," => "rounds: 4, typo: 1,";
    unknown_field_in_model: "model: (source:" => "model: (typo: 1, source:";
    unknown_field_in_custom_model: "tie_word_embeddings: false," => "tie_word_embeddings: false, typo: 1,";
    unknown_field_in_lora: "lora: (r: 4," => "lora: (typo: 1, r: 4,";
    unknown_field_in_data: "eval_fraction: 0.15," => "eval_fraction: 0.15, typo: 1,";
    unknown_field_in_synthetic: "Synthetic(records: 240)" => "Synthetic(records: 240, typo: 1)";
    unknown_field_in_alpaca: "Synthetic(records: 240)" => "Alpaca(path: \"x.json\", typo: 5)";
    unknown_field_in_dirichlet: "partition: Iid," => "partition: Dirichlet(alpha: 0.5, typo: 1),";
    unknown_field_in_size_skew: "partition: Iid," => "partition: SizeSkew(sigma: 1.0, typo: 1),";
    unknown_field_in_clients: "clients: (count: 4)" => "clients: (count: 4, typo: 1)";
    unknown_field_in_strategy: "strategy: (kind: FedAvg," => "strategy: (typo: 1, kind: FedAvg,";
    unknown_field_in_train: "train: (local_steps" => "train: (typo: 1, local_steps";
    unknown_field_in_slots: "slots: (count: 1)" => "slots: (count: 1, typo: 1)";
    unknown_field_in_dp: "slots: (count: 1)," =>
        "slots: (count: 1),\n    dp: Some((mechanism: ClientSideFixed(clip_norm: 0.5, noise_multiplier: 1.0), typo: 1)),";
    unknown_field_in_client_side_fixed: "slots: (count: 1)," =>
        &format!("{DP_SOME}ClientSideFixed(clip_norm: 0.5, noise_multiplier: 1.0, typo: 1))),");
    unknown_field_in_server_side_fixed: "slots: (count: 1)," =>
        &format!("{DP_SOME}ServerSideFixed(clip_norm: 0.5, noise_multiplier: 1.0, typo: 1))),");
    unknown_field_in_adaptive: "slots: (count: 1)," =>
        &format!("{DP_SOME}Adaptive(initial_clip: 0.1, target_quantile: 0.5, clip_lr: 0.2, noise_multiplier: 1.0, count_stddev: 1.0, typo: 1))),");
}

#[test]
fn unknown_field_in_tiny_model() {
    let text = with_model("Tiny(vocab_size: 400, typo: 1)");
    let e = scenario(&text, &[]).unwrap_err().to_string();
    assert!(e.contains("typo"), "{e}");
    // And the same file without the typo is fine.
    let ok = text.replace(", typo: 1", "");
    scenario(&ok, &[]).unwrap();
}

#[test]
fn set_takes_the_scenarios_own_syntax() {
    let s = scenario(
        SMALL,
        &[
            "partition=Dirichlet(alpha: 0.1)",
            "train.local_steps=Some(3)",
            "clients=(count: 3)",
            "strategy.min_fit_clients=1",
            "strategy.min_available_clients=1",
            "dp=Some((mechanism: ServerSideFixed(clip_norm: 0.5, noise_multiplier: 1.0)))",
            "dp.delta=1e-6",
            "name=with-dash_and.dot",
        ],
    )
    .unwrap();
    assert_eq!(
        s.data.partition,
        fedsim::data::Partition::Dirichlet { alpha: 0.1 }
    );
    assert_eq!(s.local.steps, Some(3));
    assert_eq!(s.data.clients, 3);
    assert_eq!(s.dp.as_ref().unwrap().delta, 1e-6);
    assert_eq!(s.name, "with-dash_and.dot");
    // `None` switches local steps off; JSON still works.
    let s = scenario(
        SMALL,
        &[
            "train.local_steps=None",
            r#"partition={"SizeSkew":{"sigma":0.5}}"#,
        ],
    )
    .unwrap();
    assert_eq!(s.local.steps, None);
    assert_eq!(
        s.data.partition,
        fedsim::data::Partition::SizeSkew { sigma: 0.5 }
    );
    // An override carries unknown fields to the same check as the file.
    let e = scenario(SMALL, &["partition=Dirichlet(alpah: 0.1)"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("alpah"), "{e}");
}

#[test]
fn set_into_a_variant_the_file_does_not_select_says_how_to_switch() {
    let e = scenario(SMALL, &["data.source.Alpaca.path=x.json"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("selects `Synthetic`") && e.contains("data.source=Alpaca("),
        "{e}"
    );
    let e = scenario(SMALL, &["partition.Dirichlet.alpha=0.1"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("selects `Iid`") && e.contains("partition=Dirichlet("),
        "{e}"
    );
    let e = scenario(SMALL, &["dp.delta=1e-6"]).unwrap_err().to_string();
    assert!(e.contains("`dp` is None") && e.contains("dp=Some("), "{e}");
}

fn field_error(set: &[&str]) -> (String, String) {
    match scenario(SMALL, set) {
        Err(ScenarioError::Invalid { field, message, .. }) => (field, message),
        Err(other) => panic!("{set:?}: expected a field error, got {other}"),
        Ok(_) => panic!("{set:?}: accepted"),
    }
}

#[test]
fn validate_refuses_what_the_machine_cannot_hold() {
    let (field, msg) = field_error(&["model.source.Custom.max_position_embeddings=1000000000000"]);
    assert_eq!(
        field, "model.source.Custom.max_position_embeddings",
        "{msg}"
    );
    assert!(msg.contains("at most"), "{msg}");
    let (field, msg) = field_error(&[
        "model.source.Custom.hidden_size=65536",
        "model.source.Custom.intermediate_size=262144",
        "model.source.Custom.num_hidden_layers=1000",
    ]);
    assert_eq!(field, "model.source", "{msg}");
    assert!(msg.contains("GiB") || msg.contains("TiB"), "{msg}");
    assert!(msg.contains("available"), "{msg}");
    let (field, msg) = field_error(&[
        "train.batch_size=4096",
        "data.max_seq_len=256",
        "model.source.Custom.vocab_size=4000000",
        "model.source.Custom.hidden_size=64",
    ]);
    assert!(
        field.starts_with("train.batch_size") || field == "model.source",
        "{field}: {msg}"
    );
}

#[test]
fn validate_refuses_names_too_long_for_a_file_name() {
    let (field, msg) = field_error(&[&format!("name={}", "a".repeat(300))]);
    assert_eq!(field, "name");
    assert!(msg.contains("300 bytes"), "{msg}");
}

#[test]
fn validate_refuses_too_few_records_for_the_clients() {
    let (field, msg) = field_error(&[
        "data.source.Synthetic.records=10",
        "clients.count=100",
        "strategy.min_fit_clients=1",
        "strategy.min_available_clients=1",
    ]);
    assert_eq!(field, "data.source.Synthetic.records");
    assert!(msg.contains("100 clients"), "{msg}");
}

#[test]
fn numbers_in_messages_are_compact() {
    let (_, msg) = field_error(&["train.lr_max=1e300"]);
    assert!(msg.contains("1e300") && msg.len() < 200, "{msg}");
}

#[test]
fn tiny_noise_multipliers_are_refused_not_reported_as_infinite_epsilon() {
    let (field, msg) = field_error(&[
        crate::util::DP,
        "dp.mechanism.ClientSideFixed.noise_multiplier=1e-300",
    ]);
    assert_eq!(field, "dp.mechanism.ClientSideFixed.noise_multiplier");
    assert!(msg.contains("1e-6"), "{msg}");
    let (field, _) = field_error(&[crate::util::DP, "dp.pld=true", "dp.delta=1e-300"]);
    assert_eq!(field, "dp.delta");
}

#[test]
fn check_data_finds_a_vocabulary_the_corpus_cannot_yield() {
    let text = with_model("Tiny(vocab_size: 60000)");
    let s = scenario(&text, &[]).unwrap();
    match s.check_data() {
        Err(ScenarioError::Invalid { field, message, .. }) => {
            assert_eq!(field, "model.source.Tiny.vocab_size");
            assert!(message.contains("yields only"), "{message}");
        }
        other => panic!("expected a vocabulary error, got {other:?}"),
    }
    let ok = scenario(&text.replace("60000", "400"), &[]).unwrap();
    let d = ok.check_data().unwrap();
    assert_eq!(
        (d.records, d.train + d.eval, d.vocab),
        (240, 240, Some(400))
    );
}

#[test]
fn check_data_reads_alpaca_files_with_a_bom_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bom.json");
    let rows: Vec<String> = (0..20)
        .map(|i| format!(r#"{{"instruction": "q{i}", "input": "", "output": "a{i}"}}"#))
        .collect();
    std::fs::write(&p, format!("\u{feff}[{}]", rows.join(","))).unwrap();
    let src = format!("data.source=Alpaca(path: \"{}\")", p.display());
    let s = scenario(SMALL, &[&src]).unwrap();
    let d = s.check_data().unwrap();
    assert_eq!(d.records, 20);
    // 20 records, 3 held out: 17 cannot serve 30 clients — found by validate, not the run.
    let s = scenario(
        SMALL,
        &[
            &src,
            "clients.count=30",
            "strategy.min_fit_clients=1",
            "strategy.min_available_clients=1",
        ],
    )
    .unwrap();
    match s.check_data() {
        Err(ScenarioError::Invalid { field, message, .. }) => {
            assert_eq!(field, "clients.count");
            assert!(message.contains("30 clients"), "{message}");
        }
        other => panic!("expected a client-count error, got {other:?}"),
    }
}

#[test]
fn oversubscribed_slots_are_a_warning_with_the_measured_cost() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = format!("slots.threads_per_slot=Some({cores})");
    let s = scenario(SMALL, &["slots.count=2", &threads]).unwrap();
    assert!(
        s.warnings
            .iter()
            .any(|w| w.contains("oversubscribed") && w.contains("slower")),
        "{:?}",
        s.warnings
    );
    assert!(scenario(SMALL, &[]).unwrap().warnings.is_empty());
}

#[test]
fn preparation_reports_progress_for_every_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let s = scenario(SMALL, &["rounds=1"]).unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    let progress: fedsim::sim::ProgressFn = Box::new(move |p| {
        if let fedsim::sim::Progress::Stage { stage, done, total } = p {
            sink.lock().unwrap().push((stage.to_string(), done, total));
        }
    });
    crate::util::run_full(
        &s,
        tmp.path(),
        fedsim::Shutdown::never(),
        None,
        Some(progress),
    )
    .unwrap();
    let seen = seen.lock().unwrap();
    for stage in [
        "generating records",
        "partitioning",
        "training the tokenizer",
        "tokenising",
    ] {
        assert!(
            seen.iter().any(|(s, d, t)| s == stage && d == t),
            "{stage} never finished: {seen:?}"
        );
    }
}

/// The longest run of digits in `text`.
fn longest_digit_run(text: &str) -> usize {
    text.split(|c: char| !c.is_ascii_digit())
        .map(str::len)
        .max()
        .unwrap_or(0)
}

#[test]
fn every_float_field_set_to_an_extreme_is_refused_or_accepted_in_compact_words() {
    // Every floating-point setting of every shipped scenario, set to ±1e300 and 1e-300 in
    // turn: whatever validation says about it shows the number as the user would write it,
    // never as 300 digits.
    fn floats(v: &serde_json::Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        match v {
            serde_json::Value::Number(n) if n.is_f64() => out.push(path.clone()),
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    path.push(k.clone());
                    floats(x, path, out);
                    path.pop();
                }
            }
            serde_json::Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    path.push(i.to_string());
                    floats(x, path, out);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    let (mut checked, mut long) = (0, Vec::new());
    for entry in std::fs::read_dir(crate::util::root().join("scenarios")).unwrap() {
        let path = entry.unwrap().path();
        let Ok(s) = fedsim::Scenario::load(&path, &[]) else {
            continue; // a scenario whose data is not here
        };
        let file: fedsim::scenario::ScenarioFile = ron::from_str(&s.to_ron()).unwrap();
        let tree = serde_json::to_value(&file).unwrap();
        let mut leaves = Vec::new();
        floats(&tree, &mut Vec::new(), &mut leaves);
        for leaf in &leaves {
            for extreme in [1e300, -1e300, 1e-300] {
                let mut t = tree.clone();
                let mut at = &mut t;
                for k in leaf {
                    at = match at {
                        serde_json::Value::Object(m) => m.get_mut(k).unwrap(),
                        serde_json::Value::Array(a) => &mut a[k.parse::<usize>().unwrap()],
                        _ => unreachable!(),
                    };
                }
                *at = serde_json::json!(extreme);
                let Ok(file) = serde_json::from_value(t) else {
                    continue;
                };
                checked += 1;
                if let Err(e) = fedsim::Scenario::from_file(file, &path, &[]) {
                    let msg = fedsim::fmt::chain(&e);
                    if longest_digit_run(&msg) > 20 || msg.contains("inf") {
                        long.push(format!("{} = {extreme:e}: {msg}", leaf.join(".")));
                    }
                }
            }
        }
    }
    long.sort();
    long.dedup();
    assert!(long.is_empty(), "{}", long.join("\n"));
    assert!(checked > 100, "only {checked} settings checked");
}
