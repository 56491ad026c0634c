//! One `sbatch` script that trains a plan's shards as a Slurm job array and then publishes.
//!
//! Task `i` of the array runs `SISA train-shard --run RUN --shard-from-env --shards LIST`,
//! which trains the `i`-th shard of LIST. Task 0, on its first attempt only, submits
//! `SISA publish --run RUN` as a job that depends `afterok` on the whole array, with
//! `--kill-on-invalid-dep=yes`: it runs once every task has succeeded, and is cancelled (not
//! left pending for ever) when one fails. The script is pure text; nothing here runs Slurm.
//!
//! Quoting: the shell lines quote every value in single quotes (`'\''` for a quote inside).
//! `#SBATCH` lines are read by sbatch's own parser, not by a shell: it honours single quotes
//! like a shell, but a backslash escapes the next character even inside quotes, so a
//! backslash there is written `\\` (checked with Slurm 22.05's sbatch).

use super::shards::{plain_text, TaskList};

/// Slurm's default `MaxArraySize`: array indices run from 0 to 1000.
pub const SLURM_DEFAULT_MAX_ARRAY_SIZE: usize = 1001;

/// What the generated `sbatch` script asks of Slurm. Every value is refused when it is empty
/// or holds a newline (or any other control character).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlurmOptions {
    /// `--partition` of every task and of the publish job. Default: none (the cluster's
    /// default partition).
    pub partition: Option<String>,
    /// `--time` limit of each task and of the publish job, in any form sbatch takes
    /// (`30`, `4:00:00`, `1-12:00:00`). Default: none (the partition's default).
    pub time: Option<String>,
    /// `--cpus-per-task` of each task. Default: 1.
    pub cpus_per_task: usize,
    /// `--mem` of each task (`4G`). Default: none (the cluster's default).
    pub mem: Option<String>,
    /// `--account` of every task and of the publish job. Default: none.
    pub account: Option<String>,
    /// `--qos` of every task and of the publish job. Default: none.
    pub qos: Option<String>,
    /// `--gres` of each task (`gpu:1`). Default: none.
    pub gres: Option<String>,
    /// `--constraint` of each task. Default: none.
    pub constraint: Option<String>,
    /// `--job-name` of the array; the publish job is named this plus `-publish`.
    /// Default: `sisa-<run name>`.
    pub job_name: Option<String>,
    /// Most tasks running at once (the array's `%N` throttle). Default: none (no throttle).
    pub max_parallel: Option<usize>,
    /// `--output` pattern of each task (`logs/%x-%A_%a.out`). Default: none (Slurm's
    /// `slurm-%A_%a.out` in the directory sbatch is run from; the publish job's log is
    /// `slurm-<job id>.out` there too).
    pub output: Option<String>,
    /// More `#SBATCH` lines, each given without the `#SBATCH ` prefix and written as given
    /// (`--exclusive`, `--mail-type=END`). Each must start with `-`; `--array` is refused (the
    /// script sets it). Default: none.
    pub extra: Vec<String>,
    /// The cluster's `MaxArraySize` (`scontrol show config | grep MaxArraySize`): a plan with
    /// more tasks than this is refused here rather than by sbatch. Default: 1001, Slurm's.
    pub max_array_size: usize,
}

impl Default for SlurmOptions {
    fn default() -> Self {
        SlurmOptions {
            partition: None,
            time: None,
            cpus_per_task: 1,
            mem: None,
            account: None,
            qos: None,
            gres: None,
            constraint: None,
            job_name: None,
            max_parallel: None,
            output: None,
            extra: Vec::new(),
            max_array_size: SLURM_DEFAULT_MAX_ARRAY_SIZE,
        }
    }
}

/// The variables Slurm sets in an array task, which a job it submits would inherit.
const ARRAY_VARIABLES: [&str; 6] = [
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_MAX",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_STEP",
];

/// `value` in single quotes for a POSIX shell (`'` becomes `'\''`).
pub fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// `value` quoted for an `#SBATCH` line, which sbatch's parser reads: single quotes as in a
/// shell, and a backslash, which escapes the next character even inside quotes, doubled.
fn sbatch_quote(value: &str) -> String {
    shell_quote(&value.replace('\\', r"\\"))
}

