//! The benchmark's report: `results.json` (everything), `results.md` (the tables), and the plots.

use crate::audit::AuditReport;
use crate::bench::plot;
use crate::bench::throughput::{Peak, PresetThroughput};
use crate::error::{Error, Result};
use crate::plan::{ShardBy, SliceBy};

/// Reports written before the slice rule existed sliced by row.
fn slice_by_row() -> SliceBy {
    SliceBy::Row
}
use crate::run::durable;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Append one formatted line to a String.
macro_rules! md {
    ($s:expr, $($arg:tt)*) => {{
        $s.push_str(&format!($($arg)*));
        $s.push('\n');
    }};
}

/// Schema tag of `results.json`.
pub const REPORT_FORMAT: &str = "sisa-bench/1";

/// The data the benchmark ran on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    /// Short name (`fashion-mnist`, `mnist-5k`, or the file's name).
    pub name: String,
    /// Training file.
    pub path: PathBuf,
    /// Held-out file.
    pub test_path: Option<PathBuf>,
    /// Training rows N.
    pub rows: usize,
    /// Held-out rows.
    pub test_rows: usize,
    /// Training users.
    pub users: usize,
    /// Mean rows per training user.
    pub mean_rows_per_user: f64,
    /// Features per row.
    pub features: usize,
    /// The `--users` rule, when rows were given users by one.
    pub user_rule: Option<String>,
    /// Why this data was chosen, when it was a fallback.
    pub note: Option<String>,
}

/// The model the benchmark trained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Preset name.
    pub name: String,
    /// Preset file.
    pub preset: PathBuf,
    /// Epochs e0 of unsliced training used by the benchmark.
    pub epochs: u32,
    /// Epochs the preset itself asks for.
    pub preset_epochs: u32,
    /// Rows per step.
    pub batch_size: usize,
    /// Hidden layer widths.
    pub hidden: Vec<usize>,
}

/// Which users a measured unlearning experiment forgot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// Users drawn at random (seeded).
    Random,
    /// Users chosen greedily to maximise retraining: rows in the earliest slices of as many
    /// shards as possible.
    Worst,
}

/// How the users of an experiment were sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// One request of one user.
    Single,
    /// K requests of one user, one after another.
    Sequential,
    /// One request of K users.
    Batched,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Single => "single",
            Mode::Sequential => "sequential",
            Mode::Batched => "batched",
        }
    }
}

/// One measured unlearning experiment, executed on a copy of the trained run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Experiment {
    /// Which users.
    pub selection: Selection,
    /// How they were sent.
    pub mode: Mode,
    /// Users forgotten K.
    pub k: usize,
    /// Requests sent.
    pub requests: usize,
    /// Training rows removed.
    pub rows_removed: u64,
    /// Shards retrained, summed over the requests.
    pub shards_retrained: usize,
    /// Wall time of accepting and completing every request, seconds.
    pub seconds: f64,
    /// Rows×epochs retrained (from the receipts).
    pub rows_epochs: u64,
    /// Rows×epochs of retraining this configuration from scratch after each request, summed
    /// (the receipts' `full_retrain_rows_epochs`).
    pub same_config_rows_epochs: u64,
    /// Rows×epochs of the baseline: one model (S = 1, R = 1) retrained from scratch on the
    /// retained rows after each request, `retained × e0`, summed.
    pub baseline_rows_epochs: u64,
    /// Baseline wall time: `baseline_rows_epochs` at the measured single-core rate.
    pub baseline_seconds: f64,
    /// `baseline_rows_epochs / rows_epochs`: the machine-independent speed-up.
    pub speedup: f64,
    /// `baseline_seconds / seconds`: the wall-clock speed-up on this machine, at this load.
    pub wall_speedup: f64,
    /// Expected rows×epochs for requests of users with this data's row counts.
    pub expected_users: Option<f64>,
    /// The SISA paper's expected rows×epochs (one row per request).
    pub expected_paper: Option<f64>,
}

