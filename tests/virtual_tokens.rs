//! Prompt tuning and prefix tuning against Hugging Face transformers + PEFT (`tests/reference/
//! make_method_reference.py` on the fixtures `examples/export_reference --prompt | --prefix`
//! writes): logits (padded too), the gradient, one AdamW step, greedy generation from the KV
//! cache; the round trip through PEFT's adapter directory; federated runs that lower the loss;
//! settings checked by name.

use candle_core::Device;
use fedsim::model::generate::{continuation_logprobs, generate, Budget, Sampling};
use fedsim::model::reference::Fixture;
use fedsim::model::{LoraConfig, LoraVars, PromptInit};
use serde_json::Value;

use crate::peft_methods::{batch, matches_peft};

#[test]
fn prompt_tuning_matches_peft_in_logits_gradients_a_step_and_generation() {
    matches_peft(Fixture::build_prompt().unwrap(), "prompt_reference.json");
}

#[test]
fn prefix_tuning_matches_peft_in_logits_gradients_a_step_and_generation() {
    matches_peft(Fixture::build_prefix().unwrap(), "prefix_reference.json");
}

#[test]
fn prompt_and_prefix_adapters_round_trip_through_peft_format() {
    for (f, peft_type, width) in [
        (Fixture::build_prompt().unwrap(), "PROMPT_TUNING", 64),
        (
            Fixture::build_prefix().unwrap(),
            "PREFIX_TUNING",
            2 * 2 * 2 * 16,
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        f.adapter
            .save_peft(dir.path(), &f.lora, &f.cfg, "base_model")
            .unwrap();
        let path = dir.path().join("adapter_config.json");
        let config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(config["peft_type"], peft_type);
        assert_eq!(config["num_virtual_tokens"], f.lora.method.virtual_tokens());
        // One tensor, PEFT's key, (n, width).
        let layout = f.adapter.layout();
        assert_eq!(layout.tensors().len(), 1);
        assert_eq!(layout.tensors()[0].peft_name(), "prompt_embeddings");
        assert_eq!(
            layout.tensors()[0].shape,
            (f.lora.method.virtual_tokens(), width)
        );
        let (back, lora) = fedsim::model::peft::load_peft(dir.path(), &f.cfg).unwrap();
        assert_eq!(lora, f.lora);
        assert_eq!(back.data(), f.adapter.data());
        // A reparametrised prefix (PEFT's prefix_projection) is refused, naming the file.
        let bad = config
            .to_string()
            .replace("}", ",\"prefix_projection\":true}");
        let bad = bad.replace("\"prefix_projection\":false,", "");
        std::fs::write(&path, bad).unwrap();
        let err = fedsim::model::peft::load_peft(dir.path(), &f.cfg)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("adapter_config.json") && err.contains("prefix_projection"),
            "{err}"
        );
    }
}

#[test]
fn the_kv_cache_scores_continuations_as_the_full_forward_does() {
    // Log-likelihood scoring reads the prompt once and each continuation from a copy of the
    // cache: with virtual tokens in front it must equal the plain forward's log-softmax.
    for f in [
        Fixture::build_prompt().unwrap(),
        Fixture::build_prefix().unwrap(),
    ] {
        let vars = LoraVars::fixed(&f.adapter, &f.lora, &Device::Cpu).unwrap();
        let merged = f.model.merged(&vars).unwrap();
        let ids = fedsim::model::reference::INPUT_IDS[0];
        let (prompt, cont) = ids.split_at(7);
        let ours = continuation_logprobs(&merged, prompt, &[cont.to_vec()]).unwrap()[0];
        let input = batch();
        let logits = f
            .model
            .forward(&input.input_ids, &input.mask, Some(&vars))
            .unwrap();
        let logp =
            candle_nn::ops::log_softmax(&logits.narrow(0, 0, 1).unwrap().squeeze(0).unwrap(), 1)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
        let full: f64 = (0..cont.len())
            .map(|i| logp[6 + i][cont[i] as usize] as f64)
            .sum();
        assert!(
            (ours - full).abs() < 1e-3,
            "{}: {ours} vs {full}",
            f.lora.method_name()
        );
        // The context counts the virtual tokens.
        let long = vec![1u32; f.cfg.max_position_embeddings - f.lora.method.virtual_tokens()];
        let err = generate(&merged, &long, Budget::up_to(1), Sampling::Greedy, &[]).unwrap_err();
        assert!(err.to_string().contains("context"), "{err}");
    }
}

