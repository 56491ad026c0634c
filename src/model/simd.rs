//! Element-wise loops compiled twice: for the baseline instruction set and for AVX2, chosen at
//! run time.
//!
//! The two copies compute the same bits. Each lane of a vector instruction performs the same
//! correctly rounded IEEE operation as the scalar instruction it replaces, Rust never fuses a
//! multiply and an add unless asked (`mul_add`, which this crate does not use), and the
//! compiler never reorders a floating-point reduction: sums are written with a fixed
//! accumulation order (see [`sum`]). So a model trained on a CPU with AVX2 is bitwise the model
//! trained without it, and a test checks that the two paths agree.

/// Run `f` compiled for AVX2 when this CPU has it, for the baseline otherwise. `f` should be a
/// small closure around an element-wise loop: only code inlined into it gains the wider vectors.
#[inline(always)]
pub fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if !scalar_only() && std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// In test builds, `SISA_SCALAR=1` forces the baseline copy, so a test can compare both paths.
#[cfg(any(test, feature = "failpoints"))]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn scalar_only() -> bool {
    static SCALAR: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SCALAR.get_or_init(|| std::env::var_os("SISA_SCALAR").is_some_and(|v| v == "1"))
}

#[cfg(not(any(test, feature = "failpoints")))]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[inline(always)]
fn scalar_only() -> bool {
    false
}

/// Sum in a fixed order that vectorizes: eight running sums over strided lanes, the tail
/// added to the first lanes, then combined pairwise.
#[inline(always)]
pub fn sum(values: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = values.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a += v;
        }
    }
    for (a, v) in acc.iter_mut().zip(tail) {
        *a += v;
    }
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
}

/// Largest value (order does not matter for a maximum); negative infinity when empty.
#[inline(always)]
pub fn max(values: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = values.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, v) in acc.iter_mut().zip(c) {
            *a = if *v > *a { *v } else { *a };
        }
    }
    for (a, v) in acc.iter_mut().zip(tail) {
        *a = if *v > *a { *v } else { *a };
    }
    acc.iter()
        .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_and_max_follow_their_stated_order() {
        let v: Vec<f32> = (0..21).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut acc = [0f32; 8];
        for (i, x) in v.iter().enumerate() {
            let lane = if i < 16 { i % 8 } else { i - 16 };
            acc[lane] += x;
        }
        let expect =
            ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]));
        assert_eq!(sum(&v).to_bits(), expect.to_bits());
        assert_eq!(wide(|| sum(&v)).to_bits(), expect.to_bits());
        let m = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(max(&v), m);
        assert_eq!(max(&[]), f32::NEG_INFINITY);
        assert_eq!(sum(&[]), 0.0);
    }
}
