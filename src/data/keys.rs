//! User keys: the only form in which a user's id is kept inside a run.
//!
//! A run holds a random secret (`RUN/secret`, mode 0600). A user is named inside the run, in
//! the ledger and in receipts by `HMAC-SHA256(secret, user id)`, so none of those files holds a
//! raw user id, and whoever knows the id and the run can recompute the key.

use crate::error::{Error, IoContext, Result};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::fmt;
use std::path::Path;

/// Length of the run secret in bytes.
pub const SECRET_LEN: usize = 32;

/// The run's HMAC key.
#[derive(Clone)]
pub struct Secret([u8; SECRET_LEN]);

impl Secret {
    /// A fresh secret from the operating system's random source.
    pub fn generate() -> Result<Secret> {
        let mut bytes = [0u8; SECRET_LEN];
        getrandom::getrandom(&mut bytes)
            .map_err(|e| Error::Config(format!("cannot read the system's random source: {e}")))?;
        Ok(Secret(bytes))
    }

    /// The secret as stored in `RUN/secret`.
    pub fn as_bytes(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }

    /// Read and check a secret file.
    pub fn load(path: &Path) -> Result<Secret> {
        let bytes = std::fs::read(path).at(path)?;
        let arr: [u8; SECRET_LEN] = bytes.as_slice().try_into().map_err(|_| {
            Error::corrupt(
                path,
                format!("expected {SECRET_LEN} bytes, found {}", bytes.len()),
            )
        })?;
        Ok(Secret(arr))
    }

    /// `HMAC-SHA256(secret, "sisa-secret-check")` in hex, kept in `run.json` so that a
    /// changed or damaged secret is refused instead of silently giving every user a new key.
    pub fn check_value(&self) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts keys of any length");
        mac.update(b"sisa-secret-check");
        hex::encode(mac.finalize().into_bytes())
    }

    /// The key of `user_id` under this secret.
    pub fn key(&self, user_id: &str) -> UserKey {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts keys of any length");
        mac.update(user_id.as_bytes());
        UserKey(mac.finalize().into_bytes().into())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// `HMAC-SHA256(secret, user id)`: a user's name inside a run.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserKey(pub [u8; 32]);

impl UserKey {
    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserKey({})", &self.to_hex()[..12])
    }
}

impl fmt::Display for UserKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl Serialize for UserKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for UserKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(&s, &mut out)
            .map_err(|_| serde::de::Error::custom("user key is not 64 hex digits"))?;
        Ok(UserKey(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_secret_and_id() {
        let a = Secret([1; 32]);
        let b = Secret([2; 32]);
        assert_eq!(a.key("alice"), a.key("alice"));
        assert_ne!(a.key("alice"), a.key("bob"));
        assert_ne!(a.key("alice"), b.key("alice"));
        let k = a.key("alice");
        let json = serde_json::to_string(&k).unwrap();
        assert_eq!(serde_json::from_str::<UserKey>(&json).unwrap(), k);
        assert!(!json.contains("alice"));
    }
}
