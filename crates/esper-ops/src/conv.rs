//! 2-D convolution as im2col + GEMM, with an exact backward that never
//! computes the gradient of an input that needs none.
//!
//! `conv2d` unfolds the input with the [`Im2Col`] custom op (columns ordered
//! channel-major: row `c·kh·kw + i·kw + j`, so channel groups are contiguous
//! rows) and multiplies by the reshaped kernel with candle's batched matmul
//! (GEMM). Autograd then gives the kernel gradient as a GEMM over the unfolded
//! input, and the input gradient as a GEMM followed by [`Col2Im`] — the
//! adjoint of the unfold — *only when the input is tracked*: the data batch is
//! not, so its gradient is never computed (candle 0.11 computes it through a
//! loop-nest `conv_transpose2d`). On CUDA, candle's own kernels run instead.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

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

/// Unfold geometry: input `[N, C, H, W]`, kernel `kh × kw`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    spec: Conv2dSpec,
}

impl Geometry {
    fn out_hw(&self) -> (usize, usize) {
        let s = self.spec;
        let span_h = s.dilation * (self.kh - 1) + 1;
        let span_w = s.dilation * (self.kw - 1) + 1;
        (
            (self.h + 2 * s.padding - span_h) / s.stride + 1,
            (self.w + 2 * s.padding - span_w) / s.stride + 1,
        )
    }

    fn rows(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Calls `f(column index into the image, or None for padding)` for every
    /// (row, output position) of one sample, in row-major order of the
    /// `[rows, out_h·out_w]` column matrix.
    fn for_each(&self, mut f: impl FnMut(usize, Option<usize>)) {
        let (oh, ow) = self.out_hw();
        let s = self.spec;
        let mut k = 0;
        for c in 0..self.c {
            for i in 0..self.kh {
                for j in 0..self.kw {
                    for y in 0..oh {
                        let iy = (y * s.stride + i * s.dilation) as isize - s.padding as isize;
                        for x in 0..ow {
                            let ix = (x * s.stride + j * s.dilation) as isize - s.padding as isize;
                            let src = (iy >= 0
                                && ix >= 0
                                && (iy as usize) < self.h
                                && (ix as usize) < self.w)
                                .then(|| (c * self.h + iy as usize) * self.w + ix as usize);
                            f(k, src);
                            k += 1;
                        }
                    }
                }
            }
        }
    }
}

fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
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

/// Unfolds `[N, C, H, W]` into `[N, C·kh·kw, out_h·out_w]`.
#[derive(Debug, Clone, Copy)]
pub struct Im2Col {
    kh: usize,
    kw: usize,
    spec: Conv2dSpec,
}

/// Folds `[N, C·kh·kw, out_h·out_w]` back into `[N, C, H, W]`, summing
/// overlaps: the adjoint of [`Im2Col`].
#[derive(Debug, Clone, Copy)]
pub struct Col2Im {
    geometry: Geometry,
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "esper-im2col"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32_slice(storage, layout, "im2col")?;
        let (n, c, h, w) = layout.shape().dims4()?;
        let g = Geometry {
            n,
            c,
            h,
            w,
            kh: self.kh,
            kw: self.kw,
            spec: self.spec,
        };
        let (oh, ow) = g.out_hw();
        let per_sample = g.rows() * oh * ow;
        let mut cols = vec![0f32; n * per_sample];
        for (sample, out) in cols.chunks_mut(per_sample).enumerate() {
            let img = &x[sample * c * h * w..(sample + 1) * c * h * w];
            g.for_each(|k, src| {
                if let Some(i) = src {
                    out[k] = img[i];
                }
            });
        }
        Ok((CpuStorage::F32(cols), Shape::from((n, g.rows(), oh * ow))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (n, c, h, w) = arg.dims4()?;
        let geometry = Geometry {
            n,
            c,
            h,
            w,
            kh: self.kh,
            kw: self.kw,
            spec: self.spec,
        };
        Ok(Some(grad_res.contiguous()?.apply_op1(Col2Im { geometry })?))
    }
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "esper-col2im"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let cols = f32_slice(storage, layout, "col2im")?;
        let g = self.geometry;
        let (oh, ow) = g.out_hw();
        let per_sample = g.rows() * oh * ow;
        let image = g.c * g.h * g.w;
        if cols.len() != g.n * per_sample {
            return Err(candle_core::Error::Msg(format!(
                "col2im: {} values for {} samples of {per_sample}",
                cols.len(),
                g.n
            )));
        }
        let mut x = vec![0f32; g.n * image];
        for (sample, img) in x.chunks_mut(image).enumerate() {
            let col = &cols[sample * per_sample..(sample + 1) * per_sample];
            g.for_each(|k, src| {
                if let Some(i) = src {
                    img[i] += col[k];
                }
            });
        }
        Ok((CpuStorage::F32(x), Shape::from((g.n, g.c, g.h, g.w))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let g = self.geometry;
        Ok(Some(grad_res.contiguous()?.apply_op1(Im2Col {
            kh: g.kh,
            kw: g.kw,
            spec: g.spec,
        })?))
    }
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
    let (n, c, h, w) = x.dims4()?;
    let (c_out, c_per_group, kh, kw) = kernel.dims4()?;
    let groups = spec.groups.max(1);
    if c % groups != 0 || c_out % groups != 0 || c_per_group * groups != c {
        return Err(candle_core::Error::Msg(format!(
            "conv2d: {c} input channels, kernel {c_out}x{c_per_group}, {groups} groups do not fit"
        )));
    }
    if spec.stride == 0 || spec.dilation == 0 {
        return Err(candle_core::Error::Msg(
            "conv2d: stride and dilation must be at least 1".into(),
        ));
    }
    let g = Geometry {
        n,
        c,
        h,
        w,
        kh,
        kw,
        spec,
    };
    if h + 2 * spec.padding < spec.dilation * (kh - 1) + 1
        || w + 2 * spec.padding < spec.dilation * (kw - 1) + 1
    {
        return Err(candle_core::Error::Msg(format!(
            "conv2d: a {kh}x{kw} kernel (dilation {}) does not fit a padded {h}x{w} input",
            spec.dilation
        )));
    }
    let (oh, ow) = g.out_hw();
    let k = c_per_group * kh * kw;
    let cols = x.contiguous()?.apply_op1(Im2Col { kh, kw, spec })?;
    // [N, G, K, L] = per sample and group, the K unfolded rows of its channels.
    let cols = cols.reshape((n, groups, k, oh * ow))?;
    let weights = kernel.reshape((1, groups, c_out / groups, k))?;
    let out = weights.broadcast_matmul(&cols)?;
    out.reshape((n, c_out, oh, ow))
}

#[cfg(test)]
mod tests;
