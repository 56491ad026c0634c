//! Classification metrics of the ensemble's answers, as `sisa eval` reports them: accuracy,
//! log-loss, per-class precision, recall and F1, their macro averages, and the confusion
//! matrix.
//!
//! Conventions (scikit-learn's): the confusion matrix has a row per true class and a column
//! per predicted class; a class never predicted has precision 0, one never present has recall
//! 0, and an F1 whose precision and recall are both 0 is 0. Macro averages are over the classes
//! that occur in the truth or in the predictions. Log-loss is the mean of `-ln p(true class)`
//! with each probability clipped to `[1e-15, 1]`, so a vote that gave the true class no share
//! costs `ln 1e15 ≈ 34.5`, not infinity.

use serde::Serialize;

/// Smallest probability log-loss takes the logarithm of.
pub const LOG_LOSS_EPS: f64 = 1e-15;

/// One class's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClassMetrics {
    /// The class index.
    pub class: usize,
    /// Rows whose true class this is.
    pub support: u64,
    /// Of the rows predicted as this class, the fraction that are.
    pub precision: f64,
    /// Of the rows of this class, the fraction predicted as it.
    pub recall: f64,
    /// Harmonic mean of precision and recall.
    pub f1: f64,
}

/// Everything `sisa eval` reports about one aggregation's answers.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Metrics {
    /// Rows evaluated.
    pub rows: usize,
    /// Fraction of rows predicted right.
    pub accuracy: f64,
    /// Mean negative log-probability of the true class (clipped, see the module doc).
    pub log_loss: f64,
    /// Mean precision over the classes that occur.
    pub macro_precision: f64,
    /// Mean recall over the classes that occur.
    pub macro_recall: f64,
    /// Mean F1 over the classes that occur.
    pub macro_f1: f64,
    /// Every class of the run, in order.
    pub per_class: Vec<ClassMetrics>,
    /// `confusion[true][predicted]`: rows of each true class given each predicted class.
    pub confusion: Vec<Vec<u64>>,
}

/// The metrics of `predicted` labels and their `probs` (`n × classes`) against the truth `y`.
pub fn classification(probs: &[f32], predicted: &[u32], y: &[u32], classes: usize) -> Metrics {
    let n = y.len();
    assert_eq!(predicted.len(), n, "one prediction per row");
    assert_eq!(probs.len(), n * classes, "classes probabilities per row");
    let mut confusion = vec![vec![0u64; classes]; classes];
    let mut loss = 0.0f64;
    for (i, (&t, &p)) in y.iter().zip(predicted).enumerate() {
        confusion[t as usize][p as usize] += 1;
        let q = (probs[i * classes + t as usize] as f64).clamp(LOG_LOSS_EPS, 1.0);
        loss -= q.ln();
    }
    let ratio = |a: u64, b: u64| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let per_class: Vec<ClassMetrics> = (0..classes)
        .map(|c| {
            let hit = confusion[c][c];
            let support: u64 = confusion[c].iter().sum();
            let predicted: u64 = confusion.iter().map(|row| row[c]).sum();
            let (precision, recall) = (ratio(hit, predicted), ratio(hit, support));
            let f1 = if precision + recall == 0.0 {
                0.0
            } else {
                2.0 * precision * recall / (precision + recall)
            };
            ClassMetrics {
                class: c,
                support,
                precision,
                recall,
                f1,
            }
        })
        .collect();
    let occurring: Vec<&ClassMetrics> = per_class
        .iter()
        .filter(|m| m.support > 0 || confusion.iter().any(|row| row[m.class] > 0))
        .collect();
    let mean = |f: fn(&ClassMetrics) -> f64| {
        if occurring.is_empty() {
            0.0
        } else {
            occurring.iter().map(|m| f(m)).sum::<f64>() / occurring.len() as f64
        }
    };
    let hits: u64 = (0..classes).map(|c| confusion[c][c]).sum();
    Metrics {
        rows: n,
        accuracy: ratio(hits, n as u64),
        log_loss: if n == 0 { 0.0 } else { loss / n as f64 },
        macro_precision: mean(|m| m.precision),
        macro_recall: mean(|m| m.recall),
        macro_f1: mean(|m| m.f1),
        per_class,
        confusion,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_match_a_hand_computed_example() {
        // Truth 0 0 1 1 2, predicted 0 1 1 1 0 (scikit-learn's classification_report on these
        // gives precision 0.5 / 0.667 / 0, recall 0.5 / 1 / 0, macro F1 0.3810).
        let y = [0, 0, 1, 1, 2];
        let pred = [0, 1, 1, 1, 0];
        let mut probs = vec![0f32; 15];
        for (i, &p) in pred.iter().enumerate() {
            probs[i * 3 + p as usize] = 0.8;
            probs[i * 3 + (p as usize + 1) % 3] = 0.2;
        }
        let m = classification(&probs, &pred, &y, 3);
        assert_eq!(
            m.confusion,
            vec![vec![1, 1, 0], vec![0, 2, 0], vec![1, 0, 0]]
        );
        assert_eq!(m.accuracy, 0.6);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-4;
        assert!(close(m.per_class[0].precision, 0.5) && close(m.per_class[0].recall, 0.5));
        assert!(close(m.per_class[1].precision, 2.0 / 3.0) && close(m.per_class[1].recall, 1.0));
        assert_eq!((m.per_class[2].precision, m.per_class[2].f1), (0.0, 0.0));
        assert!(close(m.macro_f1, (0.5 + 0.8) / 3.0), "{}", m.macro_f1);
        // p(true) per row: 0.8, 0 (clipped at 1e-15), 0.8, 0.8, 0 (clipped).
        let want = -((0.8f32 as f64).ln() * 3.0 + LOG_LOSS_EPS.ln() * 2.0) / 5.0;
        assert!((m.log_loss - want).abs() < 1e-6, "{} vs {want}", m.log_loss);
        assert_eq!(m.per_class.iter().map(|c| c.support).sum::<u64>(), 5);
    }

    #[test]
    fn classes_that_never_occur_stay_out_of_the_macro_average() {
        let m = classification(&[1.0, 0.0, 0.0, 1.0, 0.0, 0.0], &[0, 0], &[0, 0], 3);
        assert_eq!(m.macro_f1, 1.0);
        assert_eq!(m.per_class[2].support, 0);
        let empty = classification(&[], &[], &[], 3);
        assert_eq!(
            (empty.accuracy, empty.log_loss, empty.macro_f1),
            (0.0, 0.0, 0.0)
        );
    }
}
