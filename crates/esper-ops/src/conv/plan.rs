//! The work of a convolution over the batch, shared by the convolution ops
//! (plain and block).
//!
//! The batch is split into one contiguous run of samples per thread, and each
//! run into blocks of `B` samples that share one GEMM per group: the block's
//! images are unfolded side by side into a per-thread `[C·kh·kw, B·L]`
//! scratch matrix, so a small convolution (a seed's 4 channels) makes a few
//! GEMMs of useful width instead of one tiny GEMM per sample, each paying the
//! `gemm` crate's per-call packing. Products land in a per-thread `[Cout,
//! B·L]` staging matrix and are copied out per sample and channel as
//! contiguous rows of `L` values (and output gradients are gathered into it
//! the same way).

use std::cell::Cell;

use candle_core::Result;
use rayon::prelude::*;

use super::geometry::Geometry;
use crate::fused::{pool_plane, route_plane};
use crate::gemm::{MatMut, MatRef, matmul};

/// Columns a block's GEMM aims for: enough to amortise a call's packing.
const BLOCK_COLUMNS: usize = 1024;

/// Tasks a batch is split into, whatever the pool's size: the kernel
/// gradient's partial sums are grouped by task, so a split that followed the
/// thread count would round differently with 1 thread than with 2, and a
/// cohort's results would depend on `--jobs` (issue #19 item 4). Eight
/// tasks keep two to eight cores busy.
pub(crate) const BATCH_TASKS: usize = 8;

/// A convolution's GEMM shapes and how it runs.
#[derive(Debug, Clone, Copy)]
pub(super) struct Plan {
    pub(super) g: Geometry,
    pub(super) c_out: usize,
    /// Channel groups.
    groups: usize,
    /// Output channels per group.
    m: usize,
    /// Unfolded rows per group (`C/groups · kh · kw`).
    k: usize,
    /// Output positions per channel.
    pub(super) l: usize,
    /// Samples per task.
    per_task: usize,
    /// Samples per GEMM.
    block: usize,
    /// Fewer samples than threads: the GEMMs themselves run in parallel.
    parallel: bool,
}

/// Where the backward passes read a sample's `[Cout, L]` output gradient.
#[derive(Debug, Clone, Copy)]
pub(super) enum OutputGrad<'a> {
    /// The gradient of the convolution's output itself, `[N, Cout, L]`.
    Direct(&'a [f32]),
    /// The gradient of a block's pooled output (`[N, Cout, L/4]`), routed
    /// through bias, ReLU and 2×2 max pooling of the saved output `z`.
    Pooled {
        z: &'a [f32],
        bias: &'a [f32],
        pooled: &'a [f32],
    },
}

thread_local! {
    /// Each thread's scratch matrices, kept between calls: a step's
    /// convolutions would otherwise allocate (and the allocator zero and
    /// fault in) a megabyte or two per thread per op. Taken while in use, so
    /// a task this thread runs while it waits inside a parallel GEMM gets
    /// fresh ones instead of sharing.
    static COLS: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static STAGE: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// One thread's buffers: the block's unfolded images and its staged
/// outputs (or gathered output gradients). Their contents are whatever the
/// last user left: every region is written before it is read.
struct Scratch {
    cols: Vec<f32>,
    stage: Vec<f32>,
}

impl Scratch {
    fn take(cols: usize, stage: usize) -> Self {
        let grab = |cell: &'static std::thread::LocalKey<Cell<Vec<f32>>>, len: usize| {
            let mut v = cell.with(Cell::take);
            // Grown to exactly what is needed: `resize` alone would double a
            // smaller kept buffer's capacity (amortised growth), allocating
            // up to twice the scratch depending on what ran before.
            v.reserve_exact(len.saturating_sub(v.len()));
            v.resize(len, 0.0);
            v
        };
        Self {
            cols: grab(&COLS, cols),
            stage: grab(&STAGE, stage),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // Keep the larger of this and whatever a nested task put back.
        let keep = |cell: &'static std::thread::LocalKey<Cell<Vec<f32>>>, v: &mut Vec<f32>| {
            let v = std::mem::take(v);
            cell.with(|c| {
                let other = c.take();
                c.set(if other.capacity() > v.capacity() {
                    other
                } else {
                    v
                });
            });
        };
        keep(&COLS, &mut self.cols);
        keep(&STAGE, &mut self.stage);
    }
}

