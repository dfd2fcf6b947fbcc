//! GPU suite for the ops (feature `cuda`; needs an NVIDIA GPU, so every test
//! is ignored by default and named `gpu_…`):
//!
//! ```text
//! cargo test -p esper-ops --features cuda --test gpu -- --ignored gpu
//! ```
//!
//! Each op runs forward and backward on the same inputs three ways: esper-ops
//! on the CPU (our kernels), esper-ops on CUDA (which hands the op to candle's
//! CUDA kernels) and candle's own composition on CUDA. The CUDA result must
//! match the CPU one within `|a − b| ≤ ABS + REL·|b|` (cuBLAS and cuDNN sum in
//! another order than our GEMM; the f32 tolerances below are two orders above
//! what such reordering costs on these sizes), and candle's composition
//! exactly or within the same bound.

#![cfg(feature = "cuda")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use candle_core::{Device, Result, Tensor, Var};
use esper_ops::{
    Conv2dSpec, ParamInit, avg_pool2d, bias_add, bias_relu, bias_relu_max_pool2x2, conv2d,
    conv2d_bias_relu_max_pool2x2, convex_blend, incubate, max_pool2d, residual_blend,
};

/// Absolute tolerance.
const ABS: f32 = 1e-4;
/// Relative tolerance.
const REL: f32 = 1e-3;

type Op<'a> = dyn Fn(&[Tensor]) -> Result<Tensor> + 'a;

fn cuda() -> Device {
    match Device::new_cuda(0) {
        Ok(device) => device,
        Err(e) => panic!("the GPU suite needs CUDA device 0: {e}"),
    }
}

/// Inputs of `shapes`, uniform in ±1 from `seed`, as CPU variables.
fn inputs(seed: u64, shapes: &[&[usize]]) -> Vec<Var> {
    let mut init = ParamInit::new(seed, Device::Cpu);
    shapes
        .iter()
        .map(|s| init.uniform(s, 1.0).unwrap())
        .collect()
}

/// Forward output and the gradient of `Σ y·r` for each input (`r` fixed
/// from the output's shape), all copied back to the CPU as flat vectors.
fn run(op: &Op<'_>, vars: &[Var], device: &Device) -> (Vec<f32>, Vec<Vec<f32>>) {
    let on: Vec<Var> = vars
        .iter()
        .map(|v| Var::from_tensor(&v.as_tensor().to_device(device).unwrap()).unwrap())
        .collect();
    let tensors: Vec<Tensor> = on.iter().map(|v| v.as_tensor().clone()).collect();
    let y = op(&tensors).unwrap();
    let r = ParamInit::new(99, Device::Cpu)
        .uniform(y.dims(), 1.0)
        .unwrap()
        .as_tensor()
        .to_device(device)
        .unwrap();
    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let flat = |t: &Tensor| {
        t.to_device(&Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let g = on
        .iter()
        .map(|v| {
            grads
                .get(v.as_tensor())
                .map_or_else(|| vec![0.0; v.elem_count()], flat)
        })
        .collect();
    (flat(&y), g)
}

fn close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs() - (ABS + REL * b.abs()))
        .fold(f32::NEG_INFINITY, f32::max);
    assert!(
        worst <= 0.0,
        "{what}: off by {worst:e} beyond the tolerance (ABS {ABS:e}, REL {REL:e})"
    );
}

/// esper-ops on CUDA against esper-ops on the CPU and candle on CUDA.
fn check(name: &str, shapes: &[&[usize]], ours: &Op<'_>, candle: &Op<'_>) {
    let vars = inputs(7, shapes);
    let gpu = cuda();
    let (y_cpu, g_cpu) = run(ours, &vars, &Device::Cpu);
    let (y_gpu, g_gpu) = run(ours, &vars, &gpu);
    let (y_ref, g_ref) = run(candle, &vars, &gpu);
    close(&format!("{name} forward, CUDA vs CPU"), &y_gpu, &y_cpu);
    close(
        &format!("{name} forward, ours vs candle on CUDA"),
        &y_gpu,
        &y_ref,
    );
    for (i, ((gpu, cpu), reference)) in g_gpu.iter().zip(&g_cpu).zip(&g_ref).enumerate() {
        close(&format!("{name} gradient {i}, CUDA vs CPU"), gpu, cpu);
        close(
            &format!("{name} gradient {i}, ours vs candle"),
            gpu,
            reference,
        );
    }
}

fn candle_conv(x: &Tensor, k: &Tensor, s: Conv2dSpec) -> Result<Tensor> {
    x.conv2d(k, s.padding, s.stride, s.dilation, s.groups)
}

