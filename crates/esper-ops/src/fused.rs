//! A convolution block's epilogue in one pass: bias, ReLU and 2×2 max pooling
//! (stride 2), `max_pool2x2(relu(z + b))`, without the full-size activation
//! in between.
//!
//! Separately, the three ops read and write the `[N, C, H, W]` activation
//! five times forward and backward, plus a memset and a full-size ReLU
//! gradient: about 70 MB a `cnn` step at batch 128, which is what their time
//! was (they are memory-bound). Fused, the forward reads `z` once and writes
//! the quarter-size output; the backward reads `z` and the quarter-size
//! gradient once and writes `dz`; the bias gradient needs only the
//! quarter-size output and gradient (a window passes gradient exactly when its
//! output is positive).
//!
//! Exactly the composition's results: the forward value bit for bit (each
//! `relu(z + b)` is formed as the separate ops form it), the gradient routed
//! to the same element (the window's first maximum of `relu(z + b)`, found
//! again from `z` and `b`), and the bias gradient the same terms summed in a
//! different order. On CUDA, candle's own ops run.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu::contiguous_f32;

/// `(z [N, C, H, W], b [C]) → relu(z + b)` pooled 2×2.
#[derive(Debug, Clone, Copy)]
struct BiasReluPool;

/// `(z, b, grad [N, C, H/2, W/2]) → dz [N, C, H, W]`.
#[derive(Debug, Clone, Copy)]
struct BiasReluPoolGrad;

/// `(out, grad)`, both `[N, C, …]` → `[C]`: `Σ grad · [out > 0]` per channel.
#[derive(Debug, Clone, Copy)]
struct ActiveChannelSum;

/// `(N, C, H, W)` of `z`, checked against a `[C]` bias and 2×2 windows.
fn geometry(z: &Layout, bias_len: usize) -> Result<(usize, usize, usize, usize)> {
    let (n, c, h, w) = z.shape().dims4()?;
    if h % 2 != 0 || w % 2 != 0 {
        return Err(candle_core::Error::Msg(format!(
            "bias_relu_max_pool2x2: 2x2 windows need an even height and width, got {h}x{w}"
        )));
    }
    if bias_len != c {
        return Err(candle_core::Error::Msg(format!(
            "bias_relu_max_pool2x2: {bias_len} bias values for {c} channels"
        )));
    }
    Ok((n, c, h, w))
}

/// `relu(z + b)` as `bias_relu` forms it (a NaN becomes 0).
#[inline]
fn act(z: f32, bias: f32) -> f32 {
    (z + bias).max(0.0)
}

impl CustomOp2 for BiasReluPool {
    fn name(&self) -> &'static str {
        "esper-bias-relu-max-pool2x2"
    }

    fn cpu_fwd(
        &self,
        zs: &CpuStorage,
        zl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let z = contiguous_f32(zs, zl, "bias_relu_max_pool2x2")?;
        let b = contiguous_f32(bs, bl, "bias_relu_max_pool2x2")?;
        let (n, c, h, w) = geometry(zl, b.len())?;
        let (oh, ow) = (h / 2, w / 2);
        let mut out = vec![0f32; n * c * oh * ow];
        // One output row per task: both input rows of its windows, read once.
        out.par_chunks_mut(ow).enumerate().for_each(|(row, o)| {
            let (plane, oy) = (row / oh, row % oh);
            let bias = b[plane % c];
            let top = &z[(plane * h + 2 * oy) * w..][..w];
            let bottom = &z[(plane * h + 2 * oy + 1) * w..][..w];
            for ((o, t), u) in o
                .iter_mut()
                .zip(top.chunks_exact(2))
                .zip(bottom.chunks_exact(2))
            {
                *o = act(t[0], bias)
                    .max(act(t[1], bias))
                    .max(act(u[0], bias))
                    .max(act(u[1], bias));
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))))
    }

    fn bwd(
        &self,
        z: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dz = if z.track_op() {
            Some(z.apply_op3(b, &grad, BiasReluPoolGrad)?)
        } else {
            None
        };
        let db = if b.track_op() {
            Some(res.apply_op2(&grad, ActiveChannelSum)?.reshape(b.shape())?)
        } else {
            None
        };
        Ok((dz, db))
    }
}

