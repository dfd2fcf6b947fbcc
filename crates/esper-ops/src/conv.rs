//! 2-D convolution as per-sample im2col + GEMM straight into the output,
//! with an exact backward that never computes the gradient of an input that
//! needs none.
//!
//! The batch is split into one contiguous run of samples per thread. For each
//! sample, its image is unfolded into a per-thread `[C·kh·kw, L]` scratch
//! matrix (`geometry`) and each channel group's `[M, K]` kernel block
//! multiplies its `K` rows, the product written straight into the sample's
//! `[M, L]` block of the `[N, Cout, L]` output: no whole-batch unfolded matrix,
//! and no transpose or copy of the output in either direction (the earlier
//! whole-batch formulation spent ~45 ms of a 115 ms `cnn` step in those).
//!
//! The backward is two ops, each run only when its operand is tracked:
//! * kernel gradient: per thread, `Σₙ gradₙ · colsₙᵀ` accumulated in place by
//!   the GEMM into one `[Cout, K]` partial, the partials summed at the end;
//! * input gradient: per sample, `Wᵀ · gradₙ` into the scratch matrix, folded
//!   back (col2im) into that sample's image gradient. The data batch is not
//!   tracked, so nothing of its gradient is computed (candle 0.11 computes it
//!   through a loop-nest `conv_transpose2d`).
//!
//! A depthwise convolution (`groups == C == Cout`, a seed's usual kind) runs
//! as direct per-tap row passes instead (`depthwise`): its GEMMs would have
//! one row each.
//!
//! The GEMMs are the `gemm` crate's (candle's CPU matmul kernel), through
//! `crate::gemm`; single-threaded inside the per-sample loop, on the rayon
//! pool when the batch has fewer samples than threads. Hot-path allocations
//! are the output, one scratch matrix per thread and (kernel gradient) one
//! partial per thread. On CUDA, candle's own kernels run instead.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use crate::cpu::contiguous_f32;

mod block;
mod depthwise;
mod geometry;
mod plan;

pub use block::conv2d_bias_relu_max_pool2x2;
use depthwise::DepthwiseForward;
use geometry::Geometry;
use plan::{OutputGrad, Plan};

/// Geometry of one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dSpec {
    /// Zero padding on every side.
    pub padding: usize,
    /// Stride.
    pub stride: usize,
    /// Dilation.
    pub dilation: usize,
    /// Channel groups (`groups == channels` is depthwise).
    pub groups: usize,
}

impl Default for Conv2dSpec {
    fn default() -> Self {
        Self {
            padding: 0,
            stride: 1,
            dilation: 1,
            groups: 1,
        }
    }
}

/// The geometry of `x [N, C, H, W]` convolved with `kernel [Cout,
/// C/groups, kh, kw]`, checked; `op` names the operation in errors.
fn geometry(x: &Tensor, kernel: &Tensor, spec: Conv2dSpec, op: &str) -> Result<Geometry> {
    let (n, c, h, w) = x.dims4()?;
    let (c_out, c_per_group, kh, kw) = kernel.dims4()?;
    let groups = spec.groups.max(1);
    if c % groups != 0 || c_out % groups != 0 || c_per_group * groups != c {
        return Err(candle_core::Error::Msg(format!(
            "{op}: {c} input channels, kernel {c_out}x{c_per_group}, {groups} groups do not fit"
        )));
    }
    if spec.stride == 0 || spec.dilation == 0 {
        return Err(candle_core::Error::Msg(format!(
            "{op}: stride and dilation must be at least 1"
        )));
    }
    if h + 2 * spec.padding < spec.dilation * (kh - 1) + 1
        || w + 2 * spec.padding < spec.dilation * (kw - 1) + 1
    {
        return Err(candle_core::Error::Msg(format!(
            "{op}: a {kh}x{kw} kernel (dilation {}) does not fit a padded {h}x{w} input",
            spec.dilation
        )));
    }
    Ok(Geometry {
        n,
        c,
        h,
        w,
        kh,
        kw,
        spec,
    })
}

/// `x [N, C, H, W]` convolved with `kernel [Cout, C/groups, kh, kw]`, giving
/// `[N, Cout, out_h, out_w]`; same semantics as candle's `Tensor::conv2d`.
pub fn conv2d(x: &Tensor, kernel: &Tensor, spec: Conv2dSpec) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return x.conv2d(
            kernel,
            spec.padding,
            spec.stride,
            spec.dilation,
            spec.groups,
        );
    }
    let geometry = geometry(x, kernel, spec, "conv2d")?;
    if depthwise::applies(&geometry, kernel.dims4()?.0) {
        return x
            .contiguous()?
            .apply_op2(&kernel.contiguous()?, DepthwiseForward { geometry });
    }
    x.contiguous()?
        .apply_op2(&kernel.contiguous()?, Conv2dForward { geometry })
}

