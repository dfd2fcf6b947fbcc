//! A seed's output joining the host activation, one pass each way: the
//! incubator `y = h` (value) with the seed's gradient intact, RESIDUAL
//! `y = h + α·s` and CONVEX `y = h + α·(s − h)`, for a scalar α.
//!
//! Composed from candle ops these are two or three full-size passes forward
//! (a subtraction, a scaling, an addition, and for the incubator a detached
//! copy) and as many backward, each allocating an activation-sized tensor;
//! fused, the forward is one pass and the backward at most one scaling per
//! operand (the incubator's backward passes the gradient on as it is). The
//! arithmetic per element is the composition's (same operations, same
//! order, no FMA contraction), so values are bit for bit the same. On CUDA,
//! candle's own ops run.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu::contiguous_f32;

/// Values per parallel task, at least.
const MIN_TASK: usize = 1 << 14;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// `y = h`; `∂h = g`, `∂s = g`.
    Incubate,
    /// `y = h + α·s`; `∂h = g`, `∂s = α·g`.
    Residual(f32),
    /// `y = h + α·(s − h)`; `∂h = g − α·g`, `∂s = α·g`.
    Convex(f32),
}

#[derive(Debug, Clone, Copy)]
struct Blend(Kind);

/// The incubator: the forward value is `h` exactly, and the seed output `s`
/// still receives the gradient arriving at the slot (as
/// `h + (s − s.detach())` would, in one copy).
pub fn incubate(h: &Tensor, s: &Tensor) -> Result<Tensor> {
    if !h.device().is_cpu() {
        return h + (s - s.detach())?;
    }
    apply(h, s, Kind::Incubate)
}

/// `h + α·s`.
pub fn residual_blend(h: &Tensor, s: &Tensor, alpha: f32) -> Result<Tensor> {
    if !h.device().is_cpu() {
        return h + (s * f64::from(alpha))?;
    }
    apply(h, s, Kind::Residual(alpha))
}

/// `h + α·(s − h)`, i.e. `α·s + (1 − α)·h`.
pub fn convex_blend(h: &Tensor, s: &Tensor, alpha: f32) -> Result<Tensor> {
    if !h.device().is_cpu() {
        return h + ((s - h)? * f64::from(alpha))?;
    }
    apply(h, s, Kind::Convex(alpha))
}

fn apply(h: &Tensor, s: &Tensor, kind: Kind) -> Result<Tensor> {
    if h.shape() != s.shape() {
        return Err(candle_core::Error::Msg(format!(
            "blend: host activation {:?} and seed output {:?} differ in shape",
            h.dims(),
            s.dims()
        )));
    }
    h.contiguous()?.apply_op2(&s.contiguous()?, Blend(kind))
}

impl CustomOp2 for Blend {
    fn name(&self) -> &'static str {
        match self.0 {
            Kind::Incubate => "esper-incubate",
            Kind::Residual(_) => "esper-residual-blend",
            Kind::Convex(_) => "esper-convex-blend",
        }
    }

    fn cpu_fwd(
        &self,
        hs: &CpuStorage,
        hl: &Layout,
        ss: &CpuStorage,
        sl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        let h = contiguous_f32(hs, hl, op)?;
        let s = contiguous_f32(ss, sl, op)?;
        if h.len() != s.len() {
            return Err(candle_core::Error::Msg(format!(
                "{op}: {} host values, {} seed values",
                h.len(),
                s.len()
            )));
        }
        let y = match self.0 {
            Kind::Incubate => h.to_vec(),
            Kind::Residual(a) => map2(h, s, |h, s| h + s * a),
            Kind::Convex(a) => map2(h, s, |h, s| h + (s - h) * a),
        };
        Ok((CpuStorage::F32(y), hl.shape().clone()))
    }

    fn bwd(
        &self,
        h: &Tensor,
        s: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (to_h, to_s) = match self.0 {
            Kind::Incubate => (1.0, 1.0),
            Kind::Residual(a) => (1.0, a),
            Kind::Convex(a) => (1.0, a),
        };
        let scaled = |factor: f32| -> Result<Tensor> {
            if factor == 1.0 {
                Ok(grad.clone())
            } else {
                grad.affine(f64::from(factor), 0.0)
            }
        };
        let dh = match (h.track_op(), self.0) {
            (false, _) => None,
            // `g − α·g`, as the composition's two paths add up, so that the
            // gradient is its bit for bit.
            (true, Kind::Convex(a)) => Some((grad - grad.affine(f64::from(a), 0.0)?)?),
            (true, Kind::Incubate | Kind::Residual(_)) => Some(scaled(to_h)?),
        };
        let ds = if s.track_op() {
            Some(scaled(to_s)?)
        } else {
            None
        };
        Ok((dh, ds))
    }
}

