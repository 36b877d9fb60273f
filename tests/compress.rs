//! Update compression: decode ∘ encode error bounds, unbiased stochastic rounding, top-k and
//! its error-feedback residuals, bytes, the fold's grid, clipping after decoding, and
//! malformed messages refused.

use std::sync::Arc;

use fedsim::compress::{Codec, Compression, EncodeFor, Residuals};
use fedsim::model::{AdapterLayout, LlamaConfig, LoraConfig};
use fedsim::strategy::FedAvgAccumulator;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn layout() -> Arc<AdapterLayout> {
    Arc::new(AdapterLayout::new(
        &LlamaConfig::tiny(512),
        &LoraConfig::qv(8, 16.0),
    ))
}

fn who(round: usize, client: usize) -> EncodeFor {
    EncodeFor {
        seed: 7,
        round,
        client,
    }
}

/// An update with magnitudes over five orders (as trained adapters have).
fn update(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let mag = 10f32.powi(-((i % 5) as i32) - 1);
            mag * rng.random_range(-1.0f32..1.0)
        })
        .collect()
}

fn q(bits: u8, stochastic_rounding: bool) -> Compression {
    Compression::Quantize {
        bits,
        stochastic_rounding,
    }
}

fn roundtrip(c: Compression, x: &[f32]) -> (Vec<f32>, usize) {
    let codec = Codec::new(c, layout());
    let e = codec.encode(x, who(1, 0), None).unwrap();
    let mut d = vec![0f32; x.len()];
    codec.decode_into(&e.payload, &mut d).unwrap();
    let same = d
        .iter()
        .zip(&e.decoded)
        .all(|(a, b)| a.to_bits() == b.to_bits());
    assert!(same, "the aggregator decodes what the client computed");
    assert_eq!(e.payload.len() as u64, codec.encoded_len(), "planned bytes");
    (d, e.payload.len())
}

#[test]
fn fp16_rounds_to_nearest_within_half_an_ulp() {
    let x = update(layout().len(), 1);
    let (d, bytes) = roundtrip(Compression::Fp16, &x);
    for (a, b) in x.iter().zip(&d) {
        // Normal halves: relative error ≤ 2⁻¹¹; subnormals (< 2⁻¹⁴): absolute ≤ 2⁻²⁵.
        let bound = (a.abs() * 2f32.powi(-11)).max(2f32.powi(-25));
        assert!((a - b).abs() <= bound, "{a} → {b}");
    }
    let plain = 4 * x.len();
    assert!(bytes < plain / 2 + 4096, "{bytes} bytes for {plain} plain");
}

#[test]
fn block_quantisation_error_is_within_the_blocks_step() {
    let l = layout();
    let x = update(l.len(), 2);
    for (bits, sr) in [(8, false), (8, true), (4, false), (4, true)] {
        let (d, bytes) = roundtrip(q(bits, sr), &x);
        let qmax = ((1 << (bits - 1)) - 1) as f32;
        for t in l.tensors() {
            let r = t.offset..t.offset + t.numel();
            for (xb, db) in x[r.clone()].chunks(32).zip(d[r].chunks(32)) {
                let max = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
                // The step 2ᵉ is below 2·max/qmax; nearest errs by ≤ step/2, stochastic < step.
                let bound = if sr { 2.0 * max / qmax } else { max / qmax };
                for (a, b) in xb.iter().zip(db) {
                    assert!(
                        (a - b).abs() <= bound * 1.000001,
                        "q{bits} sr {sr}: {a} → {b}"
                    );
                }
            }
        }
        // Bytes: bits/8 per value + one exponent per block, plus the container's header.
        let payload = x.len() * bits as usize / 8 + x.len() / 32;
        assert!(
            bytes >= payload && bytes < payload + 8192,
            "q{bits}: {bytes}"
        );
    }
}

#[test]
fn decoded_values_lie_on_the_exact_folds_grid() {
    let x = update(layout().len(), 3);
    for c in [Compression::Fp16, q(8, false), q(4, true)] {
        let (d, _) = roundtrip(c, &x);
        for v in d {
            let scaled = f64::from(v) * 2f64.powi(40);
            assert_eq!(scaled, scaled.trunc(), "{c:?}: {v} is off the 2⁻⁴⁰ grid");
        }
    }
}

