//! k×k pooling with stride k (max and average), as custom ops with exact
//! gradients: max pooling routes each window's gradient to its first maximal
//! element (found again in the backward pass from the saved input, so
//! nothing but the input is kept), average pooling spreads it evenly. Both
//! run over the `N·C` planes in parallel. candle 0.11's `max_pool2d` backward
//! is wrong (docs/DESIGN.md §12) and the reshape-and-max formulation costs several
//! full-size temporaries per layer; these are one pass each way. On CUDA,
//! candle's own kernels run (max pooling by reshape-and-max, which is exact).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu::contiguous_f32;

fn check(x: &Tensor, k: usize, op: &str) -> Result<(usize, usize, usize, usize)> {
    let (n, c, h, w) = x.dims4()?;
    if k == 0 || h % k != 0 || w % k != 0 {
        return Err(candle_core::Error::Msg(format!(
            "{op}: a {k}x{k} window with stride {k} needs height and width divisible by {k}, got {h}x{w}"
        )));
    }
    Ok((n, c, h, w))
}

/// Index (within its plane) of the first maximum of every window.
fn argmax(plane: &[f32], w: usize, k: usize, oy: usize, ox: usize) -> usize {
    let mut best = (oy * k) * w + ox * k;
    for i in 0..k {
        for j in 0..k {
            let at = (oy * k + i) * w + ox * k + j;
            // NaN compares false: the first element stays unless a later one
            // is greater; a NaN window still routes to one element.
            if plane[at] > plane[best] {
                best = at;
            }
        }
    }
    best
}

/// Max pooling `[N, C, H, W] → [N, C, H/k, W/k]`.
#[derive(Debug, Clone, Copy)]
struct MaxPool {
    k: usize,
}

/// The max pooling gradient: `(x, grad_out) → grad_x`.
#[derive(Debug, Clone, Copy)]
struct MaxPoolGrad {
    k: usize,
}

/// Average pooling `[N, C, H, W] → [N, C, H/k, W/k]`.
#[derive(Debug, Clone, Copy)]
struct AvgPool {
    k: usize,
}

/// The average pooling gradient: `grad_out → grad_x` (each value spread over
/// its window, divided by k²).
#[derive(Debug, Clone, Copy)]
struct AvgPoolGrad {
    k: usize,
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "esper-max-pool"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "max_pool")?;
        let (n, c, h, w) = layout.shape().dims4()?;
        let k = self.k;
        let (oh, ow) = (h / k, w / k);
        let mut out = vec![0f32; n * c * oh * ow];
        out.par_chunks_mut(oh * ow)
            .zip(x.par_chunks(h * w))
            .for_each(|(o, plane)| {
                for oy in 0..oh {
                    for ox in 0..ow {
                        o[oy * ow + ox] = plane[argmax(plane, w, k, oy, ox)];
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2(
            &grad_res.contiguous()?,
            MaxPoolGrad { k: self.k },
        )?))
    }
}

impl CustomOp2 for MaxPoolGrad {
    fn name(&self) -> &'static str {
        "esper-max-pool-grad"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(xs, xl, "max_pool backward")?;
        let grad = contiguous_f32(gs, gl, "max_pool backward")?;
        let (n, c, h, w) = xl.shape().dims4()?;
        let k = self.k;
        let (oh, ow) = (h / k, w / k);
        if grad.len() != n * c * oh * ow {
            return Err(candle_core::Error::Msg(format!(
                "max_pool backward: gradient of {} values for {n}x{c}x{oh}x{ow}",
                grad.len()
            )));
        }
        let mut dx = vec![0f32; n * c * h * w];
        dx.par_chunks_mut(h * w)
            .zip(x.par_chunks(h * w))
            .zip(grad.par_chunks(oh * ow))
            .for_each(|((d, plane), g)| {
                for oy in 0..oh {
                    for ox in 0..ow {
                        d[argmax(plane, w, k, oy, ox)] += g[oy * ow + ox];
                    }
                }
            });
        Ok((CpuStorage::F32(dx), xl.shape().clone()))
    }
}

