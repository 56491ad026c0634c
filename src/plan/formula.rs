//! Expected unlearning costs: the SISA paper's formulas, and the same expectation for users who
//! own several rows.
//!
//! Every expectation here has one shape. A shard of `n = N/S` rows is split evenly into R
//! slices and stage r trains slices 1..r for `e_r` epochs, so retraining from stage j costs
//! `c(j) = Σ_{r=j..R} e_r·n·r/R` rows×epochs. A deleted row lands in slice i with probability
//! 1/R, so the shard's first affected stage is at least j exactly when every deleted row in it
//! lies in slices j..R, probability `x_j^T` for T deleted rows, `x_j = (R−j+1)/R`. With `G` the
//! probability generating function of T (the number of deleted rows in one given shard),
//!
//! ```text
//! E[rows×epochs] = S · Σ_{j=1..R} (G(x_j) − G(x_{j+1})) · c(j),   x_{R+1} = 0.
//! ```
//!
//! - The paper's case, K requests of one row each: `G(x) = (1 − 1/S + x/S)^K`. For K = 1 this is
//!   `e·n·(R+1)(2R+1)/(6R)` ([`crate::plan::expected::one_request_rows_epochs`]); for R = 1 it
//!   is `e·N·(1 − (1 − 1/S)^K)`, the batched-sharding formula.
//! - Users with several rows, sharded by user (all of a user's rows in one shard, each row in a
//!   slice of its own): `G(x) = (1 − 1/S + g(x)/S)^K`, `g(x)` the mean of `x^m` over the users'
//!   row counts m. One user's m rows make the first affected slice the minimum of m draws, so
//!   slicing saves far less than for one row: `E[min]` falls towards slice 1 as m grows.
//! - Sharded by row (each row in its own shard): `G(x) = (mean over users of
//!   (1 − (1 − x)/S)^m)^K`: a user's rows touch up to m shards.
//! - Sliced by user (all of a user's rows in one slice, the default): a user's rows in a shard
//!   reach back only to their one slice, so `g(x) = x` whatever m is, and one user costs what
//!   the paper's one row costs. Sharded by row and sliced by user: a shard misses the user
//!   with probability `(1 − 1/S)^m`, else its first stage is the user's slice:
//!   `G(x) = (mean over users of (q + (1 − q)·x), q = (1 − 1/S)^m)^K`.
//!
//! Sequential requests cost K times one request (each retrains on its own), up to the rows the
//! earlier requests removed.

use super::{ShardBy, SliceBy};

/// Rows×epochs of retraining stages `j..=R` (1-based) of a shard of `n` rows in R even slices.
pub fn shard_cost_from(n: f64, stage_epochs: &[u32], j: usize) -> f64 {
    let r_total = stage_epochs.len() as f64;
    stage_epochs
        .iter()
        .enumerate()
        .filter(|(r, _)| r + 1 >= j)
        .map(|(r, &e)| e as f64 * n * (r + 1) as f64 / r_total)
        .sum()
}

/// `S · Σ_j (G(x_j) − G(x_{j+1})) · c(j)` for `rows` rows in `shards` shards; `pgf` is the
/// generating function of the number of deleted rows that fall in one given shard.
pub fn expected_rows_epochs(
    rows: f64,
    shards: usize,
    stage_epochs: &[u32],
    pgf: impl Fn(f64) -> f64,
) -> f64 {
    let big_r = stage_epochs.len();
    let n = rows / shards as f64;
    let x = |j: usize| (big_r + 1 - j) as f64 / big_r as f64;
    (1..=big_r)
        .map(|j| {
            let next = if j == big_r { 0.0 } else { x(j + 1) };
            (pgf(x(j)) - pgf(next)) * shard_cost_from(n, stage_epochs, j)
        })
        .sum::<f64>()
        * shards as f64
}

/// The paper's expectation: `k` batched requests of one row each.
pub fn paper_rows_epochs(rows: f64, shards: usize, stage_epochs: &[u32], k: usize) -> f64 {
    let s = shards as f64;
    expected_rows_epochs(rows, shards, stage_epochs, |x| {
        (1.0 - 1.0 / s + x / s).powi(k as i32)
    })
}

/// The expectation for `k` batched requests of one user each, the users drawn (with
/// replacement) from users owning `user_rows` rows each, under `shard_by` and `slice_by`.
pub fn users_rows_epochs(
    rows: f64,
    shards: usize,
    stage_epochs: &[u32],
    k: usize,
    user_rows: &[u32],
    (shard_by, slice_by): (ShardBy, SliceBy),
) -> f64 {
    let s = shards as f64;
    let users = user_rows.len().max(1) as f64;
    let mean_over_users =
        |f: &dyn Fn(f64) -> f64| user_rows.iter().map(|&m| f(m as f64)).sum::<f64>() / users;
    expected_rows_epochs(rows, shards, stage_epochs, |x| match (shard_by, slice_by) {
        (ShardBy::User, SliceBy::Row) => {
            let g = mean_over_users(&|m| x.powf(m));
            (1.0 - 1.0 / s + g / s).powi(k as i32)
        }
        (ShardBy::User, SliceBy::User) => (1.0 - 1.0 / s + x / s).powi(k as i32),
        (ShardBy::Row, SliceBy::Row) => {
            mean_over_users(&|m| (1.0 - (1.0 - x) / s).powf(m)).powi(k as i32)
        }
        (ShardBy::Row, SliceBy::User) => mean_over_users(&|m| {
            let q = (1.0 - 1.0 / s).powf(m);
            q + (1.0 - q) * x
        })
        .powi(k as i32),
    })
}