/// The `sbatch` script that trains `tasks` as one job array and then publishes the run.
/// Refuses an invalid task list, a relative `sisa` or run path (every node must find them),
/// bad option values, and more tasks than `opts.max_array_size`.
pub fn sbatch_script(tasks: &TaskList, opts: &SlurmOptions) -> Result<String, String> {
    let list = tasks.check()?;
    let run = tasks.run_str()?;
    if !tasks.sisa.starts_with('/') {
        return Err(format!(
            "sisa: `{}` is not an absolute path; every node runs the same binary by its absolute path",
            tasks.sisa
        ));
    }
    if !run.starts_with('/') {
        return Err(format!(
            "run: `{run}` is not an absolute path; every node must see the run at the same path"
        ));
    }
    // Each optional value is an sbatch option of the same name on every task.
    let per_task = [
        ("partition", &opts.partition),
        ("time", &opts.time),
        ("mem", &opts.mem),
        ("account", &opts.account),
        ("qos", &opts.qos),
        ("gres", &opts.gres),
        ("constraint", &opts.constraint),
        ("output", &opts.output),
    ];
    for (field, value) in per_task.iter().chain([&("job_name", &opts.job_name)]) {
        if let Some(v) = value {
            plain_text(field, v)?;
        }
    }
    if opts.cpus_per_task == 0 {
        return Err("cpus_per_task: must be at least 1".to_string());
    }
    if opts.max_parallel == Some(0) {
        return Err("max_parallel: must be at least 1".to_string());
    }
    for (i, line) in opts.extra.iter().enumerate() {
        let field = format!("extra[{i}]");
        plain_text(&field, line)?;
        if !line.starts_with('-') {
            return Err(format!(
                "{field}: `{line}` is not an sbatch option (give it without `#SBATCH`, like --exclusive)"
            ));
        }
        let option = line.split(['=', ' ']).next().unwrap_or(line);
        if option == "--array" || (option.starts_with("-a") && !option.starts_with("--")) {
            return Err(format!(
                "{field}: `{line}` sets the array, which the script sets from the plan"
            ));
        }
    }
    let count = tasks.shards.len();
    if count > opts.max_array_size {
        return Err(format!(
            "the plan has {count} shard tasks, more than the cluster's MaxArraySize of {} \
             (indices 0 to {}). Ask the cluster's administrators to raise MaxArraySize in \
             slurm.conf (and check it with `scontrol show config | grep MaxArraySize`), then \
             set max_array_size to it",
            opts.max_array_size,
            opts.max_array_size.saturating_sub(1)
        ));
    }
    let job_name = opts
        .job_name
        .clone()
        .unwrap_or_else(|| format!("sisa-{}", tasks.name));

    let mut s = String::from("#!/bin/bash\n");
    let mut sbatch = |option: &str, value: &str| {
        s.push_str(&format!("#SBATCH --{option}={}\n", sbatch_quote(value)));
    };
    sbatch("job-name", &job_name);
    let mut array = format!("0-{}", count - 1);
    if let Some(n) = opts.max_parallel {
        array.push_str(&format!("%{n}"));
    }
    sbatch("array", &array);
    sbatch("cpus-per-task", &opts.cpus_per_task.to_string());
    for (option, value) in per_task {
        if let Some(v) = value {
            sbatch(option, v);
        }
    }
    for line in &opts.extra {
        s.push_str(&format!("#SBATCH {line}\n"));
    }

    s.push_str(&format!(
        "# sisa: plan {plan} of run {name:?} ({run}).\n\
         # Trains {count} shard(s), one per array task (task i trains the i-th of {list}),\n\
         # then publishes: task 0, on its first attempt, submits `sisa publish` as a job that\n\
         # runs after every task has succeeded and is cancelled if any fails.\n\
         # Submit with: sbatch THIS_FILE. Rerunning it after a failure retrains only what is\n\
         # missing (train-shard is idempotent).\n",
        plan = tasks.plan,
        name = tasks.name,
    ));
    s.push_str("set -euo pipefail\n");

    let publish = format!(
        "{} publish --run {}",
        shell_quote(&tasks.sisa),
        shell_quote(run)
    );
    // A job submitted from a job inherits its environment: without these the publish job
    // would see SLURM_ARRAY_TASK_ID=0 as if it were task 0.
    let mut submit: Vec<String> = ["env"]
        .into_iter()
        .chain(ARRAY_VARIABLES.iter().flat_map(|v| ["-u", v]))
        .map(str::to_string)
        .collect();
    submit.extend([
        "sbatch".to_string(),
        "--parsable".to_string(),
        format!("--job-name={}", shell_quote(&format!("{job_name}-publish"))),
        "--dependency=\"afterok:${SLURM_ARRAY_JOB_ID}\"".to_string(),
        "--kill-on-invalid-dep=yes".to_string(),
    ]);
    for (option, value) in [
        ("partition", &opts.partition),
        ("account", &opts.account),
        ("qos", &opts.qos),
        ("time", &opts.time),
    ] {
        if let Some(v) = value {
            submit.push(format!("--{option}={}", shell_quote(v)));
        }
    }
    // --wrap's text is run by /bin/sh, so it is quoted twice: once for that shell, once here.
    submit.push(format!("--wrap={}", shell_quote(&publish)));
    s.push_str(
        "if [ \"${SLURM_ARRAY_TASK_ID:?submit this script with sbatch}\" = 0 ] \
         && [ \"${SLURM_RESTART_COUNT:-0}\" = 0 ]; then\n",
    );
    s.push_str(&format!("  publish=$({})\n", submit.join(" ")));
    s.push_str(
        "  echo \"sisa: publish job ${publish%%;*} runs once every task of array ${SLURM_ARRAY_JOB_ID} has succeeded\"\n",
    );
    s.push_str("fi\n");
    s.push_str(&format!(
        "exec {} train-shard --run {} --shard-from-env --shards {}\n",
        shell_quote(&tasks.sisa),
        shell_quote(run),
        shell_quote(&list)
    ));
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    fn tasks(run: &str, sisa: &str, shards: Vec<usize>) -> TaskList {
        TaskList {
            run: PathBuf::from(run),
            sisa: sisa.to_string(),
            shards,
            plan: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".to_string(),
            name: "big".to_string(),
        }
    }

    /// An executable shell script at `path`.
    fn write_script(path: &Path, body: &str) {
        std::fs::write(path, body).expect("write a script");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .expect("make the script executable");
    }

    /// Runs `script` with bash under `env`, asserting it succeeds.
    fn run_bash(script: &Path, env: &[(&str, &str)], path: Option<&Path>) {
        let mut cmd = Command::new("bash");
        cmd.arg(script)
            .env_remove("SLURM_ARRAY_TASK_ID")
            .env_remove("SLURM_RESTART_COUNT");
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(dir) = path {
            let old = std::env::var("PATH").unwrap_or_default();
            cmd.env("PATH", format!("{}:{old}", dir.display()));
        }
        let out = cmd.output().expect("bash runs");
        assert!(
            out.status.success(),
            "bash {}: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The arguments a recorder script wrote, one per NUL-terminated field.
    fn recorded(path: &Path) -> Vec<String> {
        let bytes = std::fs::read(path).expect("the recorder ran");
        String::from_utf8(bytes)
            .expect("UTF-8")
            .split_terminator('\0')
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn script_has_the_array_the_publish_and_the_task() {
        let t = tasks("/shared/runs/big", "/opt/sisa/bin/sisa", (0..200).collect());
        let opts = SlurmOptions {
            partition: Some("gpu".into()),
            time: Some("4:00:00".into()),
            cpus_per_task: 4,
            mem: Some("16G".into()),
            account: Some("ml".into()),
            qos: Some("high".into()),
            gres: Some("gpu:1".into()),
            constraint: Some("a100".into()),
            max_parallel: Some(20),
            output: Some("/shared/logs/%x-%A_%a.out".into()),
            extra: vec!["--exclusive".into(), "--mail-type=END".into()],
            ..SlurmOptions::default()
        };
        let s = sbatch_script(&t, &opts).unwrap();
        assert!(s.starts_with("#!/bin/bash\n"), "{s}");
        for line in [
            "#SBATCH --job-name='sisa-big'",
            "#SBATCH --array='0-199%20'",
            "#SBATCH --cpus-per-task='4'",
            "#SBATCH --partition='gpu'",
            "#SBATCH --time='4:00:00'",
            "#SBATCH --mem='16G'",
            "#SBATCH --account='ml'",
            "#SBATCH --qos='high'",
            "#SBATCH --gres='gpu:1'",
            "#SBATCH --constraint='a100'",
            "#SBATCH --output='/shared/logs/%x-%A_%a.out'",
            "#SBATCH --exclusive",
            "#SBATCH --mail-type=END",
            "set -euo pipefail",
            "exec '/opt/sisa/bin/sisa' train-shard --run '/shared/runs/big' --shard-from-env --shards '0-199'",
        ] {
            assert!(s.lines().any(|l| l == line), "no line {line:?} in\n{s}");
        }
        assert!(s.contains(&format!("# sisa: plan {}", t.plan)), "{s}");
        // sbatch reads #SBATCH lines only before the first command.
        let first_command = s.lines().position(|l| l == "set -euo pipefail").unwrap();
        assert!(s
            .lines()
            .skip(first_command)
            .all(|l| !l.starts_with("#SBATCH")));
        let submit = s
            .lines()
            .find(|l| l.contains("publish=$(env -u SLURM_ARRAY_JOB_ID"))
            .expect("a publish submission");
        for part in [
            "--parsable",
            "--job-name='sisa-big-publish'",
            "--dependency=\"afterok:${SLURM_ARRAY_JOB_ID}\"",
            "--kill-on-invalid-dep=yes",
            "--partition='gpu'",
            "--account='ml'",
            "--qos='high'",
            "--time='4:00:00'",
        ] {
            assert!(submit.contains(part), "no {part} in {submit}");
        }
        // The publish job needs no GPU, nor the tasks' memory.
        assert!(!submit.contains("gres") && !submit.contains("--mem"));
        assert!(s.contains("SLURM_RESTART_COUNT:-0}\" = 0"));
        // Without options: one CPU per task, no throttle, no optional lines.
        let plain = sbatch_script(&t, &SlurmOptions::default()).unwrap();
        assert!(plain.contains("#SBATCH --array='0-199'\n"));
        assert!(plain.contains("#SBATCH --cpus-per-task='1'\n"));
        assert_eq!(plain.matches("#SBATCH").count(), 3, "{plain}");
        let status = Command::new("bash")
            .args(["-n", "-c", &s])
            .status()
            .expect("bash runs");
        assert!(status.success(), "bash -n refuses\n{s}");
    }

    /// A run path and a binary path with a space and a quote, and a job name with a
    /// backslash: the train-shard, sbatch and publish command lines each arrive as the argv
    /// intended, run through bash and (for --wrap) through sh, as Slurm runs them.
    #[test]
    fn hostile_paths_survive_both_shells() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let bin = dir.path().join("my bin's dir");
        std::fs::create_dir(&bin).unwrap();
        let argv_file = dir.path().join("argv");
        let sisa = bin.join("si sa'");
        write_script(&sisa, "#!/bin/sh\nprintf '%s\\0' \"$@\" > \"$ARGV_FILE\"\n");
        let run = "/shared/it's a run/big $HOME `x` \\n";
        let t = tasks(run, sisa.to_str().unwrap(), vec![3, 7, 12, 13, 14, 15]);
        let opts = SlurmOptions {
            job_name: Some(r"a b'c\d".into()),
            partition: Some("p'1".into()),
            ..SlurmOptions::default()
        };
        let s = sbatch_script(&t, &opts).unwrap();
        assert!(s.contains(r"#SBATCH --job-name='a b'\''c\\d'"), "{s}");
        let script = dir.path().join("job.sh");
        std::fs::write(&script, &s).unwrap();
        let argv = argv_file.to_str().unwrap();

        // Any task but 0 trains its shard and submits nothing.
        run_bash(
            &script,
            &[("SLURM_ARRAY_TASK_ID", "1"), ("ARGV_FILE", argv)],
            None,
        );
        assert_eq!(
            recorded(&argv_file),
            [
                "train-shard",
                "--run",
                run,
                "--shard-from-env",
                "--shards",
                "3,7,12-15"
            ]
        );

        // Task 0 submits the publish job first; a stand-in sbatch records its argv.
        let fake = dir.path().join("fake-bin");
        std::fs::create_dir(&fake).unwrap();
        let sbatch_argv = dir.path().join("sbatch-argv");
        write_script(
            &fake.join("sbatch"),
            &format!(
                "#!/bin/sh\nprintf '%s\\0' \"$@\" \"task=${{SLURM_ARRAY_TASK_ID:-unset}}\" > {}\necho '4242;cluster'\n",
                shell_quote(sbatch_argv.to_str().unwrap())
            ),
        );
        run_bash(
            &script,
            &[
                ("SLURM_ARRAY_TASK_ID", "0"),
                ("SLURM_ARRAY_JOB_ID", "77"),
                ("ARGV_FILE", argv),
            ],
            Some(&fake),
        );
        let submitted = recorded(&sbatch_argv);
        assert_eq!(
            &submitted[..5],
            [
                "--parsable",
                r"--job-name=a b'c\d-publish",
                "--dependency=afterok:77",
                "--kill-on-invalid-dep=yes",
                "--partition=p'1",
            ]
        );
        assert_eq!(submitted.len(), 7, "{submitted:?}");
        // The publish job is no array task.
        assert_eq!(submitted[6], "task=unset");
        // sbatch --wrap runs its text with /bin/sh.
        let wrap = submitted[5].strip_prefix("--wrap=").unwrap();
        let out = Command::new("sh")
            .args(["-c", wrap])
            .env("ARGV_FILE", argv)
            .output()
            .expect("sh runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(recorded(&argv_file), ["publish", "--run", run]);

        // A restarted task 0 (requeued) does not submit a second publish job.
        std::fs::remove_file(&sbatch_argv).unwrap();
        run_bash(
            &script,
            &[
                ("SLURM_ARRAY_TASK_ID", "0"),
                ("SLURM_RESTART_COUNT", "1"),
                ("SLURM_ARRAY_JOB_ID", "77"),
                ("ARGV_FILE", argv),
            ],
            Some(&fake),
        );
        assert!(!sbatch_argv.exists(), "a restarted task 0 submitted again");
        assert_eq!(recorded(&argv_file)[0], "train-shard");
    }

    #[test]
    fn run_outside_slurm_says_so() {
        let t = tasks("/runs/big", "/bin/true", vec![0]);
        let s = sbatch_script(&t, &SlurmOptions::default()).unwrap();
        let out = Command::new("bash")
            .args(["-c", &s])
            .env_remove("SLURM_ARRAY_TASK_ID")
            .output()
            .expect("bash runs");
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("submit this script with sbatch"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn bad_values_are_refused_by_field() {
        let t = tasks("/runs/big", "/opt/sisa", vec![0, 1]);
        let refused = |opts: SlurmOptions, want: &str| {
            let e = sbatch_script(&t, &opts).unwrap_err();
            assert!(e.contains(want), "want {want:?}, got {e}");
        };
        refused(
            SlurmOptions {
                partition: Some(String::new()),
                ..SlurmOptions::default()
            },
            "partition: empty",
        );
        refused(
            SlurmOptions {
                account: Some("a\nb".into()),
                ..SlurmOptions::default()
            },
            "account:",
        );
        refused(
            SlurmOptions {
                output: Some("x\r".into()),
                ..SlurmOptions::default()
            },
            "output:",
        );
        refused(
            SlurmOptions {
                cpus_per_task: 0,
                ..SlurmOptions::default()
            },
            "cpus_per_task",
        );
        refused(
            SlurmOptions {
                max_parallel: Some(0),
                ..SlurmOptions::default()
            },
            "max_parallel",
        );
        refused(
            SlurmOptions {
                extra: vec!["exclusive".into()],
                ..SlurmOptions::default()
            },
            "extra[0]: `exclusive` is not an sbatch option",
        );
        refused(
            SlurmOptions {
                extra: vec!["--exclusive".into(), "--array=0-3".into()],
                ..SlurmOptions::default()
            },
            "extra[1]",
        );
        refused(
            SlurmOptions {
                extra: vec!["-a 0-3".into()],
                ..SlurmOptions::default()
            },
            "sets the array",
        );
        refused(
            SlurmOptions {
                extra: vec![String::new()],
                ..SlurmOptions::default()
            },
            "extra[0]: empty",
        );
        let relative = tasks("runs/big", "/opt/sisa", vec![0]);
        let e = sbatch_script(&relative, &SlurmOptions::default()).unwrap_err();
        assert!(e.starts_with("run:"), "{e}");
        let relative = tasks("/runs/big", "sisa", vec![0]);
        let e = sbatch_script(&relative, &SlurmOptions::default()).unwrap_err();
        assert!(e.starts_with("sisa:"), "{e}");
    }

    #[test]
    fn arrays_past_max_array_size_are_refused() {
        let most = tasks("/runs/big", "/opt/sisa", (0..1001).collect());
        let s = sbatch_script(&most, &SlurmOptions::default()).unwrap();
        assert!(s.contains("#SBATCH --array='0-1000'"));
        let more = tasks("/runs/big", "/opt/sisa", (0..1002).collect());
        let e = sbatch_script(&more, &SlurmOptions::default()).unwrap_err();
        assert!(
            e.contains("1002 shard tasks") && e.contains("MaxArraySize of 1001"),
            "{e}"
        );
        let raised = SlurmOptions {
            max_array_size: 5000,
            ..SlurmOptions::default()
        };
        let s = sbatch_script(&more, &raised).unwrap();
        assert!(s.contains("#SBATCH --array='0-1001'"));
    }
}
