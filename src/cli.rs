//! Command-line interface: raw arguments are parsed here, validated into library calls, and
//! results printed (one JSON document on stdout with `--json`; progress and logs on stderr).

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::json;
use sisa::data::csv::{self, Columns, Need};
use sisa::data::{source, InputSpec, Priors, Users};
use sisa::ensemble::Ensemble;
use sisa::model::device::DeviceSpec;
use sisa::model::{ModelSpec, OptimizerKind};
use sisa::plan::{ShardBy, SliceBy};
use sisa::run::{Aggregation, Run};
use sisa::train::{self, TrainOptions};
use sisa::unlearn::{self, Ledger, Options};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Exact machine unlearning with SISA training.
#[derive(Parser, Debug)]
#[command(name = "sisa", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// The flags every command takes, before or after its name.
#[derive(Args, Debug, Clone)]
struct Global {
    /// Print one JSON document on stdout instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// No progress bars (they are drawn only on a terminal anyway).
    #[arg(long, short, global = true)]
    quiet: bool,
    /// Worker threads, 1 to 1024: shards trained or retrained side by side (train, unlearn,
    /// add, verify, recover, serve, bench, quickstart); the result is bitwise the same for
    /// any N. Commands that train nothing accept it and ignore it. [default: all cores]
    #[arg(long, global = true, value_name = "N", value_parser = parse_threads)]
    threads: Option<usize>,
}

impl Global {
    fn threads(&self) -> usize {
        self.threads
            .unwrap_or_else(|| train::default_threads().min(train::MAX_THREADS))
    }
    fn options(&self) -> Options {
        Options {
            threads: self.threads(),
            progress: !self.quiet,
        }
    }
}

fn parse_threads(text: &str) -> std::result::Result<usize, String> {
    let n: usize = text
        .parse()
        .map_err(|_| format!("'{text}' is not a whole number"))?;
    if !(1..=train::MAX_THREADS).contains(&n) {
        return Err(format!("must be in 1..={}, got {n}", train::MAX_THREADS));
    }
    Ok(n)
}

// Parsed once per process: the size of the largest variant (train's flags) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Train on the bundled digits, unlearn three users, verify, and report.
    Quickstart(QuickstartArgs),
    /// Train a new run: shard, slice, train every shard, publish version 1.
    Train(TrainArgs),
    /// Show the published version and every shard's rows, users, stages and model digest.
    Status(StatusArgs),
    /// Accuracy of the ensemble on the held-out rows or on --data.
    Eval(EvalArgs),
    /// Predict the rows of a CSV file.
    Predict(PredictArgs),
    /// Write the served ensemble to one file: an ONNX graph, or PyTorch-layout safetensors.
    Export(ExportArgs),
    /// Forget users: erase their rows and retrain only the affected shards.
    Unlearn(UnlearnArgs),
    /// Retrain shards from scratch and check the published models are bitwise identical.
    Verify(VerifyArgs),
    /// Train shards of the run's plan (one task of a Slurm array or Kubernetes Indexed Job).
    TrainShard(TrainShardArgs),
    /// Check every shard task's result against the plan and publish the version atomically.
    Publish(PublishArgs),
    /// Write an sbatch script: a job array over the plan's shards, then a dependent publish.
    Slurm(SlurmArgs),
    /// Write Kubernetes manifests: an Indexed Job over the plan's shards and a publish Job.
    K8s(K8sArgs),
    /// Complete interrupted requests and bring the run in line with its ledger; nothing else.
    Recover(RecoverArgs),
    /// Add rows to a run; rows of forgotten users are refused and counted.
    Add(AddArgs),
    /// Serve the ensemble over the Open Inference Protocol (v2), swapping in each new version.
    Serve(ServeArgs),
    /// Benchmark unlearning against retraining from scratch over S and R; write results.json,
    /// results.md and plots to --out.
    Bench(BenchArgs),
    /// Membership-inference audit (loss threshold): can an attacker tell --members from
    /// --nonmembers under the published ensemble?
    Audit(AuditArgs),
    /// List the built-in model presets with their layers and training settings.
    Models,
    /// Inspect the deletion ledger.
    Ledger {
        #[command(subcommand)]
        command: LedgerCommand,
    },
    /// Check deletion receipts.
    Receipt {
        #[command(subcommand)]
        command: ReceiptCommand,
    },
}

#[derive(Subcommand, Debug)]
enum ReceiptCommand {
    /// Check a receipt against the ledger chain and the run's current data and models.
    Verify(ReceiptArgs),
}

#[derive(Args, Debug)]
struct ReceiptArgs {
    #[command(flatten)]
    run: RunArgs,
    /// The receipt file (RUN/receipts/<request>.json, or a copy handed to the user).
    receipt: PathBuf,
    /// A user id: recompute its key and check the receipt names it.
    #[arg(long)]
    user: Option<String>,
}

/// How input files are read: the flags every command that reads rows shares. The format
/// (CSV, TSV, Parquet, NumPy .npy/.npz, IDX; gzipped or not) is told from the content.
#[derive(Args, Debug, Clone, Default)]
struct InputFlags {
    /// Field delimiter of text data: comma, tab, semicolon, pipe, space or one ASCII character.
    /// Default: a tab when the header line has tabs and no comma, else a comma.
    #[arg(long, value_name = "CHAR")]
    delimiter: Option<sisa::data::Delimiter>,
    /// Labels of --data when the file holds none: a 1-D .npy (for a .npy of features), or an
    /// IDX labels file. Default for IDX: the `*-labels-idx1-ubyte[.gz]` file beside it.
    #[arg(long, value_name = "FILE")]
    labels: Option<PathBuf>,
    /// User ids of --data rows, for data without a user column: a 1-D .npy of integers or
    /// strings, one per row.
    #[arg(long, value_name = "FILE")]
    user_ids: Option<PathBuf>,
}

impl InputFlags {
    /// How to read `data`: these flags, users from `rule` when given.
    fn spec(&self, data: &Path, rule: Option<sisa::data::UserRule>) -> Result<InputSpec> {
        spec_for(
            data,
            self.delimiter,
            self.labels.clone(),
            self.user_ids.clone(),
            rule,
        )
    }

    /// Refuse the flags that name one file's labels or users, for a command that reads two.
    fn one_file_only(&self, command: &str) -> Result<()> {
        if let Some(f) = self.labels.as_ref().or(self.user_ids.as_ref()) {
            bail!(
                "{command} reads two files, so {} cannot say whose it is: give each file its \
                 labels (a CSV, Parquet or .npz file holds them)",
                f.display()
            );
        }
        Ok(())
    }
}

/// The input `data` with a delimiter, a labels file and users from a file or a rule.
fn spec_for(
    data: &Path,
    delimiter: Option<sisa::data::Delimiter>,
    labels: Option<PathBuf>,
    user_ids: Option<PathBuf>,
    rule: Option<sisa::data::UserRule>,
) -> Result<InputSpec> {
    let users = match (user_ids, rule) {
        (Some(_), Some(_)) => bail!("--user-ids and --users both give the rows users; pass one"),
        (Some(f), None) => Users::File(f),
        (None, Some(r)) => Users::Rule(r),
        (None, None) => Users::Column,
    };
    Ok(InputSpec::file(data)
        .with_delimiter(delimiter)
        .with_labels(labels)
        .with_users(users))
}

#[derive(Args, Debug)]
struct AddArgs {
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    device: DeviceArg,
    /// New rows, with the run's features (by name, in any order) and its user and label
    /// columns; any format train reads, `-` for standard input.
    #[arg(long)]
    data: PathBuf,
    #[command(flatten)]
    input: InputFlags,
    /// Deletion priors of the new users (the run must have been trained with a prior; its
    /// threshold applies). Users the run holds keep the place of their rows.
    #[arg(long, value_name = "FILE")]
    deletion_prior: Option<PathBuf>,
    /// Add the rows even if the run has added the same rows (same users, labels and features,
    /// in order) before; without it such a batch is refused.
    #[arg(long)]
    allow_duplicate: bool,
}

#[derive(Subcommand, Debug)]
enum LedgerCommand {
    /// Check the hash chain: any edited, removed, reordered or truncated entry is named.
    Verify(LedgerArgs),
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The run directory.
    #[arg(long)]
    run: PathBuf,
    /// The deletion ledger. Default: RUN/ledger.jsonl.
    #[arg(long)]
    ledger: Option<PathBuf>,
}

/// `--device` of the commands that use a run's models: they retrain and run them on the
/// device the run records, and only an inference command may pick another.
#[derive(Args, Debug, Clone, Copy, Default)]
struct DeviceArg {
    /// cpu, cuda or cuda:N. Retraining (unlearn, add, recover, verify, serve) is on the device
    /// the run was trained on, for bitwise results, and any other is refused; eval and predict
    /// may run the models elsewhere. Default: the run's device.
    #[arg(long, value_name = "DEVICE")]
    device: Option<DeviceSpec>,
}

impl DeviceArg {
    /// Refuse a `--device` other than the one the run at `run` records (a retraining command).
    fn require_recorded(&self, run: &Path) -> Result<()> {
        let Some(want) = self.device else {
            return Ok(());
        };
        let path = sisa::run::RunDir::new(run).path(sisa::run::RunFile::Config);
        if !path.exists() {
            return Ok(());
        }
        let recorded = sisa::run::RunConfig::load(&path)?.device;
        if want != recorded {
            return Err(sisa::Error::Usage(format!(
                "--device {want}: {} was trained on {recorded}, and retraining is on the device the run records, \
                 so that its models stay bitwise what training from scratch gives; pass --device {recorded} or none",
                run.display()
            ))
            .into());
        }
        Ok(())
    }
}

#[derive(Args, Debug)]
struct RecoverArgs {
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    device: DeviceArg,
}

