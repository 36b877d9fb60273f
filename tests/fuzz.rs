//! Fuzzing (proptest, fixed seed, bounded cases for CI; FEDSIM_FUZZ_CASES=N for longer runs):
//! the scenario parser with `--set`, trace CSVs, GGUF headers, PEFT configs and uploaded
//! safetensors never panic on mutated input — they accept it or refuse it with an error.

use std::path::Path;
use std::sync::Arc;

use fedsim::model::{AdapterLayout, AdapterSet};
use fedsim::Scenario;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use crate::util::{run, scenario, SMALL};

fn runner(default_cases: u32) -> TestRunner {
    let cases = std::env::var("FEDSIM_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]))
}

/// One edit of a byte string: overwrite, delete a span, insert bytes, or truncate.
#[derive(Debug, Clone)]
enum Edit {
    Put(usize, u8),
    Cut(usize, usize),
    Insert(usize, Vec<u8>),
    Truncate(usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Put(i, b)),
        (any::<usize>(), 1usize..16).prop_map(|(i, n)| Edit::Cut(i, n)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, v)| Edit::Insert(i, v)),
        any::<usize>().prop_map(Edit::Truncate),
    ];
    prop::collection::vec(edit, 1..6)
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let n = bytes.len().max(1);
        match e {
            Edit::Put(i, b) => {
                if !bytes.is_empty() {
                    bytes[i % n] = *b;
                }
            }
            Edit::Cut(i, k) => {
                let a = (i % n).min(bytes.len());
                let b = (a + k).min(bytes.len());
                bytes.drain(a..b);
            }
            Edit::Insert(i, v) => {
                let a = (i % n).min(bytes.len());
                bytes.splice(a..a, v.iter().copied());
            }
            Edit::Truncate(i) => bytes.truncate(i % n),
        }
    }
    bytes
}

/// `--set` arguments from the scenario's paths and hostile values.
fn overrides() -> impl Strategy<Value = Vec<String>> {
    let path = prop::sample::select(vec![
        "rounds",
        "seed",
        "clients.count",
        "train.batch_size",
        "train.lr_max",
        "train.local_steps",
        "strategy.kind",
        "strategy.fraction_fit",
        "system.profiles",
        "system.byzantine",
        "system.deadline_s",
        "partition",
        "partition.Dirichlet.alpha",
        "lora.r",
        "data.max_seq_len",
        "dp",
        "model.source",
        "nope.deeper",
    ]);
    let value = prop::sample::select(vec![
        "0",
        "-1",
        "1e308",
        "NaN",
        "inf",
        "18446744073709551615",
        "None",
        "Some(3)",
        "\"\"",
        "Krum(byzantine: 18446744073709551615)",
        "FedAdam()",
        "Dirichlet(alpha: 1e-300)",
        "Fixed((flops: 1e-300, up_mbps: 1, down_mbps: 1, latency_s: 0))",
        "{\"a\":",
        "(",
        "Some((clients: Share(2.0), attack: Scale(1e308)))",
    ]);
    prop::collection::vec((path, value).prop_map(|(p, v)| format!("{p}={v}")), 0..3)
}

#[test]
fn mutated_scenarios_and_overrides_never_panic() {
    let mut r = runner(300);
    r.run(&(edits(), overrides()), |(edits, sets)| {
        let text = apply(SMALL.as_bytes().to_vec(), &edits);
        let text = String::from_utf8_lossy(&text);
        // Ok or a refusal; a panic fails the case.
        let _ = Scenario::from_ron(&text, Path::new("fuzz.ron"), &sets);
        Ok(())
    })
    .unwrap();
}

#[test]
fn mutated_trace_csvs_never_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("t.csv");
    let mut good = String::from("client,flops,up_mbps,down_mbps,latency_s,windows\n");
    for c in 0..4 {
        good.push_str(&format!("{c},1e9,10,20,0.05,0-100;200-300\n"));
    }
    let mut r = runner(300);
    r.run(&edits(), |edits| {
        std::fs::write(&path, apply(good.clone().into_bytes(), &edits)).unwrap();
        let _ = fedsim::devices::read_trace(&path, 4);
        Ok(())
    })
    .unwrap();
}

#[test]
fn mutated_peft_adapters_never_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let s = scenario(SMALL, &["rounds=1"]).unwrap();
    let r = run(&s, &tmp.path().join("run"));
    let config = std::fs::read(r.dir.join("adapter_config.json")).unwrap();
    let weights = std::fs::read(r.dir.join("adapter_model.safetensors")).unwrap();
    let layout = Arc::new(AdapterLayout::new(&s.model, &s.lora));
    let dir = tmp.path().join("peft");
    std::fs::create_dir(&dir).unwrap();
    let mut runner = runner(200);
    runner
        .run(&(edits(), edits(), any::<bool>()), |(ce, we, which)| {
            // Mutate the config, or the weights as a client's upload would arrive.
            let (c, w) = if which {
                (apply(config.clone(), &ce), weights.clone())
            } else {
                (config.clone(), apply(weights.clone(), &we))
            };
            std::fs::write(dir.join("adapter_config.json"), &c).unwrap();
            std::fs::write(dir.join("adapter_model.safetensors"), &w).unwrap();
            let _ = fedsim::model::peft::load_peft(&dir, &s.model);
            let _ = AdapterSet::from_safetensors(layout.clone(), &w);
            Ok(())
        })
        .unwrap();
}

/// A small GGUF (llama metadata, two tensors) as candle writes one.
fn small_gguf() -> Vec<u8> {
    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    use candle_core::{Device, Tensor};
    let t = |rows: usize| {
        let x = Tensor::arange(0f32, (rows * 32) as f32, &Device::Cpu)
            .unwrap()
            .reshape((rows, 32))
            .unwrap();
        QTensor::quantize(&x, GgmlDType::Q4_1).unwrap()
    };
    let (a, b) = (t(4), t(2));
    let s = |v: &str| gguf_file::Value::String(v.into());
    let arch = s("llama");
    let name = s("fuzz");
    let ctx = gguf_file::Value::U32(256);
    let tokens = gguf_file::Value::Array(vec![s("<s>"), s("a"), s("b")]);
    let eps = gguf_file::Value::F32(1e-5);
    let mut out = std::io::Cursor::new(Vec::new());
    gguf_file::write(
        &mut out,
        &[
            ("general.architecture", &arch),
            ("general.name", &name),
            ("llama.context_length", &ctx),
            ("llama.attention.layer_norm_rms_epsilon", &eps),
            ("tokenizer.ggml.tokens", &tokens),
        ],
        &[("token_embd.weight", &a), ("output.weight", &b)],
    )
    .unwrap();
    out.into_inner()
}

#[test]
fn mutated_gguf_headers_never_panic() {
    let bytes = small_gguf();
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("m.gguf");
    std::fs::write(&path, &bytes).unwrap();
    // The pristine file reads.
    fedsim::model::gguf::GgufHeader::read(&path).unwrap();
    let mut runner = runner(500);
    runner
        .run(&edits(), |e| {
            std::fs::write(&path, apply(bytes.clone(), &e)).unwrap();
            // Declared lengths beyond the file are refused before anything is allocated, so a
            // mutated count cannot exhaust memory; accepted headers go on to the config.
            if let Ok(h) = fedsim::model::gguf::GgufHeader::read(&path) {
                let _ = h.config();
            }
            Ok(())
        })
        .unwrap();
}
