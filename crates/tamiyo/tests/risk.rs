//! Every risk rule, table-tested, and conservative mode's hysteresis.
use crate::common;

use common::{catalog, packet, with_seed};
use leyline::v1::{BlendMode, SeedStage, SystemStatePacket};
use leyline::validate::Validator;
use tamiyo::RiskConfig;
use tamiyo::risk::{RiskEngine, Verdict};
use tamiyo::{Observation, Proposal};

fn germinate(blueprint: &str) -> Proposal {
    Proposal::Germinate {
        slot_id: "r0".into(),
        blueprint_id: blueprint.into(),
        parameters: Default::default(),
        seed_id: "s".into(),
        alpha_steps: 40,
        blend: BlendMode::Convex,
    }
}

/// The defaults with the wall-clock rules on (they are opt-in).
fn clocked() -> RiskConfig {
    RiskConfig {
        wall_clock_rules: true,
        ..RiskConfig::default()
    }
}

fn assess(
    engine: &mut RiskEngine,
    p: &SystemStatePacket,
    proposal: Proposal,
) -> tamiyo::risk::Assessment {
    let validator = Validator::new(&leyline::LimitsConfig::default());
    engine.assess(
        &Observation::new(p, &validator).unwrap(),
        proposal,
        &catalog(),
    )
}

fn rules(a: &tamiyo::risk::Assessment) -> Vec<&'static str> {
    a.findings.iter().map(|f| f.rule).collect()
}

#[test]
fn each_rule_fires_on_its_condition_alone() {
    type Mutate = fn(&mut SystemStatePacket);
    let cases: [(&str, Mutate, &str, Verdict); 8] = [
        ("healthy", |_| {}, "conv.residual", Verdict::Allow),
        (
            "coverage",
            |p| {
                p.training_loss = None;
                p.training_metrics.clear();
                p.hardware.as_mut().unwrap().total_memory_gib = 0.0;
            },
            "conv.residual",
            Verdict::Veto,
        ),
        (
            "isolation",
            |p| {
                let mut q = with_seed(p.clone(), "r1", "x", SeedStage::Training, 0, None);
                q.seed_states[0]
                    .metrics
                    .insert("isolation_violations".into(), 2.0);
                *p = q;
            },
            "conv.residual",
            Verdict::Veto,
        ),
        (
            "memory",
            |p| p.hardware.as_mut().unwrap().available_memory_gib = 0.5,
            "conv.residual",
            Verdict::Veto,
        ),
        (
            "utilization",
            |p| p.hardware.as_mut().unwrap().utilization_percent = Some(99.5),
            "conv.residual",
            Verdict::Veto,
        ),
        (
            "risky blueprint",
            |_| {},
            "conv.spatial_attention",
            Verdict::Veto,
        ),
        (
            "slow fence",
            |p| {
                p.training_metrics.insert("last_hook_ms".into(), 25.0);
            },
            "conv.residual",
            Verdict::Veto,
        ),
        (
            "experimental blueprint",
            |_| {},
            "conv.heavy",
            Verdict::Downgrade("alpha ramp doubled (experimental blueprint)".into()),
        ),
    ];
    let expected_rule = [
        None,
        Some("degraded_coverage"),
        Some("isolation_violations"),
        Some("device_pressure"),
        Some("device_pressure"),
        Some("blueprint_risk"),
        Some("hook_latency"),
        Some("blueprint_experimental"),
    ];
    for ((name, mutate, blueprint, verdict), rule) in cases.into_iter().zip(expected_rule) {
        let mut engine = RiskEngine::new(clocked());
        let mut p = packet(2, 100, None);
        mutate(&mut p);
        let a = assess(&mut engine, &p, germinate(blueprint));
        assert_eq!(a.verdict, verdict, "{name}: {:?}", a.findings);
        match rule {
            None => assert!(a.findings.is_empty(), "{name}: {:?}", a.findings),
            Some(rule) => assert!(rules(&a).contains(&rule), "{name}: {:?}", a.findings),
        }
    }
    // The downgrade doubles the ramp.
    let a = assess(
        &mut RiskEngine::new(clocked()),
        &packet(2, 100, None),
        germinate("conv.heavy"),
    );
    assert!(matches!(
        a.proposal,
        Proposal::Germinate {
            alpha_steps: 80,
            ..
        }
    ));
    // An unknown or quarantined blueprint is vetoed.
    let a = assess(
        &mut RiskEngine::new(clocked()),
        &packet(2, 100, None),
        germinate("conv.nonexistent"),
    );
    assert_eq!(
        (a.verdict.clone(), rules(&a)),
        (Verdict::Veto, vec!["blueprint_quarantined"])
    );
}