impl Plan {
    pub(super) fn new(g: Geometry, c_out: usize) -> Self {
        let groups = g.spec.groups.max(1);
        let threads = rayon::current_num_threads().max(1);
        let l = g.positions().max(1);
        let per_task = g.n.div_ceil(BATCH_TASKS).max(1);
        Self {
            g,
            c_out,
            groups,
            m: c_out / groups,
            k: g.rows() / groups,
            l: g.positions(),
            per_task,
            block: BLOCK_COLUMNS.div_ceil(l).clamp(1, per_task),
            parallel: g.n < threads,
        }
    }

    /// Values of one sample's output.
    pub(super) fn output(&self) -> usize {
        self.c_out * self.l
    }

    /// Values of the kernel.
    pub(super) fn kernel(&self) -> usize {
        self.c_out * self.k
    }

    /// Row stride of the block matrices.
    fn width(&self) -> usize {
        self.block * self.l
    }

    fn scratch(&self) -> Scratch {
        Scratch::take(self.g.rows() * self.width(), self.c_out * self.width())
    }

    /// The tasks' sample ranges, in order.
    fn task_samples(&self, task: usize) -> std::ops::Range<usize> {
        task * self.per_task..((task + 1) * self.per_task).min(self.g.n)
    }

    /// Unfolds samples `first..first + count` side by side into `cols`.
    fn unfold_block(&self, x: &[f32], first: usize, count: usize, cols: &mut [f32]) {
        let image = self.g.image();
        for s in 0..count {
            let n = first + s;
            self.g.unfold(
                &x[n * image..(n + 1) * image],
                cols,
                self.width(),
                s * self.l,
            );
        }
    }

    /// Gathers the `[Cout, L]` output gradients of samples `first..first +
    /// count` side by side into `stage`.
    fn gather_grad(&self, grad: OutputGrad<'_>, first: usize, count: usize, stage: &mut [f32]) {
        let (l, size, width, ow) = (self.l, self.output(), self.width(), self.g.out_hw().1);
        for s in 0..count {
            let n = first + s;
            for ch in 0..self.c_out {
                let dst = &mut stage[ch * width + s * l..][..l];
                match grad {
                    OutputGrad::Direct(g) => dst.copy_from_slice(&g[n * size + ch * l..][..l]),
                    OutputGrad::Pooled { z, bias, pooled } => route_plane(
                        &z[n * size + ch * l..][..l],
                        bias[ch],
                        &pooled[(n * size + ch * l) / 4..][..l / 4],
                        ow,
                        dst,
                    ),
                }
            }
        }
    }

    /// The convolution of every sample into `y [N, Cout, L]`; with
    /// `pooled = (bias, out)`, each sample's output also goes through bias,
    /// ReLU and 2×2 max pooling into `out [N, Cout, L/4]` right after it is
    /// computed, on the same thread, while it is in cache.
    pub(super) fn forward(
        &self,
        x: &[f32],
        kernel: &[f32],
        y: &mut [f32],
        pooled: Option<(&[f32], &mut [f32])>,
    ) -> Result<()> {
        let chunk = self.per_task * self.output();
        match pooled {
            None => y
                .par_chunks_mut(chunk)
                .enumerate()
                .try_for_each(|(task, ys)| self.forward_task(x, kernel, task, ys, None)),
            Some((bias, out)) => y
                .par_chunks_mut(chunk)
                .zip(out.par_chunks_mut(chunk / 4))
                .enumerate()
                .try_for_each(|(task, (ys, outs))| {
                    self.forward_task(x, kernel, task, ys, Some((bias, outs)))
                }),
        }
    }