impl CustomOp1 for AvgPool {
    fn name(&self) -> &'static str {
        "esper-avg-pool"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "avg_pool")?;
        let (n, c, h, w) = layout.shape().dims4()?;
        let k = self.k;
        let (oh, ow) = (h / k, w / k);
        let scale = 1.0 / (k * k) as f32;
        let mut out = vec![0f32; n * c * oh * ow];
        out.par_chunks_mut(oh * ow)
            .zip(x.par_chunks(h * w))
            .for_each(|(o, plane)| {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut sum = 0f32;
                        for i in 0..k {
                            let row = (oy * k + i) * w + ox * k;
                            sum += plane[row..row + k].iter().sum::<f32>();
                        }
                        o[oy * ow + ox] = sum * scale;
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            grad_res
                .contiguous()?
                .apply_op1(AvgPoolGrad { k: self.k })?,
        ))
    }
}

impl CustomOp1 for AvgPoolGrad {
    fn name(&self) -> &'static str {
        "esper-avg-pool-grad"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = contiguous_f32(storage, layout, "avg_pool backward")?;
        let (n, c, oh, ow) = layout.shape().dims4()?;
        let k = self.k;
        let (h, w) = (oh * k, ow * k);
        let scale = 1.0 / (k * k) as f32;
        let mut dx = vec![0f32; n * c * h * w];
        dx.par_chunks_mut(h * w)
            .zip(g.par_chunks(oh * ow))
            .for_each(|(d, g)| {
                for y in 0..h {
                    for x in 0..w {
                        d[y * w + x] = g[(y / k) * ow + x / k] * scale;
                    }
                }
            });
        Ok((CpuStorage::F32(dx), Shape::from((n, c, h, w))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            grad_res.contiguous()?.apply_op1(AvgPool { k: self.k })?,
        ))
    }
}

/// k×k max pooling with stride k; the gradient goes to each window's first
/// maximal element (exact, unlike candle 0.11's `max_pool2d` backward).
pub fn max_pool2d(x: &Tensor, k: usize) -> Result<Tensor> {
    let (n, c, h, w) = check(x, k, "max_pool2d")?;
    if !x.device().is_cpu() {
        return x.reshape((n, c, h / k, k, w / k, k))?.max(5)?.max(3);
    }
    x.contiguous()?.apply_op1(MaxPool { k })
}

/// k×k average pooling with stride k.
pub fn avg_pool2d(x: &Tensor, k: usize) -> Result<Tensor> {
    check(x, k, "avg_pool2d")?;
    if !x.device().is_cpu() {
        return x.avg_pool2d(k);
    }
    x.contiguous()?.apply_op1(AvgPool { k })
}

