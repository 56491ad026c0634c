//! Hot swap: the served version, replaced atomically, never mixed.
//!
//! Every request loads one [`ServedVersion`] (an ensemble plus the shards left out of its
//! vote) and answers every row with it; a swap replaces the whole value at once, so an answer
//! comes from exactly one version and names it. New versions are loaded and checked in full
//! (configuration and manifest digests, every checkpoint's digest and lineage) off the request
//! path, by the [`Watcher`] thread, which polls `CURRENT`, or by the admin worker right after it
//! publishes. A version that fails to load, is older than the one served, or does not reflect a
//! deletion the ledger records as published, is refused and logged; the old one keeps serving.
//!
//! While a deletion request waits for its retrained shards, those shards are left out of the
//! vote ([`Serving::exclude`]), whoever accepted it: the admin worker excludes its own requests
//! as it accepts them, and the watcher follows the ledger every [`LEDGER_POLL`] for requests
//! accepted by other processes (`sisa unlearn`, another server, a recovery), using the shards
//! the `accepted` entry records. That is exact: with user sharding no other shard ever saw the
//! user's rows. The exclusion of request `r` lasts until a version that applied `r` is served.

use super::follow::LedgerTail;
use crate::ensemble::{Ensemble, Prediction};
use crate::error::{Error, Result};
use crate::run::{Aggregation, Run, RunDir, RunFile};
use crate::unlearn::{Ledger, RequestId, RunLock};
use arc_swap::ArcSwapOption;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One version as it is served: the ensemble and the shards left out of its vote.
#[derive(Debug)]
pub struct ServedVersion {
    /// The published ensemble.
    pub ensemble: Arc<Ensemble>,
    /// The last deletion request the ensemble reflects (the manifest's `applied_request`).
    pub applied_request: RequestId,
    /// Shards left out of the vote, ascending: each holds a user of a request that is
    /// acknowledged but not yet reflected in `ensemble`.
    pub excluded: Vec<usize>,
    /// Members that vote (members of shards not excluded).
    pub voting: usize,
}

impl ServedVersion {
    fn new(ensemble: Arc<Ensemble>, applied_request: RequestId, excluded: Vec<usize>) -> Self {
        let voting = ensemble
            .members
            .iter()
            .filter(|m| !excluded.contains(&m.shard))
            .count();
        ServedVersion {
            ensemble,
            applied_request,
            excluded,
            voting,
        }
    }

    /// The ensemble version.
    pub fn version(&self) -> u64 {
        self.ensemble.version
    }

    /// Predict `n` rows with every member that votes; `None` when every member is left out
    /// (every shard with rows holds a user whose deletion is in progress).
    pub fn predict(&self, x: &[f32], n: usize, agg: Aggregation) -> Option<Prediction> {
        (self.voting > 0).then(|| self.ensemble.predict_excluding(x, n, agg, &self.excluded))
    }
}

/// The serving state: the current version, swapped atomically, and the pending exclusions.
#[derive(Debug, Default)]
pub struct Serving {
    current: ArcSwapOption<ServedVersion>,
    /// Shards of acknowledged requests, by request. Writers hold this lock while they build
    /// and store a new [`ServedVersion`], so no update is lost; readers never take it.
    pending: Mutex<BTreeMap<RequestId, Vec<usize>>>,
    swaps: std::sync::atomic::AtomicU64,
    refused: std::sync::atomic::AtomicU64,
}

/// How often the served version changed, and how often a new one could not be served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwapCounters {
    /// Versions installed (the first included).
    pub swaps: u64,
    /// Published versions refused (the served one kept serving).
    pub refused: u64,
}

impl Serving {
    /// Nothing served yet.
    pub fn new() -> Serving {
        Serving::default()
    }

    /// The version to answer one request with (`None` until the first is installed).
    pub fn current(&self) -> Option<Arc<ServedVersion>> {
        self.current.load_full()
    }

