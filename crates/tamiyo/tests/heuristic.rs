//! The heuristic policy, table-tested on crafted packet sequences.
use crate::common;

use common::{catalog, packet, with_seed};
use leyline::v1::{SeedStage, SystemStatePacket};
use leyline::validate::Validator;
use tamiyo::HeuristicConfig;
use tamiyo::{Cancel, Error, HeuristicPolicy, Observation, Policy, Proposal};
use urza::select::SelectionPolicy;

fn policy() -> HeuristicPolicy {
    HeuristicPolicy::new(HeuristicConfig::default(), SelectionPolicy::default())
}

/// Feeds `packets` in order; returns the last proposal's rule and proposal.
fn run(policy: &mut HeuristicPolicy, packets: &[SystemStatePacket]) -> (String, Proposal) {
    let validator = Validator::new(&leyline::LimitsConfig::default());
    let catalog = catalog();
    let mut last = None;
    for p in packets {
        let obs = Observation::new(p, &validator).unwrap();
        let out = policy.decide(&obs, &catalog, &Cancel::new()).unwrap();
        last = Some((out.rule.to_string(), out.proposal));
    }
    last.unwrap()
}

/// Epoch ends with these (validation loss, accuracy) values.
fn epochs(values: &[(f64, f64)]) -> Vec<SystemStatePacket> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| packet(i as u32 + 1, 63 * (i as u64 + 1), Some(*v)))
        .collect()
}

#[test]
fn germination_waits_for_e0_a_plateau_and_an_epoch_end() {
    struct Case {
        name: &'static str,
        history: Vec<(f64, f64)>,
        rule: &'static str,
    }
    let cases = [
        Case {
            name: "one epoch: no plateau measurable",
            history: vec![(1.6, 0.64)],
            rule: "wait_no_plateau",
        },
        Case {
            name: "still improving fast (41%)",
            history: vec![(1.6, 0.64), (0.94, 0.73)],
            rule: "wait_no_plateau",
        },
        Case {
            name: "plateau (24%)",
            history: vec![(1.6, 0.64), (0.94, 0.73), (0.71, 0.78)],
            rule: "germinate_plateau",
        },
    ];
    for case in cases {
        let (rule, _) = run(&mut policy(), &epochs(&case.history));
        assert_eq!(rule, case.rule, "{}", case.name);
    }
    // Before E0 = 3, a plateau does not germinate.
    let mut late = HeuristicPolicy::new(
        HeuristicConfig {
            min_epoch: 3,
            ..HeuristicConfig::default()
        },
        SelectionPolicy::default(),
    );
    let (rule, _) = run(&mut late, &epochs(&[(1.0, 0.5), (0.95, 0.52)]));
    assert_eq!(rule, "wait_min_epoch");
    // A step fence (no validation) never germinates.
    let mut p = policy();
    let mut seq = epochs(&[(1.0, 0.5), (0.95, 0.52)]);
    seq.push(packet(3, 130, None));
    assert_eq!(run(&mut p, &seq).0, "wait_epoch_end");
}

#[test]
fn germination_picks_the_earliest_free_slot_and_a_fitting_blueprint() {
    let (rule, proposal) = run(&mut policy(), &epochs(&[(1.0, 0.5), (0.95, 0.52)]));
    assert_eq!(rule, "germinate_plateau");
    let Proposal::Germinate {
        slot_id,
        blueprint_id,
        parameters,
        seed_id,
        ..
    } = proposal
    else {
        panic!("{proposal:?}");
    };
    assert_eq!(
        (slot_id.as_str(), blueprint_id.as_str()),
        ("r0", "conv.residual")
    );
    assert_eq!(seed_id, "seed-r0-s126");
    assert_eq!(parameters.get("depth"), Some(&1.0));

    // r0 occupied: r1. Slot gradient norms, when reported, decide instead.
    let mut seq = epochs(&[(1.0, 0.5), (0.95, 0.52)]);
    let last = seq.pop().unwrap();
    seq.push(with_seed(last, "r0", "s0", SeedStage::Training, 0, None));
    let (_, proposal) = run(&mut policy(), &seq);
    assert!(matches!(proposal, Proposal::Germinate { ref slot_id, .. } if slot_id == "r1"));
    let mut seq = epochs(&[(1.0, 0.5), (0.95, 0.52)]);
    for p in &mut seq {
        p.slots[0].gradient_norm = Some(0.1);
        p.slots[1].gradient_norm = Some(0.9);
    }
    // By default the earliest slot, measured gradients or not…
    let (_, proposal) = run(&mut policy(), &seq);
    assert!(matches!(proposal, Proposal::Germinate { ref slot_id, .. } if slot_id == "r0"));
    // …with `slot_choice = "gradient"`, the largest one.
    let mut by_gradient = HeuristicPolicy::new(
        HeuristicConfig {
            slot_choice: tamiyo::SlotChoice::Gradient,
            ..HeuristicConfig::default()
        },
        SelectionPolicy::default(),
    );
    let (_, proposal) = run(&mut by_gradient, &seq);
    assert!(matches!(proposal, Proposal::Germinate { ref slot_id, .. } if slot_id == "r1"));
    // One free slot without a measurement: back to the earliest.
    seq.last_mut().unwrap().slots[0].gradient_norm = None;
    let (_, proposal) = run(&mut by_gradient, &seq);
    assert!(matches!(proposal, Proposal::Germinate { ref slot_id, .. } if slot_id == "r0"));
}