/// [`conv2d`] always through im2col + GEMM (the depthwise kernel's reference
/// in tests).
#[cfg(test)]
fn conv2d_general(x: &Tensor, kernel: &Tensor, spec: Conv2dSpec) -> Result<Tensor> {
    let geometry = geometry(x, kernel, spec, "conv2d")?;
    x.contiguous()?
        .apply_op2(&kernel.contiguous()?, Conv2dForward { geometry })
}

/// The operands' values, checked against the plan: `x` (or the kernel) and
/// the kernel (or the output gradient) of `op`.
fn operands<'a>(
    plan: &Plan,
    (a, al): (&'a CpuStorage, &Layout),
    (b, bl): (&'a CpuStorage, &Layout),
    expected: (usize, usize),
    op: &str,
) -> Result<(&'a [f32], &'a [f32])> {
    let a = contiguous_f32(a, al, op)?;
    let b = contiguous_f32(b, bl, op)?;
    if (a.len(), b.len()) != expected {
        return Err(candle_core::Error::Msg(format!(
            "{op}: operands {:?} and {:?} do not match {:?} with {} output channels",
            al.shape(),
            bl.shape(),
            plan.g,
            plan.c_out
        )));
    }
    Ok((a, b))
}

/// `(x [N, C, H, W], kernel [Cout, C/groups, kh, kw]) → [N, Cout, oh, ow]`.
#[derive(Debug, Clone, Copy)]
struct Conv2dForward {
    geometry: Geometry,
}

/// `(kernel, grad [N, Cout, oh, ow]) → grad of x [N, C, H, W]`.
#[derive(Debug, Clone, Copy)]
struct ConvGradInput {
    geometry: Geometry,
}

/// `(x, grad [N, Cout, oh, ow]) → grad of the kernel [Cout, C/groups·kh·kw]`.
#[derive(Debug, Clone, Copy)]
struct ConvGradKernel {
    geometry: Geometry,
    c_out: usize,
}

impl CustomOp2 for Conv2dForward {
    fn name(&self) -> &'static str {
        "esper-conv2d"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let plan = Plan::new(self.geometry, wl.shape().dims4()?.0);
        let g = plan.g;
        let (x, kernel) = operands(
            &plan,
            (xs, xl),
            (ws, wl),
            (g.n * g.image(), plan.kernel()),
            "conv2d",
        )?;
        let mut y = vec![0f32; g.n * plan.output()];
        plan.forward(x, kernel, &mut y, None)?;
        let (oh, ow) = g.out_hw();
        Ok((CpuStorage::F32(y), Shape::from((g.n, plan.c_out, oh, ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        kernel: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if !x.track_op() && !kernel.track_op() {
            return Ok((None, None));
        }
        let geometry = self.geometry;
        let grad = grad.contiguous()?;
        let dx = if x.track_op() {
            Some(kernel.apply_op2(&grad, ConvGradInput { geometry })?)
        } else {
            None
        };
        let dk = if kernel.track_op() {
            let c_out = kernel.dims4()?.0;
            Some(
                x.apply_op2(&grad, ConvGradKernel { geometry, c_out })?
                    .reshape(kernel.shape())?,
            )
        } else {
            None
        };
        Ok((dx, dk))
    }
}

impl CustomOp2 for ConvGradInput {
    fn name(&self) -> &'static str {
        "esper-conv2d-grad-input"
    }

    fn cpu_fwd(
        &self,
        ws: &CpuStorage,
        wl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let plan = Plan::new(self.geometry, wl.shape().dims4()?.0);
        let g = plan.g;
        let (kernel, grad) = operands(
            &plan,
            (ws, wl),
            (gs, gl),
            (plan.kernel(), g.n * plan.output()),
            "conv2d backward",
        )?;
        let dx = plan.input_grad(kernel, OutputGrad::Direct(grad))?;
        Ok((CpuStorage::F32(dx), Shape::from((g.n, g.c, g.h, g.w))))
    }
}

impl CustomOp2 for ConvGradKernel {
    fn name(&self) -> &'static str {
        "esper-conv2d-grad-kernel"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let plan = Plan::new(self.geometry, self.c_out);
        let g = plan.g;
        let (x, grad) = operands(
            &plan,
            (xs, xl),
            (gs, gl),
            (g.n * g.image(), g.n * plan.output()),
            "conv2d backward",
        )?;
        let dk = plan.kernel_grad(x, OutputGrad::Direct(grad))?;
        Ok((CpuStorage::F32(dk), Shape::from(plan.kernel())))
    }
}

#[cfg(test)]
mod tests;
