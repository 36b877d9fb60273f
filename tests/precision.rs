//! The frozen base in other precisions (`model.base_precision`): packed weights against gguf-py's
//! reference dequantisation and quantisers (`tests/reference/quant_reference.json`), the
//! dequantise-on-the-fly matmul and head against the f32 path on the same values, the
//! footprint plan against what loading gives, and short federated runs per precision.

use std::collections::HashMap;

use candle_core::quantized::{gguf_file, GgmlDType};
use candle_core::{Device, Tensor, Var};
use fedsim::model::weight::Footprint;
use fedsim::model::{
    ops, BaseModel, BasePrecision, FrozenWeight, LlamaConfig, LoraConfig, LoraVars,
};
use rand::SeedableRng;

fn reference() -> serde_json::Value {
    let path = crate::util::root().join("tests/reference/quant_reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// The formula the reference script uses: sin(0.37·i)·2 + 0.1·cos(1.3·i), in f64 then f32.
fn seeded(rows: usize, cols: usize) -> Tensor {
    let v: Vec<f32> = (0..rows * cols)
        .map(|i| {
            let i = i as f64;
            ((i * 0.37).sin() * 2.0 + 0.1 * (i * 1.3).cos()) as f32
        })
        .collect();
    Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn requantised_weights_equal_gguf_pys_reference_quantisers() {
    let r = reference();
    let x = seeded(8, 64);
    for (name, format) in [
        ("Q8_0", GgmlDType::Q8_0),
        ("Q4_1", GgmlDType::Q4_1),
        ("BF16", GgmlDType::BF16),
    ] {
        let w = FrozenWeight::new(x.clone(), format).unwrap();
        assert_eq!(w.format(), format);
        let got = w.to_tensor(&Device::Cpu).unwrap().flatten_all().unwrap();
        let want = Tensor::new(floats(&r["requantised"][name]), &Device::Cpu).unwrap();
        // The block scales are f16 in both; the quantisers may round a value at a tie the
        // other way: at most one step of the block's scale.
        let d = max_diff(&got, &want);
        let step = match format {
            GgmlDType::Q8_0 => 2.2 / 127.0,
            GgmlDType::Q4_1 => 4.4 / 15.0,
            _ => 0.0,
        };
        assert!(d <= step + 1e-6, "{name}: {d} from gguf-py's values");
        let same = got
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .zip(want.to_vec1::<f32>().unwrap())
            .filter(|(a, b)| **a == *b)
            .count();
        assert!(
            same * 100 >= 99 * 512,
            "{name}: only {same} of 512 values bit-equal"
        );
        assert_eq!(w.bytes(), 8 * 64 / format.block_size() * format.type_size());
    }
}

#[test]
fn gguf_blocks_kept_as_stored_dequantise_as_gguf_py_does() {
    let path = crate::smollm2::gguf_path();
    let mut file = std::fs::File::open(&path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let r = reference();
    for row in r["file_rows"].as_array().unwrap() {
        let name = row["tensor"].as_str().unwrap();
        let q = content.tensor(&mut file, name, &Device::Cpu).unwrap();
        let w = FrozenWeight::from_gguf(&q).unwrap();
        assert_eq!(format!("{:?}", w.format()), row["type"].as_str().unwrap());
        let i = row["row"].as_u64().unwrap() as usize;
        let got: Vec<f32> = w
            .to_tensor(&Device::Cpu)
            .unwrap()
            .get(i)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(got, floats(&row["values"]), "{name} row {i}");
    }
}

/// A weight (rows, cols), its packed form in `format`, and the packed form's values in f32.
fn packed(rows: usize, cols: usize, format: GgmlDType) -> (FrozenWeight, FrozenWeight) {
    let w = FrozenWeight::new(seeded(rows, cols), format).unwrap();
    let f = FrozenWeight::F32(w.to_tensor(&Device::Cpu).unwrap());
    (w, f)
}

#[test]
fn packed_matmul_and_input_gradient_equal_the_f32_path_on_the_same_values() {
    for format in [
        GgmlDType::Q8_0,
        GgmlDType::Q4_1,
        GgmlDType::BF16,
        GgmlDType::Q4K,
    ] {
        let (w, f) = packed(40, 256, format);
        // 3 rows take the fused dequantise-and-dot path, 37 the tiled gemm.
        for m in [1, 3, 37] {
            let x = Var::from_tensor(&(seeded(m, 256) * 0.5).unwrap()).unwrap();
            let (yp, yf) = (
                ops::frozen_matmul(x.as_tensor(), &w).unwrap(),
                ops::frozen_matmul(x.as_tensor(), &f).unwrap(),
            );
            let scale = yf.abs().unwrap().max_keepdim(1).unwrap().max(0).unwrap();
            let tol = 1e-5 * (1.0 + scale.to_vec1::<f32>().unwrap()[0]);
            let d = max_diff(&yp, &yf);
            assert!(d <= tol, "{format:?} m={m}: forward differs by {d}");
            let r = seeded(m, 40);
            let gp = (yp * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let gf = (yf * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let d = max_diff(gp.get(&x).unwrap(), gf.get(&x).unwrap());
            assert!(d <= 1e-3, "{format:?} m={m}: input gradient differs by {d}");
        }
    }
}

#[test]
fn packed_matmul_gives_the_same_bits_whatever_the_thread_count() {
    let (w, _) = packed(600, 576, GgmlDType::Q4_1);
    let x = Var::from_tensor(&seeded(64, 576)).unwrap();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let y = ops::frozen_matmul(x.as_tensor(), &w).unwrap();
            let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            (
                y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                g.get(&x)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            )
        })
    };
    assert_eq!(run(1), run(2));
}

/// A small Llama whose widths are whole Q8_0/Q4_1 blocks (tiny's 344 is not).
fn small() -> LlamaConfig {
    LlamaConfig {
        intermediate_size: 352,
        vocab_size: 512,
        ..LlamaConfig::tiny(512)
    }
}

#[test]
fn a_packed_base_gives_the_loss_and_adapter_gradients_of_its_values_in_f32() {
    let cfg = small();
    let base = BaseModel::random(&cfg, 7, &Device::Cpu).unwrap();
    let lora = LoraConfig::qv(4, 8.0);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let adapter = lora.init_adapter(&cfg, &mut rng);
    let examples: Vec<fedsim::tokenizer::TokenizedExample> = (0..3)
        .map(|e| fedsim::tokenizer::TokenizedExample {
            ids: (0..24).map(|i| ((i * 37 + e * 11) % 512) as u32).collect(),
            prompt_len: 4,
        })
        .collect();
    let refs: Vec<_> = examples.iter().collect();
    let batch = fedsim::train::make_batch(&refs, 0, &Device::Cpu).unwrap();
    for precision in [
        BasePrecision::Q8_0,
        BasePrecision::Q4_1,
        BasePrecision::Bf16,
    ] {
        let packed = BaseModel::random(&cfg, 7, &Device::Cpu)
            .unwrap()
            .with_precision(precision)
            .unwrap();
        let values: HashMap<String, Tensor> = packed.named_tensors().unwrap().into_iter().collect();
        let f32 = BaseModel::from_named(&cfg, values, &Device::Cpu).unwrap();
        let grads = |m: &BaseModel| {
            let vars = LoraVars::from_adapter(&adapter, &lora, &Device::Cpu).unwrap();
            let (nll, _) = m.loss_sum(&batch, Some(&vars), None).unwrap();
            let g = nll.backward().unwrap();
            let gs: Vec<Vec<f32>> = vars
                .vars()
                .iter()
                .map(|v| g.get(v).unwrap().flatten_all().unwrap().to_vec1().unwrap())
                .collect();
            (nll.to_scalar::<f32>().unwrap(), gs)
        };
        let ((lp, gp), (lf, gf)) = (grads(&packed), grads(&f32));
        assert!(
            (lp - lf).abs() <= 1e-4 * lf.abs(),
            "{precision:?}: loss {lp} vs {lf}"
        );
        for (a, b) in gp.iter().flatten().zip(gf.iter().flatten()) {
            assert!(
                (a - b).abs() <= 1e-3 * (1.0 + b.abs()),
                "{precision:?}: grad {a} vs {b}"
            );
        }
        // …and the packed model really is packed, unlike the f32 one.
        assert!(packed.footprint().bytes() * 10 < base.footprint().bytes() * 6);
        assert_eq!(f32.footprint().bytes(), base.footprint().bytes());
    }
}

#[test]
fn the_planned_footprint_is_what_loading_gives() {
    let cfg = small();
    for precision in [
        BasePrecision::F32,
        BasePrecision::Bf16,
        BasePrecision::Q8_0,
        BasePrecision::Q4_1,
    ] {
        let m = BaseModel::random(&cfg, 1, &Device::Cpu)
            .unwrap()
            .with_precision(precision)
            .unwrap();
        let plan = Footprint::plan(&cfg, precision, &|_| None);
        assert_eq!(plan.formats, m.footprint().formats, "{precision:?}");
        assert_eq!(plan.kept_f32, 0);
    }
    // tiny's down_proj (344 wide) is not a whole number of 32-value blocks: kept f32, said so.
    let tiny = LlamaConfig::tiny(1024);
    let plan = Footprint::plan(&tiny, BasePrecision::Q8_0, &|_| None);
    assert_eq!(plan.kept_f32, tiny.num_hidden_layers);
    assert!(plan.to_string().contains("kept F32"), "{plan}");
    let m = BaseModel::random(&tiny, 1, &Device::Cpu)
        .unwrap()
        .with_precision(BasePrecision::Q8_0)
        .unwrap();
    assert_eq!(plan.formats, m.footprint().formats);
}

#[test]
fn smollm2s_planned_footprint_is_what_loading_gives() {
    let p = fedsim::model::pretrained::Pretrained::open_gguf(
        crate::smollm2::gguf_path().to_str().unwrap(),
    )
    .unwrap();
    for precision in [BasePrecision::Q4_1, BasePrecision::Stored] {
        let m = p.load_as(&Device::Cpu, precision).unwrap();
        assert_eq!(p.footprint(precision).formats, m.footprint().formats);
        // The projections stay Q4_1 byte for byte, the embedding Q8_0: under 100 MB.
        assert!(m.footprint().bytes() < 100_000_000, "{}", m.footprint());
    }
}

#[test]
fn short_federated_runs_per_precision_learn_and_are_deterministic_across_slot_counts() {
    use crate::util::{round_metrics, run, scenario, SMALL};
    let tmp = tempfile::tempdir().unwrap();
    let f32 = run(&scenario(SMALL, &[]).unwrap(), &tmp.path().join("f32"));
    for p in ["Bf16", "Q8_0", "Q4_1"] {
        let set = format!("model.base_precision={p}");
        let one = scenario(SMALL, &[&set, "slots.count=1"]).unwrap();
        let two = scenario(SMALL, &[&set, "slots.count=2"]).unwrap();
        let (a, b) = (
            run(&one, &tmp.path().join(format!("{p}-1"))),
            run(&two, &tmp.path().join(format!("{p}-2"))),
        );
        let s = &a.summary;
        assert_eq!(s.base_precision, p);
        assert!(
            s.base_bytes * 10 < f32.summary.base_bytes * 6,
            "{p}: {} bytes",
            s.base_bytes
        );
        assert!(s.peak_rss_bytes > 0);
        assert!(
            s.final_eval_loss < s.pretrained_eval_loss - 0.3,
            "{p}: held-out loss {} -> {}",
            s.pretrained_eval_loss,
            s.final_eval_loss
        );
        // Near the f32 base's result (the values differ by the quantisation error only).
        assert!(
            (s.final_eval_loss - f32.summary.final_eval_loss).abs() < 0.1,
            "{p}: {} vs f32 {}",
            s.final_eval_loss,
            f32.summary.final_eval_loss
        );
        let adapter =
            |d: &std::path::Path| std::fs::read(d.join("adapter_model.safetensors")).unwrap();
        assert_eq!(round_metrics(&a.dir), round_metrics(&b.dir), "{p}");
        assert_eq!(adapter(&a.dir), adapter(&b.dir), "{p}");
    }
}

#[test]
fn fused_row_kernels_give_the_bits_of_dequantise_then_dot() {
    for format in [GgmlDType::Q8_0, GgmlDType::Q4_1] {
        let (w, f) = packed(8, 256, format);
        let x = (seeded(1, 256) * 0.5).unwrap();
        let y: Vec<f32> = ops::frozen_matmul(&x, &w)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let xv: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let rows = f.to_tensor(&Device::Cpu).unwrap();
        for (r, got) in y.iter().enumerate() {
            let row: Vec<f32> = rows.get(r).unwrap().to_vec1().unwrap();
            let want = fedsim::model::kernels::dot(&xv, &row);
            assert_eq!(got.to_bits(), want.to_bits(), "{format:?} row {r}");
        }
    }
}

#[test]
fn generation_from_a_4_bit_base_matches_transformers_greedy_and_samples_by_seed() {
    use fedsim::model::generate::{generate, Budget, Sampling};
    let model = fedsim::model::gguf::GgufHeader::read(&crate::smollm2::gguf_path())
        .unwrap()
        .load_as(&Device::Cpu, BasePrecision::Q4_1)
        .unwrap();
    assert!(model.footprint().bytes() < 100_000_000);
    let path = crate::util::shared("testdata/smollm2_reference.json").expect("reference file");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    // The Q4_1 blocks are the file's, so greedy decoding (KV cache, one-row fused kernels)
    // follows transformers' dequantised model token for token.
    for case in reference["cases"].as_array().unwrap() {
        let got = generate(
            &model,
            &ids(&case["input_ids"]),
            Budget::up_to(24),
            Sampling::Greedy,
            &[2],
        )
        .unwrap();
        assert_eq!(got.ids, ids(&case["greedy_24_ids"]), "{}", case["name"]);
    }
    let prompt = ids(&reference["cases"][0]["input_ids"]);
    let sample = |seed| {
        let s = Sampling::Random {
            temperature: 0.8,
            top_k: Some(40),
            top_p: Some(0.95),
            seed,
        };
        generate(&model, &prompt, Budget::up_to(12), s, &[2])
            .unwrap()
            .ids
    };
    assert_eq!(sample(7), sample(7));
}

/// The bound 8-bit activations guarantee: each value moves by at most half its block's step
/// (max|x| / 254), so |Σ w·x − Σ w·x̂| ≤ Σ_blocks (max|x| / 254) · Σ|w| over the block.
fn int8_bound(w: &[f32], x: &[f32]) -> f32 {
    w.chunks(32)
        .zip(x.chunks(32))
        .map(|(wb, xb)| {
            let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
            amax / 254.0 * wb.iter().map(|v| v.abs()).sum::<f32>()
        })
        .sum()
}

#[test]
fn eight_bit_activations_stay_within_the_rounding_bound_and_f32_ones_change_nothing() {
    use fedsim::model::InferenceActivations::{Int8, F32};
    for format in [GgmlDType::Q8_0, GgmlDType::Q4_1] {
        let (w, f) = packed(48, 256, format);
        let (w2, _) = packed(16, 256, format);
        let rows = f.to_tensor(&Device::Cpu).unwrap();
        for m in [1, 3, 5, 37] {
            // Uneven magnitudes, as real activations have (outliers in some blocks).
            let x = (seeded(m, 256) * 0.5).unwrap();
            let xv: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
            let want = ops::frozen_matmul(&x, &f).unwrap();
            let got = ops::decode_matmul(&x, &w, Int8).unwrap();
            let (g, e): (Vec<f32>, Vec<f32>) = (
                got.flatten_all().unwrap().to_vec1().unwrap(),
                want.flatten_all().unwrap().to_vec1().unwrap(),
            );
            for i in 0..m {
                for r in 0..48 {
                    let wr: Vec<f32> = rows.get(r).unwrap().to_vec1().unwrap();
                    let bound = int8_bound(&wr, &xv[i * 256..(i + 1) * 256]) + 1e-3;
                    let d = (g[i * 48 + r] - e[i * 48 + r]).abs();
                    assert!(d <= bound, "{format:?} m={m} ({i}, {r}): {d} > {bound}");
                }
            }
            // Several weights in one pass give each weight's own bits.
            let both = ops::decode_matmuls(&x, &[&w, &w2], Int8).unwrap();
            assert_eq!(max_diff(&both[0], &got), 0.0, "{format:?} m={m}");
            let alone = ops::decode_matmul(&x, &w2, Int8).unwrap();
            assert_eq!(max_diff(&both[1], &alone), 0.0, "{format:?} m={m}");
            // F32 activations are the training forward's matmul, bit for bit.
            let f32_path = ops::decode_matmul(&x, &w, F32).unwrap();
            let train = ops::frozen_matmul(&x, &w).unwrap();
            assert_eq!(max_diff(&f32_path, &train), 0.0, "{format:?} m={m}");
        }
    }
}

#[test]
fn eight_bit_kernels_give_the_same_bits_whatever_the_thread_count_and_instruction_set() {
    use fedsim::model::q8dot::{self, Q8Row};
    use fedsim::model::InferenceActivations::Int8;
    let (w, _) = packed(600, 576, GgmlDType::Q4_1);
    let (w8, _) = packed(600, 576, GgmlDType::Q8_0);
    let x = seeded(2, 576);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let out = ops::decode_matmuls(&x, &[&w, &w8], Int8).unwrap();
            out.iter()
                .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
                .collect::<Vec<_>>()
        })
    };
    assert_eq!(run(1), run(3));
    // The portable kernels against the SIMD ones (where this CPU has them: both ran).
    let xv: Vec<f32> = x.get(0).unwrap().to_vec1().unwrap();
    let q = Q8Row::quantise(&xv);
    for (format, p) in [(GgmlDType::Q4_1, &w), (GgmlDType::Q8_0, &w8)] {
        let FrozenWeight::Packed(p) = p else {
            panic!("packed")
        };
        for r in [0, 1, 599] {
            let raw = p.raw_row(r);
            let (fast, portable) = match format {
                GgmlDType::Q4_1 => (q8dot::dot_q4_1(raw, &q), q8dot::portable::dot_q4_1(raw, &q)),
                _ => (q8dot::dot_q8_0(raw, &q), q8dot::portable::dot_q8_0(raw, &q)),
            };
            assert_eq!(fast.to_bits(), portable.to_bits(), "{format:?} row {r}");
        }
    }
}

