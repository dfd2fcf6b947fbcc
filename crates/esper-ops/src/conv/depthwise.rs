//! Depthwise convolution (`groups == C == Cout`) computed directly, without
//! im2col or GEMM.
//!
//! Each output channel reads one input channel through a `kh × kw` kernel,
//! so the general path's GEMMs have one row (`M = 1`, `K = kh·kw`): most of
//! their time goes to unfolding the image `kh·kw` times and to packing, not
//! to arithmetic. Here every kernel tap is one pass over a plane, in all
//! three directions:
//! * forward: `y[n, c] = Σ_tap w[c, tap] · shift_tap(x[n, c])`;
//! * input gradient: the adjoint, `dx[n, c] += w[c, tap] · unshift_tap(g[n, c])`;
//! * kernel gradient: `dw[c, tap] = Σ_n ⟨g[n, c], shift_tap(x[n, c])⟩`, one
//!   partial per task summed at the end.
//!
//! At stride 1 (a seed's case) each `(sample, channel)` plane is first copied
//! into a zero-padded scratch plane of width `PW = W + 2·padding`, and the
//! output is computed on a grid of the same width: a tap is then a single
//! shift, `out[i] += w · padded[i + ky·d·PW + kx·d]` for every `i` of the
//! plane at once — one long contiguous loop the compiler vectorises, instead
//! of one loop per output row of a 7- or 14-wide plane. The `PW − ow` extra
//! columns per row are computed and dropped (zeros in the gradient
//! direction). Other strides walk the rows (`Geometry::runs`).
//!
//! Work is split over samples on the rayon pool. The allocations are the
//! results, two scratch planes per task and one partial kernel gradient per
//! task. The kernel gradient's tasks are fixed by the batch and the pool size
//! and summed in order, so a run repeats bit for bit.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::geometry::Geometry;
use crate::cpu::contiguous_f32;

/// Samples per rayon task at least: a sample of a small seed is a few
/// microseconds of work.
const MIN_SAMPLES_PER_TASK: usize = 4;

/// Samples per kernel-gradient task: the batch split into
/// [`super::plan::BATCH_TASKS`] tasks, at least `MIN_SAMPLES_PER_TASK`.
/// Depends only on the batch, never on the pool size, so the partial sums
/// are grouped the same way every run and with any thread count.
fn samples_per_task(n: usize) -> usize {
    n.div_ceil(super::plan::BATCH_TASKS)
        .max(MIN_SAMPLES_PER_TASK)
}

/// Whether `x`'s convolution with a `[c_out, …]` kernel is depthwise.
pub(super) fn applies(geometry: &Geometry, c_out: usize) -> bool {
    geometry.spec.groups > 1 && geometry.spec.groups == geometry.c && c_out == geometry.c
}

/// The forward op: `(x [N, C, H, W], kernel [C, 1, kh, kw]) → [N, C, oh, ow]`.
#[derive(Debug, Clone, Copy)]
pub(super) struct DepthwiseForward {
    pub(super) geometry: Geometry,
}

/// `(kernel, grad [N, C, oh, ow]) → grad of x [N, C, H, W]`.
#[derive(Debug, Clone, Copy)]
struct DepthwiseGradInput {
    geometry: Geometry,
}

/// `(x, grad [N, C, oh, ow]) → grad of the kernel [C, 1, kh, kw]`.
#[derive(Debug, Clone, Copy)]
struct DepthwiseGradKernel {
    geometry: Geometry,
}

fn check(len: usize, expected: usize, what: &str, op: &str) -> Result<()> {
    if len != expected {
        return Err(candle_core::Error::Msg(format!(
            "{op}: {what} has {len} values, the geometry needs {expected}"
        )));
    }
    Ok(())
}

/// The padded-grid layout of one plane at stride 1.
#[derive(Debug, Clone, Copy)]
struct Grid {
    /// Row width of the padded input and of the computed output grid.
    pw: usize,
    /// Values of the padded input plane (with slack for the last tap's shift).
    padded: usize,
    /// Values of the output grid (`oh · pw`).
    out: usize,
}

impl Grid {
    fn of(g: &Geometry) -> Self {
        let p = g.spec.padding;
        let pw = g.w + 2 * p;
        let (oh, _) = g.out_hw();
        Self {
            pw,
            padded: (g.h + 2 * p) * pw + (g.kw - 1) * g.spec.dilation,
            out: oh * pw,
        }
    }

