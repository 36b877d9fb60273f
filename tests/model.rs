//! Model and LoRA: gradients reach every adapter tensor; B = 0 is the base; merge parity.

use candle_core::Device;
use fedsim::model::lora::DropoutRng;
use fedsim::model::{AdapterSet, BaseModel, LlamaConfig, LoraConfig, LoraVars, TargetModule};
use fedsim::tokenizer::TokenizedExample;
use fedsim::train::make_batch;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Largest absolute element-wise difference of two same-shaped tensors.
pub(crate) fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn small_cfg() -> LlamaConfig {
    LlamaConfig {
        num_hidden_layers: 2,
        hidden_size: 64,
        intermediate_size: 96,
        vocab_size: 300,
        ..LlamaConfig::tiny(300)
    }
}

fn all_modules() -> LoraConfig {
    LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.1,
        target_modules: TargetModule::ALL.to_vec(),
        method: Default::default(),
    }
}

/// An adapter with A and B both random (B = 0 would make A's gradient zero).
fn random_adapter(cfg: &LlamaConfig, lora: &LoraConfig, seed: u64) -> AdapterSet {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut a = lora.init_adapter(cfg, &mut rng);
    for v in a.data_mut() {
        *v = rng.random_range(-0.1..0.1);
    }
    a
}

fn batch(cfg: &LlamaConfig, seed: u64) -> Vec<TokenizedExample> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    [17usize, 23, 9]
        .iter()
        .map(|&len| TokenizedExample {
            ids: (0..len)
                .map(|_| rng.random_range(0..cfg.vocab_size as u32))
                .collect(),
            prompt_len: len / 2,
        })
        .collect()
}

#[test]
fn every_lora_tensor_gets_a_nonzero_gradient() {
    let cfg = small_cfg();
    let lora = all_modules();
    let model = BaseModel::random(&cfg, 1, &Device::Cpu).unwrap();
    let adapter = random_adapter(&cfg, &lora, 2);
    let vars = LoraVars::from_adapter(&adapter, &lora, &Device::Cpu).unwrap();
    let ex = batch(&cfg, 3);
    let refs: Vec<&TokenizedExample> = ex.iter().collect();
    let input = make_batch(&refs, 0, &Device::Cpu).unwrap();
    let mut dropout = DropoutRng::new(ChaCha8Rng::seed_from_u64(4));
    let (nll, n) = model
        .loss_sum(&input, Some(&vars), Some(&mut dropout))
        .unwrap();
    let grads = (nll / n as f64).unwrap().backward().unwrap();
    assert_eq!(vars.vars().len(), 2 * 7 * cfg.num_hidden_layers);
    for (i, v) in vars.vars().iter().enumerate() {
        let g = grads
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("tensor {i} has no gradient"));
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(
            norm > 0.0 && norm.is_finite(),
            "tensor {i}: gradient norm² {norm}"
        );
    }
}

#[test]
fn untrained_adapter_gives_exactly_the_base_logits() {
    let cfg = small_cfg();
    let lora = all_modules();
    let model = BaseModel::random(&cfg, 1, &Device::Cpu).unwrap();
    let adapter = lora.init_adapter(&cfg, &mut ChaCha8Rng::seed_from_u64(5));
    assert!(
        adapter.data().iter().any(|&v| v != 0.0),
        "A must be initialised"
    );
    let vars = LoraVars::from_adapter(&adapter, &lora, &Device::Cpu).unwrap();
    let ex = batch(&cfg, 6);
    let refs: Vec<&TokenizedExample> = ex.iter().collect();
    let input = make_batch(&refs, 0, &Device::Cpu).unwrap();
    let base = model.forward(&input.input_ids, &input.mask, None).unwrap();
    let with = model
        .forward(&input.input_ids, &input.mask, Some(&vars))
        .unwrap();
    let diff = max_abs_diff(&base, &with);
    assert_eq!(diff, 0.0);
}

