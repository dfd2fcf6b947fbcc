#![allow(clippy::unwrap_used)]

use candle_core::{Device, Tensor, Var};

use super::*;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-5
}

#[test]
fn gae_matches_a_hand_computation() {
    let steps = [
        Step {
            reward: 1.0,
            value: 0.5,
            done: false,
        },
        Step {
            reward: 0.0,
            value: 0.2,
            done: false,
        },
        Step {
            reward: 2.0,
            value: 0.4,
            done: true,
        },
    ];
    let (g, l) = (0.9, 0.8);
    let (adv, ret) = gae(&steps, 10.0, g, l);
    // Last step ended the episode: no bootstrap from last_value.
    let d2 = 2.0 - 0.4;
    let d1 = 0.0 + g * 0.4 - 0.2;
    let d0 = 1.0 + g * 0.2 - 0.5;
    let a2 = d2;
    let a1 = d1 + g * l * a2;
    let a0 = d0 + g * l * a1;
    for (got, want) in adv.iter().zip([a0, a1, a2]) {
        assert!(close(*got, want), "{adv:?}");
    }
    assert!(close(ret[0], a0 + 0.5) && close(ret[2], a2 + 0.4));
    // Not done: the last value bootstraps.
    let open = [Step {
        reward: 1.0,
        value: 0.5,
        done: false,
    }];
    let (adv, _) = gae(&open, 2.0, g, l);
    assert!(close(adv[0], 1.0 + g * 2.0 - 0.5));
    let n = normalise(&[1.0, 2.0, 3.0]);
    assert!(close(n.iter().sum::<f64>(), 0.0) && close(n[2], 1.224_744_87));
}

#[test]
fn the_loss_matches_a_hand_computation() {
    let d = Device::Cpu;
    let t = |v: &[f32]| Tensor::new(v, &d).unwrap();
    let (lp, old) = (t(&[-0.5, -2.0]), t(&[-1.0, -1.0]));
    let (adv, val, ret, ent) = (
        t(&[1.0, -1.0]),
        t(&[0.5, 0.0]),
        t(&[1.0, 1.0]),
        t(&[0.7, 0.3]),
    );
    let config = PpoConfig::default();
    let batch = Batch {
        log_probs: &lp,
        old_log_probs: &old,
        advantages: &adv,
        values: &val,
        returns: &ret,
        entropy: &ent,
    };
    let (total, stats) = loss(&batch, &config).unwrap();
    // Sample 0: r = e^0.5 = 1.6487, A = 1 → min(1.6487, 1.2) = 1.2.
    // Sample 1: r = e^-1 = 0.3679, A = -1 → min(-0.3679, -0.8) = -0.8.
    let policy = -(1.2 + -0.8) / 2.0;
    let value = (0.25 + 1.0) / 2.0;
    let entropy = 0.5;
    let want = policy + 0.5 * value - 0.01 * entropy;
    let got = f64::from(total.to_scalar::<f32>().unwrap());
    assert!(close(got, want), "{got} vs {want}");
    assert!(close(stats.policy, policy) && close(stats.value, value));
    let k3 = |log_r: f64| log_r.exp() - 1.0 - log_r;
    assert!(close(stats.approx_kl, (k3(0.5) + k3(-1.0)) / 2.0));
    assert!(
        close(stats.clip_fraction, 1.0),
        "both ratios are outside [0.8, 1.2]"
    );
}

