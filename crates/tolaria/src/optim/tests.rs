use super::*;
use candle_core::{Device, Var};
use proptest::prelude::*;

fn param(name: &str, value: f32) -> NamedParameter {
    NamedParameter {
        name: name.into(),
        var: Var::from_vec(vec![value], 1, &Device::Cpu).unwrap(),
    }
}

fn value(p: &NamedParameter) -> f32 {
    p.var.to_vec1::<f32>().unwrap()[0]
}

/// Gradients `dL/dp = g` for each `(param, g)`.
fn grads(pairs: &[(&NamedParameter, f32)]) -> GradStore {
    let mut loss = Tensor::zeros((), candle_core::DType::F32, &Device::Cpu).unwrap();
    for (p, g) in pairs {
        loss = (loss
            + (p.var.as_tensor() * f64::from(*g))
                .unwrap()
                .sum_all()
                .unwrap())
        .unwrap();
    }
    loss.backward().unwrap()
}

const ADAMW: Rule = Rule::AdamW {
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-8,
};

#[test]
fn adamw_matches_hand_computed_updates() {
    let p = param("w", 1.0);
    let mut opt = Optimizer::new(ADAMW).unwrap();
    opt.add_group(ParamGroup::new("host", vec![p.clone()], 0.1, 0.01))
        .unwrap();
    // t=1: p = 1·(1−0.001) − 0.1/0.1 · 0.05/(√0.00025/√0.001) = 0.999 − 0.1
    opt.step(&grads(&[(&p, 0.5)])).unwrap();
    assert!((value(&p) - 0.899).abs() < 1e-6, "{}", value(&p));
    // t=2: p = 0.899·0.999 − (0.1/0.19)·0.095/(√0.00049975/√0.001999) = 0.898101 − 0.1
    opt.step(&grads(&[(&p, 0.5)])).unwrap();
    assert!((value(&p) - 0.798101).abs() < 1e-5, "{}", value(&p));
    assert_eq!(opt.steps_of("w"), 2);
}

#[test]
fn sgd_momentum_and_nesterov_match_hand_computed_updates() {
    let p = param("w", 1.0);
    let mut opt = Optimizer::new(Rule::Sgd {
        momentum: 0.9,
        nesterov: false,
    })
    .unwrap();
    opt.add_group(ParamGroup::new("host", vec![p.clone()], 0.1, 0.1))
        .unwrap();
    opt.step(&grads(&[(&p, 0.5)])).unwrap(); // g=0.6, b=0.6, p=0.94
    assert!((value(&p) - 0.94).abs() < 1e-6);
    opt.step(&grads(&[(&p, 0.5)])).unwrap(); // g=0.594, b=1.134, p=0.8266
    assert!((value(&p) - 0.8266).abs() < 1e-6, "{}", value(&p));

    let q = param("q", 1.0);
    let mut nesterov = Optimizer::new(Rule::Sgd {
        momentum: 0.9,
        nesterov: true,
    })
    .unwrap();
    nesterov
        .add_group(ParamGroup::new("host", vec![q.clone()], 0.1, 0.1))
        .unwrap();
    nesterov.step(&grads(&[(&q, 0.5)])).unwrap(); // b=0.6, d=0.6+0.54, p=1−0.114
    assert!((value(&q) - 0.886).abs() < 1e-6, "{}", value(&q));
}

