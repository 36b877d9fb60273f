//! Labelled-text sources (FPB latin-1, FinGPT JSONL, CSV with multi-line fields, JSONL), the
//! FPB train/test overlap removal, classification metrics against hand-computed values, the
//! stratified subset, FinGPT's answer parsing, and constrained scoring against the KV-cache
//! continuation scorer on a random model.

use std::collections::BTreeMap;
use std::path::PathBuf;

use fedsim::data::labelled::{self, Classification, LabelSet, TableFormat};
use fedsim::data::DataError;
use fedsim::eval::metrics::{wilson, Confusion, Z95};
use fedsim::eval::task::{parse_generated, Task, TaskSource};

fn write(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fedsim-task-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn message(e: DataError) -> String {
    e.to_string()
}

#[test]
fn fpb_reads_latin1_after_a_byte_order_mark() {
    let mut bytes = b"\xef\xbb\xbfProfit rose 5 % in Espoo@positive\r\n".to_vec();
    bytes.extend_from_slice(
        b"Sales fell at Nokia\xe4s plant@negative\n\nThe firm is based in Turku@neutral\n",
    );
    let rows = labelled::fpb::load(&write("fpb.txt", &bytes)).unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].text, "Profit rose 5 % in Espoo");
    assert_eq!(rows[1].text, "Sales fell at Nokiaäs plant");
    assert_eq!(
        rows.iter().map(|r| r.label.as_str()).collect::<Vec<_>>(),
        ["positive", "negative", "neutral"]
    );
    assert_eq!(rows[2].line, 4);
}

#[test]
fn fpb_errors_name_the_file_and_line() {
    let p = write("bad_label.txt", b"Fine@positive\nBad row@bullish\n");
    let e = message(labelled::fpb::load(&p).unwrap_err());
    assert!(
        e.contains("bad_label.txt") && e.contains("line 2") && e.contains("bullish"),
        "{e}"
    );
    let e = message(labelled::fpb::load(&write("no_at.txt", b"No label here\n")).unwrap_err());
    assert!(e.contains("line 1") && e.contains("@label"), "{e}");
    let e =
        message(labelled::fpb::load(&write("empty.txt", b"ok@neutral\n  @neutral\n")).unwrap_err());
    assert!(e.contains("line 2") && e.contains("empty"), "{e}");
}

#[test]
fn the_fpb_training_split_drops_every_test_sentence_by_normalised_match() {
    let fpb = write(
        "fpb_split.txt",
        b"Profit rose 5 % in Espoo@positive\nSales fell at Nokia\xe4s plant@negative\nSales fell at Nokia\xe4s plant@negative\nThe firm is in Turku@neutral\n",
    );
    // The test split's copy of the second sentence has the character broken, as FinGPT's has.
    let test = write(
        "test.jsonl",
        "{\"context\": \"Instruction: What is the sentiment of this news? Please choose an answer from {negative/neutral/positive}.\\nInput: Sales fell at Nokia+ó s plant\\nAnswer: \", \"target\": \"negative\"}\n"
            .as_bytes(),
    );
    let (kept, removed) = labelled::fpb::train_split(&fpb, &test).unwrap();
    assert_eq!(removed, 2, "both copies of the duplicated sentence");
    assert_eq!(kept.len(), 2);
    assert!(kept.iter().all(|k| !k.text.contains("Nokia")));
}

#[test]
fn fingpt_jsonl_gives_instruction_text_and_label() {
    let p = write(
        "fingpt.jsonl",
        "{\"context\": \"Instruction: What is the sentiment of this tweet? Please choose an answer from {negative/neutral/positive}.\\nInput: $AAPL up 3%\\nAnswer: \", \"target\": \"positive\"}\n"
            .as_bytes(),
    );
    let rows = labelled::fingpt::load(&p).unwrap();
    assert_eq!(rows[0].text, "$AAPL up 3%");
    assert_eq!(rows[0].instruction, labelled::TWEET_INSTRUCTION);
    let r = rows[0].clone().into_record();
    assert_eq!(
        (r.output.as_str(), r.topic.as_str()),
        ("positive", "positive")
    );
    let bad = write(
        "fingpt_bad.jsonl",
        b"{\"context\": \"no parts\", \"target\": \"x\"}\n",
    );
    let e = message(labelled::fingpt::load(&bad).unwrap_err());
    assert!(e.contains("line 1") && e.contains("Instruction"), "{e}");
}

