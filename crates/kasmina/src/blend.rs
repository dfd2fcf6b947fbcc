//! How a seed's output `s` joins the host activation `h` at its slot.
//!
//! * TRAINING (the incubator): `y = h + (s − s.detach())` — the forward value
//!   is exactly `h` (bit for bit: `s − s.detach()` is an exact zero), the seed
//!   still receives the task gradient, and no gradient reaches the host through
//!   the seed because the seed's input is `h.detach()`.
//! * BLENDING onward: `y = blend(h, s, α)` with the host path not detached:
//!   CONVEX `α·s + (1−α)·h`; RESIDUAL `h + α·s`; CHANNEL convex with
//!   `α_c = α·a_c` per channel; CONFIDENCE convex with a per-sample
//!   `α_i = α·(lo + (hi − lo)·σ(k·(margin_i − τ)))` from the batch's top-1 −
//!   top-2 logit margin.
//!
//! The mode and its parameters are parsed once, at command intake, into
//! [`Blend`]; α is clamped to `[0, 1]` into a fresh value — caller tensors are
//! never mutated.

use candle_core::Tensor;
use leyline::v1::{BlendConfig, BlendMode};

use crate::error::{Error, Result};

/// The confidence gate of CONFIDENCE blending.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConfidenceGate {
    /// Steepness of the sigmoid (> 0).
    pub k: f32,
    /// Margin at which the gate is half open.
    pub tau: f32,
    /// Gate value for a very uncertain sample, in `[0, 1]`.
    pub alpha_lo: f32,
    /// Gate value for a very confident sample, in `[alpha_lo, 1]`.
    pub alpha_hi: f32,
}

/// A blend mode with its parameters, validated for one slot.
#[derive(Debug, Clone, PartialEq)]
pub enum Blend {
    /// `α·s + (1−α)·h`.
    Convex,
    /// `h + α·s`.
    Residual,
    /// Convex with `α_c = α·a_c`; one `a_c` per channel of the slot.
    Channel(Vec<f32>),
    /// Convex with a per-sample gate from the logit margin.
    Confidence(ConfidenceGate),
}

impl Blend {
    /// The wire form ([`Blend::from_wire`] parses it back).
    pub fn to_wire(&self) -> BlendConfig {
        match self {
            Blend::Convex | Blend::Residual => BlendConfig {
                mode: self.mode() as i32,
                ..BlendConfig::default()
            },
            Blend::Channel(alpha) => BlendConfig {
                mode: BlendMode::Channel as i32,
                channel_alpha: alpha.clone(),
                confidence: None,
            },
            Blend::Confidence(g) => BlendConfig {
                mode: BlendMode::Confidence as i32,
                channel_alpha: Vec::new(),
                confidence: Some(leyline::v1::ConfidenceGate {
                    k: g.k,
                    tau: g.tau,
                    alpha_lo: g.alpha_lo,
                    alpha_hi: g.alpha_hi,
                }),
            },
        }
    }

    /// The wire mode.
    pub fn mode(&self) -> BlendMode {
        match self {
            Blend::Convex => BlendMode::Convex,
            Blend::Residual => BlendMode::Residual,
            Blend::Channel(_) => BlendMode::Channel,
            Blend::Confidence(_) => BlendMode::Confidence,
        }
    }