/// Issue #17: PPO on a 3-armed bandit (arm 2 pays 1, the others 0) finds
/// the best arm within a bounded number of updates, through the masked
/// log-softmax the controller's heads use and candle's gradients.
#[test]
fn ppo_on_a_bandit_converges_to_the_best_arm() {
    use crate::policy::action::{Logits, Mask, Op, Sampler, masked_log_softmax};
    use candle_nn::Optimizer as _;
    let d = Device::Cpu;
    let logits = Var::from_tensor(&Tensor::zeros(3, DType::F32, &d).unwrap()).unwrap();
    let config = PpoConfig {
        learning_rate: 0.05,
        entropy_coef: 0.0,
        ..PpoConfig::default()
    };
    let mut opt = candle_nn::AdamW::new(
        vec![logits.clone()],
        candle_nn::ParamsAdamW {
            lr: config.learning_rate,
            weight_decay: 0.0,
            ..Default::default()
        },
    )
    .unwrap();
    let mut rng = Sampler::new(11);
    let legal = [true, true, true];
    let mut updates = 0;
    for update in 0..60 {
        // Collect 32 pulls under the current policy.
        let current: Vec<f32> = logits.as_tensor().to_vec1().unwrap();
        let lp = masked_log_softmax("arm", &current, &legal).unwrap();
        let mut arms = Vec::new();
        let mut old = Vec::new();
        let mut rewards = Vec::new();
        for _ in 0..32 {
            // Sample through the action sampler: arms as the op head.
            let head = Logits {
                op: vec![current[0], current[1], current[2], 0.0],
                ..Logits::default()
            };
            let mask = Mask {
                op: vec![true, true, true, false],
                cull: vec![true],
                fossilize: vec![false],
                ..mask_with_germinate()
            };
            let (a, _) = crate::policy::action::sample(&head_with(head), &mask, &mut rng).unwrap();
            let arm = match a.op {
                Op::Wait => 0,
                Op::Germinate => 1,
                Op::Cull => 2,
                Op::Fossilize => unreachable!("masked"),
            };
            arms.push(arm as u32);
            old.push(lp[arm]);
            rewards.push(if arm == 2 { 1.0 } else { 0.0 });
        }
        let mean = rewards.iter().sum::<f64>() / rewards.len() as f64;
        let best = f64::from(lp[2]).exp();
        if best > 0.95 {
            updates = update;
            break;
        }
        let adv: Vec<f32> = normalise(&rewards.iter().map(|r| r - mean).collect::<Vec<_>>())
            .iter()
            .map(|&a| a as f32)
            .collect();
        let idx = Tensor::new(arms.as_slice(), &d).unwrap();
        let old_t = Tensor::new(old.as_slice(), &d).unwrap();
        let adv_t = Tensor::new(adv.as_slice(), &d).unwrap();
        let zeros = Tensor::zeros(arms.len(), DType::F32, &d).unwrap();
        for _ in 0..config.epochs {
            let log_softmax = candle_nn::ops::log_softmax(logits.as_tensor(), 0).unwrap();
            let new_lp = log_softmax.gather(&idx, 0).unwrap();
            let batch = Batch {
                log_probs: &new_lp,
                old_log_probs: &old_t,
                advantages: &adv_t,
                values: &zeros,
                returns: &zeros,
                entropy: &zeros,
            };
            let (total, _) = loss(&batch, &config).unwrap();
            opt.backward_step(&total).unwrap();
        }
        updates = update + 1;
    }
    let p: Vec<f32> = candle_nn::ops::softmax(logits.as_tensor(), 0)
        .unwrap()
        .to_vec1()
        .unwrap();
    eprintln!(
        "bandit: p(best arm) = {:.3} after {updates} PPO updates",
        p[2]
    );
    assert!(
        p[2] > 0.95,
        "after {updates} updates the best arm has p = {}",
        p[2]
    );
    assert!(updates < 60, "did not converge within 60 updates");
}

fn mask_with_germinate() -> crate::policy::action::Mask {
    crate::policy::action::Mask {
        op: vec![true; 4],
        slot: vec![true],
        blueprint: vec![vec![true]],
        blend: vec![vec![true]],
        tempo: vec![true; 4],
        cull: vec![true],
        fossilize: vec![false],
    }
}

fn head_with(mut logits: crate::policy::action::Logits) -> crate::policy::action::Logits {
    logits.slot = vec![0.0];
    logits.blueprint = vec![vec![0.0]];
    logits.blend = vec![vec![0.0]];
    logits.tempo = vec![0.0; 4];
    logits.seed = vec![0.0];
    logits
}

#[test]
fn defaults_are_valid_and_bad_values_name_their_key() {
    PpoConfig::default().validate().unwrap();
    for (config, key) in [
        (
            PpoConfig {
                gamma: 1.5,
                ..PpoConfig::default()
            },
            "gamma",
        ),
        (
            PpoConfig {
                clip: 0.0,
                ..PpoConfig::default()
            },
            "clip",
        ),
        (
            PpoConfig {
                max_grad_norm: f64::NAN,
                ..PpoConfig::default()
            },
            "max_grad_norm",
        ),
        (
            PpoConfig {
                minibatch: 0,
                ..PpoConfig::default()
            },
            "epochs",
        ),
    ] {
        assert_eq!(config.validate().unwrap_err().key, key);
    }
}

