//! The ensemble: every non-empty shard's model, combined by posterior mean, majority vote or a
//! posterior mean weighted by each shard's row count.

use crate::error::{Error, Result};
use crate::model::{predict_raw, Norm, ShardModel};
use crate::run::{Aggregation, Run};

/// One shard's model in the ensemble.
#[derive(Clone, Debug)]
pub struct Member {
    /// The shard.
    pub shard: usize,
    /// Its standardization.
    pub norm: Norm,
    /// Its model.
    pub model: Box<dyn ShardModel>,
    /// Rows its model was trained on: its weight under [`Aggregation::Weighted`].
    pub rows: u64,
}

impl Member {
    /// Class probabilities for `n` raw rows.
    pub fn predict_proba(&self, x: &[f32], n: usize) -> Vec<f32> {
        predict_raw(&self.norm, self.model.as_ref(), x, n)
    }
}

/// The published models of one ensemble version.
#[derive(Clone, Debug)]
pub struct Ensemble {
    /// Ensemble version (the manifest's).
    pub version: u64,
    /// Number of classes.
    pub classes: usize,
    /// Number of features.
    pub features: usize,
    /// Shards with at least one row; a shard that holds no rows has no model worth a vote.
    pub members: Vec<Member>,
}

/// Predictions for a batch of rows.
#[derive(Clone, Debug, PartialEq)]
pub struct Prediction {
    /// Predicted class of each row.
    pub labels: Vec<u32>,
    /// Class probabilities (mean) or vote shares (vote), `n × classes`.
    pub probs: Vec<f32>,
}

impl Ensemble {
    /// Load and check every non-empty shard's published model.
    pub fn load(run: &Run) -> Result<Ensemble> {
        Ensemble::load_excluding(run, &[])
    }

    /// [`Ensemble::load`] without the shards in `excluded` (those of deletion requests not yet
    /// published, which a published model may still hold).
    pub fn load_excluding(run: &Run, excluded: &[usize]) -> Result<Ensemble> {
        let mut members = Vec::new();
        for s in &run.manifest.shards {
            if s.data.rows > 0 && !excluded.contains(&s.shard) {
                let ck = run.model(s.shard)?;
                members.push(Member {
                    shard: s.shard,
                    norm: ck.norm,
                    model: ck.model,
                    rows: s.data.rows,
                });
            }
        }
        if members.is_empty() {
            return Err(Error::run(
                run.dir.root(),
                if excluded.is_empty() {
                    "no shard holds any rows: nothing to predict with"
                } else {
                    "every shard with rows waits for a deletion request to be published: nothing \
                     may predict until it is (run the plan's shard tasks and sisa publish)"
                },
            ));
        }
        Ok(Ensemble {
            version: run.manifest.version,
            classes: run.config.classes,
            features: run.config.features.len(),
            members,
        })
    }

    /// Each member's class probabilities for `n` rows, in member order.
    pub fn member_probs(&self, x: &[f32], n: usize) -> Vec<Vec<f32>> {
        self.members.iter().map(|m| m.predict_proba(x, n)).collect()
    }

    /// Predict `n` rows with every member.
    pub fn predict(&self, x: &[f32], n: usize, agg: Aggregation) -> Prediction {
        self.predict_excluding(x, n, agg, &[])
    }

    /// Predict `n` rows with every member whose shard is not in `excluded`. Panics only if
    /// every member is excluded, which callers prevent.
    pub fn predict_excluding(
        &self,
        x: &[f32],
        n: usize,
        agg: Aggregation,
        excluded: &[usize],
    ) -> Prediction {
        let (probs, rows): (Vec<Vec<f32>>, Vec<u64>) = self
            .members
            .iter()
            .filter(|m| !excluded.contains(&m.shard))
            .map(|m| (m.predict_proba(x, n), m.rows))
            .unzip();
        aggregate(&probs, &rows, n, self.classes, agg)
    }

    /// Each member's row count, in member order.
    pub fn member_rows(&self) -> Vec<u64> {
        self.members.iter().map(|m| m.rows).collect()
    }
}

/// Index of the largest value; ties go to the smallest index.
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// Combine members' probabilities (each `n × classes`) in member order; `rows` holds each
/// member's training row count, its weight under [`Aggregation::Weighted`].
pub fn aggregate(
    members: &[Vec<f32>],
    rows: &[u64],
    n: usize,
    classes: usize,
    agg: Aggregation,
) -> Prediction {
    assert!(!members.is_empty(), "aggregate needs at least one member");
    assert_eq!(members.len(), rows.len(), "one row count per member");
    let mut probs = vec![0f32; n * classes];
    let mut share = 1.0 / members.len() as f32;
    let total: u64 = rows.iter().sum();
    for (p, &m_rows) in members.iter().zip(rows) {
        match agg {
            Aggregation::Mean => {
                for (acc, v) in probs.iter_mut().zip(p) {
                    *acc += v;
                }
            }
            Aggregation::Weighted => {
                // A member's weight is its share of the rows: each is fixed by its own shard,
                // so a deletion changes only the weights of the shards it touched (and, through
                // the total, the scale of all, which no argmax sees).
                share = 1.0;
                let w = if total == 0 {
                    1.0 / members.len() as f32
                } else {
                    (m_rows as f64 / total as f64) as f32
                };
                for (acc, v) in probs.iter_mut().zip(p) {
                    *acc += w * v;
                }
            }
            Aggregation::Vote => {
                for r in 0..n {
                    let top = argmax(&p[r * classes..(r + 1) * classes]);
                    probs[r * classes + top] += 1.0;
                }
            }
        }
    }
    probs.iter_mut().for_each(|v| *v *= share);
    let labels = probs
        .chunks(classes)
        .map(|row| argmax(row) as u32)
        .collect();
    Prediction { labels, probs }
}