#[test]
fn spikes_are_judged_against_moving_averages_and_culls_are_never_vetoed() {
    let mut engine = RiskEngine::new(clocked());
    let calm = packet(2, 100, None);
    for _ in 0..5 {
        assert_eq!(
            assess(&mut engine, &calm, germinate("conv.residual")).verdict,
            Verdict::Allow
        );
    }
    let mut spike = calm.clone();
    spike.training_loss = Some(10.0);
    let a = assess(&mut engine, &spike, germinate("conv.residual"));
    assert_eq!(
        (a.verdict.clone(), rules(&a)),
        (Verdict::Veto, vec!["loss_spike"])
    );
    let a = assess(
        &mut engine,
        &spike,
        Proposal::Cull {
            seed_id: "s".into(),
        },
    );
    assert_eq!(a.verdict, Verdict::Allow);

    let mut engine = RiskEngine::new(clocked());
    assess(&mut engine, &calm, germinate("conv.residual"));
    let mut slow = calm.clone();
    slow.training_metrics.insert("step_ms".into(), 45.0);
    let a = assess(&mut engine, &slow, germinate("conv.residual"));
    assert_eq!(
        (a.verdict.clone(), rules(&a)),
        (Verdict::Veto, vec!["latency_spike"])
    );
}

#[test]
fn conservative_mode_needs_a_cool_down_and_healthy_fences_to_end() {
    let config = RiskConfig {
        cool_down_fences: 2,
        healthy_fences: 3,
        ..clocked()
    };
    let mut engine = RiskEngine::new(config);
    let calm = packet(2, 100, None);
    let mut hot = calm.clone();
    hot.hardware.as_mut().unwrap().available_memory_gib = 0.1;
    assess(&mut engine, &calm, germinate("conv.residual"));
    let a = assess(&mut engine, &hot, germinate("conv.residual"));
    assert!(a.conservative);
    // Two healthy fences: still conservative, germination vetoed.
    for _ in 0..2 {
        let a = assess(&mut engine, &calm, germinate("conv.residual"));
        assert!(a.conservative);
        assert_eq!(
            (a.verdict.clone(), rules(&a)),
            (Verdict::Veto, vec!["conservative_mode"])
        );
    }
    // A hazard on the way restarts the count.
    assess(&mut engine, &hot, germinate("conv.residual"));
    for _ in 0..2 {
        assert!(assess(&mut engine, &calm, germinate("conv.residual")).conservative);
    }
    // The third healthy fence in a row (cool-down long past) ends it.
    let a = assess(&mut engine, &calm, germinate("conv.residual"));
    assert!(!a.conservative);
    assert_eq!(a.verdict, Verdict::Allow);
}

#[test]
fn a_lasting_level_change_becomes_the_new_average() {
    let config = RiskConfig {
        rebase_after_fences: 3,
        ..clocked()
    };
    let mut engine = RiskEngine::new(config);
    let calm = packet(2, 100, None);
    assess(
        &mut engine,
        &calm,
        Proposal::Cull {
            seed_id: "s".into(),
        },
    );
    let mut slow = calm.clone();
    slow.training_metrics.insert("step_ms".into(), 45.0);
    // Three fences in a row are spikes ...
    for _ in 0..3 {
        let a = assess(
            &mut engine,
            &slow,
            Proposal::Cull {
                seed_id: "s".into(),
            },
        );
        assert_eq!(rules(&a), vec!["latency_spike"]);
    }
    // ... the fourth is the new normal: no hazard.
    let a = assess(
        &mut engine,
        &slow,
        Proposal::Cull {
            seed_id: "s".into(),
        },
    );
    assert!(!rules(&a).contains(&"latency_spike"), "{:?}", a.findings);
    let a = assess(
        &mut engine,
        &slow,
        Proposal::Cull {
            seed_id: "s".into(),
        },
    );
    assert!(!rules(&a).contains(&"latency_spike"), "{:?}", a.findings);
}