fn tfns_labels() -> BTreeMap<String, String> {
    [("0", "negative"), ("1", "positive"), ("2", "neutral")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn table(path: PathBuf, format: TableFormat) -> Classification {
    Classification {
        path,
        format,
        text: "text".into(),
        label: "label".into(),
        labels: tfns_labels(),
        instruction: None,
    }
}

#[test]
fn csv_reads_quoted_multi_line_fields_and_names_bad_rows() {
    let csv = b"text,label\n$X beats estimates,1\n\"$Y: guidance cut,\nshares slide\",0\n\"plain, quoted\",2\n";
    let rows = table(write("t.csv", csv), TableFormat::Csv).load().unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[1].text, "$Y: guidance cut,\nshares slide");
    assert_eq!(rows[1].label, "negative");
    assert_eq!(
        rows[2].line, 5,
        "the row after a two-line field starts on line 5"
    );
    assert!(rows[0].instruction.contains("{negative/neutral/positive}"));
    let e = message(
        table(
            write("u.csv", b"text,label\nok,1\n\"a\nb\",7\n"),
            TableFormat::Csv,
        )
        .load()
        .unwrap_err(),
    );
    assert!(
        e.contains("u.csv") && e.contains("line 3") && e.contains("\"7\""),
        "{e}"
    );
    let e = message(
        table(write("m.csv", b"tweet,label\nok,1\n"), TableFormat::Csv)
            .load()
            .unwrap_err(),
    );
    assert!(
        e.contains("no column \"text\"") && e.contains("tweet"),
        "{e}"
    );
    let e = message(
        table(
            write("e.csv", b"text,label\nok,1\n  ,2\n"),
            TableFormat::Csv,
        )
        .load()
        .unwrap_err(),
    );
    assert!(e.contains("line 3") && e.contains("empty"), "{e}");
}

#[test]
fn jsonl_tables_take_string_or_number_labels() {
    let p = write(
        "t.jsonl",
        b"{\"text\": \"up\", \"label\": 1}\n{\"text\": \"flat\", \"label\": \"2\"}\n",
    );
    let rows = table(p, TableFormat::Jsonl).load().unwrap();
    assert_eq!(
        rows.iter().map(|r| r.label.as_str()).collect::<Vec<_>>(),
        ["positive", "neutral"]
    );
    let p = write("k.jsonl", b"{\"body\": \"up\", \"label\": 1}\n");
    let e = message(table(p, TableFormat::Jsonl).load().unwrap_err());
    assert!(e.contains("line 1") && e.contains("no key \"text\""), "{e}");
}

#[test]
fn colliding_verbalisers_are_refused() {
    let p = PathBuf::from("labels.csv");
    let map = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    };
    assert!(LabelSet::new(map(&[("0", "neg"), ("1", "negative")]), &p).is_err());
    assert!(LabelSet::new(map(&[("0", "Up"), ("1", "up ")]), &p).is_err());
    assert!(LabelSet::new(map(&[("0", "")]), &p).is_err());
    assert!(LabelSet::new(BTreeMap::new(), &p).is_err());
    let ok = LabelSet::new(map(&[("0", "down"), ("1", "up"), ("bear", "down")]), &p).unwrap();
    assert_eq!(ok.words(), ["down", "up"]);
}

#[test]
fn metrics_match_hand_computed_values() {
    let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    let gold = [0, 0, 0, 1, 1, 2, 2, 2, 2, 2];
    let pred = [0, 1, 0, 1, 2, 2, 2, 0, 2, 1];
    let c = Confusion::from_pairs(labels, &gold, &pred);
    assert_eq!(c.counts, vec![vec![2, 1, 0], vec![0, 1, 1], vec![1, 1, 3]]);
    assert!((c.accuracy() - 0.6).abs() < 1e-12);
    // Per-class F1 2/3, 2/5, 2/3 (scikit-learn's f1_score, average="macro").
    assert!((c.macro_f1() - 0.577_777_777_777_777_8).abs() < 1e-12);
    assert_eq!(c.recall()["a"], Some(2.0 / 3.0));
    assert_eq!(c.recall()["c"], Some(0.6));
    assert!((c.majority() - 0.5).abs() < 1e-12);
    // Wilson intervals (statsmodels' proportion_confint(method="wilson")).
    let [lo, hi] = wilson(81, 100, Z95);
    assert!(
        (lo - 0.722_211_546_209_356_2).abs() < 1e-12
            && (hi - 0.874_852_484_902_312_6).abs() < 1e-12
    );
    let [lo, hi] = wilson(0, 10, Z95);
    assert!(lo == 0.0 && (hi - 0.277_532_799_862_889_2).abs() < 1e-12);
    assert!(wilson(0, 0, Z95)[0].is_nan());
}

