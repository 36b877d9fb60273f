//! Data: MedAlpaca loader, partitioners, canaries, held-out split, tokenizer.

use fedsim::data::{alpaca, synthetic, DataPlan, DataSource, Partition};
use fedsim::tokenizer::TextTokenizer;

use crate::util::assert_disjoint_cover;

#[test]
fn corrupt_alpaca_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.json");
    std::fs::write(&p, r#"[{"instruction": "x", "output": 3}]"#).unwrap();
    let e = alpaca::load(&p).unwrap_err().to_string();
    assert!(e.contains("bad.json") && e.contains("line 1"), "{e}");
}

fn plan(partition: Partition, clients: usize) -> DataPlan {
    DataPlan {
        source: DataSource::Synthetic { records: 1000 },
        eval_fraction: 0.1,
        canaries: 3,
        canary_repeats: 5,
        partition,
        clients,
        seed: 3,
    }
}

#[test]
fn iid_shards_are_equal_and_disjoint() {
    let d = plan(Partition::Iid, 7).prepare().unwrap();
    assert_eq!(d.eval.len(), 100);
    let sizes: Vec<usize> = d.shards.iter().map(|s| s.len()).collect();
    let plain: Vec<usize> = d
        .shards
        .iter()
        .map(|s| s.iter().filter(|&&i| d.train[i].canary.is_none()).count())
        .collect();
    assert!(
        plain.iter().max().unwrap() - plain.iter().min().unwrap() <= 1,
        "{plain:?}"
    );
    assert_eq!(sizes.iter().sum::<usize>(), 900 + 15);
    assert_disjoint_cover(&d);
}

#[test]
fn dirichlet_skews_topics_more_for_small_alpha() {
    // Mean over clients of the largest topic share: near 1/areas for IID, near 1 for α → 0.
    let dominance = |alpha: f64| {
        let d = plan(Partition::Dirichlet { alpha }, 5).prepare().unwrap();
        d.shards
            .iter()
            .map(|s| {
                let mut counts = std::collections::HashMap::new();
                for &i in s {
                    *counts.entry(d.train[i].topic.clone()).or_insert(0usize) += 1;
                }
                *counts.values().max().unwrap() as f64 / s.len() as f64
            })
            .sum::<f64>()
            / 5.0
    };
    let (skewed, flat) = (dominance(0.1), dominance(100.0));
    assert!(
        skewed > flat + 0.2,
        "alpha 0.1: {skewed}, alpha 100: {flat}"
    );
}

/// Mean number of distinct topics per client, over a few seeds.
fn topics_per_client(alpha: f64, clients: usize) -> f64 {
    let mut total = 0.0;
    for seed in 1..=4 {
        let mut p = plan(Partition::Dirichlet { alpha }, clients);
        p.seed = seed;
        p.source = DataSource::Synthetic { records: 2000 };
        p.canaries = 0;
        let d = p.prepare().unwrap();
        let topics: usize = d
            .shards
            .iter()
            .map(|s| {
                s.iter()
                    .map(|&i| d.train[i].topic.as_str())
                    .collect::<std::collections::BTreeSet<_>>()
                    .len()
            })
            .sum();
        total += topics as f64 / clients as f64;
    }
    total / 4.0
}

#[test]
fn dirichlet_skew_grows_monotonically_down_to_the_smallest_alpha() {
    // Every α the validator accepts, down to the smallest positive f64: no draw underflows
    // into a uniform split (the old fallback), and skew never decreases as α shrinks.
    let alphas = [
        1e6, 100.0, 10.0, 1.0, 0.3, 0.1, 0.03, 0.01, 1e-4, 1e-10, 1e-100, 1e-300, 5e-324,
    ];
    let t: Vec<f64> = alphas.iter().map(|&a| topics_per_client(a, 5)).collect();
    for (w, a) in t.windows(2).zip(alphas.windows(2)) {
        assert!(w[1] <= w[0] + 1e-9, "alpha {} -> {}: {t:?}", a[0], a[1]);
    }
    assert!(t[0] > 6.9, "near-IID at large alpha: {t:?}");
    // 7 topics over 5 clients: in the limit each topic goes to exactly one client.
    for (&a, &v) in alphas.iter().zip(&t) {
        if a <= 1e-10 {
            assert!(
                (v - 7.0 / 5.0).abs() < 1e-9,
                "alpha {a}: {v} topics per client"
            );
        }
    }
}

