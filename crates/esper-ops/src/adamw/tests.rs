use super::*;
use candle_core::{Device, Var};
use proptest::prelude::*;

fn composition(
    param: &Tensor,
    g: &Tensor,
    m: Option<&Tensor>,
    v: Option<&Tensor>,
    h: AdamWStep,
) -> (Tensor, Tensor, Tensor) {
    adamw_composition(param, g, m, v, h).unwrap()
}

/// A first step at the usual hyperparameters.
const FIRST_STEP: AdamWStep = AdamWStep {
    lr: 1e-3,
    weight_decay: 0.01,
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
    step: 1,
};

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Several steps of the fused update and of the composition, from the
    /// same parameter and gradients: every parameter and moment bit equal.
    #[test]
    fn the_fused_update_is_the_composition_bit_for_bit(
        n in 1usize..40_000,
        seed in 0u64..1_000,
        lr in 1e-5f64..0.5,
        weight_decay in prop_oneof![Just(0.0), 1e-4f64..0.1],
        beta1 in 0.0f64..0.99,
        beta2 in 0.9f64..0.9999,
        eps in prop_oneof![Just(1e-8), 1e-6f64..1e-3],
    ) {
        let mut init = crate::ParamInit::new(seed, Device::Cpu);
        let p0 = init.uniform(&[n], 1.0).unwrap();
        let fused = Var::from_tensor(p0.as_tensor()).unwrap();
        let mut reference = p0.as_tensor().copy().unwrap();
        let (mut first, mut second) = (vec![0f32; n], vec![0f32; n]);
        let (mut m, mut v): (Option<Tensor>, Option<Tensor>) = (None, None);
        for step in 1..=3u64 {
            let g = init.uniform(&[n], 2.0).unwrap().as_tensor().clone();
            let h = AdamWStep { lr, weight_decay, beta1, beta2, eps, step };
            adamw_update(fused.as_tensor(), &g, &mut first, &mut second, h).unwrap();
            let (p, m_new, v_new) = composition(&reference, &g, m.as_ref(), v.as_ref(), h);
            prop_assert_eq!(bits(fused.as_tensor()), bits(&p), "parameter at step {}", step);
            prop_assert_eq!(
                first.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                bits(&m_new)
            );
            prop_assert_eq!(
                second.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                bits(&v_new)
            );
            reference = p;
            m = Some(m_new);
            v = Some(v_new);
        }
    }
}

/// A 2-D parameter with a transposed (non-contiguous) gradient, as a
/// matmul's backward gives: the gradient is read by its values.
#[test]
fn a_transposed_gradient_updates_like_its_contiguous_copy() {
    let h = FIRST_STEP;
    let mut init = crate::ParamInit::new(3, Device::Cpu);
    let p = init.uniform(&[6, 4], 1.0).unwrap();
    let q = Var::from_tensor(p.as_tensor()).unwrap();
    let g = init.uniform(&[4, 6], 1.0).unwrap().as_tensor().t().unwrap();
    assert!(!g.is_contiguous());
    let (mut m1, mut v1, mut m2, mut v2) =
        (vec![0.0; 24], vec![0.0; 24], vec![0.0; 24], vec![0.0; 24]);
    adamw_update(p.as_tensor(), &g, &mut m1, &mut v1, h).unwrap();
    adamw_update(q.as_tensor(), &g.contiguous().unwrap(), &mut m2, &mut v2, h).unwrap();
    assert_eq!(bits(p.as_tensor()), bits(q.as_tensor()));
}

#[test]
fn mismatched_shapes_and_moments_are_errors() {
    let h = AdamWStep {
        weight_decay: 0.0,
        ..FIRST_STEP
    };
    let p = Var::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap();
    let g = Tensor::zeros(5, candle_core::DType::F32, &Device::Cpu).unwrap();
    let (mut m, mut v) = (vec![0.0; 4], vec![0.0; 4]);
    assert!(adamw_update(p.as_tensor(), &g, &mut m, &mut v, h).is_err());
    let g = Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap();
    let mut short = vec![0.0; 3];
    assert!(adamw_update(p.as_tensor(), &g, &mut short, &mut v, h).is_err());
    let p64 = Var::zeros(4, candle_core::DType::F64, &Device::Cpu).unwrap();
    let g64 = Tensor::zeros(4, candle_core::DType::F64, &Device::Cpu).unwrap();
    assert!(adamw_update(p64.as_tensor(), &g64, &mut m, &mut v, h).is_err());
}

/// The point of the pass: it allocates nothing parameter-sized (the
/// composition made about a dozen parameter-sized temporaries).
#[test]
fn the_fused_update_allocates_no_parameter_sized_buffer() {
    use crate::alloc_count::{BOOKKEEPING, counted};
    let n = 100_000;
    let p = Var::zeros(n, candle_core::DType::F32, &Device::Cpu).unwrap();
    let g = Tensor::ones(n, candle_core::DType::F32, &Device::Cpu).unwrap();
    let moments = std::sync::Mutex::new((vec![0f32; n], vec![0f32; n]));
    let (_, allocated) = counted(|| {
        let mut guard = moments.lock().unwrap();
        let (m, v) = &mut *guard;
        let h = FIRST_STEP;
        adamw_update(p.as_tensor(), &g, m, v, h).unwrap();
    });
    assert!(
        allocated.bytes <= BOOKKEEPING,
        "{allocated:?} for a parameter of {} bytes",
        n * 4
    );
}
