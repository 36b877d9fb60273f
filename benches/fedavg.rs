//! FedAvg aggregation of K client updates of 460,800 f32 parameters (rank-8 LoRA on q_proj and
//! v_proj of the SmolLM2-135M shape): the fold alone, and parse-the-upload + fold as the
//! aggregator actor does it (the mean included, so buffered updates are folded). numpy's
//! inexact f32 weighted sum of the same workload is `benches/numpy_fold.py`: run both in one
//! sitting.
//!
//! Run with: cargo bench --bench fedavg

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fedsim::model::{AdapterLayout, AdapterSet, LlamaConfig, LoraConfig, PayloadReader};
use fedsim::strategy::FedAvgAccumulator;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn fedavg(c: &mut Criterion) {
    let lora = LoraConfig::qv(8, 16.0);
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
    // Uploads as the aggregator receives them: owned safetensors buffers (shared here, so the
    // bench cycles over 10 as numpy's does; an Arc clone copies nothing).
    let payloads: Vec<Arc<Vec<u8>>> = updates
        .iter()
        .map(|u| Arc::new(u.to_safetensors().unwrap()))
        .collect();
    let segments: Vec<usize> = layout.tensors().iter().map(|t| t.numel()).collect();
    let mut reader = PayloadReader::new(layout.clone());
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
        // What the aggregator does with k uploads: find the tensors in each payload, fold them
        // from the payload's bytes, take the mean.
        let mut parse_and_fold = |acc: &mut FedAvgAccumulator, k: usize| {
            for i in 0..k {
                let payload = &payloads[i % payloads.len()];
                let starts = reader.starts(payload).unwrap().to_vec();
                acc.fold_payload(payload.clone(), starts, 100 + i as u64, i as u64);
            }
            acc.mean()
        };
        group.bench_with_input(BenchmarkId::new("parse_and_fold", k), &k, |b, &k| {
            b.iter(|| parse_and_fold(&mut FedAvgAccumulator::with_segments(&segments), k))
        });
        // As the aggregator does across rounds: one accumulator, reset (allocations kept).
        let mut acc = FedAvgAccumulator::with_segments(&segments);
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
