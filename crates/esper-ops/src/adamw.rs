//! AdamW in one pass per parameter on the CPU, in place, with the moments
//! kept as plain `f32` buffers between steps.
//!
//! The candle composition of one AdamW update makes about a dozen
//! parameter-sized temporaries (decay, two moment products, their sums, the
//! squared gradient, the square root, the denominator, the quotient, the
//! update, the result) and a graph node for each: on `mlp` that was 299
//! allocations and 5.6 MB per step for 102k parameters. This pass reads the
//! gradient once and writes the parameter and both moments where they are.
//!
//! It is **bit for bit** the composition Tolaria used before (tested): each
//! element goes through the same `f32` operations in the same order —
//! candle's `t * s` is `t·(s as f32) + 0`, `t / s` is `t·(1/s as f32) + 0`,
//! and `affine(1, ε)` is `t·1 + ε` — so runs, checkpoints and resumes are
//! unchanged by it. A first step over zeroed moments equals the
//! composition's first step without moments (`0·β + x + 0` is `x`).

use std::cell::RefCell;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, InplaceOp2, Layout, Result, Tensor};
use rayon::prelude::*;

/// One AdamW update's hyperparameters, at step `step` (1 for the first).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    /// Learning rate in effect.
    pub lr: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator guard.
    pub eps: f64,
    /// This update's step number, from 1.
    pub step: u64,
}

/// Elements per parallel task (below it, one task).
const CHUNK: usize = 1 << 14;

/// The per-element constants, as candle would cast them.
#[derive(Debug, Clone, Copy)]
struct Constants {
    decay: f32,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    inv_sqrt_bias2: f32,
    eps: f32,
    step_size: f32,
}

impl AdamWStep {
    /// The bias corrections `(1 − β₁ᵗ, 1 − β₂ᵗ)`, with `powi` as Tolaria's
    /// composition always computed them (the step saturates at `i32::MAX`,
    /// where both are 1 anyway).
    fn corrections(self) -> (f64, f64) {
        let t = i32::try_from(self.step).unwrap_or(i32::MAX);
        (1.0 - self.beta1.powi(t), 1.0 - self.beta2.powi(t))
    }
}

impl Constants {
    fn new(h: AdamWStep) -> Self {
        let (bias1, bias2) = h.corrections();
        Self {
            decay: (1.0 - h.lr * h.weight_decay) as f32,
            beta1: h.beta1 as f32,
            one_minus_beta1: (1.0 - h.beta1) as f32,
            beta2: h.beta2 as f32,
            one_minus_beta2: (1.0 - h.beta2) as f32,
            inv_sqrt_bias2: (1.0 / bias2.sqrt()) as f32,
            eps: h.eps as f32,
            step_size: (h.lr / bias1) as f32,
        }
    }

    /// One element, in the composition's order of operations.
    #[inline]
    fn update(&self, p: &mut f32, g: f32, m: &mut f32, v: &mut f32) {
        let decayed = *p * self.decay + 0.0;
        let m_new = (*m * self.beta1 + 0.0) + (g * self.one_minus_beta1 + 0.0);
        let g2 = g * g;
        let v_new = (*v * self.beta2 + 0.0) + (g2 * self.one_minus_beta2 + 0.0);
        let denom = (v_new.sqrt() * self.inv_sqrt_bias2 + 0.0) * 1.0 + self.eps;
        let update = (m_new / denom) * self.step_size + 0.0;
        *p = decayed - update;
        *m = m_new;
        *v = v_new;
    }
}

struct Update<'a> {
    constants: Constants,
    moments: RefCell<(&'a mut [f32], &'a mut [f32])>,
}

fn f32_slice<'s>(storage: &'s CpuStorage, layout: &Layout, what: &str) -> Result<&'s [f32]> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("adamw: the {what} is not contiguous")))?;
    match storage {
        CpuStorage::F32(data) => Ok(&data[start..end]),
        other => Err(candle_core::Error::Msg(format!(
            "adamw: the {what} is {:?}, expected F32",
            other.dtype()
        ))),
    }
}

