//! No ghost window: a deletion acknowledged by another process (`sisa unlearn` beside a running
//! `sisa serve`) leaves the shard that held the user out of every answer within 100 ms of the
//! acknowledgement, until the version that forgot the user is served.

mod serving;

use serde_json::Value;
use serving::*;
use sisa::plan::shard_of_user;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SHARDS: usize = 5;
/// The bound the server promises between an acknowledgement and the shard leaving answers.
const BOUND: Duration = Duration::from_millis(100);

/// One answer: when its request was sent, the version, and the shards left out.
type Seen = (Instant, u64, Vec<usize>);

fn excluded(answer: &Value) -> Vec<usize> {
    answer["parameters"]["excluded_shards"]
        .as_array()
        .unwrap_or_else(|| panic!("no excluded_shards in {answer}"))
        .iter()
        .map(|v| v.as_u64().expect("a shard number") as usize)
        .collect()
}

#[test]
fn a_deletion_acknowledged_by_sisa_unlearn_leaves_every_answer_within_100_ms() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("ghost");
    // Enough epochs that retraining one shard takes a while: the window under test is the
    // time between the acknowledgement and the new version.
    let o = Command::new(BIN)
        .arg("train")
        .arg("--data")
        .arg(repo("datasets/digits/train.csv"))
        .arg("--model")
        .arg(repo("models/mlp.toml"))
        .args(["--shards", &SHARDS.to_string(), "--slices", "2"])
        .args(["--epochs", "600", "-q", "--out"])
        .arg(&run)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let user = digits_users().remove(0);
    let shard = shard_of_user(SEED, &user, SHARDS);
    let server = Server::start(&run, &[], &[]);

    // A client that asks without pause and notes every answer.
    let body = infer_body(&digits_rows(1), None);
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let client = {
        let (stop, seen, mut c, path) = (
            stop.clone(),
            seen.clone(),
            server.client(),
            server.path("/infer"),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                let r = c
                    .post(&path, &[("Content-Type", "application/json")], &body)
                    .expect("infer request");
                assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                let a = r.json();
                seen.lock()
                    .unwrap()
                    .push((sent, version_of(&a), excluded(&a)));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));

    let mut unlearn = Command::new(BIN)
        .args(["unlearn", "--run"])
        .arg(&run)
        .args(["--user", &user])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ack = None;
    let mut said = String::new();
    for line in BufReader::new(unlearn.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if ack.is_none() && line.contains("accepted and recorded") {
            ack = Some(Instant::now());
        }
        said.push_str(&line);
        said.push('\n');
    }
    assert!(unlearn.wait().unwrap().success(), "{said}");
    let ack = ack.unwrap_or_else(|| panic!("sisa unlearn never said it accepted: {said}"));
    let finished = Instant::now();

    // Until the new version is served (the watcher sees CURRENT within its interval).
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.lock().unwrap().last().is_none_or(|s| s.1 < 2) {
        assert!(Instant::now() < deadline, "version 2 never served");
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();

    let seen = seen.lock().unwrap();
    let ghosts: Vec<&Seen> = seen
        .iter()
        .filter(|(sent, version, out)| {
            *sent >= ack + BOUND && *version < 2 && !out.contains(&shard)
        })
        .collect();
    assert!(
        ghosts.is_empty(),
        "{} answer(s) sent more than {BOUND:?} after the acknowledgement came from version 1 with shard {shard}, which held the user",
        ghosts.len()
    );
    // The window the test covers: answers of version 1 with the shard left out.
    let covered = seen
        .iter()
        .filter(|(sent, version, out)| *sent >= ack && *version < 2 && out.contains(&shard))
        .count();
    let first_excluded = seen
        .iter()
        .find(|(sent, _, out)| *sent >= ack && out.contains(&shard))
        .map(|(sent, _, _)| sent.duration_since(ack));
    assert!(
        covered > 0,
        "no answer came between the acknowledgement and the new version ({:?} of retraining): the test measured nothing",
        finished - ack
    );
    assert!(seen.iter().all(|(_, v, out)| *v < 2 || out.is_empty()));
    println!(
        "{} answers; {covered} from version 1 without shard {shard} after the acknowledgement; the first {:?} after it; retraining and publishing took {:?}",
        seen.len(),
        first_excluded,
        finished - ack
    );
}
