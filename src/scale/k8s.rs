//! Kubernetes manifests that train a plan's shards as an Indexed Job and then publish.
//!
//! Two documents: an Indexed Job whose pod `i` runs
//! `SISA train-shard --run RUN --shard-from-env --shards LIST` (Kubernetes sets
//! `JOB_COMPLETION_INDEX`), and a publish Job, applied at the same time, that runs
//! `SISA publish --run RUN --wait --timeout T`: it waits on the shared volume for every
//! shard's result. Both mount one PersistentVolumeClaim, which must be ReadWriteMany.
//!
//! The YAML is written by hand: every string scalar is a JSON string (`serde_json`), which
//! YAML reads as the same string, and each container's `command` is one JSON array on one
//! line. Names are DNS-1123 labels short enough that the highest pod hostname
//! (`<name>-<index>`) and the publish Job's `<name>-publish` stay within 63 characters, as
//! the API server requires.

use super::shards::{plain_text, TaskList};

/// The longest DNS-1123 label, and so the longest Job name that also names pods.
const DNS_LABEL_MAX: usize = 63;

/// Suffix of the publish Job's name.
const PUBLISH_SUFFIX: &str = "-publish";

/// Seconds the publish Job may run beyond its `--timeout`: for its pod to be scheduled and
/// its image pulled before the wait starts, and for the publish itself after it.
pub const PUBLISH_DEADLINE_MARGIN_S: u64 = 600;

/// What the generated manifests ask of Kubernetes. `image` and `pvc` are required;
/// [`K8sOptions::new`] sets every other field to its default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct K8sOptions {
    /// The container image holding `sisa`. Required.
    pub image: String,
    /// The PersistentVolumeClaim that holds the run (ReadWriteMany). Required.
    pub pvc: String,
    /// Where the claim is mounted in every pod, an absolute path. Default: `/runs`.
    pub mount_path: String,
    /// The run's directory inside the pods, under `mount_path`. Default:
    /// `<mount_path>/<file name of the run's directory>`.
    pub run_path: Option<String>,
    /// `metadata.namespace` of both Jobs. Default: none (kubectl's current namespace).
    pub namespace: Option<String>,
    /// The shard Job's name; the publish Job is this plus `-publish`. Must be a DNS-1123
    /// label that leaves room for the suffixes. Default: `sisa-<run name>`, lowercased, other
    /// characters than `[a-z0-9-]` made `-`, and cut to fit.
    pub name: Option<String>,
    /// Most shard pods running at once. Default: none (all tasks at once).
    pub parallelism: Option<usize>,
    /// CPU request of each shard pod, a Kubernetes quantity. Default: `"1"`.
    pub cpu: String,
    /// Memory request and limit of each shard pod (`"4Gi"`). Default: none.
    pub memory: Option<String>,
    /// `backoffLimit` of both Jobs: pod failures retried before a Job fails. Default: 6,
    /// Kubernetes' own.
    pub backoff_limit: u32,
    /// Seconds the publish Job waits for the shards (`--timeout`); its
    /// `activeDeadlineSeconds` is this plus [`PUBLISH_DEADLINE_MARGIN_S`]. Default: 86400.
    pub publish_timeout: u64,
    /// `imagePullPolicy` of every container: `Always`, `IfNotPresent` or `Never`. Default:
    /// none (Kubernetes': `Always` for a `:latest` or untagged image, else `IfNotPresent`).
    pub image_pull_policy: Option<String>,
    /// `serviceAccountName` of every pod. Default: none (the namespace's default).
    pub service_account: Option<String>,
}

impl K8sOptions {
    /// Options for `image` and `pvc`, every other field at its default.
    pub fn new(image: impl Into<String>, pvc: impl Into<String>) -> Self {
        K8sOptions {
            image: image.into(),
            pvc: pvc.into(),
            mount_path: "/runs".to_string(),
            run_path: None,
            namespace: None,
            name: None,
            parallelism: None,
            cpu: "1".to_string(),
            memory: None,
            backoff_limit: 6,
            publish_timeout: 86_400,
            image_pull_policy: None,
            service_account: None,
        }
    }
}

