//! The evidence a seed accumulates, and the gates that judge it.
//!
//! Every gate returns a [`GateEvaluation`] with its numeric inputs, or
//! [`Verdict::Wait`] when the evidence is not there yet (a short window, no
//! counterfactual measurement): waiting is not failing.

use std::collections::{BTreeMap, VecDeque};

use leyline::v1::{GateEvaluation, SeedGate, SeedStage};

/// Thresholds of the gates and the stages' minimum dwell.
#[derive(Debug, Clone, PartialEq)]
pub struct GateConfig {
    /// Steps of evidence each window holds (G1, G2).
    pub window: usize,
    /// Mean seed gradient norm below this is "vanishing" (G1).
    pub min_grad_norm: f64,
    /// Largest coefficient of variation of the loss over the window (G2).
    pub max_loss_cv: f64,
    /// Largest accuracy drop (points) with the seed vs α = 0 (G4 into PROBATIONARY).
    pub regression_tolerance: f64,
    /// Contribution (points) the seed must exceed to fossilize (G4).
    pub min_contribution: f64,
    /// Minimum optimizer steps in TRAINING, BLENDING, SHADOWING, PROBATIONARY.
    pub min_steps: [u64; 4],
    /// Minimum epochs in the same four stages.
    pub min_epochs: [u64; 4],
    /// Epochs a slot stays EMBARGOED after a cull.
    pub embargo_epochs: u64,
    /// Largest slowdown of the step (forward + backward) over the window,
    /// relative to the host's before the seed germinated (G2). A wall-clock
    /// rule, so opt-in: 0 (the default) turns it off, since under machine
    /// load it culls a seed that an idle machine keeps.
    pub max_slowdown: f64,
    /// Largest forward MACs per image a seed may cost, as a multiple of the
    /// host's: a counted budget, checked when the GERMINATE command is
    /// applied (0 turns it off; unjudged when the host does not count MACs).
    pub max_seed_mac_ratio: f64,
}

impl Default for GateConfig {
    /// What `esper train` runs unless `[kasmina]` says otherwise — the one
    /// source of these defaults ([`crate::Config::default`] is built from
    /// it): window 10 steps; vanishing below 1e-7; loss CV ≤ 0.5;
    /// regression ≤ 0.5 points; contribution > 0; dwell 20/40/10/10 steps
    /// and 0/0/0/1 epochs (a seed is judged on at least one counterfactual
    /// validation pass); the shared embargo (`leyline.limits.embargo_epochs`);
    /// a seed's forward MACs ≤ 20× the host's (counted); the wall-clock
    /// step-slowdown rule off.
    fn default() -> Self {
        Self {
            window: 10,
            min_grad_norm: 1e-7,
            max_loss_cv: 0.5,
            regression_tolerance: 0.5,
            min_contribution: 0.0,
            min_steps: [20, 40, 10, 10],
            min_epochs: [0, 0, 0, 1],
            embargo_epochs: u64::from(leyline::Config::default().limits.embargo_epochs),
            max_slowdown: 0.0,
            max_seed_mac_ratio: 20.0,
        }
    }
}

/// What one training step tells about a seed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepEvidence {
    /// L2 norm of the seed's gradient this step.
    pub seed_grad_norm: f64,
    /// The task loss this step.
    pub loss: f64,
    /// α the seed ran with.
    pub alpha: f64,
    /// Whether the isolation monitor checked the incubator invariant this
    /// step (it samples steps; see `kasmina.isolation_check_every_steps`).
    pub isolation_checked: bool,
    /// Whether the invariant held (true on a step that was not checked).
    pub isolation_ok: bool,
    /// Forward + backward time of the step, milliseconds.
    pub step_ms: f64,
}

/// One counterfactual measurement: validation accuracy (percent) with the
/// seed and with its α forced to 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Counterfactual {
    /// Accuracy with the seed.
    pub with_seed: f64,
    /// Accuracy with α = 0.
    pub without_seed: f64,
}

impl Counterfactual {
    /// Points the seed adds.
    pub fn contribution(&self) -> f64 {
        self.with_seed - self.without_seed
    }
}

