//! Membership-inference audit: can an attacker tell a run's training rows from rows it never saw?
//!
//! The attack is the loss threshold (Yeom et al., 2018): a row whose cross-entropy loss under
//! the published ensemble (posterior mean) is low is guessed to be a member. Its power is
//! summarised by the ROC curve of the score `−loss`:
//!
//! - **AUC**, by the Mann-Whitney statistic: the probability that a random member scores above a
//!   random nonmember, ties counted as 1/2.
//! - **TPR at a fixed FPR** (1% and 0.1%): the largest share of members caught by a threshold
//!   that flags at most that share of nonmembers (no interpolation between ROC points).
//! - **Bootstrap confidence intervals** for each: members and nonmembers are resampled with
//!   replacement separately, from a seeded generator, and the percentile interval is reported.
//! - **The null interval**: the AUC an attacker gets when membership carries no signal, from
//!   random splits of rows that are all never-seen into groups of the same sizes (by default the
//!   permutation of members ∪ nonmembers, which are all never-seen when the null holds).
//!
//! An audit *separates* when the AUC's interval lies above the null interval, and finds the
//! two sets *indistinguishable* when the AUC falls inside the null interval. After exact
//! unlearning, a forgotten user's rows must be indistinguishable from never-seen rows; a
//! positive control (the same rows before unlearning) must separate, or the audit has no power.

use crate::data::{source, InputSpec, Need};
use crate::ensemble::Ensemble;
use crate::error::{Error, Result};
use crate::rng::SplitMix64;
use crate::run::{Aggregation, Run};
use serde::{Deserialize, Serialize};

/// How an audit resamples. Defaults: 1000 bootstrap resamples, 1000 null draws, 95%, seed 7.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditOptions {
    /// Bootstrap resamples for the confidence intervals. Default: 1000.
    pub bootstrap: usize,
    /// Random splits for the null interval. Default: 1000.
    pub null_draws: usize,
    /// Confidence level of every interval. Default: 0.95.
    pub confidence: f64,
    /// Seed of every resample. Default: 7.
    pub seed: u64,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            bootstrap: 1000,
            null_draws: 1000,
            confidence: 0.95,
            seed: 7,
        }
    }
}

/// A statistic with its bootstrap confidence interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// The value on the data as given.
    pub value: f64,
    /// Lower end of the interval.
    pub lo: f64,
    /// Upper end of the interval.
    pub hi: f64,
}

/// What an audit concludes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The AUC's whole interval lies above the null interval: members are recognisable.
    Separates,
    /// The AUC lies inside the null interval: members look like never-seen rows.
    Indistinguishable,
    /// Neither: the AUC is outside the null interval but its own interval overlaps it
    /// (weak evidence either way), or it lies below the null interval.
    Inconclusive,
}

/// The result of one audit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditReport {
    /// Number of member rows.
    pub members: usize,
    /// Number of nonmember rows.
    pub nonmembers: usize,
    /// Mean loss of the members.
    pub member_mean_loss: f64,
    /// Mean loss of the nonmembers.
    pub nonmember_mean_loss: f64,
    /// AUC of the loss-threshold attack.
    pub auc: Estimate,
    /// True-positive rate at 1% false-positive rate.
    pub tpr_at_1pct_fpr: Estimate,
    /// True-positive rate at 0.1% false-positive rate.
    pub tpr_at_0_1pct_fpr: Estimate,
    /// Central interval of the AUC of never-seen vs never-seen rows of the same group sizes.
    pub null_interval: [f64; 2],
    /// Where the never-seen rows of the null interval came from.
    pub null_from: String,
    /// The conclusion.
    pub verdict: Verdict,
    /// The options used.
    pub options: AuditOptions,
}

/// Cross-entropy loss of each row under the ensemble's posterior mean: `−ln p(label)`.
///
/// A confident model's `p(label)` rounds to 1 in `f32`, which would tie every confident row at
/// loss 0; the loss is therefore computed as `−ln(1 − q)` from `q`, the summed probability of the
/// other classes, whose small values `f32` keeps, whenever `q < ½`.
pub fn row_losses(ensemble: &Ensemble, x: &[f32], y: &[u32]) -> Vec<f64> {
    let pred = ensemble.predict(x, y.len(), Aggregation::Mean);
    pred.probs
        .chunks(ensemble.classes)
        .zip(y)
        .map(|(p, &l)| cross_entropy(p, l as usize))
        .collect()
}

