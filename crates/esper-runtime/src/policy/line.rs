//! One update of `esper policy train` as figures ([`UpdateLine`], a line
//! of the learner state) and as the line it prints ([`describe`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One update's figures (a line of the learner state and of the output).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateLine {
    /// Update number, from 1.
    pub update: u32,
    /// Episodes it trained on.
    pub episodes: usize,
    /// Episodes whose run failed before deciding or could not be read
    /// (left out).
    pub failed: usize,
    /// Episodes that ended early after deciding (scored with the halt
    /// penalty).
    #[serde(default)]
    pub halted: usize,
    /// Decisions it trained on.
    pub decisions: usize,
    /// Mean episode return (final standing, points).
    pub mean_return: f64,
    /// Mean final accuracy gain over the baseline, points.
    pub mean_gain: f64,
    /// Mean parameters the episodes' seeds added at the end.
    pub mean_parameters_added: f64,
    /// Share of decisions that germinated.
    pub germinate_share: f64,
    /// Per host: mean return.
    pub return_by_host: BTreeMap<String, f64>,
    /// Every episode: its run id and return (the training curve per
    /// episode).
    #[serde(default)]
    pub episode_returns: Vec<(String, f64)>,
    /// Approximate KL of the last pass.
    pub approx_kl: f64,
    /// Mean entropy of the last pass.
    pub entropy: f64,
    /// Value loss of the last pass.
    pub value_loss: f64,
    /// Wall time of the update (episodes included), s.
    pub seconds: f64,
    /// The teacher's actions' mean negative log-likelihood in the last pass
    /// (nats): of a behaviour-cloning update, or of the demonstrations
    /// regularising a PPO update (`tamiyo.ppo.imitation_coef`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imitation_nll: Option<f64>,
    /// … and the share of its decisions the policy now takes greedily.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imitation_agreement: Option<f64>,
}

/// `<policy>.learner.json`.
/// One update as a line of output.
pub fn describe(line: &UpdateLine, of: u32) -> String {
    let hosts: Vec<String> = line
        .return_by_host
        .iter()
        .map(|(h, r)| format!("{h} {r:+.2}"))
        .collect();
    let learning = match (line.imitation_nll, line.imitation_agreement) {
        (Some(nll), Some(agreement)) => {
            format!("imitation nll {nll:.3}, agrees {:.0}%", 100.0 * agreement)
        }
        (Some(nll), None) => format!(
            "kl {:.4} | entropy {:.2} | teacher nll {nll:.3}",
            line.approx_kl, line.entropy
        ),
        (None, _) => format!("kl {:.4} | entropy {:.2}", line.approx_kl, line.entropy),
    };
    format!(
        "update {}/{of} | {} episode(s){} | return {:+.2} ({}) | gain {:+.2} pts | +{:.0} params | germinate {:.0}% | {learning} | {:.0} s",
        line.update,
        line.episodes,
        match (line.failed, line.halted) {
            (0, 0) => String::new(),
            (f, 0) => format!(" ({f} failed)"),
            (0, h) => format!(" ({h} halted, penalised)"),
            (f, h) => format!(" ({f} failed, {h} halted, penalised)"),
        },
        line.mean_return,
        hosts.join(", "),
        line.mean_gain,
        line.mean_parameters_added,
        100.0 * line.germinate_share,
        line.seconds
    )
}
