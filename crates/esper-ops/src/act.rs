//! Fused bias + ReLU: `relu(x + b)` with `b` one value per channel (dim 1)
//! of `[N, C, …]`, one pass forward and one pass backward, parallel over the
//! `N·C` planes. candle 0.11 computes the same thing in several full-size
//! passes each way (a broadcast add, a comparison, a cast, a product, a
//! strided reduction for the bias), ~60 ms a `cnn` step between them at batch
//! 128; this is a few. The gradient is exact: `dx = g · [y > 0]`, `db = Σ dx`
//! over every axis but the channel. On CUDA, candle's own ops run.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu::contiguous_f32;

/// `(N, C, plane size)` of a `[N, C, …]` shape.
fn planes(shape: &Shape) -> Result<(usize, usize, usize)> {
    let dims = shape.dims();
    if dims.len() < 2 {
        return Err(candle_core::Error::Msg(format!(
            "bias_relu needs [N, C, ...], got {dims:?}"
        )));
    }
    Ok((dims[0], dims[1], dims[2..].iter().product()))
}

/// Values per parallel task, at least: below this, scheduling costs more
/// than it saves.
const MIN_TASK: usize = 1 << 14;

#[derive(Debug, Clone, Copy)]
struct BiasRelu;

/// `x + b` per channel.
#[derive(Debug, Clone, Copy)]
struct BiasAdd;

/// `(y, g) → g · [y > 0]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReluGrad;

/// `[N, C, …] → [C]`: the sum over every axis but the channel.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChannelSum;

/// `f(x, bias of x's channel)` for every value of `x [N, C, …]` (storage
/// and layout), parallel over samples; `op` names the operation in errors.
fn map_with_bias(
    (xs, xl): (&CpuStorage, &Layout),
    (bs, bl): (&CpuStorage, &Layout),
    op: &str,
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> Result<(CpuStorage, Shape)> {
    let x = contiguous_f32(xs, xl, op)?;
    let b = contiguous_f32(bs, bl, op)?;
    let (_, c, plane) = planes(xl.shape())?;
    if b.len() != c {
        return Err(candle_core::Error::Msg(format!(
            "{op}: {} bias values for {c} channels",
            b.len()
        )));
    }
    let mut y = vec![0f32; x.len()];
    // One sample per task (C planes each): few, large tasks.
    let sample = (c * plane).max(1);
    y.par_chunks_mut(sample)
        .zip(x.par_chunks(sample))
        // Tasks of at least ~16k values: a dense layer's samples are a
        // few hundred values each, too small to be worth a task.
        .with_min_len((MIN_TASK / sample).max(1))
        .for_each(|(out, inp)| {
            for (ch, (o, i)) in out
                .chunks_mut(plane.max(1))
                .zip(inp.chunks(plane.max(1)))
                .enumerate()
            {
                let bias = b[ch];
                for (o, v) in o.iter_mut().zip(i) {
                    *o = f(*v, bias);
                }
            }
        });
    Ok((CpuStorage::F32(y), xl.shape().clone()))
}

impl CustomOp2 for BiasRelu {
    fn name(&self) -> &'static str {
        "esper-bias-relu"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        map_with_bias((xs, xl), (bs, bl), "bias_relu", |v, bias| {
            (v + bias).max(0.0)
        })
    }

    fn bwd(
        &self,
        x: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if !x.track_op() && !b.track_op() {
            return Ok((None, None));
        }
        let dx = res.apply_op2(&grad.contiguous()?, ReluGrad)?;
        let db = if b.track_op() {
            Some(dx.apply_op1(ChannelSum)?.reshape(b.shape())?)
        } else {
            None
        };
        Ok((x.track_op().then_some(dx), db))
    }
}