/// `−ln p[label]`, precise when `p[label]` is close to 1 (see [`row_losses`]).
pub fn cross_entropy(p: &[f32], label: usize) -> f64 {
    let others: f64 = p
        .iter()
        .enumerate()
        .filter(|&(c, _)| c != label)
        .map(|(_, &v)| v as f64)
        .sum();
    if others < 0.5 {
        -(-others).ln_1p()
    } else {
        -(p[label].max(f32::MIN_POSITIVE) as f64).ln()
    }
}

/// Scores and group flags sorted by score, with the tie groups marked: the one sort that every
/// weighted statistic below reuses.
struct Ranked {
    /// (score, is_member, original index within its group), ascending by score.
    items: Vec<(f64, bool, usize)>,
}

impl Ranked {
    fn new(members: &[f64], nonmembers: &[f64]) -> Ranked {
        let mut items: Vec<(f64, bool, usize)> = members
            .iter()
            .enumerate()
            .map(|(i, &s)| (s, true, i))
            .chain(nonmembers.iter().enumerate().map(|(i, &s)| (s, false, i)))
            .collect();
        items.sort_by(|a, b| a.0.total_cmp(&b.0));
        Ranked { items }
    }

    /// Tie groups: (member weight, nonmember weight) per distinct score, ascending.
    fn groups(&self, wm: &[f64], wn: &[f64]) -> Vec<(f64, f64)> {
        let mut out: Vec<(f64, f64)> = Vec::new();
        let mut last: Option<f64> = None;
        for &(s, member, i) in &self.items {
            let (m, n) = if member { (wm[i], 0.0) } else { (0.0, wn[i]) };
            match (last, out.last_mut()) {
                (Some(l), Some(g)) if l == s => {
                    g.0 += m;
                    g.1 += n;
                }
                _ => out.push((m, n)),
            }
            last = Some(s);
        }
        out
    }

    /// Weighted Mann-Whitney AUC: P(member score > nonmember score) + ½ P(equal).
    fn auc(&self, wm: &[f64], wn: &[f64]) -> f64 {
        let (mut below, mut num, mut tm, mut tn) = (0.0, 0.0, 0.0, 0.0);
        for (m, n) in self.groups(wm, wn) {
            num += m * (below + 0.5 * n);
            below += n;
            tm += m;
            tn += n;
        }
        if tm == 0.0 || tn == 0.0 {
            return 0.5;
        }
        num / (tm * tn)
    }

    /// Largest TPR among thresholds whose FPR is at most `fpr` (a threshold flags every row
    /// scoring at or above it, so a tie group is taken whole or not at all).
    fn tpr_at(&self, wm: &[f64], wn: &[f64], fpr: f64) -> f64 {
        let groups = self.groups(wm, wn);
        let tm: f64 = groups.iter().map(|g| g.0).sum();
        let tn: f64 = groups.iter().map(|g| g.1).sum();
        if tm == 0.0 || tn == 0.0 {
            return 0.0;
        }
        let (mut tp, mut fp, mut best) = (0.0, 0.0, 0.0);
        for (m, n) in groups.iter().rev() {
            tp += m;
            fp += n;
            // A small tolerance so that FPR exactly at the bound (e.g. 1 of 100) counts.
            if fp / tn <= fpr + 1e-12 {
                best = tp / tm;
            } else {
                break;
            }
        }
        best
    }
}

/// AUC of scores (higher means "member") by the Mann-Whitney statistic, ties counted as 1/2.
pub fn auc(members: &[f64], nonmembers: &[f64]) -> f64 {
    Ranked::new(members, nonmembers).auc(&vec![1.0; members.len()], &vec![1.0; nonmembers.len()])
}