    /// Parses the wire form for a slot with `channels` channels (features for a
    /// dense slot). Every problem is an error; nothing is defaulted.
    pub fn from_wire(config: &BlendConfig, channels: usize) -> Result<Self> {
        let bad = |m: String| Error::Blend(m);
        let mode = BlendMode::try_from(config.mode)
            .map_err(|_| bad(format!("unknown blend mode {}", config.mode)))?;
        let check_unused = |mode: &str| {
            if !config.channel_alpha.is_empty() {
                return Err(bad(format!("{mode} blending takes no alpha vector")));
            }
            if config.confidence.is_some() {
                return Err(bad(format!("{mode} blending takes no confidence gate")));
            }
            Ok(())
        };
        match mode {
            BlendMode::Unspecified => Err(bad("blend mode is unspecified".into())),
            BlendMode::Convex => check_unused("CONVEX").map(|()| Self::Convex),
            BlendMode::Residual => check_unused("RESIDUAL").map(|()| Self::Residual),
            BlendMode::Channel => {
                if config.confidence.is_some() {
                    return Err(bad("CHANNEL blending takes no confidence gate".into()));
                }
                if config.channel_alpha.len() != channels {
                    return Err(bad(format!(
                        "CHANNEL blending needs one alpha per channel: {} given, the slot has {channels}",
                        config.channel_alpha.len()
                    )));
                }
                if let Some(a) = config
                    .channel_alpha
                    .iter()
                    .find(|a| !(0.0..=1.0).contains(*a))
                {
                    return Err(bad(format!("channel alpha {a} is outside [0, 1]")));
                }
                Ok(Self::Channel(config.channel_alpha.clone()))
            }
            BlendMode::Confidence => {
                if !config.channel_alpha.is_empty() {
                    return Err(bad("CONFIDENCE blending takes no alpha vector".into()));
                }
                let g = config.confidence.ok_or_else(|| {
                    bad("CONFIDENCE blending needs k, tau and alpha bounds".into())
                })?;
                let unit = |v: f32| (0.0..=1.0).contains(&v);
                let valid = g.k.is_finite()
                    && g.k > 0.0
                    && g.tau.is_finite()
                    && unit(g.alpha_lo)
                    && unit(g.alpha_hi)
                    && g.alpha_lo <= g.alpha_hi;
                if !valid {
                    return Err(bad(format!(
                        "confidence gate k={} tau={} [{}, {}] is invalid",
                        g.k, g.tau, g.alpha_lo, g.alpha_hi
                    )));
                }
                Ok(Self::Confidence(ConfidenceGate {
                    k: g.k,
                    tau: g.tau,
                    alpha_lo: g.alpha_lo,
                    alpha_hi: g.alpha_hi,
                }))
            }
        }
    }

    /// Whether this mode needs the batch's logit margins.
    pub fn needs_margins(&self) -> bool {
        matches!(self, Self::Confidence(_))
    }

    /// `y = blend(h, s, α)`. `margins` (`[N]`, top-1 − top-2 logit per sample)
    /// is required by CONFIDENCE and ignored otherwise.
    pub fn apply(
        &self,
        h: &Tensor,
        s: &Tensor,
        alpha: f64,
        margins: Option<&Tensor>,
    ) -> Result<Tensor> {
        let alpha = clamp_unit(alpha);
        Ok(match self {
            // One fused pass each way (esper-ops): these run on every step.
            Self::Convex => esper_ops::convex_blend(h, s, alpha as f32)?,
            Self::Residual => esper_ops::residual_blend(h, s, alpha as f32)?,
            Self::Channel(a) => {
                let shape = channel_shape(h.rank(), a.len());
                let weights: Vec<f32> = a.iter().map(|v| v * alpha as f32).collect();
                let per_channel = Tensor::from_vec(weights, shape, h.device())?;
                convex(h, s, &per_channel)?
            }
            Self::Confidence(g) => {
                let margins = margins.ok_or_else(|| {
                    Error::Blend(
                        "CONFIDENCE blending needs the batch's per-sample logit margins".into(),
                    )
                })?;
                let gate =
                    candle_nn::ops::sigmoid(&((margins - f64::from(g.tau))? * f64::from(g.k))?)?;
                let span = f64::from(g.alpha_hi - g.alpha_lo);
                let per_sample = ((gate * span)? + f64::from(g.alpha_lo))? * alpha;
                let n = margins.dim(0)?;
                let mut shape = vec![1usize; h.rank()];
                shape[0] = n;
                convex(h, s, &per_sample?.reshape(shape)?)?
            }
        })
    }
}

/// The incubator: forward value exactly `h`, seed gradient intact.
pub(crate) fn incubate(h: &Tensor, s: &Tensor) -> Result<Tensor> {
    Ok(esper_ops::incubate(h, s)?)
}

fn clamp_unit(alpha: f64) -> f64 {
    if alpha.is_nan() {
        0.0
    } else {
        alpha.clamp(0.0, 1.0)
    }
}

/// `w·s + (1−w)·h` with `w` broadcast against `h`.
fn convex(h: &Tensor, s: &Tensor, w: &Tensor) -> Result<Tensor> {
    let w = w.to_dtype(h.dtype())?;
    Ok((h + w.broadcast_mul(&(s - h)?)?)?)
}