impl CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "esper-relu-grad"
    }

    fn cpu_fwd(
        &self,
        ys: &CpuStorage,
        yl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let y = contiguous_f32(ys, yl, "relu backward")?;
        let g = contiguous_f32(gs, gl, "relu backward")?;
        if y.len() != g.len() {
            return Err(candle_core::Error::Msg(format!(
                "relu backward: {} outputs, {} gradients",
                y.len(),
                g.len()
            )));
        }
        let mut dx = vec![0f32; y.len()];
        dx.par_chunks_mut(MIN_TASK)
            .zip(y.par_chunks(MIN_TASK).zip(g.par_chunks(MIN_TASK)))
            .for_each(|(d, (y, g))| {
                for ((d, y), g) in d.iter_mut().zip(y).zip(g) {
                    *d = if *y > 0.0 { *g } else { 0.0 };
                }
            });
        Ok((CpuStorage::F32(dx), yl.shape().clone()))
    }
}

impl CustomOp2 for BiasAdd {
    fn name(&self) -> &'static str {
        "esper-bias-add"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        map_with_bias((xs, xl), (bs, bl), "bias_add", |v, bias| v + bias)
    }

    fn bwd(
        &self,
        x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // The input's gradient is the output's, passed on without a copy;
        // the bias's sums it per channel (candle's broadcast add reduces
        // over the other axes with a strided generic loop).
        let db = if b.track_op() {
            Some(
                grad.contiguous()?
                    .apply_op1(ChannelSum)?
                    .reshape(b.shape())?,
            )
        } else {
            None
        };
        Ok((x.track_op().then(|| grad.clone()), db))
    }
}

impl CustomOp1 for ChannelSum {
    fn name(&self) -> &'static str {
        "esper-channel-sum"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "channel sum")?;
        let (n, c, plane) = planes(layout.shape())?;
        if plane == 1 {
            // Dense `[N, C]`: rows added in order, one vectorised pass.
            let mut sums = vec![0f32; c];
            for row in x.chunks_exact(c.max(1)).take(n) {
                for (s, v) in sums.iter_mut().zip(row) {
                    *s += v;
                }
            }
            return Ok((CpuStorage::F32(sums), Shape::from(c)));
        }
        let sums: Vec<f32> = (0..c)
            .into_par_iter()
            .map(|ch| {
                (0..n)
                    .map(|i| {
                        let start = (i * c + ch) * plane;
                        x[start..start + plane].iter().sum::<f32>()
                    })
                    .sum()
            })
            .collect();
        Ok((CpuStorage::F32(sums), Shape::from(c)))
    }
}

/// `x + b` for `x [N, C, …]` and `b` with `C` values, one pass; the bias
/// gradient is one per-channel sum.
pub fn bias_add(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    match broadcast_bias(x, bias, "bias_add")? {
        Some(b) => x.broadcast_add(&b),
        None => x.contiguous()?.apply_op2(&bias.contiguous()?, BiasAdd),
    }
}

/// `relu(x + b)` for `x [N, C, …]` and `b [C]` (or any shape of `C` values),
/// with an exact gradient for both.
pub fn bias_relu(x: &Tensor, bias: &Tensor) -> Result<Tensor> {
    match broadcast_bias(x, bias, "bias_relu")? {
        Some(b) => x.broadcast_add(&b)?.relu(),
        None => x.contiguous()?.apply_op2(&bias.contiguous()?, BiasRelu),
    }
}