impl CustomOp3 for BiasReluPoolGrad {
    fn name(&self) -> &'static str {
        "esper-bias-relu-max-pool2x2-grad"
    }

    fn cpu_fwd(
        &self,
        zs: &CpuStorage,
        zl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let z = contiguous_f32(zs, zl, "bias_relu_max_pool2x2 backward")?;
        let b = contiguous_f32(bs, bl, "bias_relu_max_pool2x2 backward")?;
        let g = contiguous_f32(gs, gl, "bias_relu_max_pool2x2 backward")?;
        let (n, c, h, w) = geometry(zl, b.len())?;
        let (oh, ow) = (h / 2, w / 2);
        if g.len() != n * c * oh * ow {
            return Err(candle_core::Error::Msg(format!(
                "bias_relu_max_pool2x2 backward: {} gradients for {n}x{c}x{oh}x{ow} outputs",
                g.len()
            )));
        }
        let mut dz = vec![0f32; z.len()];
        // One pair of input rows per task; every element is written (the
        // window's maximum gets its gradient, the others 0).
        dz.par_chunks_mut(2 * w)
            .enumerate()
            .for_each(|(row, pair)| {
                let (plane, oy) = (row / oh, row % oh);
                let bias = b[plane % c];
                let top = &z[(plane * h + 2 * oy) * w..][..w];
                let bottom = &z[(plane * h + 2 * oy + 1) * w..][..w];
                let grads = &g[(plane * oh + oy) * ow..][..ow];
                let (d_top, d_bottom) = pair.split_at_mut(w);
                for (ox, &gv) in grads.iter().enumerate() {
                    let x = 2 * ox;
                    // Window order: top-left, top-right, bottom-left,
                    // bottom-right; the first maximum wins, as in pooling.
                    let values = [
                        act(top[x], bias),
                        act(top[x + 1], bias),
                        act(bottom[x], bias),
                        act(bottom[x + 1], bias),
                    ];
                    let mut best = 0;
                    for (i, v) in values.iter().enumerate().skip(1) {
                        if *v > values[best] {
                            best = i;
                        }
                    }
                    // A window whose maximum is 0 passes no gradient (ReLU).
                    let routed = if values[best] > 0.0 { gv } else { 0.0 };
                    let pick = |i: usize| if i == best { routed } else { 0.0 };
                    d_top[x] = pick(0);
                    d_top[x + 1] = pick(1);
                    d_bottom[x] = pick(2);
                    d_bottom[x + 1] = pick(3);
                }
            });
        Ok((CpuStorage::F32(dz), zl.shape().clone()))
    }
}

impl CustomOp2 for ActiveChannelSum {
    fn name(&self) -> &'static str {
        "esper-active-channel-sum"
    }

    fn cpu_fwd(
        &self,
        os: &CpuStorage,
        ol: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = contiguous_f32(os, ol, "bias_relu_max_pool2x2 bias gradient")?;
        let g = contiguous_f32(gs, gl, "bias_relu_max_pool2x2 bias gradient")?;
        let (n, c, oh, ow) = ol.shape().dims4()?;
        if g.len() != out.len() {
            return Err(candle_core::Error::Msg(format!(
                "bias_relu_max_pool2x2 bias gradient: {} gradients for {} outputs",
                g.len(),
                out.len()
            )));
        }
        let plane = oh * ow;
        let sums: Vec<f32> = (0..c)
            .into_par_iter()
            .map(|ch| {
                (0..n)
                    .map(|i| {
                        let at = (i * c + ch) * plane;
                        out[at..at + plane]
                            .iter()
                            .zip(&g[at..at + plane])
                            .map(|(o, g)| if *o > 0.0 { *g } else { 0.0 })
                            .sum::<f32>()
                    })
                    .sum()
            })
            .collect();
        Ok((CpuStorage::F32(sums), Shape::from(c)))
    }
}

/// `max_pool2x2(relu(z + b))` for `z [N, C, H, W]` (even H and W) and `b`
/// with `C` values: `[N, C, H/2, W/2]`, with exact gradients for `z` and `b`.
pub fn bias_relu_max_pool2x2(z: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if !z.device().is_cpu() {
        let c = z.dims4()?.1;
        let a = z.broadcast_add(&bias.reshape((1, c, 1, 1))?)?.relu()?;
        let (n, c, h, w) = a.dims4()?;
        return a.reshape((n, c, h / 2, 2, w / 2, 2))?.max(5)?.max(3);
    }
    z.contiguous()?
        .apply_op2(&bias.flatten_all()?.contiguous()?, BiasReluPool)
}

#[cfg(test)]
mod tests;
