#![allow(clippy::unwrap_used)]

use candle_core::{Device, Var};
use proptest::prelude::*;

use super::*;
use crate::cpu::pseudo;

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// candle's composition of the same layer: what Tolaria's hosts ran before.
fn composition(x: &Tensor, w: &Tensor, b: &Tensor, act: Activation) -> Tensor {
    let y = x
        .broadcast_matmul(&w.t().unwrap())
        .unwrap()
        .broadcast_add(b)
        .unwrap();
    act.apply(y).unwrap()
}

fn activation() -> impl Strategy<Value = Activation> {
    prop_oneof![
        Just(Activation::Identity),
        Just(Activation::Relu),
        Just(Activation::Gelu)
    ]
}

fn close(a: &[f32], b: &[f32], tol: f32, what: &str) -> std::result::Result<(), TestCaseError> {
    prop_assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        prop_assert!(
            (x - y).abs() <= tol * y.abs().max(1.0),
            "{} [{}]: {} vs {}",
            what,
            i,
            x,
            y
        );
    }
    Ok(())
}

proptest! {
    /// Forward and all three gradients equal candle's matmul + broadcast add
    /// + activation, on 2-D and 3-D inputs.
    #[test]
    fn linear_matches_candles_composition(
        m in 1usize..9, k in 1usize..13, n in 1usize..11, batched in any::<bool>(),
        act in activation(), seed in 0u64..1000,
    ) {
        let xs: Vec<usize> = if batched { vec![2, m, k] } else { vec![m, k] };
        let count: usize = xs.iter().product();
        let x = Var::from_vec(pseudo(count, seed), xs.clone(), &Device::Cpu).unwrap();
        let w = Var::from_vec(pseudo(n * k, seed + 1), (n, k), &Device::Cpu).unwrap();
        let b = Var::from_vec(pseudo(n, seed + 2), n, &Device::Cpu).unwrap();
        let ours = linear(x.as_tensor(), w.as_tensor(), b.as_tensor(), act).unwrap();
        let theirs = composition(x.as_tensor(), w.as_tensor(), b.as_tensor(), act);
        prop_assert_eq!(ours.dims(), theirs.dims());
        close(&values(&ours), &values(&theirs), 1e-6, "output")?;
        let weights = Tensor::from_vec(
            pseudo(ours.elem_count(), seed + 3), ours.shape(), &Device::Cpu).unwrap();
        let g1 = (&ours * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (&theirs * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        // candle's ReLU passes the gradient at exactly 0, ours does not:
        // pseudo-random inputs never land there.
        for (var, what) in [(&x, "dx"), (&w, "dW"), (&b, "db")] {
            let (a, r) = (g1.get(var).unwrap(), g2.get(var).unwrap());
            prop_assert_eq!(a.dims(), r.dims());
            close(&values(a), &values(r), 1e-4, what)?;
        }
    }
}

/// Central differences of `Σ weights · linear(x)` against the analytic
/// gradient, in f32 with a step of 1e-2 (tolerance 2 %), for the smooth
/// activations.
#[test]
fn gradients_match_finite_differences() {
    let (m, k, n) = (3, 4, 5);
    for act in [Activation::Identity, Activation::Gelu] {
        let xv = pseudo(m * k, 11);
        let wv = pseudo(n * k, 12);
        let bv = pseudo(n, 13);
        let weights = Tensor::from_vec(pseudo(m * n, 14), (m, n), &Device::Cpu).unwrap();
        let loss = |xv: &[f32], wv: &[f32], bv: &[f32]| -> f32 {
            let x = Tensor::from_slice(xv, (m, k), &Device::Cpu).unwrap();
            let w = Tensor::from_slice(wv, (n, k), &Device::Cpu).unwrap();
            let b = Tensor::from_slice(bv, n, &Device::Cpu).unwrap();
            (linear(&x, &w, &b, act).unwrap() * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar()
                .unwrap()
        };
        let x = Var::from_slice(&xv, (m, k), &Device::Cpu).unwrap();
        let w = Var::from_slice(&wv, (n, k), &Device::Cpu).unwrap();
        let b = Var::from_slice(&bv, n, &Device::Cpu).unwrap();
        let grads = (linear(x.as_tensor(), w.as_tensor(), b.as_tensor(), act).unwrap() * &weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let eps = 1e-2f32;
        for which in 0..3 {
            let (var, base) = match which {
                0 => (&x, &xv),
                1 => (&w, &wv),
                _ => (&b, &bv),
            };
            let analytic = values(grads.get(var).unwrap());
            for i in 0..base.len() {
                let at = |delta: f32| {
                    let mut v = base.clone();
                    v[i] += delta;
                    match which {
                        0 => loss(&v, &wv, &bv),
                        1 => loss(&xv, &v, &bv),
                        _ => loss(&xv, &wv, &v),
                    }
                };
                let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
                assert!(
                    (numeric - analytic[i]).abs() <= 0.02 * analytic[i].abs().max(0.1),
                    "{act:?} arg {which} [{i}]: numeric {numeric}, analytic {}",
                    analytic[i]
                );
            }
        }
    }
}

/// The data batch's gradient is never computed: the backward returns none
/// for an untracked input, and the weight's and bias's all the same.
#[test]
fn an_untracked_input_gets_no_gradient() {
    let x = Tensor::from_vec(pseudo(6, 1), (2, 3), &Device::Cpu).unwrap();
    let w = Var::from_vec(pseudo(12, 2), (4, 3), &Device::Cpu).unwrap();
    let b = Var::from_vec(pseudo(4, 3), 4, &Device::Cpu).unwrap();
    let op = Linear {
        act: Activation::Relu,
        pre_activation: Mutex::new(None),
    };
    let y = linear(&x, w.as_tensor(), b.as_tensor(), Activation::Relu).unwrap();
    let g = Tensor::ones((2, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
    let (dx, dw, db) = op.bwd(&x, w.as_tensor(), b.as_tensor(), &y, &g).unwrap();
    assert!(dx.is_none());
    assert_eq!(dw.unwrap().dims(), &[4, 3]);
    assert_eq!(db.unwrap().dims(), &[4]);
}

/// A second backward over the same graph (the GELU pre-activation is kept,
/// not taken) gives the same gradients.
#[test]
fn a_graph_can_be_differentiated_twice() {
    let x = Var::from_vec(pseudo(6, 1), (2, 3), &Device::Cpu).unwrap();
    let w = Var::from_vec(pseudo(12, 2), (4, 3), &Device::Cpu).unwrap();
    let b = Var::from_vec(pseudo(4, 3), 4, &Device::Cpu).unwrap();
    let loss = linear(
        x.as_tensor(),
        w.as_tensor(),
        b.as_tensor(),
        Activation::Gelu,
    )
    .unwrap()
    .sum_all()
    .unwrap();
    let first = loss.backward().unwrap();
    let second = loss.backward().unwrap();
    assert_eq!(
        values(first.get(&w).unwrap()),
        values(second.get(&w).unwrap())
    );
}

#[test]
fn mismatched_shapes_are_errors() {
    let x = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::zeros((4, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap();
    let narrow = Tensor::zeros((4, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    let short = Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap();
    let scalar = Tensor::new(1f32, &Device::Cpu).unwrap();
    assert!(linear(&x, &narrow, &b, Activation::Identity).is_err());
    assert!(linear(&x, &w, &short, Activation::Identity).is_err());
    assert!(linear(&scalar, &w, &b, Activation::Identity).is_err());
    let err = linear(&x, &narrow, &b, Activation::Relu).unwrap_err();
    assert!(err.to_string().contains("3 features"), "{err}");
}

/// A `784 → 128` layer at batch 128 (the `mlp` host's first): the forward
/// allocates its output and the product's packing; the backward the
/// activation's gradient, `dW`, `db` and the packing of one product (that
/// it skips the data batch's gradient is `an_untracked_input_gets_no_gradient`).
#[test]
fn allocates_its_results_only() {
    use crate::alloc_count::{BOOKKEEPING, counted, gemm_packing};
    let (m, k, n) = (128, 784, 128);
    let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
    let w = Var::randn(0f32, 0.05, (n, k), &Device::Cpu).unwrap();
    let b = Var::zeros(n, candle_core::DType::F32, &Device::Cpu).unwrap();
    let (y, forward) =
        counted(|| linear(&x, w.as_tensor(), b.as_tensor(), Activation::Relu).unwrap());
    assert!(
        forward.bytes <= m * n * 4 + gemm_packing(m, k, n) + BOOKKEEPING,
        "forward: {forward:?}"
    );
    let (_, backward) = counted(|| y.sum_all().unwrap().backward().unwrap());
    // sum_all's backward and candle's accumulation of each gradient into a
    // fresh zero tensor (`grads.or_insert` then `add`) come on top of ours.
    let ours = (m * n + n * k + n) * 4 + gemm_packing(n, m, k);
    let candle_accumulation = 2 * (m * n + n * k + n) * 4;
    assert!(
        backward.bytes <= ours + candle_accumulation + 4 * BOOKKEEPING,
        "backward: {backward:?}, bound {}",
        ours + candle_accumulation + 4 * BOOKKEEPING
    );
}

/// Runs are bit-identical whatever the compute pool's size: the output and
/// every gradient, at a size where the GEMMs split across threads.
#[test]
fn results_do_not_depend_on_the_thread_count() {
    let (m, k, n) = (96, 200, 72);
    let x = Var::from_vec(pseudo(m * k, 31), (m, k), &Device::Cpu).unwrap();
    let w = Var::from_vec(pseudo(n * k, 32), (n, k), &Device::Cpu).unwrap();
    let b = Var::from_vec(pseudo(n, 33), n, &Device::Cpu).unwrap();
    let labels: Vec<u32> = (0..m as u32).map(|i| i % n as u32).collect();
    let labels = Tensor::from_vec(labels, m, &Device::Cpu).unwrap();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let y = linear(
                x.as_tensor(),
                w.as_tensor(),
                b.as_tensor(),
                Activation::Gelu,
            )
            .unwrap();
            let loss = crate::cross_entropy(&y, &labels).unwrap();
            let grads = loss.backward().unwrap();
            let bits = |t: &Tensor| -> Vec<u32> { values(t).iter().map(|v| v.to_bits()).collect() };
            [
                bits(&y),
                bits(&loss),
                bits(grads.get(&x).unwrap()),
                bits(grads.get(&w).unwrap()),
                bits(grads.get(&b).unwrap()),
            ]
        })
    };
    let one = run(1);
    for threads in [2, 3] {
        assert!(run(threads) == one, "{threads} threads differ from 1");
    }
}