/// Checks that `bias` has one value per channel of `x`; off the CPU, the
/// bias shaped `[1, C, 1, …]` for candle's own broadcast add (`None` on the
/// CPU, where our ops run).
fn broadcast_bias(x: &Tensor, bias: &Tensor, op: &str) -> Result<Option<Tensor>> {
    let (_, c, _) = planes(x.shape())?;
    if bias.elem_count() != c {
        return Err(candle_core::Error::Msg(format!(
            "{op}: {} bias values for {c} channels",
            bias.elem_count()
        )));
    }
    if x.device().is_cpu() {
        return Ok(None);
    }
    let mut shape = vec![1; x.rank()];
    shape[1] = c;
    Ok(Some(bias.reshape(shape)?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use candle_core::{Device, Var};

    use super::*;
    use crate::cpu::pseudo;

    fn vec(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// Our op against candle's broadcast add followed by `then`, on a random
    /// dense (`[N, C]`) or convolutional (`[N, C, H, W]`) input: forward and
    /// input gradient bit for bit, bias gradient up to summation order.
    fn matches_candle(
        ours: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
        then: impl Fn(Tensor) -> Result<Tensor>,
        shape: Vec<usize>,
        seed: u64,
    ) -> std::result::Result<(), proptest::test_runner::TestCaseError> {
        let (count, c) = (shape.iter().product::<usize>(), shape[1]);
        let x = Var::from_vec(pseudo(count, seed), shape.clone(), &Device::Cpu).unwrap();
        let b = Var::from_vec(pseudo(c, seed + 7), c, &Device::Cpu).unwrap();
        let weights =
            Tensor::from_vec(pseudo(count, seed + 3), shape.clone(), &Device::Cpu).unwrap();
        let mut bshape = vec![1; shape.len()];
        bshape[1] = c;
        let reference = then(
            x.as_tensor()
                .broadcast_add(&b.as_tensor().reshape(bshape).unwrap())
                .unwrap(),
        )
        .unwrap();
        let ours = ours(x.as_tensor(), b.as_tensor()).unwrap();
        proptest::prop_assert_eq!(vec(&ours), vec(&reference));
        let g1 = ours
            .mul(&weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = reference
            .mul(&weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        proptest::prop_assert_eq!(vec(g1.get(&x).unwrap()), vec(g2.get(&x).unwrap()));
        for (a, r) in vec(g1.get(&b).unwrap())
            .iter()
            .zip(vec(g2.get(&b).unwrap()))
        {
            proptest::prop_assert!((a - r).abs() <= 1e-5 * r.abs().max(1.0), "{} vs {}", a, r);
        }
        Ok(())
    }

    fn shape() -> impl proptest::strategy::Strategy<Value = Vec<usize>> {
        use proptest::prelude::*;
        (1usize..4, 1usize..6, 1usize..5, 1usize..5, any::<bool>())
            .prop_map(|(n, c, h, w, dense)| if dense { vec![n, c] } else { vec![n, c, h, w] })
    }

    proptest::proptest! {
        /// `bias_relu` equals candle's broadcast add + relu.
        #[test]
        fn bias_relu_matches_candles_ops(shape in shape(), seed in 0u64..1000) {
            matches_candle(bias_relu, |t| t.relu(), shape, seed)?;
        }

        /// `bias_add` equals candle's broadcast add.
        #[test]
        fn bias_add_matches_candles_broadcast_add(shape in shape(), seed in 0u64..1000) {
            matches_candle(bias_add, Ok, shape, seed)?;
        }
    }

    /// Forward allocates its output, the backward `dx` and the bias sums,
    /// dense and convolutional.
    #[test]
    fn allocates_its_results_only() {
        use crate::alloc_count::{BOOKKEEPING, counted};
        for shape in [vec![128, 128], vec![32, 16, 28, 28]] {
            let x = Tensor::randn(0f32, 1.0, shape.as_slice(), &Device::Cpu).unwrap();
            let c = shape[1];
            let b = Tensor::zeros(c, candle_core::DType::F32, &Device::Cpu).unwrap();
            let full = x.elem_count() * 4;
            let (y, forward) = counted(|| bias_relu(&x, &b).unwrap());
            assert!(
                forward.bytes <= full + BOOKKEEPING,
                "{shape:?} forward: {forward:?}"
            );
            let g = Tensor::randn(0f32, 1.0, shape.as_slice(), &Device::Cpu).unwrap();
            let (dx, backward) = counted(|| y.apply_op2(&g, ReluGrad).unwrap());
            assert!(
                backward.bytes <= full + BOOKKEEPING,
                "{shape:?} dx: {backward:?}"
            );
            let (_, sums) = counted(|| dx.apply_op1(ChannelSum).unwrap());
            assert!(
                sums.bytes <= c * 4 + BOOKKEEPING,
                "{shape:?} bias gradient: {sums:?}"
            );
        }
    }

    #[test]
    fn a_bias_of_the_wrong_width_is_an_error() {
        let x = Tensor::zeros((2, 3, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        let b = Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(bias_relu(&x, &b).is_err());
    }
}
