//! A convolution block in one op: `max_pool2x2(relu(conv2d(x, k) + b))`.
//!
//! Each sample's convolution output goes through the epilogue (bias, ReLU,
//! 2×2 max pooling) while it is still in cache, and the convolution output
//! `z` is kept inside the op for the backward instead of being a node of
//! candle's graph: candle gives every node's gradient a zero-filled buffer and
//! an addition (`GradStore::or_insert` + `add`), three full-size passes over
//! the block's largest tensor. The backward routes the pooled gradient through
//! the epilogue per sample into a small per-thread buffer (no full-size `dz`
//! exists) and feeds it straight to the kernel- and input-gradient GEMMs.
//!
//! Results equal the composition `bias_relu_max_pool2x2(conv2d(x, k), b)`
//! bit for bit (the same per-sample GEMMs, the same epilogue).

use std::sync::OnceLock;

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Tensor};

use super::plan::{OutputGrad, Plan};
use super::{Conv2dSpec, Geometry, conv2d, geometry, operands};
use crate::cpu::contiguous_f32;
use crate::fused::{ActiveChannelSum, bias_relu_max_pool2x2};

/// `(x, kernel, bias) → max_pool2x2(relu(conv2d(x, kernel) + bias))`; keeps
/// the convolution output for its backward.
struct ConvBlock {
    geometry: Geometry,
    z: OnceLock<Tensor>,
}

/// `(kernel, pooled grad, z) → grad of x`.
struct BlockGradInput {
    geometry: Geometry,
    bias: Vec<f32>,
}

/// `(x, pooled grad, z) → grad of the kernel`.
struct BlockGradKernel {
    geometry: Geometry,
    c_out: usize,
    bias: Vec<f32>,
}

fn msg(op: &str, what: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("{op}: {what}"))
}

const OP: &str = "conv2d_bias_relu_max_pool2x2";

impl CustomOp3 for ConvBlock {
    fn name(&self) -> &'static str {
        "esper-conv2d-bias-relu-max-pool2x2"
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
        let plan = Plan::new(self.geometry, wl.shape().dims4()?.0);
        let g = plan.g;
        let (x, kernel) = operands(
            &plan,
            (xs, xl),
            (ws, wl),
            (g.n * g.image(), plan.kernel()),
            OP,
        )?;
        let bias = contiguous_f32(bs, bl, OP)?;
        if bias.len() != plan.c_out {
            return Err(msg(
                OP,
                format!("{} biases for {} channels", bias.len(), plan.c_out),
            ));
        }
        let mut z = vec![0f32; g.n * plan.output()];
        let mut out = vec![0f32; g.n * plan.output() / 4];
        plan.forward(x, kernel, &mut z, Some((bias, &mut out)))?;
        let (oh, ow) = g.out_hw();
        let z = Tensor::from_vec(z, (g.n, plan.c_out, oh, ow), &Device::Cpu)?;
        self.z
            .set(z)
            .map_err(|_| msg(OP, "the op's forward ran twice"))?;
        Ok((
            CpuStorage::F32(out),
            Shape::from((g.n, plan.c_out, oh / 2, ow / 2)),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        kernel: &Tensor,
        bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let z = self
            .z
            .get()
            .ok_or_else(|| msg(OP, "backward before forward"))?;
        let grad = grad.contiguous()?;
        let geometry = self.geometry;
        let values = || bias.flatten_all()?.to_vec1::<f32>();
        let dx = if x.track_op() {
            let op = BlockGradInput {
                geometry,
                bias: values()?,
            };
            Some(kernel.apply_op3(&grad, z, op)?)
        } else {
            None
        };
        let dk = if kernel.track_op() {
            let op = BlockGradKernel {
                geometry,
                c_out: kernel.dims4()?.0,
                bias: values()?,
            };
            Some(x.apply_op3(&grad, z, op)?.reshape(kernel.shape())?)
        } else {
            None
        };
        let db = if bias.track_op() {
            Some(
                res.apply_op2(&grad, ActiveChannelSum)?
                    .reshape(bias.shape())?,
            )
        } else {
            None
        };
        Ok((dx, dk, db))
    }
}

/// The pooled gradient and saved output of a block backward, checked.
fn pooled_operands<'a>(
    plan: &Plan,
    bias: &[f32],
    (gs, gl): (&'a CpuStorage, &Layout),
    (zs, zl): (&'a CpuStorage, &Layout),
) -> Result<(&'a [f32], &'a [f32])> {
    let grad = contiguous_f32(gs, gl, OP)?;
    let z = contiguous_f32(zs, zl, OP)?;
    let outputs = plan.g.n * plan.output();
    if z.len() != outputs || grad.len() * 4 != outputs || bias.len() != plan.c_out {
        return Err(msg(
            OP,
            format!(
                "backward: gradient {:?}, saved output {:?} and {} biases do not match {:?}",
                gl.shape(),
                zl.shape(),
                bias.len(),
                plan.g
            ),
        ));
    }
    Ok((grad, z))
}

impl CustomOp3 for BlockGradInput {
    fn name(&self) -> &'static str {
        "esper-conv2d-bias-relu-max-pool2x2-grad-input"
    }

    fn cpu_fwd(
        &self,
        ws: &CpuStorage,
        wl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        zs: &CpuStorage,
        zl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let plan = Plan::new(self.geometry, wl.shape().dims4()?.0);
        let g = plan.g;
        let kernel = contiguous_f32(ws, wl, OP)?;
        let (pooled, z) = pooled_operands(&plan, &self.bias, (gs, gl), (zs, zl))?;
        let grad = OutputGrad::Pooled {
            z,
            bias: &self.bias,
            pooled,
        };
        let dx = plan.input_grad(kernel, grad)?;
        Ok((CpuStorage::F32(dx), Shape::from((g.n, g.c, g.h, g.w))))
    }
}

impl CustomOp3 for BlockGradKernel {
    fn name(&self) -> &'static str {
        "esper-conv2d-bias-relu-max-pool2x2-grad-kernel"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
        zs: &CpuStorage,
        zl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let plan = Plan::new(self.geometry, self.c_out);
        let x = contiguous_f32(xs, xl, OP)?;
        if x.len() != plan.g.n * plan.g.image() {
            return Err(msg(
                OP,
                format!(
                    "backward: input {:?} does not match {:?}",
                    xl.shape(),
                    plan.g
                ),
            ));
        }
        let (pooled, z) = pooled_operands(&plan, &self.bias, (gs, gl), (zs, zl))?;
        let grad = OutputGrad::Pooled {
            z,
            bias: &self.bias,
            pooled,
        };
        let dk = plan.kernel_grad(x, grad)?;
        Ok((CpuStorage::F32(dk), Shape::from(plan.kernel())))
    }
}