/// Measured one-request cost averaged over random users, beside the formulas.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FormulaCheck {
    /// Random single-user requests planned.
    pub samples: usize,
    /// Mean rows×epochs of their dry-run plans.
    pub measured_mean: f64,
    /// Standard error of that mean.
    pub measured_stderr: f64,
    /// Expected rows×epochs for a random user of this data (their row counts).
    pub expected_users: f64,
    /// `measured_mean / expected_users`.
    pub ratio_users: f64,
    /// Expected rows×epochs for the sampled users themselves, given their row counts: what is
    /// left of the difference is the randomness of shards and slices.
    pub expected_sampled: f64,
    /// `measured_mean / expected_sampled`.
    pub ratio_sampled: f64,
    /// The paper's expected rows×epochs for one row.
    pub expected_paper: f64,
    /// `measured_mean / expected_paper`.
    pub ratio_paper: f64,
    /// True when the measured mean is within 10% of `expected_users`.
    pub within_10pct: bool,
    /// Whether the executed single request's receipt cost equals its dry-run plan's.
    pub plan_equals_receipt: Option<bool>,
}

/// Everything measured for one (sharding, S, R).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigResult {
    /// Sharding rule.
    pub shard_by: ShardBy,
    /// Slice rule.
    #[serde(default = "slice_by_row")]
    pub slice_by: SliceBy,
    /// Shards S.
    pub shards: usize,
    /// Slices R.
    pub slices: usize,
    /// Epochs of each stage.
    pub stage_epochs: Vec<u32>,
    /// Wall time of training every shard, seconds.
    pub train_seconds: f64,
    /// Wall time of the whole `sisa train` (ingest, row files, training, checkpoints), seconds.
    pub train_wall_seconds: f64,
    /// Rows×epochs of training.
    pub train_rows_epochs: u64,
    /// Held-out accuracy, posterior mean.
    pub accuracy_mean: Option<f64>,
    /// Held-out accuracy, majority vote.
    pub accuracy_vote: Option<f64>,
    /// One-request cost: measured over random users vs the formulas.
    pub formula_check: FormulaCheck,
    /// Measured unlearning experiments.
    pub experiments: Vec<Experiment>,
}

/// The membership-inference audit on a deliberately overfit configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MembershipResult {
    /// What was trained, in words.
    pub configuration: String,
    /// Training rows of the overfit run.
    pub rows: usize,
    /// Users forgotten.
    pub forget_users: usize,
    /// Rows of the forgotten users.
    pub forget_rows: usize,
    /// What unlearning them retrained.
    pub retrained: String,
    /// Accuracy on the run's own training rows before unlearning.
    pub train_accuracy: f64,
    /// Accuracy on never-seen rows before unlearning.
    pub unseen_accuracy: f64,
    /// Forget set vs never-seen rows, before unlearning (the positive control).
    pub before: AuditReport,
    /// Forget set vs never-seen rows, after unlearning.
    pub after: AuditReport,
    /// Rows still in the run vs never-seen rows, after unlearning (the audit keeps its power).
    pub retained_after: AuditReport,
    /// True when the positive control separates.
    pub positive_control_separates: bool,
    /// True when, after unlearning, the forget set is inside the never-seen interval.
    pub forgotten_indistinguishable: bool,
    /// `sisa verify` on the unlearned run: every shard bitwise identical to a retrain.
    pub verified_identical: bool,
    /// The command that reruns the audit on the unlearned run.
    pub command: String,
}

/// The whole report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Schema tag, [`REPORT_FORMAT`].
    pub format: String,
    /// `sisa` version.
    pub created_by: String,
    /// CPU model.
    pub cpu: String,
    /// Worker threads.
    pub threads: usize,
    /// Seed of every choice.
    pub seed: u64,
    /// The data.
    pub dataset: DatasetInfo,
    /// The model.
    pub model: ModelInfo,
    /// Single-core rows×epochs per second used for baseline wall times.
    pub baseline_rate: f64,
    /// Where `baseline_rate` was measured.
    pub baseline_rate_from: String,
    /// One entry per (sharding, S, R).
    pub configs: Vec<ConfigResult>,
    /// The machine's fp32 peak.
    pub peak: Peak,
    /// Training throughput of each preset.
    pub throughput: Vec<PresetThroughput>,
    /// The membership audit, when run.
    pub membership: Option<MembershipResult>,
    /// How to read the numbers.
    pub notes: Vec<String>,
    /// Wall time of the whole benchmark, seconds.
    pub seconds: f64,
}

