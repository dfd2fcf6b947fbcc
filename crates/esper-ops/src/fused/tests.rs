#![allow(clippy::unwrap_used)]

use candle_core::{DType, Device, Var};
use proptest::prelude::*;

use super::*;
use crate::cpu::pseudo;
use crate::{bias_relu, max_pool2x2};

fn vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// Values on a coarse grid, so that windows hold ties and exact zeros after
/// the bias: the cases where routing the gradient is decided.
fn coarse(n: usize, seed: u64) -> Vec<f32> {
    pseudo(n, seed)
        .into_iter()
        .map(|v| (v * 4.0).round() / 4.0)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Forward bit for bit and the input gradient bit for bit equal the
    /// composition `max_pool2x2(bias_relu(z, b))` (itself tested against
    /// candle); the bias gradient up to summation order.
    #[test]
    fn equals_the_composition(
        n in 1usize..4, c in 1usize..5, h in 1usize..5, w in 1usize..5,
        ties in proptest::bool::ANY, seed in 0u64..1000,
    ) {
        let (h, w) = (2 * h, 2 * w);
        let count = n * c * h * w;
        let values = if ties { coarse(count, seed) } else { pseudo(count, seed) };
        let z = Var::from_vec(values, (n, c, h, w), &Device::Cpu).unwrap();
        let b = Var::from_vec(coarse(c, seed + 1), c, &Device::Cpu).unwrap();
        let fused = bias_relu_max_pool2x2(z.as_tensor(), b.as_tensor()).unwrap();
        let composed = max_pool2x2(&bias_relu(z.as_tensor(), b.as_tensor()).unwrap()).unwrap();
        prop_assert_eq!(fused.dims(), composed.dims());
        prop_assert_eq!(vec(&fused), vec(&composed));
        let weights = Tensor::from_vec(
            pseudo(fused.elem_count(), seed + 2),
            fused.shape(),
            &Device::Cpu,
        )
        .unwrap();
        let g1 = fused.mul(&weights).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = composed.mul(&weights).unwrap().sum_all().unwrap().backward().unwrap();
        prop_assert_eq!(vec(g1.get(&z).unwrap()), vec(g2.get(&z).unwrap()));
        for (a, r) in vec(g1.get(&b).unwrap()).iter().zip(vec(g2.get(&b).unwrap())) {
            prop_assert!((a - r).abs() <= 1e-5 * r.abs().max(1.0), "{} vs {}", a, r);
        }
    }
}

/// Against candle's own ops (broadcast add, relu, reshape-and-max), where no
/// window holds a tie (candle's max backward splits a tie's gradient).
#[test]
fn matches_candles_ops() {
    let (n, c, h, w) = (3, 4, 6, 8);
    let z = Var::from_vec(pseudo(n * c * h * w, 5), (n, c, h, w), &Device::Cpu).unwrap();
    let b = Var::from_vec(pseudo(c, 6), c, &Device::Cpu).unwrap();
    let ours = bias_relu_max_pool2x2(z.as_tensor(), b.as_tensor()).unwrap();
    let theirs = z
        .as_tensor()
        .broadcast_add(&b.as_tensor().reshape((1, c, 1, 1)).unwrap())
        .unwrap()
        .relu()
        .unwrap()
        .reshape((n, c, h / 2, 2, w / 2, 2))
        .unwrap()
        .max(5)
        .unwrap()
        .max(3)
        .unwrap();
    assert_eq!(vec(&ours), vec(&theirs));
    let g1 = ours.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    let g2 = theirs.sqr().unwrap().sum_all().unwrap().backward().unwrap();
    for var in [&z, &b] {
        for (a, r) in vec(g1.get(var).unwrap())
            .iter()
            .zip(vec(g2.get(var).unwrap()))
        {
            assert!((a - r).abs() <= 1e-5 * r.abs().max(1.0), "{a} vs {r}");
        }
    }
}

#[test]
fn odd_sizes_and_wrong_biases_are_errors() {
    let z = Tensor::zeros((1, 2, 3, 4), DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
    assert!(bias_relu_max_pool2x2(&z, &b).is_err(), "odd height");
    let z = Tensor::zeros((1, 2, 4, 4), DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
    assert!(
        bias_relu_max_pool2x2(&z, &b).is_err(),
        "3 biases for 2 channels"
    );
}

/// Forward allocates its output, the backward its `dz` and the bias sums:
/// nothing full-size besides (`cnn`'s first layer at batch 32).
#[test]
fn allocates_its_results_only() {
    use crate::alloc_count::{BOOKKEEPING, counted};
    let (n, c, h, w) = (32, 16, 28, 28);
    let z = Tensor::randn(0f32, 1.0, (n, c, h, w), &Device::Cpu).unwrap();
    let b = Tensor::zeros(c, DType::F32, &Device::Cpu).unwrap();
    let full = n * c * h * w * 4;
    let (out, forward) = counted(|| bias_relu_max_pool2x2(&z, &b).unwrap());
    assert!(
        forward.bytes <= full / 4 + BOOKKEEPING,
        "forward: {forward:?}"
    );
    let g = Tensor::randn(0f32, 1.0, out.shape(), &Device::Cpu).unwrap();
    let (_, dz) = counted(|| z.apply_op3(&b, &g, BiasReluPoolGrad).unwrap());
    assert!(dz.bytes <= full + BOOKKEEPING, "dz: {dz:?}");
    let (_, db) = counted(|| out.apply_op2(&g, ActiveChannelSum).unwrap());
    assert!(db.bytes <= c * 4 + BOOKKEEPING, "bias gradient: {db:?}");
}
