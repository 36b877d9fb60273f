//! `sim privacy epsilon|noise`: the privacy calculator.

use clap::Subcommand;

use super::out::outln;

#[derive(Subcommand)]
pub enum PrivacyCommand {
    /// ε after T rounds of the subsampled Gaussian mechanism.
    Epsilon {
        /// Noise multiplier z (noise std / clipping norm).
        #[arg(long)]
        noise_multiplier: f64,
        #[command(flatten)]
        common: PrivacyArgs,
    },
    /// The smallest noise multiplier whose ε after T rounds is at most the target.
    Noise {
        /// Target ε.
        #[arg(long)]
        target_epsilon: f64,
        #[command(flatten)]
        common: PrivacyArgs,
    },
}

#[derive(clap::Args)]
pub struct PrivacyArgs {
    /// Fraction of clients sampled per round, q.
    #[arg(long)]
    sampling_rate: f64,
    /// Rounds, T.
    #[arg(long)]
    rounds: usize,
    /// Target δ.
    #[arg(long)]
    delta: f64,
    /// Accountant.
    #[arg(long, value_enum, default_value_t = Accountant::Rdp)]
    accountant: Accountant,
    /// Sampling: Poisson (add/remove-one neighbours) or fixed-size without replacement
    /// (replace-one neighbours).
    #[arg(long, value_enum, default_value_t = Sampling::Poisson)]
    sampling: Sampling,
    /// Fractional-order series: dp_accounting's absolute-value bound, or the exact signed sum.
    #[arg(long, value_enum, default_value_t = Series::Bound)]
    series: Series,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
pub enum Accountant {
    /// Rényi DP (Mironov et al. 2019; conversion of Balle et al. 2020).
    Rdp,
    /// Privacy loss distributions (connect-the-dots, as dp_accounting): tighter; Poisson only.
    Pld,
    /// The distributed discrete Gaussian (Kairouz et al. 2021, Eq. 17 with τ = 0) under Zhu &
    /// Wang's Poisson-subsampling bound: what `distribution: DiscreteGaussian` runs are
    /// charged; Poisson only.
    Ddg,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Sampling {
    Poisson,
    Fixed,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Series {
    Bound,
    Exact,
}

pub fn privacy(what: PrivacyCommand) -> anyhow::Result<()> {
    let c = match &what {
        PrivacyCommand::Epsilon { common, .. } | PrivacyCommand::Noise { common, .. } => common,
    };
    let (z, g) = account(&what, c)?;
    let (sampling, neighbours) = match c.sampling {
        Sampling::Poisson => ("poisson", "add-or-remove-one client"),
        Sampling::Fixed => ("fixed-size without replacement", "replace-one client"),
    };
    let method = match (c.accountant, c.series) {
        (Accountant::Pld, _) => {
            "PLD accountant (connect-the-dots, discretisation 1e-4)".to_string()
        }
        (Accountant::Ddg, _) => format!(
            "distributed discrete Gaussian (Kairouz et al. 2021, tau = 0), RDP at integer order {} \
             under Zhu & Wang's Poisson-subsampling bound",
            g.order.ceil().max(2.0)
        ),
        (Accountant::Rdp, s) => format!(
            "RDP accountant, optimal order {}, fractional orders by {}",
            g.order,
            match s {
                Series::Bound => "absolute-value bound (dp_accounting)",
                Series::Exact => "exact series",
            }
        ),
    };
    if c.json {
        let v = serde_json::json!({
            "epsilon": g.epsilon,
            "delta": g.delta,
            "accountant": match c.accountant { Accountant::Rdp => "rdp", Accountant::Pld => "pld", Accountant::Ddg => "ddg" },
            "order": if c.accountant == Accountant::Pld { None } else { Some(g.order) },
            "noise_multiplier": z,
            "sampling_rate": c.sampling_rate,
            "rounds": c.rounds,
            "sampling": sampling,
            "neighbouring": neighbours,
            "method": method,
        });
        outln!("{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        outln!(
            "epsilon = {} at delta = {:e} after {} rounds: noise multiplier {}, sampling rate {} ({sampling}, {neighbours}); {method}",
            if g.epsilon < 1e6 {
                format!("{:.6}", g.epsilon)
            } else {
                fedsim::fmt::compact(g.epsilon)
            },
            g.delta,
            c.rounds,
            fedsim::fmt::compact(z),
            fedsim::fmt::compact(c.sampling_rate)
        )?;
    }
    Ok(())
}

/// The noise multiplier and its guarantee: ε for the given multiplier, or the smallest
/// multiplier that meets the target ε.
fn account(
    what: &PrivacyCommand,
    c: &PrivacyArgs,
) -> anyhow::Result<(f64, fedsim::privacy::Guarantee)> {
    use fedsim::privacy::{
        calibrate_noise, ddg_epsilon_after, epsilon_after, pld_epsilon, FracSeries, SamplingScheme,
    };
    let scheme = match c.sampling {
        Sampling::Poisson => SamplingScheme::Poisson,
        Sampling::Fixed => SamplingScheme::WithoutReplacement,
    };
    let series = match c.series {
        Series::Bound => FracSeries::AbsoluteBound,
        Series::Exact => FracSeries::Exact,
    };
    if c.accountant != Accountant::Rdp && scheme != SamplingScheme::Poisson {
        anyhow::bail!("--accountant pld and ddg support --sampling poisson only; use --accountant rdp for fixed-size sampling");
    }
    let epsilon_of = |z: f64| match c.accountant {
        Accountant::Rdp => epsilon_after(z, c.sampling_rate, c.rounds, c.delta, scheme, series),
        Accountant::Pld => pld_epsilon(z, c.sampling_rate, c.rounds, c.delta),
        Accountant::Ddg => ddg_epsilon_after(z, c.sampling_rate, c.rounds, c.delta),
    };
    Ok(match what {
        PrivacyCommand::Epsilon {
            noise_multiplier, ..
        } => (*noise_multiplier, epsilon_of(*noise_multiplier)?),
        PrivacyCommand::Noise { target_epsilon, .. } => {
            calibrate_noise(*target_epsilon, epsilon_of)?
        }
    })
}
