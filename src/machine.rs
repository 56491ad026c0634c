//! The machine kind: what a model's bits depend on besides the data, the configuration and the
//! seed.
//!
//! Training is deterministic on one kind of machine. Across kinds it may not be: candle's
//! matrix products pick their kernels (and so their order of summation) by the CPU's vector
//! extensions, and GPU results depend on the GPU model and its libraries. The kind is
//! therefore recorded in every checkpoint and every shard of a manifest; `sisa publish` refuses
//! a version whose shards were trained on different kinds, and `sisa verify` says per shard
//! whether this machine is of the kind it compares against.
//!
//! A CPU kind is the architecture, the CPU model the operating system reports and the vector
//! extensions the kernels dispatch on, e.g. `x86_64 | AMD EPYC 7B13 | avx2 fma`.

use std::sync::OnceLock;

/// Vector extensions that the kernels of sisa and candle choose between at run time: two CPUs
/// that differ in one of these may sum in another order.
#[cfg(target_arch = "x86_64")]
fn extensions() -> Vec<&'static str> {
    let mut out = Vec::new();
    if std::arch::is_x86_feature_detected!("avx") {
        out.push("avx");
    }
    if std::arch::is_x86_feature_detected!("avx2") {
        out.push("avx2");
    }
    if std::arch::is_x86_feature_detected!("fma") {
        out.push("fma");
    }
    if std::arch::is_x86_feature_detected!("avx512f") {
        out.push("avx512f");
    }
    out
}

#[cfg(target_arch = "aarch64")]
fn extensions() -> Vec<&'static str> {
    let mut out = Vec::new();
    if std::arch::is_aarch64_feature_detected!("neon") {
        out.push("neon");
    }
    if std::arch::is_aarch64_feature_detected!("sve") {
        out.push("sve");
    }
    out
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn extensions() -> Vec<&'static str> {
    Vec::new()
}

/// This machine's kind (computed once per process).
pub fn kind() -> &'static str {
    static KIND: OnceLock<String> = OnceLock::new();
    KIND.get_or_init(|| {
        let ext = extensions();
        format!(
            "{} | {} | {}",
            std::env::consts::ARCH,
            crate::run::config::cpu_model(),
            if ext.is_empty() {
                "baseline".to_string()
            } else {
                ext.join(" ")
            }
        )
    })
}

/// This machine's host name, for the records of who trained or published what.
pub fn host() -> String {
    #[cfg(unix)]
    {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is valid for its length; gethostname writes at most that much.
        let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if r == 0 {
            let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            if let Ok(name) = std::str::from_utf8(&buf[..end]) {
                if !name.is_empty() {
                    return name.to_string();
                }
            }
        }
    }
    "unknown-host".to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn kind_is_stable_and_names_the_architecture() {
        let k = super::kind();
        assert_eq!(k, super::kind());
        assert!(k.starts_with(std::env::consts::ARCH), "{k}");
        assert_eq!(k.matches(" | ").count(), 2, "{k}");
        assert!(!super::host().is_empty());
    }
}