#[test]
fn int8_inference_activations_need_a_q8_0_or_q4_1_base_and_leave_training_alone() {
    use crate::util::{run, scenario, sim, SMALL};
    use fedsim::ScenarioError;
    // A base with nothing in Q8_0/Q4_1: refused, naming the field and the fix.
    match scenario(SMALL, &["model.inference_activations=Int8"]) {
        Err(ScenarioError::Invalid { field, message, .. }) => {
            assert_eq!(field, "model.inference_activations");
            assert!(message.contains("model.base_precision"), "{message}");
        }
        other => panic!("expected a field error, got {:?}", other.map(|s| s.name)),
    }
    // With a Q8_0 base: accepted, recorded, and training's bits are the F32-activation run's
    // (the setting reaches KV-cache inference only).
    let tmp = tempfile::tempdir().unwrap();
    let q8 = "model.base_precision=Q8_0";
    let int8 = scenario(SMALL, &[q8, "model.inference_activations=Int8", "rounds=2"]).unwrap();
    assert_eq!(
        int8.inference_activations,
        fedsim::model::InferenceActivations::Int8
    );
    let f32 = scenario(SMALL, &[q8, "rounds=2"]).unwrap();
    let (a, b) = (
        run(&int8, &tmp.path().join("int8")),
        run(&f32, &tmp.path().join("f32")),
    );
    assert_eq!(a.summary.inference_activations, "Int8");
    assert_eq!(b.summary.inference_activations, "F32");
    let adapter = |d: &std::path::Path| std::fs::read(d.join("adapter_model.safetensors")).unwrap();
    assert_eq!(adapter(&a.dir), adapter(&b.dir));
    // The CLI: refused on an f32 base, with the flag that fixes it.
    let gguf = crate::smollm2::gguf_path();
    let (ok, _, err) = sim(&[
        "generate",
        "--model",
        gguf.to_str().unwrap(),
        "--inference-activations",
        "Int8",
        "--max-tokens",
        "2",
        "hi",
    ]);
    assert!(
        !ok && err.contains("--base-precision Q8_0 or Q4_1"),
        "{err}"
    );
    let (ok, _, err) = sim(&[
        "generate",
        "--model",
        gguf.to_str().unwrap(),
        "--base-precision",
        "Q4_1",
        "--inference-activations",
        "Int8",
        "--max-tokens",
        "2",
        "hi",
    ]);
    assert!(ok, "{err}");
}
