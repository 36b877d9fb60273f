//! One LoRA training step on the SmolLM2-135M shape, repeated: median step time and the
//! process's peak RSS, for comparison with `../shared/bench/torch_lora.py` (batch 4 × 128,
//! r = 8 on q/v, AdamW, loss on every next-token position, LoRA dropout 0, f32, 2 threads).
//! The criterion bench `train_step` times the same step; this adds the memory figure.
//!
//! Run with: RAYON_NUM_THREADS=2 cargo run --release --example train_step [STEPS [PRECISION
//! [MODEL [COMPUTE]]]] — PRECISION is a `model.base_precision` (F32, Bf16, Q8_0, Q4_1,
//! Stored); MODEL a GGUF file or known name (`smollm2-135m-instruct`), read straight into that
//! precision, or `random` (the default: random f32 weights of the same shape, then converted);
//! COMPUTE a `model.compute_dtype` (F32, the default, or Bf16).

use std::time::Instant;

use candle_core::Device;
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use fedsim::model::pretrained::Pretrained;
use fedsim::model::{BaseModel, BasePrecision, ComputeDtype, LlamaConfig, LoraConfig, LoraVars};
use fedsim::tokenizer::TokenizedExample;
use fedsim::train::make_batch;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() -> anyhow::Result<()> {
    // As `sim` does (src/main.rs): candle's element-wise workers spin briefly, not 25,000
    // rounds, so they leave the cores to the next matmul.
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "100");
    }
    fedsim::host::tune_allocator_for_training();
    let steps: usize = std::env::args().nth(1).map_or(Ok(10), |s| s.parse())?;
    let precision: BasePrecision = match std::env::args().nth(2) {
        Some(p) => ron::from_str(&p)?,
        None => BasePrecision::F32,
    };
    let device = Device::Cpu;
    let model = match std::env::args().nth(3).as_deref() {
        None | Some("random") => BaseModel::random(&LlamaConfig::smollm2_135m(), 1, &device)?
            .with_precision(precision)?,
        Some(spec) => Pretrained::open_gguf(spec)?.load_as(&device, precision)?,
    };
    let compute: ComputeDtype = match std::env::args().nth(4) {
        Some(c) => c.parse()?,
        None => ComputeDtype::F32,
    };
    let model = model.with_compute_dtype(compute);
    let cfg = model.config().clone();
    println!(
        "base {}, compute {}: {}",
        precision.name(),
        compute.name(),
        model.footprint()
    );
    let lora = LoraConfig::qv(8, 16.0);
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let vars = LoraVars::from_adapter(&lora.init_adapter(&cfg, &mut rng), &lora, &device)?;
    let params = ParamsAdamW {
        lr: 2e-4,
        ..Default::default()
    };
    let mut opt = AdamW::new(vars.vars().to_vec(), params)?;
    let examples: Vec<TokenizedExample> = (0..4)
        .map(|_| TokenizedExample {
            ids: (0..128)
                .map(|_| rng.random_range(0..cfg.vocab_size as u32))
                .collect(),
            prompt_len: 0,
        })
        .collect();
    let refs: Vec<&TokenizedExample> = examples.iter().collect();
    let input = make_batch(&refs, 0, &device)?;
    // On a pool's own thread, as a slot runs its jobs (`pool.install`), so parallel parts start
    // from a worker rather than waking the pool from outside.
    let pool = rayon::ThreadPoolBuilder::new().build()?;
    let mut times = pool.install(|| -> anyhow::Result<Vec<f64>> {
        let mut times = Vec::new();
        for step in 0..steps + 2 {
            let t = Instant::now();
            let (nll, n) = model.loss_sum(&input, Some(&vars), None)?;
            opt.backward_step(&(nll / n as f64)?)?;
            if step >= 2 {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        Ok(times)
    })?;
    times.sort_by(f64::total_cmp);
    println!(
        "SmolLM2-135M shape, batch 4 x 128, threads {}, 2 warm-up + {steps} steps: median {:.3} s, min {:.3} s, max {:.3} s; peak RSS {:.0} MiB",
        pool.current_num_threads(),
        times[times.len() / 2],
        times[0],
        times[times.len() - 1],
        peak_rss_mib()
    );
    Ok(())
}
