//! Receipts: the proof handed back for a completed deletion request.
//!
//! A receipt names the request, the user keys (never raw ids), the rows removed, the shards
//! that held them with the stages each retrained, lineages and model digests before and after,
//! how many shards were untouched and the digest of every model of the new version, the
//! ensemble versions, timings and I/O, the cost against a full retrain and the paper's
//! expectation, and the hashes of the ledger entries it chains to. Its size follows the
//! request, not the run.

use crate::data::UserKey;
use crate::error::{Error, Result};
use crate::run::durable::Io;
use crate::run::Run;
use crate::unlearn::ledger::{Event, Ledger, Phases, RequestId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Schema tag of receipts. Version 2 lists the shards the request touched (not every shard)
/// and pins the rest of the version by `ensemble_digest`.
pub const RECEIPT_FORMAT: &str = "sisa-receipt/2";

/// One shard in a receipt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptShard {
    /// The shard.
    pub shard: usize,
    /// Rows of the users removed from it.
    pub rows_removed: u64,
    /// First stage retrained (0 when untouched).
    pub first_stage: usize,
    /// Stages retrained (0 when untouched).
    pub stages_retrained: usize,
    /// Lineage of the last stage before.
    pub lineage_before: String,
    /// Lineage of the last stage after.
    pub lineage_after: String,
    /// Model digest before.
    pub model_digest_before: String,
    /// Model digest after.
    pub model_digest_after: String,
}

/// Cost of the request against a full retrain, in rows×epochs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    /// Rows×epochs retrained.
    pub retrained_rows_epochs: u64,
    /// Rows×epochs of a full retrain: one model trained from scratch on every remaining row
    /// for the configured epochs (the SISA paper's baseline).
    pub full_retrain_rows_epochs: u64,
    /// Rows×epochs of retraining every shard of the run from scratch.
    pub ensemble_retrain_rows_epochs: u64,
    /// `retrained / full`.
    pub fraction: f64,
    /// Wall time of retraining, seconds.
    pub retrain_seconds: f64,
    /// What a request of as many users, owning as many rows, costs on average under the run's
    /// sharding and slicing rules (the SISA paper's expectation; absent in older receipts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_rows_epochs: Option<u64>,
}

/// What completing the request cost: wall time per phase and the files it read and wrote
/// (absent from receipts of sisa versions that did not measure it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    /// Wall time of each phase, seconds.
    pub phases: Phases,
    /// fsyncs, bytes written and read, training and held-out rows read.
    pub io: Io,
}

/// The proof of a completed request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    /// Schema tag, [`RECEIPT_FORMAT`].
    pub format: String,
    /// The run's name.
    pub run: String,
    /// The request number.
    pub request: RequestId,
    /// Keys of the users forgotten.
    pub user_keys: Vec<UserKey>,
    /// Training rows removed.
    pub train_rows_removed: u64,
    /// Held-out rows removed.
    pub test_rows_removed: u64,
    /// The shards that held the users' rows (every other shard is untouched).
    pub shards: Vec<ReceiptShard>,
    /// Shards the request did not touch.
    pub untouched_shards: usize,
    /// [`ensemble_digest`] of the published version: every shard's model, touched or not.
    pub ensemble_digest: String,
    /// Cost.
    pub cost: Cost,
    /// Ensemble version before.
    pub version_before: u64,
    /// Ensemble version that first excluded the users.
    pub ensemble_version: u64,
    /// Unix time the request was accepted.
    pub accepted_at: u64,
    /// Unix time the version without the users was published.
    pub published_at: u64,
    /// Hash of the ledger entry that accepted the request.
    pub accepted_entry: String,
    /// Hash of the ledger entry that recorded the publish.
    pub published_entry: String,
    /// Phase timings and I/O of the process that completed the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured: Option<Measured>,
}

/// SHA-256 over every shard's number and model digest, in shard order: which models a version
/// serves, in one value.
pub fn ensemble_digest(manifest: &crate::run::Manifest) -> String {
    let mut h = Sha256::new();
    for s in &manifest.shards {
        h.update((s.shard as u64).to_le_bytes());
        h.update(s.model_digest.as_bytes());
    }
    hex::encode(h.finalize())
}

