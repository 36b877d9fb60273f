//! Beyond LoRA: IA³ and DoRA against Hugging Face transformers + PEFT (`tests/reference/
//! make_method_reference.py` on the fixtures `examples/export_reference --ia3 | --dora` writes)
//! — logits, the gradient of the loss, one AdamW step, a greedy continuation — and the round
//! trip through PEFT's adapter directory; federated IA³ and DoRA runs lower the loss.

use candle_core::Device;
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use fedsim::model::generate::{generate, Budget, Sampling};
use fedsim::model::reference::{Fixture, INPUT_IDS};
use fedsim::model::LoraVars;
use fedsim::tokenizer::TokenizedExample;
use fedsim::train::make_batch;
use serde_json::Value;

pub(crate) fn reference(file: &str) -> Value {
    let path = crate::util::root().join("tests/reference").join(file);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

pub(crate) fn worst(ours: &[f32], theirs: &Value) -> f32 {
    let theirs = theirs.as_array().unwrap();
    assert_eq!(ours.len(), theirs.len());
    ours.iter()
        .zip(theirs)
        .map(|(a, b)| (a - b.as_f64().unwrap() as f32).abs())
        .fold(0f32, f32::max)
}

fn flat3(t: &candle_core::Tensor, slice: usize) -> Vec<f32> {
    t.narrow(2, 0, slice)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn flat_json(v: &Value) -> Value {
    fn walk(v: &Value, out: &mut Vec<Value>) {
        match v {
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            x => out.push(x.clone()),
        }
    }
    let mut out = Vec::new();
    walk(v, &mut out);
    Value::Array(out)
}

fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

pub(crate) fn batch() -> fedsim::model::LossInput {
    batch_of(&[&INPUT_IDS[0], &INPUT_IDS[1]])
}

/// The loss input of `rows`, right-padded with id 0.
fn batch_of(rows: &[&[u32]]) -> fedsim::model::LossInput {
    let examples: Vec<TokenizedExample> = rows
        .iter()
        .map(|ids| TokenizedExample {
            ids: ids.to_vec(),
            prompt_len: 1,
        })
        .collect();
    let refs: Vec<&TokenizedExample> = examples.iter().collect();
    make_batch(&refs, 0, &Device::Cpu).unwrap()
}

#[test]
fn ia3_matches_peft_in_logits_gradients_a_step_and_generation() {
    matches_peft(Fixture::build_ia3().unwrap(), "ia3_reference.json");
}

#[test]
fn dora_matches_peft_in_logits_gradients_a_step_and_generation() {
    matches_peft(Fixture::build_dora().unwrap(), "dora_reference.json");
}

/// The fixture `f` against PEFT's figures in `tests/reference/{file}`.
pub(crate) fn matches_peft(f: Fixture, file: &str) {
    let r = reference(file);
    let slice = r["vocab_slice"].as_u64().unwrap() as usize;
    let method = f.lora.method_name();
    let input = batch();
    let base = f
        .model
        .forward(&input.input_ids, &input.mask, None)
        .unwrap();
    let d = worst(&flat3(&base, slice), &flat_json(&r["base_logits"]));
    assert!(d < 1e-5, "base logits differ by {d}");
    let fixed = LoraVars::fixed(&f.adapter, &f.lora, &Device::Cpu).unwrap();
    let ours = f
        .model
        .forward(&input.input_ids, &input.mask, Some(&fixed))
        .unwrap();
    let d = worst(&flat3(&ours, slice), &flat_json(&r["peft_logits"]));
    eprintln!("{method} logits: max abs difference {d:e}");
    assert!(d < 1e-5, "{method} logits differ by {d}");
    // The merged model (what generation and scoring use) gives the same logits.
    let merged = f.model.merged(&fixed).unwrap();
    let m = merged.forward(&input.input_ids, &input.mask, None).unwrap();
    let d = worst(&flat3(&m, slice), &flat_json(&r["peft_logits"]));
    assert!(d < 1e-4, "merged {method} logits differ by {d}");
    // A right-padded row: its first 7 positions as PEFT gives them under an attention mask.
    let padded = batch_of(&[&INPUT_IDS[0], &INPUT_IDS[1][..7]]);
    let p = f
        .model
        .forward(&padded.input_ids, &padded.mask, Some(&fixed))
        .unwrap();
    let row = p.narrow(0, 1, 1).unwrap().narrow(1, 0, 7).unwrap();
    let d = worst(
        &flat3(&row, slice),
        &flat_json(&r["padded_second_row_first7"]),
    );
    assert!(d < 1e-5, "padded {method} logits differ by {d}");

    // The mean loss, its gradient and one AdamW step.
    let vars = LoraVars::from_adapter(&f.adapter, &f.lora, &Device::Cpu).unwrap();
    let (nll, n) = f.model.loss_sum(&input, Some(&vars), None).unwrap();
    let loss = (nll / n as f64).unwrap();
    let value = loss.to_scalar::<f32>().unwrap();
    let theirs = r["loss"].as_f64().unwrap() as f32;
    assert!((value - theirs).abs() < 1e-5, "loss {value} vs {theirs}");
    let grads = loss.backward().unwrap();
    let layout = f.adapter.layout().clone();
    let mut worst_grad = 0f32;
    for (t, var) in layout.tensors().iter().zip(vars.vars()) {
        let g: Vec<f32> = grads
            .get(var)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let theirs = &r["grads"][t.peft_name()];
        let scale = theirs
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap().abs())
            .fold(0.0, f64::max);
        worst_grad = worst_grad.max(worst(&g, theirs) / scale.max(1e-6) as f32);
    }
    eprintln!("{method} gradients: worst difference {worst_grad:e} of the tensor's largest");
    assert!(
        worst_grad < 1e-3,
        "gradients differ by {worst_grad} (relative)"
    );
    let lr = r["lr"].as_f64().unwrap();
    let params = ParamsAdamW {
        lr,
        ..Default::default()
    };
    let mut opt = AdamW::new(vars.vars().to_vec(), params).unwrap();
    opt.step(&grads).unwrap();
    let stepped = vars.to_adapter().unwrap();
    for t in layout.tensors() {
        let ours = &stepped.data()[t.offset..t.offset + t.numel()];
        // Adam's first step is lr·g/(|g| + ε): where |g| is near ε, the gradients' f32
        // rounding (≈1e-6 of the largest, above) moves the step by a share of lr.
        let d = worst(ours, &r["stepped"][t.peft_name()]);
        assert!(
            d < 1e-3 * lr as f32,
            "{}: stepped values differ by {d}",
            t.peft_name()
        );
    }

    // Greedy generation with the KV cache from the merged model.
    let prompt = u32s(&r["greedy_prompt"]);
    let g = generate(&merged, &prompt, Budget::up_to(8), Sampling::Greedy, &[]).unwrap();
    let theirs = u32s(&r["greedy"]);
    assert_eq!(g.ids, theirs, "greedy continuation");
}

#[test]
fn an_ia3_adapter_round_trips_through_peft_format() {
    let f = Fixture::build_ia3().unwrap();
    let dir = tempfile::tempdir().unwrap();
    f.adapter
        .save_peft(dir.path(), &f.lora, &f.cfg, "base_model")
        .unwrap();
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["peft_type"], "IA3");
    assert_eq!(
        config["feedforward_modules"],
        serde_json::json!(["down_proj", "up_proj"])
    );
    let (back, lora) = fedsim::model::peft::load_peft(dir.path(), &f.cfg).unwrap();
    assert_eq!(lora, f.lora);
    assert_eq!(back.data(), f.adapter.data());
    // A feed-forward module outside the targets is refused, naming the file.
    let bad = config
        .to_string()
        .replace("\"up_proj\"]", "\"up_proj\",\"gate_proj\"]");
    let bad = bad.replacen("\"gate_proj\",", "", 1);
    std::fs::write(dir.path().join("adapter_config.json"), bad).unwrap();
    let err = fedsim::model::peft::load_peft(dir.path(), &f.cfg)
        .unwrap_err()
        .to_string();
    assert!(err.contains("adapter_config.json"), "{err}");
}