/// A string as a YAML scalar: a JSON string, which YAML reads as the same string.
fn q(value: &str) -> String {
    serde_json::to_string(value).expect("serializing a string cannot fail")
}

/// Argument vector as one JSON flow sequence on one line.
fn flow(args: &[&str]) -> String {
    let items: Vec<String> = args.iter().map(|a| q(a)).collect();
    format!("[{}]", items.join(", "))
}

/// Why `name` is not a DNS-1123 label (lowercase alphanumerics and `-`, starting and ending
/// with an alphanumeric, at most 63 characters), or `None` when it is one.
fn dns_label_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("is empty".to_string());
    }
    if name.len() > DNS_LABEL_MAX {
        return Some(format!(
            "is {} characters, more than {DNS_LABEL_MAX}",
            name.len()
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Some("may hold only lowercase letters, digits and `-`".to_string());
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Some("must start and end with a letter or digit".to_string());
    }
    None
}

/// Refuses a value that is not a DNS-1123 label, naming `field`.
fn dns_label(field: &str, value: &str) -> Result<(), String> {
    match dns_label_problem(value) {
        None => Ok(()),
        Some(why) => Err(format!(
            "{field}: `{}` is not a DNS-1123 label: it {why}",
            value.escape_debug()
        )),
    }
}

/// Refuses a value that is not a DNS-1123 subdomain (dot-separated labels, at most 253
/// characters), the rule for a claim's and a service account's name.
fn dns_subdomain(field: &str, value: &str) -> Result<(), String> {
    if value.len() > 253 {
        return Err(format!(
            "{field}: `{value}` is longer than 253 characters, the most a Kubernetes name has"
        ));
    }
    for label in value.split('.') {
        if let Some(why) = dns_label_problem(label) {
            return Err(format!(
                "{field}: `{}` is not a Kubernetes name (DNS-1123 subdomain): `{label}` {why}",
                value.escape_debug()
            ));
        }
    }
    Ok(())
}

/// Refuses what is not a Kubernetes quantity (`1`, `500m`, `1.5`, `4Gi`, `2e3`), naming
/// `field`.
fn quantity(field: &str, value: &str) -> Result<(), String> {
    let bad = || {
        Err(format!(
            "{field}: `{}` is not a Kubernetes quantity (like 1, 500m, 4Gi)",
            value.escape_debug()
        ))
    };
    let number_end = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, suffix) = value.split_at(number_end);
    let digits = number.bytes().filter(u8::is_ascii_digit).count();
    if digits == 0 || number.matches('.').count() > 1 {
        return bad();
    }
    let exponent = |e: &str| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit())
    };
    let ok = match suffix {
        "" | "n" | "u" | "m" | "k" | "M" | "G" | "T" | "P" | "E" => true,
        "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => true,
        s => (s.starts_with('e') || s.starts_with('E')) && exponent(&s[1..]),
    };
    if ok {
        Ok(())
    } else {
        bad()
    }
}

/// `value` as a label value: at most 63 of `[A-Za-z0-9._-]`, starting and ending with an
/// alphanumeric; other characters become `-`. `fallback` when nothing is left.
fn label_value(value: &str, fallback: &str) -> String {
    let mapped: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(DNS_LABEL_MAX)
        .collect();
    let mut collapsed = String::new();
    for c in mapped.chars() {
        if !(c == '-' && collapsed.ends_with('-')) {
            collapsed.push(c);
        }
    }
    let trimmed = collapsed.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if trimmed.is_empty() {
        fallback.to_string()
    } else {
        trimmed.to_string()
    }
}

/// The longest shard Job name for `tasks` tasks: room for `-<highest index>` in pod
/// hostnames and for `-publish` in the publish Job's name.
fn name_room(tasks: usize) -> usize {
    let index = format!("-{}", tasks - 1).len();
    DNS_LABEL_MAX - index.max(PUBLISH_SUFFIX.len())
}