/// The observation graph and action mask of a host of `slots` conv slots at
/// validation accuracy 0.5 and this training accuracy (short of capacity
/// when low, not when near 1).
fn context(
    slots: usize,
    train_accuracy: f64,
) -> (crate::graph::ObservationGraph, crate::policy::action::Mask) {
    use crate::graph::{GraphBuilder, GraphSchema};
    let mut p = crate::graph::tests::packet(slots);
    p.validation_accuracy = Some(0.5);
    p.training_metrics
        .insert("train_accuracy".into(), train_accuracy);
    let g = GraphBuilder::new(GraphSchema::default())
        .unwrap()
        .build(&p, &crate::graph::tests::catalog())
        .unwrap();
    let mask = crate::policy::gnn::mask_for(&g, &p, 2);
    (g, mask)
}

/// The GNN learns, from rewards alone, to germinate where the host is short
/// of capacity (training accuracy 0.6) and to wait where it is not (0.99):
/// a contextual bandit over real observation graphs, the skill the learned
/// controller needs most.
#[test]
fn the_gnn_learns_when_to_grow_and_when_not_to() {
    use crate::policy::action::{Op, Sampler, greedy, sample};
    use crate::policy::gnn::{GnnConfig, GnnModel};

    let context = |train_accuracy: f64| context(2, train_accuracy);
    let short = context(0.6);
    let ample = context(0.99);
    let config = PpoConfig {
        epochs: 4,
        minibatch: 16,
        learning_rate: 3e-3,
        entropy_coef: 0.0,
        target_kl: 0.0,
        ..PpoConfig::default()
    };
    let model = GnnModel::new(GnnConfig { hidden: 8 }, 2).unwrap();
    let mut learner = Learner::new(model, config).unwrap();
    let mut rng = Sampler::new(4);
    let learned = |learner: &Learner| {
        let op = |(g, m): &(crate::graph::ObservationGraph, crate::policy::action::Mask)| {
            greedy(&learner.model().forward(g).unwrap().logits, m)
                .unwrap()
                .0
                .op
        };
        (op(&short), op(&ample))
    };
    let mut updates = 0;
    while learned(&learner) != (Op::Germinate, Op::Wait) {
        assert!(
            updates < 60,
            "after {updates} updates greedy ops are {:?}",
            learned(&learner)
        );
        let mut samples = Vec::new();
        for (i, (g, mask)) in [&short, &ample].into_iter().cycle().take(16).enumerate() {
            let out = learner.model().forward(g).unwrap();
            let (action, lp) = sample(&out.logits, mask, &mut rng).unwrap();
            let wants_growth = i % 2 == 0;
            let reward = match (action.op, wants_growth) {
                (Op::Germinate, true) | (Op::Wait, false) => 1.0,
                _ => -1.0,
            };
            samples.push(Sample {
                graph: g.clone(),
                mask: mask.clone(),
                action,
                old_log_prob: lp,
                advantage: reward - f64::from(out.value),
                target: reward,
            });
        }
        let stats = learner.update(&samples, &[], updates).unwrap();
        assert!(stats.minibatches >= 1 && stats.grad_norm.is_finite());
        updates += 1;
    }
    eprintln!("contextual bandit: grow/wait learned in {updates} PPO updates");
}

/// Behaviour cloning: a teacher that grows (a particular slot, blueprint,
/// blend and tempo) when the host is short of capacity and waits when it is
/// not is imitated exactly — every head — within a bounded number of
/// imitation updates, and the teacher actions' negative log-likelihood falls.
#[test]
fn imitation_learns_a_teachers_whole_action() {
    use crate::policy::action::{Action, Op, greedy};
    use crate::policy::gnn::{GnnConfig, GnnModel};

    let context = |train_accuracy: f64| context(3, train_accuracy);
    let (short, ample) = (context(0.6), context(0.99));
    // The teacher's growth: the last slot, the first blueprint it allows
    // there, the first blend it allows, the slowest tempo.
    let slot = short.1.slot.len() - 1;
    let blueprint = short.1.blueprint[slot].iter().position(|&ok| ok).unwrap();
    let blend = short.1.blend[blueprint].iter().position(|&ok| ok).unwrap();
    let grow = Action {
        op: Op::Germinate,
        slot: Some(slot),
        blueprint: Some(blueprint),
        blend: Some(blend),
        tempo: Some(3),
        seed: None,
    };
    let samples: Vec<Sample> = (0..16)
        .map(|i| {
            let ((g, mask), action) = if i % 2 == 0 {
                (&short, grow)
            } else {
                (&ample, Action::wait())
            };
            Sample {
                graph: g.clone(),
                mask: mask.clone(),
                action,
                old_log_prob: 0.0,
                advantage: 0.0,
                target: 0.0,
            }
        })
        .collect();
    let config = PpoConfig {
        epochs: 4,
        minibatch: 8,
        learning_rate: 3e-3,
        ..PpoConfig::default()
    };
    let mut learner =
        Learner::new(GnnModel::new(GnnConfig { hidden: 8 }, 5).unwrap(), config).unwrap();
    let greedy_of =
        |learner: &Learner,
         (g, m): &(crate::graph::ObservationGraph, crate::policy::action::Mask)| {
            greedy(&learner.model().forward(g).unwrap().logits, m)
                .unwrap()
                .0
        };
    let first = learner.imitate(&samples, 0).unwrap();
    let mut last = first;
    let mut updates = 1;
    while greedy_of(&learner, &short) != grow || greedy_of(&learner, &ample) != Action::wait() {
        assert!(updates < 40, "after {updates} imitation updates: {last:?}");
        last = learner.imitate(&samples, updates).unwrap();
        updates += 1;
    }
    assert!(last.nll < first.nll, "{first:?} → {last:?}");
    assert!(
        (last.agreement - 1.0).abs() < 1e-9 || updates == 1,
        "{last:?}"
    );
    eprintln!(
        "imitation: the teacher's whole action in {updates} updates, nll {:.3} → {:.3}",
        first.nll, last.nll
    );
}

