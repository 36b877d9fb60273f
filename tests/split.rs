//! Split fine-tuning (topology `Split`): without compression a split step is the unsplit step
//! (two graphs joined by decoded messages against one graph); the bytes of every message are
//! its encoded size and the clock's prediction; U-shaped sends no labels; runs record the
//! traffic and price it; settings are checked by name.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use fedsim::model::lora::DropoutRng;
use fedsim::model::reference::Fixture;
use fedsim::model::{AdapterSet, LoraVars};
use fedsim::split::cost::SplitPlan;
use fedsim::split::{CutCompression, Direction, MessageKind, SplitConfig, SplitMode};
use fedsim::tokenizer::TokenizedExample;
use fedsim::train::{LoraTrainer, Schedule, StepRule};
use rand::SeedableRng;

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

fn examples() -> Vec<TokenizedExample> {
    // Different lengths (right padding inside every batch), prompts of different lengths.
    (0..6)
        .map(|i| TokenizedExample {
            ids: (0..(7 + 3 * i))
                .map(|t| ((t * 37 + i * 11) % 290 + 3) as u32)
                .collect(),
            prompt_len: 2 + i % 3,
        })
        .collect()
}

fn config(
    cut_layer: usize,
    mode: SplitMode,
    act: CutCompression,
    grad: CutCompression,
) -> SplitConfig {
    SplitConfig {
        cut_layer,
        mode,
        activation_compression: act,
        gradient_compression: grad,
        server_flops: 1e13,
    }
}

fn fit(
    f: &Fixture,
    split: Option<SplitConfig>,
    proximal_mu: f64,
) -> (AdapterSet, f64, Option<fedsim::split::SplitTraffic>) {
    let trainer = LoraTrainer {
        model: Arc::new(Fixture::build().unwrap().model),
        lora: f.lora.clone(),
        pad: 0,
        split,
    };
    let ex = examples();
    let refs: Vec<&TokenizedExample> = ex.iter().collect();
    let schedule = Schedule {
        dropout_seed: 99,
        batches: vec![vec![0, 3, 5], vec![1, 2], vec![4, 0, 2], vec![5, 1]],
    };
    let rule = StepRule {
        lr: 1e-2,
        weight_decay: 0.01,
        proximal_mu,
    };
    let out = trainer
        .fit_schedule(
            &f.adapter,
            &refs,
            &schedule,
            (rule, &AtomicBool::new(false)),
        )
        .unwrap();
    (out.update, out.train_loss, out.split)
}

#[test]
fn split_training_without_compression_equals_centralised_training_step_for_step() {
    // LoRA dropout on: its masks must be drawn in the same order on both sides of the cut.
    let mut f = Fixture::build().unwrap();
    f.lora.dropout = 0.1;
    let (central, loss, none) = fit(&f, None, 0.0);
    assert!(none.is_none());
    let scale = central.data().iter().fold(0f32, |m, v| m.max(v.abs()));
    for cut in [0, 1] {
        for mode in [SplitMode::SplitFed, SplitMode::UShaped] {
            let c = config(cut, mode, CutCompression::None, CutCompression::None);
            let (split, split_loss, traffic) = fit(&f, Some(c), 0.0);
            let diff = max_diff(central.data(), split.data());
            println!("cut {cut} {mode:?}: max |Δ| {diff:.2e} of {scale:.2e}, loss {loss} vs {split_loss}");
            assert!(
                diff <= 1e-5 * scale,
                "cut {cut} {mode:?}: {diff} of {scale}"
            );
            assert!((loss - split_loss).abs() < 1e-5, "{loss} vs {split_loss}");
            let t = traffic.unwrap();
            assert!(t.up_bytes > 0 && t.down_bytes > 0);
            assert_eq!(
                t.messages,
                4 * if mode == SplitMode::SplitFed { 3 } else { 4 }
            );
        }
    }
    // FedProx's proximal term spans both sides of the cut.
    let (central, _, _) = fit(&f, None, 0.5);
    let c = config(
        1,
        SplitMode::SplitFed,
        CutCompression::None,
        CutCompression::None,
    );
    let (split, _, _) = fit(&f, Some(c), 0.5);
    assert!(max_diff(central.data(), split.data()) <= 1e-5 * scale);
}