#[test]
fn stochastic_rounding_is_unbiased_and_nearest_is_not() {
    // One value between two steps of its block, encoded by many clients: the mean of the
    // stochastic decodes converges on it; round-to-nearest always gives the same step.
    let l = layout();
    let mut x = vec![0f32; l.len()];
    x[0] = 1.0; // the block's max: step 2⁻⁶ at 8 bits (127 · 2⁻⁶ ≥ 1)
    x[1] = 0.3; // 19.2 steps
    let codec = Codec::new(q(8, true), l.clone());
    let trials = 4000;
    let (mut sum, mut sq) = (0f64, 0f64);
    for c in 0..trials {
        let d = codec.encode(&x, who(1, c), None).unwrap().decoded[1] as f64;
        sum += d;
        sq += d * d;
    }
    let mean = sum / trials as f64;
    let sd = (sq / trials as f64 - mean * mean).sqrt();
    let z = (mean - 0.3) / (sd / (trials as f64).sqrt());
    assert!(z.abs() < 4.0, "mean {mean}, sd {sd}, z {z}");
    assert!(sd > 0.005, "stochastic rounding must vary: sd {sd}");
    let nearest = Codec::new(q(8, false), l)
        .encode(&x, who(1, 0), None)
        .unwrap();
    assert_eq!(
        nearest.decoded[1] as f64,
        19.0 / 64.0,
        "nearest: 19 steps, biased by 0.2 step"
    );
}

#[test]
fn top_k_keeps_the_largest_values_and_counts_its_bytes() {
    let l = layout();
    let x = update(l.len(), 4);
    let c = Compression::TopK {
        fraction: 0.01,
        error_feedback: false,
    };
    let (d, bytes) = roundtrip(c, &x);
    let k = (0.01 * x.len() as f64).ceil() as usize;
    let kept: Vec<usize> = (0..x.len()).filter(|&i| d[i] != 0.0).collect();
    assert_eq!(kept.len(), k);
    let smallest_kept = kept.iter().map(|&i| x[i].abs()).fold(f32::MAX, f32::min);
    let largest_dropped = (0..x.len())
        .filter(|i| d[*i] == 0.0)
        .map(|i| x[i].abs())
        .fold(0f32, f32::max);
    assert!(smallest_kept >= largest_dropped);
    for &i in &kept {
        assert_eq!(d[i], x[i], "kept values travel unchanged");
    }
    assert!(
        bytes >= 8 * k && bytes < 8 * k + 512,
        "{bytes} bytes for k = {k}"
    );
}

#[test]
fn error_feedback_residuals_carry_exactly_what_was_not_sent() {
    // Values on a coarse grid so every f32 sum is exact: Σ sent + residual = Σ updates.
    let l = layout();
    let n = l.len();
    let codec = Codec::new(
        Compression::TopK {
            fraction: 0.05,
            error_feedback: true,
        },
        l,
    );
    let residuals = Residuals::default();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (mut sent, mut meant) = (vec![0f32; n], vec![0f32; n]);
    for round in 1..=6 {
        let x: Vec<f32> = (0..n)
            .map(|_| rng.random_range(-64i32..64) as f32 / 256.0)
            .collect();
        meant.iter_mut().zip(&x).for_each(|(m, v)| *m += v);
        let mut y = x.clone();
        residuals.add_to(3, &mut y);
        let e = codec.encode(&y, who(round, 3), None).unwrap();
        residuals.keep(3, &y, &e.decoded);
        sent.iter_mut().zip(&e.decoded).for_each(|(s, v)| *s += v);
    }
    let snap = residuals.snapshot();
    assert_eq!(snap.len(), 1);
    for i in 0..n {
        assert_eq!(sent[i] + snap[0].1[i], meant[i], "value {i}");
    }
    // Without the residual the unsent mass is lost; with it, most of it is sent by now.
    let lost: f64 = snap[0].1.iter().map(|v| f64::from(v.abs())).sum();
    let total: f64 = meant.iter().map(|v| f64::from(v.abs())).sum();
    assert!(lost < total, "residual {lost} vs total {total}");
}