#[test]
fn the_seed_budget_and_the_parameter_budget_hold() {
    let mut seq = epochs(&[(1.0, 0.5), (0.95, 0.52)]);
    let last = seq.pop().unwrap();
    let last = with_seed(last, "r0", "a", SeedStage::Fossilized, 2, None);
    seq.push(with_seed(last, "r1", "b", SeedStage::Blending, 0, None));
    assert_eq!(run(&mut policy(), &seq).0, "wait_seed_budget");

    // A budget nothing fits: no candidates is an error naming every refusal.
    let mut tiny = HeuristicPolicy::new(
        HeuristicConfig {
            seed_parameter_budget: 10,
            ..HeuristicConfig::default()
        },
        SelectionPolicy::default(),
    );
    let validator = Validator::new(&leyline::LimitsConfig::default());
    let catalog = catalog();
    let seq = epochs(&[(1.0, 0.5), (0.95, 0.52)]);
    tiny.decide(
        &Observation::new(&seq[0], &validator).unwrap(),
        &catalog,
        &Cancel::new(),
    )
    .unwrap();
    let err = tiny
        .decide(
            &Observation::new(&seq[1], &validator).unwrap(),
            &catalog,
            &Cancel::new(),
        )
        .unwrap_err();
    let Error::NoCandidates { detail } = err else {
        panic!("{err}");
    };
    assert!(detail.contains("over the budget of 10"), "{detail}");
}

#[test]
fn seeds_are_culled_on_regression_or_no_improvement_and_fossilized_on_contribution() {
    // Contribution below -D: cull at once.
    let seq = vec![with_seed(
        packet(2, 126, Some((0.9, 0.7))),
        "r0",
        "s",
        SeedStage::Probationary,
        1,
        Some(-2.5),
    )];
    let (rule, proposal) = run(&mut policy(), &seq);
    assert_eq!(rule, "cull_regression");
    assert_eq!(
        proposal,
        Proposal::Cull {
            seed_id: "s".into()
        }
    );

    // K = 3 epochs without beating the accuracy at germination: cull.
    let seq = vec![
        with_seed(
            packet(2, 126, Some((0.9, 0.70))),
            "r0",
            "s",
            SeedStage::Training,
            0,
            None,
        ),
        with_seed(
            packet(5, 315, Some((0.9, 0.69))),
            "r0",
            "s",
            SeedStage::Blending,
            3,
            None,
        ),
    ];
    assert_eq!(run(&mut policy(), &seq).0, "cull_no_improvement");
    // ... but not when it improved: the policy waits (no plateau to act on).
    let seq = vec![
        with_seed(
            packet(2, 126, Some((0.9, 0.70))),
            "r0",
            "s",
            SeedStage::Training,
            0,
            None,
        ),
        with_seed(
            packet(5, 315, Some((0.5, 0.80))),
            "r0",
            "s",
            SeedStage::Blending,
            3,
            None,
        ),
    ];
    assert_eq!(run(&mut policy(), &seq).0, "wait_no_plateau");

    // Positive contribution in PROBATIONARY: fossilize, asked once.
    let p = with_seed(
        packet(3, 189, Some((0.6, 0.85))),
        "r0",
        "s",
        SeedStage::Probationary,
        1,
        Some(3.0),
    );
    let mut pol = policy();
    let (rule, proposal) = run(&mut pol, std::slice::from_ref(&p));
    assert_eq!(rule, "fossilize_contribution");
    assert_eq!(
        proposal,
        Proposal::Fossilize {
            seed_id: "s".into()
        }
    );
    // Not issued (vetoed, or lost to a deadline): proposed again.
    assert_eq!(
        run(&mut pol, std::slice::from_ref(&p)).0,
        "fossilize_contribution"
    );
    // Issued: asked once; the next fence waits.
    pol.issued(&proposal);
    assert_eq!(run(&mut pol, &[p]).0, "wait_no_plateau");
}

