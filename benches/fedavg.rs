//! FedAvg aggregation of K client updates of 460,800 f32 parameters (rank-8 LoRA on q_proj and
//! v_proj of the SmolLM2-135M shape): the fold alone, and parse-the-upload + fold as the
//! aggregator actor does it (the mean included, so buffered updates are folded). numpy's
//! inexact f32 weighted sum of the same workload is `benches/numpy_fold.py`: run both in one
//! sitting.
//!
//! Run with: cargo bench --bench fedavg

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fedsim::model::{AdapterLayout, AdapterSet, LlamaConfig, LoraConfig, TargetModule};
use fedsim::strategy::FedAvgAccumulator;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn fedavg(c: &mut Criterion) {
    let lora = LoraConfig {
        r: 8,
        alpha: 16.0,
        dropout: 0.0,
        target_modules: vec![TargetModule::QProj, TargetModule::VProj],
    };
    let layout = Arc::new(AdapterLayout::new(&LlamaConfig::smollm2_135m(), &lora));
    assert_eq!(layout.len(), 460_800);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let updates: Vec<AdapterSet> = (0..10)
        .map(|_| {
            let data = (0..layout.len())
                .map(|_| rng.random_range(-1e-2f32..1e-2))
                .collect();
            AdapterSet::new(layout.clone(), data)
        })
        .collect();
    let payloads: Vec<Vec<u8>> = updates
        .iter()
        .map(|u| u.to_safetensors().unwrap())
        .collect();
    let mut group = c.benchmark_group("fedavg_460800");
    group.sample_size(10);
    for k in [10usize, 100] {
        group.throughput(Throughput::Bytes((k * layout.len() * 4) as u64));
        group.bench_with_input(BenchmarkId::new("fold", k), &k, |b, &k| {
            b.iter(|| {
                let mut acc = FedAvgAccumulator::new(layout.len());
                for i in 0..k {
                    acc.fold(updates[i % updates.len()].data(), 100 + i as u64)
                        .unwrap();
                }
                acc.mean()
            })
        });
        // What the aggregator does with k uploads: parse each into a buffer, fold, mean.
        let parse_and_fold = |acc: &mut FedAvgAccumulator, k: usize| {
            for i in 0..k {
                let mut buf = acc.take_buffer();
                AdapterSet::read_safetensors_into(&layout, &payloads[i % payloads.len()], &mut buf)
                    .unwrap();
                acc.fold_owned(buf, 100 + i as u64).unwrap();
            }
            acc.mean()
        };
        group.bench_with_input(BenchmarkId::new("parse_and_fold", k), &k, |b, &k| {
            b.iter(|| parse_and_fold(&mut FedAvgAccumulator::new(layout.len()), k))
        });
        // As the aggregator does across rounds: one accumulator, reset (allocations kept).
        let mut acc = FedAvgAccumulator::new(layout.len());
        group.bench_with_input(BenchmarkId::new("parse_and_fold_steady", k), &k, |b, &k| {
            b.iter(|| {
                acc.reset();
                parse_and_fold(&mut acc, k)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, fedavg);
criterion_main!(benches);
