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