#[test]
fn a_seeds_budgeted_step_time_is_not_a_latency_spike_but_a_real_spike_still_is() {
    // A live seed costing 2.5 × the host's MACs: work budgeted 3.5 units.
    let seeded = |ms: f64| {
        let mut p = with_seed(
            packet(3, 200, None),
            "r0",
            "s",
            SeedStage::Fossilized,
            1,
            None,
        );
        p.training_metrics.insert("step_ms".into(), ms);
        if let Some(s) = p.seed_states.last_mut() {
            s.metrics
                .insert("forward_macs".into(), 2.5 * common::HOST_MACS);
        }
        p
    };
    let mut engine = RiskEngine::new(clocked());
    assess(
        &mut engine,
        &packet(2, 100, None),
        germinate("conv.depthwise"),
    );
    // 10 ms → 32 ms is 3.2 × the average, but 9.1 ms per budgeted unit: the
    // second seed is not vetoed for the first one's expected cost.
    let a = assess(&mut engine, &seeded(32.0), germinate("conv.depthwise"));
    assert_eq!((a.verdict.clone(), rules(&a)), (Verdict::Allow, vec![]));
    // 120 ms is 34 ms per unit, 3.4 × the average: a spike.
    let a = assess(&mut engine, &seeded(120.0), germinate("conv.depthwise"));
    assert_eq!(
        (a.verdict.clone(), rules(&a)),
        (Verdict::Veto, vec!["latency_spike"])
    );
    assert!(
        a.findings[0].detail.contains("per host-sized unit"),
        "{:?}",
        a.findings
    );
    // Without the host's MACs the same 32 ms is judged as the host's own.
    let mut engine = RiskEngine::new(clocked());
    assess(
        &mut engine,
        &packet(2, 100, None),
        germinate("conv.depthwise"),
    );
    let mut uncounted = seeded(32.0);
    uncounted.training_metrics.remove("host_forward_macs");
    let a = assess(&mut engine, &uncounted, germinate("conv.depthwise"));
    assert_eq!(rules(&a), vec!["latency_spike"]);
}

/// Issue #19 item 4: by default no rule reads the clock, so a step ten
/// times slower than its average and a fence far over its budget (a loaded
/// machine) change no decision.
#[test]
fn by_default_no_decision_depends_on_measured_time() {
    let mut engine = RiskEngine::new(RiskConfig::default());
    for step in 1..=5 {
        assess(
            &mut engine,
            &packet(2, 100 * step, None),
            germinate("conv.residual"),
        );
    }
    let mut slow = packet(2, 600, None);
    slow.training_metrics.insert("step_ms".into(), 100.0);
    slow.training_metrics.insert("last_hook_ms".into(), 1e6);
    let a = assess(&mut engine, &slow, germinate("conv.residual"));
    assert_eq!(a.verdict, Verdict::Allow, "{:?}", a.findings);
    // The same packet with the wall-clock rules on: both fire.
    let mut clocked_engine = RiskEngine::new(clocked());
    for step in 1..=5 {
        assess(
            &mut clocked_engine,
            &packet(2, 100 * step, None),
            germinate("conv.residual"),
        );
    }
    let a = assess(&mut clocked_engine, &slow, germinate("conv.residual"));
    assert_eq!(
        rules(&a),
        vec!["latency_spike", "hook_latency"],
        "{:?}",
        a.findings
    );
}
