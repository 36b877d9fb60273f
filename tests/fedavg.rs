//! FedAvg: weighted mean of hand-built updates, independent of arrival order.

use std::sync::Arc;

use fedsim::model::{AdapterLayout, AdapterSet, LlamaConfig, LoraConfig, TargetModule};
use fedsim::strategy::FedAvgAccumulator;

#[test]
fn fedavg_equals_the_hand_computed_weighted_average() {
    let mut acc = FedAvgAccumulator::new(3);
    acc.fold(&[1.0, -2.0, 0.5], 10).unwrap();
    acc.fold(&[3.0, 4.0, -0.5], 30).unwrap();
    acc.fold(&[0.0, 0.0, 1.0], 60).unwrap();
    // (10·1 + 30·3 + 60·0)/100 = 1.0; (−20 + 120 + 0)/100 = 1.0; (5 − 15 + 60)/100 = 0.5
    let mean = acc.mean().unwrap();
    assert_eq!(mean, vec![1.0, 1.0, 0.5]);
    assert_eq!(acc.total_weight(), 100);
    assert_eq!(acc.count(), 3);
}

#[test]
fn fedavg_matches_f64_reference_and_ignores_order() {
    let n = 1000;
    let updates: Vec<(Vec<f32>, u64)> = (0..7u64)
        .map(|k| {
            (
                (0..n)
                    .map(|i| ((i as f32 * 0.37 + k as f32).sin()) * 1e-2)
                    .collect(),
                1 + k * 13,
            )
        })
        .collect();
    let total: u64 = updates.iter().map(|u| u.1).sum();
    let reference: Vec<f64> = (0..n)
        .map(|i| {
            updates
                .iter()
                .map(|(u, w)| u[i] as f64 * *w as f64)
                .sum::<f64>()
                / total as f64
        })
        .collect();
    let mut fwd = FedAvgAccumulator::new(n);
    for (u, w) in &updates {
        fwd.fold(u, *w).unwrap();
    }
    let mut rev = FedAvgAccumulator::new(n);
    for (u, w) in updates.iter().rev() {
        rev.fold(u, *w).unwrap();
    }
    let (a, b) = (fwd.mean().unwrap(), rev.mean().unwrap());
    assert_eq!(a, b, "the average must be bit-identical whatever the order");
    for (x, r) in a.iter().zip(&reference) {
        assert!((*x as f64 - r).abs() <= 1e-9 + 1e-6 * r.abs(), "{x} vs {r}");
    }
}

#[test]
fn fedavg_applies_the_mean_update_to_the_global_adapter() {
    let cfg = LlamaConfig {
        num_hidden_layers: 1,
        ..LlamaConfig::tiny(300)
    };
    let lora = LoraConfig {
        r: 2,
        alpha: 4.0,
        dropout: 0.0,
        target_modules: vec![TargetModule::QProj],
    };
    let layout = Arc::new(AdapterLayout::new(&cfg, &lora));
    let global = AdapterSet::new(layout.clone(), vec![1.0; layout.len()]);
    let mut acc = FedAvgAccumulator::new(layout.len());
    acc.fold(&vec![0.5; layout.len()], 1).unwrap();
    acc.fold(&vec![-0.25; layout.len()], 3).unwrap();
    let next = acc.apply_to(&global);
    assert!(next.data().iter().all(|&v| v == 1.0 + (0.5 - 0.75) / 4.0));
    let mut before = acc.clone();
    assert!(acc.fold(&vec![f32::NAN; layout.len()], 5).is_err());
    assert!(acc.fold(&vec![1e9; layout.len()], 5).is_err());
    assert_eq!(
        acc.apply_to(&global),
        before.apply_to(&global),
        "a rejected update changes nothing"
    );
    let mut empty = FedAvgAccumulator::new(layout.len());
    assert_eq!(
        empty.apply_to(&global),
        global,
        "no update leaves the global unchanged"
    );
}

#[test]
fn batched_folds_are_exact_whatever_the_batching_order_and_path() {
    // 21 updates (batches of 8, 8 and 5) over 10,000 values (tiles of 4096), with small values
    // (the i64 path) and, mixed in, huge values and weights (the i128 path).
    let n = 10_000;
    let updates: Vec<(Vec<f32>, u64)> = (0..21u64)
        .map(|k| {
            let big = k % 7 == 3;
            let v = (0..n)
                .map(|i| {
                    let x = ((i as f32 * 0.11 + k as f32).cos()) * 1e-3;
                    if big {
                        x * 4e6
                    } else {
                        x
                    }
                })
                .collect();
            (v, if big { 1 << 30 } else { 1 + k })
        })
        .collect();
    // The exact sum, computed here in i128 term by term.
    let scale = (1u64 << 40) as f64;
    let total: u64 = updates.iter().map(|u| u.1).sum();
    let exact: Vec<f32> = (0..n)
        .map(|i| {
            let s: i128 = updates
                .iter()
                .map(|(u, w)| ((u[i] as f64 * scale) as i64) as i128 * *w as i128)
                .sum();
            (s as f64 / (scale * total as f64)) as f32
        })
        .collect();
    let mean_of = |order: &[usize]| {
        let mut acc = FedAvgAccumulator::new(n);
        for &k in order {
            acc.fold(&updates[k].0, updates[k].1).unwrap();
        }
        acc.mean().unwrap()
    };
    let fwd: Vec<usize> = (0..21).collect();
    let rev: Vec<usize> = (0..21).rev().collect();
    let odd: Vec<usize> = (0..21).map(|i| (i * 5) % 21).collect();
    assert_eq!(mean_of(&fwd), exact);
    assert_eq!(mean_of(&rev), exact);
    assert_eq!(mean_of(&odd), exact);
}