/// True-positive rate at false-positive rate at most `fpr`, for scores where higher means
/// "member".
pub fn tpr_at_fpr(members: &[f64], nonmembers: &[f64], fpr: f64) -> f64 {
    Ranked::new(members, nonmembers).tpr_at(
        &vec![1.0; members.len()],
        &vec![1.0; nonmembers.len()],
        fpr,
    )
}

/// The `q`-quantile (0..=1) of sorted values, by the nearest-rank rule.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn interval(mut values: Vec<f64>, confidence: f64) -> [f64; 2] {
    values.sort_by(f64::total_cmp);
    let tail = (1.0 - confidence) / 2.0;
    [quantile(&values, tail), quantile(&values, 1.0 - tail)]
}

/// Bootstrap weights: how often each of `n` items is drawn in `n` draws with replacement.
fn resample(rng: &mut SplitMix64, n: usize, out: &mut [f64]) {
    out.iter_mut().for_each(|w| *w = 0.0);
    for _ in 0..n {
        out[(rng.next_u64() % n as u64) as usize] += 1.0;
    }
}

/// Central interval of the AUC between two groups of `m` and `n` rows drawn without
/// replacement from `pool` (all never-seen), over `opts.null_draws` random splits.
pub fn null_interval(pool: &[f64], m: usize, n: usize, opts: &AuditOptions) -> Result<[f64; 2]> {
    if m == 0 || n == 0 || pool.len() < m + n {
        return Err(Error::Config(format!(
            "the null interval needs {} never-seen rows for groups of {m} and {n}, but has {}",
            m + n,
            pool.len()
        )));
    }
    let mut rng = SplitMix64::new(opts.seed ^ 0x6e75_6c6c);
    let mut idx: Vec<usize> = (0..pool.len()).collect();
    let mut aucs = Vec::with_capacity(opts.null_draws);
    for _ in 0..opts.null_draws.max(1) {
        // Partial Fisher-Yates: the first m + n positions become a uniform random subset.
        for i in 0..m + n {
            let j = i + (rng.next_u64() % (idx.len() - i) as u64) as usize;
            idx.swap(i, j);
        }
        let a: Vec<f64> = idx[..m].iter().map(|&i| pool[i]).collect();
        let b: Vec<f64> = idx[m..m + n].iter().map(|&i| pool[i]).collect();
        aucs.push(auc(&a, &b));
    }
    Ok(interval(aucs, opts.confidence))
}

/// Audit member and nonmember losses. `null_pool` holds losses of never-seen rows for the null
/// interval (at least `members + nonmembers` of them); `None` uses the permutation of
/// members ∪ nonmembers.
pub fn audit(
    member_losses: &[f64],
    nonmember_losses: &[f64],
    null_pool: Option<(&[f64], &str)>,
    opts: &AuditOptions,
) -> Result<AuditReport> {
    let (m, n) = (member_losses.len(), nonmember_losses.len());
    if m == 0 || n == 0 {
        return Err(Error::Config(format!(
            "an audit needs members and nonmembers; got {m} and {n} rows"
        )));
    }
    if !(0.5..1.0).contains(&opts.confidence) {
        return Err(Error::Config(format!(
            "confidence must be in [0.5, 1), got {}",
            opts.confidence
        )));
    }
    let sm: Vec<f64> = member_losses.iter().map(|l| -l).collect();
    let sn: Vec<f64> = nonmember_losses.iter().map(|l| -l).collect();
    let ranked = Ranked::new(&sm, &sn);
    let (ones_m, ones_n) = (vec![1.0; m], vec![1.0; n]);
    let mut rng = SplitMix64::new(opts.seed);
    let (mut wm, mut wn) = (vec![0.0; m], vec![0.0; n]);
    let mut boots = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..opts.bootstrap.max(1) {
        resample(&mut rng, m, &mut wm);
        resample(&mut rng, n, &mut wn);
        boots[0].push(ranked.auc(&wm, &wn));
        boots[1].push(ranked.tpr_at(&wm, &wn, 0.01));
        boots[2].push(ranked.tpr_at(&wm, &wn, 0.001));
    }
    let [b_auc, b_1, b_01] = boots;
    let estimate = |value: f64, b: Vec<f64>| {
        let [lo, hi] = interval(b, opts.confidence);
        Estimate { value, lo, hi }
    };
    let auc_est = estimate(ranked.auc(&ones_m, &ones_n), b_auc);
    let (null, null_from) = match null_pool {
        Some((pool, from)) => (
            null_interval(&pool.iter().map(|l| -l).collect::<Vec<_>>(), m, n, opts)?,
            from.to_string(),
        ),
        None => {
            let pooled: Vec<f64> = sm.iter().chain(&sn).copied().collect();
            (
                null_interval(&pooled, m, n, opts)?,
                "permutations of members and nonmembers".to_string(),
            )
        }
    };
    let verdict = if auc_est.lo > null[1] {
        Verdict::Separates
    } else if (null[0]..=null[1]).contains(&auc_est.value) {
        Verdict::Indistinguishable
    } else {
        Verdict::Inconclusive
    };
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    Ok(AuditReport {
        members: m,
        nonmembers: n,
        member_mean_loss: mean(member_losses),
        nonmember_mean_loss: mean(nonmember_losses),
        auc: auc_est,
        tpr_at_1pct_fpr: estimate(ranked.tpr_at(&ones_m, &ones_n, 0.01), b_1),
        tpr_at_0_1pct_fpr: estimate(ranked.tpr_at(&ones_m, &ones_n, 0.001), b_01),
        null_interval: null,
        null_from,
        verdict,
        options: opts.clone(),
    })
}