#[test]
fn lossy_codecs_change_training_within_reason() {
    let f = Fixture::build().unwrap();
    let (central, loss, _) = fit(&f, None, 0.0);
    let norm = central.l2_norm();
    // Bounds on the relative change of the round's update: half precision (11-bit mantissa)
    // barely moves it, per-token int8 more, top-25 % (a quarter of each row) the most.
    for (act, grad, bound) in [
        (CutCompression::Fp16, CutCompression::Fp16, 1e-2),
        (CutCompression::Int8, CutCompression::Int8, 0.2),
        (
            CutCompression::TopK { fraction: 0.25 },
            CutCompression::None,
            1.0,
        ),
    ] {
        let c = config(1, SplitMode::UShaped, act, grad);
        let (split, split_loss, traffic) = fit(&f, Some(c), 0.0);
        let mut d = split.clone();
        d.data_mut()
            .iter_mut()
            .zip(central.data())
            .for_each(|(a, b)| *a -= b);
        let rel = d.l2_norm() / norm;
        println!("{act:?}/{grad:?}: relative update difference {rel:.2e}, loss {split_loss:.4} vs {loss:.4}, {traffic:?}");
        assert!(rel > 0.0, "{act:?} changed nothing");
        assert!(rel < bound, "{act:?}: {rel}");
        assert!(split_loss.is_finite());
    }
}

#[test]
fn every_message_is_its_encoded_size_and_the_clocks_prediction() {
    let f = Fixture::build().unwrap();
    let ex = examples();
    let batch: Vec<&TokenizedExample> = vec![&ex[0], &ex[4], &ex[2]];
    let seqs: Vec<(usize, usize)> = batch
        .iter()
        .map(|e| (e.ids.len(), fedsim::train::target_range(e).len()))
        .collect();
    let vars = LoraVars::from_adapter(&f.adapter, &f.lora, f.model.device()).unwrap();
    for mode in [SplitMode::SplitFed, SplitMode::UShaped] {
        for (act, grad) in [
            (CutCompression::None, CutCompression::Int8),
            (CutCompression::TopK { fraction: 0.1 }, CutCompression::Fp16),
        ] {
            let c = config(1, mode, act, grad);
            let mut dropout = DropoutRng::new(rand_chacha::ChaCha8Rng::seed_from_u64(1));
            let out =
                fedsim::split::step::step(&f.model, &c, (&batch, 0), &vars, &mut dropout).unwrap();
            let plan = SplitPlan::new(c, f.cfg.hidden_size, &f.adapter, &ex).unwrap();
            assert_eq!(out.messages, plan.step_messages(&seqs), "{mode:?} {act:?}");
            // The activations: lengths (4 + 4·3) and the encoded real rows (no padding).
            let rows: usize = seqs.iter().map(|s| s.0).sum();
            let up = out
                .messages
                .iter()
                .find(|m| m.kind == MessageKind::Activations)
                .unwrap();
            assert_eq!(up.bytes, 16 + act.encoded_len(rows, 64));
            let labels = out
                .messages
                .iter()
                .filter(|m| m.kind == MessageKind::Labels);
            match mode {
                // U-shaped: nothing with the labels goes up.
                SplitMode::UShaped => {
                    assert_eq!(labels.count(), 0);
                    let up: Vec<MessageKind> = out
                        .messages
                        .iter()
                        .filter(|m| m.direction == Direction::Up)
                        .map(|m| m.kind)
                        .collect();
                    assert_eq!(up, [MessageKind::Activations, MessageKind::TopGradients]);
                }
                SplitMode::SplitFed => {
                    let targets: usize = seqs.iter().map(|s| s.1).sum();
                    assert_eq!(
                        labels.map(|m| m.bytes).collect::<Vec<_>>(),
                        [4 + 8 * targets as u64]
                    );
                }
            }
        }
    }
}