impl InplaceOp2 for Update<'_> {
    fn name(&self) -> &'static str {
        "esper-adamw"
    }

    fn cpu_fwd(
        &self,
        param: &mut CpuStorage,
        param_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> Result<()> {
        let grad = f32_slice(grad, grad_layout, "gradient")?;
        let (start, end) = param_layout.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("adamw: the parameter is not contiguous".into())
        })?;
        let CpuStorage::F32(data) = param else {
            return Err(candle_core::Error::Msg(format!(
                "adamw: the parameter is {:?}, expected F32",
                param.dtype()
            )));
        };
        let param = &mut data[start..end];
        let mut moments = self.moments.borrow_mut();
        let (first, second) = &mut *moments;
        let c = self.constants;
        if param.len() <= CHUNK {
            for i in 0..param.len() {
                c.update(&mut param[i], grad[i], &mut first[i], &mut second[i]);
            }
        } else {
            // Elements are independent: the split changes no result.
            param
                .par_chunks_mut(CHUNK)
                .zip(grad.par_chunks(CHUNK))
                .zip(first.par_chunks_mut(CHUNK))
                .zip(second.par_chunks_mut(CHUNK))
                .for_each(|(((p, g), m), v)| {
                    for i in 0..p.len() {
                        c.update(&mut p[i], g[i], &mut m[i], &mut v[i]);
                    }
                });
        }
        Ok(())
    }
}

/// Updates `param` in place from `grad` with AdamW at `h`, moments in
/// `first` and `second` (zeros before the first step; one value per
/// element). CPU `f32` tensors of one shape; the parameter contiguous (a
/// non-contiguous gradient is copied once). See the module docs for the
/// exact arithmetic.
pub fn adamw_update(
    param: &Tensor,
    grad: &Tensor,
    first: &mut [f32],
    second: &mut [f32],
    h: AdamWStep,
) -> Result<()> {
    let n = param.elem_count();
    if grad.shape() != param.shape() {
        return Err(candle_core::Error::Msg(format!(
            "adamw: gradient {:?} for a parameter {:?}",
            grad.dims(),
            param.dims()
        )));
    }
    if first.len() != n || second.len() != n {
        return Err(candle_core::Error::Msg(format!(
            "adamw: moments of {} and {} values for a parameter of {n}",
            first.len(),
            second.len()
        )));
    }
    if !param.device().is_cpu() {
        return Err(candle_core::Error::Msg(
            "adamw: the fused update runs on the CPU only".into(),
        ));
    }
    let grad = grad.contiguous()?;
    let op = Update {
        constants: Constants::new(h),
        moments: RefCell::new((first, second)),
    };
    param.inplace_op2(&grad, &op)
}

/// The same update as candle tensor ops, returning the new parameter and
/// moments (`None` moments: the first step): the path off the CPU, and the
/// reference the fused pass is tested and benchmarked against.
pub fn adamw_composition(
    param: &Tensor,
    g: &Tensor,
    first: Option<&Tensor>,
    second: Option<&Tensor>,
    h: AdamWStep,
) -> Result<(Tensor, Tensor, Tensor)> {
    let decayed = param.affine(1.0 - h.lr * h.weight_decay, 0.0)?;
    let m = match first {
        Some(m) => ((m * h.beta1)? + (g * (1.0 - h.beta1))?)?,
        None => (g * (1.0 - h.beta1))?,
    };
    let g2 = g.sqr()?;
    let v = match second {
        Some(v) => ((v * h.beta2)? + (g2 * (1.0 - h.beta2))?)?,
        None => (g2 * (1.0 - h.beta2))?,
    };
    let (bias1, bias2) = h.corrections();
    let denom = (v.sqrt()? / bias2.sqrt())?.affine(1.0, h.eps)?;
    let update = (m.div(&denom)? * (h.lr / bias1))?;
    Ok(((decayed - update)?, m, v))
}

#[cfg(test)]
mod tests;
