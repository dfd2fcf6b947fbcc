//! The controller's state in a checkpoint (issue #19 item 3): a service that
//! imports what another exported after any prefix of a run decides the rest
//! exactly as the uninterrupted one; another policy's or another schedule's
//! state is refused and changes nothing.
use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::{catalog, packet, with_seed};
use leyline::security::SigningKey;
use leyline::v1::adaptation_command::Payload;
use leyline::v1::{SeedStage, SystemStatePacket};
use tamiyo::{
    Action, BlueprintCache, Config, ControllerState, Error, HeuristicPolicy, Policy,
    ScriptedPolicy, TamiyoService,
};

fn heuristic() -> Box<dyn Policy> {
    Box::new(HeuristicPolicy::new(
        Config::default().heuristic,
        urza::select::SelectionPolicy::default(),
    ))
}

fn service(policy: Box<dyn Policy>) -> TamiyoService {
    TamiyoService::new(
        Arc::new(Config::default()),
        policy,
        Arc::new(BlueprintCache::new(
            Box::new(|| Ok(catalog())),
            Duration::from_secs(60),
        )),
        SigningKey::from_bytes(&[7; 32]).unwrap(),
        &leyline::LimitsConfig::default(),
        Duration::from_secs(5),
    )
    .unwrap()
}

/// A seed the heuristic grew at r0, priced as Kasmina reports it.
fn seeded(p: SystemStatePacket, stage: SeedStage, contribution: Option<f64>) -> SystemStatePacket {
    let mut p = with_seed(p, "r0", "seed-r0-s126", stage, 1, contribution);
    if let Some(s) = p.seed_states.last_mut() {
        s.blueprint_id = "conv.depthwise".into();
        s.metrics.insert("parameter_count".into(), 104.0);
        s.metrics.insert("forward_macs".into(), 19_600.0);
    }
    p
}

/// A growing run's fences: a plateau, a germination, the seed's lifecycle
/// with a step-time spike and a loss spike on the way (the risk engine's
/// averages and conservative mode matter), then another plateau.
fn fences() -> Vec<SystemStatePacket> {
    let with = |mut p: SystemStatePacket, step_ms: f64, loss: f64| {
        p.training_metrics.insert("step_ms".into(), step_ms);
        p.training_loss = Some(loss);
        p
    };
    vec![
        with(packet(1, 63, Some((1.0, 0.5))), 10.0, 0.9),
        with(packet(2, 126, Some((0.95, 0.52))), 10.0, 0.8),
        with(
            seeded(packet(2, 150, None), SeedStage::Training, None),
            30.0,
            0.8,
        ),
        with(
            seeded(packet(3, 189, Some((0.9, 0.6))), SeedStage::Training, None),
            30.0,
            4.0,
        ),
        with(
            seeded(packet(3, 220, None), SeedStage::Blending, Some(1.0)),
            31.0,
            0.7,
        ),
        with(
            seeded(
                packet(4, 252, Some((0.7, 0.8))),
                SeedStage::Probationary,
                Some(3.0),
            ),
            31.0,
            0.6,
        ),
        with(
            seeded(
                packet(5, 315, Some((0.69, 0.8))),
                SeedStage::Fossilized,
                Some(3.0),
            ),
            31.0,
            0.6,
        ),
        with(
            seeded(
                packet(6, 378, Some((0.69, 0.805))),
                SeedStage::Fossilized,
                Some(3.0),
            ),
            31.0,
            0.6,
        ),
        with(
            seeded(
                packet(7, 441, Some((0.68, 0.806))),
                SeedStage::Fossilized,
                Some(3.0),
            ),
            31.0,
            0.6,
        ),
    ]
}

/// What a step decided, without its random ids, timestamps and signature.
fn decided(tamiyo: &mut TamiyoService, p: &SystemStatePacket) -> String {
    let d = tamiyo.step(p).unwrap();
    let action = match &d.action {
        Action::Wait { reason } => format!("WAIT {reason}"),
        Action::Command(c) => {
            let Some(Payload::SeedOperation(op)) = &c.payload else {
                panic!("not a seed command: {c:?}");
            };
            format!(
                "{} {} at {} ({}, {:?})",
                op.operation, c.target_seed_id, op.slot_id, op.blueprint_id, op.parameters
            )
        }
    };
    format!(
        "{} | {} | {:?} | conservative {}",
        d.diagnostics.rule, action, d.diagnostics.findings, d.diagnostics.conservative
    )
}