/// `max_pool2x2(relu(conv2d(x, kernel) + bias))` in one op (see the module
/// docs): `x [N, C, H, W]`, `kernel [Cout, C/groups, kh, kw]`, `bias` with
/// `Cout` values; the convolution's output height and width must be even.
/// Exact gradients for all three; on CUDA, candle's own ops.
pub fn conv2d_bias_relu_max_pool2x2(
    x: &Tensor,
    kernel: &Tensor,
    bias: &Tensor,
    spec: Conv2dSpec,
) -> Result<Tensor> {
    if !x.device().is_cpu() {
        return bias_relu_max_pool2x2(&conv2d(x, kernel, spec)?, bias);
    }
    let geometry = geometry(x, kernel, spec, OP)?;
    let (oh, ow) = geometry.out_hw();
    let c_out = kernel.dims4()?.0;
    if oh % 2 != 0 || ow % 2 != 0 {
        return Err(msg(
            OP,
            format!("2x2 pooling needs an even output height and width, got {oh}x{ow}"),
        ));
    }
    if bias.elem_count() != c_out {
        return Err(msg(
            OP,
            format!("{} biases for {c_out} channels", bias.elem_count()),
        ));
    }
    if super::depthwise::applies(&geometry, c_out) {
        // The direct depthwise kernel beats the fused GEMM path's one-row
        // GEMMs; the pooling then runs as its own fused op.
        return bias_relu_max_pool2x2(&conv2d(x, kernel, spec)?, bias);
    }
    let block = ConvBlock {
        geometry,
        z: OnceLock::new(),
    };
    x.contiguous()?.apply_op3(
        &kernel.contiguous()?,
        &bias.flatten_all()?.contiguous()?,
        block,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use candle_core::{DType, Var};

    use super::*;
    use crate::alloc_count::{BOOKKEEPING, conv_blocking, counted, gemm_packing};

    /// The block's forward and its two backward passes allocate their
    /// results, per thread one block of unfolded images and one staging
    /// matrix (and, for the kernel gradient, one partial), and the GEMM's
    /// packing: nothing else, in particular no full-size `dz` (`cnn`'s
    /// second block at batch 32 on two threads).
    #[test]
    fn allocates_results_scratch_and_gemm_packing_only() {
        let (n, c, cout, hw) = (32, 16, 32, 14);
        let d = Device::Cpu;
        let x = Var::randn(0f32, 1.0, (n, c, hw, hw), &d).unwrap();
        let k = Var::randn(0f32, 0.1, (cout, c, 3, 3), &d).unwrap();
        let b = Var::zeros(cout, DType::F32, &d).unwrap();
        let spec = Conv2dSpec {
            padding: 1,
            ..Conv2dSpec::default()
        };
        let bytes = |values: usize| values * 4;
        let (l, rows, image) = (hw * hw, c * 9, c * hw * hw);
        let (block, calls) = conv_blocking(n, l);
        let width = block * l;
        let scratch = 2 * bytes((rows + cout) * width);

        let (out, forward) = counted(|| conv2d_bias_relu_max_pool2x2(&x, &k, &b, spec).unwrap());
        let needed = bytes(n * cout * l) // z, kept for the backward
            + bytes(n * cout * l / 4) // the pooled output
            + scratch
            + calls * gemm_packing(cout, rows, width);
        assert!(
            forward.bytes <= needed + BOOKKEEPING,
            "forward: {forward:?} where {needed} B are needed"
        );

        let z = conv2d(&x, &k, spec).unwrap();
        let g = Tensor::randn(0f32, 1.0, out.shape(), &d).unwrap();
        let geometry = geometry(&x, &k, spec, OP).unwrap();
        let bias = vec![0f32; cout];
        let (_, input) = counted(|| {
            let op = BlockGradInput {
                geometry,
                bias: bias.clone(),
            };
            k.apply_op3(&g, &z, op).unwrap()
        });
        let needed =
            bytes(n * image) + scratch + calls * gemm_packing(rows, cout, width) + bytes(cout);
        assert!(
            input.bytes <= needed + BOOKKEEPING,
            "input gradient: {input:?} where {needed} B are needed"
        );

        let (_, kernel) = counted(|| {
            let op = BlockGradKernel {
                geometry,
                c_out: cout,
                bias: bias.clone(),
            };
            x.apply_op3(&g, &z, op).unwrap()
        });
        let needed = scratch
            + 2 * bytes(cout * rows)
            + calls * gemm_packing(cout, width, rows)
            + bytes(cout);
        assert!(
            kernel.bytes <= needed + BOOKKEEPING,
            "kernel gradient: {kernel:?} where {needed} B are needed"
        );
    }
}