/// The files a report was written to.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Written {
    /// `results.json`.
    pub json: PathBuf,
    /// `results.md`.
    pub markdown: PathBuf,
    /// Every plot, SVG and PNG.
    pub plots: Vec<PathBuf>,
}

fn opt(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(x) => format!("{x:.digits$}"),
        None => "—".into(),
    }
}

/// An integer with thousands separators.
fn int(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn sci(v: f64) -> String {
    int(v.round().max(0.0) as u64)
}

fn by(s: ShardBy) -> &'static str {
    match s {
        ShardBy::User => "user",
        ShardBy::Row => "row",
    }
}

/// The Markdown form of the report: its tables and notes.
pub fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let d = &r.dataset;
    md!(s, "# sisa bench: {} with {}\n", d.name, r.model.name);
    md!(
        s,
        "{} training rows ({} users, {:.2} rows per user{}), {} held-out rows, {} features. \
         Model `{}` ({:?} hidden), batch {}, **{} epochs** (the preset says {}). Seed {}, {} threads, {}. \
         Total benchmark time {:.0} s.\n",
        int(d.rows as u64),
        int(d.users as u64),
        d.mean_rows_per_user,
        d.user_rule
            .as_ref()
            .map(|u| format!(", users by `--users {u}`"))
            .unwrap_or_default(),
        int(d.test_rows as u64),
        d.features,
        r.model.name,
        r.model.hidden,
        r.model.batch_size,
        r.model.epochs,
        r.model.preset_epochs,
        r.seed,
        r.threads,
        r.cpu,
        r.seconds
    );
    if let Some(n) = &d.note {
        md!(s, "> {n}\n");
    }
    md!(s, "## Accuracy and training\n");
    md!(
        s,
        "| sharding | S | R | epochs per stage | accuracy (mean) | accuracy (vote) | training (s) | whole `sisa train` (s) | train rows×epochs |"
    );
    md!(s, "|---|---:|---:|---|---:|---:|---:|---:|---:|");
    for c in &r.configs {
        md!(
            s,
            "| {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {} |",
            by(c.shard_by),
            c.shards,
            c.slices,
            stage_epochs_text(&c.stage_epochs),
            opt(c.accuracy_mean, 4),
            opt(c.accuracy_vote, 4),
            c.train_seconds,
            c.train_wall_seconds,
            int(c.train_rows_epochs)
        );
    }
    md!(s, "\n## Unlearning cost\n");
    md!(
        s,
        "Each row is measured on a fresh copy of the trained run: `single` is one request of one \
         user, `sequential` K requests one at a time, `batched` one request of K users; `worst` \
         users are chosen to maximise retraining. Speed-up is over retraining one model (S=1, R=1) \
         from scratch on the retained rows after every request: `rows×epochs` is the \
         machine-independent figure, `wall` the clock on this machine at its load.\n"
    );
    md!(
        s,
        "| sharding | S | R | users | K | mode | rows removed | shards retrained | time (s) | rows×epochs | expected (users) | expected (SISA, 1 row each) | speed-up (rows×epochs) | speed-up (wall) |"
    );
    md!(
        s,
        "|---|---:|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for c in &r.configs {
        for e in &c.experiments {
            md!(
        s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {} | {} | {} | {:.2}× | {:.2}× |",
                by(c.shard_by),
                c.shards,
                c.slices,
                match e.selection {
                    Selection::Random => "random",
                    Selection::Worst => "worst",
                },
                e.k,
                e.mode.name(),
                e.rows_removed,
                e.shards_retrained,
                e.seconds,
                int(e.rows_epochs),
                e.expected_users.map(sci).unwrap_or_else(|| "—".into()),
                e.expected_paper.map(sci).unwrap_or_else(|| "—".into()),
                e.speedup,
                e.wall_speedup
            );
        }
    }
    md!(s, "\n## Measured vs expected cost of one request\n");
    md!(
        s,
        "Mean rows×epochs of the dry-run plans (`unlearn::plan_unlearning`, exactly what the \
         executor retrains) of random single-user requests, against the expectation for a random \
         user of this data and the SISA paper's one-row formula `e·(N/S)·(R+1)(2R+1)/(6R)` \
         (= `e0·(N/S)·(2/3 + 1/(3R))` when e = 2e0/(R+1)).\n"
    );
    md!(
        s,
        "| sharding | S | R | requests | measured mean ± s.e. | expected (users) | measured / expected | within 10% | expected (these users) | measured / these | expected (SISA, 1 row) | measured / SISA |"
    );
    md!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"
    );
    for c in &r.configs {
        let f = &c.formula_check;
        md!(
            s,
            "| {} | {} | {} | {} | {} ± {} | {} | {:.3} | {} | {} | {:.3} | {} | {:.3} |",
            by(c.shard_by),
            c.shards,
            c.slices,
            f.samples,
            sci(f.measured_mean),
            sci(f.measured_stderr),
            sci(f.expected_users),
            f.ratio_users,
            if f.within_10pct { "yes" } else { "no" },
            sci(f.expected_sampled),
            f.ratio_sampled,
            sci(f.expected_paper),
            f.ratio_paper,
        );
    }
    md!(s, "\n## Training throughput\n");
    md!(
        s,
        "fp32 peak measured in this run: **{:.1} GFLOP/s per core**, {:.1} GFLOP/s on {} threads ({}).\n",
        r.peak.per_core_gflops, r.peak.machine_gflops, r.peak.threads, r.peak.method
    );
    md!(
        s,
        "| preset | parameters | FLOPs per sample | samples/s per core | GFLOP/s | fraction of peak |"
    );
    md!(s, "|---|---:|---:|---:|---:|---:|");
    for t in &r.throughput {
        md!(
            s,
            "| {} | {} | {} | {} | {:.2} | {:.1}% |",
            t.preset,
            int(t.parameters as u64),
            int(t.flops_per_sample as u64),
            int(t.samples_per_second_per_core.round() as u64),
            t.gflops,
            100.0 * t.fraction_of_peak
        );
    }
    if let Some(m) = &r.membership {
        md!(s, "\n## Membership-inference audit\n");
        md!(
        s,
            "{}. {} training rows; forgot {} users ({} rows), which retrained {}. Accuracy on its training rows {:.4}, on never-seen rows {:.4}. \
             Loss-threshold attack; 95% bootstrap intervals; the null interval is the AUC of never-seen vs never-seen rows.\n",
            m.configuration,
            m.rows,
            m.forget_users,
            m.forget_rows,
            m.retrained,
            m.train_accuracy,
            m.unseen_accuracy
        );
        md!(
        s,
            "| comparison | members | nonmembers | AUC [95% CI] | TPR at 1% FPR | TPR at 0.1% FPR | null interval | verdict |"
        );
        md!(s, "|---|---:|---:|---|---|---|---|---|");
        for (name, a) in [
            ("forget set before unlearning (positive control)", &m.before),
            ("forget set after unlearning", &m.after),
            ("retained rows after unlearning", &m.retained_after),
        ] {
            md!(
        s,
                "| {name} | {} | {} | {:.3} [{:.3}, {:.3}] | {:.3} [{:.3}, {:.3}] | {:.3} [{:.3}, {:.3}] | [{:.3}, {:.3}] | {} |",
                a.members,
                a.nonmembers,
                a.auc.value,
                a.auc.lo,
                a.auc.hi,
                a.tpr_at_1pct_fpr.value,
                a.tpr_at_1pct_fpr.lo,
                a.tpr_at_1pct_fpr.hi,
                a.tpr_at_0_1pct_fpr.value,
                a.tpr_at_0_1pct_fpr.lo,
                a.tpr_at_0_1pct_fpr.hi,
                a.null_interval[0],
                a.null_interval[1],
                verdict_text(a.verdict)
            );
        }
        md!(
        s,
            "\nPositive control separates: **{}**. Forget set indistinguishable from never-seen rows after unlearning: **{}**. \
             `sisa verify` on the unlearned run: **{}**.{}\n\nRerun: `{}`",
            yes(m.positive_control_separates),
            yes(m.forgotten_indistinguishable),
            if m.verified_identical {
                "bitwise identical to a retrain"
            } else {
                "DIFFERENT"
            },
            if m.positive_control_separates {
                ""
            } else {
                " The positive control did not separate: on this configuration the audit has no power, and its 'indistinguishable' proves nothing."
            },
            m.command
        );
    }
    md!(s, "\n## Notes\n");
    for n in &r.notes {
        md!(s, "- {n}");
    }
    s
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn verdict_text(v: crate::audit::Verdict) -> &'static str {
    match v {
        crate::audit::Verdict::Separates => "separates",
        crate::audit::Verdict::Indistinguishable => "indistinguishable",
        crate::audit::Verdict::Inconclusive => "inconclusive",
    }
}