fn map2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync) -> Vec<f32> {
    let mut out = vec![0f32; a.len()];
    out.par_chunks_mut(MIN_TASK)
        .zip(a.par_chunks(MIN_TASK).zip(b.par_chunks(MIN_TASK)))
        .for_each(|(o, (a, b))| {
            for ((o, a), b) in o.iter_mut().zip(a).zip(b) {
                *o = f(*a, *b);
            }
        });
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use candle_core::{Device, Var};

    use super::*;

    fn vals(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    /// Each fused blend equals its candle composition bit for bit, value and
    /// both gradients, over more values than one parallel task holds.
    #[test]
    fn fused_blends_equal_their_compositions() {
        let shape = (3, 5, 41, 53);
        let n = 3 * 5 * 41 * 53;
        let h = Var::from_vec(crate::cpu::pseudo(n, 1), shape, &Device::Cpu).unwrap();
        let s = Var::from_vec(crate::cpu::pseudo(n, 2), shape, &Device::Cpu).unwrap();
        let w = Tensor::from_vec(crate::cpu::pseudo(n, 3), shape, &Device::Cpu).unwrap();
        let (ht, st) = (h.as_tensor(), s.as_tensor());
        let alpha = 0.37f32;
        let cases: [(Tensor, Tensor); 3] = [
            (
                incubate(ht, st).unwrap(),
                (ht + (st - st.detach()).unwrap()).unwrap(),
            ),
            (
                residual_blend(ht, st, alpha).unwrap(),
                (ht + (st * f64::from(alpha)).unwrap()).unwrap(),
            ),
            (
                convex_blend(ht, st, alpha).unwrap(),
                (ht + ((st - ht).unwrap() * f64::from(alpha)).unwrap()).unwrap(),
            ),
        ];
        let same = |a: Vec<f32>, b: Vec<f32>, what: String| {
            assert_eq!(a.len(), b.len(), "{what}");
            if let Some(k) = (0..a.len()).find(|&k| a[k].to_bits() != b[k].to_bits()) {
                panic!("{what} [{k}]: {} vs {}", a[k], b[k]);
            }
        };
        for (i, (fused, composed)) in cases.iter().enumerate() {
            same(vals(fused), vals(composed), format!("case {i}: value"));
            let gf = fused
                .mul(&w)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let gc = composed
                .mul(&w)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for (var, what) in [(&h, "host"), (&s, "seed")] {
                same(
                    vals(gf.get(var).unwrap()),
                    vals(gc.get(var).unwrap()),
                    format!("case {i}: {what} gradient"),
                );
            }
        }
        same(
            vals(&cases[0].0),
            vals(ht),
            "the incubator's value is h".into(),
        );
    }

    /// A detached seed input still trains the seed; mismatched shapes are
    /// errors.
    #[test]
    fn untracked_operands_get_no_gradient_and_shapes_must_match() {
        let h = Tensor::ones((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let s = Var::ones((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let grads = residual_blend(&h, s.as_tensor(), 0.5)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        assert_eq!(vals(grads.get(&s).unwrap()), vec![0.5; 6]);
        let wrong = Tensor::ones((3, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(convex_blend(&h, &wrong, 0.5).is_err());
    }
}
