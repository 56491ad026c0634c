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

/// The kind of `device` on this machine: [`kind`] for the CPU; for a CUDA GPU its model,
/// compute capability and SM count, the CUDA version its driver provides and the cuBLAS
/// version (cuBLAS is bitwise reproducible on GPUs of one architecture and SM count within one
/// version). Computed once per device and process.
pub fn kind_for(device: crate::model::device::DeviceSpec) -> crate::Result<String> {
    match device {
        crate::model::device::DeviceSpec::Cpu => Ok(kind().to_string()),
        crate::model::device::DeviceSpec::Cuda(n) => {
            static KINDS: std::sync::Mutex<Vec<(usize, String)>> =
                std::sync::Mutex::new(Vec::new());
            if let Some((_, k)) = KINDS
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .find(|(d, _)| *d == n)
            {
                return Ok(k.clone());
            }
            let k = cuda_kind(device)?;
            KINDS
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((n, k.clone()));
            Ok(k)
        }
    }
}

#[cfg(feature = "cuda")]
fn cuda_kind(device: crate::model::device::DeviceSpec) -> crate::Result<String> {
    use candle_core::cuda_backend::cudarc;
    let candle_core::Device::Cuda(gpu) = device.candle()? else {
        unreachable!("a CUDA device spec gives a CUDA device")
    };
    let err = |e: cudarc::driver::DriverError| crate::Error::Usage(format!("{device}: {e}"));
    let stream = gpu.cuda_stream();
    let ctx = stream.context();
    let name = ctx.name().map_err(err)?;
    let (major, minor) = ctx.compute_capability().map_err(err)?;
    let sms = ctx
        .attribute(
            cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
        )
        .map_err(err)?;
    let mut driver = 0;
    // SAFETY: writes one int; the driver is loaded (a context exists).
    unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver) };
    let mut blas = 0;
    // SAFETY: the handle is the device's live cuBLAS handle; writes one int.
    unsafe { cudarc::cublas::sys::cublasGetVersion_v2(*gpu.cublas_handle().handle(), &mut blas) };
    // Both as the libraries encode them: CUDA 13.0 is 13000, cuBLAS 13.1.0 is 130100.
    Ok(format!(
        "cuda | {name} | sm_{major}{minor} {sms} SMs | driver CUDA {}.{} | cuBLAS {}.{}.{}",
        driver / 1000,
        driver % 1000 / 10,
        blas / 10000,
        blas % 10000 / 100,
        blas % 100
    ))
}

#[cfg(not(feature = "cuda"))]
fn cuda_kind(device: crate::model::device::DeviceSpec) -> crate::Result<String> {
    device
        .candle()
        .map(|_| unreachable!("a build without cuda has no CUDA device"))
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

/// Refuse to retrain the shards of `manifest` on this machine's `device` when they were trained
/// on another kind of GPU: on CUDA the bits are the GPU kind's, and a version mixing kinds is
/// not what training from scratch on any one GPU gives. (On the CPU the kinds are reported, by
/// `verify` and a warning, not refused: a deletion is not held back for a CPU model.)
pub fn require_gpu_kind(
    device: crate::model::device::DeviceSpec,
    manifest: &crate::run::Manifest,
    what: &str,
) -> crate::Result<()> {
    if device.is_cpu() {
        return Ok(());
    }
    let here = kind_for(device)?;
    let other: Vec<&crate::run::ShardEntry> = manifest
        .shards
        .iter()
        .filter(|s| !s.machine.is_empty() && s.machine != here)
        .collect();
    match other.first() {
        None => Ok(()),
        Some(s) => Err(crate::Error::Usage(format!(
            "{what} on {device}: {} shard(s) (shard {} first) were trained on '{}', and this GPU is \
             '{here}'; on CUDA the bits hold within one kind of GPU and toolkit: run it on a machine of that kind",
            other.len(),
            s.shard,
            s.machine
        ))),
    }
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
