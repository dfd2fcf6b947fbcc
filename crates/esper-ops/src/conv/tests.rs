use super::*;
use candle_core::{Device, Var};
use proptest::prelude::*;

fn values(n: usize, seed: u64) -> Vec<f32> {
    crate::cpu::pseudo(n, seed)
}

fn close(a: &Tensor, b: &Tensor, what: &str) -> std::result::Result<(), TestCaseError> {
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    prop_assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        // f32 sums of up to a few hundred products of values in [-1, 1).
        let tol = 1e-4 * x.abs().max(y.abs()).max(1.0);
        prop_assert!((x - y).abs() <= tol, "{} [{}]: {} vs {}", what, i, x, y);
    }
    Ok(())
}

#[derive(Debug, Clone)]
struct Case {
    n: usize,
    groups: usize,
    c_per_group: usize,
    out_per_group: usize,
    h: usize,
    w: usize,
    k: usize,
    spec: Conv2dSpec,
}

fn case() -> impl Strategy<Value = Case> {
    (
        // Up to 5 samples: fewer and more than threads, uneven runs per thread.
        1usize..6,
        1usize..4,
        1usize..4,
        1usize..4,
        3usize..9,
        3usize..9,
        prop_oneof![Just(1usize), Just(3), Just(2)],
        0usize..3,
        1usize..3,
        1usize..3,
    )
        .prop_filter_map(
            "kernel must fit",
            |(n, groups, cpg, opg, h, w, k, p, s, d)| {
                let span = d * (k - 1) + 1;
                (h + 2 * p >= span && w + 2 * p >= span).then_some(Case {
                    n,
                    groups,
                    c_per_group: cpg,
                    out_per_group: opg,
                    h,
                    w,
                    k,
                    spec: Conv2dSpec {
                        padding: p,
                        stride: s,
                        dilation: d,
                        groups,
                    },
                })
            },
        )
}

