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
        method: Default::default(),
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

/// The exact weighted mean on the 2⁻⁴⁰ grid, computed here in i128 term by term.
fn exact_mean(updates: &[(Vec<f32>, u64)], n: usize) -> Vec<f32> {
    let scale = (1u64 << 40) as f64;
    let total: u64 = updates.iter().map(|u| u.1).sum();
    (0..n)
        .map(|i| {
            let s: i128 = updates
                .iter()
                .map(|(u, w)| ((u[i] as f64 * scale) as i64) as i128 * *w as i128)
                .sum();
            (s as f64 / (scale * total as f64)) as f32
        })
        .collect()
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
    let exact = exact_mean(&updates, n);
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

/// `values` as the little-endian bytes of segments of these lengths, laid out in reverse
/// segment order after `pad` bytes (as a wire format may order them), and the segments' starts.
fn payload(values: &[f32], segments: &[usize], pad: usize) -> (Arc<Vec<u8>>, Vec<usize>) {
    let mut bytes = vec![0u8; pad];
    let mut starts = vec![0; segments.len()];
    let offsets: Vec<usize> = segments
        .iter()
        .scan(0, |at, &n| {
            *at += n;
            Some(*at - n)
        })
        .collect();
    for s in (0..segments.len()).rev() {
        starts[s] = bytes.len();
        for x in &values[offsets[s]..offsets[s] + segments[s]] {
            bytes.extend_from_slice(&x.to_le_bytes());
        }
    }
    (Arc::new(bytes), starts)
}

#[test]
fn payload_folds_equal_value_folds_and_reject_bad_updates_whole() {
    // 3 segments, 9,001 values: tiles end at segment boundaries and mid-segment.
    let segments = [5000, 7, 3994];
    let n: usize = segments.iter().sum();
    let good: Vec<(Vec<f32>, u64)> = (0..19u64)
        .map(|k| {
            let v = (0..n)
                .map(|i| ((i as f32 * 0.013 + k as f32).sin()) * 1e-2)
                .collect();
            (v, 10 + k)
        })
        .collect();
    let mut reference = FedAvgAccumulator::new(n);
    for (v, w) in &good {
        reference.fold(v, *w).unwrap();
    }
    let expected = reference.mean().unwrap();
    // Bad updates: a NaN late in the last segment, an infinity, a value of 2^23.
    let mut nan = good[0].0.clone();
    nan[n - 3] = f32::NAN;
    let mut inf = good[1].0.clone();
    inf[5003] = f32::NEG_INFINITY;
    let mut big = good[2].0.clone();
    big[17] = 8_388_608.0;
    big[4000] = f32::NAN;
    let bad = [(nan, n - 3), (inf, 5003), (big, 17)];
    for (order, pad) in [(0usize, 0usize), (1, 4), (2, 1)] {
        let mut acc = FedAvgAccumulator::with_segments(&segments);
        let mut items: Vec<(Vec<f32>, u64, u64)> = good
            .iter()
            .enumerate()
            .map(|(k, (v, w))| (v.clone(), *w, k as u64))
            .collect();
        for (j, (v, _)) in bad.iter().enumerate() {
            items.insert(3 * j + order, (v.clone(), 1_000, 100 + j as u64));
        }
        if order == 1 {
            items.reverse();
        }
        for (v, w, tag) in &items {
            // pad 1: unaligned starts, read through a copy.
            let (bytes, starts) = payload(v, &segments, pad);
            acc.fold_payload(bytes, starts, *w, *tag);
        }
        assert_eq!(acc.mean().unwrap(), expected, "order {order}, pad {pad}");
        assert_eq!(acc.count(), good.len());
        assert_eq!(acc.total_weight(), reference.total_weight());
        let mut rejected = acc.take_rejected();
        rejected.sort_by_key(|r| r.0);
        let got: Vec<(u64, usize)> = rejected.iter().map(|(t, e)| (*t, e.index)).collect();
        let want: Vec<(u64, usize)> = bad
            .iter()
            .enumerate()
            .map(|(j, (_, i))| (100 + j as u64, *i))
            .collect();
        assert_eq!(
            got, want,
            "each rejected update's first offender, with its tag"
        );
    }
}

#[test]
fn payload_folds_stay_exact_when_sums_outgrow_f64() {
    // Weights of 2^30 with |x| up to 4: bounds far beyond 2^53, so tiles spill to i128, some
    // batches go through i64 and i128 partial sums, one next to a rejected update.
    let segments = [4096 * 2 + 5];
    let n = segments[0];
    let updates: Vec<(Vec<f32>, u64)> = (0..17u64)
        .map(|k| {
            let scale = if k % 3 == 0 { 4.0 } else { 1e-3 };
            let v = (0..n)
                .map(|i| ((i as f32 * 0.7 + k as f32).cos()) * scale)
                .collect();
            (v, if k % 4 == 1 { 1 << 30 } else { 1 + k })
        })
        .collect();
    let exact = exact_mean(&updates, n);
    for rot in [0, 5, 11] {
        let mut acc = FedAvgAccumulator::with_segments(&segments);
        for j in 0..updates.len() {
            let (v, w) = &updates[(j + rot) % updates.len()];
            let (bytes, starts) = payload(v, &segments, 8);
            acc.fold_payload(bytes, starts, *w, j as u64);
            if j == 6 {
                let mut bad = v.clone();
                bad[n - 1] = f32::INFINITY;
                let (bytes, starts) = payload(&bad, &segments, 8);
                acc.fold_payload(bytes, starts, 1 << 30, 99);
            }
        }
        assert_eq!(acc.mean().unwrap(), exact, "rotation {rot}");
        assert_eq!(acc.take_rejected().len(), 1);
    }
}

#[test]
fn uploads_fold_from_their_safetensors_bytes() {
    let cfg = LlamaConfig {
        num_hidden_layers: 2,
        ..LlamaConfig::tiny(300)
    };
    let lora = LoraConfig::qv(4, 8.0);
    let layout = Arc::new(AdapterLayout::new(&cfg, &lora));
    let segments: Vec<usize> = layout.tensors().iter().map(|t| t.numel()).collect();
    let mut reader = fedsim::model::PayloadReader::new(layout.clone());
    let mut by_values = FedAvgAccumulator::new(layout.len());
    let mut by_bytes = FedAvgAccumulator::with_segments(&segments);
    for k in 0..11u64 {
        let v: Vec<f32> = (0..layout.len())
            .map(|i| ((i * 31 + k as usize * 7) % 101) as f32 * 1e-4 - 5e-3)
            .collect();
        by_values.fold(&v, 3 + k).unwrap();
        let bytes = AdapterSet::new(layout.clone(), v).to_safetensors().unwrap();
        let starts = reader.starts(&bytes).unwrap().to_vec();
        by_bytes.fold_payload(Arc::new(bytes), starts, 3 + k, k);
    }
    assert_eq!(by_bytes.mean(), by_values.mean());
    // A payload of another layout is refused by the reader, whose cache does not hide it.
    let other = AdapterLayout::new(
        &cfg,
        &LoraConfig {
            r: 2,
            ..lora.clone()
        },
    );
    let wrong = AdapterSet::new(Arc::new(other.clone()), vec![0.0; other.len()])
        .to_safetensors()
        .unwrap();
    assert!(reader.starts(&wrong).is_err());
    assert!(reader.starts(&wrong[..wrong.len() - 4]).is_err());
}

#[test]
fn the_mean_of_exact_sums_rounds_as_a_128_bit_conversion_does() {
    // The mean converts sums that fit in 64 bits with the 64-bit instruction: the same
    // correctly rounded f64 as `i128 as f64`, at the edges of that range and beyond it.
    use fedsim::strategy::fedavg::mean_of_exact_sums;
    let edges = [
        0i128,
        1,
        -1,
        (1 << 53) + 1,
        -(1 << 53) - 1,
        i64::MAX as i128,
        i64::MIN as i128,
        i64::MAX as i128 + 1,
        i64::MIN as i128 - 1,
        (1i128 << 100) + 12345,
        -(1i128 << 100) - 12345,
        i128::MAX,
        i128::MIN + 1,
    ];
    let mut x = 0x9e37_79b9_7f4a_7c15u128;
    let random = (0..10_000).map(|_| {
        x = x.wrapping_mul(0x2545_f491_4f6c_dd1d).wrapping_add(1);
        (x as i128) >> (x % 90) as u32
    });
    let sums: Vec<i128> = edges.into_iter().chain(random).collect();
    for weight in [1u64, 3, 100, 1 << 20] {
        let denom = fedsim::fixed::STEPS_PER_UNIT * weight as f64;
        let want: Vec<u32> = (sums.iter())
            .map(|&s| ((s as f64 / denom) as f32).to_bits())
            .collect();
        let got: Vec<u32> = (mean_of_exact_sums(&sums, weight).iter())
            .map(|m| m.to_bits())
            .collect();
        assert_eq!(got, want, "weight {weight}");
    }
}