fn task(labels_of: &[usize]) -> Task {
    let words: Vec<String> = labelled::SENTIMENT.iter().map(|s| s.to_string()).collect();
    let rows = labels_of
        .iter()
        .enumerate()
        .map(|(i, &l)| labelled::Labelled {
            instruction: labelled::NEWS_INSTRUCTION.into(),
            text: format!("item {i}"),
            label: words[l].clone(),
            line: i + 1,
        })
        .collect();
    Task::from_labelled("t".into(), "t.jsonl".into(), words, rows).unwrap()
}

#[test]
fn the_stratified_subset_keeps_class_shares_and_is_seeded() {
    // 60 neutral, 30 positive, 10 negative.
    let labels: Vec<usize> = (0..100)
        .map(|i| {
            if i < 10 {
                0
            } else if i < 70 {
                1
            } else {
                2
            }
        })
        .collect();
    let t = task(&labels);
    let s = t.stratified(20, 7);
    assert_eq!(s.len(), 20);
    let count = |k| s.iter().filter(|&&i| t.items[i].label == k).count();
    assert_eq!((count(0), count(1), count(2)), (2, 12, 6));
    assert_eq!(s, t.stratified(20, 7));
    assert_ne!(s, t.stratified(20, 8));
    assert_eq!(t.stratified(1000, 7).len(), 100);
    assert!(t.items[0].prompt.ends_with("\nInput: item 0\nAnswer:"));
}

#[test]
fn generated_answers_are_parsed_as_fingpt_does() {
    let w: Vec<String> = labelled::SENTIMENT.iter().map(|s| s.to_string()).collect();
    assert_eq!(parse_generated(" positive", &w), Some(2));
    assert_eq!(
        parse_generated("Negative, not positive", &w),
        Some(2),
        "positive is checked first"
    );
    assert_eq!(
        parse_generated("NEGATIVE", &w),
        Some(1),
        "neither spelling: neutral"
    );
    assert_eq!(parse_generated(" Negative.", &w), Some(0));
    let other: Vec<String> = ["down", "up"].iter().map(|s| s.to_string()).collect();
    assert_eq!(parse_generated("It goes UP", &other), Some(1));
    assert_eq!(parse_generated("sideways", &other), None);
}

#[test]
fn task_sources_refuse_labels_outside_the_classes() {
    let p = write(
        "odd.jsonl",
        "{\"context\": \"Instruction: Q\\nInput: text\\nAnswer: \", \"target\": \"bullish\"}\n"
            .as_bytes(),
    );
    let e = TaskSource::Fpb(p).load().unwrap_err().to_string();
    assert!(
        e.contains("odd.jsonl") && e.contains("line 1") && e.contains("bullish"),
        "{e}"
    );
}

#[test]
fn predictions_from_hand_built_log_probabilities() {
    use fedsim::eval::score::predictions;
    let lp = vec![
        vec![-1.0, -0.5, -3.0],
        vec![-2.0, -2.0, -5.0],
        vec![f64::NEG_INFINITY, -40.0, -41.0],
    ];
    assert_eq!(
        predictions(&lp),
        [1, 0, 1],
        "the largest wins, the first on ties"
    );
    let words: Vec<String> = labelled::SENTIMENT.iter().map(|s| s.to_string()).collect();
    let c = Confusion::from_pairs(words, &[1, 0, 2], &predictions(&lp));
    assert_eq!(c.correct(), 2);
    assert_eq!(c.counts[2][1], 1, "a positive item predicted neutral");
}
