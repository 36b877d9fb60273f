//! The distributed discrete Gaussian: the exact sampler against its probability mass function
//! and against ISRG's prio sampler, its accounting against a reference written from the paper
//! (tests/reference/make_ddg_reference.py), and the sensitivity bound of the ring's encoding.

use fedsim::privacy::discrete::{
    ddg_rdp, ddg_tau, rdp_poisson_ddg, DiscreteGaussian, DistributedNoise,
};
use fedsim::privacy::{FracSeries, RdpAccountant, SamplingScheme};
use rand::SeedableRng;

/// Counts of `draws` in bins −`edge`..=`edge`, the two tails in the end bins.
fn histogram(draws: impl Iterator<Item = i64>, edge: i64) -> Vec<f64> {
    let mut h = vec![0.0; (2 * edge + 1) as usize];
    for x in draws {
        h[(x.clamp(-edge, edge) + edge) as usize] += 1.0;
    }
    h
}

/// An upper quantile of χ² with `dof` degrees of freedom (Wilson–Hilferty, z = 4.75: p ≈ 10⁻⁶).
fn chi2_limit(dof: f64) -> f64 {
    let c = 2.0 / (9.0 * dof);
    dof * (1.0 - c + 4.75 * c.sqrt()).powi(3)
}

#[test]
fn the_sampler_draws_the_discrete_gaussians_mass_function() {
    // std 10 → t = 11, u = 10: σ² = 110.
    let g = DiscreteGaussian::at_least(10.0).unwrap();
    assert_eq!(g.variance(), 110.0);
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(7);
    let n = 200_000;
    let edge = 40;
    let h = histogram((0..n).map(|_| g.sample(&mut rng)), edge);
    let weight = |x: i64| (-(x * x) as f64 / 220.0).exp();
    let total: f64 = (-2000..=2000).map(weight).sum();
    let mass = |x: i64| match x {
        x if x == -edge => (-2000..=-edge).map(weight).sum::<f64>() / total,
        x if x == edge => (edge..=2000).map(weight).sum::<f64>() / total,
        x => weight(x) / total,
    };
    let chi2: f64 = (-edge..=edge)
        .map(|x| {
            let e = mass(x) * n as f64;
            (h[(x + edge) as usize] - e).powi(2) / e
        })
        .sum();
    let dof = (2 * edge) as f64;
    assert!(chi2 < chi2_limit(dof), "χ² = {chi2} over {dof} dof");
    let mean = (-edge..=edge)
        .map(|x| x as f64 * h[(x + edge) as usize])
        .sum::<f64>()
        / n as f64;
    assert!(mean.abs() < 5.0 * (110.0 / n as f64).sqrt(), "mean {mean}");
}

#[test]
fn the_sampler_agrees_with_prios_exact_sampler() {
    use rand010::distr::Distribution;
    // at_least(10.999): t = 11, u = 11, so σ = 11 exactly — prio's DiscreteGaussian(11).
    let g = DiscreteGaussian::at_least(10.999).unwrap();
    assert_eq!(g.variance(), 121.0);
    let prio = prio::dp::distributions::DiscreteGaussian::new(
        prio::dp::Rational::from_unsigned(11u32, 1u32).unwrap(),
    )
    .unwrap();
    let n = 60_000;
    let edge = 36;
    let mut ours_rng = rand_chacha::ChaCha20Rng::seed_from_u64(1);
    let mut their_rng = <rand010::rngs::StdRng as rand010::SeedableRng>::seed_from_u64(2);
    let ours = histogram((0..n).map(|_| g.sample(&mut ours_rng)), edge);
    let theirs = histogram(
        (0..n).map(|_| {
            let x: num_bigint::BigInt = prio.sample(&mut their_rng);
            i64::try_from(x).unwrap()
        }),
        edge,
    );
    // Two-sample χ² over bins with enough mass.
    let (mut chi2, mut dof) = (0.0, -1.0);
    for (a, b) in ours.iter().zip(&theirs) {
        if a + b >= 10.0 {
            chi2 += (a - b).powi(2) / (a + b);
            dof += 1.0;
        }
    }
    assert!(chi2 < chi2_limit(dof), "χ² = {chi2} over {dof} dof");
}

#[test]
fn a_large_share_has_its_variance() {
    // A client's share for z = 1, C = 1, m = 10: σ ≈ 3.5·10¹¹ fixed-point steps.
    let noise = DistributedNoise::new(1.0, 1.0, 10).unwrap();
    let g = noise.share;
    let want = (1.0 + f64::powi(2.0, -23)) * 2f64.powi(40) / 10f64.sqrt();
    assert!(
        g.std() >= want && g.std() < want * (1.0 + 1e-9),
        "{} vs {want}",
        g.std()
    );
    assert!((noise.scale() - 1.0).abs() < 1e-9, "s = {}", noise.scale());
    assert_eq!(noise.tau(), 0.0);
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
    let n = 50_000;
    let xs: Vec<f64> = (0..n).map(|_| g.sample(&mut rng) as f64).collect();
    let mean = xs.iter().sum::<f64>() / n as f64;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    // The sample variance is within 5 standard errors (σ²·√(2/n)).
    let se = g.variance() * (2.0 / n as f64).sqrt();
    assert!(
        (var - g.variance()).abs() < 5.0 * se,
        "{var} vs {}",
        g.variance()
    );
    assert!(
        mean.abs() < 5.0 * g.std() / (n as f64).sqrt(),
        "mean {mean}"
    );
}