#[test]
fn dirichlet_with_more_clients_than_topics_gives_every_client_data() {
    let d = plan(Partition::Dirichlet { alpha: 0.001 }, 400)
        .prepare()
        .unwrap();
    assert!(d.shards.iter().all(|s| !s.is_empty()));
    assert_disjoint_cover(&d);
}

#[test]
fn size_skew_gives_unequal_nonempty_shards() {
    let d = plan(Partition::SizeSkew { sigma: 1.5 }, 10)
        .prepare()
        .unwrap();
    let sizes: Vec<usize> = d.shards.iter().map(|s| s.len()).collect();
    assert!(sizes.iter().all(|&s| s >= 1));
    assert!(
        *sizes.iter().max().unwrap() > 3 * *sizes.iter().min().unwrap(),
        "{sizes:?}"
    );
}

#[test]
fn each_canary_sits_in_exactly_one_shard_with_its_repeat_count() {
    let d = plan(Partition::Iid, 6).prepare().unwrap();
    assert_eq!(d.canaries.len(), 3);
    for c in &d.canaries {
        for (client, shard) in d.shards.iter().enumerate() {
            let n = shard
                .iter()
                .filter(|&&i| d.train[i].canary == Some(c.id))
                .count();
            assert_eq!(n, if client == c.client { c.repeats } else { 0 });
        }
        assert!(c.answer.contains(&c.secret));
        assert_eq!(c.secret.len(), c.format.len());
        assert!(d.eval.iter().all(|r| !r.output.contains(&c.secret)));
    }
    let secrets: std::collections::HashSet<&str> =
        d.canaries.iter().map(|c| c.secret.as_str()).collect();
    assert_eq!(secrets.len(), 3, "secrets are unique");
}

#[test]
fn held_out_split_does_not_depend_on_clients_or_partition() {
    let a = plan(Partition::Iid, 5).prepare().unwrap();
    let b = plan(Partition::Dirichlet { alpha: 0.5 }, 1)
        .prepare()
        .unwrap();
    assert_eq!(a.eval, b.eval);
    let secrets = |d: &fedsim::data::FederatedData| {
        d.canaries
            .iter()
            .map(|c| c.secret.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(secrets(&a), secrets(&b));
}

#[test]
fn tokenizer_training_is_deterministic_and_round_trips() {
    let records = synthetic::generate(300, 1);
    let a = TextTokenizer::train(&records, 500).unwrap();
    let b = TextTokenizer::train(&records, 500).unwrap();
    assert_eq!(a.vocab_size(), 500);
    let dir = tempfile::tempdir().unwrap();
    a.save(&dir.path().join("a.json")).unwrap();
    b.save(&dir.path().join("b.json")).unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("a.json")).unwrap(),
        std::fs::read(dir.path().join("b.json")).unwrap()
    );
    let text = &records[0].full_text();
    assert_eq!(&a.decode(&a.encode(text).unwrap()).unwrap(), text);
    let (ex, cut) = a.example(&records[0], 1000).unwrap();
    assert!(!cut);
    assert_eq!(*ex.ids.last().unwrap(), a.eos_id());
    assert!(ex.prompt_len > 0 && ex.response_tokens() > 1);
    let reloaded = TextTokenizer::from_file(&dir.path().join("a.json")).unwrap();
    assert_eq!(reloaded.encode(text).unwrap(), a.encode(text).unwrap());
    // Truncation keeps the prompt's end and at least half the budget for the response.
    let (short, cut) = a.example(&records[0], ex.prompt_len).unwrap();
    assert!(cut);
    assert_eq!(short.ids.len(), ex.prompt_len);
    assert_eq!(
        short.response_tokens(),
        (ex.prompt_len / 2).min(ex.response_tokens())
    );
    assert_eq!(
        short.ids[..short.prompt_len],
        ex.ids[ex.prompt_len - short.prompt_len..ex.prompt_len]
    );
    assert_eq!(
        short.ids[short.prompt_len..],
        ex.ids[ex.prompt_len..ex.prompt_len + short.response_tokens()]
    );
}
