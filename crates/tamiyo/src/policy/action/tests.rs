#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::*;

/// Two slots (only the first free), three blueprints, one seed.
fn fixture() -> (Logits, Mask) {
    let logits = Logits {
        op: vec![0.0, 1.0, 2.0, 3.0],
        slot: vec![0.3, 7.0],
        blueprint: vec![vec![0.5, 9.0, -0.5], vec![1.0, 1.0, 1.0]],
        blend: vec![
            vec![0.0, 0.0, 0.0, 0.0],
            vec![0.0, 0.0, 0.0, 0.0],
            vec![1.0, 2.0, 3.0, 4.0],
        ],
        tempo: vec![0.0; 4],
        seed: vec![0.2],
    };
    let mask = Mask {
        op: vec![true; 4],
        slot: vec![true, false],
        blueprint: vec![vec![true, false, true], vec![true, true, true]],
        blend: vec![
            vec![true, true, false, false],
            vec![true; 4],
            vec![false, true, false, false],
        ],
        tempo: vec![true; 4],
        cull: vec![true],
        fossilize: vec![false],
    };
    (logits, mask)
}

#[test]
fn the_joint_log_prob_is_the_sum_of_the_heads_the_op_uses() {
    let (logits, mask) = fixture();
    // FOSSILIZE has no legal seed: masked. Legal ops: WAIT, GERMINATE, CULL.
    assert_eq!(mask.ops().unwrap(), [true, true, true, false]);
    let action = Action {
        op: Op::Germinate,
        slot: Some(0),
        blueprint: Some(2),
        blend: Some(1),
        tempo: Some(3),
        seed: None,
    };
    let ln = f64::ln;
    let op = 1.0 - ln(1.0f64.exp() + 0.0f64.exp() + 2.0f64.exp()); // logits 0, 1, 2
    let slot = 0.0; // the only free slot
    let blueprint = -0.5 - ln(0.5f64.exp() + (-0.5f64).exp()); // blueprint 1 masked
    let blend = 0.0; // the only mode blueprint 2 allows
    let tempo = ln(0.25);
    let hand = op + slot + blueprint + blend + tempo;
    let got = f64::from(log_prob(&logits, &mask, &action).unwrap());
    assert!((got - hand).abs() < 1e-5, "{got} vs {hand}");
    // CULL: the op and the seed head (one legal seed).
    let cull = Action {
        op: Op::Cull,
        seed: Some(0),
        ..Action::wait()
    };
    let hand = 2.0 - ln(1.0f64.exp() + 0.0f64.exp() + 2.0f64.exp());
    let got = f64::from(log_prob(&logits, &mask, &cull).unwrap());
    assert!((got - hand).abs() < 1e-5, "{got} vs {hand}");
    // WAIT uses the op head only.
    let wait = f64::from(log_prob(&logits, &mask, &Action::wait()).unwrap());
    assert!((wait - (0.0 - ln(1.0f64.exp() + 1.0 + 2.0f64.exp()))).abs() < 1e-5);
}

#[test]
fn forbidden_actions_and_bad_logits_are_errors() {
    let (logits, mask) = fixture();
    let fossilize = Action {
        op: Op::Fossilize,
        seed: Some(0),
        ..Action::wait()
    };
    assert!(log_prob(&logits, &mask, &fossilize).is_err());
    let occupied = Action {
        op: Op::Germinate,
        slot: Some(1),
        blueprint: Some(0),
        blend: Some(0),
        tempo: Some(0),
        seed: None,
    };
    assert!(log_prob(&logits, &mask, &occupied).is_err());
    let mut nan = logits.clone();
    nan.op[1] = f32::NAN;
    assert!(matches!(
        sample(&nan, &mask, &mut Sampler::new(1)),
        Err(Error::Action(_))
    ));
    // A non-finite logit under the mask does not matter.
    let mut hidden = logits.clone();
    hidden.blueprint[0][1] = f32::NAN;
    sample(&hidden, &mask, &mut Sampler::new(1)).unwrap();
    let mut short = logits;
    short.tempo.pop();
    assert!(masked_log_softmax("tempo", &short.tempo, &mask.tempo).is_err());
    assert!(masked_log_softmax("x", &[1.0, 2.0], &[false, false]).is_err());
}

