//! Special functions for the accountants, in log space where it matters.

/// `log(exp(x) + exp(y))` without overflow.
pub fn log_add(x: f64, y: f64) -> f64 {
    let (a, b) = if x < y { (x, y) } else { (y, x) };
    if a == f64::NEG_INFINITY {
        return b;
    }
    (a - b).exp().ln_1p() + b
}

/// Signed number in log space: `sign · exp(log)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SignedLog {
    /// `true` for non-negative.
    pub positive: bool,
    /// Log of the magnitude.
    pub log: f64,
}

impl SignedLog {
    /// Zero.
    pub const ZERO: SignedLog = SignedLog {
        positive: true,
        log: f64::NEG_INFINITY,
    };

    /// `self + sign·exp(log)`.
    pub fn add(self, positive: bool, log: f64) -> SignedLog {
        if log == f64::NEG_INFINITY {
            return self;
        }
        if self.log == f64::NEG_INFINITY {
            return SignedLog { positive, log };
        }
        if self.positive == positive {
            return SignedLog {
                positive,
                log: log_add(self.log, log),
            };
        }
        // Opposite signs: the larger magnitude wins.
        let (big, small, sign) = if self.log >= log {
            (self.log, log, self.positive)
        } else {
            (log, self.log, positive)
        };
        if big == small {
            return SignedLog::ZERO;
        }
        SignedLog {
            positive: sign,
            log: big + (-(small - big).exp()).ln_1p(),
        }
    }
}

/// `log |binom(n, k)|` for real `n ≥ 0` and integer `k ≥ 0`, with the sign of `binom(n, k)`.
pub fn log_comb(n: f64, k: f64) -> (f64, bool) {
    let (c, sign) = libm::lgamma_r(n - k + 1.0);
    let value = libm::lgamma(n + 1.0) - libm::lgamma(k + 1.0) - c;
    (value, sign > 0)
}

/// `log(erfc(x))`, accurate in the far tail where `erfc` underflows.
pub fn log_erfc(x: f64) -> f64 {
    if x < 25.0 {
        return libm::erfc(x).ln();
    }
    // Asymptotic series at infinity: erfc(x) ~ exp(-x² - .5/x² + .625/x⁴ - …)/(x√π).
    let x2 = x * x;
    -std::f64::consts::PI.ln() / 2.0 - x.ln() - x2 - 0.5 / x2 + 0.625 / (x2 * x2)
        - 37.0 / 24.0 / (x2 * x2 * x2)
        + 353.0 / 64.0 / (x2 * x2 * x2 * x2)
}
