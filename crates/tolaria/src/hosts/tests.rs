use super::*;
use candle_core::D;
use kasmina::DormantSlots;

fn input(n: usize) -> Tensor {
    Tensor::arange(0f32, (n * 784) as f32, &Device::Cpu)
        .unwrap()
        .affine(1e-3, -0.3)
        .unwrap()
        .reshape((n, 1, 28, 28))
        .unwrap()
}

#[test]
fn reference_hosts_have_the_specified_slots_and_sizes() {
    let expected: [(&str, Vec<Vec<usize>>, usize); 5] = [
        ("mlp", vec![vec![128]], 784 * 128 + 128 + 128 * 10 + 10),
        (
            "cnn",
            vec![vec![16, 14, 14], vec![32, 7, 7]],
            16 * 9 + 16 + 32 * 16 * 9 + 32 + 1568 * 10 + 10,
        ),
        (
            "cnn-impaired",
            vec![vec![4, 14, 14], vec![8, 7, 7]],
            4 + 4 + 8 * 4 + 8 + 392 * 10 + 10,
        ),
        ("mlp-wide", vec![vec![256]], 784 * 256 + 256 + 256 * 10 + 10),
        (
            "cnn-wide",
            vec![vec![32, 14, 14], vec![64, 7, 7]],
            32 * 9 + 32 + 64 * 32 * 9 + 64 + 3136 * 10 + 10,
        ),
    ];
    for (name, shapes, params) in expected {
        let host = build(name, 0, &Device::Cpu).unwrap();
        assert_eq!(host.name(), name);
        let got: Vec<Vec<usize>> = host
            .slots()
            .iter()
            .map(|s| s.feature_shape.clone())
            .collect();
        assert_eq!(got, shapes, "{name}");
        let count: usize = host.parameters().iter().map(|p| p.var.elem_count()).sum();
        assert_eq!(count, params, "{name}");
        let out = host
            .forward_with_slots(&input(3), &mut DormantSlots)
            .unwrap();
        assert_eq!(out.dims(), &[3, 10]);
    }
    let err = build("resnet", 0, &Device::Cpu)
        .err()
        .expect("unknown host must fail");
    assert!(err.to_string().contains("tolaria.host"), "{err}");
}

#[test]
fn initialisation_is_seeded_and_bounded() {
    let a = build("cnn", 7, &Device::Cpu).unwrap();
    let b = build("cnn", 7, &Device::Cpu).unwrap();
    let c = build("cnn", 8, &Device::Cpu).unwrap();
    for ((pa, pb), pc) in a
        .parameters()
        .iter()
        .zip(b.parameters())
        .zip(c.parameters())
    {
        let va: Vec<f32> = pa.var.flatten_all().unwrap().to_vec1().unwrap();
        let vb: Vec<f32> = pb.var.flatten_all().unwrap().to_vec1().unwrap();
        let vc: Vec<f32> = pc.var.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(va, vb, "{}", pa.name);
        assert_ne!(va, vc, "{}", pa.name);
    }
    // conv1: fan_in 9, bound 1/3.
    let w: Vec<f32> = a.parameters()[0]
        .var
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(w.iter().all(|x| x.abs() <= 1.0 / 3.0));
    assert!(
        w.iter().any(|x| x.abs() > 0.25),
        "weights should use their range"
    );
}

#[test]
fn host_gradients_reach_every_parameter() {
    let host = build("cnn-impaired", 1, &Device::Cpu).unwrap();
    let logits = host
        .forward_with_slots(&input(4), &mut DormantSlots)
        .unwrap();
    let loss = candle_nn::ops::log_softmax(&logits, D::Minus1)
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    for p in host.parameters() {
        assert!(grads.get(&p.var).is_some(), "no gradient for {}", p.name);
    }
}

#[test]
fn every_reference_host_counts_its_forward_macs_per_layer() {
    let total = |name: &str| -> (Vec<String>, u64) {
        let host = build(name, 0, &Device::Cpu).unwrap();
        let layers = host.layer_macs().unwrap();
        (
            layers.iter().map(|l| l.layer.clone()).collect(),
            layers.iter().map(|l| l.macs).sum(),
        )
    };
    // Hand counts: weights × output positions for each conv, weights for each
    // linear layer.
    assert_eq!(
        total("mlp"),
        (vec!["fc1".into(), "fc2".into()], 784 * 128 + 128 * 10)
    );
    assert_eq!(total("mlp-wide").1, 784 * 256 + 256 * 10);
    assert_eq!(
        total("cnn"),
        (
            vec!["conv1".into(), "conv2".into(), "fc".into()],
            9 * 16 * 784 + 9 * 16 * 32 * 196 + 1568 * 10
        )
    );
    assert_eq!(
        total("cnn-wide").1,
        9 * 32 * 784 + 9 * 32 * 64 * 196 + 3136 * 10
    );
    assert_eq!(total("cnn-impaired").1, 4 * 784 + 4 * 8 * 196 + 392 * 10);
    // Every layer name is the prefix of a parameter of the host.
    for name in HOST_NAMES {
        let host = build(name, 0, &Device::Cpu).unwrap();
        let params: Vec<String> = host.parameters().into_iter().map(|p| p.name).collect();
        for layer in host.layer_macs().unwrap() {
            assert!(
                params.contains(&format!("{}.weight", layer.layer)),
                "{name}: {} is not a layer",
                layer.layer
            );
        }
    }
}