/// Fraction of `predicted` equal to `truth`.
pub fn accuracy(predicted: &[u32], truth: &[u32]) -> f64 {
    if truth.is_empty() {
        return 0.0;
    }
    predicted.iter().zip(truth).filter(|(a, b)| a == b).count() as f64 / truth.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_vote() {
        let a = vec![0.6, 0.4, 0.1, 0.9];
        let b = vec![0.3, 0.7, 0.2, 0.8];
        let c = vec![0.9, 0.1, 0.6, 0.4];
        let rows = [10, 10, 10];
        let three = [a.clone(), b.clone(), c.clone()];
        let mean = aggregate(&three, &rows, 2, 2, Aggregation::Mean);
        assert_eq!(mean.labels, [0, 1]);
        assert!((mean.probs[0] - 0.6).abs() < 1e-6);
        // Equal row counts weigh like the plain mean.
        let even = aggregate(&three, &rows, 2, 2, Aggregation::Weighted);
        assert_eq!(even.labels, mean.labels);
        assert!((even.probs[0] - 0.6).abs() < 1e-6);
        // A shard of 8 rows against two of 1 outweighs them: row 1 follows c.
        let heavy = aggregate(&three, &[1, 1, 8], 2, 2, Aggregation::Weighted);
        assert!((heavy.probs[0] - (0.6 + 0.3 + 8.0 * 0.9) / 10.0).abs() < 1e-6);
        assert_eq!(heavy.labels, [0, 0]);
        let vote = aggregate(&[a, b, c], &rows, 2, 2, Aggregation::Vote);
        assert_eq!(vote.labels, [0, 1]);
        assert!((vote.probs[0] - 2.0 / 3.0).abs() < 1e-6);
        // A tie goes to the smallest label.
        let tie = aggregate(
            &[vec![0.9, 0.1], vec![0.1, 0.9]],
            &[1, 1],
            1,
            2,
            Aggregation::Vote,
        );
        assert_eq!(tie.labels, [0]);
        assert_eq!(accuracy(&[1, 2, 3], &[1, 0, 3]), 2.0 / 3.0);
    }
}

/// Accuracy of an ensemble and of each of its members on labelled rows.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Evaluation {
    /// Ensemble version evaluated.
    pub version: u64,
    /// Aggregation used.
    pub aggregate: &'static str,
    /// Rows evaluated.
    pub rows: usize,
    /// Ensemble accuracy.
    pub accuracy: f64,
    /// Ensemble accuracy under every aggregation, side by side (`mean`, `vote`, `weighted`).
    pub by_aggregation: std::collections::BTreeMap<&'static str, f64>,
    /// Each member's own accuracy.
    pub per_shard: Vec<ShardAccuracy>,
    /// Log-loss, per-class precision, recall and F1, macro averages and the confusion matrix
    /// of the answers under `aggregate`.
    pub metrics: crate::metrics::Metrics,
}

/// One member's accuracy.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ShardAccuracy {
    /// The shard.
    pub shard: usize,
    /// Its accuracy alone.
    pub accuracy: f64,
}

impl Ensemble {
    /// Evaluate on `n` raw rows `x` with labels `y`.
    pub fn evaluate(&self, x: &[f32], y: &[u32], agg: Aggregation) -> Evaluation {
        let n = y.len();
        let probs = self.member_probs(x, n);
        let per_shard = self
            .members
            .iter()
            .zip(&probs)
            .map(|(m, p)| {
                let labels: Vec<u32> = p.chunks(self.classes).map(|r| argmax(r) as u32).collect();
                ShardAccuracy {
                    shard: m.shard,
                    accuracy: accuracy(&labels, y),
                }
            })
            .collect();
        let rows = self.member_rows();
        let mut metrics = None;
        let by_aggregation: std::collections::BTreeMap<_, _> =
            [Aggregation::Mean, Aggregation::Vote, Aggregation::Weighted]
                .into_iter()
                .map(|a| {
                    let pred = aggregate(&probs, &rows, n, self.classes, a);
                    if a == agg {
                        metrics = Some(crate::metrics::classification(
                            &pred.probs,
                            &pred.labels,
                            y,
                            self.classes,
                        ));
                    }
                    (a.name(), accuracy(&pred.labels, y))
                })
                .collect();
        Evaluation {
            version: self.version,
            aggregate: agg.name(),
            rows: n,
            accuracy: by_aggregation[agg.name()],
            by_aggregation,
            per_shard,
            metrics: metrics.expect("every aggregation is measured, the chosen one among them"),
        }
    }
}