fn stage_epochs_text(e: &[u32]) -> String {
    match e.first() {
        Some(&first) if e.iter().all(|&x| x == first) => format!("{first} × {}", e.len()),
        _ => format!("{e:?}"),
    }
}

/// Write `results.json`, `results.md` and the plots into `dir`.
pub fn write(dir: &Path, r: &Report) -> Result<Written> {
    durable::create_dir_all(dir)?;
    let json = dir.join("results.json");
    let bytes = serde_json::to_vec_pretty(r).map_err(|e| Error::Report {
        path: json.clone(),
        message: e.to_string(),
    })?;
    durable::write_atomic(&json, &bytes, "bench.json")?;
    let md = dir.join("results.md");
    durable::write_atomic(&md, markdown(r).as_bytes(), "bench.markdown")?;
    let plots = plot::all(dir, r)?;
    Ok(Written {
        json,
        markdown: md,
        plots,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::audit::{AuditOptions, Estimate, Verdict};
    use crate::bench::throughput::{Peak, PresetThroughput};

    fn experiment(selection: Selection, mode: Mode, k: usize, rows_epochs: u64) -> Experiment {
        Experiment {
            selection,
            mode,
            k,
            requests: if mode == Mode::Sequential { k } else { 1 },
            rows_removed: 3 * k as u64,
            shards_retrained: k,
            seconds: 0.5,
            rows_epochs,
            same_config_rows_epochs: 1_000_000,
            baseline_rows_epochs: 1_200_000,
            baseline_seconds: 12.0,
            speedup: 1_200_000.0 / rows_epochs as f64,
            wall_speedup: 24.0,
            expected_users: Some(rows_epochs as f64 * 1.02),
            expected_paper: (selection == Selection::Random).then_some(rows_epochs as f64 * 0.8),
        }
    }

    fn audit_report(auc: f64, verdict: Verdict) -> AuditReport {
        AuditReport {
            members: 300,
            nonmembers: 2000,
            member_mean_loss: 0.1,
            nonmember_mean_loss: 0.8,
            auc: Estimate {
                value: auc,
                lo: auc - 0.03,
                hi: auc + 0.03,
            },
            tpr_at_1pct_fpr: Estimate {
                value: 0.02,
                lo: 0.0,
                hi: 0.05,
            },
            tpr_at_0_1pct_fpr: Estimate {
                value: 0.0,
                lo: 0.0,
                hi: 0.01,
            },
            null_interval: [0.47, 0.53],
            null_from: "pool".into(),
            verdict,
            options: AuditOptions::default(),
        }
    }

    /// A small report with every section filled.
    pub(crate) fn sample() -> Report {
        let mut configs = Vec::new();
        for (by, shards, slices) in [
            (ShardBy::User, 1, 1),
            (ShardBy::User, 5, 1),
            (ShardBy::User, 1, 4),
            (ShardBy::User, 5, 4),
            (ShardBy::Row, 5, 4),
        ] {
            let one = 60_000 / shards as u64;
            configs.push(ConfigResult {
                shard_by: by,
                slice_by: SliceBy::User,
                shards,
                slices,
                stage_epochs: vec![if slices == 1 { 6 } else { 2 }; slices],
                train_seconds: 4.0,
                train_wall_seconds: 5.5,
                train_rows_epochs: 60_000,
                accuracy_mean: Some(0.88 - 0.005 * shards as f64),
                accuracy_vote: Some(0.879 - 0.006 * shards as f64),
                formula_check: FormulaCheck {
                    samples: 20,
                    measured_mean: one as f64 * 0.9,
                    measured_stderr: 100.0,
                    expected_users: one as f64 * 0.92,
                    ratio_users: 0.9 / 0.92,
                    expected_sampled: one as f64 * 0.91,
                    ratio_sampled: 0.9 / 0.91,
                    expected_paper: one as f64 * 0.7,
                    ratio_paper: 0.9 / 0.7,
                    within_10pct: true,
                    plan_equals_receipt: Some(true),
                },
                experiments: vec![
                    experiment(Selection::Random, Mode::Single, 1, one),
                    experiment(Selection::Worst, Mode::Single, 1, one + 10),
                    experiment(Selection::Random, Mode::Sequential, 8, 8 * one),
                    experiment(Selection::Random, Mode::Batched, 8, 4 * one),
                    experiment(Selection::Worst, Mode::Batched, 8, 5 * one),
                ],
            });
        }
        Report {
            format: REPORT_FORMAT.into(),
            created_by: "sisa test".into(),
            cpu: "test cpu".into(),
            threads: 2,
            seed: 7,
            dataset: DatasetInfo {
                name: "digits".into(),
                path: "datasets/digits/train.csv".into(),
                test_path: None,
                rows: 60_000,
                test_rows: 10_000,
                users: 20_000,
                mean_rows_per_user: 3.0,
                features: 64,
                user_rule: Some("uniform:20000".into()),
                note: Some("a fallback note".into()),
            },
            model: ModelInfo {
                name: "mlp".into(),
                preset: "models/mlp.toml".into(),
                epochs: 6,
                preset_epochs: 30,
                batch_size: 64,
                hidden: vec![128],
            },
            baseline_rate: 80_000.0,
            baseline_rate_from: "a test".into(),
            configs,
            peak: Peak {
                per_core_gflops: 64.0,
                machine_gflops: 128.0,
                threads: 2,
                method: "test".into(),
            },
            throughput: vec![PresetThroughput {
                preset: "mlp".into(),
                parameters: 101_770,
                flops_per_sample: 409_088.0,
                samples_per_second_per_core: 80_000.0,
                gflops: 32.7,
                fraction_of_peak: 0.511,
                rows: 1000,
                epochs: 2,
            }],
            membership: Some(MembershipResult {
                configuration: "overfit".into(),
                rows: 3000,
                forget_users: 100,
                forget_rows: 300,
                retrained: "shard 0 from stage 2 of 2".into(),
                train_accuracy: 1.0,
                unseen_accuracy: 0.84,
                before: audit_report(0.62, Verdict::Separates),
                after: audit_report(0.51, Verdict::Indistinguishable),
                retained_after: audit_report(0.62, Verdict::Separates),
                positive_control_separates: true,
                forgotten_indistinguishable: true,
                verified_identical: true,
                command: "sisa audit --run x".into(),
            }),
            notes: vec!["a note".into()],
            seconds: 12.0,
        }
    }

    #[test]
    fn markdown_has_every_table_and_column() {
        let md = markdown(&sample());
        for heading in [
            "## Accuracy and training",
            "## Unlearning cost",
            "## Measured vs expected cost of one request",
            "## Training throughput",
            "## Membership-inference audit",
            "## Notes",
        ] {
            assert!(md.contains(heading), "missing {heading}");
        }
        for column in [
            "accuracy (mean)",
            "accuracy (vote)",
            "train rows×epochs",
            "time (s)",
            "rows×epochs",
            "expected (users)",
            "expected (these users)",
            "expected (SISA, 1 row each)",
            "speed-up (rows×epochs)",
            "speed-up (wall)",
            "samples/s per core",
            "fraction of peak",
            "TPR at 1% FPR",
            "TPR at 0.1% FPR",
            "null interval",
        ] {
            assert!(md.contains(column), "missing column {column}");
        }
        // One row per configuration and per experiment, with their numbers.
        assert!(md.contains("| user | 5 | 4 | 2 × 4 | 0.8550 | 0.8490 | 4.0 | 5.5 | 60,000 |"));
        assert!(md.contains("| user | 5 | 1 | random | 8 | sequential | 24 | 8 | 0.50 | 96,000 |"));
        assert!(md.contains("| row | 5 | 4 | worst | 8 | batched |"));
        assert!(md.contains(
            "| user | 1 | 1 | 20 | 54,000 ± 100 | 55,200 | 0.978 | yes | 54,600 | 0.989 | 42,000 | 1.286 |"
        ));
        assert!(md.contains("| mlp | 101,770 | 409,088 | 80,000 | 32.70 | 51.1% |"));
        assert!(md.contains("0.620 [0.590, 0.650]"));
        assert!(md.contains("Positive control separates: **yes**"));
        assert!(md.contains("> a fallback note"));
        assert_eq!(md.matches("| random | 1 | single |").count(), 5);
    }

    #[test]
    fn write_produces_json_markdown_and_plots() {
        let dir = tempfile::tempdir().unwrap();
        let r = sample();
        let w = write(dir.path(), &r).unwrap();
        let back: Report = serde_json::from_slice(&std::fs::read(&w.json).unwrap()).unwrap();
        // Floats may come back an ulp away (serde_json parses them fast, not exactly).
        assert_eq!(back.configs.len(), r.configs.len());
        let costs = |r: &Report| -> Vec<u64> {
            r.configs
                .iter()
                .flat_map(|c| c.experiments.iter().map(|e| e.rows_epochs))
                .collect()
        };
        assert_eq!(costs(&back), costs(&r));
        assert_eq!(back.configs[4].shard_by, ShardBy::Row);
        assert_eq!(
            back.membership.as_ref().unwrap().after.verdict,
            Verdict::Indistinguishable
        );
        assert_eq!(back.throughput[0].samples_per_second_per_core, 80_000.0);
        assert_eq!(std::fs::read_to_string(&w.markdown).unwrap(), markdown(&r));
        assert_eq!(w.plots.len(), 6);
        for p in &w.plots {
            let bytes = std::fs::read(p).unwrap();
            match p.extension().and_then(|e| e.to_str()) {
                Some("png") => assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{p:?}"),
                Some("svg") => {
                    let text = String::from_utf8(bytes).unwrap();
                    assert!(
                        text.starts_with("<svg") && text.trim_end().ends_with("</svg>"),
                        "{p:?}"
                    );
                }
                other => panic!("unexpected plot {other:?}"),
            }
        }
        let svg = std::fs::read_to_string(dir.path().join("speedup_vs_shards.svg")).unwrap();
        assert!(svg.contains("R=4, 1 request") && svg.contains("R=1, 8 users batched"));
    }

    #[test]
    fn numbers_are_formatted_for_people() {
        assert_eq!(int(0), "0");
        assert_eq!(int(999), "999");
        assert_eq!(int(1_000), "1,000");
        assert_eq!(int(12_345_678), "12,345,678");
        assert_eq!(stage_epochs_text(&[2, 2, 2]), "2 × 3");
        assert_eq!(stage_epochs_text(&[3, 2]), "[3, 2]");
    }
}
