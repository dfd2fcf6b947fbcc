//! 2-D convolution as im2col + GEMM, with an exact backward that never
//! computes the gradient of an input that needs none.
//!
//! `conv2d` unfolds the whole batch with the [`Im2Col`] custom op into one
//! `[C·kh·kw, N·L]` matrix (row `c·kh·kw + i·kw + j`, column `n·L + l`: channel
//! groups are contiguous rows; rows are filled in parallel) and multiplies it
//! by the `[Cout, C·kh·kw]` kernel in one GEMM per group ([`ConvGemm`], on
//! candle's CPU matmul). Its backward is two GEMMs, each only when its operand
//! is tracked: the kernel gradient `grad · colsᵀ` (one GEMM over the batch, no
//! per-sample gradients summed afterwards), and the unfolded input's gradient
//! `Wᵀ · grad` followed by [`Col2Im`] — the adjoint of the unfold, parallel
//! over samples — only when the input needs one: the data batch does not, so
//! nothing of its gradient is computed (candle 0.11 computes it through a
//! loop-nest `conv_transpose2d`, and its matmul backward computes both
//! operands' gradients). On CUDA, candle's own kernels run instead.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu::contiguous_f32;

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

    /// For unfold row `row` (channel c, kernel offset i, j): calls
    /// `f(y, x0, x1, src)` for every output row `y` whose input row is inside
    /// the image, where output columns `x0..x1` read the input run that
    /// starts at `src` (index into one sample's `[C, H, W]` image) and steps
    /// by the stride. Columns outside `x0..x1` fall in the padding.
    fn runs(&self, row: usize, mut f: impl FnMut(usize, usize, usize, usize)) {
        let s = self.spec;
        let (oh, ow) = self.out_hw();
        let (c, rest) = (row / (self.kh * self.kw), row % (self.kh * self.kw));
        let (i, j) = (rest / self.kw, rest % self.kw);
        // Input column of output column x: x·stride + j·dilation − padding.
        let offset = (j * s.dilation) as isize - s.padding as isize;
        let first = |x: usize| x as isize * s.stride as isize + offset;
        let x0 = (0..ow).find(|&x| first(x) >= 0).unwrap_or(ow);
        let x1 = (x0..ow)
            .find(|&x| first(x) >= self.w as isize)
            .unwrap_or(ow);
        if x0 >= x1 {
            return;
        }
        for y in 0..oh {
            let iy = (y * s.stride + i * s.dilation) as isize - s.padding as isize;
            if iy < 0 || iy >= self.h as isize {
                continue;
            }
            let src = (c * self.h + iy as usize) * self.w + first(x0) as usize;
            f(y, x0, x1, src);
        }
    }
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
        let x = contiguous_f32(storage, layout, "im2col")?;
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
        let (l, image) = (oh * ow, c * h * w);
        let mut cols = vec![0f32; g.rows() * n * l];
        // One row per task: row r holds every sample's and position's value
        // of (channel, i, j) = r; rows are disjoint, so they fill in parallel.
        cols.par_chunks_mut(n * l).enumerate().for_each(|(r, row)| {
            let stride = g.spec.stride;
            for (sample, out) in row.chunks_mut(l).enumerate() {
                let img = &x[sample * image..(sample + 1) * image];
                g.runs(r, |y, x0, x1, src| {
                    let dst = &mut out[y * ow + x0..y * ow + x1];
                    if stride == 1 {
                        dst.copy_from_slice(&img[src..src + (x1 - x0)]);
                    } else {
                        for (k, d) in dst.iter_mut().enumerate() {
                            *d = img[src + k * stride];
                        }
                    }
                });
            }
        });
        Ok((CpuStorage::F32(cols), Shape::from((g.rows(), n * l))))
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
        let cols = contiguous_f32(storage, layout, "col2im")?;
        let g = self.geometry;
        let (oh, ow) = g.out_hw();
        let (l, image) = (oh * ow, g.c * g.h * g.w);
        let width = g.n * l;
        if cols.len() != g.rows() * width {
            return Err(candle_core::Error::Msg(format!(
                "col2im: {} values for {} rows of {width}",
                cols.len(),
                g.rows()
            )));
        }
        let mut x = vec![0f32; g.n * image];
        // One sample per task: each owns its image and reads its columns.
        x.par_chunks_mut(image)
            .enumerate()
            .for_each(|(sample, img)| {
                let stride = g.spec.stride;
                for r in 0..g.rows() {
                    let col = &cols[r * width + sample * l..r * width + (sample + 1) * l];
                    g.runs(r, |y, x0, x1, src| {
                        for (k, v) in col[y * ow + x0..y * ow + x1].iter().enumerate() {
                            img[src + k * stride] += v;
                        }
                    });
                }
            });
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
    let m = c_out / groups;
    let l = oh * ow;
    let cols = x.contiguous()?.apply_op1(Im2Col { kh, kw, spec })?;
    // [G, K, N·L]: per group, the K unfolded rows of its channels.
    let cols = cols.reshape((groups, k, n * l))?;
    let weights = kernel.contiguous()?.reshape((groups, m, k))?;
    let out = weights.apply_op2(&cols, ConvGemm)?; // [G, M, N·L]
    out.reshape((c_out, n, l))?
        .transpose(0, 1)?
        .contiguous()?
        .reshape((n, c_out, oh, ow))
}

/// `[G, M, K] × [G, K, P] → [G, M, P]` on candle's CPU matmul, whose backward
/// computes each operand's gradient only when that operand is tracked
/// (candle's own matmul backward always computes both).
#[derive(Debug, Clone, Copy)]
pub struct ConvGemm;

impl CustomOp2 for ConvGemm {
    fn name(&self) -> &'static str {
        "esper-conv-gemm"
    }

    fn cpu_fwd(
        &self,
        w: &CpuStorage,
        wl: &Layout,
        cols: &CpuStorage,
        cl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, m, k) = wl.shape().dims3()?;
        let (g2, k2, p) = cl.shape().dims3()?;
        if g != g2 || k != k2 {
            return Err(candle_core::Error::Msg(format!(
                "conv gemm: [{g}, {m}, {k}] x [{g2}, {k2}, {p}]"
            )));
        }
        let out = w.matmul(cols, (g, m, p, k), wl, cl)?;
        Ok((out, Shape::from((g, m, p))))
    }

    fn bwd(
        &self,
        w: &Tensor,
        cols: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dw = if w.track_op() {
            Some(grad.matmul(&cols.t()?)?)
        } else {
            None
        };
        let dcols = if cols.track_op() {
            Some(w.t()?.matmul(grad)?)
        } else {
            None
        };
        Ok((dw, dcols))
    }
}

#[cfg(test)]
mod tests;