    /// Shift of tap `(i, j)` in the padded plane.
    fn shift(&self, g: &Geometry, i: usize, j: usize) -> usize {
        (i * self.pw + j) * g.spec.dilation
    }

    /// Copies plane `src` (`H × W`) into the interior of `padded` (its
    /// border and slack zero).
    fn pad(&self, g: &Geometry, src: &[f32], padded: &mut [f32]) {
        let p = g.spec.padding;
        padded.fill(0.0);
        for (y, row) in src.chunks_exact(g.w).enumerate() {
            let start = (y + p) * self.pw + p;
            padded[start..start + g.w].copy_from_slice(row);
        }
    }
}

/// For every tap `(c, i, j)` of one sample: `f(tap, y, x0, x1, src)` over the
/// output rows that read inside the image (see `Geometry::runs`).
fn taps(g: &Geometry, mut f: impl FnMut(usize, usize, usize, usize, usize)) {
    for tap in 0..g.rows() {
        g.runs(tap, |y, x0, x1, src| f(tap, y, x0, x1, src));
    }
}

impl DepthwiseForward {
    fn run(&self, x: &[f32], kernel: &[f32]) -> Vec<f32> {
        let g = self.geometry;
        let (l, ow, stride, kk) = (g.positions(), g.out_hw().1, g.spec.stride, g.kh * g.kw);
        let mut y = vec![0f32; g.n * g.c * l];
        if stride == 1 {
            let grid = Grid::of(&g);
            let plane = g.h * g.w;
            y.par_chunks_mut(l)
                .zip(x.par_chunks(plane))
                .enumerate()
                .with_min_len(MIN_SAMPLES_PER_TASK * g.c)
                .for_each_init(
                    || (vec![0f32; grid.padded], vec![0f32; grid.out]),
                    |(padded, acc), (index, (out, src))| {
                        let c = index % g.c;
                        grid.pad(&g, src, padded);
                        acc.fill(0.0);
                        for i in 0..g.kh {
                            let weights = &kernel[c * kk + i * g.kw..][..g.kw];
                            let row = &padded[grid.shift(&g, i, 0)..];
                            taps_of_row(acc, row, weights, g.spec.dilation);
                        }
                        for (row, computed) in out.chunks_exact_mut(ow).zip(acc.chunks(grid.pw)) {
                            row.copy_from_slice(&computed[..ow]);
                        }
                    },
                );
            return y;
        }
        // Stride > 1: row by row, a strided gather per run.
        y.par_chunks_mut(g.c * l)
            .zip(x.par_chunks(g.image()))
            .with_min_len(MIN_SAMPLES_PER_TASK)
            .for_each(|(out, img)| {
                taps(&g, |tap, row, x0, x1, src| {
                    let w = kernel[tap];
                    let c = tap / kk;
                    let dst = &mut out[c * l + row * ow + x0..c * l + row * ow + x1];
                    for (k, d) in dst.iter_mut().enumerate() {
                        *d += w * img[src + k * stride];
                    }
                });
            });
        y
    }
}

impl CustomOp2 for DepthwiseForward {
    fn name(&self) -> &'static str {
        "esper-depthwise-conv2d"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.geometry;
        let op = "depthwise conv2d";
        let x = contiguous_f32(xs, xl, op)?;
        let kernel = contiguous_f32(ws, wl, op)?;
        check(x.len(), g.n * g.image(), "the input", op)?;
        check(kernel.len(), g.rows(), "the kernel", op)?;
        let (oh, ow) = g.out_hw();
        Ok((
            CpuStorage::F32(self.run(x, kernel)),
            Shape::from((g.n, g.c, oh, ow)),
        ))
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
            Some(kernel.apply_op2(&grad, DepthwiseGradInput { geometry })?)
        } else {
            None
        };
        let dk = if kernel.track_op() {
            Some(x.apply_op2(&grad, DepthwiseGradKernel { geometry })?)
        } else {
            None
        };
        Ok((dx, dk))
    }
}

