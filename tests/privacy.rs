//! The RDP accountant against Google's dp_accounting, closed forms, and monotonicity.

use fedsim::privacy::{epsilon_after, noise_for_epsilon, FracSeries, PrivacyError, SamplingScheme};

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs()
}

/// (q, z, T, δ, ε, order) from dp_accounting 0.6.0 (Poisson, add/remove-one), the table.
const POISSON: [(f64, f64, usize, f64, f64, f64); 4] = [
    (0.01, 1.0, 100, 1e-5, 1.214145, 8.8),
    (0.1, 1.0, 10, 1e-5, 3.441643, 4.6),
    (1.0, 2.0, 10, 1e-5, 8.079406, 3.9),
    (0.01, 0.8, 1000, 1e-6, 4.293457, 4.9),
];

#[test]
fn rdp_matches_dp_accounting() {
    for (q, z, t, delta, eps, order) in POISSON {
        let g = epsilon_after(
            z,
            q,
            t,
            delta,
            SamplingScheme::Poisson,
            FracSeries::AbsoluteBound,
        )
        .unwrap();
        assert!(
            rel(g.epsilon, eps) < 1e-6,
            "q={q} z={z} T={t}: {} vs {eps}",
            g.epsilon
        );
        assert!(
            (g.order - order).abs() < 1e-9,
            "q={q} z={z} T={t}: order {} vs {order}",
            g.order
        );
    }
}

#[test]
fn exact_fractional_series_matches_its_reference() {
    let g = epsilon_after(
        1.0,
        0.1,
        10,
        1e-5,
        SamplingScheme::Poisson,
        FracSeries::Exact,
    )
    .unwrap();
    assert!(rel(g.epsilon, 3.441324) < 1e-6, "{}", g.epsilon);
}

/// More cases from `tests/reference/make_dp_reference.py` (dp_accounting 0.6.0), including
/// fixed-size sampling without replacement under replace-one neighbours.
#[test]
fn rdp_matches_dp_accounting_reference_file() {
    let text =
        std::fs::read_to_string(crate::util::root().join("tests/reference/dp_reference.json"))
            .unwrap();
    let r: serde_json::Value = serde_json::from_str(&text).unwrap();
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap();
    for c in r["poisson"].as_array().unwrap() {
        let g = epsilon_after(
            f(c, "z"),
            f(c, "q"),
            f(c, "rounds") as usize,
            f(c, "delta"),
            SamplingScheme::Poisson,
            FracSeries::AbsoluteBound,
        )
        .unwrap();
        assert!(rel(g.epsilon, f(c, "epsilon")) < 1e-6, "{c}: {}", g.epsilon);
        assert_eq!(g.order, f(c, "order"), "{c}");
    }
    for c in r["without_replacement"].as_array().unwrap() {
        let q = f(c, "m") / f(c, "n");
        let g = epsilon_after(
            f(c, "z"),
            q,
            f(c, "rounds") as usize,
            f(c, "delta"),
            SamplingScheme::WithoutReplacement,
            FracSeries::AbsoluteBound,
        )
        .unwrap();
        assert!(rel(g.epsilon, f(c, "epsilon")) < 1e-6, "{c}: {}", g.epsilon);
        assert_eq!(g.order, f(c, "order"), "{c}");
    }
}

#[test]
fn epsilon_is_monotone() {
    let eps = |z: f64, q: f64, t: usize| {
        epsilon_after(
            z,
            q,
            t,
            1e-5,
            SamplingScheme::Poisson,
            FracSeries::AbsoluteBound,
        )
        .unwrap()
        .epsilon
    };
    let ts: Vec<f64> = [1, 10, 100, 1000]
        .iter()
        .map(|&t| eps(1.0, 0.05, t))
        .collect();
    assert!(ts.windows(2).all(|w| w[1] > w[0]), "in T: {ts:?}");
    let qs: Vec<f64> = [0.001, 0.01, 0.1, 0.5, 1.0]
        .iter()
        .map(|&q| eps(1.0, q, 50))
        .collect();
    assert!(qs.windows(2).all(|w| w[1] > w[0]), "in q: {qs:?}");
    let zs: Vec<f64> = [0.5, 0.8, 1.0, 2.0, 5.0]
        .iter()
        .map(|&z| eps(z, 0.1, 50))
        .collect();
    assert!(zs.windows(2).all(|w| w[1] < w[0]), "in z: {zs:?}");
}