/// How far `adapter` moves the fixture base's logits on the reference batch (largest |Δ|).
fn logit_shift(f: &Fixture, adapter: &fedsim::model::AdapterSet) -> f32 {
    let input = batch();
    let vars = LoraVars::fixed(adapter, &f.lora, &Device::Cpu).unwrap();
    let a = f
        .model
        .forward(&input.input_ids, &input.mask, None)
        .unwrap();
    let b = f.model.forward(&input.input_ids, &input.mask, Some(&vars));
    let b = b.unwrap();
    crate::model::max_abs_diff(&a, &b)
}

#[test]
fn an_untrained_ia3_adapter_leaves_the_base_unchanged() {
    let f = Fixture::build_ia3().unwrap();
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
    let ones = f.lora.init_adapter(&f.cfg, &mut rng);
    assert!(ones.data().iter().all(|&v| v == 1.0));
    assert_eq!(logit_shift(&f, &ones), 0.0);
}

#[test]
fn a_dora_adapter_round_trips_through_peft_format_and_starts_as_the_base() {
    let f = Fixture::build_dora().unwrap();
    let dir = tempfile::tempdir().unwrap();
    f.adapter
        .save_peft(dir.path(), &f.lora, &f.cfg, "base_model")
        .unwrap();
    let (back, lora) = fedsim::model::peft::load_peft(dir.path(), &f.cfg).unwrap();
    assert_eq!(lora, f.lora);
    assert_eq!(back.data(), f.adapter.data());
    // B = 0 and m = ‖W‖: the base model, up to the norm's rounding.
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
    let init = f.lora.init_adapter_for(&f.model, &mut rng).unwrap();
    let d = logit_shift(&f, &init);
    assert!(
        d < 1e-5,
        "an untrained DoRA adapter moves the logits by {d}"
    );
}