fn tensors(c: &Case, seed: u64) -> (Var, Var) {
    let cin = c.groups * c.c_per_group;
    let cout = c.groups * c.out_per_group;
    let x = Var::from_vec(
        values(c.n * cin * c.h * c.w, seed),
        (c.n, cin, c.h, c.w),
        &Device::Cpu,
    )
    .unwrap();
    let k = Var::from_vec(
        values(cout * c.c_per_group * c.k * c.k, seed + 1),
        (cout, c.c_per_group, c.k, c.k),
        &Device::Cpu,
    )
    .unwrap();
    (x, k)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Forward equals candle's `conv2d` for every geometry.
    #[test]
    fn forward_matches_candle(c in case(), seed in 0u64..1000) {
        let (x, k) = tensors(&c, seed);
        let ours = conv2d(x.as_tensor(), k.as_tensor(), c.spec).unwrap();
        let theirs = x
            .as_tensor()
            .conv2d(k.as_tensor(), c.spec.padding, c.spec.stride, c.spec.dilation, c.spec.groups)
            .unwrap();
        prop_assert_eq!(ours.dims(), theirs.dims());
        close(&ours, &theirs, "forward")?;
    }

    /// Both gradients equal candle's where candle's backward works: ungrouped,
    /// and strides that tile the padded input exactly (otherwise candle 0.11's
    /// backward fails with a shape mismatch; those cases are checked against
    /// finite differences below).
    #[test]
    fn gradients_match_candle(
        c in case().prop_filter("where candle's backward works", |c| {
            let span = c.spec.dilation * (c.k - 1) + 1;
            c.groups == 1
                && (c.h + 2 * c.spec.padding - span) % c.spec.stride == 0
                && (c.w + 2 * c.spec.padding - span) % c.spec.stride == 0
        }),
        seed in 0u64..1000,
    ) {
        let (x, k) = tensors(&c, seed);
        let out_shape = conv2d(x.as_tensor(), k.as_tensor(), c.spec).unwrap().dims().to_vec();
        let weights = Tensor::from_vec(
            values(out_shape.iter().product(), seed + 7),
            out_shape.as_slice(),
            &Device::Cpu,
        )
        .unwrap();
        let ours = conv2d(x.as_tensor(), k.as_tensor(), c.spec)
            .unwrap()
            .mul(&weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let theirs = x
            .as_tensor()
            .conv2d(k.as_tensor(), c.spec.padding, c.spec.stride, c.spec.dilation, 1)
            .unwrap()
            .mul(&weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        close(ours.get(&k).unwrap(), theirs.get(&k).unwrap(), "kernel gradient")?;
        close(ours.get(&x).unwrap(), theirs.get(&x).unwrap(), "input gradient")?;
    }
}

/// Grouped, depthwise, strided (not tiling the input) and dilated gradients
/// against central finite differences.
#[test]
fn gradients_match_finite_differences() {
    for (groups, cpg, opg, stride, dilation) in [
        (2, 2, 3, 1, 1),
        (3, 1, 1, 1, 1),
        (4, 1, 2, 2, 1),
        (1, 2, 2, 2, 2),
        (2, 1, 2, 1, 2),
    ] {
        let c = Case {
            n: 2,
            groups,
            c_per_group: cpg,
            out_per_group: opg,
            h: 6,
            w: 5,
            k: 3,
            spec: Conv2dSpec {
                padding: 1,
                stride,
                dilation,
                groups,
            },
        };
        let (x, k) = tensors(&c, 11);
        let loss = |x: &Tensor, k: &Tensor| {
            conv2d(x, k, c.spec)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let grads = loss(x.as_tensor(), k.as_tensor()).backward().unwrap();
        let eps = 1e-2f32;
        for (var, other, is_x) in [(&x, &k, true), (&k, &x, false)] {
            let base = var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let analytic = grads
                .get(var)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            for i in 0..base.len() {
                let at = |delta: f32| {
                    let mut v = base.clone();
                    v[i] += delta;
                    let t = Tensor::from_vec(v, var.dims(), &Device::Cpu).unwrap();
                    let l = if is_x {
                        loss(&t, other.as_tensor())
                    } else {
                        loss(other.as_tensor(), &t)
                    };
                    f64::from(l.to_scalar::<f32>().unwrap())
                };
                let numeric = ((at(eps) - at(-eps)) / (2.0 * f64::from(eps))) as f32;
                let tol = 2e-2 * analytic[i].abs().max(1.0);
                assert!(
                    (numeric - analytic[i]).abs() < tol,
                    "groups {groups}, {} [{i}]: numeric {numeric}, analytic {}",
                    if is_x { "input" } else { "kernel" },
                    analytic[i]
                );
            }
        }
    }
}

/// The data batch is not tracked: its gradient is never computed, and the
/// kernel's still is.
#[test]
fn an_untracked_input_gets_no_gradient() {
    let x = Tensor::from_vec(values(2 * 3 * 6 * 6, 3), (2, 3, 6, 6), &Device::Cpu).unwrap();
    let k = Var::from_vec(values(4 * 3 * 9, 4), (4, 3, 3, 3), &Device::Cpu).unwrap();
    let spec = Conv2dSpec {
        padding: 1,
        ..Conv2dSpec::default()
    };
    let grads = conv2d(&x, k.as_tensor(), spec)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(grads.get(&x).is_none());
    assert!(grads.get(k.as_tensor()).is_some());
}

#[test]
fn impossible_geometry_is_an_error() {
    let x = Tensor::zeros((1, 4, 3, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    let k = Tensor::zeros((2, 3, 3, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(
        conv2d(&x, &k, Conv2dSpec::default()).is_err(),
        "channel mismatch"
    );
    let k = Tensor::zeros((2, 4, 5, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(
        conv2d(&x, &k, Conv2dSpec::default()).is_err(),
        "kernel larger than input"
    );
}

fn even_output(c: &Case) -> bool {
    let span = c.spec.dilation * (c.k - 1) + 1;
    let out = |size: usize| (size + 2 * c.spec.padding - span) / c.spec.stride + 1;
    out(c.h) % 2 == 0 && out(c.w) % 2 == 0
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The block op equals `bias_relu_max_pool2x2(conv2d(x, k), b)` bit for
    /// bit: forward and the gradients of the input, kernel and bias.
    #[test]
    fn the_block_equals_its_composition(
        c in case().prop_filter("even output", even_output),
        seed in 0u64..1000,
    ) {
        let (x, k) = tensors(&c, seed);
        let cout = c.groups * c.out_per_group;
        let b = Var::from_vec(values(cout, seed + 3), cout, &Device::Cpu).unwrap();
        let block = conv2d_bias_relu_max_pool2x2(x.as_tensor(), k.as_tensor(), b.as_tensor(), c.spec)
            .unwrap();
        let composed = crate::bias_relu_max_pool2x2(
            &conv2d(x.as_tensor(), k.as_tensor(), c.spec).unwrap(),
            b.as_tensor(),
        )
        .unwrap();
        prop_assert_eq!(block.dims(), composed.dims());
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        prop_assert_eq!(flat(&block), flat(&composed));
        let weights = Tensor::from_vec(values(block.elem_count(), seed + 5), block.shape(), &Device::Cpu)
            .unwrap();
        let g1 = block.mul(&weights).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = composed.mul(&weights).unwrap().sum_all().unwrap().backward().unwrap();
        for (var, what) in [(&x, "input"), (&k, "kernel"), (&b, "bias")] {
            prop_assert_eq!(
                flat(g1.get(var).unwrap()),
                flat(g2.get(var).unwrap()),
                "{} gradient", what
            );
        }
    }
}

/// A block on the data batch computes no input gradient; impossible shapes
/// are errors.
#[test]
fn the_block_skips_the_data_gradient_and_refuses_bad_shapes() {
    let x = Tensor::from_vec(values(2 * 3 * 6 * 6, 3), (2, 3, 6, 6), &Device::Cpu).unwrap();
    let k = Var::from_vec(values(4 * 3 * 9, 4), (4, 3, 3, 3), &Device::Cpu).unwrap();
    let b = Var::from_vec(values(4, 5), 4, &Device::Cpu).unwrap();
    let spec = Conv2dSpec {
        padding: 1,
        ..Conv2dSpec::default()
    };
    let grads = conv2d_bias_relu_max_pool2x2(&x, k.as_tensor(), b.as_tensor(), spec)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(grads.get(&x).is_none());
    assert!(grads.get(k.as_tensor()).is_some() && grads.get(b.as_tensor()).is_some());
    // A 5x5 output cannot be pooled 2x2.
    let odd = Tensor::zeros((1, 3, 5, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(conv2d_bias_relu_max_pool2x2(&odd, k.as_tensor(), b.as_tensor(), spec).is_err());
    let three = Tensor::zeros(3, candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(conv2d_bias_relu_max_pool2x2(&x, k.as_tensor(), &three, spec).is_err());
}

/// The plain convolution's forward and backward passes allocate their
/// results, per thread one block of unfolded images and one staging matrix
/// (and a kernel partial), and the GEMM's packing (`cnn`'s second layer at
/// batch 32 on two threads).
#[test]
fn allocates_results_scratch_and_gemm_packing_only() {
    use crate::alloc_count::{BOOKKEEPING, conv_blocking, counted, gemm_packing};
    let (n, c, cout, hw) = (32, 16, 32, 14);
    let x = Var::randn(0f32, 1.0, (n, c, hw, hw), &Device::Cpu).unwrap();
    let k = Var::randn(0f32, 0.1, (cout, c, 3, 3), &Device::Cpu).unwrap();
    let spec = Conv2dSpec {
        padding: 1,
        ..Conv2dSpec::default()
    };
    let bytes = |values: usize| values * 4;
    let (l, rows, image) = (hw * hw, c * 9, c * hw * hw);
    let (block, calls) = conv_blocking(n, l);
    let width = block * l;
    let scratch = 2 * bytes((rows + cout) * width);
    let (y, forward) = counted(|| conv2d(x.as_tensor(), k.as_tensor(), spec).unwrap());
    let needed = bytes(n * cout * l) + scratch + calls * gemm_packing(cout, rows, width);
    assert!(
        forward.bytes <= needed + BOOKKEEPING,
        "forward: {forward:?}, needed {needed}"
    );
    let g = Tensor::randn(0f32, 1.0, y.shape(), &Device::Cpu).unwrap();
    let geometry = geometry(x.as_tensor(), k.as_tensor(), spec, "conv2d").unwrap();
    let (_, input) = counted(|| k.apply_op2(&g, ConvGradInput { geometry }).unwrap());
    let needed = bytes(n * image) + scratch + calls * gemm_packing(rows, cout, width);
    assert!(
        input.bytes <= needed + BOOKKEEPING,
        "input gradient: {input:?}, needed {needed}"
    );
    let (_, kernel) = counted(|| {
        x.apply_op2(
            &g,
            ConvGradKernel {
                geometry,
                c_out: cout,
            },
        )
        .unwrap()
    });
    let needed = scratch + 2 * bytes(cout * rows) + calls * gemm_packing(cout, width, rows);
    assert!(
        kernel.bytes <= needed + BOOKKEEPING,
        "kernel gradient: {kernel:?}, needed {needed}"
    );
}

fn depthwise_case() -> impl Strategy<Value = Case> {
    (
        // Up to 19 samples: several rayon tasks of at least 4 samples each.
        1usize..20,
        2usize..6,
        4usize..12,
        4usize..12,
        prop_oneof![Just(1usize), Just(3), Just(5), Just(7)],
        0usize..4,
        1usize..3,
        1usize..3,
    )
        .prop_filter_map("kernel must fit", |(n, c, h, w, k, p, s, d)| {
            let span = d * (k - 1) + 1;
            (h + 2 * p >= span && w + 2 * p >= span).then_some(Case {
                n,
                groups: c,
                c_per_group: 1,
                out_per_group: 1,
                h,
                w,
                k,
                spec: Conv2dSpec {
                    padding: p,
                    stride: s,
                    dilation: d,
                    groups: c,
                },
            })
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The direct depthwise kernel equals the general im2col + GEMM path
    /// (itself checked against candle and finite differences above) in the
    /// forward value and both gradients, for every geometry.
    #[test]
    fn depthwise_equals_the_general_path(c in depthwise_case(), seed in 0u64..1000) {
        let (x, k) = tensors(&c, seed);
        let direct = conv2d(x.as_tensor(), k.as_tensor(), c.spec).unwrap();
        let general = conv2d_general(x.as_tensor(), k.as_tensor(), c.spec).unwrap();
        prop_assert_eq!(direct.dims(), general.dims());
        close(&direct, &general, "forward")?;
        let weights = Tensor::from_vec(
            values(direct.elem_count(), seed + 7),
            direct.dims(),
            &Device::Cpu,
        )
        .unwrap();
        let grads = |y: Tensor| y.mul(&weights).unwrap().sum_all().unwrap().backward().unwrap();
        let ours = grads(direct);
        let theirs = grads(general);
        close(ours.get(&k).unwrap(), theirs.get(&k).unwrap(), "kernel gradient")?;
        close(ours.get(&x).unwrap(), theirs.get(&x).unwrap(), "input gradient")?;
    }
}

/// A depthwise convolution of an untracked input computes only the kernel's
/// gradient.
#[test]
fn a_depthwise_untracked_input_gets_no_gradient() {
    let x = Tensor::from_vec(values(2 * 3 * 6 * 6, 3), (2, 3, 6, 6), &Device::Cpu).unwrap();
    let k = Var::from_vec(values(3 * 25, 4), (3, 1, 5, 5), &Device::Cpu).unwrap();
    let spec = Conv2dSpec {
        padding: 2,
        groups: 3,
        ..Conv2dSpec::default()
    };
    let grads = conv2d(&x, k.as_tensor(), spec)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(grads.get(&x).is_none());
    assert_eq!(grads.get(&k).unwrap().dims(), &[3, 1, 5, 5]);
}

/// The depthwise kernel gradient repeats bit for bit: its partial sums are
/// grouped by fixed tasks, not as the scheduler happens to split the batch
/// (which made seeded training runs drift apart in the last digits).
#[test]
fn the_depthwise_kernel_gradient_repeats_bit_for_bit() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(4)
        .build()
        .unwrap();
    let spec = |stride| Conv2dSpec {
        padding: 2,
        stride,
        groups: 6,
        ..Conv2dSpec::default()
    };
    for stride in [1, 2] {
        let x = Var::from_vec(values(61 * 6 * 9 * 9, 11), (61, 6, 9, 9), &Device::Cpu).unwrap();
        let k = Var::from_vec(values(6 * 25, 12), (6, 1, 5, 5), &Device::Cpu).unwrap();
        let kernel_grad = || {
            pool.install(|| {
                let y = conv2d(x.as_tensor(), k.as_tensor(), spec(stride)).unwrap();
                let w =
                    Tensor::from_vec(values(y.elem_count(), 13), y.dims(), &Device::Cpu).unwrap();
                let grads = y.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
                let dk = grads.get(&k).unwrap().flatten_all().unwrap();
                dk.to_vec1::<f32>().unwrap()
            })
        };
        let first = kernel_grad();
        for _ in 0..30 {
            let again = kernel_grad();
            let same = first
                .iter()
                .zip(&again)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "stride {stride}: {first:?} then {again:?}");
        }
    }
}

/// Dense, grouped and depthwise convolutions give the same gradients bit for
/// bit with 1, 2 or 3 threads: the batch is split into a fixed number of
/// tasks, not by the pool's size (a cohort's `--jobs` sets the threads per
/// run, and with a thread-dependent split `--jobs 1` and `--jobs 2` ended
/// every run a few ulps apart).
#[test]
fn gradients_do_not_depend_on_the_thread_count() {
    let cases = [
        (
            Conv2dSpec {
                padding: 1,
                ..Conv2dSpec::default()
            },
            6,
            3,
        ),
        (
            Conv2dSpec {
                padding: 1,
                groups: 2,
                ..Conv2dSpec::default()
            },
            6,
            3,
        ),
        (
            Conv2dSpec {
                padding: 2,
                groups: 6,
                ..Conv2dSpec::default()
            },
            6,
            5,
        ),
    ];
    for (spec, c_out, kk) in cases {
        let c_in = 6;
        let x = Var::from_vec(
            values(37 * c_in * 9 * 9, 21),
            (37, c_in, 9, 9),
            &Device::Cpu,
        )
        .unwrap();
        let per_group = c_in / spec.groups.max(1);
        let k = Var::from_vec(
            values(c_out * per_group * kk * kk, 22),
            (c_out, per_group, kk, kk),
            &Device::Cpu,
        )
        .unwrap();
        let grads_with = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let y = conv2d(x.as_tensor(), k.as_tensor(), spec).unwrap();
                let w =
                    Tensor::from_vec(values(y.elem_count(), 23), y.dims(), &Device::Cpu).unwrap();
                let grads = y.mul(&w).unwrap().sum_all().unwrap().backward().unwrap();
                let bits = |t: &Tensor| -> Vec<u32> {
                    t.flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                        .iter()
                        .map(|v| v.to_bits())
                        .collect()
                };
                (
                    bits(&y),
                    bits(grads.get(&k).unwrap()),
                    bits(grads.get(&x).unwrap()),
                )
            })
        };
        let one = grads_with(1);
        for threads in [2, 3] {
            assert!(
                grads_with(threads) == one,
                "groups {}: {threads} threads differ from 1",
                spec.groups
            );
        }
    }
}
