//! Decisions to and from the wire. Names that are `&'static str` in a
//! [`Decision`] (policy, risk rules, missing signals) come back as the
//! known constants; a name this build does not know is kept in the text
//! (`remote:<name>` in the detail) rather than lost.

use std::time::Duration;

use leyline::v1::{
    RiskFinding, RiskVerdict, StepError, StepErrorKind, StepResponse, step_response,
};

use crate::decision::{Action, Decision, Diagnostics};
use crate::error::Error;
use crate::observation::OPTIONAL_SIGNALS;
use crate::risk::{Finding, RULES, Verdict};

const POLICIES: [&str; 3] = ["heuristic", "learned", "script"];

fn known(name: &str, table: &[&'static str]) -> Option<&'static str> {
    table.iter().copied().find(|k| *k == name)
}

/// A decision as a response (field reports added by the caller).
pub(crate) fn encode(decision: &Decision) -> StepResponse {
    let d = &decision.diagnostics;
    let (verdict, downgrade) = match &d.verdict {
        Verdict::Allow => (RiskVerdict::Allow, String::new()),
        Verdict::Downgrade(how) => (RiskVerdict::Downgrade, how.clone()),
        Verdict::Veto => (RiskVerdict::Veto, String::new()),
    };
    StepResponse {
        outcome: Some(match &decision.action {
            Action::Command(c) => step_response::Outcome::Command((**c).clone()),
            Action::Wait { reason } => step_response::Outcome::WaitReason(reason.clone()),
        }),
        policy: d.policy.to_owned(),
        rule: d.rule.clone(),
        detail: d.detail.clone(),
        verdict: verdict as i32,
        downgrade,
        findings: d
            .findings
            .iter()
            .map(|f| RiskFinding {
                rule: f.rule.to_owned(),
                detail: f.detail.clone(),
            })
            .collect(),
        conservative: d.conservative,
        coverage: d.coverage,
        missing: d.missing.iter().map(|m| (*m).to_owned()).collect(),
        generation: d.generation,
        global_step: d.global_step,
        elapsed_ms: d.elapsed.as_secs_f64() * 1e3,
        field_reports: Vec::new(),
    }
}

/// An error as a response.
pub(crate) fn encode_error(error: &Error) -> StepResponse {
    let kind = match error {
        Error::DeadlineExceeded { .. } => StepErrorKind::DeadlineExceeded,
        Error::InvalidPacket { .. } | Error::MissingMetric { .. } => StepErrorKind::InvalidPacket,
        Error::InvalidReport { .. }
        | Error::Io { .. }
        | Error::Cancelled { .. }
        | Error::NoCandidates { .. }
        | Error::Catalog(_)
        | Error::WorkerGone(_)
        | Error::Remote(_)
        | Error::InvalidCommand { .. }
        | Error::Graph(_)
        | Error::Action(_)
        | Error::State(_)
        | Error::PolicyFile { .. }
        | Error::Trajectory { .. }
        | Error::Script { .. } => StepErrorKind::Failed,
    };
    StepResponse {
        outcome: Some(step_response::Outcome::Error(StepError {
            kind: kind as i32,
            message: error.to_string(),
        })),
        ..StepResponse::default()
    }
}

/// A response as a decision (or the error the service reported).
pub(crate) fn decode(response: &StepResponse) -> Result<Decision, Error> {
    let action = match &response.outcome {
        Some(step_response::Outcome::Command(c)) => Action::Command(Box::new(c.clone())),
        Some(step_response::Outcome::WaitReason(reason)) => Action::Wait {
            reason: reason.clone(),
        },
        Some(step_response::Outcome::Error(e)) => {
            let kind = StepErrorKind::try_from(e.kind).unwrap_or(StepErrorKind::Unspecified);
            return Err(match kind {
                StepErrorKind::DeadlineExceeded => Error::Remote(format!(
                    "the service missed its own step deadline: {}",
                    e.message
                )),
                StepErrorKind::InvalidPacket
                | StepErrorKind::Failed
                | StepErrorKind::Unspecified => Error::Remote(e.message.clone()),
            });
        }
        None => return Err(Error::Remote("a step response without an outcome".into())),
    };
    let mut detail = response.detail.clone();
    let policy = known(&response.policy, &POLICIES).unwrap_or_else(|| {
        detail = format!("{detail} (remote policy {})", response.policy);
        "remote"
    });
    let verdict = match RiskVerdict::try_from(response.verdict).unwrap_or(RiskVerdict::Unspecified)
    {
        RiskVerdict::Allow => Verdict::Allow,
        RiskVerdict::Downgrade => Verdict::Downgrade(response.downgrade.clone()),
        RiskVerdict::Veto => Verdict::Veto,
        RiskVerdict::Unspecified => {
            return Err(Error::Remote(
                "a step response without a risk verdict".into(),
            ));
        }
    };
    let findings = response
        .findings
        .iter()
        .map(|f| match known(&f.rule, &RULES) {
            Some(rule) => Finding {
                rule,
                detail: f.detail.clone(),
            },
            None => Finding {
                rule: "remote",
                detail: format!("remote:{}: {}", f.rule, f.detail),
            },
        })
        .collect();
    let missing = response
        .missing
        .iter()
        .map(|m| known(m, &OPTIONAL_SIGNALS).unwrap_or("remote"))
        .collect();
    Ok(Decision {
        action,
        diagnostics: Diagnostics {
            policy,
            rule: response.rule.clone(),
            detail,
            verdict,
            findings,
            conservative: response.conservative,
            coverage: response.coverage,
            missing,
            generation: response.generation,
            global_step: response.global_step,
            elapsed: Duration::from_secs_f64((response.elapsed_ms / 1e3).max(0.0)),
        },
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_rule_the_risk_engine_names_is_known_to_the_wire() {
        let source = include_str!("../risk.rs");
        for line in source.lines() {
            if let Some(rest) = line.trim().strip_prefix("rule: \"") {
                let name = rest.split('"').next().unwrap();
                assert!(RULES.contains(&name), "{name} is missing from risk::RULES");
            }
        }
    }

    #[test]
    fn a_decision_survives_the_wire() {
        let decision = Decision {
            action: Action::Wait {
                reason: "plateau not reached".into(),
            },
            diagnostics: Diagnostics {
                policy: "heuristic",
                rule: "wait_plateau".into(),
                detail: "loss improving".into(),
                verdict: Verdict::Downgrade("smaller blueprint".into()),
                findings: vec![Finding {
                    rule: "loss_spike",
                    detail: "z 4.1".into(),
                }],
                conservative: true,
                coverage: 0.75,
                missing: vec!["training_loss"],
                generation: 3,
                global_step: 120,
                elapsed: Duration::from_micros(1500),
            },
        };
        let back = decode(&encode(&decision)).unwrap();
        assert_eq!(back, decision);
        let err = decode(&encode_error(&Error::NoCandidates {
            detail: "none fits".into(),
        }))
        .unwrap_err();
        assert!(err.to_string().contains("none fits"), "{err}");
        let mut odd = encode(&decision);
        odd.policy = "future-policy".into();
        odd.findings[0].rule = "future_rule".into();
        let back = decode(&odd).unwrap();
        assert_eq!(back.diagnostics.policy, "remote");
        assert!(back.diagnostics.detail.contains("future-policy"));
        assert!(back.diagnostics.findings[0].detail.contains("future_rule"));
        assert!(decode(&StepResponse::default()).is_err());
    }
}