#[derive(Args, Debug)]
struct LedgerArgs {
    /// The run directory.
    #[arg(long)]
    run: PathBuf,
    /// The deletion ledger. Default: RUN/ledger.jsonl.
    #[arg(long)]
    ledger: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct QuickstartArgs {
    /// Where to put the demo run (replaced if it is an earlier quickstart run).
    #[arg(long, default_value = "runs/quickstart")]
    out: PathBuf,
    /// Directory holding digits/train.csv and digits/test.csv. Default: the bundled datasets.
    #[arg(long)]
    datasets: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct TrainArgs {
    /// Training data, told by its content: CSV or TSV with a header, a user id column and a
    /// label column (gzipped or not); Parquet with the same columns; a NumPy .npz (arrays X, y,
    /// user_id) or .npy of features with --labels; an IDX images file
    /// (`*-images-idx3-ubyte[.gz]`) with --users. `-` reads standard input.
    #[arg(long)]
    data: PathBuf,
    /// Held-out data, in any of those formats (its features found by the training file's
    /// names). At most one of --data and --test is `-`.
    #[arg(long)]
    test: Option<PathBuf>,
    #[command(flatten)]
    input: InputFlags,
    /// Labels of --test, as --labels for --data.
    #[arg(long, value_name = "FILE")]
    test_labels: Option<PathBuf>,
    /// User ids of --test rows, as --user-ids for --data.
    #[arg(long, value_name = "FILE")]
    test_user_ids: Option<PathBuf>,
    /// Give rows users by a seeded rule, for data without a user column: uniform:U or zipf:U:s.
    #[arg(long)]
    users: Option<sisa::data::UserRule>,
    /// Model preset: a built-in one by name (cnn, logreg, mlp, mlp-image; `sisa models` lists
    /// them) or a TOML file.
    #[arg(long, value_name = "NAME|FILE")]
    model: PathBuf,
    /// Number of shards S.
    #[arg(long, default_value_t = 10)]
    shards: usize,
    /// Number of slices R per shard.
    #[arg(long, default_value_t = 5)]
    slices: usize,
    /// Epochs of unsliced training; each stage trains SISA's recalibrated share. Default: the preset's.
    #[arg(long)]
    epochs: Option<u32>,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Run directory to create; must not exist (or be empty).
    #[arg(long)]
    out: PathBuf,
    /// Rows per step. Default: the preset's.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Learning rate. Default: the preset's.
    #[arg(long)]
    lr: Option<f32>,
    /// Optimizer. Default: the preset's.
    #[arg(long, value_enum)]
    optimizer: Option<OptimizerKind>,
    /// Preprocessing: standardize each feature (tabular data), all features by one mean and
    /// deviation (images), or not at all. Default: the preset's.
    #[arg(long, value_enum)]
    standardize: Option<sisa::model::Standardize>,
    /// Multiply every feature by this (a number or a fraction such as 1/255) instead of
    /// standardizing; implies --standardize none. Default: the preset's.
    #[arg(long, value_name = "FACTOR", value_parser = parse_scale)]
    scale: Option<f32>,
    /// Shift every training image by up to this many pixels each way, drawn per row and
    /// epoch from the seed (0: off); needs a preset with an image input. Default: the preset's.
    #[arg(long, value_name = "PIXELS")]
    augment_shift: Option<usize>,
    /// Train small shards longer: at least this many optimizer steps per shard model over
    /// unsliced training (0: off). Default: the preset's.
    #[arg(long)]
    min_steps: Option<u64>,
    /// Shard by user (one user's rows share a shard) or by row (the paper's rule).
    #[arg(long, value_enum, default_value = "user")]
    shard_by: ShardBy,
    /// Slice by user (one user's rows share a slice, so forgetting them retrains from that
    /// slice) or by row (each row's slice drawn on its own, the paper's rule).
    #[arg(long, value_enum, default_value = "user")]
    slice_by: SliceBy,
    /// CSV of deletion priors (the user column and `p`, a probability): users whose prior is
    /// at least --risk-threshold go to the last slice of their shard (and, with
    /// --risk-shards, to shards of their own), where forgetting them is cheap.
    #[arg(long, value_name = "FILE")]
    deletion_prior: Option<PathBuf>,
    /// The column of the training CSV that holds each user's deletion prior (the same on
    /// every row of a user), instead of --deletion-prior; it is not a feature, here or in any
    /// later file of the run.
    #[arg(long, value_name = "NAME", conflicts_with = "deletion_prior")]
    deletion_prior_column: Option<String>,
    /// Prior at or above which a user is a likely requester.
    #[arg(long, default_value_t = 0.5)]
    risk_threshold: f64,
    /// Shards set aside for likely requesters (needs --deletion-prior).
    #[arg(long, default_value_t = 0)]
    risk_shards: usize,
    /// Name of the user id column.
    #[arg(long, default_value = "user_id")]
    user_column: String,
    /// Name of the label column.
    #[arg(long, default_value = "label")]
    label_column: String,
    /// Number of classes, when the data does not show every class. Default: largest label + 1.
    /// With labels that are names, the classes are the names: N must equal their number.
    #[arg(long)]
    classes: Option<usize>,
    /// Default aggregation saved in the run.
    #[arg(long, value_enum, default_value = "mean")]
    aggregate: Aggregation,
    /// Backend that trains the shard models: dense (hand-written CPU code, the fastest exact
    /// path, every layer kind) or candle (candle tensors: the code that runs on CUDA).
    /// Default: dense.
    #[arg(long, value_enum)]
    backend: Option<sisa::model::Backend>,
    /// Keep the deletion ledger at this path, outside the run (new or empty). The run records
    /// it, and every later command must pass the same --ledger. Default: RUN/ledger.jsonl.
    #[arg(long)]
    ledger: Option<PathBuf>,
    /// Ingest, place and write the shards' data and a plan, and train nothing: shard tasks
    /// (sisa train-shard, or the jobs sisa slurm and sisa k8s write) train the shards on any
    /// machine that mounts the run, and sisa publish publishes version 1.
    #[arg(long)]
    plan_only: bool,
    /// The device the shard models train on, and every later retraining: cpu, cuda or
    /// cuda:N (a GPU needs --backend candle and a build with --features cuda).
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    device: DeviceSpec,
}

#[derive(Args, Debug)]
struct TrainShardArgs {
    /// The run directory (on a filesystem every node mounts).
    #[arg(long)]
    run: PathBuf,
    /// A shard to train; repeat for more (they train side by side, --threads at a time).
    #[arg(long, value_name = "K")]
    shard: Vec<usize>,
    /// Shards to train: numbers and ranges, comma separated, ascending (`0-199`,
    /// `3,7,12-15`). With --shard-from-env, the list the task index picks from.
    #[arg(long, value_name = "LIST", value_parser = parse_shards)]
    shards: Option<ShardList>,
    /// Train the shard of this task of a job array: the index from SLURM_ARRAY_TASK_ID (a
    /// Slurm array) or JOB_COMPLETION_INDEX (a Kubernetes Indexed Job); index i is the i-th
    /// shard of --shards, or of the plan's pending shards without --shards.
    #[arg(long, conflicts_with = "shard")]
    shard_from_env: bool,
}

/// Which of the plan's shards a generated job trains.
#[derive(Args, Debug)]
struct JobShards {
    /// The run directory, as every node sees it (its absolute path is written into the job).
    #[arg(long)]
    run: PathBuf,
    /// Only the plan's shards whose task has not finished yet (after a failed array, or
    /// after `sisa unlearn --no-retrain` with some tasks already run). Default: every shard
    /// the plan trains.
    #[arg(long)]
    pending: bool,
}

#[derive(Args, Debug)]
struct SlurmArgs {
    #[command(flatten)]
    shards: JobShards,
    /// --partition of the tasks and the publish job. Default: the cluster's default.
    #[arg(long)]
    partition: Option<String>,
    /// --time limit of each task and of the publish job (`4:00:00`). Default: the partition's.
    #[arg(long)]
    time: Option<String>,
    /// --cpus-per-task of each task (a task trains one shard on one thread).
    #[arg(long, default_value_t = 1)]
    cpus_per_task: usize,
    /// --mem of each task (`4G`). Default: the cluster's.
    #[arg(long)]
    mem: Option<String>,
    /// --account of the tasks and the publish job.
    #[arg(long)]
    account: Option<String>,
    /// --qos of the tasks and the publish job.
    #[arg(long)]
    qos: Option<String>,
    /// --gres of each task (`gpu:1`).
    #[arg(long)]
    gres: Option<String>,
    /// --constraint of each task: a node feature that pins the machine kind, so every shard is
    /// trained on one kind (publish refuses a mix).
    #[arg(long)]
    constraint: Option<String>,
    /// --job-name of the array; the publish job adds `-publish`. Default: sisa-<run name>.
    #[arg(long)]
    job_name: Option<String>,
    /// Most tasks running at once (the array's %N throttle). Default: no limit.
    #[arg(long, value_name = "N")]
    max_parallel: Option<usize>,
    /// --output pattern of each task's log (`logs/%x-%A_%a.out`). Default: Slurm's.
    #[arg(long)]
    output: Option<String>,
    /// One more #SBATCH line, given without the prefix (`--exclusive`); repeat for more.
    #[arg(long = "sbatch", value_name = "OPTION", allow_hyphen_values = true)]
    extra: Vec<String>,
    /// The cluster's MaxArraySize (`scontrol show config | grep MaxArraySize`).
    #[arg(long, default_value_t = sisa::scale::slurm::SLURM_DEFAULT_MAX_ARRAY_SIZE)]
    max_array_size: usize,
    /// The sisa binary every node runs, an absolute path on the shared filesystem.
    /// Default: this binary.
    #[arg(long, value_name = "PATH")]
    sisa: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct K8sArgs {
    #[command(flatten)]
    shards: JobShards,
    /// The container image that holds sisa.
    #[arg(long)]
    image: String,
    /// The PersistentVolumeClaim (ReadWriteMany) that holds the run.
    #[arg(long)]
    pvc: String,
    /// Where the claim is mounted in every pod.
    #[arg(long, default_value = "/runs")]
    mount_path: String,
    /// The run's directory inside the pods. Default: MOUNT_PATH/<the run directory's name>.
    #[arg(long)]
    run_path: Option<String>,
    /// Namespace of both Jobs. Default: kubectl's current one.
    #[arg(long)]
    namespace: Option<String>,
    /// Name of the shard Job; the publish Job adds `-publish`. Default: sisa-<run name>.
    #[arg(long)]
    name: Option<String>,
    /// Most shard pods at once. Default: every task at once.
    #[arg(long, value_name = "N")]
    parallelism: Option<usize>,
    /// CPU request of each shard pod.
    #[arg(long, default_value = "1")]
    cpu: String,
    /// Memory request and limit of each shard pod (`4Gi`). Default: none.
    #[arg(long)]
    memory: Option<String>,
    /// backoffLimit of both Jobs.
    #[arg(long, default_value_t = 6)]
    backoff_limit: u32,
    /// Seconds the publish Job waits for the shard tasks.
    #[arg(long, value_name = "SECONDS", default_value_t = 86_400)]
    publish_timeout: u64,
    /// imagePullPolicy of the containers: Always, IfNotPresent or Never.
    #[arg(long)]
    image_pull_policy: Option<String>,
    /// serviceAccountName of the pods.
    #[arg(long)]
    service_account: Option<String>,
    /// The sisa command inside the image.
    #[arg(long, default_value = "sisa", value_name = "COMMAND")]
    sisa: String,
}

#[derive(Args, Debug)]
struct PublishArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Wait for every shard task's result on the shared filesystem before publishing,
    /// checking every 2 seconds (a Kubernetes publish Job starts beside its shard tasks).
    #[arg(long)]
    wait: bool,
    /// With --wait: give up after this many seconds.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 86_400,
        requires = "wait"
    )]
    timeout: u64,
}

