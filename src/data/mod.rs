//! Data in and out: CSV ingest, the checksummed row store, user keys.
//!
//! Ingest turns a CSV into rows with an identity (user key, position among the user's rows,
//! tag), refusing bad input with the file, line and column; the row store keeps a shard's rows
//! in one checksummed file.

pub mod csv;
pub mod keys;
pub mod rows;

pub use keys::{Secret, UserKey};
pub use rows::{Rows, SliceIndex};
pub mod ingest;