    fn pending(&self) -> MutexGuard<'_, BTreeMap<RequestId, Vec<usize>>> {
        // A panic while the lock was held cannot leave the map half-updated: each update is one
        // insert or retain, and the served value is only ever replaced whole.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Build and store the served value for `ensemble`; the caller holds `pending`.
    fn store(
        &self,
        pending: &mut BTreeMap<RequestId, Vec<usize>>,
        ensemble: Arc<Ensemble>,
        applied: RequestId,
    ) -> Arc<ServedVersion> {
        pending.retain(|&r, _| r > applied);
        let excluded: BTreeSet<usize> = pending.values().flatten().copied().collect();
        let served = Arc::new(ServedVersion::new(
            ensemble,
            applied,
            excluded.into_iter().collect(),
        ));
        self.current.store(Some(served.clone()));
        served
    }

    /// Serve `ensemble`, which reflects every request up to `applied`, if it is newer than the
    /// served version; returns whether it was installed. The swap is one atomic store: a request
    /// in flight finishes on the version it loaded.
    pub fn install(&self, ensemble: Ensemble, applied: RequestId) -> bool {
        let mut pending = self.pending();
        if let Some(now) = self.current.load().as_ref() {
            if ensemble.version <= now.version() {
                return false;
            }
        }
        self.store(&mut pending, Arc::new(ensemble), applied);
        self.swaps
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        true
    }

    /// Count a published version that could not be served.
    pub fn note_refused(&self) {
        self.refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The swap counters.
    pub fn counters(&self) -> SwapCounters {
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        SwapCounters {
            swaps: load(&self.swaps),
            refused: load(&self.refused),
        }
    }

    /// Requests acknowledged whose shards are left out, waiting for their version.
    pub fn waiting(&self) -> usize {
        self.pending().len()
    }

    /// Leave `shards` out of the vote until a version that applied `request` is served.
    pub fn exclude(&self, request: RequestId, shards: &[usize]) {
        let mut pending = self.pending();
        pending.insert(request, shards.to_vec());
        if let Some(now) = self.current.load_full() {
            self.store(&mut pending, now.ensemble.clone(), now.applied_request);
        }
    }
}

/// Load the published version of the run at `root` and serve it if it is newer than the served
/// one. The caller holds the run lock, so a publish in progress is never seen half-done.
/// Returns the version installed, or `None` when the published version is the served one.
pub fn load_published_locked(root: &Path, ledger: &Path, serving: &Serving) -> Result<Option<u64>> {
    let run = Run::open(root)?;
    let version = run.manifest.version;
    if let Some(now) = serving.current() {
        if version == now.version() {
            return Ok(None);
        }
        if version < now.version() {
            return Err(Error::run(
                root,
                format!(
                    "the published version {version} is older than the served version {}: \
                     was a backup restored? `sisa recover` brings the run back in line",
                    now.version()
                ),
            ));
        }
    }
    check_not_rolled_back(&run, &Ledger::open(ledger)?)?;
    let ensemble = Ensemble::load(&run)?;
    if let Some(now) = serving.current() {
        let e = &now.ensemble;
        if ensemble.features != e.features || ensemble.classes != e.classes {
            return Err(Error::run(
                root,
                format!(
                    "version {version} takes {} features and {} classes, the served version {} \
                     takes {} and {}",
                    ensemble.features, ensemble.classes, e.version, e.features, e.classes
                ),
            ));
        }
    }
    let applied = run.manifest.applied_request;
    Ok(serving.install(ensemble, applied).then_some(version))
}

/// Refuse a published version that misses a request the ledger records as published: the
/// run was rolled back (a backup restored) and would bring a deleted user back.
fn check_not_rolled_back(run: &Run, ledger: &Ledger) -> Result<()> {
    let applied = run.manifest.applied_request;
    let missed = ledger
        .requests()
        .into_iter()
        .find(|&r| r > applied && ledger.find(r, "published").is_some());
    match missed {
        Some(r) => Err(Error::run(
            run.dir.root(),
            format!(
                "version {} does not reflect request {r}, which the ledger records as published: \
                 was a backup restored? `sisa recover` brings the run back in line",
                run.manifest.version
            ),
        )),
        None => Ok(()),
    }
}

/// How often a version that failed to load is tried again while `CURRENT` does not change.
const RETRY_FAILED: Duration = Duration::from_secs(10);

/// The thread that watches `CURRENT` and swaps in each new version.
#[derive(Debug)]
pub struct Watcher {
    stop: mpsc::Sender<()>,
    thread: JoinHandle<()>,
}

impl Watcher {
    /// Start watching the run at `root` every `interval`. `seen` is the content of `CURRENT`
    /// that the served version was loaded from.
    pub fn spawn(
        root: PathBuf,
        ledger: PathBuf,
        serving: Arc<Serving>,
        interval: Duration,
        seen: Vec<u8>,
    ) -> Result<Watcher> {
        let (stop, stopped) = mpsc::channel();
        let at = root.clone();
        let thread = std::thread::Builder::new()
            .name("sisa-watch".into())
            .spawn(move || watch(&root, &ledger, &serving, interval, seen, &stopped))
            .map_err(|e| Error::io(&at, e))?;
        Ok(Watcher { stop, thread })
    }

