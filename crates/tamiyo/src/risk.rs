//! The risk engine: ordered rules, separate from the policy and from
//! telemetry, that veto or downgrade a proposal; conservative mode with
//! hysteresis.
//!
//! | # | rule | fires when | effect |
//! |---|---|---|---|
//! | 1 | `degraded_coverage` | fewer optional inputs than `min_coverage` | veto all but CULL |
//! | 2 | `loss_spike` | training loss > ratio × its moving average | hazard |
//! | 3 | `latency_spike` (wall clock) | mean step time per budgeted unit of work (host + live seeds' MACs, in host-sized units) > ratio × its moving average | hazard |
//! | 3b | `hook_latency` (wall clock) | the previous control-hook call took longer than the fence budget | hazard |
//! | 4 | `isolation_violations` | live seeds' violations > the limit | hazard |
//! | 5 | `device_pressure` | free memory fraction or utilization out of bounds | hazard |
//! | 6 | `blueprint_quarantined` | the blueprint is quarantined or unknown | veto GERMINATE |
//! | 7 | `blueprint_risk` | the blueprint's risk above the cap | veto GERMINATE |
//! | 8 | `blueprint_experimental` | an EXPERIMENTAL blueprint | downgrade: twice the α ramp |
//! | 9 | `conservative_mode` | conservative mode is on | veto GERMINATE |
//!
//! Rules 3 and 3b measure time, so they judge only with `wall_clock_rules`
//! (off by default): with them a run's decisions depend on machine load.
//! Rule 5 reads the machine's free memory: a safety rule that stays on, and
//! the one input besides Tamiyo's step deadline that the machine, not the
//! run, decides.
//!
//! A spike is judged against a moving average it does not move; a level that
//! stays high for more than `rebase_after_fences` fences becomes the new
//! average (a lasting change such as a fossilized seed's cost is not a
//! hazard forever). A hazard (2–5) vetoes GERMINATE and enters conservative mode; the mode
//! ends after `cool_down_fences` fences and then `healthy_fences` hazard-free
//! fences in a row. CULL is never vetoed (it lowers risk); FOSSILIZE is vetoed
//! only by low coverage.

use leyline::v1::{BlueprintTier, CatalogEntry};
use serde::{Deserialize, Serialize};

use crate::config::RiskConfig;
use crate::observation::Observation;
use crate::policy::Proposal;

/// What the engine concluded about one proposal.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Go ahead as proposed.
    Allow,
    /// Go ahead in a safer form (the detail says how).
    Downgrade(String),
    /// Do not act.
    Veto,
}

/// Every rule's name, as findings carry it (a remote client maps the
/// names it receives back onto these).
pub const RULES: [&str; 10] = [
    "degraded_coverage",
    "loss_spike",
    "latency_spike",
    "hook_latency",
    "isolation_violations",
    "device_pressure",
    "blueprint_quarantined",
    "blueprint_risk",
    "blueprint_experimental",
    "conservative_mode",
];

/// One rule that fired.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// The rule (stable name from the table).
    pub rule: &'static str,
    /// The numbers behind it.
    pub detail: String,
}

/// The engine's judgement of one step.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    /// The verdict on the proposal.
    pub verdict: Verdict,
    /// Every rule that fired, in table order.
    pub findings: Vec<Finding>,
    /// The (possibly downgraded) proposal.
    pub proposal: Proposal,
    /// Conservative mode after this step.
    pub conservative: bool,
}

/// The risk engine's moving state as a checkpoint holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiskState {
    /// Moving average of the training loss.
    pub loss_ewma: Option<f64>,
    /// Moving average of the step time per budgeted unit of work.
    pub step_ms_ewma: Option<f64>,
    /// Fences in a row with the loss above its spike ratio.
    pub loss_above: u32,
    /// Fences in a row with the step time above its spike ratio.
    pub step_ms_above: u32,
    /// Fences since conservative mode was entered; `None` when off.
    pub conservative_for: Option<u32>,
    /// Hazard-free fences in a row.
    pub healthy_in_a_row: u32,
}

/// The engine and its moving state.
#[derive(Debug, Clone)]
pub struct RiskEngine {
    config: RiskConfig,
    loss_ewma: Option<f64>,
    step_ms_ewma: Option<f64>,
    /// Fences in a row with the training loss above its spike ratio.
    loss_above: u32,
    /// Fences in a row with the step time above its spike ratio.
    step_ms_above: u32,
    /// Fences since conservative mode was (re-)entered; `None` when off.
    conservative_for: Option<u32>,
    healthy_in_a_row: u32,
}

impl RiskEngine {
    /// An engine with `config`, not conservative.
    pub fn new(config: RiskConfig) -> Self {
        Self {
            config,
            loss_ewma: None,
            step_ms_ewma: None,
            loss_above: 0,
            step_ms_above: 0,
            conservative_for: None,
            healthy_in_a_row: 0,
        }
    }