#[derive(Args, Debug)]
struct StatusArgs {
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args, Debug)]
struct EvalArgs {
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    device: DeviceArg,
    /// Labelled rows to evaluate on (the run's features by name, in any order; any format
    /// train reads, `-` for standard input). Default: the run's held-out rows.
    #[arg(long)]
    data: Option<PathBuf>,
    #[command(flatten)]
    input: InputFlags,
    /// Aggregation. Default: the run's (mean unless set at train time).
    #[arg(long, value_enum)]
    aggregate: Option<Aggregation>,
}

#[derive(Args, Debug)]
struct PredictArgs {
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    device: DeviceArg,
    /// Rows to predict: the run's feature columns by name, in any order (other columns are
    /// ignored); any format train reads, `-` for standard input.
    #[arg(long)]
    data: PathBuf,
    #[command(flatten)]
    input: InputFlags,
    /// Aggregation. Default: the run's.
    #[arg(long, value_enum)]
    aggregate: Option<Aggregation>,
}

#[derive(Args, Debug)]
struct ExportArgs {
    #[command(flatten)]
    run: RunArgs,
    /// File format: onnx or safetensors. Default: told by --out's extension (.onnx,
    /// .safetensors).
    #[arg(long)]
    format: Option<sisa::export::Format>,
    /// The file to write (atomically; refused if it exists, unless --force).
    #[arg(long)]
    out: PathBuf,
    /// Aggregation the ONNX graph computes (and both formats record). Default: the run's.
    #[arg(long, value_enum)]
    aggregate: Option<Aggregation>,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("who").required(true).multiple(true).args(["users", "users_file"])))]
struct UnlearnArgs {
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    device: DeviceArg,
    /// A user id to forget; repeat for more.
    #[arg(long = "user")]
    users: Vec<String>,
    /// A file of user ids, one per line ('#' starts a comment).
    #[arg(long)]
    users_file: Option<PathBuf>,
    /// Print the plan and its cost; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Accept and erase now, and leave retraining to shard tasks: the touched shards join the
    /// run's plan, which `sisa slurm --pending`, `sisa k8s --pending` or `sisa train-shard`
    /// train and `sisa publish` publishes, completing the request.
    #[arg(long, conflicts_with = "dry_run")]
    no_retrain: bool,
}

#[derive(Args, Debug)]
struct ServeArgs {
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    device: DeviceArg,
    #[command(flatten)]
    serve: sisa::serve::ServeFlags,
}

#[derive(Args, Debug)]
struct VerifyArgs {
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    device: DeviceArg,
    /// Verify only this shard; repeat for more. Default: every shard.
    #[arg(long)]
    shard: Vec<usize>,
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// Training data (CSV or IDX images). Default: Fashion-MNIST from Debian's
    /// dataset-fashion-mnist if installed, else the bundled datasets/mnist-5k.
    #[arg(long)]
    data: Option<PathBuf>,
    /// The device every run trains on: cpu (the dense backend) or cuda[:N] (the candle
    /// backend; a build with --features cuda). The membership audit stays on the CPU.
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    device: DeviceSpec,
    /// Held-out data. Default: the default data's test file.
    #[arg(long)]
    test: Option<PathBuf>,
    /// Labels of IDX --data. Default: the labels file beside it.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Labels of IDX --test. Default: the labels file beside it.
    #[arg(long)]
    test_labels: Option<PathBuf>,
    /// Users for data without a user column: uniform:U or zipf:U:s. Default for Fashion-MNIST:
    /// uniform:20000.
    #[arg(long)]
    users: Option<sisa::data::UserRule>,
    /// Model preset: a built-in name or a TOML file (whose neighbours' training throughput is
    /// measured beside it). Default: the built-in mlp.
    #[arg(long, value_name = "NAME|FILE")]
    model: Option<PathBuf>,
    /// Epochs of unsliced training. Default: the preset's.
    #[arg(long)]
    epochs: Option<u32>,
    /// Shard counts S to sweep.
    #[arg(long, value_delimiter = ',', default_value = "1,5,10,20")]
    shards: Vec<usize>,
    /// Slice counts R to sweep.
    #[arg(long, value_delimiter = ',', default_value = "1,5,10")]
    slices: Vec<usize>,
    /// Users per experiment K (1: one request; more: sequential, batched and worst case).
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    requests: Vec<usize>,
    /// Random single-user requests planned per configuration for the formula check.
    #[arg(long, default_value_t = 50)]
    samples: usize,
    /// Seed of the runs and of every random choice.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Do not measure sharding by row.
    #[arg(long)]
    no_row_sharding: bool,
    /// Slice rule of every configuration: by user (one user's rows in one slice) or by row.
    #[arg(long, value_enum, default_value = "user")]
    slice_by: SliceBy,
    /// Do not run the membership audit.
    #[arg(long)]
    no_audit: bool,
    /// Keep every trained run under OUT/runs/.
    #[arg(long)]
    keep_runs: bool,
    /// Directory for results.json, results.md and the plots.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args, Debug)]
struct AuditArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Rows the run trained on (the run's feature and label columns; any format train reads).
    #[arg(long)]
    members: PathBuf,
    /// Rows the run never saw.
    #[arg(long)]
    nonmembers: PathBuf,
    #[command(flatten)]
    input: InputFlags,
    /// Bootstrap resamples for the confidence intervals.
    #[arg(long, default_value_t = 1000)]
    bootstrap: usize,
    /// Seed of the resampling.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

/// Run the parsed command; returns the process exit code.
pub fn run(cli: Cli) -> Result<i32> {
    let g = cli.global;
    match cli.command {
        Command::Quickstart(a) => quickstart(a, &g),
        Command::Train(a) => cmd_train(a, &g),
        Command::Status(a) => cmd_status(a, &g),
        Command::Eval(a) => cmd_eval(a, &g),
        Command::Predict(a) => cmd_predict(a, &g),
        Command::Export(a) => cmd_export(a, &g),
        Command::Unlearn(a) => cmd_unlearn(a, &g),
        Command::Verify(a) => cmd_verify(a, &g),
        Command::Recover(a) => {
            a.device.require_recorded(&a.run.run)?;
            cmd_recover(a.run, &g)
        }
        Command::TrainShard(a) => cmd_train_shard(a, &g),
        Command::Publish(a) => cmd_publish(a, &g),
        Command::Slurm(a) => cmd_slurm(a),
        Command::K8s(a) => cmd_k8s(a),
        Command::Serve(a) => {
            a.device.require_recorded(&a.run.run)?;
            let mut opts = a.serve.options(a.run.run, a.run.ledger, g.options())?;
            opts.announce_json = g.json;
            sisa::serve::serve(opts)?;
            Ok(0)
        }
        Command::Bench(a) => cmd_bench(a, &g),
        Command::Models => cmd_models(&g),
        Command::Audit(a) => cmd_audit(a, &g),
        Command::Ledger {
            command: LedgerCommand::Verify(a),
        } => cmd_ledger_verify(a, &g),
        Command::Add(a) => cmd_add(a, &g),
        Command::Receipt {
            command: ReceiptCommand::Verify(a),
        } => cmd_receipt_verify(a, &g),
    }
}

/// The exit code for an error: 2 for bad usage (a flag out of range or at odds with another;
/// clap exits 2 itself for unknown or missing flags), 1 for everything else.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    match e.downcast_ref::<sisa::Error>() {
        Some(sisa::Error::Usage(_) | sisa::Error::Field { .. }) => 2,
        _ => 1,
    }
}

/// The message for an error, with the library's field names turned into the flags that set
/// them (`batch_size` → `--batch-size`); fields no flag sets keep their preset names.
pub fn describe(e: &anyhow::Error) -> String {
    if let Some(sisa::Error::Field { field, message }) = e.downcast_ref::<sisa::Error>() {
        let flag = match *field {
            "shards" | "slices" | "threads" | "classes" | "epochs" | "lr" => {
                format!("--{field}")
            }
            "batch_size" => "--batch-size".to_string(),
            "risk_shards" => "--risk-shards".to_string(),
            "risk_threshold" => "--risk-threshold".to_string(),
            other => format!("{other} (in the model preset)"),
        };
        return format!(
            "invalid configuration: {}",
            sisa::Error::field_text(&flag, message)
        );
    }
    format!("{e:#}")
}

fn print_json(value: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("JSON values serialize")
    );
}

/// The published ensemble as commands that predict use it: without the shards of deletion
/// requests still waiting for their shard tasks (said on stderr), as the server serves it.
fn answering_ensemble(run: &Run, ledger: &Ledger) -> Result<Ensemble> {
    let (requests, shards) = unlearn::pending_shards(run, ledger);
    if !shards.is_empty() {
        eprintln!(
            "sisa: shard(s) {shards:?} are left out: deletion request(s) {requests:?} wait for their shard tasks and sisa publish"
        );
    }
    Ok(Ensemble::load_excluding(run, &shards)?)
}

/// Open a run: lock, replay the ledger, report any recovery on stderr.
fn open(args: &RunArgs, g: &Global) -> Result<(Run, Ledger, unlearn::RunLock)> {
    Ok(open_unlearner(args, g)?.into_parts())
}

/// Open a run as its writer of deletions (see [`open`]).
fn open_unlearner(args: &RunArgs, g: &Global) -> Result<unlearn::Unlearner> {
    let unlearner = unlearn::Unlearner::open(&args.run, args.ledger.as_deref(), &g.options())?;
    let report = unlearner.recovery();
    if !report.completed.is_empty() {
        eprintln!(
            "sisa: completed interrupted or rolled-back requests {:?}",
            report.completed
        );
    }
    if !report.removed_files.is_empty() {
        eprintln!(
            "sisa: removed {} file(s) the published version does not reference",
            report.removed_files.len()
        );
    }
    Ok(unlearner)
}