#[test]
fn noise_calibration_is_the_smallest_that_meets_the_budget() {
    for (target, q, t) in [(8.0, 0.4, 10), (1.0, 0.01, 1000), (3.0, 1.0, 5)] {
        let (z, g) = noise_for_epsilon(
            target,
            q,
            t,
            1e-5,
            SamplingScheme::Poisson,
            FracSeries::AbsoluteBound,
        )
        .unwrap();
        assert!(g.epsilon <= target, "z={z}: {} > {target}", g.epsilon);
        let less = epsilon_after(
            z * (1.0 - 1e-5),
            q,
            t,
            1e-5,
            SamplingScheme::Poisson,
            FracSeries::AbsoluteBound,
        )
        .unwrap();
        assert!(
            less.epsilon > target * (1.0 - 1e-4),
            "z={z} is not minimal: {}",
            less.epsilon
        );
    }
}

#[test]
fn bad_parameters_are_rejected() {
    let p = |z: f64, q: f64, d: f64| {
        epsilon_after(
            z,
            q,
            10,
            d,
            SamplingScheme::Poisson,
            FracSeries::AbsoluteBound,
        )
    };
    for (z, q, d, name) in [
        (0.0, 0.1, 1e-5, "noise_multiplier"),
        (-1.0, 0.1, 1e-5, "noise_multiplier"),
        (1.0, 0.0, 1e-5, "sampling_rate"),
        (1.0, 1.5, 1e-5, "sampling_rate"),
        (1.0, 0.1, 0.0, "delta"),
        (1.0, 0.1, 1.0, "delta"),
    ] {
        match p(z, q, d) {
            Err(PrivacyError::Parameter { name: n, .. }) => assert_eq!(n, name),
            other => panic!("z={z} q={q} d={d}: {other:?}"),
        }
    }
    assert!(epsilon_after(
        1.0,
        0.1,
        0,
        1e-5,
        SamplingScheme::Poisson,
        FracSeries::AbsoluteBound
    )
    .is_err());
    assert!(noise_for_epsilon(
        -1.0,
        0.1,
        10,
        1e-5,
        SamplingScheme::Poisson,
        FracSeries::AbsoluteBound
    )
    .is_err());
}