#[test]
fn lora_forward_equals_merged_weights() {
    let cfg = small_cfg();
    let lora = all_modules();
    let model = BaseModel::random(&cfg, 1, &Device::Cpu).unwrap();
    let adapter = random_adapter(&cfg, &lora, 7);
    let vars = LoraVars::from_adapter(&adapter, &lora, &Device::Cpu).unwrap();
    let merged = model.merged(&vars).unwrap();
    // The merge is W + (alpha/r) B A, computed independently here for one projection.
    let (a, b) = vars.get(1, TargetModule::UpProj).unwrap();
    let f32 = |w: &fedsim::model::FrozenWeight| w.to_tensor(&Device::Cpu).unwrap();
    let expect = (f32(model.projection(1, TargetModule::UpProj))
        + (b.matmul(a).unwrap() * 2.0).unwrap())
    .unwrap();
    let got = f32(merged.projection(1, TargetModule::UpProj));
    let d = max_abs_diff(&expect, &got);
    assert!(d < 1e-7, "merge of up_proj differs by {d}");
    let ex = batch(&cfg, 8);
    let refs: Vec<&TokenizedExample> = ex.iter().collect();
    let input = make_batch(&refs, 0, &Device::Cpu).unwrap();
    let lo = model
        .forward(&input.input_ids, &input.mask, Some(&vars))
        .unwrap();
    let me = merged.forward(&input.input_ids, &input.mask, None).unwrap();
    let base = model.forward(&input.input_ids, &input.mask, None).unwrap();
    let d = max_abs_diff(&lo, &me);
    assert!(d < 1e-5, "LoRA vs merged logits differ by {d}");
    let moved = max_abs_diff(&lo, &base);
    assert!(
        moved > 1e-3,
        "the adapter must change the logits (moved {moved})"
    );
}

#[test]
fn padding_does_not_change_a_sequence_loss() {
    // A short sequence batched with a long one (right padding + mask) scores as it does alone.
    let cfg = small_cfg();
    let lora = all_modules();
    let model = BaseModel::random(&cfg, 1, &Device::Cpu).unwrap();
    let vars =
        LoraVars::from_adapter(&random_adapter(&cfg, &lora, 9), &lora, &Device::Cpu).unwrap();
    let ex = batch(&cfg, 10);
    let alone = make_batch(&[&ex[2]], 0, &Device::Cpu).unwrap();
    let (a, _) = model.loss_sum(&alone, Some(&vars), None).unwrap();
    let both = make_batch(&[&ex[1], &ex[2]], 0, &Device::Cpu).unwrap();
    let (b, _) = model.loss_sum(&both, Some(&vars), None).unwrap();
    let first = make_batch(&[&ex[1]], 0, &Device::Cpu).unwrap();
    let (c, _) = model.loss_sum(&first, Some(&vars), None).unwrap();
    let (a, b, c) = (
        a.to_scalar::<f32>().unwrap(),
        b.to_scalar::<f32>().unwrap(),
        c.to_scalar::<f32>().unwrap(),
    );
    assert!(
        (a + c - b).abs() < 1e-3 * b.abs(),
        "alone {a} + {c} vs batched {b}"
    );
}

#[test]
fn adapter_round_trips_through_safetensors_with_peft_names() {
    let cfg = small_cfg();
    let lora = LoraConfig {
        target_modules: vec![TargetModule::QProj, TargetModule::VProj],
        method: Default::default(),
        ..all_modules()
    };
    let adapter = random_adapter(&cfg, &lora, 11);
    let bytes = adapter.to_safetensors().unwrap();
    let back = AdapterSet::from_safetensors(adapter.layout().clone(), &bytes).unwrap();
    assert_eq!(back, adapter);
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = st.names();
    names.sort();
    assert_eq!(names.len(), 2 * 2 * cfg.num_hidden_layers);
    assert_eq!(
        names[0],
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    );
    let a = st
        .tensor("base_model.model.model.layers.1.self_attn.v_proj.lora_A.weight")
        .unwrap();
    assert_eq!(a.shape(), [4, 64]);
    let b = st
        .tensor("base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight")
        .unwrap();
    assert_eq!(b.shape(), [cfg.num_key_value_heads * cfg.head_dim(), 4]);
    let corrupt = AdapterSet::from_safetensors(adapter.layout().clone(), &bytes[..bytes.len() / 2]);
    assert!(corrupt.is_err());
}

#[test]
fn trainable_parameter_count_matches_the_135m_shape() {
    // rank-8 LoRA on q_proj and v_proj of SmolLM2-135M: 460,800 parameters (the bench workload).
    let lora = LoraConfig::qv(8, 16.0);
    assert_eq!(
        lora.trainable_parameters(&LlamaConfig::smollm2_135m()),
        460_800
    );
    // SmolLM2-135M has 134,515,008 parameters (tied embeddings).
    assert_eq!(LlamaConfig::smollm2_135m().num_parameters(), 134_515_008);
}

#[test]
fn cosine_schedule_matches_the_course() {
    use fedsim::train::cosine_annealing;
    assert!((cosine_annealing(0, 10, 5e-5, 1e-6) - 5e-5).abs() < 1e-18);
    assert!((cosine_annealing(10, 10, 5e-5, 1e-6) - 1e-6).abs() < 1e-18);
    assert!((cosine_annealing(5, 10, 5e-5, 1e-6) - 2.55e-5).abs() < 1e-15);
}