#[test]
fn a_cancelled_decision_is_an_error() {
    let validator = Validator::new(&leyline::LimitsConfig::default());
    let p = packet(1, 63, Some((1.0, 0.5)));
    let cancel = Cancel::new();
    cancel.cancel();
    let err = policy()
        .decide(
            &Observation::new(&p, &validator).unwrap(),
            &catalog(),
            &cancel,
        )
        .unwrap_err();
    assert!(matches!(err, Error::Cancelled { .. }), "{err}");
}

#[test]
fn a_schedule_issues_its_actions_in_order_and_bad_files_are_refused() {
    let text = r#"
[[action]]
at_step = 5
op = "germinate"
slot = "r0"
blueprint = "conv.residual"
seed = "seed-r0"
parameters = { expansion = 2 }

[[action]]
at_epoch = 2
op = "cull"
seed = "seed-r0"
"#;
    let mut script = tamiyo::ScriptedPolicy::parse(text).unwrap();
    let validator = Validator::new(&leyline::LimitsConfig::default());
    let catalog = catalog();
    let mut decide = |p: &SystemStatePacket| {
        script
            .decide(
                &Observation::new(p, &validator).unwrap(),
                &catalog,
                &Cancel::new(),
            )
            .unwrap()
    };
    assert_eq!(decide(&packet(1, 3, None)).rule, "script_nothing_due");
    // Proposed but never issued: proposed again.
    assert_eq!(decide(&packet(1, 5, None)).rule, "script");
    let out = decide(&packet(1, 6, None));
    let issued = out.proposal.clone();
    let Proposal::Germinate {
        slot_id,
        parameters,
        seed_id,
        ..
    } = out.proposal
    else {
        panic!("{:?}", out.proposal);
    };
    assert_eq!((slot_id.as_str(), seed_id.as_str()), ("r0", "seed-r0"));
    // The file's value overrides the default; the other default stays.
    assert_eq!(
        (parameters.get("expansion"), parameters.get("depth")),
        (Some(&2.0), Some(&1.0))
    );
    script.issued(&issued);
    let mut decide = |p: &SystemStatePacket| {
        script
            .decide(
                &Observation::new(p, &validator).unwrap(),
                &catalog,
                &Cancel::new(),
            )
            .unwrap()
    };
    assert_eq!(decide(&packet(2, 100, None)).rule, "script_nothing_due");
    assert_eq!(
        decide(&packet(2, 126, Some((0.5, 0.8)))).proposal,
        Proposal::Cull {
            seed_id: "seed-r0".into()
        }
    );
    for (bad, says) in [
        (
            "[[action]]\nop = \"cull\"\nseed = \"s\"",
            "exactly one of at_step",
        ),
        (
            "[[action]]\nat_step = 1\nop = \"germinate\"\nslot = \"r0\"\nblueprint = \"conv.nope\"",
            "unknown blueprint",
        ),
        (
            "[[action]]\nat_step = 1\nop = \"germinate\"\nslot = \"r0\"\nblueprint = \"conv.residual\"\nparameters = { width = 3 }",
            "no parameter \"width\"",
        ),
        (
            "[[action]]\nat_step = 1\nop = \"explode\"",
            "unknown variant",
        ),
        (
            "[[action]]\nat_step = 1\nop = \"cull\"\nseed = \"s\"\ncolour = 1",
            "unknown field",
        ),
    ] {
        let err = tamiyo::ScriptedPolicy::parse(bad).unwrap_err().to_string();
        assert!(err.contains(says), "{bad:?}: {err}");
    }
}
