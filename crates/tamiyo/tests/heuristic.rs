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
            rule: "germinate_capacity",
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
    assert_eq!(rule, "germinate_capacity");
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
    // At r0 [4,14,14] the best gain less rent is depthwise k = 5: 4.8 −
    // (104 / 3978 + 19 600 / 13 328) = +3.30, ahead of grouped (+3.12),
    // depthwise k = 3 (+2.86) and k = 7 (+1.97); conv.residual's 225 792
    // MACs (17 × the host's) cost more than any gain.
    assert_eq!(
        (slot_id.as_str(), blueprint_id.as_str()),
        ("r0", "conv.depthwise")
    );
    assert_eq!(seed_id, "seed-r0-s126");
    assert_eq!(parameters.get("kernel_size"), Some(&5.0));
    // It outputs new features: it joins the host by addition.
    let (_, proposal) = run(&mut policy(), &epochs(&[(1.0, 0.5), (0.95, 0.52)]));
    assert!(matches!(
        proposal,
        Proposal::Germinate {
            blend: leyline::v1::BlendMode::Residual,
            ..
        }
    ));

    // r0 occupied: r1. Slot gradient norms, when reported, decide instead.
    let mut seq = epochs(&[(1.0, 0.5), (0.95, 0.52)]);
    let last = seq.pop().unwrap();
    seq.push(with_seed(
        last,
        "r0",
        "s0",
        SeedStage::Fossilized,
        0,
        Some(3.0),
    ));
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
    // …with `slot_choice = "gradient"`, r1: r0's gains weigh 0.1 / 0.9.
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

/// The two-epoch plateau the germination tests share, with `edit` applied
/// to the last (deciding) packet.
fn plateau_with(edit: impl FnOnce(&mut SystemStatePacket)) -> Vec<SystemStatePacket> {
    let mut seq = epochs(&[(1.0, 0.5), (0.95, 0.52)]);
    if let Some(last) = seq.last_mut() {
        edit(last);
    }
    seq
}

#[test]
fn growth_needs_evidence_that_the_host_is_short_of_capacity() {
    struct Case {
        name: &'static str,
        edit: fn(&mut SystemStatePacket),
        rule: &'static str,
    }
    let cases = [
        Case {
            name: "20 % training error, losses close: short of capacity",
            edit: |_| {},
            rule: "germinate_capacity",
        },
        Case {
            name: "saturated: the host fits its training data (5 % wrong)",
            edit: |p| {
                p.training_metrics.insert("train_accuracy".into(), 0.95);
            },
            rule: "wait_capacity_sufficient",
        },
        Case {
            name: "no training accuracy reported: no growth on a guess",
            edit: |p| {
                p.training_metrics.remove("train_accuracy");
            },
            rule: "wait_no_capacity_evidence",
        },
        Case {
            name: "overfitting: validation loss 0.95 vs training loss 0.5",
            edit: |p| p.training_loss = Some(0.5),
            rule: "wait_overfitting",
        },
        Case {
            name: "host MACs not counted: the step-time rent cannot be weighed",
            edit: |p| {
                p.training_metrics.remove("host_forward_macs");
            },
            rule: "wait_no_cost_evidence",
        },
    ];
    for case in cases {
        let (rule, _) = run(&mut policy(), &plateau_with(case.edit));
        assert_eq!(rule, case.rule, "{}", case.name);
    }
    // With the MAC rent off, uncounted MACs do not hold growth back.
    let mut free_macs = HeuristicPolicy::new(
        HeuristicConfig {
            rent_points_per_host_macs: 0.0,
            ..HeuristicConfig::default()
        },
        SelectionPolicy::default(),
    );
    let seq = plateau_with(|p| {
        p.training_metrics.remove("host_forward_macs");
    });
    assert_eq!(run(&mut free_macs, &seq).0, "germinate_capacity");
}

#[test]
fn no_seed_is_grown_whose_expected_gain_does_not_cover_its_rent() {
    // MACs priced at 20 points per host-sized unit: depthwise k = 3 at r1
    // (3 528 MACs) would pay 5.3 for an expected 3.4, every other candidate
    // and slot more.
    let mut dear = HeuristicPolicy::new(
        HeuristicConfig {
            rent_points_per_host_macs: 20.0,
            ..HeuristicConfig::default()
        },
        SelectionPolicy::default(),
    );
    let validator = Validator::new(&leyline::LimitsConfig::default());
    let catalog = catalog();
    let seq = plateau_with(|_| {});
    let mut last = None;
    for p in &seq {
        last = Some(
            dear.decide(
                &Observation::new(p, &validator).unwrap(),
                &catalog,
                &Cancel::new(),
            )
            .unwrap(),
        );
    }
    let last = last.unwrap();
    assert_eq!(last.rule, "wait_no_paying_seed");
    assert!(last.detail.contains("rent"), "{}", last.detail);
}