/// Evidence gathered since the seed entered its current stage.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    steps: VecDeque<StepEvidence>,
    window: usize,
    /// Steps and epochs spent in the stage.
    pub steps_in_stage: u64,
    /// Epoch boundaries crossed in the stage.
    pub epochs_in_stage: u64,
    /// The latest counterfactual measurement in this stage.
    pub counterfactual: Option<Counterfactual>,
    /// Isolation violations seen in the stage.
    pub isolation_violations: u64,
    /// Isolation checks made in the stage.
    pub isolation_checks: u64,
}

impl Evidence {
    pub(crate) fn new(window: usize) -> Self {
        Self {
            window: window.max(1),
            ..Self::default()
        }
    }

    pub(crate) fn record(&mut self, e: StepEvidence) {
        if self.steps.len() == self.window {
            self.steps.pop_front();
        }
        self.steps.push_back(e);
        self.steps_in_stage += 1;
        if e.isolation_checked {
            self.isolation_checks += 1;
        }
        if !e.isolation_ok {
            self.isolation_violations += 1;
        }
    }

    /// The most recent step's evidence.
    pub fn latest(&self) -> Option<&StepEvidence> {
        self.steps.back()
    }

    fn full(&self) -> bool {
        self.steps.len() >= self.window
    }
}

/// A gate's answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Verdict {
    /// Not enough evidence yet; the reason says what is missing.
    Wait(String),
    /// The gate decided (passed or failed) on this evaluation.
    Decided(GateEvaluation),
}

fn decided(
    gate: SeedGate,
    from: SeedStage,
    to: SeedStage,
    failure: Option<String>,
    inputs: BTreeMap<String, f64>,
) -> Verdict {
    Verdict::Decided(GateEvaluation {
        gate: gate as i32,
        passed: failure.is_none(),
        reason: failure.unwrap_or_default(),
        from_stage: from as i32,
        to_stage: to as i32,
        inputs,
        ..GateEvaluation::default()
    })
}

/// G1: seed gradients finite and non-vanishing over a full window, no
/// isolation violation.
pub(crate) fn g1(config: &GateConfig, e: &Evidence, from: SeedStage, to: SeedStage) -> Verdict {
    if !e.full() {
        return Verdict::Wait(format!(
            "{}/{} steps of gradient evidence",
            e.steps.len(),
            e.window
        ));
    }
    if e.isolation_checks == 0 && e.isolation_violations == 0 {
        return Verdict::Wait("no isolation check yet".into());
    }
    let norms: Vec<f64> = e.steps.iter().map(|s| s.seed_grad_norm).collect();
    let finite = norms.iter().all(|n| n.is_finite());
    let mean = norms.iter().sum::<f64>() / norms.len() as f64;
    let inputs = BTreeMap::from([
        (
            "grad_norm_mean".to_string(),
            if mean.is_finite() { mean } else { -1.0 },
        ),
        ("grad_norm_min_allowed".to_string(), config.min_grad_norm),
        (
            "isolation_violations".to_string(),
            e.isolation_violations as f64,
        ),
        ("window".to_string(), norms.len() as f64),
    ]);
    let failure = if !finite {
        Some("non_finite_gradient".to_string())
    } else if mean < config.min_grad_norm {
        Some("vanishing_gradient".to_string())
    } else if e.isolation_violations > 0 {
        Some("isolation_violation".to_string())
    } else {
        None
    };
    decided(SeedGate::G1GradientHealth, from, to, failure, inputs)
}