#[test]
fn shares_outside_the_samplers_range_are_refused() {
    assert!(DiscreteGaussian::at_least(9.9).is_err());
    assert!(DiscreteGaussian::at_least(2f64.powi(51)).is_err());
    assert!(DiscreteGaussian::at_least(f64::NAN).is_err());
    // z·C/√m too small for 10 steps of 2⁻⁴⁰.
    assert!(DistributedNoise::new(1e-12, 1.0, 4).is_err());
}

#[derive(serde::Deserialize)]
struct Case {
    q: f64,
    scale: f64,
    rounds: usize,
    delta: f64,
    variance: f64,
    clients: usize,
    dim: f64,
    tau: f64,
    epsilon: f64,
    rdp_at_8: f64,
}

#[test]
fn ddg_accounting_matches_the_reference() {
    #[derive(serde::Deserialize)]
    struct Reference {
        cases: Vec<Case>,
    }
    let text = std::fs::read_to_string("tests/reference/ddg_reference.json").unwrap();
    let reference: Reference = serde_json::from_str(&text).unwrap();
    assert_eq!(reference.cases.len(), 8);
    for c in &reference.cases {
        let tau = ddg_tau(c.variance, c.clients);
        assert!(
            (tau - c.tau).abs() <= 1e-12 * c.tau.max(1e-300),
            "τ {tau} vs {}",
            c.tau
        );
        let r8 = rdp_poisson_ddg(c.q, 8.0, c.scale, tau, c.dim);
        assert!(
            (r8 - c.rdp_at_8).abs() <= 1e-9 * c.rdp_at_8,
            "RDP(8) {r8} vs {}",
            c.rdp_at_8
        );
        let mut acc = RdpAccountant::new(SamplingScheme::Poisson, FracSeries::AbsoluteBound);
        acc.compose_curve(|a| rdp_poisson_ddg(c.q, a, c.scale, tau, c.dim), c.rounds);
        let eps = acc.epsilon(c.delta).unwrap().epsilon;
        assert!(
            (eps - c.epsilon).abs() <= 1e-8 * c.epsilon,
            "q {} s {}: ε {eps} vs {}",
            c.q,
            c.scale,
            c.epsilon
        );
    }
}

#[test]
fn without_sampling_the_ddg_costs_what_the_gaussian_does_and_never_less() {
    for z in [0.5, 1.0, 2.0] {
        let mut ddg = RdpAccountant::new(SamplingScheme::Poisson, FracSeries::AbsoluteBound);
        ddg.compose_curve(|a| rdp_poisson_ddg(1.0, a, 1.0 / z, 0.0, 0.0), 10);
        let mut gauss = RdpAccountant::new(SamplingScheme::Poisson, FracSeries::AbsoluteBound);
        gauss.compose(1.0, z, 10).unwrap();
        let (d, g) = (
            ddg.epsilon(1e-5).unwrap().epsilon,
            gauss.epsilon(1e-5).unwrap().epsilon,
        );
        assert!(d >= g && d <= 1.05 * g, "z {z}: DDG ε {d}, Gaussian ε {g}");
        // Sampled: the generic bound is looser than the sampled Gaussian's, never tighter.
        let mut ddg = RdpAccountant::new(SamplingScheme::Poisson, FracSeries::AbsoluteBound);
        ddg.compose_curve(|a| rdp_poisson_ddg(0.1, a, 1.0 / z, 0.0, 0.0), 10);
        let mut gauss = RdpAccountant::new(SamplingScheme::Poisson, FracSeries::AbsoluteBound);
        gauss.compose(0.1, z, 10).unwrap();
        assert!(ddg.epsilon(1e-5).unwrap().epsilon >= gauss.epsilon(1e-5).unwrap().epsilon);
    }
    // Eq. 17's dimension terms: with τ > 0 both branches exceed the plain Gaussian RDP.
    assert!(ddg_rdp(4.0, 1.0, 0.01, 100.0) > 2.0);
}

#[test]
fn the_rings_terms_of_a_clipped_update_stay_within_the_accounted_sensitivity() {
    use rand::Rng;
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(11);
    let ring = fedsim::secagg::Ring::for_weight(8);
    for clip in [0.5, 1.0, 3.7] {
        let noise = DistributedNoise::new(1.0, clip, 4).unwrap();
        for _ in 0..20 {
            let mut v: Vec<f32> = (0..4096).map(|_| rng.random_range(-1.0..1.0)).collect();
            fedsim::privacy::clip_l2(&mut v, clip);
            let terms = ring.encode(0, &v, 1).unwrap();
            let (sums, _) = ring.decode_sums(&terms);
            let norm = sums.iter().map(|&s| (s as f64).powi(2)).sum::<f64>().sqrt();
            assert!(norm <= noise.sensitivity, "{norm} > {}", noise.sensitivity);
        }
    }
}