#[test]
fn sampling_follows_the_masked_distribution_and_is_deterministic_by_seed() {
    // WAIT vs GERMINATE at odds 1:3 (CULL and FOSSILIZE masked by the run).
    let (mut logits, mut mask) = fixture();
    mask.op = vec![true, true, false, false];
    logits.op = vec![0.0, 3.0f32.ln(), 50.0, 50.0];
    let mut rng = Sampler::new(7);
    let n = 8_000;
    let germinations = (0..n)
        .filter(|_| sample(&logits, &mask, &mut rng).unwrap().0.op == Op::Germinate)
        .count();
    let share = germinations as f64 / n as f64;
    assert!((share - 0.75).abs() < 0.02, "{share}");
    let draw = |seed| {
        let mut rng = Sampler::new(seed);
        (0..20)
            .map(|_| sample(&logits, &mask, &mut rng).unwrap().0)
            .collect::<Vec<_>>()
    };
    assert_eq!(draw(3), draw(3));
    assert_ne!(draw(3), draw(4));
    // Greedy takes the most probable legal choice of each head.
    let (best, _) = greedy(&logits, &mask).unwrap();
    assert_eq!(best.op, Op::Germinate);
    assert_eq!(
        (best.slot, best.blueprint, best.blend),
        (Some(0), Some(0), Some(0))
    );
}

fn arb_case() -> impl Strategy<Value = (Logits, Mask, u64)> {
    (1usize..6, 1usize..5, 0usize..4).prop_flat_map(|(slots, bps, seeds)| {
        let f = || -5.0f32..5.0;
        (
            proptest::collection::vec(f(), 4),
            proptest::collection::vec(f(), slots),
            proptest::collection::vec(proptest::collection::vec(f(), bps), slots),
            proptest::collection::vec(proptest::collection::vec(f(), 4), bps),
            proptest::collection::vec(f(), 4),
            proptest::collection::vec(f(), seeds),
            (
                proptest::collection::vec(any::<bool>(), 4),
                proptest::collection::vec(any::<bool>(), slots),
                proptest::collection::vec(proptest::collection::vec(any::<bool>(), bps), slots),
                proptest::collection::vec(proptest::collection::vec(any::<bool>(), 4), bps),
                proptest::collection::vec(any::<bool>(), 4),
                proptest::collection::vec(any::<bool>(), seeds),
                proptest::collection::vec(any::<bool>(), seeds),
            ),
            any::<u64>(),
        )
            .prop_map(|(op, slot, blueprint, blend, tempo, seed, m, rng)| {
                let logits = Logits {
                    op,
                    slot,
                    blueprint,
                    blend,
                    tempo,
                    seed,
                };
                let mask = Mask {
                    op: m.0,
                    slot: m.1,
                    blueprint: m.2,
                    blend: m.3,
                    tempo: m.4,
                    cull: m.5,
                    fossilize: m.6,
                };
                (logits, mask, rng)
            })
    })
}

proptest! {
    /// Issue #17: an illegal action is never sampled, whatever the graph's
    /// size, the logits and the mask; the log-prob returned is the one
    /// recomputed for the action.
    #[test]
    fn illegal_actions_are_never_sampled((logits, mask, seed) in arb_case()) {
        let ops = mask.ops().unwrap();
        let mut rng = Sampler::new(seed);
        for _ in 0..16 {
            let (a, lp) = sample(&logits, &mask, &mut rng).unwrap();
            prop_assert!(ops[a.op.index()], "{a:?} with ops {ops:?}");
            match a.op {
                Op::Wait => prop_assert!(a.slot.is_none() && a.seed.is_none()),
                Op::Germinate => {
                    let (s, b, m, t) = (a.slot.unwrap(), a.blueprint.unwrap(), a.blend.unwrap(), a.tempo.unwrap());
                    prop_assert!(mask.slot[s] && mask.blueprint[s][b] && mask.blend[b][m] && mask.tempo[t], "{a:?}");
                }
                Op::Cull => prop_assert!(mask.cull[a.seed.unwrap()]),
                Op::Fossilize => prop_assert!(mask.fossilize[a.seed.unwrap()]),
            }
            prop_assert!(lp.is_finite() && lp <= 1e-6);
            let again = log_prob(&logits, &mask, &a).unwrap();
            prop_assert!((again - lp).abs() < 1e-6);
            prop_assert!(entropy(&logits, &mask, &a).unwrap() >= -1e-6);
        }
    }
}
