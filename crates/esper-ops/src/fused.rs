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
pub(crate) struct ActiveChannelSum;

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

/// `v` when `cond`, else `+0.0`, without a branch.
#[inline]
fn keep(v: f32, cond: bool) -> f32 {
    f32::from_bits(v.to_bits() & u32::from(cond).wrapping_neg())
}

/// One plane's forward: `out [H/2, W/2] = max_pool2x2(relu(z [H, W] + bias))`
/// (`w` is the plane's width; the rows come in pairs).
pub(crate) fn pool_plane(z: &[f32], bias: f32, w: usize, out: &mut [f32]) {
    let ow = w / 2;
    for (o, rows) in out.chunks_exact_mut(ow).zip(z.chunks_exact(2 * w)) {
        let (top, bottom) = rows.split_at(w);
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
    }
}

/// One plane's backward: the gradient `g [H/2, W/2]` of the pooled output
/// routed into `dz [H, W]`, every element written: each window's first
/// maximum of `relu(z + bias)` gets the window's gradient when that maximum
/// is positive, everything else 0.
pub(crate) fn route_plane(z: &[f32], bias: f32, g: &[f32], w: usize, dz: &mut [f32]) {
    let ow = w / 2;
    for ((d, rows), g) in dz
        .chunks_exact_mut(2 * w)
        .zip(z.chunks_exact(2 * w))
        .zip(g.chunks_exact(ow))
    {
        let (top, bottom) = rows.split_at(w);
        let (d_top, d_bottom) = d.split_at_mut(w);
        for (((dt, db), (t, u)), &gv) in d_top
            .chunks_exact_mut(2)
            .zip(d_bottom.chunks_exact_mut(2))
            .zip(top.chunks_exact(2).zip(bottom.chunks_exact(2)))
            .zip(g)
        {
            // Window order: top-left, top-right, bottom-left, bottom-right.
            let (a0, a1, a2, a3) = (
                act(t[0], bias),
                act(t[1], bias),
                act(u[0], bias),
                act(u[1], bias),
            );
            let top_max = a0.max(a1);
            let max = top_max.max(a2.max(a3));
            // A window whose maximum is 0 passes no gradient (ReLU).
            let routed = keep(gv, max > 0.0);
            // The first element equal to the maximum takes it, as pooling
            // routes (values are never NaN after `act`). Its index is
            // computed and the gradient shifted into place, not branched on
            // (which element wins is data-dependent: mispredicted branches
            // made this loop a third of a `cnn` step) nor stored through a
            // small array (store-forwarding stalls, a fifth).
            let n0 = u64::from(a0 != max);
            let n1 = n0 & u64::from(a1 != max);
            let n2 = n1 & u64::from(a2 != max);
            let at = n0 + n1 + n2;
            // Low half: the first of a row's pair; high half: the second.
            let pair = u64::from(routed.to_bits()) << (32 * (at & 1));
            let top_row = pair & u64::from(at < 2).wrapping_neg();
            let bottom_row = pair & u64::from(at >= 2).wrapping_neg();
            dt[0] = f32::from_bits(top_row as u32);
            dt[1] = f32::from_bits((top_row >> 32) as u32);
            db[0] = f32::from_bits(bottom_row as u32);
            db[1] = f32::from_bits((bottom_row >> 32) as u32);
        }
    }
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
        // One plane per task.
        out.par_chunks_mut(oh * ow)
            .zip(z.par_chunks(h * w))
            .enumerate()
            .for_each(|(plane, (o, z))| pool_plane(z, b[plane % c], w, o));
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
        // One plane per task.
        dz.par_chunks_mut(h * w)
            .zip(z.par_chunks(h * w).zip(g.par_chunks(oh * ow)))
            .enumerate()
            .for_each(|(plane, (dz, (z, g)))| route_plane(z, b[plane % c], g, w, dz));
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