#[test]
fn clipping_after_decoding_bounds_what_the_aggregator_folds() {
    let l = layout();
    let mut x = update(l.len(), 6);
    // Clip to C first, as the client does: rounding may push the decoded norm past C.
    let c = 0.05;
    fedsim::privacy::clip_l2(&mut x, c);
    for comp in [Compression::Fp16, q(8, true), q(4, true)] {
        let codec = Codec::new(comp, l.clone());
        let unclipped = codec.encode(&x, who(2, 1), None).unwrap();
        let norm = |v: &[f32]| v.iter().map(|&a| f64::from(a).powi(2)).sum::<f64>().sqrt();
        let e = codec.encode(&x, who(2, 1), Some(c)).unwrap();
        let mut d = vec![0f32; x.len()];
        codec.decode_into(&e.payload, &mut d).unwrap();
        assert!(norm(&d) <= c * (1.0 + 1e-6), "{comp:?}: {} > {c}", norm(&d));
        if norm(&unclipped.decoded) > c {
            assert!(
                e.scale < 1.0,
                "{comp:?}: a decoded norm past C sets the scale"
            );
        }
        assert_eq!(d, e.decoded);
    }
    // 4-bit stochastic rounding of a clipped update does exceed C (the case this exists for).
    let codec = Codec::new(q(4, true), l);
    let e = codec.encode(&x, who(2, 1), None).unwrap();
    let n: f64 = e
        .decoded
        .iter()
        .map(|&a| f64::from(a).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!(
        n > c,
        "q4-sr decoded norm {n} within C: the test shows nothing"
    );
}

#[test]
fn compressed_updates_fold_exactly_in_any_order() {
    let l = layout();
    let codec = Codec::new(q(8, true), l.clone());
    let decoded: Vec<Vec<f32>> = (0..5)
        .map(|c| {
            codec
                .encode(&update(l.len(), 10 + c as u64), who(1, c), None)
                .unwrap()
                .decoded
        })
        .collect();
    let mean = |order: &[usize]| {
        let mut acc = FedAvgAccumulator::new(l.len());
        for &i in order {
            acc.fold(&decoded[i], 3 + i as u64).unwrap();
        }
        acc.mean().unwrap()
    };
    assert_eq!(mean(&[0, 1, 2, 3, 4]), mean(&[4, 2, 0, 3, 1]));
}

#[test]
fn malformed_or_foreign_messages_are_refused() {
    let l = layout();
    let x = update(l.len(), 8);
    let q8 = Codec::new(q(8, false), l.clone());
    let fp16 = Codec::new(Compression::Fp16, l.clone());
    let mut out = vec![0f32; l.len()];
    let e = fp16.encode(&x, who(1, 0), None).unwrap();
    let err = q8
        .decode_into(&e.payload, &mut out)
        .unwrap_err()
        .to_string();
    assert!(err.contains("another codec"), "{err}");
    // A scale above 1 would inflate an update past the clip bound.
    let one = format!("{:016x}", 1f64.to_bits());
    let two = format!("{:016x}", 2f64.to_bits());
    let bytes = edit_header(&e.payload, |h| h.replacen(&one, &two, 1));
    let err = fp16.decode_into(&bytes, &mut out).unwrap_err().to_string();
    assert!(err.contains("scale"), "{err}");
    assert!(fp16.decode_into(&e.payload[..100], &mut out).is_err());
    // Top-k indices out of order.
    let topk = Codec::new(
        Compression::TopK {
            fraction: 0.5,
            error_feedback: false,
        },
        l,
    );
    let e = topk.encode(&x, who(1, 0), None).unwrap();
    let mut bytes = e.payload.clone();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let start = 8 + n + header["indices"]["data_offsets"][0].as_u64().unwrap() as usize;
    // The first two indices swapped: no longer ascending.
    for b in 0..4 {
        bytes.swap(start + b, start + 4 + b);
    }
    let err = topk.decode_into(&bytes, &mut out).unwrap_err().to_string();
    assert!(err.contains("ascending"), "{err}");
}

#[test]
fn non_finite_updates_stay_refusable() {
    let l = layout();
    let mut x = update(l.len(), 9);
    x[40] = f32::NAN;
    for c in [Compression::Fp16, q(8, false), q(4, true)] {
        let (d, _) = roundtrip(c, &x);
        assert!(d.iter().any(|v| !v.is_finite()), "{c:?} hid a NaN");
    }
}

/// `payload` with its safetensors header text edited by `f` (same length).
fn edit_header(payload: &[u8], f: impl Fn(&str) -> String) -> Vec<u8> {
    let n = u64::from_le_bytes(payload[..8].try_into().unwrap()) as usize;
    let text = std::str::from_utf8(&payload[8..8 + n]).unwrap();
    let edited = f(text);
    assert_eq!(edited.len(), text.len());
    assert_ne!(edited, text, "the edit changed nothing");
    let mut out = payload.to_vec();
    out[8..8 + n].copy_from_slice(edited.as_bytes());
    out
}

mod runs {
    //! Compressed uploads in whole runs: bytes on the wire and the clock, loss, determinism,
    //! DP, what cannot be combined.

    use fedsim::report::Summary;

    use crate::util::{round_metrics, run, scenario, DP, SMALL};

    fn small(set: &[&str]) -> fedsim::Scenario {
        let mut all = vec!["rounds=3", "strategy.fraction_fit=1.0"];
        all.extend_from_slice(set);
        scenario(SMALL, &all).unwrap()
    }

    fn adapter(dir: &std::path::Path) -> Vec<u8> {
        std::fs::read(dir.join("adapter_model.safetensors")).unwrap()
    }

    #[test]
    fn every_codec_lowers_the_loss_and_uploads_its_encoded_size() {
        let tmp = tempfile::tempdir().unwrap();
        let plain = run(&small(&[]), &tmp.path().join("none"));
        let plain_up = round_metrics(&plain.dir)[0]["bytes_up"].as_u64().unwrap() / 4;
        for (i, c) in [
            "Fp16",
            "Quantize(bits: 8)",
            "Quantize(bits: 4, stochastic_rounding: true)",
            "TopK(fraction: 0.05, error_feedback: true)",
        ]
        .iter()
        .enumerate()
        {
            let set = format!("compression={c}");
            let s = small(&[&set]);
            let r = run(&s, &tmp.path().join(i.to_string()));
            let sum = Summary::read(&r.dir).unwrap();
            let rec = sum.compression.clone().expect("summary records the codec");
            assert!(
                rec.bytes_per_upload < plain_up,
                "{c}: {rec:?} vs {plain_up}"
            );
            for m in round_metrics(&r.dir) {
                let completed = m["completed"].as_u64().unwrap();
                assert_eq!(
                    m["bytes_up"].as_u64(),
                    Some(completed * rec.bytes_per_upload),
                    "{c}"
                );
            }
            assert!(
                sum.final_eval_loss < sum.pretrained_eval_loss,
                "{c}: {} → {}",
                sum.pretrained_eval_loss,
                sum.final_eval_loss
            );
        }
    }

    #[test]
    fn compressed_uploads_take_less_time_on_the_clock() {
        let tmp = tempfile::tempdir().unwrap();
        let slow =
            "system.profiles=Fixed((flops: 1e12, up_mbps: 0.5, down_mbps: 100.0, latency_s: 0.0))";
        let a = run(&small(&[slow]), &tmp.path().join("a"));
        let b = run(
            &small(&[slow, "compression=Quantize(bits: 4)"]),
            &tmp.path().join("b"),
        );
        let upload = |d: &std::path::Path| {
            let log = crate::system::clients_log(d);
            let m = &round_metrics(d)[0];
            let bytes = m["bytes_up"].as_f64().unwrap() / m["completed"].as_f64().unwrap();
            (log[0]["upload"].as_f64().unwrap(), bytes)
        };
        let ((ta, ba), (tb, bb)) = (upload(&a.dir), upload(&b.dir));
        // Seconds = bytes · 8 / 0.5 Mbit/s, for both.
        assert!((ta - ba * 8.0 / 0.5e6).abs() < 1e-9, "{ta} s for {ba} B");
        assert!((tb - bb * 8.0 / 0.5e6).abs() < 1e-9, "{tb} s for {bb} B");
        assert!(tb < ta / 6.0, "4-bit upload {tb} s vs f32 {ta} s");
    }

    #[test]
    fn compressed_runs_are_deterministic_across_slot_counts() {
        let tmp = tempfile::tempdir().unwrap();
        let c = "compression=TopK(fraction: 0.02, error_feedback: true)";
        let sr = "compression=Quantize(bits: 4, stochastic_rounding: true)";
        for (i, codec) in [c, sr].iter().enumerate() {
            let one = run(
                &small(&[codec, "slots.count=1"]),
                &tmp.path().join(format!("{i}a")),
            );
            let two = run(
                &small(&[codec, "slots.count=2"]),
                &tmp.path().join(format!("{i}b")),
            );
            assert!(
                adapter(&one.dir) == adapter(&two.dir),
                "{codec}: adapters differ"
            );
            assert_eq!(round_metrics(&one.dir), round_metrics(&two.dir));
        }
    }

    #[test]
    fn a_hierarchy_with_one_edge_round_compresses_as_flat_does() {
        // Clients encode before uploading to their edge; the edges decode, so E = 1 stays
        // flat FedAvg bit for bit with compressed uploads too.
        let tmp = tempfile::tempdir().unwrap();
        let c = "compression=TopK(fraction: 0.05, error_feedback: true)";
        let flat = run(&small(&[c, "clients.count=6"]), &tmp.path().join("flat"));
        let h = "topology=Hierarchical(edges: 2, assignment: Seeded, edge_rounds: 1, wan: \
                 (up_mbps: 10.0, down_mbps: 20.0, latency_s: 0.1))";
        let hier = run(&small(&[c, "clients.count=6", h]), &tmp.path().join("hier"));
        assert!(adapter(&flat.dir) == adapter(&hier.dir), "adapters differ");
        let (a, b) = (round_metrics(&flat.dir), round_metrics(&hier.dir));
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x["bytes_up"], y["hierarchy"]["lan_bytes_up"]);
            assert_eq!(x["eval_loss"], y["eval_loss"]);
        }
    }

    #[test]
    fn error_feedback_changes_what_top_k_delivers() {
        let tmp = tempfile::tempdir().unwrap();
        let run_with = |ef: bool, name: &str| {
            let set = format!("compression=TopK(fraction: 0.01, error_feedback: {ef})");
            let r = run(&small(&[&set, "rounds=4"]), &tmp.path().join(name));
            (
                adapter(&r.dir),
                Summary::read(&r.dir).unwrap().final_eval_loss,
            )
        };
        let (with, loss_with) = run_with(true, "ef");
        let (without, loss_without) = run_with(false, "no");
        assert!(with != without, "the residual must reach later rounds");
        assert!(loss_with.is_finite() && loss_without.is_finite());
    }

    #[test]
    fn client_side_dp_with_compression_clips_after_decoding_and_accounts_the_same() {
        let tmp = tempfile::tempdir().unwrap();
        let no_cap = "dp.max_epsilon=None";
        let a = run(&small(&[DP, no_cap]), &tmp.path().join("a"));
        let codec = "compression=Quantize(bits: 4, stochastic_rounding: true)";
        let b = run(&small(&[DP, no_cap, codec]), &tmp.path().join("b"));
        let eps =
            |d: &std::path::Path| serde_json::to_string(&Summary::read(d).unwrap().dp).unwrap();
        assert_eq!(
            eps(&a.dir),
            eps(&b.dir),
            "the accountant does not depend on the codec"
        );
        for m in round_metrics(&b.dir) {
            assert!(m["completed"].as_u64().unwrap() > 0);
        }
    }

    #[test]
    fn compression_refuses_what_it_cannot_combine_with_by_name() {
        let cases: [(&[&str], &str); 6] = [
            (
                &["compression=Quantize(bits: 5)"],
                "compression.Quantize.bits",
            ),
            (
                &["compression=TopK(fraction: 0.0)"],
                "compression.TopK.fraction",
            ),
            (
                &["compression=TopK(fraction: 1.5)"],
                "compression.TopK.fraction",
            ),
            (
                &[
                    "compression=Fp16",
                    "strategy.fraction_fit=1.0",
                    "strategy.min_fit_clients=3",
                    "strategy.secure_aggregation=SecAggPlus(neighbours: 3, threshold: 2)",
                ],
                "uniformly random",
            ),
            (
                &[
                    "compression=Fp16",
                    DP,
                    "dp.noise_by=Clients(min_survivors: 2)",
                ],
                "dp.noise_by",
            ),
            (
                &[
                    "compression=TopK(fraction: 0.1, error_feedback: true)",
                    "system.stragglers=Async(buffer: 2, concurrency: 2)",
                ],
                "compression.TopK.error_feedback",
            ),
        ];
        for (set, needle) in cases {
            let err = scenario(SMALL, set).unwrap_err().to_string();
            assert!(err.contains(needle), "{set:?}: {err}");
            assert!(err.contains("test.ron"), "names the file: {err}");
        }
    }
}