impl CustomOp2 for DepthwiseGradInput {
    fn name(&self) -> &'static str {
        "esper-depthwise-conv2d-grad-input"
    }

    fn cpu_fwd(
        &self,
        ws: &CpuStorage,
        wl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.geometry;
        let op = "depthwise conv2d backward";
        let kernel = contiguous_f32(ws, wl, op)?;
        let grad = contiguous_f32(gs, gl, op)?;
        let (l, ow, stride, kk) = (g.positions(), g.out_hw().1, g.spec.stride, g.kh * g.kw);
        check(kernel.len(), g.rows(), "the kernel", op)?;
        check(grad.len(), g.n * g.c * l, "the output gradient", op)?;
        let mut dx = vec![0f32; g.n * g.image()];
        if stride == 1 {
            let grid = Grid::of(&g);
            let (plane, p) = (g.h * g.w, g.spec.padding);
            dx.par_chunks_mut(plane)
                .zip(grad.par_chunks(l))
                .enumerate()
                .with_min_len(MIN_SAMPLES_PER_TASK * g.c)
                .for_each_init(
                    || (vec![0f32; grid.padded], vec![0f32; grid.out]),
                    |(dpadded, gp), (index, (dst, src))| {
                        let c = index % g.c;
                        spread(&grid, ow, src, gp);
                        dpadded.fill(0.0);
                        for i in 0..g.kh {
                            for j in 0..g.kw {
                                let w = kernel[c * kk + i * g.kw + j];
                                let shifted = &mut dpadded[grid.shift(&g, i, j)..][..grid.out];
                                for (d, v) in shifted.iter_mut().zip(gp.iter()) {
                                    *d += w * v;
                                }
                            }
                        }
                        for (y, row) in dst.chunks_exact_mut(g.w).enumerate() {
                            let start = (y + p) * grid.pw + p;
                            row.copy_from_slice(&dpadded[start..start + g.w]);
                        }
                    },
                );
            return Ok((CpuStorage::F32(dx), Shape::from((g.n, g.c, g.h, g.w))));
        }
        dx.par_chunks_mut(g.image())
            .zip(grad.par_chunks(g.c * l))
            .with_min_len(MIN_SAMPLES_PER_TASK)
            .for_each(|(img, gs)| {
                taps(&g, |tap, row, x0, x1, src| {
                    let w = kernel[tap];
                    let c = tap / kk;
                    let run = &gs[c * l + row * ow + x0..c * l + row * ow + x1];
                    for (k, v) in run.iter().enumerate() {
                        img[src + k * stride] += w * v;
                    }
                });
            });
        Ok((CpuStorage::F32(dx), Shape::from((g.n, g.c, g.h, g.w))))
    }
}

impl CustomOp2 for DepthwiseGradKernel {
    fn name(&self) -> &'static str {
        "esper-depthwise-conv2d-grad-kernel"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = self.geometry;
        let op = "depthwise conv2d backward";
        let x = contiguous_f32(xs, xl, op)?;
        let grad = contiguous_f32(gs, gl, op)?;
        let (l, ow, stride, kk) = (g.positions(), g.out_hw().1, g.spec.stride, g.kh * g.kw);
        check(x.len(), g.n * g.image(), "the input", op)?;
        check(grad.len(), g.n * g.c * l, "the output gradient", op)?;
        let taps_total = g.rows();
        // Fixed tasks of whole samples, their partials summed in task order:
        // a rayon `fold`/`reduce` groups the partial sums as the scheduler
        // happens to split the work, so the same step could round
        // differently from run to run and a seeded run would not repeat.
        let per_task = samples_per_task(g.n);
        let tasks = g.n.div_ceil(per_task);
        let partials: Vec<Vec<f32>> = if stride == 1 {
            let grid = Grid::of(&g);
            let plane = g.h * g.w;
            (0..tasks)
                .into_par_iter()
                .map(|task| {
                    let mut partial = vec![0f32; taps_total];
                    let mut padded = vec![0f32; grid.padded];
                    let mut gp = vec![0f32; grid.out];
                    let samples = task * per_task..((task + 1) * per_task).min(g.n);
                    for index in samples.start * g.c..samples.end * g.c {
                        let c = index % g.c;
                        grid.pad(&g, &x[index * plane..][..plane], &mut padded);
                        spread(&grid, ow, &grad[index * l..][..l], &mut gp);
                        for i in 0..g.kh {
                            let sums = &mut partial[c * kk + i * g.kw..][..g.kw];
                            let row = &padded[grid.shift(&g, i, 0)..];
                            dots_of_row(sums, &gp, row, g.spec.dilation);
                        }
                    }
                    partial
                })
                .collect()
        } else {
            (0..tasks)
                .into_par_iter()
                .map(|task| {
                    let mut partial = vec![0f32; taps_total];
                    for sample in task * per_task..((task + 1) * per_task).min(g.n) {
                        let img = &x[sample * g.image()..][..g.image()];
                        let gs = &grad[sample * g.c * l..][..g.c * l];
                        taps(&g, |tap, row, x0, x1, src| {
                            let c = tap / kk;
                            let run = &gs[c * l + row * ow + x0..c * l + row * ow + x1];
                            let dot: f32 = run
                                .iter()
                                .enumerate()
                                .map(|(k, v)| v * img[src + k * stride])
                                .sum();
                            partial[tap] += dot;
                        });
                    }
                    partial
                })
                .collect()
        };
        let dk = partials
            .into_iter()
            .reduce(sum_into)
            .unwrap_or_else(|| vec![0f32; taps_total]);
        Ok((CpuStorage::F32(dk), Shape::from((g.c, 1, g.kh, g.kw))))
    }
}

