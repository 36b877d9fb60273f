//! SecAgg+ under a declared value bound (`value_bound`, or the DP clip): a ring of ≤ 64 bits
//! whose sums still cannot wrap — the mean is FedAvg's bit for bit, at the extremes too; a
//! client with a value past the bound uploads nothing (a failed client, the round goes on);
//! what no bound can hold is refused by name.

use fedsim::ids::ClientId;
use fedsim::secagg::{Params, Ring, SecAggError};

use super::secagg::{fedavg, round, small, updates, Drops, SECURE};

fn params(ring: Ring) -> Params {
    Params {
        neighbours: 6,
        threshold: 3,
        ring,
        compute: Default::default(),
    }
}

#[test]
fn a_bounded_ring_releases_fedavgs_mean_bit_for_bit() {
    // N(0, 0.01²) updates, bound 0.1 (10 σ): 1 + ⌈log2(⌊0.1·2^40⌋·W + 1)⌉ bits.
    let data = updates(12, 3000, 4);
    let weight: u64 = data.iter().map(|d| d.1).sum();
    let ring = Ring::sized(weight, Some(0.1)).unwrap();
    let expect =
        1 + (u64::BITS - ((0.1f32 as f64 * 2f64.powi(40)) as u64 * weight).leading_zeros());
    assert_eq!(ring.bits(), expect);
    assert!(ring.is_narrow() && ring.element_bytes() == 6, "{ring:?}");
    let drops = Drops {
        after_shares: [2, 9].into(),
        before_unmask: [11].into(),
        ..Default::default()
    };
    let (out, _) = round(&data, params(ring), &drops).unwrap();
    let kept: Vec<ClientId> = vec![0, 1, 3, 4, 5, 6, 7, 8, 10, 11];
    assert_eq!(out.survivors, kept);
    assert_eq!(out.sum.decode_mean(ring).unwrap(), fedavg(&data, &kept));
}