    /// One task's run of samples (see [`Plan::forward`]).
    fn forward_task(
        &self,
        x: &[f32],
        kernel: &[f32],
        task: usize,
        ys: &mut [f32],
        mut pooled: Option<(&[f32], &mut [f32])>,
    ) -> Result<()> {
        let (m, k, l, width, size) = (self.m, self.k, self.l, self.width(), self.output());
        let ow = self.g.out_hw().1;
        let mut scratch = self.scratch();
        let samples = self.task_samples(task);
        for first in samples.clone().step_by(self.block) {
            let count = self.block.min(samples.end - first);
            self.unfold_block(x, first, count, &mut scratch.cols);
            for group in 0..self.groups {
                matmul(
                    MatMut::rows_apart(
                        &mut scratch.stage[group * m * width..],
                        m,
                        count * l,
                        width,
                    )?,
                    MatRef::row_major(&kernel[group * m * k..], m, k)?,
                    MatRef::strided(&scratch.cols[group * k * width..], k, count * l, width, 1)?,
                    false,
                    self.parallel,
                )?;
            }
            for s in 0..count {
                let i = first - samples.start + s;
                let out = &mut ys[i * size..(i + 1) * size];
                for (ch, row) in out.chunks_exact_mut(l).enumerate() {
                    row.copy_from_slice(&scratch.stage[ch * width + s * l..][..l]);
                }
                if let Some((bias, outs)) = pooled.as_mut() {
                    let sample = &mut outs[i * size / 4..(i + 1) * size / 4];
                    for (ch, (z, o)) in out
                        .chunks_exact(l)
                        .zip(sample.chunks_exact_mut(l / 4))
                        .enumerate()
                    {
                        pool_plane(z, bias[ch], ow, o);
                    }
                }
            }
        }
        Ok(())
    }

    /// The input gradient `[N, C, H, W]`: per block `Wᵀ · grad`, folded back
    /// per sample.
    pub(super) fn input_grad(&self, kernel: &[f32], grad: OutputGrad<'_>) -> Result<Vec<f32>> {
        let (m, k, l, width, image) = (self.m, self.k, self.l, self.width(), self.g.image());
        let mut dx = vec![0f32; self.g.n * image];
        dx.par_chunks_mut(self.per_task * image)
            .enumerate()
            .try_for_each(|(task, images)| -> Result<()> {
                let mut scratch = self.scratch();
                let samples = self.task_samples(task);
                for first in samples.clone().step_by(self.block) {
                    let count = self.block.min(samples.end - first);
                    self.gather_grad(grad, first, count, &mut scratch.stage);
                    for group in 0..self.groups {
                        matmul(
                            MatMut::rows_apart(
                                &mut scratch.cols[group * k * width..],
                                k,
                                count * l,
                                width,
                            )?,
                            MatRef::transposed(&kernel[group * m * k..], k, m)?,
                            MatRef::strided(
                                &scratch.stage[group * m * width..],
                                m,
                                count * l,
                                width,
                                1,
                            )?,
                            false,
                            self.parallel,
                        )?;
                    }
                    for s in 0..count {
                        let i = first - samples.start + s;
                        let img = &mut images[i * image..(i + 1) * image];
                        self.g.fold(&scratch.cols, width, s * l, img);
                    }
                }
                Ok(())
            })?;
        Ok(dx)
    }

    /// The kernel gradient `[Cout, K]`: per thread `Σ grad · colsᵀ` over its
    /// blocks, accumulated in place by the GEMM; the partials summed in task
    /// order.
    pub(super) fn kernel_grad(&self, x: &[f32], grad: OutputGrad<'_>) -> Result<Vec<f32>> {
        let (m, k, l, width) = (self.m, self.k, self.l, self.width());
        let tasks = self.g.n.div_ceil(self.per_task);
        let partials = (0..tasks)
            .into_par_iter()
            .map(|task| -> Result<Vec<f32>> {
                let mut scratch = self.scratch();
                let mut dk = vec![0f32; self.kernel()];
                let samples = self.task_samples(task);
                for first in samples.clone().step_by(self.block) {
                    let count = self.block.min(samples.end - first);
                    self.unfold_block(x, first, count, &mut scratch.cols);
                    self.gather_grad(grad, first, count, &mut scratch.stage);
                    for group in 0..self.groups {
                        matmul(
                            MatMut::row_major(&mut dk[group * m * k..], m, k)?,
                            MatRef::strided(
                                &scratch.stage[group * m * width..],
                                m,
                                count * l,
                                width,
                                1,
                            )?,
                            // colsᵀ: element (j, r) is cols[r·width + j].
                            MatRef::strided(
                                &scratch.cols[group * k * width..],
                                count * l,
                                k,
                                1,
                                width,
                            )?,
                            first > samples.start,
                            self.parallel,
                        )?;
                    }
                }
                Ok(dk)
            })
            .collect::<Result<Vec<_>>>()?;
        let mut partials = partials.into_iter();
        let mut dk = partials.next().unwrap_or_else(|| vec![0f32; self.kernel()]);
        for partial in partials {
            for (d, p) in dk.iter_mut().zip(&partial) {
                *d += p;
            }
        }
        Ok(dk)
    }
}