/// Labelled rows of an input for an audit of `run`: the run's features (by name, in any
/// order) and label column (a user column is ignored), labels read as the run's classes.
pub fn read_rows(run: &Run, input: &InputSpec) -> Result<(Vec<f32>, Vec<u32>)> {
    let t = source::read_for_run(input, &run.config, Need::Optional, Need::Required)?;
    let labels = t.labels.clone().unwrap_or_default();
    Ok((t.x, labels))
}

/// `sisa audit`: the loss-threshold attack on `run`'s published ensemble, members vs
/// nonmembers read from their files (any format the run's data could have).
pub fn audit_files(
    run: &Run,
    members: &InputSpec,
    nonmembers: &InputSpec,
    opts: &AuditOptions,
) -> Result<AuditReport> {
    let ensemble = Ensemble::load(run)?;
    let (xm, ym) = read_rows(run, members)?;
    let (xn, yn) = read_rows(run, nonmembers)?;
    audit(
        &row_losses(&ensemble, &xm, &ym),
        &row_losses(&ensemble, &xn, &yn),
        None,
        opts,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_matches_hand_computed_values() {
        // Members {3, 5, 5}, nonmembers {1, 5, 4}: pairs (m > n) = 3>1, 5>1, 5>4, 5>1, 5>4 = 5;
        // ties 5=5 twice count ½ each: AUC = (5 + 1) / 9.
        assert!((auc(&[3.0, 5.0, 5.0], &[1.0, 5.0, 4.0]) - 6.0 / 9.0).abs() < 1e-12);
        // Perfect separation, perfect inversion, all ties.
        assert_eq!(auc(&[2.0, 3.0], &[0.0, 1.0]), 1.0);
        assert_eq!(auc(&[0.0, 1.0], &[2.0, 3.0]), 0.0);
        assert_eq!(auc(&[1.0; 4], &[1.0; 7]), 0.5);
        // Members {0.2, 0.6, 0.9}, nonmembers {0.1, 0.4, 0.6, 0.8}:
        // 0.2 beats 1; 0.6 beats 2 and ties 1; 0.9 beats 4: (1 + 2.5 + 4) / 12.
        let a = auc(&[0.2, 0.6, 0.9], &[0.1, 0.4, 0.6, 0.8]);
        assert!((a - 7.5 / 12.0).abs() < 1e-12, "{a}");
    }

    #[test]
    fn tpr_at_fixed_fpr_matches_hand_computed_values() {
        // 100 nonmembers scoring 0..99, members scoring 98.5, 99.5, 50.5, 200.
        let non: Vec<f64> = (0..100).map(f64::from).collect();
        let mem = [98.5, 99.5, 50.5, 200.0];
        // FPR ≤ 0.1% allows no nonmember: only scores above 99 → 99.5 and 200 → 2/4.
        assert_eq!(tpr_at_fpr(&mem, &non, 0.001), 0.5);
        // FPR ≤ 1% allows one nonmember (99): the threshold 98.5 catches 98.5 too → 3/4.
        assert_eq!(tpr_at_fpr(&mem, &non, 0.01), 0.75);
        // FPR ≤ 40%: thresholds down to 60 (40 nonmembers); 50.5 needs 49 → still 3/4.
        assert_eq!(tpr_at_fpr(&mem, &non, 0.4), 0.75);
        // FPR ≤ 50%: the threshold 50.5 flags 49 nonmembers and every member.
        assert_eq!(tpr_at_fpr(&mem, &non, 0.5), 1.0);
        // A tie between the best member and a nonmember at FPR 0: the group is not taken.
        assert_eq!(tpr_at_fpr(&[5.0], &[5.0, 1.0], 0.0), 0.0);
    }

    #[test]
    fn cross_entropy_keeps_confident_rows_apart() {
        // p(label) rounds to 1 in f32 for both rows, yet their losses differ.
        let a = cross_entropy(&[1.0, 1e-9, 1e-9], 0);
        let b = cross_entropy(&[1.0, 1e-12, 0.0], 0);
        assert!(
            (a - 2e-9).abs() < 1e-15 && (b - 1e-12).abs() < 1e-18,
            "{a} {b}"
        );
        assert!((cross_entropy(&[0.25, 0.75], 0) - 4f64.ln()).abs() < 1e-6);
        assert!((cross_entropy(&[0.75, 0.25], 0) - (4.0f64 / 3.0).ln()).abs() < 1e-6);
    }

    #[test]
    fn weighted_auc_equals_auc_of_repeated_rows() {
        let r = Ranked::new(&[1.0, 3.0], &[2.0, 0.0]);
        // Member 1.0 twice, nonmember 2.0 three times, nonmember 0.0 not at all:
        // {1, 1, 3} vs {2, 2, 2}: 3 beats 3 nonmembers → 3 / 9.
        let w = r.auc(&[2.0, 1.0], &[3.0, 0.0]);
        assert!((w - auc(&[1.0, 1.0, 3.0], &[2.0, 2.0, 2.0])).abs() < 1e-12);
        assert!((w - 3.0 / 9.0).abs() < 1e-12);
    }

    #[test]
    fn audit_separates_shifted_losses_and_not_identical_ones() {
        let mut rng = SplitMix64::new(1);
        let mut draw = |shift: f64, n: usize| -> Vec<f64> {
            (0..n)
                .map(|_| (rng.next_symmetric() as f64 + 1.0) + shift)
                .collect()
        };
        let members = draw(0.0, 400);
        let nonmembers = draw(0.5, 600);
        let pool = draw(0.5, 3000);
        let opts = AuditOptions {
            bootstrap: 300,
            null_draws: 300,
            ..AuditOptions::default()
        };
        let r = audit(&members, &nonmembers, None, &opts).unwrap();
        // Lower member losses: AUC well above ½, interval above the null.
        assert!(r.auc.value > 0.6 && r.auc.lo > r.null_interval[1], "{r:?}");
        assert_eq!(r.verdict, Verdict::Separates);
        assert!(r.auc.lo <= r.auc.value && r.auc.value <= r.auc.hi);
        let same = draw(0.5, 400);
        let r = audit(&same, &nonmembers, Some((&pool, "pool")), &opts).unwrap();
        assert!(
            r.null_interval[0] < 0.5 && 0.5 < r.null_interval[1],
            "{r:?}"
        );
        assert_eq!(r.verdict, Verdict::Indistinguishable, "{r:?}");
        // Seeded: the same inputs give the same report.
        assert_eq!(
            r,
            audit(&same, &nonmembers, Some((&pool, "pool")), &opts).unwrap()
        );
        assert!(audit(&[], &nonmembers, None, &opts).is_err());
        assert!(null_interval(&pool[..10], 8, 8, &opts).is_err());
    }
}
