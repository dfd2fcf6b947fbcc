//! Pooling with exact gradients.

use candle_core::{Result, Tensor};

/// 2×2 max pooling, stride 2, by reshape and max: candle 0.11's `max_pool2d`
/// backward is wrong (DESIGN §12); this one's gradient is exact (the max's
/// gradient flows to the maximal element).
pub fn max_pool2x2(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if h % 2 != 0 || w % 2 != 0 {
        return Err(candle_core::Error::Msg(format!(
            "max_pool2x2 needs even height and width, got {h}x{w}"
        )));
    }
    x.reshape((n, c, h / 2, 2, w / 2, 2))?.max(5)?.max(3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    /// Pooling gradient against central finite differences (candle's own
    /// `max_pool2d` backward fails this; DESIGN §12).
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
}