/// G2: the α ramp is complete and never went down, the loss over the window is
/// finite and steady (coefficient of variation bounded).
pub(crate) fn g2(
    config: &GateConfig,
    e: &Evidence,
    ramp_complete: bool,
    baseline_ms: Option<f64>,
    from: SeedStage,
    to: SeedStage,
) -> Verdict {
    if !ramp_complete {
        return Verdict::Wait("alpha ramp not complete".into());
    }
    if !e.full() {
        return Verdict::Wait(format!(
            "{}/{} steps of loss evidence",
            e.steps.len(),
            e.window
        ));
    }
    let losses: Vec<f64> = e.steps.iter().map(|s| s.loss).collect();
    let n = losses.len() as f64;
    let mean = losses.iter().sum::<f64>() / n;
    let var = losses.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / n;
    let cv = if mean.abs() > 0.0 {
        var.sqrt() / mean.abs()
    } else {
        0.0
    };
    let monotone = e
        .steps
        .iter()
        .zip(e.steps.iter().skip(1))
        .all(|(a, b)| b.alpha + 1e-12 >= a.alpha);
    let step_ms = e.steps.iter().map(|s| s.step_ms).sum::<f64>() / n;
    // Without a baseline (no host step measured before germination) the
    // slowdown is not judged; the inputs say so with -1.
    let slowdown = baseline_ms
        .filter(|b| *b > 0.0 && step_ms.is_finite())
        .map(|b| step_ms / b);
    let mut inputs = BTreeMap::from([
        (
            "loss_mean".to_string(),
            if mean.is_finite() { mean } else { -1.0 },
        ),
        (
            "loss_cv".to_string(),
            if cv.is_finite() { cv } else { -1.0 },
        ),
        ("loss_cv_max".to_string(), config.max_loss_cv),
        (
            "step_ms_mean".to_string(),
            if step_ms.is_finite() { step_ms } else { -1.0 },
        ),
        ("slowdown".to_string(), slowdown.unwrap_or(-1.0)),
        ("slowdown_max".to_string(), config.max_slowdown),
    ]);
    if let Some(b) = baseline_ms {
        inputs.insert("baseline_step_ms".to_string(), b);
    }
    let failure = if !losses.iter().all(|l| l.is_finite()) {
        Some("non_finite_loss".to_string())
    } else if cv > config.max_loss_cv {
        Some("unstable_loss".to_string())
    } else if !monotone {
        Some("alpha_oscillation".to_string())
    } else if config.max_slowdown > 0.0 && slowdown.is_some_and(|s| s > config.max_slowdown) {
        Some("latency_over_budget".to_string())
    } else {
        None
    };
    decided(SeedGate::G2Stability, from, to, failure, inputs)
}

/// G4: a counterfactual measurement in this stage; into PROBATIONARY the seed
/// must not regress beyond the tolerance, into FOSSILIZED it must contribute
/// more than the minimum.
pub(crate) fn g4(config: &GateConfig, e: &Evidence, from: SeedStage, to: SeedStage) -> Verdict {
    let Some(cf) = e.counterfactual else {
        return Verdict::Wait("no counterfactual measurement in this stage".into());
    };
    let contribution = cf.contribution();
    let inputs = BTreeMap::from([
        ("accuracy_with_seed".to_string(), cf.with_seed),
        ("accuracy_alpha_zero".to_string(), cf.without_seed),
        ("contribution".to_string(), contribution),
        (
            "regression_tolerance".to_string(),
            config.regression_tolerance,
        ),
        ("min_contribution".to_string(), config.min_contribution),
    ]);
    let failure = if !contribution.is_finite() {
        Some("non_finite_measurement".to_string())
    } else if to == SeedStage::Fossilized && contribution <= config.min_contribution {
        Some("no_positive_contribution".to_string())
    } else if contribution < -config.regression_tolerance {
        Some("regression".to_string())
    } else {
        None
    };
    decided(SeedGate::G4SystemImpact, from, to, failure, inputs)
}

/// Index of a stage in the dwell tables (stages with a dwell only).
pub(crate) fn dwell_index(stage: SeedStage) -> Option<usize> {
    match stage {
        SeedStage::Training => Some(0),
        SeedStage::Blending => Some(1),
        SeedStage::Shadowing => Some(2),
        SeedStage::Probationary => Some(3),
        SeedStage::Unknown
        | SeedStage::Dormant
        | SeedStage::Germinated
        | SeedStage::Fossilized
        | SeedStage::Culled
        | SeedStage::Embargoed
        | SeedStage::Resetting
        | SeedStage::Terminated => None,
    }
}
