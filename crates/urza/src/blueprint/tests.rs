#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;

use candle_core::{Device, Tensor};
use esper_ops::ParamInit;
use leyline::v1::SlotKind;
use proptest::prelude::*;

use super::*;
use crate::forge::{ForgeOptions, forge};

fn slots(kind: SlotKind) -> Vec<SlotShape> {
    match kind {
        SlotKind::Conv2d => vec![
            SlotShape::conv2d(4, 6, 6).unwrap(),
            SlotShape::conv2d(8, 5, 7).unwrap(),
            SlotShape::conv2d(6, 4, 4).unwrap(),
        ],
        SlotKind::Dense => vec![
            SlotShape::dense(8).unwrap(),
            SlotShape::dense(16).unwrap(),
            SlotShape::dense(33).unwrap(),
        ],
        SlotKind::Unspecified => vec![],
    }
}

/// Builds, runs forward and backward, and checks shape, gradients and count.
fn prove(def: &BlueprintDef, params: &Parameters, slot: &SlotShape) -> Vec<String> {
    let forged = forge(
        def,
        params,
        slot,
        &ForgeOptions {
            batch: 3,
            runs: 1,
            ..ForgeOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("{} {params:?} on {slot}: {e}", def.id));
    // `forge` itself checks finite non-zero gradients for every variable and
    // the declared count against the built count; check both again here so the
    // test does not rely on the code under test alone.
    let real: u64 = forged
        .module
        .named_vars()
        .iter()
        .map(|(_, v)| v.dims().iter().product::<usize>() as u64)
        .sum();
    assert_eq!(
        real,
        def.parameter_count(params, slot).unwrap(),
        "{} on {slot}",
        def.id
    );
    let x = Tensor::ones(slot.batch_shape(2), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert_eq!(forged.module.forward(&x).unwrap().dims(), x.dims());
    forged.dead_parameters
}

#[test]
fn the_catalog_has_every_required_blueprint_with_unique_ids_and_sane_defaults() {
    let ids: BTreeSet<&str> = catalog().iter().map(|d| d.id).collect();
    assert_eq!(ids.len(), catalog().len());
    assert!(catalog().len() >= 13);
    let conv = catalog()
        .iter()
        .filter(|d| d.slot_kinds == [SlotKind::Conv2d])
        .count();
    let dense = catalog()
        .iter()
        .filter(|d| d.slot_kinds == [SlotKind::Dense])
        .count();
    assert!(conv >= 8 && dense >= 4, "{conv} conv, {dense} dense");
    for def in catalog() {
        let d = def.descriptor();
        assert_eq!(d.allowed_parameters.len(), def.params.len());
        assert!((0.0..=1.0).contains(&def.risk));
        for p in def.params {
            assert!(
                p.min <= p.default && p.default <= p.max,
                "{}.{}",
                def.id,
                p.name
            );
            assert!(!p.doc.is_empty());
        }
        assert_eq!(definition(def.id), Some(def));
    }
}

#[test]
fn every_blueprint_keeps_the_shape_trains_every_parameter_and_counts_exactly() {
    for def in catalog() {
        for &kind in def.slot_kinds {
            for slot in slots(kind) {
                let params = def.default_parameters();
                if def.check(&params, &slot).is_err() {
                    // e.g. grouped conv on a channel count its default does not divide.
                    continue;
                }
                // At the defaults every parameter gets a non-zero gradient.
                let dead = prove(def, &params, &slot);
                assert!(dead.is_empty(), "{} on {slot}: dead {dead:?}", def.id);
            }
        }
    }
}

#[test]
fn every_declared_parameter_changes_the_module() {
    // Changing any one parameter (others at default) changes the parameter
    // count or, with the same weights seed, the output: no parameter is ignored.
    let slot_for = |def: &BlueprintDef| match def.slot_kinds[0] {
        SlotKind::Conv2d => SlotShape::conv2d(8, 6, 6).unwrap(),
        SlotKind::Dense | SlotKind::Unspecified => SlotShape::dense(64).unwrap(),
    };
    for def in catalog() {
        let slot = slot_for(def);
        for p in def.params {
            let run = |value: f64| {
                let mut params = def.default_parameters();
                params.insert(p.name.to_string(), value);
                let mut init = ParamInit::new(5, Device::Cpu);
                let module = def.build(&params, &slot, Weights::Init(&mut init)).unwrap();
                let x = init.uniform(&slot.batch_shape(2), 1.0).unwrap();
                let y = module.forward(x.as_tensor()).unwrap();
                (
                    module.parameter_count(),
                    y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                )
            };
            let low = if p.name == "kernel_size" { 3.0 } else { p.min };
            let high = if p.name == "kernel_size" {
                5.0
            } else if p.name == "groups" {
                4.0
            } else {
                p.max
            };
            assert_ne!(run(low), run(high), "{}.{} has no effect", def.id, p.name);
        }
    }
}

#[test]
fn slot_constraints_are_typed_errors() {
    let grouped = definition("conv.grouped").unwrap();
    let mut params = grouped.default_parameters();
    params.insert("groups".into(), 3.0);
    let err = grouped.check(&params, &SlotShape::conv2d(8, 4, 4).unwrap());
    assert!(matches!(err, Err(Error::SlotMismatch { .. })), "{err:?}");
    let depthwise = definition("conv.depthwise").unwrap();
    let mut params = depthwise.default_parameters();
    params.insert("kernel_size".into(), 4.0);
    assert!(
        depthwise
            .check(&params, &SlotShape::conv2d(4, 6, 6).unwrap())
            .is_err()
    );
    let lora = definition("dense.low_rank").unwrap();
    let mut params = lora.default_parameters();
    params.insert("rank".into(), 9.0);
    assert!(lora.check(&params, &SlotShape::dense(8).unwrap()).is_err());
    let mlp = definition("dense.mlp_small").unwrap();
    assert!(
        mlp.check(
            &mlp.default_parameters(),
            &SlotShape::conv2d(4, 4, 4).unwrap()
        )
        .is_err()
    );
}

#[test]
fn a_module_rejects_inputs_of_another_shape() {
    let def = definition("conv.residual").unwrap();
    let slot = SlotShape::conv2d(4, 6, 6).unwrap();
    let mut init = ParamInit::new(1, Device::Cpu);
    let module = def
        .build(&def.default_parameters(), &slot, Weights::Init(&mut init))
        .unwrap();
    let wrong = Tensor::zeros((2, 4, 5, 6), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(module.forward(&wrong), Err(Error::Shape { .. })));
}

#[test]
fn stored_weights_rebuild_the_same_module_and_bad_sets_are_refused() {
    let def = definition("conv.light").unwrap();
    let slot = SlotShape::conv2d(4, 5, 5).unwrap();
    let params = def.default_parameters();
    let mut init = ParamInit::new(3, Device::Cpu);
    let module = def.build(&params, &slot, Weights::Init(&mut init)).unwrap();
    let tensors: std::collections::BTreeMap<String, Tensor> =
        module.tensors().into_iter().collect();
    let again = def
        .build(
            &params,
            &slot,
            Weights::Given {
                tensors: tensors.clone(),
                device: Device::Cpu,
            },
        )
        .unwrap();
    let x = Tensor::ones(slot.batch_shape(1), candle_core::DType::F32, &Device::Cpu).unwrap();
    let a = module
        .forward(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let b = again
        .forward(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(a, b);

    let mut missing = tensors.clone();
    missing.remove("reduce.weight");
    let given = |t| Weights::Given {
        tensors: t,
        device: Device::Cpu,
    };
    assert!(matches!(
        def.build(&params, &slot, given(missing)),
        Err(Error::MalformedArtifact { .. })
    ));
    let mut extra = tensors.clone();
    extra.insert(
        "stray".into(),
        Tensor::zeros(1, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    assert!(def.build(&params, &slot, given(extra)).is_err());
    let mut reshaped = tensors;
    reshaped.insert(
        "reduce.bias".into(),
        Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    assert!(matches!(
        def.build(&params, &slot, given(reshaped)),
        Err(Error::Shape { .. })
    ));
}

/// A parameter set for `def` where one parameter may be pushed out of bounds.
fn any_blueprint_and_value() -> impl Strategy<Value = (usize, usize, f64, bool)> {
    let with_params: Vec<usize> = catalog()
        .iter()
        .enumerate()
        .filter(|(_, d)| !d.params.is_empty())
        .map(|(i, _)| i)
        .collect();
    (
        proptest::sample::select(with_params),
        any::<usize>(),
        -1e3f64..1e3,
        any::<bool>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Values inside the bounds build (when they fit the slot); values outside
    /// are rejected with `InvalidParameter` before anything is built.
    #[test]
    fn parameters_are_accepted_exactly_inside_their_bounds(
        (index, which, value, snap) in any_blueprint_and_value()
    ) {
        let def = &catalog()[index];
        let spec = def.params[which % def.params.len()];
        let value = if snap && spec.integer { value.round() } else { value };
        let mut params = def.default_parameters();
        params.insert(spec.name.to_string(), value);
        let slot = match def.slot_kinds[0] {
            SlotKind::Conv2d => SlotShape::conv2d(8, 5, 5).unwrap(),
            SlotKind::Dense | SlotKind::Unspecified => SlotShape::dense(64).unwrap(),
        };
        let inside = value >= spec.min && value <= spec.max && (!spec.integer || value.fract() == 0.0);
        let result = def.check(&params, &slot);
        if inside {
            prop_assert!(!matches!(result, Err(Error::InvalidParameter { .. })), "{result:?}");
        } else {
            prop_assert!(matches!(result, Err(Error::InvalidParameter { .. })), "{value} accepted");
            let mut init = ParamInit::new(0, Device::Cpu);
            prop_assert!(def.build(&params, &slot, Weights::Init(&mut init)).is_err());
        }
    }

    /// Random in-bound parameters: shape kept, gradients everywhere, count exact.
    #[test]
    fn random_valid_parameters_build_proven_modules(
        (index, _, _, _) in any_blueprint_and_value(),
        fractions in proptest::collection::vec(0.0f64..=1.0, 2),
    ) {
        let def = &catalog()[index];
        let mut params = def.default_parameters();
        for (spec, f) in def.params.iter().zip(&fractions) {
            let mut v = spec.min + f * (spec.max - spec.min);
            if spec.integer {
                v = v.round();
            }
            params.insert(spec.name.to_string(), v);
        }
        for slot in slots(def.slot_kinds[0]) {
            if def.check(&params, &slot).is_ok() {
                let _dead = prove(def, &params, &slot);
            }
        }
    }
}

#[test]
fn forward_macs_from_the_formula_equal_the_count_of_the_built_layers() {
    // Every blueprint, on every test slot, at its defaults and with each
    // parameter at its bounds: the catalog's formula and the count from the
    // built module's weight shapes agree.
    for def in catalog() {
        for &kind in def.slot_kinds {
            for slot in slots(kind) {
                let mut variants = vec![def.default_parameters()];
                for p in def.params {
                    for value in [p.min, p.max] {
                        let mut params = def.default_parameters();
                        params.insert(p.name.to_string(), value);
                        variants.push(params);
                    }
                }
                for params in variants {
                    if def.check(&params, &slot).is_err() {
                        continue;
                    }
                    let mut init = ParamInit::new(2, Device::Cpu);
                    let module = def.build(&params, &slot, Weights::Init(&mut init)).unwrap();
                    assert_eq!(
                        def.forward_macs(&params, &slot).unwrap(),
                        module.forward_macs(),
                        "{} {params:?} on {slot}",
                        def.id
                    );
                }
            }
        }
    }
}

#[test]
fn forward_macs_match_hand_counts() {
    let macs = |id: &str, slot: SlotShape| {
        let def = definition(id).unwrap();
        def.forward_macs(&def.default_parameters(), &slot).unwrap()
    };
    // The seed the heuristic grows on `cnn`: 3×3 16→64→16 over 14×14.
    assert_eq!(
        macs("conv.residual", SlotShape::conv2d(16, 14, 14).unwrap()),
        2 * 9 * 16 * 64 * 196
    );
    // …and on `mlp`: 128→128→128.
    assert_eq!(
        macs("dense.mlp_small", SlotShape::dense(128).unwrap()),
        2 * 128 * 128
    );
    // Elementwise only.
    assert_eq!(macs("identity", SlotShape::dense(128).unwrap()), 0);
    assert_eq!(
        macs("conv.channel_norm", SlotShape::conv2d(8, 7, 7).unwrap()),
        0
    );
    // Squeeze-excitation runs its layers once, on the pooled vector.
    let se = definition("conv.squeeze_excitation").unwrap();
    let slot = SlotShape::conv2d(16, 14, 14).unwrap();
    let params = se.parameter_count(&se.default_parameters(), &slot).unwrap();
    // Its parameters minus the biases (16 / reduction hidden + 16 output).
    let biases = 16 + (params - 16) / 33;
    assert_eq!(
        se.forward_macs(&se.default_parameters(), &slot).unwrap(),
        params - biases
    );
    // A wrong slot is refused, not counted.
    assert!(
        definition("dense.mlp_small")
            .unwrap()
            .forward_macs(
                &definition("dense.mlp_small").unwrap().default_parameters(),
                &SlotShape::conv2d(4, 4, 4).unwrap()
            )
            .is_err()
    );
}