fn parse_scale(text: &str) -> std::result::Result<f32, String> {
    sisa::model::spec::parse_scale(text).map(|v| v as f32)
}

fn train_options(a: &TrainArgs, g: &Global) -> Result<TrainOptions> {
    let mut model = ModelSpec::resolve(&a.model)?;
    if let Some(e) = a.epochs {
        model.epochs = e;
    }
    if let Some(b) = a.batch_size {
        model.batch_size = b;
    }
    if let Some(lr) = a.lr {
        model.lr = lr;
    }
    if let Some(o) = a.optimizer {
        model.optimizer = o;
    }
    // --scale implies --standardize none; given together with another --standardize, the
    // preset check refuses the pair. A --standardize other than none drops a preset's scale.
    match (a.scale, a.standardize) {
        (Some(f), st) => {
            model.scale = Some(f);
            model.standardize = st.unwrap_or(sisa::model::Standardize::None);
        }
        (None, Some(st)) => {
            model.standardize = st;
            if st != sisa::model::Standardize::None {
                model.scale = None;
            }
        }
        (None, None) => {}
    }
    match a.augment_shift {
        Some(0) => model.augment = None,
        Some(shift) => model.augment = Some(sisa::model::Augment { shift }),
        None => {}
    }
    match a.min_steps {
        Some(0) => model.min_steps = None,
        Some(m) => model.min_steps = Some(m),
        None => {}
    }
    model.validate()?;
    let columns = Columns {
        user: a.user_column.clone(),
        label: a.label_column.clone(),
        ignore: a.deletion_prior_column.clone(),
    };
    let data = a
        .input
        .spec(&a.data, a.users)?
        .with_columns(columns.clone());
    let test = match &a.test {
        Some(t) => Some(
            spec_for(
                t,
                a.input.delimiter,
                a.test_labels.clone(),
                a.test_user_ids.clone(),
                a.users,
            )?
            .with_columns(columns),
        ),
        None => None,
    };
    let priors = match (&a.deletion_prior, &a.deletion_prior_column) {
        (Some(p), _) => Some(Priors::read(p, &a.user_column, a.risk_threshold)?),
        (None, Some(c)) => Priors::from_column(&data, &a.user_column, c, a.risk_threshold, true)?,
        (None, None) => None,
    };
    Ok(TrainOptions {
        data,
        test,
        model,
        shards: a.shards,
        slices: a.slices,
        seed: a.seed,
        shard_by: a.shard_by,
        slice_by: a.slice_by,
        priors,
        risk_shards: a.risk_shards,
        out: a.out.clone(),
        classes: a.classes,
        threads: g.threads(),
        progress: !g.quiet,
        aggregation: a.aggregate,
        ledger: a.ledger.clone(),
        // A GPU is candle's: --device cuda picks the candle backend unless one is named.
        backend: a.backend.unwrap_or(if a.device.is_cpu() {
            sisa::model::Backend::default()
        } else {
            sisa::model::Backend::Candle
        }),
        device: a.device,
    })
}

fn cmd_train(a: TrainArgs, g: &Global) -> Result<i32> {
    let opts = train_options(&a, g)?;
    if a.plan_only {
        let s = train::plan_run(&opts)?;
        if g.json {
            print_json(&json!({
                "run": opts.out,
                "plan": s.plan.id,
                "shards": s.config.shards,
                "slices": s.config.slices,
                "pending": s.plan.shards(),
                "rows": s.plan.manifest.shards.iter().map(|x| x.data.rows).sum::<u64>(),
                "rows_epochs": s.rows_epochs,
            }));
        } else {
            println!(
                "planned {} shards x {} slices ({} rows x epochs to train) at {}; plan {}",
                s.config.shards,
                s.config.slices,
                s.rows_epochs,
                opts.out.display(),
                s.plan.short_id()
            );
            println!(
                "next: train the shards (sisa slurm --run {0} | sbatch, sisa k8s --run {0} ..., or sisa train-shard --run {0} --shard K for each), then sisa publish --run {0}",
                opts.out.display()
            );
        }
        return Ok(0);
    }
    let summary = train::train_run(&opts)?;
    let run = &summary.run;
    let (epochs, per_stage) = (run.config.model.epochs, &run.config.stage_epochs);
    let fraction = sisa::plan::sliced_fraction(epochs, per_stage);
    if !g.quiet && !(0.8..=1.25).contains(&fraction) {
        eprintln!(
            "sisa: note: {} slices turn {epochs} epochs into {} per stage (SISA's 2e/(R+1), rounded), so training visited {:.0}% of the rows x epochs of unsliced training",
            per_stage.len(),
            per_stage[0],
            100.0 * fraction
        );
    }
    if !g.quiet && epochs != opts.model.epochs {
        eprintln!(
            "sisa: note: min_steps {} raises the epochs from {} to {epochs} for shards of about {} rows",
            opts.model.min_steps.unwrap_or(0),
            opts.model.epochs,
            run.manifest.shards.iter().map(|s| s.data.rows).sum::<u64>()
                / run.config.shards as u64
        );
    }
    if let (false, Some(names)) = (g.quiet, &run.config.class_names) {
        eprintln!(
            "sisa: note: the training labels are not all non-negative integers, so they are class names: {} classes, {} (run.json class_names; class index = position)",
            names.len(),
            sisa::data::classes::list(names, 10)
        );
    }
    let rows: u64 = run.manifest.shards.iter().map(|s| s.data.rows).sum();
    // What forgetting one user of the mean row count is expected to retrain, beside what
    // training everything cost.
    let one_user = run.expected_one_user_rows_epochs();
    if g.json {
        let mut v = json!({
            "run": run.dir.root(),
            "version": run.manifest.version,
            "shards": run.config.shards,
            "slices": run.config.slices,
            "epochs": epochs,
            "stage_epochs": run.config.stage_epochs,
            "expected_unlearn_rows_epochs": one_user.round() as u64,
            "rows": rows,
            "test_rows": run.manifest.test_totals().map(|t| t.0),
            "rows_epochs": summary.rows_epochs,
            "seconds": summary.seconds,
            "peak_rss_bytes": peak_rss_bytes(),
        });
        if let Some(names) = &run.config.class_names {
            v["class_names"] = json!(names);
        }
        print_json(&v);
    } else {
        println!(
            "trained {} shards x {} slices on {rows} rows ({} rows x epochs) in {:.2}s; published version 1 at {}",
            run.config.shards,
            run.config.slices,
            summary.rows_epochs,
            summary.seconds,
            run.dir.root().display()
        );
        println!(
            "forgetting one user is expected to retrain {:.0} rows x epochs ({:.1}% of this training)",
            one_user,
            100.0 * one_user / summary.rows_epochs.max(1) as f64
        );
    }
    Ok(0)
}

/// Peak resident memory of this process so far (Linux's VmHWM), if the system reports it.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn status_json(run: &Run, ledger: &Ledger) -> serde_json::Value {
    json!({
        "run": run.config.name,
        "version": run.manifest.version,
        "applied_request": run.manifest.applied_request,
        "requests": ledger.requests().len(),
        "model": run.config.model.name,
        "slices": run.config.slices,
        "stage_epochs": run.config.stage_epochs,
        "classes": run.config.classes,
        "features": run.config.features.len(),
        "test_rows": run.manifest.test_totals().map(|t| t.0),
        "shards": run.manifest.shards.iter().map(|s| json!({
            "shard": s.shard,
            "rows": s.data.rows,
            "users": s.data.users,
            "stages": s.stages.len(),
            "slice_rows": s.slice_rows,
            "lineage": s.stages.last().map(|x| x.lineage.to_hex()),
            "model_digest": s.model_digest,
        })).collect::<Vec<_>>(),
    })
}

/// The pending plan of the run at `root`, if any: its shards and how far their tasks are.
fn plan_status(root: &Path) -> Result<Option<serde_json::Value>> {
    use sisa::run::plan::NotReady;
    let dir = sisa::run::RunDir::new(root);
    if sisa::run::Plan::load(&dir)?.is_none() {
        return Ok(None);
    }
    let planned = sisa::train::task::Planned::open(root)?;
    let plan = &planned.plan;
    let shards: Vec<_> = plan
        .pending
        .iter()
        .map(|p| {
            let state = match plan.result_of(&dir, p.shard) {
                Ok(_) => "trained".to_string(),
                Err(NotReady::Missing) => "waiting".to_string(),
                Err(NotReady::OlderPlan { .. }) => "older plan: rerun".to_string(),
                Err(NotReady::Damaged(m)) => format!("damaged: {m}"),
            };
            json!({"shard": p.shard, "first_stage": p.first_stage, "state": state})
        })
        .collect();
    let done = shards.iter().filter(|s| s["state"] == "trained").count();
    Ok(Some(json!({
        "plan": plan.id,
        "base_version": plan.base.as_ref().map(|b| b.version),
        "version": plan.manifest.version,
        "requests": plan.requests,
        "pending": plan.pending.len(),
        "trained": done,
        "shards": shards,
    })))
}

fn print_plan_status(p: &serde_json::Value) {
    println!(
        "plan {}: version {} waits on {} of {} shard task(s); requests {}",
        p["plan"]
            .as_str()
            .unwrap_or_default()
            .get(..16)
            .unwrap_or_default(),
        p["version"],
        p["pending"].as_u64().unwrap_or(0) - p["trained"].as_u64().unwrap_or(0),
        p["pending"],
        p["requests"]
    );
    for s in p["shards"].as_array().into_iter().flatten() {
        println!(
            "  shard {:>4}: from stage {}: {}",
            s["shard"],
            s["first_stage"],
            s["state"].as_str().unwrap_or_default()
        );
    }
}