/// 2×2 max pooling, stride 2 ([`max_pool2d`] with k = 2).
pub fn max_pool2x2(x: &Tensor) -> Result<Tensor> {
    max_pool2d(x, 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::pseudo;
    use candle_core::{DType, Device, Var};

    /// Pooling gradient against central finite differences (candle's own
    /// `max_pool2d` backward fails this; docs/DESIGN.md §12).
    #[test]
    fn max_pool_gradient_matches_finite_differences() {
        let values: Vec<f32> = (0..2 * 3 * 4 * 4)
            .map(|i| ((i * 37) % 101) as f32 / 10.0)
            .collect();
        let x = Var::from_vec(values.clone(), (2, 3, 4, 4), &Device::Cpu).unwrap();
        let weights = Tensor::arange(1f32, 25.0, &Device::Cpu)
            .unwrap()
            .reshape((2, 3, 2, 2))
            .unwrap();
        let loss = |t: &Tensor| {
            max_pool2x2(t)
                .unwrap()
                .mul(&weights)
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let grads = loss(x.as_tensor()).backward().unwrap();
        let analytic: Vec<f32> = grads
            .get(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        // Values in a window differ by at least 0.1, so a step of 0.04 never changes
        // which element is the maximum; f32 sums of ~500 allow ~1e-3 relative error.
        let eps = 0.04f32;
        for i in 0..values.len() {
            let mut plus = values.clone();
            plus[i] += eps;
            let mut minus = values.clone();
            minus[i] -= eps;
            let f = |v: Vec<f32>| {
                loss(&Tensor::from_vec(v, (2, 3, 4, 4), &Device::Cpu).unwrap())
                    .to_scalar::<f32>()
                    .unwrap()
            };
            let numeric = (f(plus) - f(minus)) / (2.0 * eps);
            let tolerance = 2e-3 * analytic[i].abs().max(1.0);
            assert!(
                (numeric - analytic[i]).abs() < tolerance,
                "element {i}: numeric {numeric}, analytic {}",
                analytic[i]
            );
        }
        let odd = Tensor::zeros((1, 1, 3, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(max_pool2x2(&odd).is_err());
    }

    fn vec(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    proptest::proptest! {
        /// Forward and gradient of k×k max and average pooling match the
        /// reshape formulation (max: exact, no ties in random values) and
        /// candle's average pooling, for random shapes and k.
        #[test]
        fn pooling_matches_the_reference_formulas(
            n in 1usize..3, c in 1usize..4, hk in 1usize..4, wk in 1usize..4,
            k in 2usize..4, seed in 0u64..1000,
        ) {
            let (h, w) = (hk * k, wk * k);
            let x = Var::from_vec(pseudo(n * c * h * w, seed), (n, c, h, w), &Device::Cpu).unwrap();
            let weights = Tensor::from_vec(pseudo(n * c * hk * wk, seed + 1), (n, c, hk, wk), &Device::Cpu).unwrap();
            let reference_max = x.as_tensor().reshape((n, c, hk, k, wk, k)).unwrap().max(5).unwrap().max(3).unwrap();
            let ours = max_pool2d(x.as_tensor(), k).unwrap();
            proptest::prop_assert_eq!(vec(&ours), vec(&reference_max));
            let g_ours = ours.mul(&weights).unwrap().sum_all().unwrap().backward().unwrap();
            let g_ref = reference_max.mul(&weights).unwrap().sum_all().unwrap().backward().unwrap();
            proptest::prop_assert_eq!(vec(g_ours.get(&x).unwrap()), vec(g_ref.get(&x).unwrap()));

            let reference_avg = x.as_tensor().avg_pool2d(k).unwrap();
            let ours = avg_pool2d(x.as_tensor(), k).unwrap();
            let g_ours = ours.mul(&weights).unwrap().sum_all().unwrap().backward().unwrap();
            let g_ref = reference_avg.mul(&weights).unwrap().sum_all().unwrap().backward().unwrap();
            for (a, b) in vec(&ours).iter().zip(vec(&reference_avg)) {
                proptest::prop_assert!((a - b).abs() <= 1e-6, "{} vs {}", a, b);
            }
            for (a, b) in vec(g_ours.get(&x).unwrap()).iter().zip(vec(g_ref.get(&x).unwrap())) {
                proptest::prop_assert!((a - b).abs() <= 1e-6, "{} vs {}", a, b);
            }
        }
    }

    /// Forward allocates its output, the backward the input's gradient.
    #[test]
    fn max_pooling_allocates_its_results_only() {
        use crate::alloc_count::{BOOKKEEPING, counted};
        let x = Tensor::randn(0f32, 1.0, (32, 16, 28, 28), &Device::Cpu).unwrap();
        let full = x.elem_count() * 4;
        let (y, forward) = counted(|| max_pool2x2(&x).unwrap());
        assert!(
            forward.bytes <= full / 4 + BOOKKEEPING,
            "forward: {forward:?}"
        );
        let g = Tensor::randn(0f32, 1.0, y.shape(), &Device::Cpu).unwrap();
        let (_, backward) = counted(|| x.apply_op2(&g, MaxPoolGrad { k: 2 }).unwrap());
        assert!(
            backward.bytes <= full + BOOKKEEPING,
            "backward: {backward:?}"
        );
    }

    #[test]
    fn a_window_that_does_not_tile_is_an_error() {
        let x = Tensor::zeros((1, 1, 5, 4), DType::F32, &Device::Cpu).unwrap();
        assert!(max_pool2d(&x, 2).is_err());
        assert!(avg_pool2d(&x, 2).is_err());
        assert!(max_pool2d(&x, 0).is_err());
    }
}