    /// The moving state (averages, hysteresis counters), for a checkpoint;
    /// the configuration is not part of it.
    pub fn state(&self) -> RiskState {
        RiskState {
            loss_ewma: self.loss_ewma,
            step_ms_ewma: self.step_ms_ewma,
            loss_above: self.loss_above,
            step_ms_above: self.step_ms_above,
            conservative_for: self.conservative_for,
            healthy_in_a_row: self.healthy_in_a_row,
        }
    }

    /// Continues from a state [`RiskEngine::state`] took.
    pub fn restore(&mut self, state: RiskState) {
        let RiskState {
            loss_ewma,
            step_ms_ewma,
            loss_above,
            step_ms_above,
            conservative_for,
            healthy_in_a_row,
        } = state;
        self.loss_ewma = loss_ewma;
        self.step_ms_ewma = step_ms_ewma;
        self.loss_above = loss_above;
        self.step_ms_above = step_ms_above;
        self.conservative_for = conservative_for;
        self.healthy_in_a_row = healthy_in_a_row;
    }

    /// Whether conservative mode is on.
    pub fn conservative(&self) -> bool {
        self.conservative_for.is_some()
    }

    /// Judges `proposal` on `obs`; `catalog` gives blueprint risk and
    /// quarantine. Call once per step (it advances the hysteresis).
    pub fn assess(
        &mut self,
        obs: &Observation<'_>,
        proposal: Proposal,
        catalog: &[CatalogEntry],
    ) -> Assessment {
        let c = &self.config;
        let p = obs.packet;
        let mut findings = Vec::new();
        let mut veto_all = false;
        if obs.coverage < c.min_coverage {
            veto_all = true;
            findings.push(Finding {
                rule: "degraded_coverage",
                detail: format!(
                    "{:.0}% of optional inputs present (minimum {:.0}%), missing {}",
                    100.0 * obs.coverage,
                    100.0 * c.min_coverage,
                    obs.missing().join(", ")
                ),
            });
        }
        let mut hazard = false;
        let (ratio, alpha) = (c.loss_spike_ratio, c.ewma_alpha);
        if let Some(loss) = p.training_loss
            && let Some(mean) = spike(
                &mut self.loss_ewma,
                &mut self.loss_above,
                loss,
                (ratio, alpha, c.rebase_after_fences),
            )
        {
            hazard = true;
            findings.push(Finding {
                rule: "loss_spike",
                detail: format!("training loss {loss:.4} > {ratio} x {mean:.4}"),
            });
        }
        let ratio = c.latency_spike_ratio;
        if c.wall_clock_rules
            && let Some(&ms) = p.training_metrics.get("step_ms")
        {
            // Judge the step time per budgeted unit of work: a seed's own
            // MACs are an expected, budgeted rise, not a spike.
            let budget = budgeted_work(obs);
            let per_unit = ms / budget;
            if let Some(mean) = spike(
                &mut self.step_ms_ewma,
                &mut self.step_ms_above,
                per_unit,
                (ratio, alpha, c.rebase_after_fences),
            ) {
                hazard = true;
                findings.push(Finding {
                    rule: "latency_spike",
                    detail: if budget > 1.0 {
                        format!(
                            "step {ms:.2} ms for {budget:.2} x the host's MACs = {per_unit:.2} ms per host-sized unit > {ratio} x {mean:.2} ms"
                        )
                    } else {
                        format!("step {ms:.2} ms > {ratio} x {mean:.2} ms")
                    },
                });
            }
        }
        if c.wall_clock_rules
            && let Some(&ms) = p.training_metrics.get("last_hook_ms")
            && ms > c.max_fence_ms
        {
            hazard = true;
            findings.push(Finding {
                rule: "hook_latency",
                detail: format!(
                    "the last fence took {ms:.2} ms (budget {} ms)",
                    c.max_fence_ms
                ),
            });
        }
        let violations: f64 = obs
            .live_seeds()
            .filter_map(|s| s.metrics.get("isolation_violations"))
            .sum();
        if violations > c.max_isolation_violations as f64 {
            hazard = true;
            findings.push(Finding {
                rule: "isolation_violations",
                detail: format!(
                    "{violations} isolation violation(s) (limit {})",
                    c.max_isolation_violations
                ),
            });
        }
        if let Some(hw) = &p.hardware {
            let free =
                (hw.total_memory_gib > 0.0).then(|| hw.available_memory_gib / hw.total_memory_gib);
            let busy = hw.utilization_percent;
            if free.is_some_and(|f| f < c.min_free_memory_fraction)
                || busy.is_some_and(|u| u > c.max_utilization_percent)
            {
                hazard = true;
                findings.push(Finding {
                    rule: "device_pressure",
                    detail: format!(
                        "free memory {} (minimum {:.0}%), utilization {} (maximum {:.0}%)",
                        free.map_or("unknown".into(), |f| format!("{:.1}%", 100.0 * f)),
                        100.0 * c.min_free_memory_fraction,
                        busy.map_or("unknown".into(), |u| format!("{u:.0}%")),
                        c.max_utilization_percent
                    ),
                });
            }
        }
        let mut downgrade = None;
        let mut veto_germinate = hazard;
        if let Proposal::Germinate { blueprint_id, .. } = &proposal {
            let entry = catalog.iter().find(|e| {
                e.descriptor
                    .as_ref()
                    .is_some_and(|d| &d.blueprint_id == blueprint_id)
            });
            match entry.and_then(|e| e.descriptor.as_ref().map(|d| (e, d))) {
                Some((e, _)) if e.quarantined => {
                    veto_germinate = true;
                    findings.push(Finding {
                        rule: "blueprint_quarantined",
                        detail: format!("{blueprint_id} is quarantined: {}", e.quarantine_reason),
                    });
                }
                None => {
                    veto_germinate = true;
                    findings.push(Finding {
                        rule: "blueprint_quarantined",
                        detail: format!("{blueprint_id} is not in the catalog"),
                    });
                }
                Some((_, d)) => {
                    if d.risk > c.max_blueprint_risk {
                        veto_germinate = true;
                        findings.push(Finding {
                            rule: "blueprint_risk",
                            detail: format!(
                                "{blueprint_id} risk {:.2} above {:.2}",
                                d.risk, c.max_blueprint_risk
                            ),
                        });
                    }
                    if d.tier == BlueprintTier::Experimental as i32 {
                        findings.push(Finding {
                            rule: "blueprint_experimental",
                            detail: format!("{blueprint_id} is experimental: α ramp doubled"),
                        });
                        downgrade = Some("alpha ramp doubled (experimental blueprint)".to_string());
                    }
                }
            }
        }
        // Hysteresis: a hazard (re-)enters conservative mode; it ends after
        // the cool-down and N healthy fences in a row.
        if hazard {
            self.conservative_for = Some(0);
            self.healthy_in_a_row = 0;
        } else if let Some(fences) = self.conservative_for {
            let fences = fences + 1;
            self.healthy_in_a_row += 1;
            if fences >= c.cool_down_fences && self.healthy_in_a_row >= c.healthy_fences {
                self.conservative_for = None;
                self.healthy_in_a_row = 0;
            } else {
                self.conservative_for = Some(fences);
            }
        }
        if self.conservative() && !hazard {
            findings.push(Finding {
                rule: "conservative_mode",
                detail: format!(
                    "conservative for {} fence(s), {} healthy in a row",
                    self.conservative_for.unwrap_or(0),
                    self.healthy_in_a_row
                ),
            });
            veto_germinate = true;
        }
        let (verdict, proposal) = match proposal {
            Proposal::Wait { reason } => (Verdict::Allow, Proposal::Wait { reason }),
            cull @ Proposal::Cull { .. } => (Verdict::Allow, cull),
            fossilize @ Proposal::Fossilize { .. } => (
                if veto_all {
                    Verdict::Veto
                } else {
                    Verdict::Allow
                },
                fossilize,
            ),
            mut germinate @ Proposal::Germinate { .. } => {
                let verdict = if veto_all || veto_germinate {
                    Verdict::Veto
                } else if let Some(how) = downgrade {
                    Verdict::Downgrade(how)
                } else {
                    Verdict::Allow
                };
                if let (Verdict::Downgrade(_), Proposal::Germinate { alpha_steps, .. }) =
                    (&verdict, &mut germinate)
                {
                    *alpha_steps = alpha_steps.saturating_mul(2);
                }
                (verdict, germinate)
            }
        };
        Assessment {
            verdict,
            findings,
            proposal,
            conservative: self.conservative(),
        }
    }
}