/// Through a JSON text, as a checkpoint's manifest holds it.
fn round_trip(state: &ControllerState) -> ControllerState {
    serde_json::from_str(&serde_json::to_string_pretty(state).unwrap()).unwrap()
}

#[test]
fn a_service_resumed_after_any_fence_decides_the_rest_exactly_as_the_uninterrupted_one() {
    let fences = fences();
    let mut whole = service(heuristic());
    let uninterrupted: Vec<String> = fences.iter().map(|p| decided(&mut whole, p)).collect();
    assert!(
        uninterrupted
            .iter()
            .any(|d| d.starts_with("germinate_capacity")),
        "the run must grow: {uninterrupted:#?}"
    );
    let mut forgetful_differs = false;
    for k in 1..fences.len() {
        let mut first = service(heuristic());
        for p in &fences[..k] {
            decided(&mut first, p);
        }
        let state = round_trip(&first.export_state().unwrap());
        drop(first);
        let mut resumed = service(heuristic());
        resumed.import_state(state).unwrap();
        let rest: Vec<String> = fences[k..]
            .iter()
            .map(|p| decided(&mut resumed, p))
            .collect();
        assert_eq!(rest, uninterrupted[k..], "resumed after fence {k}");
        assert_eq!(resumed.stats().steps, fences.len() as u64);
        // Without the state, a resumed controller decides otherwise.
        let mut fresh = service(heuristic());
        let forgot: Vec<String> = fences[k..].iter().map(|p| decided(&mut fresh, p)).collect();
        forgetful_differs |= forgot != uninterrupted[k..];
    }
    assert!(
        forgetful_differs,
        "no fence where the state matters: the test proves nothing"
    );
}

#[test]
fn another_policys_or_another_schedules_state_is_refused_and_changes_nothing() {
    let mut grown = service(heuristic());
    for p in &fences()[..3] {
        decided(&mut grown, p);
    }
    let heuristic_state = grown.export_state().unwrap();

    let schedule = |text: &str| Box::new(ScriptedPolicy::parse(text).unwrap());
    let two = "[[action]]\nat_epoch = 1\nop = \"germinate\"\nslot = \"r0\"\nblueprint = \"conv.depthwise\"\n\
               [[action]]\nat_epoch = 3\nop = \"cull\"\nseed = \"seed-r0-s126\"\n";
    let mut scripted = service(schedule(two));
    let err = scripted.import_state(heuristic_state.clone()).unwrap_err();
    assert!(matches!(err, Error::State(_)), "{err}");
    assert!(err.to_string().contains("heuristic"), "{err}");

    // A schedule's position is refused under another schedule.
    let first = fences()[0].clone();
    let mut ran = service(schedule(two));
    let did = decided(&mut ran, &first);
    assert!(did.contains("script"), "{did}");
    let position = ran.export_state().unwrap();
    let one = "[[action]]\nat_epoch = 9\nop = \"cull\"\nseed = \"s\"\n";
    let mut other = service(schedule(one));
    let err = other.import_state(position.clone()).unwrap_err();
    assert!(err.to_string().contains("2 action(s)"), "{err}");
    // Under the same schedule it continues: the germination is done, the
    // cull is next (at epoch 3); without the state the germination would
    // be proposed again.
    let mut same = service(schedule(two));
    same.import_state(position).unwrap();
    let cull = leyline::v1::SeedOperation::Cull as i32;
    let next = decided(&mut same, &fences()[3]);
    assert!(next.contains(&format!("| {cull} seed-r0-s126")), "{next}");
    let again = decided(&mut service(schedule(two)), &fences()[3]);
    assert!(!again.contains(&format!("| {cull} ")), "{again}");

    // A damaged field-report state is refused, and the policy is unchanged.
    let mut damaged = heuristic_state;
    damaged.field_reports.done.push("zz".into());
    let mut fresh = service(heuristic());
    assert!(matches!(fresh.import_state(damaged), Err(Error::State(_))));
    assert_eq!(fresh.stats().steps, 0);
    assert!(decided(&mut fresh, &fences()[0]).starts_with("wait_no_plateau"));
}