fn cmd_status(a: StatusArgs, g: &Global) -> Result<i32> {
    let dir = sisa::run::RunDir::new(&a.run.run);
    if !dir.path(sisa::run::RunFile::Current).exists() {
        // Planned and not published yet: the plan is all there is.
        if let Some(p) = plan_status(&a.run.run)? {
            if g.json {
                print_json(&json!({"run": a.run.run, "version": null, "plan": p}));
            } else {
                println!("run {}: planned, not published yet", a.run.run.display());
                print_plan_status(&p);
            }
            return Ok(0);
        }
    }
    let (run, ledger, _lock) = open(&a.run, g)?;
    let plan = plan_status(&a.run.run)?;
    if g.json {
        let mut v = status_json(&run, &ledger);
        if let Some(names) = &run.config.class_names {
            v["class_names"] = json!(names);
        }
        v["plan"] = json!(plan);
        print_json(&v);
        return Ok(0);
    }
    if let Some(p) = &plan {
        print_plan_status(p);
    }
    let c = &run.config;
    println!(
        "run {}: version {}, {} shards x {} slices, model {} ({} features, {} classes), {} deletion request(s)",
        c.name,
        run.manifest.version,
        c.shards,
        c.slices,
        c.model.name,
        c.features.len(),
        c.classes,
        ledger.requests().len()
    );
    if let Some(names) = &c.class_names {
        println!("classes: {}", sisa::data::classes::list(names, 20));
    }
    println!(
        "{:>5} {:>8} {:>6} {:>6}  model digest",
        "shard", "rows", "users", "stages"
    );
    for s in &run.manifest.shards {
        println!(
            "{:>5} {:>8} {:>6} {:>6}  {}",
            s.shard,
            s.data.rows,
            s.data.users,
            s.stages.len(),
            s.model_digest
        );
    }
    if let Some(t) = run.manifest.test_totals() {
        println!("held-out: {} rows, {} users", t.0, t.1);
    }
    Ok(0)
}

/// Features and labels to evaluate on: `--data` or the run's held-out rows.
fn eval_rows(run: &Run, data: Option<&InputSpec>) -> Result<(Vec<f32>, Vec<u32>)> {
    match data {
        Some(spec) => {
            let t = source::read_for_run(spec, &run.config, Need::Optional, Need::Required)?;
            let labels = t.labels.clone().expect("label column is required");
            Ok((t.x, labels))
        }
        None => match run.test_rows()? {
            Some(rows) if !rows.is_empty() => Ok((rows.x, rows.labels)),
            Some(_) => bail!("the run's held-out set is empty; pass --data FILE"),
            None => bail!("the run has no held-out rows (train without --test); pass --data FILE"),
        },
    }
}

fn cmd_eval(a: EvalArgs, g: &Global) -> Result<i32> {
    if a.data.is_none() && (a.input.labels.is_some() || a.input.user_ids.is_some()) {
        return Err(sisa::Error::Usage(
            "--labels and --user-ids describe --data, and no --data was given".into(),
        )
        .into());
    }
    let (mut run, ledger, lock) = open(&a.run, g)?;
    if let Some(d) = a.device.device {
        run.config.device = d;
    }
    let ensemble = answering_ensemble(&run, &ledger)?;
    drop(lock);
    let data = a
        .data
        .as_deref()
        .map(|d| a.input.spec(d, None))
        .transpose()?;
    let (x, y) = eval_rows(&run, data.as_ref())?;
    let agg = a.aggregate.unwrap_or(run.config.aggregation);
    let ev = ensemble.evaluate(&x, &y, agg);
    if g.json {
        let mut v = serde_json::to_value(&ev)?;
        if let Some(names) = &run.config.class_names {
            v["class_names"] = json!(names);
            if let Some(per_class) = v["metrics"]["per_class"].as_array_mut() {
                for (c, name) in per_class.iter_mut().zip(names) {
                    c["name"] = json!(name);
                }
            }
        }
        print_json(&v);
    } else {
        println!(
            "version {}: accuracy {:.4} ({}) on {} rows",
            ev.version, ev.accuracy, ev.aggregate, ev.rows
        );
        let all: Vec<String> = ev
            .by_aggregation
            .iter()
            .map(|(a, acc)| format!("{a} {acc:.4}"))
            .collect();
        println!("  by aggregation: {}", all.join(", "));
        print_metrics(&ev.metrics, run.config.class_names.as_deref());
        println!("per shard:");
        for s in &ev.per_shard {
            println!("  shard {:>3}: {:.4}", s.shard, s.accuracy);
        }
        if let Some(names) = &run.config.class_names {
            println!("  classes: {}", sisa::data::classes::list(names, 20));
        }
    }
    Ok(0)
}

/// Most classes whose confusion matrix the text output prints (`--json` always has it).
const CONFUSION_TEXT_CLASSES: usize = 20;

/// The per-class table (by name, for a run whose labels are names), macro averages,
/// log-loss and (for few classes) the confusion matrix, its rows and columns by class index.
fn print_metrics(m: &sisa::metrics::Metrics, names: Option<&[String]>) {
    println!("  log-loss {:.4}, macro F1 {:.4}", m.log_loss, m.macro_f1);
    let label = |c: usize| match names {
        Some(n) => format!("{c} {}", n[c]),
        None => c.to_string(),
    };
    let width = m
        .per_class
        .iter()
        .map(|c| label(c.class).chars().count())
        .max()
        .unwrap_or(0)
        .clamp(8, 40);
    println!(
        "  {:>width$} {:>9} {:>9} {:>9} {:>8}",
        "class", "precision", "recall", "f1", "support"
    );
    for c in &m.per_class {
        println!(
            "  {:>width$} {:>9.4} {:>9.4} {:>9.4} {:>8}",
            label(c.class),
            c.precision,
            c.recall,
            c.f1,
            c.support
        );
    }
    println!(
        "  {:>width$} {:>9.4} {:>9.4} {:>9.4} {:>8}",
        "macro", m.macro_precision, m.macro_recall, m.macro_f1, m.rows
    );
    let classes = m.confusion.len();
    if classes > CONFUSION_TEXT_CLASSES {
        println!("  confusion matrix: {classes}x{classes}, in --json");
        return;
    }
    let width = m
        .confusion
        .iter()
        .flatten()
        .max()
        .map_or(1, |v| v.to_string().len())
        .max(classes.to_string().len());
    println!("  confusion matrix (rows: true class, columns: predicted):");
    let header: Vec<String> = (0..classes).map(|c| format!("{c:>width$}")).collect();
    println!("  {:>8} {}", "", header.join(" "));
    for (t, row) in m.confusion.iter().enumerate() {
        let cells: Vec<String> = row.iter().map(|v| format!("{v:>width$}")).collect();
        println!("  {t:>8} {}", cells.join(" "));
    }
}

fn cmd_predict(a: PredictArgs, g: &Global) -> Result<i32> {
    let (mut run, ledger, lock) = open(&a.run, g)?;
    if let Some(d) = a.device.device {
        run.config.device = d;
    }
    let ensemble = answering_ensemble(&run, &ledger)?;
    drop(lock);
    let spec = a.input.spec(&a.data, None)?;
    // Labels are not read: a prediction needs only the features.
    let t = source::read_for_run(&spec, &run.config, Need::Optional, Need::Optional)?;
    let names = run.config.labels();
    let agg = a.aggregate.unwrap_or(run.config.aggregation);
    let pred = ensemble.predict(&t.x, t.len(), agg);
    let c = run.config.classes;
    if g.json {
        let rows: Vec<_> = pred
            .labels
            .iter()
            .zip(pred.probs.chunks(c))
            .zip(&t.lines)
            .map(|((l, p), line)| match names.name(*l) {
                Some(name) => {
                    json!({"line": line, "label": l, "class": name, "probabilities": p})
                }
                None => json!({"line": line, "label": l, "probabilities": p}),
            })
            .collect();
        print_json(
            &json!({"version": ensemble.version, "aggregate": agg.name(), "predictions": rows}),
        );
    } else if names.names().is_some() {
        println!("line,label,class,confidence");
        for ((l, p), line) in pred.labels.iter().zip(pred.probs.chunks(c)).zip(&t.lines) {
            let name = csv::field(names.name(*l).unwrap_or_default());
            println!("{line},{l},{name},{:.6}", p[*l as usize]);
        }
    } else {
        println!("line,label,confidence");
        for ((l, p), line) in pred.labels.iter().zip(pred.probs.chunks(c)).zip(&t.lines) {
            println!("{line},{l},{:.6}", p[*l as usize]);
        }
    }
    Ok(0)
}

fn cmd_export(a: ExportArgs, g: &Global) -> Result<i32> {
    use sisa::export::{self, EnsembleExport, Format};
    let format = match a.format.or_else(|| Format::from_path(&a.out)) {
        Some(f) => f,
        None => {
            return Err(sisa::Error::Usage(format!(
                "--out {}: cannot tell the format from the extension; pass --format onnx or --format safetensors",
                a.out.display()
            ))
            .into())
        }
    };
    export::require_published(&a.run.run)?;
    let (run, ledger, lock) = open(&a.run, g)?;
    let (requests, shards) = unlearn::pending_shards(&run, &ledger);
    if !requests.is_empty() {
        bail!(
            "{}: deletion request(s) {requests:?} wait for their shard tasks (shard(s) {shards:?}), and the published version still holds their users: run the tasks and sisa publish, then export",
            a.run.run.display()
        );
    }
    let ensemble = Ensemble::load(&run)?;
    let agg = a.aggregate.unwrap_or(run.config.aggregation);
    let exported = EnsembleExport::new(&run, &ensemble, agg)?;
    drop(lock);
    let report = export::write(&exported, format, &a.out, a.force)?;
    if g.json {
        print_json(&serde_json::to_value(&report)?);
    } else {
        println!(
            "exported version {} ({} aggregation, {} shard models, {} parameters) as {} to {} ({} bytes)",
            report.version,
            report.aggregate,
            report.shards.len(),
            report.parameters,
            report.format,
            report.out,
            report.bytes
        );
    }
    Ok(0)
}