mod mechanism {
    use fedsim::privacy::{clip_l2, NoiseSource};
    use fedsim::strategy::FedAvgAccumulator;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn clipped_updates_are_within_the_norm(
            values in proptest::collection::vec(-100.0f32..100.0, 1..300),
            clip in 1e-3f64..50.0,
        ) {
            let mut v = values.clone();
            let r = clip_l2(&mut v, clip);
            let norm = v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt();
            prop_assert!(norm <= clip * (1.0 + 1e-6), "norm {} > {}", norm, clip);
            if r.norm <= clip {
                prop_assert!(!r.clipped);
                prop_assert_eq!(v, values, "an update under C must be unchanged");
            } else {
                prop_assert!(r.clipped);
                prop_assert!((norm - clip).abs() <= clip * 1e-5, "clipped to {} not {}", norm, clip);
            }
        }
    }

    #[test]
    fn noise_has_the_configured_stddev_and_no_bias() {
        // Three clients' clipped updates, uniform weights, noise N(0, (zC)^2) on the sum,
        // divided by m: the residual against the exact mean is N(0, (zC/m)^2).
        let n = 200_000;
        let updates: Vec<Vec<f32>> = (0..3)
            .map(|k| {
                (0..n)
                    .map(|i| ((i * 7 + k * 13) % 101) as f32 * 1e-3 - 0.05)
                    .collect()
            })
            .collect();
        let mut acc = FedAvgAccumulator::new(n);
        for u in &updates {
            acc.fold(u, 1).unwrap();
        }
        let exact = acc.mean().unwrap();
        let (z, c, m) = (0.8, 0.5, 3.0);
        let sigma = z * c / m;
        let mut noise = NoiseSource::Seeded.generator(42, 1, 0, z * c);
        let noised = acc.noised_mean(m, &mut noise);
        let resid: Vec<f64> = noised
            .iter()
            .zip(&exact)
            .map(|(a, b)| f64::from(*a) - f64::from(*b))
            .collect();
        let mean = resid.iter().sum::<f64>() / n as f64;
        let std =
            (resid.iter().map(|r| (r - mean) * (r - mean)).sum::<f64>() / (n - 1) as f64).sqrt();
        assert!(
            (std / sigma - 1.0).abs() < 0.02,
            "sample std {std} vs sigma {sigma}"
        );
        assert!(mean.abs() < 4.0 * sigma / (n as f64).sqrt(), "bias {mean}");
        // The course's setting: z = 0.02, C = 0.5, m = 4 gives sigma = 0.0025 on the average.
        assert!((0.02f64 * 0.5 / 4.0 - 0.0025).abs() < 1e-15);
        // Seeded noise is reproducible; OS-seeded noise is not.
        let again = acc.noised_mean(m, &mut NoiseSource::Seeded.generator(42, 1, 0, z * c));
        assert_eq!(noised, again);
        let os = acc.noised_mean(m, &mut NoiseSource::Os.generator(42, 1, 0, z * c));
        assert_ne!(noised, os);
    }
}

mod adaptive {
    use fedsim::privacy::{DpPlan, DpSampling, FracSeries, Mechanism, NoiseSource, PrivacyLedger};

    fn plan(z: f64, count_stddev: f64) -> DpPlan {
        DpPlan {
            mechanism: Mechanism::Adaptive {
                initial_clip: 1.0,
                target_quantile: 0.5,
                clip_lr: 0.2,
                noise_multiplier: z,
                count_stddev,
            },
            delta: 1e-5,
            max_epsilon: None,
            sampling: DpSampling::Poisson,
            noise: NoiseSource::Seeded,
            noise_by: Default::default(),
            series: FracSeries::AbsoluteBound,
            pld: false,
            compositions: 1,
        }
    }

    #[test]
    fn noise_is_split_between_update_and_count() {
        // 1/z² = 1/z_update² + 1/(2σ_b)²  (Andrew et al. 2021, §3).
        let m = plan(1.0, 5.0).mechanism;
        let zu = m.value_noise_multiplier();
        assert!(
            (zu.powi(-2) + (2.0f64 * 5.0).powi(-2) - 1.0).abs() < 1e-12,
            "{zu}"
        );
        assert!(zu > 1.0);
        let fixed = Mechanism::ClientSideFixed {
            clip_norm: 1.0,
            noise_multiplier: 1.0,
        };
        assert_eq!(fixed.value_noise_multiplier(), 1.0);
    }

