//! Membership-inference metrics over two score lists, higher meaning "more likely a member":
//! ROC AUC (Mann–Whitney, ties counting one half), TPR at a fixed FPR, the best balanced
//! accuracy over thresholds, and the ROC curve itself.

use serde::{Deserialize, Serialize};

/// What a score list says about members vs. non-members.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RocSummary {
    /// P(member score > non-member score) + ½ P(equal).
    pub auc: f64,
    /// Its standard error (Hanley & McNeil 1982): ±1.96 of it is a 95 % interval, so at 200
    /// texts a side, AUCs within about ±0.06 of 0.5 are chance.
    pub auc_se: f64,
    /// TPR at FPR ≤ 0.1 %, 1 % and 5 % (the best threshold that keeps FPR within the bound).
    pub tpr_at_fpr: [f64; 3],
    /// max over thresholds of (TPR + TNR) / 2.
    pub best_balanced_accuracy: f64,
    /// Scores that were NaN (a model that gave no finite loss on the text): ranked below every
    /// real score, as the least member-like, and tied with each other.
    #[serde(default)]
    pub nan_scores: usize,
}

/// The FPR bounds of [`RocSummary::tpr_at_fpr`].
pub const FPR_BOUNDS: [f64; 3] = [0.001, 0.01, 0.05];

/// One point of a ROC curve.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RocPoint {
    /// False-positive rate.
    pub fpr: f64,
    /// True-positive rate.
    pub tpr: f64,
}

/// Every score with whether it is a member's, in ascending order of score, NaN first (below
/// every real score: a NaN says nothing for membership).
fn pooled(members: &[f64], non_members: &[f64]) -> Vec<(f64, bool)> {
    let mut all: Vec<(f64, bool)> = members
        .iter()
        .map(|&s| (s, true))
        .chain(non_members.iter().map(|&s| (s, false)))
        .collect();
    all.sort_by(|a, b| order(a.0, b.0));
    all
}

/// NaN below everything, then the usual order (−0 and +0 equal).
fn order(a: f64, b: f64) -> std::cmp::Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        (false, false) => a.partial_cmp(&b).expect("neither is NaN"),
    }
}

/// Whether two scores tie (NaN ties with NaN: every loop over ties advances).
fn tie(a: f64, b: f64) -> bool {
    order(a, b).is_eq()
}

/// ROC AUC of `members` against `non_members` (0.5 when either is empty).
pub fn auc(members: &[f64], non_members: &[f64]) -> f64 {
    if members.is_empty() || non_members.is_empty() {
        return 0.5;
    }
    // Mann–Whitney U from mid-ranks over the pooled, sorted scores.
    let all = pooled(members, non_members);
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && tie(all[j + 1].0, all[i].0) {
            j += 1;
        }
        let mid = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += mid * all[i..=j].iter().filter(|x| x.1).count() as f64;
        i = j + 1;
    }
    let (m, n) = (members.len() as f64, non_members.len() as f64);
    (rank_sum - m * (m + 1.0) / 2.0) / (m * n)
}

/// The ROC curve: (FPR, TPR) for "member when score ≥ t" at every distinct score t, from
/// (0, 0) to (1, 1).
pub fn curve(members: &[f64], non_members: &[f64]) -> Vec<RocPoint> {
    let mut all = pooled(members, non_members);
    all.reverse();
    let (m, n) = (members.len().max(1) as f64, non_members.len().max(1) as f64);
    let mut points = vec![RocPoint { fpr: 0.0, tpr: 0.0 }];
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut i = 0;
    while i < all.len() {
        let t = all[i].0;
        while i < all.len() && tie(all[i].0, t) {
            if all[i].1 {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        points.push(RocPoint {
            fpr: fp as f64 / n,
            tpr: tp as f64 / m,
        });
    }
    points
}

/// AUC, TPR at [`FPR_BOUNDS`] and the best balanced accuracy.
pub fn summarize(members: &[f64], non_members: &[f64]) -> RocSummary {
    let points = curve(members, non_members);
    let tpr_at = |bound: f64| {
        points
            .iter()
            .filter(|p| p.fpr <= bound + 1e-12)
            .map(|p| p.tpr)
            .fold(0.0, f64::max)
    };
    let a = auc(members, non_members);
    RocSummary {
        auc: a,
        auc_se: auc_standard_error(a, members.len(), non_members.len()),
        tpr_at_fpr: FPR_BOUNDS.map(tpr_at),
        best_balanced_accuracy: points
            .iter()
            .map(|p| (p.tpr + 1.0 - p.fpr) / 2.0)
            .fold(0.5, f64::max),
        nan_scores: members
            .iter()
            .chain(non_members)
            .filter(|s| s.is_nan())
            .count(),
    }
}

/// Hanley & McNeil's standard error of an AUC `a` from `m` positives and `n` negatives.
pub fn auc_standard_error(a: f64, m: usize, n: usize) -> f64 {
    if m == 0 || n == 0 {
        return f64::NAN;
    }
    let (m, n) = (m as f64, n as f64);
    let q1 = a / (2.0 - a);
    let q2 = 2.0 * a * a / (1.0 + a);
    ((a * (1.0 - a) + (m - 1.0) * (q1 - a * a) + (n - 1.0) * (q2 - a * a)) / (m * n)).sqrt()
}

/// Share of texts a fixed rule classifies right: members where `is_member` holds, non-members
/// where it does not (the course's "PPL ratio < 1 means member").
pub fn rule_accuracy(members: &[f64], non_members: &[f64], is_member: impl Fn(f64) -> bool) -> f64 {
    let right = members.iter().filter(|&&s| is_member(s)).count()
        + non_members.iter().filter(|&&s| !is_member(s)).count();
    right as f64 / (members.len() + non_members.len()).max(1) as f64
}
