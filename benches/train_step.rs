//! LoRA training step: batch 4 × 128 tokens, AdamW, on the `tiny` preset and on a
//! SmolLM2-135M-shaped model with random weights (hidden 576, 30 layers, vocab 49,152).
//!
//! Run with: cargo bench --bench train_step
//! (FEDSIM_BENCH_SKIP_135M=1 skips the 135M-shaped model, ~2 minutes.)

use candle_core::Device;
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fedsim::model::lora::DropoutRng;
use fedsim::model::{BaseModel, LlamaConfig, LoraConfig, LoraVars};
use fedsim::tokenizer::TokenizedExample;
use fedsim::train::make_batch;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Loss on every next-token position (as `../shared/bench/torch_lora.py` with labels = input
/// ids), LoRA dropout 0 as there.
fn bench_config(c: &mut Criterion, name: &str, cfg: LlamaConfig, samples: usize, threads: usize) {
    // candle sizes matmul parallelism from this variable on every call (see src/slots.rs).
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    // As `sim` sets it (src/main.rs): candle's element-wise workers spin briefly.
    std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "100");
    let name = format!("{name}_{threads}thr");
    let device = Device::Cpu;
    let model = BaseModel::random(&cfg, 1, &device).expect("model");
    let lora = LoraConfig::qv(8, 16.0);
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let adapter = lora.init_adapter(&cfg, &mut rng);
    let vars = LoraVars::from_adapter(&adapter, &lora, &device).expect("vars");
    let mut opt = AdamW::new(
        vars.vars().to_vec(),
        ParamsAdamW {
            lr: 1e-4,
            ..Default::default()
        },
    )
    .expect("opt");
    let (batch, seq) = (4, 128);
    let examples: Vec<TokenizedExample> = (0..batch)
        .map(|_| TokenizedExample {
            ids: (0..seq)
                .map(|_| rng.random_range(0..cfg.vocab_size as u32))
                .collect(),
            prompt_len: 0,
        })
        .collect();
    let refs: Vec<&TokenizedExample> = examples.iter().collect();
    let input = make_batch(&refs, 0, &device).expect("batch");
    let mut dropout = DropoutRng::new(ChaCha8Rng::seed_from_u64(3));
    let mut group = c.benchmark_group("lora_train_step");
    group.sample_size(samples);
    group.throughput(Throughput::Elements((batch * seq) as u64));
    group.bench_function(&name, |b| {
        b.iter(|| {
            let (nll, n) = model
                .loss_sum(&input, Some(&vars), Some(&mut dropout))
                .expect("loss");
            let loss = (nll / n as f64).expect("mean");
            opt.backward_step(&loss).expect("step");
        })
    });
    group.finish();
}

fn train_step(c: &mut Criterion) {
    // As `sim` does in main.
    fedsim::host::tune_allocator_for_training();
    for threads in [1, 2] {
        bench_config(c, "tiny_b4x128", LlamaConfig::tiny(1024), 20, threads);
    }
    if std::env::var_os("FEDSIM_BENCH_SKIP_135M").is_none() {
        let cfg = LlamaConfig::smollm2_135m();
        bench_config(c, "smollm2_135m_shape_b4x128", cfg, 10, 2);
    }
}

criterion_group!(benches, train_step);
criterion_main!(benches);