fn cmd_unlearn(a: UnlearnArgs, g: &Global) -> Result<i32> {
    let mut ids = a.users.clone();
    if let Some(f) = &a.users_file {
        ids.extend(csv::read_user_list(f)?);
    }
    a.device.require_recorded(&a.run.run)?;
    let mut unlearner = open_unlearner(&a.run, g)?;
    let resolved = unlearner.resolve(&ids)?;
    let run = unlearner.run().clone();
    let keys = resolved.keys.clone();
    if a.dry_run {
        let plan = unlearner.plan(&resolved);
        if g.json {
            let mut v = serde_json::to_value(&plan)?;
            v["dry_run"] = json!(true);
            v["fraction"] = json!(plan.fraction());
            print_json(&v);
        } else {
            println!(
                "dry run: {} user(s), {} training and {} held-out rows; {} of {} shards retrain",
                keys.len(),
                plan.train_rows_removed,
                plan.test_rows_removed,
                plan.shards.len(),
                run.config.shards
            );
            for s in &plan.shards {
                println!(
                    "  shard {:>3}: {} row(s), retrain stages {}..{} ({} rows x epochs)",
                    s.shard,
                    s.rows_removed,
                    s.first_stage,
                    run.config.slices,
                    s.retrain_rows_epochs
                );
            }
            println!(
                "cost: {} rows x epochs, {:.1}% of a full retrain ({}); nothing was changed",
                plan.retrain_rows_epochs,
                100.0 * plan.fraction(),
                plan.full_retrain_rows_epochs
            );
        }
        return Ok(0);
    }
    let started = Instant::now();
    if a.no_retrain {
        let request = unlearner.accept_deferred(resolved)?;
        eprintln!(
            "sisa: request {request} accepted and recorded in {}",
            unlearner.ledger().path().display()
        );
        let plan = unlearner.defer(request)?;
        let root = run.dir.root().display();
        if g.json {
            print_json(&json!({
                "request": request,
                "deferred": true,
                "plan": plan.id,
                "pending_shards": plan.shards(),
                "pending_requests": plan.requests,
                "version": run.manifest.version,
            }));
        } else {
            println!(
                "request {request}: {} user(s) accepted and erased from the data; retraining deferred to shard tasks",
                keys.len()
            );
            println!(
                "plan {}: shard(s) {:?} to retrain for request(s) {:?}; until it is published, version {} is served without those shards",
                plan.short_id(),
                plan.shards(),
                plan.requests,
                run.manifest.version
            );
            println!(
                "next: sisa slurm --run {root} --pending | sbatch (or sisa train-shard --run {root} --shard K), then sisa publish --run {root}"
            );
        }
        return Ok(0);
    }
    let request = unlearner.accept(resolved)?;
    eprintln!(
        "sisa: request {request} accepted and recorded in {}",
        unlearner.ledger().path().display()
    );
    let receipt = unlearner.complete(request)?;
    let receipt_path = run.dir.path(sisa::run::RunFile::Receipt(request));
    if g.json {
        let mut v = serde_json::to_value(&receipt)?;
        v["receipt_file"] = json!(receipt_path);
        print_json(&v);
    } else {
        let retrained: Vec<_> = receipt
            .shards
            .iter()
            .filter(|s| s.stages_retrained > 0)
            .collect();
        println!(
            "request {request}: forgot {} user(s), {} training and {} held-out rows; retrained {} shard(s) in {:.2}s",
            receipt.user_keys.len(),
            receipt.train_rows_removed,
            receipt.test_rows_removed,
            retrained.len(),
            started.elapsed().as_secs_f64()
        );
        println!(
            "cost: {} rows x epochs, {:.1}% of a full retrain ({}); published version {}",
            receipt.cost.retrained_rows_epochs,
            100.0 * receipt.cost.fraction,
            receipt.cost.full_retrain_rows_epochs,
            receipt.ensemble_version
        );
        println!("receipt: {}", receipt_path.display());
    }
    Ok(0)
}

fn cmd_verify(a: VerifyArgs, g: &Global) -> Result<i32> {
    a.device.require_recorded(&a.run.run)?;
    let (run, _ledger, _lock) = open(&a.run, g)?;
    let shards = (!a.shard.is_empty()).then_some(a.shard.as_slice());
    let verdicts = sisa::verify::verify(&run, shards, g.threads(), !g.quiet)?;
    let ok = verdicts.iter().all(|v| v.identical);
    if g.json {
        print_json(&json!({"version": run.manifest.version, "identical": ok, "shards": verdicts}));
    } else {
        for v in &verdicts {
            println!(
                "shard {:>3}: {} ({}/{} stages match) {}{}",
                v.shard,
                if v.identical {
                    "identical"
                } else {
                    "DIFFERENT"
                },
                v.stages_matching,
                v.stages,
                v.retrained,
                if v.same_machine_kind {
                    String::new()
                } else {
                    format!(
                        "; trained on another machine kind ('{}'; this one is '{}'), so its bits are compared across kinds",
                        v.trained_on,
                        sisa::machine::kind_for(run.config.device).unwrap_or_default()
                    )
                }
            );
        }
        println!(
            "{}: version {} {} a from-scratch retrain on the current data",
            if ok { "verified" } else { "FAILED" },
            run.manifest.version,
            if ok {
                "is bitwise identical to"
            } else {
                "differs from"
            }
        );
    }
    Ok(if ok { 0 } else { 3 })
}

fn cmd_recover(a: RunArgs, g: &Global) -> Result<i32> {
    let unlearner = open_unlearner(&a, g)?;
    let recovery = unlearner.recovery().clone();
    let (run, ledger, _lock) = unlearner.into_parts();
    if g.json {
        print_json(&json!({
            "run": run.dir.root(),
            "version": run.manifest.version,
            "requests": ledger.requests().len(),
            "completed": recovery.completed,
            "removed_files": recovery.removed_files,
            "pending": recovery.pending.len(),
            "pending_requests": recovery.pending,
        }));
        return Ok(0);
    }
    if recovery.pending.is_empty() {
        println!(
            "run {} is at version {} with {} request(s) applied; nothing is pending",
            run.dir.root().display(),
            run.manifest.version,
            ledger.requests().len()
        );
    } else {
        println!(
            "run {} is at version {}; request(s) {:?} wait for their shard tasks and sisa publish",
            run.dir.root().display(),
            run.manifest.version,
            recovery.pending
        );
    }
    Ok(0)
}

fn cmd_add(a: AddArgs, g: &Global) -> Result<i32> {
    let opts = g.options();
    let data = a.input.spec(&a.data, None)?;
    a.device.require_recorded(&a.run.run)?;
    let (mut run, ledger, _lock) = open(&a.run, g)?;
    let c = &run.config;
    let priors = match (&a.deletion_prior, c.risk_threshold, &c.prior_column) {
        (Some(p), Some(t), _) => Some(Priors::read(p, &c.user_column, t)?),
        (Some(_), None, _) => {
            return Err(anyhow::anyhow!(
                "--deletion-prior: the run was trained without a deletion prior; add its rows without one"
            ))
        }
        // A run trained with a prior column reads the new users' priors from the same column.
        (None, Some(t), Some(col)) => Priors::from_column(&data, &c.user_column, col, t, false)?,
        (None, _, _) => None,
    };
    let report = unlearn::add::add_rows(
        &mut run,
        &ledger,
        &data,
        priors.as_ref(),
        a.allow_duplicate,
        &opts,
    )?;
    if g.json {
        print_json(&serde_json::to_value(&report)?);
    } else {
        println!(
            "added {} of {} rows; refused {} row(s) of {} forgotten user(s); retrained {} shard(s) ({} rows x epochs); version {}",
            report.rows_added,
            report.rows_read,
            report.rows_refused,
            report.users_refused,
            report.shards.len(),
            report.retrained_rows_epochs,
            report.version
        );
    }
    Ok(0)
}

fn cmd_receipt_verify(a: ReceiptArgs, g: &Global) -> Result<i32> {
    let (run, ledger, _lock) = open(&a.run, g)?;
    let bytes =
        std::fs::read(&a.receipt).with_context(|| format!("reading {}", a.receipt.display()))?;
    let check = unlearn::receipt::verify(&run, &ledger, &bytes, a.user.as_deref())
        .with_context(|| format!("receipt {}", a.receipt.display()))?;
    if g.json {
        let mut v = serde_json::to_value(&check)?;
        v["ok"] = json!(check.ok());
        print_json(&v);
    } else {
        let mark = |b: bool| if b { "yes" } else { "NO" };
        println!("receipt for request {}:", check.request);
        println!(
            "  chained in the ledger            {}",
            mark(check.ledger_chain)
        );
        println!(
            "  the receipt the ledger recorded  {}",
            mark(check.receipt_recorded)
        );
        println!(
            "  users' rows absent from the run  {}",
            mark(check.rows_absent)
        );
        println!(
            "  models as published then         {}",
            if check.models_match_current {
                "yes"
            } else {
                "no (later versions were published since)"
            }
        );
        if let Some(u) = check.user_in_receipt {
            println!("  names the given user             {}", mark(u));
        }
        println!(
            "{}",
            if check.ok() {
                "receipt verified"
            } else {
                "receipt FAILED verification"
            }
        );
    }
    Ok(if check.ok() { 0 } else { 3 })
}

fn cmd_ledger_verify(a: LedgerArgs, g: &Global) -> Result<i32> {
    let path = unlearn::location::resolve(&a.run, a.ledger.as_deref())?;
    let ledger = Ledger::open(&path)?;
    unlearn::location::check(&a.run, &ledger)?;
    let done = ledger
        .requests()
        .iter()
        .filter(|&&r| ledger.is_done(r))
        .count();
    if g.json {
        print_json(&json!({
            "ledger": path,
            "entries": ledger.entries().len(),
            "requests": ledger.requests().len(),
            "done": done,
            "head": ledger.head(),
            "valid": true,
        }));
    } else {
        println!(
            "ledger {}: {} entries, {} request(s) ({} done), chain intact, head {}",
            path.display(),
            ledger.entries().len(),
            ledger.requests().len(),
            done,
            ledger.head()
        );
    }
    Ok(0)
}

fn cmd_bench(a: BenchArgs, g: &Global) -> Result<i32> {
    // Without --data: Debian's Fashion-MNIST if installed, else the MNIST subset compiled into
    // the binary, written to a scratch folder for the run.
    let mut scratch = None;
    let (data, test, users, name, note) = match a.data {
        Some(d) => (d.clone(), a.test, a.users, dataset_name(&d), None),
        None => {
            let s = Scratch::new(parent_of(&a.out), "bench-data")?;
            let standard = sisa::bench::standard_data(s.path());
            if standard.name == sisa::data::bundled::MNIST_5K.name {
                sisa::data::bundled::MNIST_5K.write_under(s.path())?;
            }
            scratch = Some(s);
            (
                standard.data,
                a.test.or(Some(standard.test)),
                a.users.or(standard.users),
                standard.name,
                standard.note,
            )
        }
    };
    // A preset file is measured with the presets beside it; a built-in one with every
    // built-in preset.
    let model_arg = a.model.unwrap_or_else(|| PathBuf::from("mlp"));
    let mut model = ModelSpec::resolve(&model_arg)?;
    let presets: Vec<ModelSpec> = if model_arg.exists() {
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(model_arg.parent().unwrap_or(Path::new(".")))
                .with_context(|| format!("listing the presets beside {}", model_arg.display()))?
                .map(|e| e.map(|e| e.path()))
                .collect::<std::io::Result<_>>()?;
        files.retain(|p| p.extension().is_some_and(|x| x == "toml"));
        files.sort();
        files
            .iter()
            .map(|p| ModelSpec::load(p))
            .collect::<sisa::Result<_>>()?
    } else {
        sisa::model::presets::PRESETS
            .iter()
            .map(|p| p.spec())
            .collect::<sisa::Result<_>>()?
    };
    let model_path = model_arg;
    let preset_epochs = model.epochs;
    model.epochs = a.epochs.unwrap_or(model.epochs);
    let opts = sisa::bench::BenchOptions {
        device: a.device,
        data,
        test,
        labels: a.labels,
        test_labels: a.test_labels,
        users,
        dataset_name: name,
        dataset_note: note,
        model_path,
        model,
        preset_epochs,
        presets,
        shards: a.shards,
        slices: a.slices,
        requests: a.requests,
        samples: a.samples,
        seed: a.seed,
        row_sharding: !a.no_row_sharding,
        slice_by: a.slice_by,
        audit: !a.no_audit,
        membership: Default::default(),
        keep_runs: a.keep_runs,
        out: a.out,
        threads: g.threads(),
        progress: !g.quiet,
    };
    let (report, written) = sisa::bench::run(&opts)?;
    drop(scratch);
    if g.json {
        print_json(&serde_json::to_value(&report)?);
    } else {
        print!("{}", sisa::bench::report::markdown(&report));
    }
    eprintln!(
        "sisa bench: wrote {}, {} and {} plots in {:.0}s",
        written.json.display(),
        written.markdown.display(),
        written.plots.len(),
        report.seconds
    );
    Ok(0)
}