    #[test]
    fn clip_moves_geometrically_towards_the_target_quantile() {
        let mut ledger = PrivacyLedger::new(plan(1.0, 5.0));
        let mut noise = NoiseSource::Seeded.generator(1, 1, 1, 1e-9);
        // Every norm under the clip: b ≈ 1, so C ← C·exp(−0.2·(1 − 0.5)).
        let b = ledger.adapt_clip(&[0.1; 1000], 1000.0, &mut noise).unwrap();
        assert!((b - 1.0).abs() < 1e-9);
        assert!(
            (ledger.clip() - (-0.1f64).exp()).abs() < 1e-9,
            "{}",
            ledger.clip()
        );
        // Every norm over it: b ≈ 0, the clip grows by exp(0.1).
        let c = ledger.clip();
        ledger
            .adapt_clip(&[10.0; 1000], 1000.0, &mut noise)
            .unwrap();
        assert!((ledger.clip() - c * 0.1f64.exp()).abs() < 1e-9);
        // Fixed clipping never moves.
        let mut fixed = PrivacyLedger::new(DpPlan {
            mechanism: Mechanism::ServerSideFixed {
                clip_norm: 2.0,
                noise_multiplier: 1.0,
            },
            ..plan(1.0, 5.0)
        });
        assert!(fixed.adapt_clip(&[10.0; 10], 10.0, &mut noise).is_none());
        assert_eq!(fixed.clip(), 2.0);
    }
}

mod pld {
    use fedsim::privacy::{gaussian_epsilon_exact, pld_epsilon};

    /// PLD ε from dp_accounting 0.6.0 (Poisson, add/remove-one, h = 1e-4), the table.
    const REFERENCE: [(f64, f64, usize, f64, f64); 4] = [
        (0.01, 1.0, 100, 1e-5, 0.718037),
        (0.1, 1.0, 10, 1e-5, 2.854519),
        (1.0, 2.0, 10, 1e-5, 7.511276),
        (0.01, 0.8, 1000, 1e-6, 3.706190),
    ];

    #[test]
    fn pld_matches_dp_accounting() {
        for (q, z, t, d, want) in REFERENCE {
            let got = pld_epsilon(z, q, t, d).unwrap().epsilon;
            eprintln!("q={q} z={z} T={t}: {got} vs {want}");
            assert!(
                (got - want).abs() / want < 1e-3,
                "q={q} z={z} T={t}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn pld_agrees_with_the_exact_gaussian_for_q_one() {
        for (z, t, d) in [(2.0, 10, 1e-5), (1.0, 5, 1e-6), (5.0, 100, 1e-5)] {
            let exact = gaussian_epsilon_exact(z, t, d).unwrap();
            let pld = pld_epsilon(z, 1.0, t, d).unwrap().epsilon;
            eprintln!("z={z} T={t}: exact {exact} pld {pld}");
            assert!(
                pld >= exact * (1.0 - 1e-9),
                "PLD must not undercut the exact value"
            );
            assert!(
                (pld - exact) / exact < 1e-3,
                "z={z} T={t}: {pld} vs {exact}"
            );
        }
    }
}

#[test]
fn pld_is_finite_wherever_rdp_is_or_refuses() {
    use fedsim::privacy::{epsilon_after, pld_epsilon, FracSeries, SamplingScheme};
    // Long horizons and extreme but valid z, q, δ: PLD never prints inf for a finite ε.
    for z in [1e-3, 0.8, 2.0, 1e6, 1e300] {
        for q in [1e-9, 0.01, 1.0] {
            for rounds in [1, 1000, 1_000_000] {
                for delta in [1e-300, 1e-12, 1e-5, 0.999999] {
                    let rdp = epsilon_after(
                        z,
                        q,
                        rounds,
                        delta,
                        SamplingScheme::Poisson,
                        FracSeries::AbsoluteBound,
                    );
                    if let Ok(g) = &rdp {
                        assert!(
                            g.epsilon.is_finite(),
                            "RDP z={z} q={q} T={rounds} δ={delta}"
                        );
                    }
                    match pld_epsilon(z, q, rounds, delta) {
                        Ok(g) => assert!(
                            g.epsilon.is_finite() && g.epsilon >= 0.0,
                            "PLD z={z} q={q} T={rounds} δ={delta}: {}",
                            g.epsilon
                        ),
                        Err(e) => assert!(!e.to_string().is_empty()),
                    }
                }
            }
        }
    }
}
