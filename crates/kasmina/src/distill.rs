//! Knowledge distillation: an optional extra loss that pulls the student (the
//! growing host) towards a frozen teacher snapshot's predictions.
//!
//! `L_kd = w · T² · KL(softmax(t/T) ‖ softmax(s/T))`, averaged over the batch,
//! where `s` and `t` are student and teacher logits, `T` the temperature and `w`
//! the weight. The `T²` factor keeps the gradient's magnitude independent of `T`
//! (the softened softmax scales gradients by `1/T²`; Hinton et al. 2015). The
//! teacher's logits are detached: no gradient reaches the teacher.

use candle_core::{D, Tensor};

use crate::error::{Error, Result};
use crate::host::NamedParameter;

/// Distillation settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DistillConfig {
    /// Softmax temperature `T` (> 0).
    pub temperature: f64,
    /// Weight `w` of the KD term (≥ 0).
    pub weight: f64,
    /// Most bytes the teacher snapshot may hold.
    pub memory_budget_bytes: u64,
}

impl DistillConfig {
    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(Error::Blend(format!(
                "distillation temperature {} must be finite and > 0",
                self.temperature
            )));
        }
        if !(self.weight.is_finite() && self.weight >= 0.0) {
            return Err(Error::Blend(format!(
                "distillation weight {} must be finite and >= 0",
                self.weight
            )));
        }
        Ok(())
    }
}

/// `w · T² · KL(softmax(t/T) ‖ softmax(s/T))`, batch mean; `[N, C]` logits.
pub fn kd_loss(student: &Tensor, teacher: &Tensor, config: &DistillConfig) -> Result<Tensor> {
    config.validate()?;
    if student.dims() != teacher.dims() || student.rank() != 2 {
        return Err(Error::Blend(format!(
            "distillation needs [N, C] logits of one shape, got {:?} and {:?}",
            student.dims(),
            teacher.dims()
        )));
    }
    let t = config.temperature;
    let n = student.dim(0)? as f64;
    let log_p_student = candle_nn::ops::log_softmax(&(student / t)?, D::Minus1)?;
    let log_p_teacher = candle_nn::ops::log_softmax(&(teacher.detach() / t)?, D::Minus1)?;
    let p_teacher = log_p_teacher.exp()?;
    let kl = (p_teacher * (log_p_teacher - log_p_student)?)?.sum_all()?;
    Ok((kl * (config.weight * t * t / n.max(1.0)))?)
}

/// Bytes a set of parameters occupies.
pub(crate) fn parameter_bytes(params: &[NamedParameter]) -> u64 {
    params
        .iter()
        .map(|p| (p.var.elem_count() * p.var.dtype().size_in_bytes()) as u64)
        .sum()
}

/// Checks that a teacher of `params` fits the budget.
pub fn check_budget(params: &[NamedParameter], config: &DistillConfig) -> Result<u64> {
    let bytes = parameter_bytes(params);
    if bytes > config.memory_budget_bytes {
        return Err(Error::Blend(format!(
            "teacher snapshot needs {bytes} bytes, over the {} byte budget",
            config.memory_budget_bytes
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use candle_core::{Device, Var};

    fn config(t: f64, w: f64) -> DistillConfig {
        DistillConfig {
            temperature: t,
            weight: w,
            memory_budget_bytes: 1 << 20,
        }
    }

    #[test]
    fn the_loss_is_zero_for_equal_logits_and_matches_the_formula() {
        let logits = Tensor::new(&[[1.0f32, 2.0, 0.5], [0.0, -1.0, 3.0]], &Device::Cpu).unwrap();
        let zero = kd_loss(&logits, &logits, &config(2.0, 1.0))
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(zero.abs() < 1e-6);
        // One sample by hand: T = 2, w = 0.5.
        let s = [1.0f64, 0.0];
        let t = [0.0f64, 1.0];
        let soft = |v: [f64; 2]| {
            let e = [(v[0] / 2.0).exp(), (v[1] / 2.0).exp()];
            [e[0] / (e[0] + e[1]), e[1] / (e[0] + e[1])]
        };
        let (ps, pt) = (soft(s), soft(t));
        let kl: f64 = (0..2).map(|i| pt[i] * (pt[i] / ps[i]).ln()).sum();
        let want = 0.5 * 4.0 * kl;
        let got = kd_loss(
            &Tensor::new(&[[1.0f32, 0.0]], &Device::Cpu).unwrap(),
            &Tensor::new(&[[0.0f32, 1.0]], &Device::Cpu).unwrap(),
            &config(2.0, 0.5),
        )
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
        assert!((f64::from(got) - want).abs() < 1e-5, "{got} vs {want}");
    }

    #[test]
    fn only_the_student_gets_a_gradient_and_bad_settings_are_refused() {
        let student = Var::new(&[[0.3f32, -0.2, 0.9]], &Device::Cpu).unwrap();
        let teacher = Var::new(&[[1.0f32, 0.0, -1.0]], &Device::Cpu).unwrap();
        let loss = kd_loss(student.as_tensor(), teacher.as_tensor(), &config(3.0, 1.0)).unwrap();
        let grads = loss.backward().unwrap();
        assert!(grads.get(student.as_tensor()).is_some());
        assert!(grads.get(teacher.as_tensor()).is_none());
        for bad in [config(0.0, 1.0), config(2.0, -1.0), config(f64::NAN, 1.0)] {
            assert!(kd_loss(student.as_tensor(), teacher.as_tensor(), &bad).is_err());
        }
        let wide = Tensor::zeros((1, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(kd_loss(student.as_tensor(), &wide, &config(2.0, 1.0)).is_err());
        let params = vec![NamedParameter {
            name: "w".into(),
            var: Var::zeros((512, 1024), candle_core::DType::F32, &Device::Cpu).unwrap(),
        }];
        assert_eq!(parameter_bytes(&params), 2 << 20);
        assert!(check_budget(&params, &config(2.0, 1.0)).is_err());
    }
}
