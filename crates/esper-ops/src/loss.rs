//! Softmax cross-entropy as one op: the mean over a batch of
//! `logsumexp(z) − z[label]`, with its gradient `(softmax(z) − onehot)·g/N`
//! in one pass.
//!
//! candle-nn's `cross_entropy` is a log-softmax (max, subtract, exp, sum,
//! log, subtract: six `[N, C]` tensors and nodes), a gather, a sum and a
//! division, and its backward walks all of them back. Here the forward reads
//! the logits once per row and allocates one scalar; the backward recomputes
//! each row's softmax (cheaper than keeping it) and writes the gradient
//! straight. On CUDA, candle's own ops run.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

use crate::cpu::contiguous_f32;

/// The labels of a batch as class indices, whatever their integer type.
fn labels_of(storage: &CpuStorage, layout: &Layout) -> Result<Vec<usize>> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        return Err(candle_core::Error::Msg(
            "cross_entropy: labels must be contiguous".into(),
        ));
    };
    Ok(match storage {
        CpuStorage::U8(v) => v[start..end].iter().map(|&l| usize::from(l)).collect(),
        CpuStorage::U32(v) => v[start..end].iter().map(|&l| l as usize).collect(),
        CpuStorage::I64(v) => v[start..end]
            .iter()
            // A negative label is out of range like a too-large one.
            .map(|&l| usize::try_from(l).unwrap_or(usize::MAX))
            .collect(),
        other => {
            return Err(candle_core::Error::Msg(format!(
                "cross_entropy: labels must be u8, u32 or i64, not {:?}",
                other.dtype()
            )));
        }
    })
}

/// `(rows, classes)` of the logits, the labels, and a check that every
/// label names a class.
fn batch<'a>(
    (zs, zl): (&'a CpuStorage, &Layout),
    (ls, ll): (&CpuStorage, &Layout),
) -> Result<(&'a [f32], usize, usize, Vec<usize>)> {
    let z = contiguous_f32(zs, zl, "cross_entropy")?;
    let (n, c) = zl.shape().dims2()?;
    let labels = labels_of(ls, ll)?;
    if labels.len() != n {
        return Err(candle_core::Error::Msg(format!(
            "cross_entropy: {} labels for {n} rows of logits",
            labels.len()
        )));
    }
    if let Some((row, _)) = labels.iter().enumerate().find(|(_, l)| **l >= c) {
        return Err(candle_core::Error::Msg(format!(
            "cross_entropy: the label of row {row} is not one of the {c} classes"
        )));
    }
    Ok((z, n, c, labels))
}

/// `(max, ln Σ exp(z − max))` of one row: its log-sum-exp is their sum.
fn log_sum_exp(row: &[f32]) -> (f32, f32) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
    (max, sum.ln())
}

/// The forward: the batch's mean loss.
#[derive(Debug, Clone, Copy)]
struct CrossEntropy;

/// The backward: `(softmax(z) − onehot(label))·scale` for every row.
#[derive(Debug, Clone, Copy)]
struct CrossEntropyGrad {
    scale: f32,
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "esper-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        zs: &CpuStorage,
        zl: &Layout,
        ls: &CpuStorage,
        ll: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (z, n, c, labels) = batch((zs, zl), (ls, ll))?;
        // Each row's loss in f32 as candle computes it (z − max − ln Σ), the
        // batch's sum in f64 so a large batch loses nothing to rounding.
        let total: f64 = z
            .chunks_exact(c.max(1))
            .zip(&labels)
            .map(|(row, &label)| {
                let (max, lse) = log_sum_exp(row);
                f64::from(-(row[label] - max - lse))
            })
            .sum();
        let mean = if n == 0 { f64::NAN } else { total / n as f64 };
        Ok((CpuStorage::F32(vec![mean as f32]), Shape::from(())))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if !logits.track_op() {
            return Ok((None, None));
        }
        let (n, _) = logits.dims2()?;
        let scale = grad.to_dtype(DType::F32)?.to_scalar::<f32>()? / n.max(1) as f32;
        Ok((
            Some(logits.apply_op2(labels, CrossEntropyGrad { scale })?),
            None,
        ))
    }
}

impl CustomOp2 for CrossEntropyGrad {
    fn name(&self) -> &'static str {
        "esper-cross-entropy-grad"
    }

    fn cpu_fwd(
        &self,
        zs: &CpuStorage,
        zl: &Layout,
        ls: &CpuStorage,
        ll: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (z, _, c, labels) = batch((zs, zl), (ls, ll))?;
        let mut d = vec![0f32; z.len()];
        for ((out, row), &label) in d
            .chunks_exact_mut(c.max(1))
            .zip(z.chunks_exact(c.max(1)))
            .zip(&labels)
        {
            let (max, lse) = log_sum_exp(row);
            for (o, v) in out.iter_mut().zip(row) {
                *o = (v - max - lse).exp() * self.scale;
            }
            out[label] -= self.scale;
        }
        Ok((CpuStorage::F32(d), zl.shape().clone()))
    }
}