fn channel_shape(rank: usize, channels: usize) -> Vec<usize> {
    let mut shape = vec![1usize; rank];
    if rank >= 2 {
        shape[1] = channels;
    }
    shape
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use candle_core::{DType, Device, Var};
    use leyline::v1::ConfidenceGate as WireGate;

    fn t(values: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_vec(values.to_vec(), shape, &Device::Cpu).unwrap()
    }

    fn vec(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }

    #[test]
    fn the_incubator_forwards_exactly_h_and_trains_only_the_seed() {
        // Host: y = w·x; seed: s = v·h.detach(); loss = sum(incubate(h, s)²).
        let x = t(&[0.3, -1.2, 2.5, 0.7], &[2, 2]);
        let run = |with_seed: bool| {
            let w = Var::from_tensor(&t(&[0.5, -0.25, 1.5, 2.0], &[2, 2])).unwrap();
            let v = Var::from_tensor(&t(&[1.1, 0.9], &[1, 2])).unwrap();
            let h = x.matmul(w.as_tensor()).unwrap();
            let y = if with_seed {
                let s = h.detach().broadcast_mul(v.as_tensor()).unwrap();
                incubate(&h, &s).unwrap()
            } else {
                h.clone()
            };
            let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
            (
                vec(&y),
                vec(grads.get(w.as_tensor()).unwrap()),
                grads.get(v.as_tensor()).map(vec),
            )
        };
        let (y_plain, gw_plain, _) = run(false);
        let (y_seed, gw_seed, gv) = run(true);
        assert_eq!(y_seed, y_plain, "forward must be exactly h");
        assert_eq!(gw_seed, gw_plain, "host gradient must be bit-identical");
        let gv = gv.expect("the seed receives the task gradient");
        assert!(gv.iter().any(|g| *g != 0.0));
    }

    #[test]
    fn each_mode_computes_its_formula_without_touching_its_inputs() {
        let h = t(&[1.0, 2.0, 3.0, 4.0], &[2, 2]);
        let s = t(&[5.0, 6.0, 7.0, 8.0], &[2, 2]);
        let before = (vec(&h), vec(&s));
        let convex = Blend::Convex.apply(&h, &s, 0.25, None).unwrap();
        assert_eq!(vec(&convex), vec![2.0, 3.0, 4.0, 5.0]);
        let residual = Blend::Residual.apply(&h, &s, 0.5, None).unwrap();
        assert_eq!(vec(&residual), vec![3.5, 5.0, 6.5, 8.0]);
        let channel = Blend::Channel(vec![1.0, 0.0])
            .apply(&h, &s, 0.5, None)
            .unwrap();
        assert_eq!(vec(&channel), vec![3.0, 2.0, 5.0, 4.0]);
        // α outside [0, 1] is clamped into a new value.
        let clamped = Blend::Convex.apply(&h, &s, 7.0, None).unwrap();
        assert_eq!(vec(&clamped), vec(&s));
        let nan = Blend::Convex.apply(&h, &s, f64::NAN, None).unwrap();
        assert_eq!(vec(&nan), vec(&h));
        assert_eq!((vec(&h), vec(&s)), before);

        let gate = Blend::Confidence(ConfidenceGate {
            k: 1000.0,
            tau: 1.0,
            alpha_lo: 0.0,
            alpha_hi: 1.0,
        });
        // Sample 0 confident (margin 3 > τ): α_i ≈ α; sample 1 unsure: α_i ≈ 0.
        let margins = t(&[3.0, 0.1], &[2]);
        let y = gate.apply(&h, &s, 1.0, Some(&margins)).unwrap();
        let y = vec(&y);
        assert!(
            (y[0] - 5.0).abs() < 1e-4 && (y[1] - 6.0).abs() < 1e-4,
            "{y:?}"
        );
        assert!(
            (y[2] - 3.0).abs() < 1e-4 && (y[3] - 4.0).abs() < 1e-4,
            "{y:?}"
        );
        assert!(gate.apply(&h, &s, 1.0, None).is_err());
    }

    #[test]
    fn conv_channel_alpha_broadcasts_over_space() {
        let h = Tensor::zeros((1, 2, 2, 2), DType::F32, &Device::Cpu).unwrap();
        let s = Tensor::ones((1, 2, 2, 2), DType::F32, &Device::Cpu).unwrap();
        let y = Blend::Channel(vec![0.5, 1.0])
            .apply(&h, &s, 1.0, None)
            .unwrap();
        assert_eq!(vec(&y), vec![0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0]);
    }

    proptest::proptest! {
        /// On random tensors every mode matches its formula, element by element.
        #[test]
        fn every_mode_matches_its_formula(
            h in proptest::collection::vec(-10.0f32..10.0, 12),
            s in proptest::collection::vec(-10.0f32..10.0, 12),
            a in proptest::collection::vec(0.0f32..=1.0, 3),
            margins in proptest::collection::vec(-5.0f32..5.0, 2),
            alpha in -0.5f64..1.5,
            k in 0.1f32..10.0,
            tau in -2.0f32..2.0,
        ) {
            // [N=2, C=3, 2] so channel and per-sample weights both broadcast.
            let ht = t(&h, &[2, 3, 2]);
            let st = t(&s, &[2, 3, 2]);
            let m = t(&margins, &[2]);
            let al = alpha.clamp(0.0, 1.0) as f32;
            let gate = ConfidenceGate { k, tau, alpha_lo: 0.2, alpha_hi: 0.9 };
            type Formula<'a> = Box<dyn Fn(usize) -> f32 + 'a>;
            let cases: Vec<(Blend, Formula<'_>)> = vec![
                (Blend::Convex, Box::new(|i| al * s[i] + (1.0 - al) * h[i])),
                (Blend::Residual, Box::new(|i| h[i] + al * s[i])),
                (Blend::Channel(a.clone()), Box::new(|i| {
                    let w = al * a[(i / 2) % 3];
                    w * s[i] + (1.0 - w) * h[i]
                })),
                (Blend::Confidence(gate), Box::new(|i| {
                    let g = 1.0 / (1.0 + (-(k * (margins[i / 6] - tau))).exp());
                    let w = al * (0.2 + 0.7 * g);
                    w * s[i] + (1.0 - w) * h[i]
                })),
            ];
            for (mode, formula) in cases {
                let y = vec(&mode.apply(&ht, &st, alpha, Some(&m)).unwrap());
                for (i, got) in y.iter().enumerate() {
                    let want = formula(i);
                    proptest::prop_assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "{mode:?} [{i}]: {got} vs {want}");
                }
            }
            proptest::prop_assert!(Blend::Confidence(gate).apply(&ht, &st, alpha, None).is_err());
        }
    }

    #[test]
    fn wire_configs_parse_once_and_every_problem_is_an_error() {
        let wire = |mode: BlendMode, alpha: Vec<f32>, gate: Option<WireGate>| BlendConfig {
            mode: mode as i32,
            channel_alpha: alpha,
            confidence: gate,
        };
        let good_gate = WireGate {
            k: 2.0,
            tau: 0.5,
            alpha_lo: 0.1,
            alpha_hi: 0.9,
        };
        assert_eq!(
            Blend::from_wire(&wire(BlendMode::Convex, vec![], None), 4).unwrap(),
            Blend::Convex
        );
        assert!(matches!(
            Blend::from_wire(&wire(BlendMode::Confidence, vec![], Some(good_gate)), 4).unwrap(),
            Blend::Confidence(_)
        ));
        assert_eq!(
            Blend::from_wire(&wire(BlendMode::Channel, vec![0.5; 4], None), 4).unwrap(),
            Blend::Channel(vec![0.5; 4])
        );
        for bad in [
            wire(BlendMode::Unspecified, vec![], None),
            wire(BlendMode::Convex, vec![0.5], None),
            wire(BlendMode::Residual, vec![], Some(good_gate)),
            wire(BlendMode::Channel, vec![0.5; 3], None),
            wire(BlendMode::Channel, vec![1.5; 4], None),
            wire(BlendMode::Confidence, vec![], None),
            wire(
                BlendMode::Confidence,
                vec![],
                Some(WireGate {
                    k: 0.0,
                    ..good_gate
                }),
            ),
            wire(
                BlendMode::Confidence,
                vec![],
                Some(WireGate {
                    alpha_lo: 0.95,
                    ..good_gate
                }),
            ),
            BlendConfig {
                mode: 99,
                ..BlendConfig::default()
            },
        ] {
            assert!(Blend::from_wire(&bad, 4).is_err(), "{bad:?} accepted");
        }
    }
}