#[test]
fn federated_dora_lowers_the_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let s = crate::util::scenario(
        crate::util::SMALL,
        &[
            "adapter=Dora(r: 4, alpha: 8.0, target_modules: [\"q_proj\", \"v_proj\"])",
            "rounds=3",
        ],
    )
    .unwrap();
    assert_eq!(s.lora.method_name(), "DoRA");
    let r = crate::util::run(&s, &tmp.path().join("dora"));
    let sum = fedsim::report::Summary::read(&r.dir).unwrap();
    assert!(sum.final_eval_loss < sum.pretrained_eval_loss);
    // A, B and one magnitude per output row, per adapted module and layer.
    let lora = s.lora.trainable_parameters(&s.model);
    let plain = fedsim::model::LoraConfig {
        method: Default::default(),
        ..s.lora.clone()
    };
    let h = s.model.hidden_size;
    let kv = s.model.num_key_value_heads * s.model.head_dim();
    assert_eq!(
        lora,
        plain.trainable_parameters(&s.model) + s.model.num_hidden_layers * (h + kv)
    );
    let config = std::fs::read_to_string(r.dir.join("adapter_config.json")).unwrap();
    assert!(config.contains("\"use_dora\": true"), "{config}");
}

#[test]
fn federated_ia3_lowers_the_loss_with_every_strategy_family() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, extra) in [
        "strategy.kind=FedAvg",
        "strategy.kind=FedAdam(server_lr: 0.01)",
        "strategy.kind=Median",
    ]
    .iter()
    .enumerate()
    {
        let s = crate::util::scenario(
            crate::util::SMALL,
            &["adapter=Ia3()", "train.lr_max=3e-2", "rounds=3", extra],
        )
        .unwrap();
        assert_eq!(s.lora.method_name(), "IA³");
        let r = crate::util::run(&s, &tmp.path().join(i.to_string()));
        let sum = fedsim::report::Summary::read(&r.dir).unwrap();
        assert!(
            sum.final_eval_loss < sum.pretrained_eval_loss,
            "{extra}: {} → {}",
            sum.pretrained_eval_loss,
            sum.final_eval_loss
        );
        // k_proj, v_proj (outputs) and down_proj (input) per layer.
        let cfg = &s.model;
        let (_, kin) = cfg.projection_shape(fedsim::model::TargetModule::DownProj);
        let kv = cfg.num_key_value_heads * cfg.head_dim();
        assert_eq!(
            sum.trainable_parameters,
            cfg.num_hidden_layers * (2 * kv + kin)
        );
    }
}

#[test]
fn ia3_settings_are_checked_by_name() {
    let err = crate::util::scenario_err(&[
        "adapter=Ia3(target_modules: [\"k_proj\"], feedforward_modules: [\"down_proj\"])",
    ]);
    assert!(err.contains("adapter.Ia3.feedforward_modules"), "{err}");
    let err = crate::util::scenario_err(&["adapter=Ia3(target_modules: [\"x_proj\"])"]);
    assert!(
        err.contains("adapter.Ia3.target_modules") && err.contains("x_proj"),
        "{err}"
    );
}
