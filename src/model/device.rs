//! The device a run's shard models train and run on: the CPU, or a CUDA GPU through candle.
//!
//! The device is part of `run.json` and, when it is not the CPU, of the configuration digest
//! (so of every lineage): a run trained on a GPU is retrained on a GPU. A build without the
//! `cuda` feature, or a machine whose driver sees no such GPU, refuses `--device cuda` with a
//! message that says which.
//!
//! **What holds on CUDA.** Each shard model trains on its own stream (candle's per-thread
//! stream, one worker thread per shard). cuBLAS runs without TF32 or other reduced-precision
//! accumulation (set off explicitly, candle's default too) and without its atomics mode (off by
//! default); candle 0.11's CUDA kernels that training uses reduce in a fixed tree order per
//! block (`fast_sum`), its atomic-add sum kernels are not launched, and its indexing and
//! convolution kernels use no atomics; cuDNN is not used. So the same GPU model (architecture
//! and SM count), driver, CUDA and cuBLAS versions give the same bits, which is the device kind
//! recorded with every checkpoint ([`crate::machine::kind_for`]).

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Where shard models live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DeviceSpec {
    /// The CPU (the default).
    #[default]
    Cpu,
    /// CUDA GPU number N (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl DeviceSpec {
    /// True for the CPU.
    pub fn is_cpu(&self) -> bool {
        *self == DeviceSpec::Cpu
    }

    /// The candle device, or why this build or machine cannot give it.
    pub fn candle(&self) -> Result<candle_core::Device> {
        match self {
            DeviceSpec::Cpu => Ok(candle_core::Device::Cpu),
            DeviceSpec::Cuda(n) => cuda_device(*n),
        }
    }
}

#[cfg(feature = "cuda")]
fn cuda_device(n: usize) -> Result<candle_core::Device> {
    use candle_core::cuda_backend as cb;
    // Exactness first: no reduced-precision (TF32, half) accumulation in cuBLAS.
    cb::set_gemm_reduced_precision_f32(false);
    cb::set_gemm_reduced_precision_f16(false);
    cb::set_gemm_reduced_precision_bf16(false);
    candle_core::Device::new_cuda(n).map_err(|e| {
        // candle's error carries a backtrace when RUST_BACKTRACE is set: the cause is its
        // first line.
        let text = e.to_string();
        let cause = text.lines().next().unwrap_or_default();
        Error::Usage(format!(
            "--device cuda:{n}: no usable CUDA GPU {n} here ({cause}); is the NVIDIA driver \
             installed, and does `nvidia-smi -L` list the GPU?"
        ))
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda_device(n: usize) -> Result<candle_core::Device> {
    Err(Error::Usage(format!(
        "--device cuda:{n}: this sisa was built without the cuda feature; on a machine with an \
         NVIDIA GPU build it with `cargo build --release --features cuda` (see the README, \"GPU\")"
    )))
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" => Ok(DeviceSpec::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
                Some(Ok(n)) if n < 64 => Ok(DeviceSpec::Cuda(n)),
                _ => Err(format!(
                    "'{s}' is not a device: cpu, cuda or cuda:N (N the GPU's number, under 64)"
                )),
            },
        }
    }
}

impl Serialize for DeviceSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_print_and_round_trip() {
        for (text, dev) in [
            ("cpu", DeviceSpec::Cpu),
            ("cuda", DeviceSpec::Cuda(0)),
            ("cuda:3", DeviceSpec::Cuda(3)),
        ] {
            assert_eq!(text.parse::<DeviceSpec>().unwrap(), dev);
            let json = serde_json::to_string(&dev).unwrap();
            assert_eq!(serde_json::from_str::<DeviceSpec>(&json).unwrap(), dev);
        }
        assert_eq!(DeviceSpec::Cuda(0).to_string(), "cuda:0");
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", "cuda:99", "CPU"] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad}");
        }
        assert!(DeviceSpec::Cpu.candle().is_ok());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_build_without_cuda_refuses_a_cuda_device_by_name() {
        let err = DeviceSpec::Cuda(0).candle().unwrap_err();
        assert!(matches!(err, Error::Usage(_)));
        assert!(err.to_string().contains("--features cuda"), "{err}");
    }
}