    /// Stop the thread and wait for it.
    pub fn stop(self) {
        // The thread stops when its channel closes.
        drop(self.stop);
        if self.thread.join().is_err() {
            super::log("the watcher thread panicked");
        }
    }
}

/// How often the ledger is checked for requests acknowledged by other processes: well inside
/// the 100 ms within which an acknowledged deletion's shards leave every answer.
pub const LEDGER_POLL: Duration = Duration::from_millis(20);

/// Leave out the shards of every request the ledger has accepted since the last poll (all
/// shards when a request did not record its shards); returns whether a request was published.
fn follow_ledger(tail: &mut LedgerTail, serving: &Serving, failing: &mut bool) -> bool {
    let found = match tail.poll() {
        Ok(f) => {
            *failing = false;
            f
        }
        Err(e) => {
            if !*failing {
                super::log(format!("cannot read {}: {e}", tail.path().display()));
                *failing = true;
            }
            return false;
        }
    };
    if found.unreadable > 0 {
        super::log(format!(
            "{} line(s) of {} could not be read as ledger entries",
            found.unreadable,
            tail.path().display()
        ));
    }
    for (request, shards) in found.accepted {
        let applied = serving.current().map_or(0, |s| s.applied_request);
        if request <= applied {
            continue;
        }
        let shards = shards.unwrap_or_else(|| match serving.current() {
            Some(s) => s.ensemble.members.iter().map(|m| m.shard).collect(),
            None => Vec::new(),
        });
        serving.exclude(request, &shards);
        super::log(format!(
            "request {request} acknowledged: shards {shards:?} left out of every answer until its version is served"
        ));
    }
    found.published
}

fn watch(
    root: &Path,
    ledger: &Path,
    serving: &Serving,
    interval: Duration,
    mut seen: Vec<u8>,
    stopped: &mpsc::Receiver<()>,
) {
    let current = RunDir::new(root).path(RunFile::Current);
    let mut tail = LedgerTail::new(ledger);
    let mut ledger_failing = false;
    // What the ledger holds already: requests accepted while the run was being opened.
    follow_ledger(&mut tail, serving, &mut ledger_failing);
    let mut failed_at: Option<Instant> = None;
    let mut unreadable = false;
    let mut checked = Instant::now();
    loop {
        match stopped.recv_timeout(LEDGER_POLL.min(interval)) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let published = follow_ledger(&mut tail, serving, &mut ledger_failing);
        if !published && checked.elapsed() < interval {
            continue;
        }
        checked = Instant::now();
        let now = match std::fs::read(&current) {
            Ok(bytes) => {
                unreadable = false;
                bytes
            }
            Err(e) => {
                if !unreadable {
                    super::log(format!("cannot read {}: {e}", current.display()));
                    unreadable = true;
                }
                continue;
            }
        };
        let retry = failed_at.is_some_and(|t| t.elapsed() >= RETRY_FAILED);
        if now == seen && !retry {
            continue;
        }
        // Never wait for the lock here: while another process holds it (retraining, then
        // cleaning up after its publish), this thread must go on following the ledger. The
        // new version is loaded at a later tick.
        let lock = match RunLock::try_acquire(root) {
            Ok(Some(lock)) => lock,
            Ok(None) => continue,
            Err(e) => {
                super::log(format!("cannot take the run's lock: {e}"));
                continue;
            }
        };
        seen = now;
        let was = serving.current().map(|s| s.version());
        let loaded = load_published_locked(root, ledger, serving);
        drop(lock);
        match loaded {
            Ok(Some(v)) => {
                failed_at = None;
                super::log(format!(
                    "serving version {v} (was {})",
                    was.map_or("none".into(), |w| w.to_string())
                ));
            }
            Ok(None) => failed_at = None,
            Err(e) => {
                failed_at = Some(Instant::now());
                serving.note_refused();
                super::log(format!(
                    "keeping version {}: the new version cannot be served: {e}",
                    was.map_or("none".into(), |w| w.to_string())
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ensemble::Member;
    use crate::model::{build, Activation, ModelConfig, Norm};

    fn ensemble(version: u64, shards: &[usize]) -> Ensemble {
        Ensemble {
            version,
            classes: 2,
            features: 2,
            members: shards
                .iter()
                .map(|&k| Member {
                    shard: k,
                    norm: Norm::identity(2),
                    model: build(&ModelConfig::dense(&[2, 2], Activation::Tanh, k as u64)).unwrap(),
                    rows: 1,
                })
                .collect(),
        }
    }

    #[test]
    fn exclusions_last_until_a_version_applies_the_request() {
        let s = Serving::new();
        assert!(s.current().is_none());
        assert!(s.install(ensemble(1, &[0, 1, 2]), 0));
        assert!(!s.install(ensemble(1, &[0, 1, 2]), 0), "same version");
        s.exclude(1, &[1]);
        s.exclude(2, &[2]);
        let now = s.current().unwrap();
        assert_eq!(
            (now.version(), now.excluded.clone(), now.voting),
            (1, vec![1, 2], 1)
        );
        // Version 2 applied request 1 only: shard 2 stays out.
        assert!(s.install(ensemble(2, &[0, 1, 2]), 1));
        assert_eq!(s.current().unwrap().excluded, [2]);
        assert!(s.install(ensemble(3, &[0, 1, 2]), 2));
        assert!(s.current().unwrap().excluded.is_empty());
        assert!(!s.install(ensemble(2, &[0, 1, 2]), 1), "older version");
        assert_eq!(s.current().unwrap().version(), 3);
    }

    #[test]
    fn a_version_with_every_member_left_out_predicts_nothing() {
        let s = Serving::new();
        s.install(ensemble(1, &[0, 1]), 0);
        let x = [0.5f32, -0.5];
        let all = s
            .current()
            .unwrap()
            .predict(&x, 1, Aggregation::Mean)
            .unwrap();
        s.exclude(1, &[1]);
        let some = s
            .current()
            .unwrap()
            .predict(&x, 1, Aggregation::Mean)
            .unwrap();
        let only0 = ensemble(1, &[0]).predict(&x, 1, Aggregation::Mean);
        assert_eq!(some, only0);
        assert_ne!(some, all);
        s.exclude(2, &[0]);
        assert!(s
            .current()
            .unwrap()
            .predict(&x, 1, Aggregation::Mean)
            .is_none());
    }
}