/// The work a step is budgeted, in host-sized units: 1 for the host plus
/// each live seed's forward MACs over the host's (from the packet's
/// `host_forward_macs` and each seed's `forward_macs`). 1 when the host does
/// not count its MACs: then every rise is judged as the host's.
fn budgeted_work(obs: &Observation<'_>) -> f64 {
    let Some(host) = obs
        .packet
        .training_metrics
        .get("host_forward_macs")
        .copied()
        .filter(|m| *m > 0.0)
    else {
        return 1.0;
    };
    let seeds: f64 = obs
        .live_seeds()
        .filter_map(|s| s.metrics.get("forward_macs"))
        .filter(|m| m.is_finite() && **m > 0.0)
        .sum();
    1.0 + seeds / host
}

/// Judges `value` against the moving average `ewma`: `Some(mean)` when it is
/// above `ratio` × mean (a spike, which does not move the average it is
/// judged against), else `None` after folding it in. A level that stays above
/// for `rebase` fences in a row is a lasting change, not a spike (a seed that
/// made every step slower): the average restarts from it.
fn spike(
    ewma: &mut Option<f64>,
    above: &mut u32,
    value: f64,
    (ratio, alpha, rebase): (f64, f64, u32),
) -> Option<f64> {
    match *ewma {
        Some(mean) if value > ratio * mean => {
            *above += 1;
            if *above > rebase {
                *ewma = Some(value);
                *above = 0;
                None
            } else {
                Some(mean)
            }
        }
        Some(mean) => {
            *above = 0;
            *ewma = Some(mean + alpha * (value - mean));
            None
        }
        None => {
            *ewma = Some(value);
            None
        }
    }
}