/// The mean softmax cross-entropy of `logits [N, C]` against `labels [N]`
/// (class indices, u8, u32 or i64): candle-nn's `cross_entropy`, with an
/// exact gradient for the logits. A label that is not a class is an error.
///
/// On the CPU, one op each way; elsewhere, candle's log-softmax and gather.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let (n, _) = logits.dims2()?;
    if labels.dims() != [n] {
        return Err(candle_core::Error::Msg(format!(
            "cross_entropy: labels of shape {:?} for {n} rows of logits",
            labels.dims()
        )));
    }
    if !logits.device().is_cpu() {
        let max = logits.max_keepdim(1)?;
        let shifted = logits.broadcast_sub(&max)?;
        let lse = shifted.exp()?.sum_keepdim(1)?.log()?;
        let log_softmax = shifted.broadcast_sub(&lse)?;
        let picked = log_softmax.gather(&labels.unsqueeze(1)?, 1)?;
        return picked.sum_all()?.neg()? / n as f64;
    }
    logits
        .contiguous()?
        .apply_op2(&labels.contiguous()?, CrossEntropy)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use candle_core::{Device, Var};
    use proptest::prelude::*;

    use super::*;
    use crate::cpu::pseudo;

    fn values(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    proptest! {
        /// Loss and gradient equal candle-nn's `cross_entropy` (what the
        /// trainer ran before), scaled logits up to ±40.
        #[test]
        fn matches_candle_nn(n in 1usize..20, c in 1usize..12, scale in 0.1f32..40.0,
                             seed in 0u64..1000) {
            let z: Vec<f32> = pseudo(n * c, seed).iter().map(|v| v * scale).collect();
            let labels: Vec<u32> = (0..n).map(|i| ((i as u64 * 7 + seed) % c as u64) as u32).collect();
            let logits = Var::from_vec(z, (n, c), &Device::Cpu).unwrap();
            let y = Tensor::from_vec(labels, n, &Device::Cpu).unwrap();
            let ours = cross_entropy(logits.as_tensor(), &y).unwrap();
            let theirs = candle_nn::loss::cross_entropy(logits.as_tensor(), &y).unwrap();
            let (a, b) = (ours.to_scalar::<f32>().unwrap(), theirs.to_scalar::<f32>().unwrap());
            prop_assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{} vs {}", a, b);
            // Through a later op, so the incoming gradient is not 1.
            let g1 = (ours * 3.0).unwrap().backward().unwrap();
            let g2 = (theirs * 3.0).unwrap().backward().unwrap();
            for (x, r) in values(g1.get(&logits).unwrap()).iter()
                .zip(values(g2.get(&logits).unwrap())) {
                prop_assert!((x - r).abs() <= 1e-5, "{} vs {}", x, r);
            }
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (n, c) = (4, 5);
        let z = pseudo(n * c, 3);
        let labels = Tensor::from_vec(vec![0u32, 4, 2, 2], n, &Device::Cpu).unwrap();
        let loss = |z: &[f32]| -> f32 {
            let t = Tensor::from_slice(z, (n, c), &Device::Cpu).unwrap();
            cross_entropy(&t, &labels).unwrap().to_scalar().unwrap()
        };
        let v = Var::from_slice(&z, (n, c), &Device::Cpu).unwrap();
        let grads = cross_entropy(v.as_tensor(), &labels)
            .unwrap()
            .backward()
            .unwrap();
        let analytic = values(grads.get(&v).unwrap());
        let eps = 1e-2f32;
        for i in 0..z.len() {
            let (mut up, mut down) = (z.clone(), z.clone());
            up[i] += eps;
            down[i] -= eps;
            let numeric = (loss(&up) - loss(&down)) / (2.0 * eps);
            assert!(
                (numeric - analytic[i]).abs() <= 1e-3,
                "[{i}]: numeric {numeric}, analytic {}",
                analytic[i]
            );
        }
    }

    #[test]
    fn labels_of_every_integer_type_give_the_same_loss() {
        let z = Tensor::from_vec(pseudo(6, 1), (2, 3), &Device::Cpu).unwrap();
        let losses: Vec<f32> = [
            Tensor::from_vec(vec![2u8, 0], 2, &Device::Cpu).unwrap(),
            Tensor::from_vec(vec![2u32, 0], 2, &Device::Cpu).unwrap(),
            Tensor::from_vec(vec![2i64, 0], 2, &Device::Cpu).unwrap(),
        ]
        .iter()
        .map(|l| cross_entropy(&z, l).unwrap().to_scalar().unwrap())
        .collect();
        assert!(losses.windows(2).all(|w| w[0] == w[1]), "{losses:?}");
    }

    #[test]
    fn bad_labels_are_errors_that_say_which() {
        let z = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        let too_big = Tensor::from_vec(vec![0u32, 3], 2, &Device::Cpu).unwrap();
        let err = cross_entropy(&z, &too_big).unwrap_err().to_string();
        assert!(err.contains("row 1") && err.contains("3 classes"), "{err}");
        let negative = Tensor::from_vec(vec![-1i64, 0], 2, &Device::Cpu).unwrap();
        assert!(cross_entropy(&z, &negative).is_err());
        let short = Tensor::from_vec(vec![0u32], 1, &Device::Cpu).unwrap();
        assert!(cross_entropy(&z, &short).is_err());
        let float = Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap();
        assert!(cross_entropy(&z, &float).is_err());
    }

    /// The forward allocates a scalar, the backward one `[N, C]` gradient
    /// (plus candle's accumulation of it).
    #[test]
    fn allocates_its_results_only() {
        use crate::alloc_count::{BOOKKEEPING, counted};
        let (n, c) = (128, 10);
        let z = Var::randn(0f32, 1.0, (n, c), &Device::Cpu).unwrap();
        let y = Tensor::from_vec((0..n as u32).map(|i| i % 10).collect(), n, &Device::Cpu).unwrap();
        let (loss, forward) = counted(|| cross_entropy(z.as_tensor(), &y).unwrap());
        assert!(forward.bytes <= BOOKKEEPING, "forward: {forward:?}");
        let (_, backward) = counted(|| loss.backward().unwrap());
        assert!(
            backward.bytes <= 3 * n * c * 4 + 2 * BOOKKEEPING,
            "backward: {backward:?}"
        );
    }
}
