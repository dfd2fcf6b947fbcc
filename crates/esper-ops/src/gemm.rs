//! A bounds-checked, safe entry point to the `gemm` crate's `f32` matrix
//! product (the kernel candle's CPU matmul runs on).
//!
//! The convolution needs what candle's `matmul` cannot give: products written
//! straight into a block of a larger output (one sample's `[Cout, L]` block of
//! `[N, Cout, L]`), operands read through transposing strides, and
//! accumulation into the destination (`dst += a · b`), single-threaded inside
//! an outer parallel loop over samples. `gemm::gemm` does all of this through
//! raw pointers and strides; this module is the only `unsafe` code of the
//! workspace, and every call is preceded by checks that make it sound.

use candle_core::Result;

/// A strided `rows × cols` view of a slice: element `(r, c)` is
/// `data[r·row_stride + c·col_stride]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MatRef<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

/// A writable strided view: as [`MatRef`], over distinct elements.
#[derive(Debug)]
pub(crate) struct MatMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

/// One past the largest index a `rows × cols` view with these strides reads.
fn span(rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> Option<usize> {
    if rows == 0 || cols == 0 {
        return Some(0);
    }
    (rows - 1)
        .checked_mul(row_stride)?
        .checked_add((cols - 1).checked_mul(col_stride)?)?
        .checked_add(1)
}

fn bounds_error(what: &str, rows: usize, cols: usize, len: usize) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "gemm: a {rows}x{cols} {what} view does not fit its {len} values"
    ))
}

impl<'a> MatRef<'a> {
    /// A row-major `rows × cols` matrix (`data` may be longer).
    pub(crate) fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Result<Self> {
        Self::strided(data, rows, cols, cols, 1)
    }

    /// The transpose of the row-major `cols × rows` matrix in `data`.
    pub(crate) fn transposed(data: &'a [f32], rows: usize, cols: usize) -> Result<Self> {
        Self::strided(data, rows, cols, 1, rows)
    }

    /// A `rows × cols` view with the given strides.
    pub(crate) fn strided(
        data: &'a [f32],
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Result<Self> {
        match span(rows, cols, row_stride, col_stride) {
            Some(end) if end <= data.len() => Ok(Self {
                data,
                rows,
                cols,
                row_stride,
                col_stride,
            }),
            _ => Err(bounds_error("source", rows, cols, data.len())),
        }
    }
}

impl<'a> MatMut<'a> {
    /// A row-major `rows × cols` destination (`data` may be longer).
    pub(crate) fn row_major(data: &'a mut [f32], rows: usize, cols: usize) -> Result<Self> {
        Self::rows_apart(data, rows, cols, cols)
    }

    /// A `rows × cols` destination whose rows start `row_stride ≥ cols`
    /// values apart (a block of columns of a wider row-major matrix).
    pub(crate) fn rows_apart(
        data: &'a mut [f32],
        rows: usize,
        cols: usize,
        row_stride: usize,
    ) -> Result<Self> {
        // Rows at least `cols` apart keep every element distinct.
        if row_stride < cols && rows > 1 {
            return Err(bounds_error(
                "overlapping destination",
                rows,
                cols,
                data.len(),
            ));
        }
        match span(rows, cols, row_stride, 1) {
            Some(end) if end <= data.len() => Ok(Self {
                data,
                rows,
                cols,
                row_stride,
                col_stride: 1,
            }),
            _ => Err(bounds_error("destination", rows, cols, data.len())),
        }
    }
}

/// `dst = a · b`, or `dst += a · b` when `accumulate`; on the calling thread
/// unless `parallel` (then on the rayon pool).
pub(crate) fn matmul(
    dst: MatMut<'_>,
    a: MatRef<'_>,
    b: MatRef<'_>,
    accumulate: bool,
    parallel: bool,
) -> Result<()> {
    if a.rows != dst.rows || b.cols != dst.cols || a.cols != b.rows {
        return Err(candle_core::Error::Msg(format!(
            "gemm: [{}x{}] = [{}x{}] · [{}x{}]",
            dst.rows, dst.cols, a.rows, a.cols, b.rows, b.cols
        )));
    }
    let parallelism = if parallel {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    let stride = |s: usize| s as isize;
    // SAFETY: every view was bounds-checked when it was made (`span` of its
    // shape and strides ≤ its slice's length), and the shapes agree (checked
    // above), so `gemm` reads `a` and `b` and writes `dst` only inside their
    // slices. `dst` is a unique borrow whose strides (unit columns, rows at
    // least `cols` apart: checked when it was made) address distinct
    // elements, so no two writes alias, and it cannot
    // overlap `a` or `b`, which are shared borrows.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            dst.rows,
            dst.cols,
            a.cols,
            dst.data.as_mut_ptr(),
            stride(dst.col_stride),
            stride(dst.row_stride),
            accumulate,
            a.data.as_ptr(),
            stride(a.col_stride),
            stride(a.row_stride),
            b.data.as_ptr(),
            stride(b.col_stride),
            stride(b.row_stride),
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        out
    }

    #[test]
    fn products_transposes_and_accumulation_match_a_naive_product() {
        let (m, k, n) = (5, 7, 3);
        let a = crate::cpu::pseudo(m * k, 1);
        let b = crate::cpu::pseudo(k * n, 2);
        let expected = naive(&a, &b, m, k, n);
        for parallel in [false, true] {
            let mut dst = vec![0f32; m * n];
            matmul(
                MatMut::row_major(&mut dst, m, n).unwrap(),
                MatRef::row_major(&a, m, k).unwrap(),
                MatRef::row_major(&b, k, n).unwrap(),
                false,
                parallel,
            )
            .unwrap();
            for (x, y) in dst.iter().zip(&expected) {
                assert!((x - y).abs() < 1e-5);
            }
            // (bᵀ)ᵀ read through transposing strides, accumulated on top.
            let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
            matmul(
                MatMut::row_major(&mut dst, m, n).unwrap(),
                MatRef::row_major(&a, m, k).unwrap(),
                MatRef::transposed(&bt, k, n).unwrap(),
                true,
                parallel,
            )
            .unwrap();
            for (x, y) in dst.iter().zip(&expected) {
                assert!((x - 2.0 * y).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn views_that_overrun_their_slice_and_mismatched_shapes_are_errors() {
        let v = vec![0f32; 6];
        assert!(MatRef::row_major(&v, 2, 4).is_err());
        assert!(MatRef::transposed(&v, 4, 2).is_err());
        let mut d = vec![0f32; 4];
        assert!(MatMut::row_major(&mut d, 3, 2).is_err());
        let a = MatRef::row_major(&v, 2, 3).unwrap();
        let b = MatRef::row_major(&v, 2, 3).unwrap();
        assert!(matmul(MatMut::row_major(&mut d, 2, 2).unwrap(), a, b, false, false).is_err());
    }
}
