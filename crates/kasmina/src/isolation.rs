//! The isolation monitor: proves, on sampled coordinates, that a TRAINING
//! seed leaves the host untouched — the slot output equals the host
//! activation `h`, and the gradient reaching `h` equals the gradient leaving
//! the slot output `y` (nothing flows back through the seed).
//!
//! A session samples `k` coordinates when it opens (seeded, fixed for its
//! life) and reads only those: O(k) memory whatever the activation size. The
//! measures are normalised (relative L2 error, cosine), so the verdict does not
//! depend on the gradient's scale. A violation is recorded by the isolation
//! breaker and fails G1 through the step evidence.
//!
//! candle keeps gradients of leaf variables only, so a checked step routes the
//! slot through two zero-valued probe variables ([`Probes`]): `h' = h + 0_h`
//! feeds the slot and `y' = y + 0_y` leaves it; their gradients are `∂L/∂h` and
//! `∂L/∂y`, and adding exact zeros leaves every forward value unchanged.

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};

use crate::breaker::{Breaker, BreakerConfig};
use crate::error::{Error, Result};

/// Monitor settings.
#[derive(Debug, Clone, PartialEq)]
pub struct IsolationConfig {
    /// Coordinates sampled per session.
    pub samples: usize,
    /// Largest relative L2 error allowed (forward value and gradient).
    pub max_relative_error: f64,
    /// Smallest gradient cosine allowed.
    pub min_cosine: f64,
    /// The isolation breaker.
    pub breaker: BreakerConfig,
    /// Seed of the coordinate sampler.
    pub seed: u64,
    /// Every how many of a session's steps are checked (its first step, then
    /// every `check_every_steps`-th; at least 1). The invariant is structural
    /// — the same incubator arithmetic runs on every step — so sampled checks
    /// catch a leak without paying two activation-sized probe variables and
    /// their gradients on every step.
    pub check_every_steps: u64,
}

impl Default for IsolationConfig {
    /// 64 samples, relative error ≤ 1e-5, cosine ≥ 0.99999, breaker 3/30 s/2,
    /// one step in 10 checked.
    fn default() -> Self {
        Self {
            samples: 64,
            max_relative_error: 1e-5,
            min_cosine: 0.999_99,
            breaker: BreakerConfig::default(),
            seed: 0,
            check_every_steps: 10,
        }
    }
}

/// The zero-valued probe variables of one checked step, and the tensors
/// they observed.
#[derive(Debug, Clone)]
pub(crate) struct Probes {
    at_h: Var,
    at_y: Var,
    h: Tensor,
    y: Tensor,
}

impl Probes {
    /// A zero probe shaped like `h`, and `h + 0` to feed the slot with.
    pub(crate) fn enter(h: &Tensor) -> Result<(Var, Tensor)> {
        let at_h = Var::zeros(h.shape(), h.dtype(), h.device())?;
        let probed = (h + at_h.as_tensor())?;
        Ok((at_h, probed))
    }

    /// Completes the probes with the slot output `y`; returns them and `y + 0`
    /// for the rest of the forward.
    pub(crate) fn leave(at_h: Var, h: Tensor, y: Tensor) -> Result<(Self, Tensor)> {
        let at_y = Var::zeros(y.shape(), y.dtype(), y.device())?;
        let probed = (&y + at_y.as_tensor())?;
        Ok((Self { at_h, at_y, h, y }, probed))
    }
}

/// One check's measurements.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct IsolationReport {
    /// ‖y − h‖ / ‖h‖ on the samples.
    pub forward_relative_error: f64,
    /// ‖∂h − ∂y‖ / ‖∂y‖ on the samples.
    pub gradient_relative_error: f64,
    /// cos(∂h, ∂y) on the samples (1 when both vanish).
    pub gradient_cosine: f64,
    /// Whether the invariant held.
    pub ok: bool,
    /// Whether the isolation breaker is open after this check.
    pub breaker_open: bool,
}