/// Candle's 2×2 max pooling as reshape + max (its `max_pool2d` backward is
/// wrong in 0.11, docs/DESIGN.md §12).
fn candle_pool(a: &Tensor, k: usize) -> Result<Tensor> {
    let (n, c, h, w) = a.dims4()?;
    a.reshape((n, c, h / k, k, w / k, k))?.max(5)?.max(3)
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda -- --ignored gpu"]
fn gpu_conv2d_matches_the_cpu_path_and_candle() {
    for (name, spec, c, cout) in [
        (
            "conv2d 3x3 pad 1",
            Conv2dSpec {
                padding: 1,
                ..Default::default()
            },
            4,
            8,
        ),
        (
            "conv2d stride 2 dilation 2",
            Conv2dSpec {
                padding: 2,
                stride: 2,
                dilation: 2,
                groups: 1,
            },
            4,
            6,
        ),
        (
            "conv2d grouped",
            Conv2dSpec {
                padding: 1,
                groups: 2,
                ..Default::default()
            },
            4,
            6,
        ),
        (
            "conv2d depthwise",
            Conv2dSpec {
                padding: 1,
                groups: 4,
                ..Default::default()
            },
            4,
            4,
        ),
    ] {
        let shapes: [&[usize]; 2] = [&[3, c, 10, 10], &[cout, c / spec.groups, 3, 3]];
        check(
            name,
            &shapes,
            &move |t: &[Tensor]| conv2d(&t[0], &t[1], spec),
            &move |t: &[Tensor]| candle_conv(&t[0], &t[1], spec),
        );
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda -- --ignored gpu"]
fn gpu_conv_block_matches_the_cpu_path_and_candle() {
    let spec = Conv2dSpec {
        padding: 1,
        ..Default::default()
    };
    check(
        "conv2d_bias_relu_max_pool2x2",
        &[&[2, 3, 8, 8], &[5, 3, 3, 3], &[5]],
        &move |t: &[Tensor]| conv2d_bias_relu_max_pool2x2(&t[0], &t[1], &t[2], spec),
        &move |t: &[Tensor]| {
            let z = candle_conv(&t[0], &t[1], spec)?;
            candle_pool(&z.broadcast_add(&t[2].reshape((1, 5, 1, 1))?)?.relu()?, 2)
        },
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda -- --ignored gpu"]
fn gpu_bias_ops_match_the_cpu_path_and_candle() {
    let b = |t: &Tensor| t.reshape((1, 6, 1, 1));
    check(
        "bias_add",
        &[&[4, 6, 5, 5], &[6]],
        &|t: &[Tensor]| bias_add(&t[0], &t[1]),
        &|t: &[Tensor]| t[0].broadcast_add(&b(&t[1])?),
    );
    check(
        "bias_relu",
        &[&[4, 6, 5, 5], &[6]],
        &|t: &[Tensor]| bias_relu(&t[0], &t[1]),
        &|t: &[Tensor]| t[0].broadcast_add(&b(&t[1])?)?.relu(),
    );
    check(
        "bias_relu on [N, C]",
        &[&[16, 6], &[6]],
        &|t: &[Tensor]| bias_relu(&t[0], &t[1]),
        &|t: &[Tensor]| t[0].broadcast_add(&t[1].reshape((1, 6))?)?.relu(),
    );
    check(
        "bias_relu_max_pool2x2",
        &[&[3, 6, 8, 8], &[6]],
        &|t: &[Tensor]| bias_relu_max_pool2x2(&t[0], &t[1]),
        &|t: &[Tensor]| candle_pool(&t[0].broadcast_add(&b(&t[1])?)?.relu()?, 2),
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda -- --ignored gpu"]
fn gpu_pooling_matches_the_cpu_path_and_candle() {
    for k in [2, 3] {
        check(
            &format!("max_pool2d k={k}"),
            &[&[2, 3, 12, 12]],
            &move |t: &[Tensor]| max_pool2d(&t[0], k),
            &move |t: &[Tensor]| candle_pool(&t[0], k),
        );
        check(
            &format!("avg_pool2d k={k}"),
            &[&[2, 3, 12, 12]],
            &move |t: &[Tensor]| avg_pool2d(&t[0], k),
            &move |t: &[Tensor]| t[0].avg_pool2d(k),
        );
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda -- --ignored gpu"]
fn gpu_blends_match_the_cpu_path_and_candle() {
    let shapes: [&[usize]; 2] = [&[4, 6, 5, 5], &[4, 6, 5, 5]];
    check(
        "incubate",
        &shapes,
        &|t: &[Tensor]| incubate(&t[0], &t[1]),
        &|t: &[Tensor]| &t[0] + (&t[1] - t[1].detach())?,
    );
    check(
        "residual_blend",
        &shapes,
        &|t: &[Tensor]| residual_blend(&t[0], &t[1], 0.3),
        &|t: &[Tensor]| &t[0] + (&t[1] * 0.3)?,
    );
    check(
        "convex_blend",
        &shapes,
        &|t: &[Tensor]| convex_blend(&t[0], &t[1], 0.3),
        &|t: &[Tensor]| &t[0] + ((&t[1] - &t[0])? * 0.3)?,
    );
}