fn cmd_models(g: &Global) -> Result<i32> {
    let specs: Vec<ModelSpec> = sisa::model::presets::PRESETS
        .iter()
        .map(|p| p.spec())
        .collect::<sisa::Result<_>>()?;
    if g.json {
        let presets: Vec<_> = specs
            .iter()
            .map(|m| {
                json!({
                    "name": m.name,
                    "description": m.description,
                    "input": m.input,
                    "layers": sisa::model::presets::layer_lines(m),
                    "optimizer": m.optimizer,
                    "lr": m.lr,
                    "batch_size": m.batch_size,
                    "epochs": m.epochs,
                    "preprocessing": m.preprocessing(),
                    "augment_shift": m.augment.map(|a| a.shift),
                })
            })
            .collect();
        print_json(&json!({ "presets": presets }));
        return Ok(0);
    }
    for m in &specs {
        println!("{}: {}", m.name, m.description);
        let input = match m.input {
            Some([c, h, w]) => format!("image {c}x{h}x{w}"),
            None => "the data's features".into(),
        };
        println!("  input     {input}, {}", m.preprocessing());
        println!(
            "  layers    {}",
            sisa::model::presets::layer_lines(m).join(" > ")
        );
        let shift = m
            .augment
            .map(|a| format!(", images shifted by up to {} while training", a.shift))
            .unwrap_or_default();
        println!(
            "  training  {}, lr {}, batch {}, {} epochs{shift}",
            serde_json::to_value(m.optimizer)?
                .as_str()
                .unwrap_or_default(),
            m.lr,
            m.batch_size,
            m.epochs
        );
    }
    println!(
        "use one with --model NAME, or pass a TOML file of your own (see models/ in the source)"
    );
    Ok(0)
}

/// A short name for a data file: `fashion-mnist` for the Debian package's files, else the
/// file's stem.
fn dataset_name(p: &Path) -> String {
    if p.starts_with(sisa::bench::FASHION_MNIST_DIR) {
        return "fashion-mnist".into();
    }
    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("data");
    name.split('.').next().unwrap_or(name).to_string()
}

fn cmd_audit(a: AuditArgs, g: &Global) -> Result<i32> {
    let (run, ledger, lock) = open(&a.run, g)?;
    let (requests, _) = unlearn::pending_shards(&run, &ledger);
    if !requests.is_empty() {
        bail!(
            "{}: deletion request(s) {requests:?} wait for their shard tasks, and the published version still holds their users: publish, then audit",
            a.run.run.display()
        );
    }
    let opts = sisa::audit::AuditOptions {
        bootstrap: a.bootstrap,
        null_draws: a.bootstrap,
        seed: a.seed,
        ..Default::default()
    };
    a.input.one_file_only("audit")?;
    let members = a.input.spec(&a.members, None)?;
    let nonmembers = a.input.spec(&a.nonmembers, None)?;
    if members.is_stdin() && nonmembers.is_stdin() {
        bail!("--members and --nonmembers are both standard input ('-'): one of them at most");
    }
    let r = sisa::audit::audit_files(&run, &members, &nonmembers, &opts)?;
    drop(lock);
    if g.json {
        print_json(&serde_json::to_value(&r)?);
        return Ok(0);
    }
    let est = |e: &sisa::audit::Estimate| format!("{:.3} [{:.3}, {:.3}]", e.value, e.lo, e.hi);
    println!(
        "version {}: {} members (mean loss {:.4}) vs {} nonmembers (mean loss {:.4})",
        run.manifest.version, r.members, r.member_mean_loss, r.nonmembers, r.nonmember_mean_loss
    );
    println!("  AUC              {}", est(&r.auc));
    println!("  TPR at 1% FPR    {}", est(&r.tpr_at_1pct_fpr));
    println!("  TPR at 0.1% FPR  {}", est(&r.tpr_at_0_1pct_fpr));
    println!(
        "  null interval    [{:.3}, {:.3}] (AUC of never-seen vs never-seen: {})",
        r.null_interval[0], r.null_interval[1], r.null_from
    );
    println!(
        "verdict: {}",
        match r.verdict {
            sisa::audit::Verdict::Separates =>
                "members SEPARATE from nonmembers: the attack recognises them",
            sisa::audit::Verdict::Indistinguishable =>
                "members are indistinguishable from nonmembers (AUC inside the null interval)",
            sisa::audit::Verdict::Inconclusive =>
                "inconclusive: the AUC is outside the null interval but not clearly above it",
        }
    );
    Ok(0)
}

/// A folder for data compiled into the binary, written for one command and removed when it
/// ends (the run it trains does not refer to the files it was trained from).
struct Scratch(PathBuf);

