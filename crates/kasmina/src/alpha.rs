//! The α ramp of a blending seed: linear, cosine or sigmoid from 0 to 1 over
//! a number of optimizer steps, advanced by the training loop after each step.

use leyline::v1::{AlphaSchedule, AlphaScheduleKind};

use crate::error::{Error, Result};

/// The ramp's shape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RampShape {
    /// `t`.
    Linear,
    /// `(1 − cos πt) / 2`.
    Cosine,
    /// A logistic curve of steepness `temperature`, rescaled to run exactly
    /// from 0 at `t = 0` to 1 at `t = 1`.
    Sigmoid {
        /// Steepness (> 0).
        temperature: f64,
    },
}

/// A validated α ramp over `steps` optimizer steps.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlphaRamp {
    shape: RampShape,
    steps: u32,
}

impl AlphaRamp {
    /// A ramp of `shape` over `steps` (≥ 1) steps.
    pub fn new(shape: RampShape, steps: u32) -> Result<Self> {
        if steps == 0 {
            return Err(Error::Blend("an alpha ramp needs at least 1 step".into()));
        }
        if let RampShape::Sigmoid { temperature } = shape
            && !(temperature.is_finite() && temperature > 0.0)
        {
            return Err(Error::Blend(format!(
                "sigmoid ramp temperature {temperature} must be finite and > 0"
            )));
        }
        Ok(Self { shape, steps })
    }

    /// Parses the wire form (nothing defaulted).
    pub fn from_wire(schedule: &AlphaSchedule) -> Result<Self> {
        let kind = AlphaScheduleKind::try_from(schedule.kind)
            .map_err(|_| Error::Blend(format!("unknown alpha schedule {}", schedule.kind)))?;
        let shape = match kind {
            AlphaScheduleKind::Unspecified => {
                return Err(Error::Blend("alpha schedule kind is unspecified".into()));
            }
            AlphaScheduleKind::Linear => RampShape::Linear,
            AlphaScheduleKind::Cosine => RampShape::Cosine,
            AlphaScheduleKind::Sigmoid => RampShape::Sigmoid {
                temperature: f64::from(schedule.temperature),
            },
        };
        Self::new(shape, schedule.steps)
    }

    /// Steps from 0 to 1.
    pub fn steps(&self) -> u32 {
        self.steps
    }

    /// The wire form ([`AlphaRamp::from_wire`] parses it back).
    pub fn to_wire(&self) -> AlphaSchedule {
        AlphaSchedule {
            kind: self.kind() as i32,
            steps: self.steps,
            temperature: match self.shape {
                RampShape::Sigmoid { temperature } => temperature as f32,
                RampShape::Linear | RampShape::Cosine => 0.0,
            },
        }
    }

    /// The wire kind of the ramp's shape.
    pub fn kind(&self) -> AlphaScheduleKind {
        match self.shape {
            RampShape::Linear => AlphaScheduleKind::Linear,
            RampShape::Cosine => AlphaScheduleKind::Cosine,
            RampShape::Sigmoid { .. } => AlphaScheduleKind::Sigmoid,
        }
    }

    /// α after `step` steps of blending: 0 at step 0, 1 from step `steps` on,
    /// non-decreasing in between.
    pub fn alpha(&self, step: u64) -> f64 {
        let t = (step as f64 / f64::from(self.steps)).min(1.0);
        match self.shape {
            RampShape::Linear => t,
            RampShape::Cosine => (1.0 - (std::f64::consts::PI * t).cos()) / 2.0,
            RampShape::Sigmoid { temperature } => {
                let sigma = |x: f64| 1.0 / (1.0 + (-x).exp());
                let lo = sigma(-temperature / 2.0);
                let hi = sigma(temperature / 2.0);
                ((sigma(temperature * (t - 0.5)) - lo) / (hi - lo)).clamp(0.0, 1.0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ramps_start_at_zero_end_at_one_and_parse_strictly() {
        for shape in [
            RampShape::Linear,
            RampShape::Cosine,
            RampShape::Sigmoid { temperature: 8.0 },
        ] {
            let ramp = AlphaRamp::new(shape, 10).unwrap();
            assert_eq!(ramp.alpha(0), 0.0, "{shape:?}");
            assert!((ramp.alpha(10) - 1.0).abs() < 1e-12, "{shape:?}");
            assert_eq!(ramp.alpha(1000), ramp.alpha(10));
        }
        assert_eq!(AlphaRamp::new(RampShape::Linear, 4).unwrap().alpha(1), 0.25);
        assert!(AlphaRamp::new(RampShape::Linear, 0).is_err());
        assert!(AlphaRamp::new(RampShape::Sigmoid { temperature: 0.0 }, 5).is_err());
        let wire = |kind: AlphaScheduleKind, steps, temperature| AlphaSchedule {
            kind: kind as i32,
            steps,
            temperature,
        };
        assert!(AlphaRamp::from_wire(&wire(AlphaScheduleKind::Cosine, 5, 0.0)).is_ok());
        assert!(AlphaRamp::from_wire(&wire(AlphaScheduleKind::Unspecified, 5, 0.0)).is_err());
        assert!(AlphaRamp::from_wire(&wire(AlphaScheduleKind::Sigmoid, 5, -1.0)).is_err());
    }

    proptest! {
        #[test]
        fn every_ramp_is_monotone_and_bounded(
            kind in 0usize..3,
            steps in 1u32..500,
            temperature in 0.01f64..50.0,
            a in 0u64..1000,
            b in 0u64..1000,
        ) {
            let shape = [RampShape::Linear, RampShape::Cosine, RampShape::Sigmoid { temperature }][kind];
            let ramp = AlphaRamp::new(shape, steps).unwrap();
            let (lo, hi) = (a.min(b), a.max(b));
            prop_assert!(ramp.alpha(lo) <= ramp.alpha(hi) + 1e-12);
            prop_assert!((0.0..=1.0).contains(&ramp.alpha(lo)));
        }
    }
}