/// Build request `r`'s receipt from the ledger and the run's published manifest.
pub fn build(run: &Run, ledger: &Ledger, r: RequestId) -> Result<Receipt> {
    let missing = |what: &str| {
        Error::Request(format!(
            "request {r} has no '{what}' entry in the ledger yet"
        ))
    };
    let accepted = ledger
        .find(r, "accepted")
        .ok_or_else(|| missing("accepted"))?;
    let users = ledger.users(r).unwrap_or_default().to_vec();
    let planned = ledger
        .find(r, "planned")
        .ok_or_else(|| missing("planned"))?;
    let published = ledger
        .events(r)
        .filter(|e| matches!(e.event, Event::Published { .. } | Event::Reapplied { .. }))
        .last()
        .ok_or_else(|| missing("published"))?;
    let version = match published.event {
        Event::Published { version } | Event::Reapplied { version } => version,
        _ => unreachable!("filtered above"),
    };
    let seconds = ledger
        .events(r)
        .filter_map(|e| match e.event {
            Event::Retrained { seconds } => Some(seconds),
            _ => None,
        })
        .last()
        .unwrap_or(0.0);
    let measured = ledger
        .events(r)
        .filter_map(|e| match &e.event {
            Event::Measured { phases, io } => Some(Measured {
                phases: *phases,
                io: *io,
            }),
            _ => None,
        })
        .last();
    let Event::Planned {
        version_before,
        shards,
        test_rows_removed,
        retrain_rows_epochs,
        full_retrain_rows_epochs,
        ensemble_retrain_rows_epochs,
        expected_rows_epochs,
    } = &planned.event
    else {
        unreachable!("found by name")
    };
    // The touched shards only: a receipt's size follows the request, not the run. The others
    // are pinned, with the touched ones, by the digest of every model of the version.
    let mut out = Vec::new();
    for b in shards {
        let Some(entry) = run.manifest.shards.get(b.shard) else {
            continue;
        };
        out.push(ReceiptShard {
            shard: b.shard,
            rows_removed: b.rows_removed,
            first_stage: b.first_stage,
            stages_retrained: run.config.slices + 1 - b.first_stage.min(run.config.slices + 1),
            lineage_before: b.lineage_before.clone(),
            lineage_after: entry
                .stages
                .last()
                .map(|s| s.lineage.to_hex())
                .unwrap_or_default(),
            model_digest_before: b.model_digest_before.clone(),
            model_digest_after: entry.model_digest.clone(),
        });
    }
    let fraction = if *full_retrain_rows_epochs == 0 {
        0.0
    } else {
        *retrain_rows_epochs as f64 / *full_retrain_rows_epochs as f64
    };
    Ok(Receipt {
        format: RECEIPT_FORMAT.to_string(),
        run: run.config.name.clone(),
        request: r,
        user_keys: users,
        train_rows_removed: shards.iter().map(|s| s.rows_removed).sum(),
        test_rows_removed: *test_rows_removed,
        untouched_shards: run.config.shards - out.len(),
        shards: out,
        ensemble_digest: ensemble_digest(&run.manifest),
        cost: Cost {
            retrained_rows_epochs: *retrain_rows_epochs,
            full_retrain_rows_epochs: *full_retrain_rows_epochs,
            ensemble_retrain_rows_epochs: *ensemble_retrain_rows_epochs,
            fraction,
            retrain_seconds: seconds,
            expected_rows_epochs: *expected_rows_epochs,
        },
        version_before: *version_before,
        ensemble_version: version,
        accepted_at: accepted.at,
        published_at: published.at,
        accepted_entry: accepted.hash.clone(),
        published_entry: published.hash.clone(),
        measured,
    })
}

/// What [`verify`] checked.
#[derive(Clone, Debug, Serialize)]
pub struct ReceiptCheck {
    /// The request.
    pub request: RequestId,
    /// The receipt's accepted and published entries are in the (intact) ledger chain, with the
    /// receipt's users and version.
    pub ledger_chain: bool,
    /// The receipt file is byte for byte the one the ledger recorded.
    pub receipt_recorded: bool,
    /// No row of the receipt's users is in the run's current data or held-out rows.
    pub rows_absent: bool,
    /// The published version is the receipt's, and its model digests are the receipt's (false
    /// when later versions were published since; the other checks still hold).
    pub models_match_current: bool,
    /// With `--user`: that user's key is among the receipt's keys.
    pub user_in_receipt: Option<bool>,
}

impl ReceiptCheck {
    /// True when every check that must hold holds.
    pub fn ok(&self) -> bool {
        self.ledger_chain
            && self.receipt_recorded
            && self.rows_absent
            && self.user_in_receipt != Some(false)
    }
}

/// Check the receipt in `bytes` against `ledger` (already verified on open) and the run's
/// current manifest and data; with `user`, recompute that user's key and look for it.
pub fn verify(
    run: &Run,
    ledger: &Ledger,
    bytes: &[u8],
    user: Option<&str>,
) -> Result<ReceiptCheck> {
    let receipt: Receipt = serde_json::from_slice(bytes)
        .map_err(|e| Error::Request(format!("not a sisa receipt: {e}")))?;
    if receipt.format != RECEIPT_FORMAT {
        return Err(Error::Request(format!(
            "receipt format '{}' is not {RECEIPT_FORMAT}",
            receipt.format
        )));
    }
    let r = receipt.request;
    let accepted = ledger.find(r, "accepted");
    let chain_accepted = accepted.is_some_and(|e| {
        e.hash == receipt.accepted_entry && ledger.users(r) == Some(receipt.user_keys.as_slice())
    });
    let chain_published = ledger.events(r).any(|e| {
        e.hash == receipt.published_entry
            && matches!(e.event, Event::Published { version } | Event::Reapplied { version } if version == receipt.ensemble_version)
    });
    let digest = hex::encode(Sha256::digest(bytes));
    let receipt_recorded = ledger
        .events(r)
        .any(|e| matches!(&e.event, Event::ReceiptWritten { digest: d } if *d == digest));
    let keys: std::collections::HashSet<UserKey> = receipt.user_keys.iter().copied().collect();
    let all = crate::unlearn::Loaded::everything(run)?;
    let rows_absent = all
        .shards
        .values()
        .chain(all.buckets.values())
        .all(|rows| rows.count_of(&keys) == 0);
    let models_match_current = run.manifest.version == receipt.ensemble_version
        && ensemble_digest(&run.manifest) == receipt.ensemble_digest
        && receipt.shards.iter().all(|s| {
            run.manifest
                .shards
                .get(s.shard)
                .is_some_and(|m| m.model_digest == s.model_digest_after)
        });
    let user_in_receipt = user.map(|id| keys.contains(&run.key(id)));
    Ok(ReceiptCheck {
        request: r,
        ledger_chain: chain_accepted && chain_published,
        receipt_recorded,
        rows_absent,
        models_match_current,
        user_in_receipt,
    })
}