/// Rows×epochs of training every stage of `hit` whole shards of `rows / shards` rows: the
/// worst a request can cost when it touches `hit` shards in their first slice.
pub fn full_shards_rows_epochs(rows: f64, shards: usize, stage_epochs: &[u32], hit: usize) -> f64 {
    hit.min(shards) as f64 * shard_cost_from(rows / shards as f64, stage_epochs, 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{expected, stage_epochs};

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
    }

    #[test]
    fn shard_cost_by_hand() {
        // n = 100, R = 4, 2 epochs per stage: stages train 25, 50, 75, 100 rows.
        let e = [2, 2, 2, 2];
        assert!(close(shard_cost_from(100.0, &e, 1), 2.0 * 250.0));
        assert!(close(shard_cost_from(100.0, &e, 3), 2.0 * 175.0));
        assert!(close(shard_cost_from(100.0, &e, 5), 0.0));
    }

    #[test]
    fn one_row_matches_the_paper() {
        // N = 6000, S = 20, R = 10, e0 = 12: e_stage = 2, and for one request the paper's
        // e·n·(R+1)(2R+1)/(6R) = 2·300·11·21/60 = 2310.
        let e = stage_epochs(12, 10);
        let got = paper_rows_epochs(6000.0, 20, &e, 1);
        assert!(close(got, 2310.0), "{got}");
        assert!(close(
            got,
            expected::one_request_rows_epochs(300.0, 10, e[0] as f64)
        ));
        // With e_stage = 2e0/(R+1) exactly (e0 = 11): e0·(N/S)·(2/3 + 1/(3R)).
        let e = stage_epochs(11, 10);
        let paper = 11.0 * 300.0 * (2.0 / 3.0 + 1.0 / 30.0);
        assert!(close(paper_rows_epochs(6000.0, 20, &e, 1), paper));
    }

    #[test]
    fn batched_without_slices_matches_the_paper() {
        // R = 1: N·(1 − (1 − 1/S)^K) rows, times the epochs. S = 4, K = 2: 1 − 9/16 = 7/16.
        let e = [5];
        let got = paper_rows_epochs(1600.0, 4, &e, 2);
        assert!(close(got, 5.0 * 1600.0 * 7.0 / 16.0), "{got}");
        assert!(close(
            got / 5.0,
            expected::batched_shard_rows(1600.0, 4.0, 2.0)
        ));
    }

    #[test]
    fn users_of_one_row_are_the_paper_case() {
        let e = stage_epochs(12, 5);
        for k in [1, 3, 8] {
            for shard_by in [ShardBy::User, ShardBy::Row] {
                for slice_by in [SliceBy::User, SliceBy::Row] {
                    let by = (shard_by, slice_by);
                    let a = users_rows_epochs(5000.0, 10, &e, k, &[1, 1, 1], by);
                    assert!(close(a, paper_rows_epochs(5000.0, 10, &e, k)), "{by:?} {k}");
                }
            }
        }
    }

    #[test]
    fn users_of_several_rows_by_hand() {
        // S = 1, R = 2, e = [1, 1], n = 10: c(1) = 5 + 10 = 15, c(2) = 10.
        // A user of two rows: first stage is 2 only if both rows are in slice 2: ¼.
        // E = ¾·15 + ¼·10 = 13.75.
        let by_row = (ShardBy::User, SliceBy::Row);
        let got = users_rows_epochs(10.0, 1, &[1, 1], 1, &[2], by_row);
        assert!(close(got, 13.75), "{got}");
        // Sliced by user, the two rows share one slice: ½·15 + ½·10 = 12.5, one row's cost.
        let got = users_rows_epochs(10.0, 1, &[1, 1], 1, &[2], (ShardBy::User, SliceBy::User));
        assert!(close(got, 12.5), "{got}");
        assert!(close(got, paper_rows_epochs(10.0, 1, &[1, 1], 1)));
        // Half the users own one row, half two: ½(½·15 + ½·10) + ½·13.75 = 13.125.
        let got = users_rows_epochs(10.0, 1, &[1, 1], 1, &[1, 2], by_row);
        assert!(close(got, 13.125), "{got}");
        // Sharded by row, S = 2, R = 1, e = 1, N = 10 (n = 5): a user of two rows misses a
        // given shard with probability ¼, so E = 2·(1 − ¼)·5 = 7.5; by user it is 5.
        let row = users_rows_epochs(10.0, 2, &[1], 1, &[2], (ShardBy::Row, SliceBy::Row));
        assert!(close(row, 7.5), "{row}");
        let user = users_rows_epochs(10.0, 2, &[1], 1, &[2], by_row);
        assert!(close(user, 5.0), "{user}");
        assert!(close(full_shards_rows_epochs(10.0, 2, &[1], 8), 10.0));
    }
}