struct Session {
    /// (row offset hint, feature index) pairs, fixed at open.
    features: Vec<u32>,
    breaker: Breaker,
    /// Steps the session has seen (checked or not).
    steps: u64,
}

/// Isolation sessions by slot.
pub(crate) struct IsolationMonitor {
    config: IsolationConfig,
    sessions: BTreeMap<String, Session>,
    rng: ChaCha8Rng,
}

impl std::fmt::Debug for IsolationMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IsolationMonitor")
            .field("sessions", &self.sessions.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl IsolationMonitor {
    /// A monitor with `config`.
    pub(crate) fn new(config: IsolationConfig) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(config.seed);
        Self {
            config,
            sessions: BTreeMap::new(),
            rng,
        }
    }

    /// Opens a session for `slot_id`, whose activation has `features` values
    /// per sample; the sampled coordinates are fixed from now on.
    pub(crate) fn open(&mut self, slot_id: &str, features: usize) {
        let features = features.max(1);
        let picks = (0..self.config.samples.max(1))
            .map(|_| (self.rng.next_u64() % features as u64) as u32)
            .collect();
        self.sessions.insert(
            slot_id.to_string(),
            Session {
                features: picks,
                breaker: Breaker::new(self.config.breaker),
                steps: 0,
            },
        );
    }

    /// Closes the session of `slot_id`.
    pub(crate) fn close(&mut self, slot_id: &str) {
        self.sessions.remove(slot_id);
    }

    /// Counts a step of `slot_id`'s session; whether it is to be checked
    /// (the session's first step, then every `check_every_steps`-th). False
    /// without a session.
    pub(crate) fn due(&mut self, slot_id: &str) -> bool {
        let every = self.config.check_every_steps.max(1);
        match self.sessions.get_mut(slot_id) {
            Some(session) => {
                session.steps += 1;
                (session.steps - 1).is_multiple_of(every)
            }
            None => false,
        }
    }

    /// Whether `slot_id` has a session.
    pub(crate) fn is_open(&self, slot_id: &str) -> bool {
        self.sessions.contains_key(slot_id)
    }

    /// Checks the invariant for one step from the probes the slot ran through
    /// and the step's gradients.
    pub(crate) fn check(
        &mut self,
        slot_id: &str,
        probes: &Probes,
        grads: &GradStore,
        now: Instant,
    ) -> Result<IsolationReport> {
        let config = self.config.clone();
        let session = self
            .sessions
            .get_mut(slot_id)
            .ok_or_else(|| Error::UnknownSlot {
                slot: format!("{slot_id} (no isolation session)"),
            })?;
        let missing = |what: &str| Error::Seed {
            seed: slot_id.to_string(),
            reason: format!("isolation check: no gradient reached {what}"),
        };
        let (h, y) = (&probes.h, &probes.y);
        let gh = grads
            .get(probes.at_h.as_tensor())
            .ok_or_else(|| missing("the host-activation probe"))?;
        let gy = grads
            .get(probes.at_y.as_tensor())
            .ok_or_else(|| missing("the slot-output probe"))?;
        let n = h.dim(0)?;
        let per_sample = h.elem_count() / n.max(1);
        // Spread the fixed feature picks over the batch rows: O(k) reads.
        let flat: Vec<u32> = session
            .features
            .iter()
            .enumerate()
            .map(|(i, &f)| ((i % n.max(1)) * per_sample + f as usize % per_sample.max(1)) as u32)
            .collect();
        // Built where the activations are: no device crossing.
        let index = Tensor::new(flat.as_slice(), h.device())?;
        let pick = |t: &Tensor| -> Result<Vec<f64>> {
            Ok(t.flatten_all()?
                .index_select(&index, 0)?
                .to_dtype(candle_core::DType::F64)?
                .to_vec1::<f64>()?)
        };
        let (hv, yv, ghv, gyv) = (pick(h)?, pick(y)?, pick(gh)?, pick(gy)?);
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let diff = |a: &[f64], b: &[f64]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        let relative = |d: f64, scale: f64| if scale > 0.0 { d / scale } else { d };
        let forward = relative(diff(&yv, &hv), norm(&hv));
        let gradient = relative(diff(&ghv, &gyv), norm(&gyv));
        let cosine = match (norm(&ghv), norm(&gyv)) {
            (a, b) if a == 0.0 && b == 0.0 => 1.0,
            (a, b) if a == 0.0 || b == 0.0 => 0.0,
            (a, b) => ghv.iter().zip(&gyv).map(|(x, y)| x * y).sum::<f64>() / (a * b),
        };
        let ok = forward <= config.max_relative_error
            && gradient <= config.max_relative_error
            && cosine >= config.min_cosine;
        session.breaker.record(ok, now);
        Ok(IsolationReport {
            forward_relative_error: forward,
            gradient_relative_error: gradient,
            gradient_cosine: cosine,
            ok,
            breaker_open: session.breaker.is_open(now),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::blend::incubate;
    use candle_core::Device;

    /// h = x·W (host), s = tanh(input)·v (seed), y = incubate(h, s), loss = Σ y².
    fn step(detach_seed_input: bool) -> (Probes, GradStore) {
        let x = Tensor::new(&[[0.3f32, -1.0, 2.0], [1.5, 0.2, -0.7]], &Device::Cpu).unwrap();
        let w = Var::new(
            &[
                [0.5f32, -0.2, 0.1, 0.9],
                [0.3, 0.8, -0.5, 0.2],
                [-0.6, 0.4, 0.7, 0.1],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let v = Var::new(&[1.3f32, -0.7, 0.4, 2.0], &Device::Cpu).unwrap();
        let h = x.matmul(w.as_tensor()).unwrap();
        let (at_h, h) = Probes::enter(&h).unwrap();
        let input = if detach_seed_input {
            h.detach()
        } else {
            h.clone()
        };
        let s = input.tanh().unwrap().broadcast_mul(v.as_tensor()).unwrap();
        let y = incubate(&h, &s).unwrap();
        let (probes, y) = Probes::leave(at_h, h, y).unwrap();
        let grads = (&y * &y).unwrap().sum_all().unwrap().backward().unwrap();
        (probes, grads)
    }

    #[test]
    fn a_session_checks_its_first_step_then_every_nth() {
        let mut monitor = IsolationMonitor::new(IsolationConfig {
            check_every_steps: 3,
            ..IsolationConfig::default()
        });
        assert!(!monitor.due("r0"), "no session, no check");
        monitor.open("r0", 4);
        let due: Vec<bool> = (0..7).map(|_| monitor.due("r0")).collect();
        assert_eq!(due, [true, false, false, true, false, false, true]);
        monitor.close("r0");
        monitor.open("r0", 4);
        assert!(monitor.due("r0"), "a new session checks its first step");
    }

    #[test]
    fn a_proper_incubator_passes_and_a_leaking_one_is_caught() {
        let mut monitor = IsolationMonitor::new(IsolationConfig {
            samples: 8,
            ..IsolationConfig::default()
        });
        monitor.open("r0", 4);
        let t0 = Instant::now();
        let (probes, grads) = step(true);
        let report = monitor.check("r0", &probes, &grads, t0).unwrap();
        assert!(report.ok, "{report:?}");
        assert_eq!(report.forward_relative_error, 0.0);
        assert_eq!(report.gradient_relative_error, 0.0);

        // The seed sees the host activation itself: its gradient leaks into h.
        let (probes, grads) = step(false);
        let report = monitor.check("r0", &probes, &grads, t0).unwrap();
        assert!(
            !report.ok && report.gradient_relative_error > 1e-3,
            "{report:?}"
        );
        assert!(!report.breaker_open);
        monitor.check("r0", &probes, &grads, t0).unwrap();
        let third = monitor.check("r0", &probes, &grads, t0).unwrap();
        assert!(third.breaker_open, "three violations open the breaker");
        assert!(monitor.check("x", &probes, &grads, t0).is_err());
    }
}