fn small(set: &[&str]) -> fedsim::Scenario {
    let mut all = vec!["rounds=2"];
    all.extend_from_slice(set);
    crate::util::scenario(crate::util::SMALL, &all).unwrap()
}

fn adapter(dir: &std::path::Path) -> Vec<u8> {
    std::fs::read(dir.join("adapter_model.safetensors")).unwrap()
}

#[test]
fn an_uncompressed_split_run_is_the_flat_run_bit_for_bit_and_records_its_traffic() {
    let tmp = tempfile::tempdir().unwrap();
    let flat = crate::util::run(&small(&[]), &tmp.path().join("flat"));
    for (name, mode) in [("splitfed", "SplitFed"), ("ushaped", "UShaped")] {
        let set = format!("topology=Split(cut_layer: 1, mode: {mode}, server_flops: 1e12)");
        let s = small(&[&set]);
        let r = crate::util::run(&s, &tmp.path().join(name));
        assert!(
            adapter(&flat.dir) == adapter(&r.dir),
            "{mode}: adapters differ"
        );
        let (fr, sr) = (
            crate::util::round_metrics(&flat.dir),
            crate::util::round_metrics(&r.dir),
        );
        for (a, b) in fr.iter().zip(&sr) {
            assert_eq!(a["eval_loss"], b["eval_loss"]);
            let split = &b["split"];
            let completed = b["completed"].as_u64().unwrap();
            // 8 steps per client: 3 (SplitFed) or 4 (U-shaped) messages each.
            let per_step = if mode == "SplitFed" { 3 } else { 4 };
            assert_eq!(
                split["messages"].as_u64(),
                Some(completed * 8 * per_step),
                "{b}"
            );
            assert!(
                split["up_bytes"].as_u64().unwrap()
                    > 100 * b["bytes_up"].as_u64().unwrap() / completed
            );
            // Only the client side of the adapter travels: layer 0 of 2, half the tensors.
            assert!(b["bytes_up"].as_u64() < a["bytes_up"].as_u64(), "{a} {b}");
            assert!(b["bytes_down"].as_u64() < a["bytes_down"].as_u64());
            assert!(
                b["sim_duration_s"].as_f64() > a["sim_duration_s"].as_f64(),
                "{a} {b}"
            );
        }
        assert!(a_flat_round_has_no_split(&fr));
        // Each trained client's timeline has the server's half and the messages.
        for c in crate::system::clients_log(&r.dir) {
            if c["status"] == "completed" {
                let t = &c;
                assert!(
                    t["server"].as_f64().unwrap() > 0.0 && t["exchange"].as_f64().unwrap() > 0.0,
                    "{c}"
                );
            }
        }
    }
}

fn a_flat_round_has_no_split(rounds: &[serde_json::Value]) -> bool {
    rounds.iter().all(|r| r.get("split").is_none())
}

#[test]
fn a_compressed_split_run_is_deterministic_across_slot_counts_and_lowers_the_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let set = "topology=Split(cut_layer: 1, activation_compression: Int8, gradient_compression: TopK(fraction: 0.25))";
    let one = crate::util::run(&small(&[set, "rounds=3"]), &tmp.path().join("one"));
    let two = crate::util::run(
        &small(&[set, "rounds=3", "slots.count=2"]),
        &tmp.path().join("two"),
    );
    assert!(adapter(&one.dir) == adapter(&two.dir));
    let rounds = crate::util::round_metrics(&one.dir);
    assert_eq!(rounds, crate::util::round_metrics(&two.dir));
    let first = one.summary.pretrained_eval_loss;
    let last = rounds.last().unwrap()["eval_loss"].as_f64().unwrap();
    assert!(last < first, "{first} → {last}");
}