/// Logits of our forward (base, and base + LoRA) against Hugging Face transformers + PEFT on
/// the same exported weights (`tests/reference/make_peft_reference.py`).
#[test]
fn forward_matches_transformers_and_peft() {
    use fedsim::model::reference::{Fixture, INPUT_IDS};
    let text =
        std::fs::read_to_string(crate::util::root().join("tests/reference/peft_reference.json"))
            .unwrap();
    let reference: serde_json::Value = serde_json::from_str(&text).unwrap();
    let slice = reference["vocab_slice"].as_u64().unwrap() as usize;
    let f = Fixture::build().unwrap();
    let vars = LoraVars::from_adapter(&f.adapter, &f.lora, &Device::Cpu).unwrap();
    let examples: Vec<TokenizedExample> = INPUT_IDS
        .iter()
        .map(|ids| TokenizedExample {
            ids: ids.to_vec(),
            prompt_len: 1,
        })
        .collect();
    let refs: Vec<&TokenizedExample> = examples.iter().collect();
    let input = make_batch(&refs, 0, &Device::Cpu).unwrap();
    let compare = |ours: &candle_core::Tensor, theirs: &serde_json::Value, what: &str| {
        let ours = ours.narrow(2, 0, slice).unwrap().to_vec3::<f32>().unwrap();
        let mut worst = 0f32;
        for (b, rows) in ours.iter().enumerate() {
            for (t, row) in rows.iter().enumerate() {
                for (v, &x) in row.iter().enumerate() {
                    let y = theirs[b][t][v].as_f64().unwrap() as f32;
                    worst = worst.max((x - y).abs());
                }
            }
        }
        eprintln!("{what}: max abs difference {worst:e}");
        assert!(worst < 1e-5, "{what}: max abs difference {worst}");
    };
    let base = f
        .model
        .forward(&input.input_ids, &input.mask, None)
        .unwrap();
    compare(&base, &reference["base_logits"], "base");
    let adapted = f
        .model
        .forward(&input.input_ids, &input.mask, Some(&vars))
        .unwrap();
    compare(&adapted, &reference["peft_logits"], "base + LoRA");
    // Right padding with a mask: the short row's logits match PEFT's on its valid positions.
    let short = TokenizedExample {
        ids: INPUT_IDS[1][..7].to_vec(),
        prompt_len: 1,
    };
    let long = TokenizedExample {
        ids: INPUT_IDS[0].to_vec(),
        prompt_len: 1,
    };
    let padded = make_batch(&[&long, &short], 0, &Device::Cpu).unwrap();
    let logits = f
        .model
        .forward(&padded.input_ids, &padded.mask, Some(&vars))
        .unwrap();
    let row = logits.narrow(0, 1, 1).unwrap().narrow(1, 0, 7).unwrap();
    compare(
        &row,
        &serde_json::json!([reference["padded_second_row_first7"]]),
        "padded row",
    );
}

#[test]
fn constrained_scoring_matches_the_kv_cache_continuation_scorer() {
    use fedsim::eval::score::{label_logprobs, predictions, TaskTokens};
    use fedsim::model::generate::continuation_logprobs;
    let cfg = small_cfg();
    let lora = all_modules();
    let model = BaseModel::random(&cfg, 1, &Device::Cpu).unwrap();
    let vars =
        LoraVars::from_adapter(&random_adapter(&cfg, &lora, 5), &lora, &Device::Cpu).unwrap();
    let merged = model.merged(&vars).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let mut ids = |n: usize| -> Vec<u32> { (0..n).map(|_| rng.random_range(0..300)).collect() };
    // Two one-token classes (sharing a sequence) and a three-token one; prompts of 3 lengths.
    let tokens = TaskTokens {
        prompts: vec![ids(11), ids(5), ids(19)],
        labels: vec![ids(1), ids(3), ids(1)],
        gold: vec![0, 1, 2],
    };
    for lora in [None, Some(&vars)] {
        let got = label_logprobs(&model, lora, &tokens, &[2, 0, 1], 2).unwrap();
        let reference = if lora.is_some() { &merged } else { &model };
        for (row, &i) in got.iter().zip(&[2usize, 0, 1]) {
            let want =
                continuation_logprobs(reference, &tokens.prompts[i], &tokens.labels).unwrap();
            for (g, w) in row.iter().zip(&want) {
                assert!((g - w).abs() < 1e-4, "item {i}: {g} vs {w}");
            }
        }
        let p = predictions(&got);
        assert_eq!(p.len(), 3);
        assert!(p
            .iter()
            .zip(&got)
            .all(|(&c, lp)| lp.iter().all(|&v| v <= lp[c])));
    }
}