/// Seed `id` at `slot` in `stage`, with the cost metrics Kasmina reports:
/// depthwise k = 5 at r0 (104 parameters, 19 600 MACs: rent 1.50 points).
fn with_priced_seed(
    p: SystemStatePacket,
    slot: &str,
    id: &str,
    stage: SeedStage,
    contribution: Option<f64>,
) -> SystemStatePacket {
    let mut p = with_seed(p, slot, id, stage, 1, contribution);
    if let Some(s) = p.seed_states.last_mut() {
        s.blueprint_id = "conv.depthwise".into();
        s.metrics.insert("parameter_count".into(), 104.0);
        s.metrics.insert("forward_macs".into(), 19_600.0);
    }
    p
}

#[test]
fn a_seed_must_pay_its_rent_to_fossilize_and_the_next_grows_only_if_the_last_paid() {
    // PROBATIONARY, +1.0 point against a rent of 1.50: culled.
    let p = with_priced_seed(
        packet(4, 252, Some((0.6, 0.85))),
        "r0",
        "s",
        SeedStage::Probationary,
        Some(1.0),
    );
    let (rule, proposal) = run(&mut policy(), &[p]);
    assert_eq!(rule, "cull_unpaid_rent");
    assert_eq!(
        proposal,
        Proposal::Cull {
            seed_id: "s".into()
        }
    );
    // +3.0: fossilize.
    let p = with_priced_seed(
        packet(4, 252, Some((0.6, 0.85))),
        "r0",
        "s",
        SeedStage::Probationary,
        Some(3.0),
    );
    assert_eq!(run(&mut policy(), &[p]).0, "fossilize_contribution");

    // The first seed, fossilized, paid (+3.0): the host is still short of
    // capacity on a plateau, so a second seed grows at r1.
    let second = |contribution: f64| {
        let mut seq = epochs(&[(1.0, 0.5), (0.95, 0.52)]);
        let last = seq.pop().unwrap();
        seq.push(with_priced_seed(
            last,
            "r0",
            "first",
            SeedStage::Fossilized,
            Some(contribution),
        ));
        seq
    };
    let (rule, proposal) = run(&mut policy(), &second(3.0));
    assert_eq!(rule, "germinate_capacity");
    assert!(matches!(proposal, Proposal::Germinate { ref slot_id, .. } if slot_id == "r1"));
    // It did not pay (+1.0 < 1.50): with `stop_after_unpaid_seeds = 1`
    // growth stops; by default (2) one more seed may try.
    let mut strict = HeuristicPolicy::new(
        HeuristicConfig {
            stop_after_unpaid_seeds: 1,
            ..HeuristicConfig::default()
        },
        SelectionPolicy::default(),
    );
    let (rule, _) = run(&mut strict, &second(1.0));
    assert_eq!(rule, "wait_last_seed_unpaid");
    assert_eq!(run(&mut policy(), &second(1.0)).0, "germinate_capacity");
    // Two in a row did not pay: growth stops by default too.
    let mut seq = second(1.0);
    let last = seq.pop().unwrap();
    let mut last = with_priced_seed(last, "r1", "second", SeedStage::Probationary, Some(0.5));
    last.global_step += 1;
    seq.push(last);
    let mut pol = policy();
    let (rule, _) = run(&mut pol, &seq[..seq.len() - 1]);
    assert_eq!(rule, "wait_no_plateau");
    // (The second seed is first seen after the first.)
    let (rule, _) = run(&mut pol, &seq[seq.len() - 1..]);
    assert_eq!(rule, "cull_unpaid_rent");
    pol.issued(&Proposal::Cull {
        seed_id: "second".into(),
    });
    // Culled and gone from the next packet: two in a row did not pay.
    let mut after = second(1.0).pop().unwrap();
    after.global_step += 2;
    let (rule, detail) = {
        let validator = Validator::new(&leyline::LimitsConfig::default());
        let out = pol
            .decide(
                &Observation::new(&after, &validator).unwrap(),
                &catalog(),
                &Cancel::new(),
            )
            .unwrap();
        (out.rule, out.detail)
    };
    assert_eq!(rule, "wait_last_seed_unpaid", "{detail}");
}
