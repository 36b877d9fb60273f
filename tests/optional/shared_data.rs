//! Tests on the real data in `../shared` (MedAlpaca, PubMedQA) — run by the optional harness,
//! which reports them as ignored where `../shared` is missing.

use fedsim::data::alpaca;
use fedsim::eval::pubmedqa::{self, Answer};
use fedsim::model::fetch;

use crate::smollm2::{gguf_path, smollm2_scenario};
use crate::util::{run, scenario, SMALL};

/// A file of `../shared` the harness checked is there.
fn need(rel: &str) -> std::path::PathBuf {
    crate::util::shared(rel).expect("checked by the harness")
}

pub fn medalpaca_loads_5942_records() {
    let path = need("data/medalpaca/medical_meadow_small.json");
    let records = alpaca::load(&path).unwrap();
    assert_eq!(records.len(), 5942);
    assert!(records.iter().all(|r| !r.output.is_empty()));
    let topics: std::collections::BTreeSet<&str> =
        records.iter().map(|r| r.topic.as_str()).collect();
    assert!(topics.len() >= 5, "{topics:?}");
}

pub fn pubmedqa_loads_1000_expert_items_and_the_500_item_test_split() {
    let data = need("data/pubmedqa/ori_pqal.json");
    let items = pubmedqa::load(&data, None).unwrap();
    let count = |a| items.iter().filter(|i| i.answer == a).count();
    assert_eq!(items.len(), 1000);
    assert_eq!(
        (count(Answer::Yes), count(Answer::No), count(Answer::Maybe)),
        (552, 338, 110)
    );
    assert_eq!(format!("{:.3}", pubmedqa::majority_share(&items)), "0.552");
    assert!(items
        .iter()
        .all(|i| !i.question.is_empty() && !i.contexts.is_empty()));
    let split = data.with_file_name("test_ground_truth.json");
    assert_eq!(pubmedqa::load(&data, Some(&split)).unwrap().len(), 500);
    // A file of another shape names itself.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"1": {"QUESTION": "q", "CONTEXTS": [], "final_decision": "perhaps"}}"#,
    )
    .unwrap();
    let err = pubmedqa::load(&bad, None).unwrap_err().to_string();
    assert!(
        err.contains("bad.json") && err.contains("\"perhaps\""),
        "{err}"
    );
}

pub fn medalpaca_dirichlet_run() {
    let path = need("data/medalpaca/medical_meadow_small.json");
    let tmp = tempfile::tempdir().unwrap();
    let source = format!(
        r#"data.source={{"Alpaca":{{"path":{:?},"limit":300}}}}"#,
        path.display().to_string()
    );
    let s = scenario(
        SMALL,
        &[
            &source,
            r#"partition={"Dirichlet":{"alpha":0.5}}"#,
            "rounds=2",
            "data.canaries=0",
        ],
    )
    .unwrap();
    let r = run(&s, &tmp.path().join("med"));
    assert_eq!(r.summary.rounds_completed, 2);
    assert!(
        r.summary.final_eval_loss < r.summary.pretrained_eval_loss,
        "{:?}",
        r.rounds
    );
}

pub fn a_federated_run_on_smollm2_lowers_held_out_loss_and_its_adapter_generates() {
    let data = need("data/medalpaca/medical_meadow_small.json");
    let gguf = gguf_path();
    let s = crate::util::scenario(&smollm2_scenario(&gguf, &data), &[]).unwrap();
    assert_eq!(s.model, fedsim::model::LlamaConfig::smollm2_135m());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let report = crate::util::run(&s, &out);
    let sum = &report.summary;
    assert_eq!(sum.rounds_completed, 2);
    assert!(
        sum.final_eval_loss < sum.pretrained_eval_loss,
        "held-out loss {} -> {}",
        sum.pretrained_eval_loss,
        sum.final_eval_loss
    );
    // The base is named with its checksum, not copied.
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("model.json")).unwrap()).unwrap();
    assert_eq!(
        record["sha256"],
        fetch::known("smollm2-135m-instruct").unwrap().sha256
    );
    assert!(!out.join("base_model").exists());
    // Its adapter loads back (PEFT format) and generates, merged into the base.
    let (ok, stdout, stderr) = crate::util::sim(&[
        "generate",
        "--model",
        gguf.to_str().unwrap(),
        "--adapter",
        out.to_str().unwrap(),
        "--max-tokens",
        "16",
        "What is the capital of France?",
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("Paris"), "{stdout}");
    assert!(stderr.contains("tokens/s"), "{stderr}");
}