/// The default Job name: `sisa-<run name>` made a DNS-1123 label of at most `room` characters.
fn default_name(run_name: &str, room: usize) -> String {
    let mut name = String::from("sisa-");
    for c in run_name.chars() {
        let c = c.to_ascii_lowercase();
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() {
            c
        } else {
            '-'
        };
        if !(c == '-' && name.ends_with('-')) {
            name.push(c);
        }
    }
    name.truncate(room);
    let name = name.trim_end_matches('-');
    if name == "sisa" || name.is_empty() {
        "sisa".to_string()
    } else {
        name.to_string()
    }
}

/// Checks `path` is an absolute path in a pod, without `.` or `..` components; returns it
/// without a trailing `/`.
fn pod_path<'a>(field: &str, path: &'a str) -> Result<&'a str, String> {
    plain_text(field, path)?;
    if !path.starts_with('/') {
        return Err(format!("{field}: `{path}` is not an absolute path"));
    }
    if path.split('/').any(|c| c == "." || c == "..") {
        return Err(format!(
            "{field}: `{path}` holds a `.` or `..` component; give the path itself"
        ));
    }
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return Err(format!(
            "{field}: `/` cannot be a mount point; give a directory"
        ));
    }
    Ok(trimmed)
}

/// The two manifests (shard Job, then publish Job, separated by `---`) that train `tasks`
/// on Kubernetes and publish the run. Refuses an invalid task list, names that Kubernetes
/// would refuse, a run path outside the mounted volume, and bad quantities or policies.
pub fn manifests(tasks: &TaskList, opts: &K8sOptions) -> Result<String, String> {
    let list = tasks.check()?;
    plain_text("image", &opts.image)?;
    if opts.image.contains(char::is_whitespace) {
        return Err(format!("image: `{}` holds a space", opts.image));
    }
    dns_subdomain("pvc", &opts.pvc)?;
    let mount = pod_path("mount_path", &opts.mount_path)?;
    let run_path = match &opts.run_path {
        Some(p) => {
            let p = pod_path("run_path", p)?;
            let inside = p
                .strip_prefix(mount)
                .is_some_and(|rest| rest.starts_with('/'));
            if !inside {
                return Err(format!(
                    "run_path: `{p}` is not inside mount_path `{mount}`, where the volume is mounted"
                ));
            }
            p.to_string()
        }
        None => {
            let dir = tasks
                .run
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| {
                    format!(
                        "run: {} has no directory name to find it by under mount_path; give run_path",
                        tasks.run.display()
                    )
                })?;
            format!("{mount}/{dir}")
        }
    };
    if let Some(ns) = &opts.namespace {
        dns_label("namespace", ns)?;
    }
    if let Some(sa) = &opts.service_account {
        dns_subdomain("service_account", sa)?;
    }
    quantity("cpu", &opts.cpu)?;
    if let Some(m) = &opts.memory {
        quantity("memory", m)?;
    }
    if let Some(p) = &opts.image_pull_policy {
        if !matches!(p.as_str(), "Always" | "IfNotPresent" | "Never") {
            return Err(format!(
                "image_pull_policy: `{}` is none of Always, IfNotPresent, Never",
                p.escape_debug()
            ));
        }
    }
    if opts.parallelism == Some(0) {
        return Err("parallelism: must be at least 1".to_string());
    }
    if opts.publish_timeout == 0 {
        return Err("publish_timeout: must be at least 1 second".to_string());
    }
    let count = tasks.shards.len();
    let room = name_room(count);
    let name = match &opts.name {
        Some(n) => {
            dns_label("name", n)?;
            if n.len() > room {
                return Err(format!(
                    "name: `{n}` is {} characters; with {count} tasks at most {room} leave room \
                     for the pods' `-{}` and the publish Job's `{PUBLISH_SUFFIX}` in 63",
                    n.len(),
                    count - 1
                ));
            }
            n.clone()
        }
        None => default_name(&tasks.name, room),
    };
    let publish_name = format!("{name}{PUBLISH_SUFFIX}");
    let plan_label = &tasks.plan[..tasks.plan.len().min(16)];
    let run_label = label_value(&tasks.name, "run");

    let train_cmd = [
        tasks.sisa.as_str(),
        "train-shard",
        "--run",
        &run_path,
        "--shard-from-env",
        "--shards",
        &list,
    ];
    let timeout = opts.publish_timeout.to_string();
    let publish_cmd = [
        tasks.sisa.as_str(),
        "publish",
        "--run",
        &run_path,
        "--wait",
        "--timeout",
        &timeout,
    ];

    let job = |name: &str, component: &str, command: &[&str], spec: &[String]| {
        let mut y = String::new();
        y.push_str("apiVersion: \"batch/v1\"\nkind: \"Job\"\nmetadata:\n");
        y.push_str(&format!("  name: {}\n", q(name)));
        if let Some(ns) = &opts.namespace {
            y.push_str(&format!("  namespace: {}\n", q(ns)));
        }
        let labels = [
            ("app.kubernetes.io/name", "sisa".to_string()),
            ("app.kubernetes.io/component", component.to_string()),
            ("sisa/run", run_label.clone()),
            ("sisa/plan", plan_label.to_string()),
        ];
        let write_labels = |y: &mut String, indent: &str| {
            y.push_str(&format!("{indent}labels:\n"));
            for (k, v) in &labels {
                y.push_str(&format!("{indent}  {k}: {}\n", q(v)));
            }
        };
        write_labels(&mut y, "  ");
        y.push_str("  annotations:\n");
        y.push_str(&format!("    sisa/plan: {}\n", q(&tasks.plan)));
        y.push_str(&format!("    sisa/run-path: {}\n", q(&run_path)));
        y.push_str("spec:\n");
        for line in spec {
            y.push_str(&format!("  {line}\n"));
        }
        y.push_str(&format!("  backoffLimit: {}\n", opts.backoff_limit));
        y.push_str("  template:\n    metadata:\n");
        write_labels(&mut y, "      ");
        y.push_str("    spec:\n      restartPolicy: \"Never\"\n");
        if let Some(sa) = &opts.service_account {
            y.push_str(&format!("      serviceAccountName: {}\n", q(sa)));
        }
        y.push_str("      containers:\n");
        y.push_str(&format!("        - name: {}\n", q(component)));
        y.push_str(&format!("          image: {}\n", q(&opts.image)));
        if let Some(p) = &opts.image_pull_policy {
            y.push_str(&format!("          imagePullPolicy: {}\n", q(p)));
        }
        y.push_str(&format!("          command: {}\n", flow(command)));
        y.push_str("          resources:\n            requests:\n");
        if component == "train-shard" {
            y.push_str(&format!("              cpu: {}\n", q(&opts.cpu)));
            if let Some(m) = &opts.memory {
                y.push_str(&format!("              memory: {}\n", q(m)));
                y.push_str("            limits:\n");
                y.push_str(&format!("              memory: {}\n", q(m)));
            }
        } else {
            // Publishing checks digests and renames files: one CPU at most.
            y.push_str("              cpu: \"100m\"\n");
        }
        y.push_str("          volumeMounts:\n            - name: \"run\"\n");
        y.push_str(&format!("              mountPath: {}\n", q(mount)));
        y.push_str("      volumes:\n        - name: \"run\"\n");
        y.push_str("          persistentVolumeClaim:\n");
        y.push_str(&format!("            claimName: {}\n", q(&opts.pvc)));
        y
    };

    let parallelism = opts.parallelism.unwrap_or(count);
    let train = job(
        &name,
        "train-shard",
        &train_cmd,
        &[
            "completionMode: \"Indexed\"".to_string(),
            format!("completions: {count}"),
            format!("parallelism: {parallelism}"),
        ],
    );
    let publish = job(
        &publish_name,
        "publish",
        &publish_cmd,
        &[format!(
            "activeDeadlineSeconds: {}",
            opts.publish_timeout
                .saturating_add(PUBLISH_DEADLINE_MARGIN_S)
        )],
    );
    let mut out = format!(
        "# sisa: plan {plan} of run {run:?}.\n\
         # Job {name} trains {count} shard(s) ({list}), one per pod index; Job {publish_name}\n\
         # waits for them (up to {timeout} s) on the shared volume and publishes the run.\n\
         # Apply both at once: kubectl apply -f THIS_FILE\n\
         # The claim {pvc} must be ReadWriteMany: every pod mounts it at {mount}, and the run\n\
         # must be at {run_path} in it.\n",
        plan = tasks.plan,
        run = tasks.name,
        pvc = opts.pvc,
    );
    out.push_str(&train);
    out.push_str("---\n");
    out.push_str(&publish);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::process::Command;

    fn tasks(name: &str, shards: Vec<usize>) -> TaskList {
        TaskList {
            run: PathBuf::from("/mnt/shared/big"),
            sisa: "sisa".to_string(),
            shards,
            plan: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".to_string(),
            name: name.to_string(),
        }
    }

    /// Every `command:` line's JSON array, in document order.
    fn commands(yaml: &str) -> Vec<Vec<String>> {
        yaml.lines()
            .filter_map(|l| l.trim_start().strip_prefix("command: "))
            .map(|json| serde_json::from_str(json).expect("command is one JSON array"))
            .collect()
    }

    /// The JSON string after `key: ` on the first line that has it, decoded.
    fn scalar(yaml: &str, key: &str) -> String {
        let prefix = format!("{key}: ");
        let line = yaml
            .lines()
            .map(str::trim_start)
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no {key} in\n{yaml}"));
        serde_json::from_str(&line[prefix.len()..]).expect("a JSON string")
    }

    #[test]
    fn two_jobs_with_the_commands_read_back() {
        let t = tasks("big", (0..200).collect());
        let y = manifests(&t, &K8sOptions::new("registry.example/sisa:1.0", "runs")).unwrap();
        let docs: Vec<&str> = y.split("\n---\n").collect();
        assert_eq!(docs.len(), 2, "{y}");
        assert_eq!(
            commands(&y),
            [
                vec![
                    "sisa",
                    "train-shard",
                    "--run",
                    "/runs/big",
                    "--shard-from-env",
                    "--shards",
                    "0-199"
                ],
                vec![
                    "sisa",
                    "publish",
                    "--run",
                    "/runs/big",
                    "--wait",
                    "--timeout",
                    "86400"
                ],
            ]
        );
        for line in [
            "completionMode: \"Indexed\"",
            "completions: 200",
            "parallelism: 200",
            "backoffLimit: 6",
            "restartPolicy: \"Never\"",
            "mountPath: \"/runs\"",
            "claimName: \"runs\"",
            "sisa/plan: \"9f86d081884c7d65\"",
            "sisa/run: \"big\"",
            "cpu: \"1\"",
        ] {
            assert!(
                docs[0].lines().any(|l| l.trim() == line),
                "no {line} in\n{}",
                docs[0]
            );
        }
        assert_eq!(scalar(docs[0], "name"), "sisa-big");
        assert_eq!(scalar(docs[1], "name"), "sisa-big-publish");
        assert!(docs[1].contains("activeDeadlineSeconds: 87000\n"));
        assert!(!docs[1].contains("completionMode"));
        assert!(y.starts_with("# sisa: plan 9f86d08"));
        assert!(y.contains("ReadWriteMany"));
        assert!(y.contains("kubectl apply -f"));
    }

    #[test]
    fn options_are_written() {
        let t = tasks("big", vec![3, 7, 12, 13]);
        let mut o = K8sOptions::new("img", "shared-runs");
        o.mount_path = "/data/".into();
        o.run_path = Some("/data/team/big2".into());
        o.namespace = Some("ml".into());
        o.name = Some("train-big".into());
        o.parallelism = Some(2);
        o.cpu = "500m".into();
        o.memory = Some("4Gi".into());
        o.backoff_limit = 1;
        o.publish_timeout = 60;
        o.image_pull_policy = Some("Always".into());
        o.service_account = Some("sisa-runner".into());
        let y = manifests(&t, &o).unwrap();
        assert_eq!(commands(&y)[0][3], "/data/team/big2");
        assert_eq!(commands(&y)[0][6], "3,7,12-13");
        assert_eq!(commands(&y)[1][6], "60");
        for line in [
            "name: \"train-big\"",
            "name: \"train-big-publish\"",
            "namespace: \"ml\"",
            "parallelism: 2",
            "cpu: \"500m\"",
            "memory: \"4Gi\"",
            "backoffLimit: 1",
            "activeDeadlineSeconds: 660",
            "imagePullPolicy: \"Always\"",
            "serviceAccountName: \"sisa-runner\"",
            "mountPath: \"/data\"",
        ] {
            assert!(y.lines().any(|l| l.trim() == line), "no {line} in\n{y}");
        }
        assert_eq!(y.matches("namespace: \"ml\"").count(), 2);
    }

    #[test]
    fn hostile_strings_survive_as_json() {
        let mut t = tasks("Ünïcode \"run\" #1: {x}", vec![0]);
        t.sisa = "/opt/my sisa/\"bin\"\\sisa".into();
        t.run = PathBuf::from("/mnt/it's: #a [run]");
        let y = manifests(&t, &K8sOptions::new("img:1", "runs")).unwrap();
        let cmds = commands(&y);
        assert_eq!(cmds[0][0], t.sisa);
        assert_eq!(cmds[0][3], "/runs/it's: #a [run]");
        assert_eq!(scalar(&y, "sisa/run-path"), "/runs/it's: #a [run]");
        // Name and label made valid from the run's name.
        assert_eq!(scalar(&y, "name"), "sisa-n-code-run-1-x");
        assert_eq!(scalar(&y, "sisa/run"), "n-code-run-1-x");
    }

    #[test]
    fn names_fit_the_pods_and_the_publish_job() {
        let long = "A".repeat(100);
        for count in [1, 10, 1000, 4096] {
            let t = tasks(&long, (0..count).collect());
            let y = manifests(&t, &K8sOptions::new("img", "runs")).unwrap();
            let name = scalar(&y, "name");
            assert!(dns_label_problem(&name).is_none(), "{name}");
            assert!(name.len() + PUBLISH_SUFFIX.len() <= 63, "{name}");
            assert!(format!("{name}-{}", count - 1).len() <= 63, "{name}");
            assert_eq!(name.len(), 55);
        }
        // A cut that ends on `-` drops it.
        let t = tasks(&format!("{}-b", "a".repeat(49)), vec![0]);
        let y = manifests(&t, &K8sOptions::new("img", "runs")).unwrap();
        assert_eq!(scalar(&y, "name"), format!("sisa-{}", "a".repeat(49)));
        assert_eq!(default_name("!!!", 55), "sisa");
        assert_eq!(default_name("My Run__2024", 55), "sisa-my-run-2024");

        let t = tasks("big", vec![0, 1]);
        let mut o = K8sOptions::new("img", "runs");
        o.name = Some("Big".into());
        assert!(manifests(&t, &o).unwrap_err().starts_with("name: `Big`"));
        o.name = Some("a".repeat(56));
        let e = manifests(&t, &o).unwrap_err();
        assert!(e.contains("at most 55"), "{e}");
        o.name = Some("a".repeat(55));
        assert!(manifests(&t, &o).is_ok());
    }

    #[test]
    fn bad_values_are_refused_by_field() {
        let t = tasks("big", vec![0, 1]);
        let refused = |change: &dyn Fn(&mut K8sOptions), want: &str| {
            let mut o = K8sOptions::new("img", "runs");
            change(&mut o);
            let e = manifests(&t, &o).unwrap_err();
            assert!(e.starts_with(want), "want {want:?}, got {e}");
        };
        refused(&|o| o.image = String::new(), "image: empty");
        refused(&|o| o.image = "a\nb".into(), "image:");
        refused(&|o| o.image = "a b".into(), "image:");
        refused(&|o| o.pvc = "Runs".into(), "pvc:");
        refused(&|o| o.pvc = String::new(), "pvc:");
        refused(&|o| o.mount_path = "runs".into(), "mount_path:");
        refused(&|o| o.mount_path = "/".into(), "mount_path:");
        refused(&|o| o.mount_path = "/a/../b".into(), "mount_path:");
        refused(&|o| o.run_path = Some("/other/big".into()), "run_path:");
        refused(&|o| o.run_path = Some("/runsbig".into()), "run_path:");
        refused(&|o| o.run_path = Some("/runs".into()), "run_path:");
        refused(&|o| o.namespace = Some("my_ns".into()), "namespace:");
        refused(
            &|o| o.service_account = Some("a..b".into()),
            "service_account:",
        );
        refused(&|o| o.cpu = "one".into(), "cpu:");
        refused(&|o| o.cpu = String::new(), "cpu:");
        refused(&|o| o.memory = Some("4GB".into()), "memory:");
        refused(&|o| o.memory = Some("4.5.1Gi".into()), "memory:");
        refused(
            &|o| o.image_pull_policy = Some("always".into()),
            "image_pull_policy:",
        );
        refused(&|o| o.parallelism = Some(0), "parallelism:");
        refused(&|o| o.publish_timeout = 0, "publish_timeout:");
        for good in [
            "1", "500m", "1.5", "0.25", ".5", "4Gi", "2e3", "1E-2", "10M",
        ] {
            assert!(quantity("cpu", good).is_ok(), "{good}");
        }
        let mut root = tasks("big", vec![0]);
        root.run = PathBuf::from("/");
        let e = manifests(&root, &K8sOptions::new("img", "runs")).unwrap_err();
        assert!(e.starts_with("run:"), "{e}");
    }

    /// `kubernetes-validate --strict` (PyPI `kubernetes-validate`, run as
    /// `python3 -m kubernetes_validate`, so wherever pip put its scripts), against the oldest
    /// and the newest Kubernetes it knows (Indexed Jobs are GA since 1.24). Skips with the
    /// reason when it is absent, and fails instead when `CI` is set.
    #[test]
    fn manifests_pass_kubernetes_validate() {
        const INSTALL: &str = "python3 -m pip install kubernetes-validate==1.37.0";
        let validate = || {
            let mut cmd = Command::new("python3");
            cmd.args(["-m", "kubernetes_validate"]);
            cmd
        };
        let why = match validate().arg("--version").output() {
            Ok(o) if o.status.success() => None,
            Ok(o) => Some(String::from_utf8_lossy(&o.stderr).trim().to_string()),
            Err(e) => Some(format!("cannot run python3: {e}")),
        };
        if let Some(why) = why {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set and this test cannot run: {why}; install with: {INSTALL}"
            );
            println!("skipped: {why}; {INSTALL} to run this test");
            return;
        }
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut hostile = tasks("Ünïcode \"run\" #1: {x}", (0..120).collect());
        hostile.run = PathBuf::from("/mnt/it's: #a [run]");
        let mut full = K8sOptions::new("registry.example/sisa:1.0", "shared-runs");
        full.namespace = Some("ml".into());
        full.parallelism = Some(8);
        full.cpu = "500m".into();
        full.memory = Some("4Gi".into());
        full.image_pull_policy = Some("IfNotPresent".into());
        full.service_account = Some("sisa".into());
        let cases = [
            (
                tasks("big", (0..200).collect()),
                K8sOptions::new("sisa:1", "runs"),
            ),
            (hostile, full),
        ];
        for (i, (t, o)) in cases.iter().enumerate() {
            let path = dir.path().join(format!("case-{i}.yaml"));
            std::fs::write(&path, manifests(t, o).unwrap()).expect("write the manifests");
            // The checker is strict for real: a misspelt field fails it.
            let bad = dir.path().join(format!("bad-{i}.yaml"));
            let misspelt = manifests(t, o)
                .unwrap()
                .replace("completionMode:", "completionmode:");
            std::fs::write(&bad, misspelt).expect("write the manifests");
            let out = validate()
                .args(["--strict", "-k", "1.37.0"])
                .arg(&bad)
                .output()
                .expect("kubernetes-validate runs");
            assert!(!out.status.success(), "a misspelt field passed");
            for version in ["1.25.0", "1.37.0"] {
                let out = validate()
                    .args(["--strict", "-k", version])
                    .arg(&path)
                    .output()
                    .expect("kubernetes-validate runs");
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(
                    out.status.success(),
                    "case {i}, Kubernetes {version}: {text}{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                // Both documents were checked, not skipped.
                assert_eq!(
                    text.matches(" passed for resource job/").count(),
                    2,
                    "case {i}, {version}: {text}"
                );
            }
        }
    }
}