/// Lays one plane's output gradient (`oh × ow`) out on the padded grid
/// (`oh × pw`), the extra columns zero.
fn spread(grid: &Grid, ow: usize, src: &[f32], gp: &mut [f32]) {
    for (row, from) in gp.chunks_exact_mut(grid.pw).zip(src.chunks_exact(ow)) {
        row[..ow].copy_from_slice(from);
        row[ow..].fill(0.0);
    }
}

fn sum_into(mut a: Vec<f32>, b: Vec<f32>) -> Vec<f32> {
    for (x, y) in a.iter_mut().zip(&b) {
        *x += y;
    }
    a
}

/// Lanes of [`dot`]'s partial sums.
const LANES: usize = 16;

/// `Σ a·b` in `LANES` independent partial sums: a plain `iter().sum()` of
/// `f32` must add in order, one dependent add at a time, and does not
/// vectorise (it made the kernel gradient 4× slower than the forward).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let whole = a.len().min(b.len()) / LANES * LANES;
    for (ca, cb) in a[..whole]
        .chunks_exact(LANES)
        .zip(b[..whole].chunks_exact(LANES))
    {
        for ((s, x), y) in acc.iter_mut().zip(ca).zip(cb) {
            *s += x * y;
        }
    }
    let tail: f32 = a[whole..].iter().zip(&b[whole..]).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// Most taps of one kernel row handled together (registers for their sums).
const MAX_ROW_TAPS: usize = 8;

/// `acc[x] += Σ_j w[j] · src[x + j·d]` for every `x` of `acc`: one kernel
/// row's taps, `LANES` outputs at a time held in registers across the taps
/// (one load and store of `acc` per row instead of per tap). `src` holds at
/// least `acc.len() + (w.len() − 1)·d` values.
fn taps_of_row(acc: &mut [f32], src: &[f32], w: &[f32], d: usize) {
    let n = acc.len();
    let whole = n / LANES * LANES;
    for start in (0..whole).step_by(LANES) {
        let mut v = [0f32; LANES];
        v.copy_from_slice(&acc[start..start + LANES]);
        for (j, &wj) in w.iter().enumerate() {
            let s = &src[start + j * d..start + j * d + LANES];
            for (a, x) in v.iter_mut().zip(s) {
                *a += wj * x;
            }
        }
        acc[start..start + LANES].copy_from_slice(&v);
    }
    for (x, a) in acc.iter_mut().enumerate().skip(whole) {
        for (j, &wj) in w.iter().enumerate() {
            *a += wj * src[x + j * d];
        }
    }
}

/// `sums[j] += Σ_x g[x] · src[x + j·d]` for one kernel row's taps: `g` read
/// once per `LANES` positions for all taps, each tap's partial sums in
/// `LANES` lanes (see [`dot`]). `src` holds at least `g.len() +
/// (sums.len() − 1)·d` values.
fn dots_of_row(sums: &mut [f32], g: &[f32], src: &[f32], d: usize) {
    if sums.len() > MAX_ROW_TAPS {
        for (j, s) in sums.iter_mut().enumerate() {
            *s += dot(g, &src[j * d..j * d + g.len()]);
        }
        return;
    }
    let n = g.len();
    let whole = n / LANES * LANES;
    let mut acc = [[0f32; LANES]; MAX_ROW_TAPS];
    for start in (0..whole).step_by(LANES) {
        let gv = &g[start..start + LANES];
        for (j, lanes) in acc.iter_mut().enumerate().take(sums.len()) {
            let s = &src[start + j * d..start + j * d + LANES];
            for ((a, x), y) in lanes.iter_mut().zip(gv).zip(s) {
                *a += x * y;
            }
        }
    }
    for (j, s) in sums.iter_mut().enumerate() {
        let tail: f32 = (whole..n).map(|x| g[x] * src[x + j * d]).sum();
        *s += acc[j].iter().sum::<f32>() + tail;
    }
}