pub fn shipped_smollm2_scenarios_validate() {
    gguf_path(); // fetched into the default cache, where the scenarios' known name resolves
    for name in ["smollm2_medical.ron", "smollm2_centralized.ron"] {
        let path = crate::util::root().join("scenarios").join(name);
        let s = fedsim::Scenario::load(&path, &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            s.model,
            fedsim::model::LlamaConfig::smollm2_135m(),
            "{name}"
        );
    }
}

pub fn finance_sources_load_with_their_documented_counts() {
    use fedsim::data::labelled::{fingpt, fpb};
    use fedsim::eval::task::TaskSource;
    let fin = |f: &str| need(&format!("data/finance/{f}"));
    let all = fpb::load(&fin("Sentences_50Agree.txt")).unwrap();
    let count = |rows: &[fedsim::data::labelled::Labelled], l: &str| {
        rows.iter().filter(|r| r.label == l).count()
    };
    assert_eq!(all.len(), 4846);
    assert_eq!(
        (
            count(&all, "neutral"),
            count(&all, "positive"),
            count(&all, "negative")
        ),
        (2879, 1363, 604)
    );
    assert!(
        all[0].text.starts_with("According to Gran"),
        "the byte-order mark is dropped"
    );
    let test = fingpt::load(&fin("fpb_test.jsonl")).unwrap();
    assert_eq!(test.len(), 1212);
    let (train, removed) =
        fpb::train_split(&fin("Sentences_50Agree.txt"), &fin("fpb_test.jsonl")).unwrap();
    // All 1,212 test sentences are found (26 only by normalised match); duplicates go too.
    assert_eq!((train.len(), removed), (3628, 1218));
    let fpb_task = TaskSource::Fpb(fin("fpb_test.jsonl")).load().unwrap();
    let majority = fpb_task
        .items
        .iter()
        .filter(|i| fpb_task.labels[i.label] == "neutral")
        .count();
    assert_eq!((fpb_task.items.len(), majority), (1212, 729));
    assert_eq!(
        TaskSource::Fiqa(fin("fiqa_test.jsonl"))
            .load()
            .unwrap()
            .items
            .len(),
        235
    );
    let tfns = TaskSource::Tfns(fin("tfns_train.csv")).load().unwrap();
    assert_eq!(tfns.items.len(), 9543);
    assert_eq!(
        tfns.items.iter().filter(|i| i.text.contains('\n')).count(),
        184
    );
    assert_eq!(
        TaskSource::Tfns(fin("tfns_valid.csv"))
            .load()
            .unwrap()
            .items
            .len(),
        2388
    );
}

pub fn shipped_finance_scenarios_validate() {
    gguf_path(); // the scenarios name the cached SmolLM2: fetched first, whatever ran before
    let root = crate::util::root();
    for name in [
        "finance_fpb",
        "finance_fpb_centralized",
        "finance_fpb_noniid",
    ] {
        let s = fedsim::Scenario::load(&root.join(format!("scenarios/{name}.ron")), &[]).unwrap();
        let check = s.check_data().unwrap();
        assert_eq!((check.records, check.removed), (3628, 1218), "{name}");
        assert_eq!(s.prompt, fedsim::scenario::file::PromptFormat::FinGpt);
        let e = s.task_eval.as_ref().unwrap();
        assert_eq!(e.task.load().unwrap().items.len(), 1212);
    }
    let study = fedsim::study::Study::load(&root.join("scenarios/finance_study.ron")).unwrap();
    assert_eq!(study.arms.len(), 5);
    assert!(!study.attacks);
}