#[test]
fn at_the_bound_sums_fit_and_one_bit_less_wraps() {
    // Three clients at +B (and −B in the second value) whose weights sum to W: the largest
    // sums the bound allows. The sized ring holds them; one bit less is refused by `check`,
    // and would indeed have wrapped.
    let (b, weights) = (0.75f32, [7u64, 5, 3]);
    let w: u64 = weights.iter().sum();
    let ring = Ring::sized(w, Some(b.into())).unwrap();
    let data: Vec<(Vec<f32>, u64)> = weights.iter().map(|&k| (vec![b, -b, 0.5], k)).collect();
    let sum_in = |ring: Ring| {
        let encoded: Vec<Vec<u128>> = (data.iter().enumerate())
            .map(|(c, (v, k))| ring.encode(c, v, *k).unwrap())
            .collect();
        let sum: Vec<u128> = (0..4)
            .map(|i| encoded.iter().fold(0, |s, e| ring.add(s, e[i])))
            .collect();
        ring.decode_mean(&sum)
    };
    let all: Vec<ClientId> = vec![0, 1, 2];
    assert_eq!(sum_in(ring).unwrap(), fedavg(&data, &all));
    assert_eq!(sum_in(ring).unwrap(), vec![b, -b, 0.5]);
    let less = Ring::new(ring.bits() - 1)
        .unwrap()
        .with_value_bound(b.into())
        .unwrap();
    let err = less.check(w).unwrap_err().to_string();
    assert!(
        err.contains(&format!("ring_bits ≥ {}", ring.bits())) && err.contains("value_bound"),
        "{err}"
    );
    assert_ne!(sum_in(less), Some(vec![b, -b, 0.5]), "it wraps");
    // Bounds that bound nothing FedAvg accepts are refused.
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 8_388_608.0] {
        assert!(ring.with_value_bound(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_client_past_the_bound_refuses_to_upload() {
    let mut data = updates(6, 500, 5);
    data[3].0[17] = -0.2;
    let ring = Ring::sized(1000, Some(0.125)).unwrap();
    let err = round(&data, params(ring), &Drops::default()).unwrap_err();
    assert!(
        matches!(
            err,
            SecAggError::PastBound {
                client: 3,
                index: 17,
                ..
            }
        ),
        "{err}"
    );
    let e = err.to_string();
    assert!(
        e.contains("value_bound ±0.125") && e.contains("-0.2"),
        "{e}"
    );
    // A value at the bound is taken; the f32 just above it is not (the bound is exact).
    data[3].0[17] = -0.125;
    round(&data, params(ring), &Drops::default()).unwrap();
    data[3].0[17] = f32::from_bits(0.125f32.to_bits() + 1);
    assert!(round(&data, params(ring), &Drops::default()).is_err());
}

#[test]
fn a_bounded_secure_run_is_the_plain_runs_and_a_value_past_it_fails_its_client() {
    let tmp = tempfile::tempdir().unwrap();
    let adapter = |d: &std::path::Path| std::fs::read(d.join("adapter_model.safetensors")).unwrap();
    let bounded = "strategy.secure_aggregation=SecAggPlus(neighbours: 3, threshold: 2, \
                   ring_bits: None, value_bound: Some(1.0))";
    let s = small(&[bounded]);
    let train = s.check_data().unwrap().train as u64;
    let ring = s.secagg_ring(train).unwrap().unwrap();
    assert_eq!(
        (ring.bits(), ring.element_bytes()),
        (49, 7),
        "{train} examples"
    );
    let plain = crate::util::run(&small(&[]), &tmp.path().join("plain"));
    let secure = crate::util::run(&s, &tmp.path().join("bounded"));
    assert!(
        adapter(&secure.dir) == adapter(&plain.dir),
        "adapters differ"
    );
    let wide = crate::util::run(&small(&[SECURE]), &tmp.path().join("wide"));
    let up = |d: &std::path::Path| -> Vec<u64> {
        let rounds = crate::util::round_metrics(d);
        rounds
            .iter()
            .map(|r| {
                r["secure_aggregation"]["masked"]["up_bytes"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    };
    // 7 bytes a value uploaded instead of 9 (72 bits).
    for (n, w) in up(&secure.dir).iter().zip(up(&wide.dir)) {
        assert_eq!(n * 9, w * 7);
    }
    // A bound the updates break: every client's upload fails and says why; the run goes on.
    let tiny = "strategy.secure_aggregation=SecAggPlus(neighbours: 3, threshold: 2, \
                ring_bits: None, value_bound: Some(1e-9))";
    let broken = crate::util::run(&small(&[tiny, "rounds=1"]), &tmp.path().join("tiny"));
    let clients = crate::system::clients_log(&broken.dir);
    assert!(!clients.is_empty());
    for c in &clients {
        assert_eq!(c["failure_kind"], "upload", "{c}");
        let why = c["failure"].as_str().unwrap();
        assert!(why.contains("past value_bound"), "{why}");
    }
    let rounds = crate::util::round_metrics(&broken.dir);
    assert_eq!(rounds[0]["completed"], 0, "{:?}", rounds[0]);
    assert!(rounds[0]["skipped"].as_str().is_some(), "{:?}", rounds[0]);
    assert_eq!(broken.summary.rounds_completed, 1, "the run goes on");
}

#[test]
fn the_dp_clip_bounds_the_ring_and_what_no_bound_holds_is_refused() {
    use crate::util::{scenario, DP, SMALL};
    // Clients clip to C = 0.5 and the server adds the noise: the ring is sized for values
    // within C (2^-20 to spare), 48 bits (6 bytes) for SMALL's 204 examples; a given bound wins.
    let dp = |set: &[&str]| {
        let mut all = vec!["strategy.min_fit_clients=4", DP];
        all.extend_from_slice(set);
        scenario(SMALL, &all)
    };
    let s = dp(&[SECURE, "dp.noise_by=Server"]).unwrap();
    let bound = s.secagg_value_bound().unwrap();
    assert!(
        bound > 0.5 && bound < 0.5 * (1.0 + 2f64.powi(-19)),
        "{bound}"
    );
    let ring = s.secagg_ring(204).unwrap().unwrap();
    assert_eq!(ring.bits(), 48, "⌊C·2^40⌋·204 < 2^47: 1 + 47 bits");
    // Clients' noise is unbounded: no derived bound, and a given one is refused.
    let s = dp(&[SECURE, "dp.noise_by=Clients(min_survivors: 2)"]).unwrap();
    assert_eq!(s.secagg_value_bound(), None);
    assert_eq!(s.secagg_ring(204).unwrap().unwrap().bits(), 72);
    let bounded = "strategy.secure_aggregation=SecAggPlus(neighbours: 3, threshold: 2, \
                   ring_bits: None, value_bound: Some(1.0))";
    let e =
        fedsim::fmt::chain(&dp(&[bounded, "dp.noise_by=Clients(min_survivors: 2)"]).unwrap_err());
    assert!(
        e.contains("SecAggPlus.value_bound") && e.contains("dp.noise_by"),
        "{e}"
    );
    for bad in ["0.0", "-1.0", "1e9"] {
        let set = bounded.replace("Some(1.0)", &format!("Some({bad})"));
        let e = fedsim::fmt::chain(
            &scenario(SMALL, &["strategy.min_fit_clients=4", &set]).unwrap_err(),
        );
        assert!(e.contains("SecAggPlus.value_bound"), "{bad}: {e}");
    }
    // A given ring too narrow for the bound is refused with the bits it needs.
    let narrow = bounded.replace("ring_bits: None", "ring_bits: Some(40)");
    let s = scenario(SMALL, &["strategy.min_fit_clients=4", &narrow]).unwrap();
    let e = fedsim::fmt::chain(&s.check_data().unwrap_err());
    assert!(
        e.contains("SecAggPlus.ring_bits") && e.contains("ring_bits ≥ 49"),
        "{e}"
    );
}

/// The narrow ring's addition — the VBMI loop where the CPU has it, and the word-at-a-time
/// loop — against plain u64 arithmetic for every width, both signs and lengths around the
/// 8-word step.
#[test]
fn narrow_words_add_as_u64_arithmetic_at_every_width() {
    use fedsim::secagg::lanes::narrow::{add, add_portable};
    let bytes: Vec<u8> = (0..8 * 1003).map(|i| (i * 151 + 7) as u8).collect();
    for w in 1..=8 {
        for len in [0, 1, 7, 8, 9, 16, 63, 1003] {
            let l = &bytes[..len * w];
            let word = |i: usize| {
                let mut le = [0u8; 8];
                le[..w].copy_from_slice(&l[i * w..(i + 1) * w]);
                u64::from_le_bytes(le)
            };
            let start: Vec<u64> = (0..len as u64)
                .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                .collect();
            let or = (0..len).fold(0, |o, i| o | word(i));
            for negate in [false, true] {
                let want: Vec<u64> = (0..len)
                    .map(|i| match negate {
                        false => start[i].wrapping_add(word(i)),
                        true => start[i].wrapping_sub(word(i)),
                    })
                    .collect();
                let (mut fast, mut slow) = (start.clone(), start.clone());
                assert_eq!(add(w, negate, &mut fast, l), or, "w {w} len {len}");
                assert_eq!(add_portable(w, negate, &mut slow, l), or);
                assert_eq!(fast, want, "w {w} len {len} negate {negate}");
                assert_eq!(slow, want, "w {w} len {len} negate {negate}");
            }
        }
    }
}
