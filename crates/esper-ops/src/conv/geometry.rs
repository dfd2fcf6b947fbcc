//! The geometry of one convolution and the per-sample unfold (im2col) and
//! fold (col2im, its adjoint) that the convolution's GEMMs read and write.
//!
//! One sample's unfolded matrix is `[C·kh·kw, L]` (row `c·kh·kw + i·kw + j`,
//! column `y·out_w + x`), so a channel group's rows are contiguous. The
//! unfold writes every position (padding as 0), so scratch matrices can be
//! reused across calls without being cleared.

use super::Conv2dSpec;

/// Input `[N, C, H, W]`, kernel `kh × kw`, and the convolution's spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Geometry {
    pub(super) n: usize,
    pub(super) c: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
    pub(super) spec: Conv2dSpec,
}

impl Geometry {
    pub(super) fn out_hw(&self) -> (usize, usize) {
        let s = self.spec;
        let span_h = s.dilation * (self.kh - 1) + 1;
        let span_w = s.dilation * (self.kw - 1) + 1;
        (
            (self.h + 2 * s.padding - span_h) / s.stride + 1,
            (self.w + 2 * s.padding - span_w) / s.stride + 1,
        )
    }

    /// Output positions per sample and channel.
    pub(super) fn positions(&self) -> usize {
        let (oh, ow) = self.out_hw();
        oh * ow
    }

    /// Rows of one sample's unfolded matrix.
    pub(super) fn rows(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Values of one input sample.
    pub(super) fn image(&self) -> usize {
        self.c * self.h * self.w
    }

    /// For unfold row `row` (channel c, kernel offset i, j): calls
    /// `f(y, x0, x1, src)` for every output row `y` whose input row is inside
    /// the image, where output columns `x0..x1` read the input run that
    /// starts at `src` (index into one sample's `[C, H, W]` image) and steps
    /// by the stride. Columns outside `x0..x1` fall in the padding.
    pub(super) fn runs(&self, row: usize, mut f: impl FnMut(usize, usize, usize, usize)) {
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

    /// Unfolds one sample's image `[C, H, W]` into its columns of `cols`:
    /// row `r` of the sample's `[C·kh·kw, L]` matrix is
    /// `cols[r·row_stride + offset..][..L]`. Every position is written
    /// (padding as 0), so `cols` may hold anything before.
    pub(super) fn unfold(&self, img: &[f32], cols: &mut [f32], row_stride: usize, offset: usize) {
        let (l, ow, stride) = (self.positions(), self.out_hw().1, self.spec.stride);
        for r in 0..self.rows() {
            let out = &mut cols[r * row_stride + offset..][..l];
            // Rows of the output whose input row is outside the image, and
            // the columns left and right of each run, are padding.
            let mut next_row = 0;
            self.runs(r, |y, x0, x1, src| {
                out[next_row * ow..y * ow].fill(0.0);
                let row = &mut out[y * ow..(y + 1) * ow];
                row[..x0].fill(0.0);
                row[x1..].fill(0.0);
                let dst = &mut row[x0..x1];
                if stride == 1 {
                    dst.copy_from_slice(&img[src..src + (x1 - x0)]);
                } else {
                    for (k, d) in dst.iter_mut().enumerate() {
                        *d = img[src + k * stride];
                    }
                }
                next_row = y + 1;
            });
            out[next_row * ow..].fill(0.0);
        }
    }

    /// Adds one sample's unfolded gradient (its columns of `cols`, laid out
    /// as in [`Geometry::unfold`]) into its image gradient `img`
    /// (`[C, H, W]`), summing overlaps: the adjoint of the unfold.
    pub(super) fn fold(&self, cols: &[f32], row_stride: usize, offset: usize, img: &mut [f32]) {
        let (l, ow, stride) = (self.positions(), self.out_hw().1, self.spec.stride);
        for r in 0..self.rows() {
            let col = &cols[r * row_stride + offset..][..l];
            self.runs(r, |y, x0, x1, src| {
                let run = &col[y * ow + x0..y * ow + x1];
                if stride == 1 {
                    for (d, v) in img[src..src + run.len()].iter_mut().zip(run) {
                        *d += v;
                    }
                } else {
                    for (k, v) in run.iter().enumerate() {
                        img[src + k * stride] += v;
                    }
                }
            });
        }
    }
}