/// The imitation regulariser: PPO updates whose advantages push a policy
/// away from its teacher's growth leave the teacher's actions far more
/// likely when the demonstrations weigh in (`imitation_coef`) than when they
/// do not; without the coefficient, or without demonstrations, the update is
/// plain PPO and reports no teacher likelihood.
#[test]
fn the_imitation_regulariser_keeps_the_teachers_actions_likely() {
    use crate::policy::action::{Action, Op};
    use crate::policy::gnn::{GnnConfig, GnnModel};

    let (g, mask) = context(3, 0.6);
    let slot = mask.slot.len() - 1;
    let blueprint = mask.blueprint[slot].iter().position(|&ok| ok).unwrap();
    let blend = mask.blend[blueprint].iter().position(|&ok| ok).unwrap();
    let grow = Action {
        op: Op::Germinate,
        slot: Some(slot),
        blueprint: Some(blueprint),
        blend: Some(blend),
        tempo: Some(0),
        seed: None,
    };
    let sample = |action: Action, advantage: f64| Sample {
        graph: g.clone(),
        mask: mask.clone(),
        action,
        old_log_prob: 0.0,
        advantage,
        target: 0.0,
    };
    let demos: Vec<Sample> = (0..8).map(|_| sample(grow, 0.0)).collect();
    // PPO's evidence: growing was bad, waiting good.
    let adverse: Vec<Sample> = (0..16)
        .map(|i| {
            if i % 2 == 0 {
                sample(grow, -1.0)
            } else {
                sample(Action::wait(), 1.0)
            }
        })
        .collect();
    let run = |coef: f64, regularising: &[Sample]| {
        let config = PpoConfig {
            epochs: 4,
            minibatch: 8,
            learning_rate: 3e-3,
            target_kl: 0.0,
            clip: 0.9,
            imitation_coef: coef,
            ..PpoConfig::default()
        };
        let mut learner =
            Learner::new(GnnModel::new(GnnConfig { hidden: 8 }, 9).unwrap(), config).unwrap();
        learner.imitate(&demos, 0).unwrap();
        let mut reported = None;
        for u in 0..6 {
            let mut adverse = adverse.clone();
            for s in &mut adverse {
                let e = learner
                    .model()
                    .evaluate(&s.graph, &s.mask, &s.action)
                    .unwrap();
                s.old_log_prob = e.log_prob.to_scalar::<f32>().unwrap();
            }
            reported = learner
                .update(&adverse, regularising, u + 1)
                .unwrap()
                .imitation_nll;
        }
        let refs: Vec<&Sample> = demos.iter().collect();
        let nll = f64::from(learner.nll(&refs).unwrap().to_scalar::<f32>().unwrap());
        (nll, reported)
    };
    let (free, free_reported) = run(0.0, &demos);
    let (held, held_reported) = run(2.0, &demos);
    assert_eq!(free_reported, None, "coef 0 is plain PPO");
    let held_reported = held_reported.expect("a regularised update reports the teacher's nll");
    assert!(held_reported.is_finite() && held_reported >= 0.0);
    assert!(
        held < 0.5 * free,
        "teacher nll after adverse PPO: {held:.3} regularised vs {free:.3} free"
    );
    let (_, none_reported) = run(2.0, &[]);
    assert_eq!(none_reported, None, "no demonstrations: plain PPO");
}