#[test]
fn prompt_tuning_starts_from_the_bases_embeddings_when_asked() {
    let f = Fixture::build().unwrap();
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(3);
    let text = LoraConfig::prompt_tuning(5, PromptInit::Text("two words".into()));
    let a = text
        .init_adapter_with_text(&f.model, &[17, 250], &mut rng)
        .unwrap();
    // The text's tokens repeated to n: 17, 250, 17, 250, 17.
    let rows = f.model.embedding_rows(&[17, 250, 17, 250, 17]).unwrap();
    assert_eq!(a.data(), &rows[..]);
    let err = text
        .init_adapter_with_text(&f.model, &[], &mut rng)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("two words") && err.contains("no tokens"),
        "{err}"
    );
    let vocab = LoraConfig::prompt_tuning(4, PromptInit::SampleVocab);
    let a = vocab.init_adapter_for(&f.model, &mut rng).unwrap();
    let h = f.cfg.hidden_size;
    for row in a.data().chunks(h) {
        let id =
            (0..f.cfg.vocab_size as u32).find(|&i| f.model.embedding_rows(&[i]).unwrap() == row);
        assert!(
            id.is_some(),
            "a SampleVocab row is not a vocabulary embedding"
        );
    }
}

#[test]
fn federated_prompt_and_prefix_tuning_lower_the_loss() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, (adapter, extra)) in [
        (
            "adapter=PromptTuning(num_virtual_tokens: 8, init: SampleVocab)",
            "strategy.kind=FedAvg",
        ),
        (
            "adapter=PromptTuning(num_virtual_tokens: 4, init: Text(\"the answer\"))",
            "strategy.kind=Median",
        ),
        (
            "adapter=PrefixTuning(num_virtual_tokens: 8)",
            "strategy.kind=FedAvg",
        ),
        (
            "adapter=PromptTuning(num_virtual_tokens: 4, init: SampleVocab)",
            "strategy.kind=FedAdam(server_lr: 0.01)",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let set = [adapter, extra, "train.lr_max=3e-2", "rounds=3"];
        let s = crate::util::scenario(crate::util::SMALL, &set).unwrap();
        let r = crate::util::run(&s, &tmp.path().join(i.to_string()));
        let sum = fedsim::report::Summary::read(&r.dir).unwrap();
        assert!(
            sum.final_eval_loss < sum.pretrained_eval_loss,
            "{adapter} {extra}: {} → {}",
            sum.pretrained_eval_loss,
            sum.final_eval_loss
        );
        let n = s.lora.method.virtual_tokens();
        let width = if adapter.contains("Prefix") {
            s.model.num_hidden_layers * 2 * s.model.num_key_value_heads * s.model.head_dim()
        } else {
            s.model.hidden_size
        };
        assert_eq!(sum.trainable_parameters, n * width, "{adapter}");
        let config = std::fs::read_to_string(r.dir.join("adapter_config.json")).unwrap();
        let peft_type = if adapter.contains("Prefix") {
            "PREFIX_TUNING"
        } else {
            "PROMPT_TUNING"
        };
        assert!(config.contains(peft_type), "{config}");
    }
}

#[test]
fn virtual_token_settings_are_checked_by_name() {
    let err = crate::util::scenario_err(&["adapter=PromptTuning(num_virtual_tokens: 0)"]);
    assert!(
        err.contains("adapter.PromptTuning.num_virtual_tokens"),
        "{err}"
    );
    let err = crate::util::scenario_err(&["adapter=PrefixTuning(num_virtual_tokens: 100000)"]);
    assert!(
        err.contains("adapter.PrefixTuning.num_virtual_tokens") && err.contains("max_seq_len"),
        "{err}"
    );
    let err = crate::util::scenario_err(&["adapter=PromptTuning(init: Text(\"  \"))"]);
    assert!(err.contains("adapter.PromptTuning.init"), "{err}");
}

#[test]
fn the_memory_estimate_counts_virtual_tokens_and_error_feedback_residuals() {
    let plain = crate::util::scenario(crate::util::SMALL, &[]).unwrap();
    let prompt = crate::util::scenario(
        crate::util::SMALL,
        &["adapter=PromptTuning(num_virtual_tokens: 16)"],
    )
    .unwrap();
    assert!(prompt.memory.training > plain.memory.training);
    assert_eq!(plain.memory.client_state, 0.0);
    let ef = crate::util::scenario(
        crate::util::SMALL,
        &["compression=TopK(fraction: 0.1, error_feedback: true)"],
    )
    .unwrap();
    let values = ef.lora.trainable_parameters(&ef.model) as f64;
    assert_eq!(
        ef.memory.client_state,
        4.0 * ef.data.clients as f64 * values
    );
}
