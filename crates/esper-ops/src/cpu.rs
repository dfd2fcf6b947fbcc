//! What the CPU custom ops share: the contiguous `f32` view of an operand,
//! and (in tests) deterministic pseudo-random values.

use candle_core::{CpuStorage, Layout, Result};

/// The operand's values, which must be contiguous `f32`; `op` names the
/// operation in the error.
pub(crate) fn contiguous_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        return Err(candle_core::Error::Msg(format!(
            "{op}: only f32 is supported"
        )));
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        return Err(candle_core::Error::Msg(format!(
            "{op}: input must be contiguous"
        )));
    };
    Ok(&data[start..end])
}

/// Deterministic pseudo-random values in [-1, 1) (xorshift), for tests.
#[cfg(test)]
pub(crate) fn pseudo(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}