#[test]
fn adding_and_removing_a_group_leaves_the_others_bit_identical() {
    let run = |with_seed: bool| {
        let host = param("host.w", 1.0);
        let mut opt = Optimizer::new(ADAMW).unwrap();
        opt.add_group(ParamGroup::new("host", vec![host.clone()], 0.01, 0.0))
            .unwrap();
        for step in 0..6 {
            if with_seed && step == 2 {
                opt.add_group(ParamGroup::new(
                    "seed-1",
                    vec![param("seed.w", 3.0)],
                    0.5,
                    0.1,
                ))
                .unwrap();
            }
            if with_seed && step == 4 {
                let removed = opt.remove_group("seed-1").unwrap();
                assert_eq!(removed.params.len(), 1);
                assert_eq!(
                    opt.steps_of("seed.w"),
                    0,
                    "state of a removed group is gone"
                );
            }
            let seed_grads: Vec<_> = opt.groups().iter().flat_map(|g| g.params.clone()).collect();
            let pairs: Vec<(&NamedParameter, f32)> =
                seed_grads.iter().map(|p| (p, 0.3 + step as f32)).collect();
            opt.step(&grads(&pairs)).unwrap();
        }
        (
            value(&host).to_bits(),
            opt.export_state().unwrap()["host.w"]
                .first
                .as_ref()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()[0]
                .to_bits(),
        )
    };
    assert_eq!(run(false), run(true));
}

#[test]
fn misuse_is_a_typed_error() {
    let p = param("w", 1.0);
    let mut opt = Optimizer::new(ADAMW).unwrap();
    assert!(
        opt.add_group(ParamGroup::new("g", vec![p.clone()], 0.0, 0.0))
            .is_err(),
        "a group needs an LR"
    );
    assert!(
        opt.add_group(ParamGroup::new("g", vec![p.clone()], f64::NAN, 0.0))
            .is_err()
    );
    opt.add_group(ParamGroup::new("g", vec![p.clone()], 0.1, 0.0))
        .unwrap();
    assert!(
        opt.add_group(ParamGroup::new("g", vec![], 0.1, 0.0))
            .is_err(),
        "duplicate group"
    );
    assert!(
        opt.add_group(ParamGroup::new("h", vec![p.clone()], 0.1, 0.0))
            .is_err(),
        "parameter owned twice"
    );
    assert!(opt.remove_group("nope").is_err());
    assert!(
        Optimizer::new(Rule::AdamW {
            beta1: 1.0,
            beta2: 0.9,
            eps: 1e-8
        })
        .is_err()
    );
    assert!(
        Optimizer::new(Rule::Sgd {
            momentum: 0.0,
            nesterov: true
        })
        .is_err()
    );
}

#[test]
fn parameters_without_gradients_are_left_alone() {
    let a = param("a", 1.0);
    let b = param("b", 2.0);
    let mut opt = Optimizer::new(ADAMW).unwrap();
    opt.add_group(ParamGroup::new("g", vec![a.clone(), b.clone()], 0.1, 0.5))
        .unwrap();
    opt.step(&grads(&[(&a, 1.0)])).unwrap();
    assert_eq!(value(&b), 2.0);
    assert_eq!(opt.steps_of("b"), 0);
}

#[test]
fn state_round_trips_and_bad_state_is_rejected_without_change() {
    let p = param("w", 1.0);
    let mut opt = Optimizer::new(ADAMW).unwrap();
    opt.add_group(ParamGroup::new("g", vec![p.clone()], 0.1, 0.0))
        .unwrap();
    opt.step(&grads(&[(&p, 0.5)])).unwrap();
    let saved = opt.export_state().unwrap();
    let mut bad = saved.clone();
    bad.insert(
        "ghost".into(),
        StateEntry {
            step: 1,
            first: None,
            second: None,
        },
    );
    assert!(opt.import_state(bad).is_err());
    let mut wrong_shape = saved.clone();
    wrong_shape.get_mut("w").unwrap().first =
        Some(Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap());
    assert!(opt.import_state(wrong_shape).is_err());
    assert_eq!(opt.steps_of("w"), 1, "failed imports change nothing");
    opt.import_state(saved).unwrap();
    assert_eq!(opt.steps_of("w"), 1);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
    /// AdamW on one scalar equals a plain f64 transcription of the rule.
    #[test]
    fn adamw_matches_a_scalar_reference(g1 in -3.0f32..3.0, g2 in -3.0f32..3.0, lr in 1e-4f64..0.5, wd in 0.0f64..0.2) {
        let p = param("w", 0.7);
        let mut opt = Optimizer::new(ADAMW).unwrap();
        opt.add_group(ParamGroup::new("g", vec![p.clone()], lr, wd)).unwrap();
        let (mut x, mut m, mut v) = (0.7f64, 0.0f64, 0.0f64);
        for (t, g) in [g1, g2].into_iter().enumerate() {
            opt.step(&grads(&[(&p, g)])).unwrap();
            let g = f64::from(g);
            let t = (t + 1) as i32;
            x *= 1.0 - lr * wd;
            m = 0.9 * m + 0.1 * g;
            v = 0.999 * v + 0.001 * g * g;
            x -= lr / (1.0 - 0.9f64.powi(t)) * m / (v.sqrt() / (1.0 - 0.999f64.powi(t)).sqrt() + 1e-8);
        }
        prop_assert!((f64::from(value(&p)) - x).abs() < 1e-4 * (1.0 + x.abs()), "{} vs {}", value(&p), x);
    }
}