impl Scratch {
    /// A new empty folder `.sisa-WHAT-PID` in `parent` (created if missing).
    fn new(parent: &Path, what: &str) -> Result<Scratch> {
        let dir = parent.join(format!(".sisa-{what}-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("removing the leftover {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Scratch(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            eprintln!("sisa: note: could not remove {}: {e}", self.0.display());
        }
    }
}

/// The folder a path is in (`.` for a bare name).
fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn quickstart(a: QuickstartArgs, g: &Global) -> Result<i32> {
    // The digits compiled into the binary, unless --datasets names a folder of them.
    // (The scratch folder lives until quickstart returns.)
    let (digits, _scratch) = match &a.datasets {
        Some(d) => (d.join("digits"), None),
        None => {
            let s = Scratch::new(parent_of(&a.out), "quickstart-data")?;
            (sisa::data::bundled::DIGITS.write_under(s.path())?, Some(s))
        }
    };
    let model = PathBuf::from("mlp");
    let train_csv = digits.join("train.csv");
    let test_csv = digits.join("test.csv");
    if a.out.exists() {
        if a.out.join("run.json").exists() && a.out.join("CURRENT").exists() {
            std::fs::remove_dir_all(&a.out).with_context(|| {
                format!("removing the earlier quickstart run {}", a.out.display())
            })?;
        } else {
            bail!(
                "{} exists and is not a sisa run; choose another --out",
                a.out.display()
            );
        }
    }
    let quiet = g.quiet;
    let say = |s: String| {
        if !quiet {
            eprintln!("{s}");
        }
    };
    let (shards, slices, seed) = (5, 4, 7);
    say(format!(
        "1/5 train: {} with the built-in mlp preset (S={shards}, R={slices})",
        match &a.datasets {
            Some(_) => train_csv.display().to_string(),
            None => "the bundled digits".to_string(),
        }
    ));
    let targs = TrainArgs {
        data: train_csv.clone(),
        test: Some(test_csv),
        input: InputFlags::default(),
        test_labels: None,
        test_user_ids: None,
        users: None,
        model,
        shards,
        slices,
        epochs: None,
        seed,
        out: a.out.clone(),
        batch_size: None,
        lr: None,
        optimizer: None,
        standardize: None,
        scale: None,
        augment_shift: None,
        min_steps: None,
        shard_by: ShardBy::User,
        slice_by: SliceBy::User,
        deletion_prior: None,
        deletion_prior_column: None,
        risk_threshold: 0.5,
        risk_shards: 0,
        user_column: "user_id".into(),
        label_column: "label".into(),
        classes: None,
        aggregate: Aggregation::Mean,
        ledger: None,
        plan_only: false,
        device: DeviceSpec::Cpu,
        backend: None,
    };
    let summary = train::train_run(&train_options(&targs, g)?)?;
    let run = summary.run;
    let agg = Aggregation::Mean;
    let (x, y) = eval_rows(&run, None)?;
    let before = Ensemble::load(&run)?.evaluate(&x, &y, agg);
    say(format!(
        "2/5 eval: accuracy {:.4} on {} held-out rows",
        before.accuracy, before.rows
    ));

    // Three users in three different shards: the first user (in file order) of shards 0, 1, 2.
    let table = sisa::data::read_labelled(
        &InputSpec::file(&train_csv),
        sisa::data::Features::All,
        seed,
        sisa::data::Role::Train,
    )?;
    let mut chosen: Vec<(usize, String)> = Vec::new();
    for id in table.user_ids.as_ref().expect("required column") {
        let k = sisa::plan::shard_of_user(seed, id, shards);
        if !chosen.iter().any(|(s, u)| *s == k || u == id) && k < 3 {
            chosen.push((k, id.clone()));
        }
    }
    chosen.sort();
    let ids: Vec<String> = chosen.iter().map(|(_, u)| u.clone()).collect();
    say(format!(
        "3/5 unlearn: users {} (shards 0, 1, 2)",
        ids.join(", ")
    ));
    drop(run);
    let started = Instant::now();
    let mut unlearner = unlearn::Unlearner::open(&a.out, None, &g.options())?;
    let receipt = unlearner.forget(&ids)?;
    let request = receipt.request;
    let unlearn_seconds = started.elapsed().as_secs_f64();
    let (run, _ledger, _lock) = unlearner.into_parts();

    say("4/5 verify: retraining every shard from scratch on the remaining data".into());
    let verdicts = sisa::verify::verify(&run, None, g.threads(), !quiet)?;
    let identical = verdicts.iter().all(|v| v.identical);

    let (x, y) = eval_rows(&run, None)?;
    let after = Ensemble::load(&run)?.evaluate(&x, &y, agg);
    say(format!(
        "5/5 eval: accuracy {:.4} on {} held-out rows",
        after.accuracy, after.rows
    ));

    let receipt_path = run.dir.path(sisa::run::RunFile::Receipt(request));
    if g.json {
        print_json(&json!({
            "run": a.out,
            "dataset": "digits",
            "shards": shards,
            "slices": slices,
            "training_seconds": summary.seconds,
            "training_rows_epochs": summary.rows_epochs,
            "accuracy_before": before.accuracy,
            "version_before": before.version,
            "users": ids,
            "receipt": receipt,
            "unlearn_seconds": unlearn_seconds,
            "accuracy_after": after.accuracy,
            "version_after": after.version,
            "identical": identical,
            "receipt_file": receipt_path,
        }));
        return Ok(if identical { 0 } else { 3 });
    }
    println!("sisa quickstart: digits (1,797 images 8x8, 10 classes), MLP, S={shards} shards, R={slices} slices");
    println!("  run directory           {}", a.out.display());
    println!(
        "  training                {:.2}s, {} rows x epochs",
        summary.seconds, summary.rows_epochs
    );
    println!(
        "  accuracy before         {:.4} (version {})",
        before.accuracy, before.version
    );
    println!(
        "  unlearned               {} users, {} training + {} held-out rows, request {request}",
        receipt.user_keys.len(),
        receipt.train_rows_removed,
        receipt.test_rows_removed
    );
    for s in &receipt.shards {
        println!(
            "    shard {}: {} row(s) removed, {} of {slices} stages retrained",
            s.shard, s.rows_removed, s.stages_retrained
        );
    }
    println!("    {} other shard(s) untouched", receipt.untouched_shards);
    println!(
        "  unlearning cost         {} rows x epochs = {:.1}% of a full retrain ({}), {:.2}s",
        receipt.cost.retrained_rows_epochs,
        100.0 * receipt.cost.fraction,
        receipt.cost.full_retrain_rows_epochs,
        unlearn_seconds
    );
    println!(
        "  accuracy after          {:.4} (version {})",
        after.accuracy, after.version
    );
    println!(
        "  verify                  {}",
        if identical {
            "every shard is bitwise identical to a from-scratch retrain without the users"
        } else {
            "FAILED: a shard differs from a from-scratch retrain"
        }
    );
    println!("  receipt                 {}", receipt_path.display());
    Ok(if identical { 0 } else { 3 })
}

/// A `--shards` list (a newtype: clap reads a bare `Vec` as a repeated flag).
#[derive(Clone, Debug)]
struct ShardList(Vec<usize>);

fn parse_shards(text: &str) -> std::result::Result<ShardList, String> {
    sisa::scale::shards::parse_shard_list(text).map(ShardList)
}

/// The task index of this job-array task, from Slurm's or Kubernetes' environment.
fn task_index_from_env() -> Result<usize> {
    for var in ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"] {
        if let Ok(v) = std::env::var(var) {
            return v.trim().parse().map_err(|_| {
                sisa::Error::Usage(format!(
                    "--shard-from-env: {var} is '{v}', not a task index"
                ))
                .into()
            });
        }
    }
    Err(sisa::Error::Usage(
        "--shard-from-env: neither SLURM_ARRAY_TASK_ID nor JOB_COMPLETION_INDEX is set; run it as a \
         task of a Slurm job array or a Kubernetes Indexed Job, or name the shard with --shard K"
            .into(),
    )
    .into())
}

fn cmd_train_shard(a: TrainShardArgs, g: &Global) -> Result<i32> {
    use sisa::train::task::{self, Outcome, Planned};
    let planned = Planned::open(&a.run)?;
    let shards: Vec<usize> = if a.shard_from_env {
        let index = task_index_from_env()?;
        let list = a
            .shards
            .clone()
            .map_or_else(|| planned.plan.shards(), |l| l.0);
        let Some(&k) = list.get(index) else {
            return Err(sisa::Error::Usage(format!(
                "--shard-from-env: task index {index} is beyond the {} shard(s) of {}",
                list.len(),
                if a.shards.is_some() {
                    "--shards"
                } else {
                    "the plan"
                }
            ))
            .into());
        };
        vec![k]
    } else {
        let mut all = a.shard.clone();
        all.extend(a.shards.iter().flat_map(|l| l.0.iter()));
        all.sort_unstable();
        all.dedup();
        if all.is_empty() {
            return Err(sisa::Error::Usage(
                "name the shards to train: --shard K, --shards LIST, or --shard-from-env in a job array"
                    .into(),
            )
            .into());
        }
        all
    };
    let outcomes = task::train_shards(&planned, &shards, g.threads(), !g.quiet)?;
    let id = planned.plan.short_id();
    let mut out = Vec::new();
    for (k, o) in &outcomes {
        let (state, result) = match o {
            Outcome::Trained { result, .. } => ("trained", Some(result)),
            Outcome::AlreadyDone(result) => ("already_done", Some(result)),
            Outcome::NotPending => ("not_pending", None),
        };
        if !g.json {
            match (o, result) {
                (Outcome::Trained { resumed, .. }, Some(r)) => println!(
                    "shard {k}: trained stages {}..{} for plan {id} in {:.2}s{} on {}; model {}",
                    r.first_stage + resumed,
                    planned.run.config.slices,
                    r.seconds,
                    if *resumed > 0 {
                        format!(" ({resumed} stage(s) resumed from an earlier attempt)")
                    } else {
                        String::new()
                    },
                    r.host,
                    r.model_digest
                ),
                (_, Some(r)) => println!(
                    "shard {k}: already trained for plan {id}; model {}",
                    r.model_digest
                ),
                _ => println!("shard {k}: nothing to train (plan {id} does not retrain it)"),
            }
        }
        out.push(json!({
            "shard": k,
            "state": state,
            "first_stage": result.map(|r| r.first_stage),
            "model_digest": result.map(|r| &r.model_digest),
            "machine": result.map(|r| &r.machine),
            "seconds": result.map(|r| r.seconds),
        }));
    }
    if g.json {
        print_json(&json!({"run": a.run, "plan": planned.plan.id, "shards": out}));
    }
    Ok(0)
}

fn cmd_publish(a: PublishArgs, g: &Global) -> Result<i32> {
    use sisa::scale::publish::{publish, Outcome, PublishOptions};
    let opts = PublishOptions {
        ledger: a.run.ledger.clone(),
        wait: a.wait.then(|| std::time::Duration::from_secs(a.timeout)),
        unlearn: g.options(),
    };
    match publish(&a.run.run, &opts)? {
        Outcome::Published(p) => {
            if g.json {
                print_json(&json!({
                    "run": a.run.run,
                    "published": true,
                    "version": p.version,
                    "shards": p.shards,
                    "requests": p.requests,
                    "machine": p.machine,
                }));
            } else {
                println!(
                    "published version {} of {}: {} shard(s) trained by their tasks on '{}'{}",
                    p.version,
                    a.run.run.display(),
                    p.shards.len(),
                    p.machine,
                    if p.requests.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; deletion request(s) {:?} complete, receipts in {}",
                            p.requests,
                            a.run.run.join("receipts").display()
                        )
                    }
                );
            }
        }
        Outcome::NothingPending { version } => {
            if g.json {
                print_json(&json!({"run": a.run.run, "published": false, "version": version}));
            } else {
                println!(
                    "nothing to publish: version {version} is published and no plan is pending"
                );
            }
        }
    }
    Ok(0)
}

/// The tasks a generated job runs: the plan's shards (those still without a result, with
/// `--pending`), the run's absolute path, the plan's id and the run's name.
fn task_list(a: &JobShards, sisa: String) -> Result<sisa::scale::shards::TaskList> {
    let planned = sisa::train::task::Planned::open(&a.run)?;
    let dir = sisa::run::RunDir::new(&a.run);
    let shards: Vec<usize> = planned
        .plan
        .shards()
        .into_iter()
        .filter(|&k| !a.pending || planned.plan.result_of(&dir, k).is_err())
        .collect();
    if shards.is_empty() {
        bail!(
            "{}: every shard task of plan {} has finished; run sisa publish --run {}",
            a.run.display(),
            planned.plan.short_id(),
            a.run.display()
        );
    }
    let run = std::fs::canonicalize(&a.run).with_context(|| a.run.display().to_string())?;
    Ok(sisa::scale::shards::TaskList {
        run,
        sisa,
        shards,
        plan: planned.plan.id.clone(),
        name: planned.run.config.name.clone(),
    })
}

fn cmd_slurm(a: SlurmArgs) -> Result<i32> {
    let sisa_path = match &a.sisa {
        Some(p) => std::path::absolute(p).with_context(|| p.display().to_string())?,
        None => std::env::current_exe().context("the path of this sisa binary")?,
    };
    let tasks = task_list(&a.shards, sisa_path.to_string_lossy().into_owned())?;
    let opts = sisa::scale::slurm::SlurmOptions {
        partition: a.partition,
        time: a.time,
        cpus_per_task: a.cpus_per_task,
        mem: a.mem,
        account: a.account,
        qos: a.qos,
        gres: a.gres,
        constraint: a.constraint,
        job_name: a.job_name,
        max_parallel: a.max_parallel,
        output: a.output,
        extra: a.extra,
        max_array_size: a.max_array_size,
    };
    let script = sisa::scale::slurm::sbatch_script(&tasks, &opts).map_err(sisa::Error::Usage)?;
    print!("{script}");
    Ok(0)
}

fn cmd_k8s(a: K8sArgs) -> Result<i32> {
    let tasks = task_list(&a.shards, a.sisa.clone())?;
    let mut opts = sisa::scale::k8s::K8sOptions::new(a.image, a.pvc);
    opts.mount_path = a.mount_path;
    opts.run_path = a.run_path;
    opts.namespace = a.namespace;
    opts.name = a.name;
    opts.parallelism = a.parallelism;
    opts.cpu = a.cpu;
    opts.memory = a.memory;
    opts.backoff_limit = a.backoff_limit;
    opts.publish_timeout = a.publish_timeout;
    opts.image_pull_policy = a.image_pull_policy;
    opts.service_account = a.service_account;
    let yaml = sisa::scale::k8s::manifests(&tasks, &opts).map_err(sisa::Error::Usage)?;
    print!("{yaml}");
    Ok(0)
}
