//! A fully connected layer as one op: `act(x Wᵀ + b)` with the bias and the
//! activation fused into the product, one GEMM each way.
//!
//! candle 0.11 builds the same layer from a matmul, a broadcast add and an
//! activation, each with its own output, graph node and backward: the
//! matmul's backward computes the input's gradient even for the data batch
//! (a GEMM the size of the forward's, wasted on a `784→128` first layer),
//! the broadcast add's reduces the bias gradient through a generic strided
//! sum, and every node's gradient is accumulated into a fresh zero tensor.
//! Here the forward writes the bias into the output rows and accumulates the
//! product on top (`y = b; y += x·Wᵀ`: one GEMM, one buffer), applies the
//! activation in place, and the backward makes exactly the gradients that
//! are asked for: `dx = g'·W` only if `x` is tracked, `dW = g'ᵀ·x`, and
//! `db = Σ_rows g'` as one column sum. On CUDA, candle's own ops run.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use crate::act::{ChannelSum, ReluGrad};
use crate::cpu::contiguous_f32;
use crate::gemm::{MatMut, MatRef, matmul};

/// The activation applied to a [`linear`] layer's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// None: `x Wᵀ + b`.
    Identity,
    /// `max(0, ·)`.
    Relu,
    /// candle's `gelu`: the tanh approximation
    /// `0.5·v·(1 + tanh(√(2/π)·(v + 0.044715·v³)))`.
    Gelu,
}

impl Activation {
    /// The activation as candle's own op (`relu`, `gelu`): the composition
    /// [`linear`] fuses, and what it runs off the CPU.
    pub fn apply(self, y: Tensor) -> Result<Tensor> {
        match self {
            Activation::Identity => Ok(y),
            Activation::Relu => y.relu(),
            Activation::Gelu => y.gelu(),
        }
    }
}

/// `√(2/π)`, as candle's `gelu` rounds it.
const SQRT_TWO_OVER_PI: f32 = 0.797_884_6;

/// candle's `gelu`, value for value.
fn gelu(v: f32) -> f32 {
    0.5 * v * (1.0 + f32::tanh(SQRT_TWO_OVER_PI * v * (1.0 + 0.044715 * v * v)))
}

/// The derivative of [`gelu`] at `v`.
fn gelu_slope(v: f32) -> f32 {
    let t = f32::tanh(SQRT_TWO_OVER_PI * v * (1.0 + 0.044715 * v * v));
    0.5 * (1.0 + t) + 0.5 * v * (1.0 - t * t) * SQRT_TWO_OVER_PI * (1.0 + 3.0 * 0.044715 * v * v)
}

/// `(rows, in_features)` of an `[…, in]` input.
fn rows_of(shape: &Shape, op: &str) -> Result<(usize, usize)> {
    match shape.dims() {
        [] => Err(candle_core::Error::Msg(format!(
            "{op}: the input needs at least one axis"
        ))),
        [lead @ .., k] => Ok((lead.iter().product(), *k)),
    }
}

fn size_error(op: &str, what: &str, got: usize, want: usize) -> candle_core::Error {
    candle_core::Error::Msg(format!("{op}: {got} {what}, expected {want}"))
}

/// The forward op. For GELU, the pre-activation is kept for the backward
/// (the output alone does not determine it, unlike ReLU's).
#[derive(Debug)]
struct Linear {
    act: Activation,
    pre_activation: Mutex<Option<Tensor>>,
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "esper-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = "linear";
        let x = contiguous_f32(xs, xl, op)?;
        let w = contiguous_f32(ws, wl, op)?;
        let b = contiguous_f32(bs, bl, op)?;
        let (m, k) = rows_of(xl.shape(), op)?;
        let n = b.len();
        if w.len() != n * k {
            return Err(size_error(op, "weights", w.len(), n * k));
        }
        let mut y = Vec::with_capacity(m * n);
        for _ in 0..m {
            y.extend_from_slice(b);
        }
        // y = b; y += x · Wᵀ (W is row-major [n, k]: its transpose is read
        // through strides): the `gemm` kernel candle's matmul calls, with
        // the bias added to its result as candle's broadcast add would
        // (equal to the composition within 1e-6, tested).
        matmul(
            MatMut::row_major(&mut y, m, n)?,
            MatRef::row_major(x, m, k)?,
            MatRef::transposed(w, k, n)?,
            true,
            true,
        )?;
        let mut dims = xl.shape().dims().to_vec();
        if let Some(last) = dims.last_mut() {
            *last = n;
        }
        let shape = Shape::from(dims);
        match self.act {
            Activation::Identity => {}
            Activation::Relu => y.iter_mut().for_each(|v| *v = v.max(0.0)),
            Activation::Gelu => {
                let pre = Tensor::from_slice(&y, shape.clone(), &candle_core::Device::Cpu)?;
                *self
                    .pre_activation
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(pre);
                y.iter_mut().for_each(|v| *v = gelu(*v));
            }
        }
        Ok((CpuStorage::F32(y), shape))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        // g' = dL/d(x Wᵀ + b): the output gradient through the activation.
        let g = match self.act {
            Activation::Identity => grad,
            Activation::Relu => res.apply_op2(&grad, ReluGrad)?,
            Activation::Gelu => {
                let pre = self
                    .pre_activation
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone()
                    .ok_or_else(|| {
                        candle_core::Error::Msg(
                            "linear backward: the GELU pre-activation was not kept".into(),
                        )
                    })?;
                pre.apply_op2(&grad, GeluGrad)?
            }
        };
        let (m, _) = rows_of(x.shape(), "linear backward")?;
        let n = b.elem_count();
        // `[…, in]` inputs as `[m, in]` rows (no new node for a 2-D one).
        let flat = |t: &Tensor, cols: usize| -> Result<Tensor> {
            if t.rank() == 2 {
                Ok(t.clone())
            } else {
                t.reshape((m, cols))
            }
        };
        let g2 = flat(&g, n)?;
        let dx = if x.track_op() {
            let dx = g2.apply_op2(w, InputGrad)?;
            Some(if x.rank() == 2 {
                dx
            } else {
                dx.reshape(x.shape())?
            })
        } else {
            None
        };
        let dw = if w.track_op() {
            let k = x.elem_count() / m.max(1);
            Some(g2.apply_op2(&flat(x, k)?, WeightGrad)?)
        } else {
            None
        };
        let db = if b.track_op() {
            let db = g2.apply_op1(ChannelSum)?;
            Some(if b.rank() == 1 {
                db
            } else {
                db.reshape(b.shape())?
            })
        } else {
            None
        };
        Ok((dx, dw, db))
    }
}