/// The kept moments hold values, not graphs: a gradient that carries op
/// history (as a custom op's backward produces) must not chain one step's
/// graph into the next (it leaked every step's activations).
#[test]
fn optimizer_state_keeps_no_op_history() {
    for rule in [
        ADAMW,
        Rule::Sgd {
            momentum: 0.9,
            nesterov: false,
        },
    ] {
        let p = param("w", 1.0);
        let mut opt = Optimizer::new(rule).unwrap();
        opt.add_group(ParamGroup::new("host", vec![p.clone()], 0.1, 0.01))
            .unwrap();
        // A gradient that tracks ops: computed from the parameter itself.
        let tracked = (p.var.as_tensor() * 2.0).unwrap();
        assert!(tracked.track_op());
        let mut store = grads(&[(&p, 1.0)]);
        store.insert(p.var.as_tensor(), tracked);
        opt.step(&store).unwrap();
        let state = &opt.state["w"];
        for moment in [&state.first, &state.second].into_iter().flatten() {
            assert!(!moment.track_op(), "{rule:?}: a moment records ops");
        }
    }
}

/// Device discipline with a double: an optimizer declared on `cuda:0`
/// refuses this CPU build's parameters and saved moments, naming each and
/// adding nothing; undeclared, it takes its first parameter's device.
#[test]
fn parameters_and_moments_off_the_model_device_are_refused() {
    let gpu = DeviceLocation::Cuda { gpu_id: 0 };
    let mut opt = Optimizer::new(ADAMW).unwrap().on(gpu);
    let e = opt
        .add_group(ParamGroup::new("seed-s1", vec![param("w", 1.0)], 0.1, 0.0))
        .unwrap_err();
    match &e {
        Error::Device(m) => {
            assert_eq!((m.expected, m.found), (gpu, DeviceLocation::Cpu));
            assert_eq!(m.what, "optimizer group seed-s1's parameter w");
        }
        other => panic!("{other:?}"),
    }
    assert!(opt.groups().is_empty(), "a refused group was added");

    let mut opt = Optimizer::new(ADAMW).unwrap();
    assert_eq!(opt.device(), None);
    let p = param("w", 1.0);
    opt.add_group(ParamGroup::new("host", vec![p.clone()], 0.1, 0.0))
        .unwrap();
    assert_eq!(opt.device(), Some(DeviceLocation::Cpu));
    opt.step(&grads(&[(&p, 1.0)])).unwrap();
    let saved = opt.export_state().unwrap();
    // The same state into an optimizer over the same parameter declared on
    // the GPU: the CPU moments are refused, the state unchanged.
    let mut gpu_opt = Optimizer::new(ADAMW).unwrap();
    gpu_opt
        .add_group(ParamGroup::new("host", vec![p.clone()], 0.1, 0.0))
        .unwrap();
    gpu_opt.declare_device(gpu);
    let e = gpu_opt.import_state(saved.clone()).unwrap_err();
    assert!(
        e.to_string()
            .contains("the saved first moment of w is on cpu, the model on cuda:0"),
        "{e}"
    );
    assert!(gpu_opt.export_state().unwrap().is_empty());
    opt.import_state(saved).unwrap();
}