#[test]
fn split_settings_are_checked_by_name() {
    let err = |set: &str| crate::util::scenario_err(&[set]);
    let e = err("topology=Split(cut_layer: 2)");
    assert!(
        e.contains("topology.Split.cut_layer") && e.contains("0..=1"),
        "{e}"
    );
    let e = err("topology=Split(cut_layer: 1, activation_compression: TopK(fraction: 0.0))");
    assert!(
        e.contains("topology.Split.activation_compression.TopK.fraction"),
        "{e}"
    );
    let e = err("topology=Split(cut_layer: 1, server_flops: 0.0)");
    assert!(e.contains("topology.Split.server_flops"), "{e}");
    // `None` selects the codec's None variant on the command line too (JSON's null cannot).
    let s = small(&[
        "topology=Split(cut_layer: 1, activation_compression: None, gradient_compression: Int8)",
    ]);
    let c = s.topology.split().unwrap();
    assert_eq!(
        (c.activation_compression, c.gradient_compression, c.mode),
        (
            CutCompression::None,
            CutCompression::Int8,
            SplitMode::SplitFed
        )
    );
    let split = "topology=Split(cut_layer: 1)";
    for (set, field) in [
        (crate::util::DP, "dp"),
        ("trainer=Synthetic(params: 100)", "trainer"),
        ("adapter=PromptTuning()", "adapter"),
        ("compression=Fp16", "compression"),
    ] {
        let e = crate::util::scenario_err(&[split, set, "data.canaries=0"]);
        assert!(
            e.contains(field) && e.contains("topology Split"),
            "{set}: {e}"
        );
    }
}

#[test]
fn the_inversion_recovers_every_token_from_uncompressed_embeddings_at_cut_0() {
    use fedsim::attack::inversion::invert;
    let f = Fixture::build().unwrap();
    // Public text (the decoder's fit) and private text (scored) share no sequence.
    let public: Vec<TokenizedExample> = (0..40)
        .map(|i| TokenizedExample {
            ids: (0..12)
                .map(|t| ((t * 31 + i * 17) % 297 + 3) as u32)
                .collect(),
            prompt_len: 4,
        })
        .collect();
    let private = examples();
    let inv = |cut, act| {
        let c = config(cut, SplitMode::SplitFed, act, CutCompression::None);
        invert(&f.model, &c, (&public, &private), (0, 8)).unwrap()
    };
    let exact = inv(0, CutCompression::None);
    let tokens: usize = private.iter().map(|e| e.ids.len()).sum();
    assert_eq!(exact.nearest.tokens, tokens as u64);
    assert_eq!(exact.nearest.rate, 1.0, "{exact:?}");
    assert!(exact.learned.rate > 0.9, "{exact:?}");
    assert!(exact.floor.rate < 0.1, "{exact:?}");
    assert_eq!(exact.fit_tokens, 40 * 12);
    // Through one random block and an 8-bit codec, less comes back — but more than the floor.
    let deep = inv(1, CutCompression::Int8);
    println!("cut 0: {exact:?}\ncut 1 int8: {deep:?}");
    assert!(deep.learned.rate > deep.floor.rate, "{deep:?}");
    assert!(deep.nearest.rate <= 1.0 && deep.learned.interval[0] <= deep.learned.rate);
}

#[test]
fn sim_attack_reports_the_servers_inversion_beside_the_adapter_attacks() {
    let tmp = tempfile::tempdir().unwrap();
    let s = small(&["topology=Split(cut_layer: 0, mode: UShaped)"]);
    let r = crate::util::run(&s, &tmp.path().join("split"));
    let mut plan = fedsim::attack::AttackPlan::default();
    plan.members = 30;
    plan.candidates.sampled = 100;
    plan.candidates.enumerate_up_to = 100;
    plan.samples.per_prompt = 1;
    plan.samples.max_tokens = 8;
    let report = fedsim::attack::attack(&r.dir, plan, &mut |_, _, _| Ok(())).unwrap();
    let inv = report.inversion.as_ref().expect("a split run is inverted");
    // Cut 0, no codec: the activations are the embeddings of the private text.
    assert_eq!((inv.cut_layer, inv.nearest.rate), (0, 1.0), "{inv:?}");
    assert!(inv.nearest.tokens > 100);
    let text = fedsim::attack::table::details(&report);
    assert!(
        text.contains("inversion of the cut's activations"),
        "{text}"
    );
    // attack.json carries it; a flat run's has none.
    let json = std::fs::read_to_string(r.dir.join("attack.json")).unwrap();
    assert!(json.contains("\"inversion\""));
}