/// `(pre-activation, g) → g · gelu'(pre)`.
#[derive(Debug, Clone, Copy)]
struct GeluGrad;

impl CustomOp2 for GeluGrad {
    fn name(&self) -> &'static str {
        "esper-gelu-grad"
    }

    fn cpu_fwd(
        &self,
        ps: &CpuStorage,
        pl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = "gelu backward";
        let pre = contiguous_f32(ps, pl, op)?;
        let g = contiguous_f32(gs, gl, op)?;
        if pre.len() != g.len() {
            return Err(size_error(op, "gradients", g.len(), pre.len()));
        }
        let d = pre.iter().zip(g).map(|(v, g)| g * gelu_slope(*v)).collect();
        Ok((CpuStorage::F32(d), pl.shape().clone()))
    }
}

/// `(g' [m, n], W [n, k]) → dx = g'·W [m, k]`.
#[derive(Debug, Clone, Copy)]
struct InputGrad;

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "esper-linear-input-grad"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = "linear input gradient";
        let g = contiguous_f32(gs, gl, op)?;
        let w = contiguous_f32(ws, wl, op)?;
        let (m, n) = gl.shape().dims2()?;
        let (wn, k) = wl.shape().dims2()?;
        if wn != n {
            return Err(size_error(op, "weight rows", wn, n));
        }
        let mut dx = vec![0f32; m * k];
        matmul(
            MatMut::row_major(&mut dx, m, k)?,
            MatRef::row_major(g, m, n)?,
            MatRef::row_major(w, n, k)?,
            false,
            true,
        )?;
        Ok((CpuStorage::F32(dx), Shape::from((m, k))))
    }
}

/// `(g' [m, n], x [m, k]) → dW = g'ᵀ·x [n, k]`.
#[derive(Debug, Clone, Copy)]
struct WeightGrad;

impl CustomOp2 for WeightGrad {
    fn name(&self) -> &'static str {
        "esper-linear-weight-grad"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        xs: &CpuStorage,
        xl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = "linear weight gradient";
        let g = contiguous_f32(gs, gl, op)?;
        let x = contiguous_f32(xs, xl, op)?;
        let (m, n) = gl.shape().dims2()?;
        let (xm, k) = xl.shape().dims2()?;
        if xm != m {
            return Err(size_error(op, "input rows", xm, m));
        }
        let mut dw = vec![0f32; n * k];
        matmul(
            MatMut::row_major(&mut dw, n, k)?,
            MatRef::transposed(g, n, m)?,
            MatRef::row_major(x, m, k)?,
            false,
            true,
        )?;
        Ok((CpuStorage::F32(dw), Shape::from((n, k))))
    }
}

/// `act(x Wᵀ + b)` for `x […, in]`, `weight [out, in]` and `bias [out]`:
/// PyTorch's `nn.Linear` followed by `act`, with exact gradients for all
/// three (the input's only when it is tracked).
///
/// On the CPU, one op: one GEMM forward (the bias written first, the product
/// accumulated on it), one per gradient backward, the bias gradient one
/// column sum. Elsewhere, candle's matmul, broadcast add and activation.
pub fn linear(x: &Tensor, weight: &Tensor, bias: &Tensor, act: Activation) -> Result<Tensor> {
    let (_, k) = rows_of(x.shape(), "linear")?;
    let (n, wk) = weight.dims2()?;
    if wk != k {
        return Err(candle_core::Error::Msg(format!(
            "linear: input of {k} features for a weight of {wk} ([{n}, {wk}])"
        )));
    }
    if bias.elem_count() != n {
        return Err(size_error("linear", "bias values", bias.elem_count(), n));
    }
    if !x.device().is_cpu() {
        let y = x
            .broadcast_matmul(&weight.t()?)?
            .broadcast_add(&bias.flatten_all()?)?;
        return act.apply(y);
    }
    x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        // The bias as it is (any shape of `out` values): a reshape here
        // would be one more graph node and backward.
        &bias.contiguous()?,
        Linear {
            act,
            pre_activation: Mutex::new(None),
        },
    )
}

#[cfg(test)]
mod tests;
