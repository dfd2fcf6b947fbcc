//! The step API: signed commands that Kasmina's intake would accept, explicit
//! WAITs, typed errors — and a policy that sleeps past the deadline yields a
//! timeout within deadline + 1 ms whose late answer is never used.
use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{catalog, packet};
use leyline::security::{SigningKey, Verifier};
use leyline::v1::CatalogEntry;
use tamiyo::{
    Action, BlueprintCache, Cancel, Config, Error, HeuristicPolicy, Observation, Policy, Proposal,
    Proposed, TamiyoService,
};

const KEY: [u8; 32] = [7; 32];

fn cache() -> Arc<BlueprintCache> {
    Arc::new(BlueprintCache::new(
        Box::new(|| Ok(catalog())),
        Duration::from_secs(60),
    ))
}

fn service(policy: Box<dyn Policy>, deadline: Duration) -> TamiyoService {
    TamiyoService::new(
        Arc::new(Config::default()),
        policy,
        cache(),
        SigningKey::from_bytes(&KEY).unwrap(),
        &leyline::LimitsConfig::default(),
        deadline,
    )
    .unwrap()
}

#[test]
fn a_plateau_yields_a_signed_valid_germinate_command() {
    let config = Config::default();
    let mut tamiyo = service(
        Box::new(HeuristicPolicy::new(
            config.heuristic.clone(),
            urza::select::SelectionPolicy::default(),
        )),
        Duration::from_millis(500),
    );
    let first = tamiyo.step(&packet(1, 63, Some((1.0, 0.5)))).unwrap();
    assert!(matches!(first.action, Action::Wait { .. }));
    assert_eq!(first.diagnostics.rule, "wait_no_plateau");
    let decision = tamiyo.step(&packet(2, 126, Some((0.95, 0.52)))).unwrap();
    let command = decision.command().expect("a command");
    assert_eq!(decision.diagnostics.rule, "germinate_capacity");
    assert_eq!(command.generation, 126);
    assert_eq!(
        command.context.as_ref().unwrap().decided_by,
        "germinate_capacity"
    );
    let report =
        leyline::validate::Validator::new(&leyline::LimitsConfig::default()).command(command);
    assert!(report.passed(), "{:?}", report.violations());
    Verifier::new(
        SigningKey::from_bytes(&KEY).unwrap(),
        &leyline::SecurityConfig::default(),
    )
    .verify_now(command)
    .unwrap();
    assert_eq!(tamiyo.stats().commands, 1);
}

#[test]
fn an_invalid_packet_is_a_typed_error_with_a_critical_event() {
    let mut tamiyo = service(
        Box::new(HeuristicPolicy::new(
            Config::default().heuristic,
            urza::select::SelectionPolicy::default(),
        )),
        Duration::from_millis(500),
    );
    let mut p = packet(1, 63, None);
    p.training_run_id.clear();
    let err = tamiyo.step(&p).unwrap_err();
    assert!(matches!(err, Error::InvalidPacket { .. }), "{err}");
    assert_eq!(
        err.event().level,
        leyline::v1::TelemetryLevel::Critical as i32
    );
    let mut p = packet(1, 63, None);
    p.hardware = None;
    assert!(matches!(
        tamiyo.step(&p).unwrap_err(),
        Error::MissingMetric {
            name: "hardware",
            ..
        }
    ));
}

/// Sleeps, then proposes a germination (which must never be issued).
/// A policy that takes as long as it is told (also the slow service of `grpc`).
pub(crate) struct Sleepy(pub(crate) Duration);

impl Policy for Sleepy {
    fn name(&self) -> &'static str {
        "sleepy"
    }

    fn export_state(&self) -> tamiyo::Result<serde_json::Value> {
        Ok(serde_json::Value::Null)
    }

    fn import_state(&mut self, _: serde_json::Value) -> tamiyo::Result<()> {
        Ok(())
    }

    fn decide(
        &mut self,
        _: &Observation<'_>,
        _: &[CatalogEntry],
        cancel: &Cancel,
    ) -> tamiyo::Result<Proposed> {
        std::thread::sleep(self.0);
        cancel.check("after sleeping")?;
        Ok(Proposed {
            proposal: Proposal::Germinate {
                slot_id: "r0".into(),
                blueprint_id: "conv.residual".into(),
                parameters: Default::default(),
                seed_id: "late".into(),
                alpha_steps: 40,
                blend: leyline::v1::BlendMode::Convex,
            },
            rule: "late",
            detail: String::new(),
        })
    }
}

#[test]
fn a_policy_past_its_deadline_times_out_promptly_and_its_answer_is_discarded() {
    let deadline = Duration::from_millis(5);
    let mut tamiyo = service(Box::new(Sleepy(Duration::from_millis(30))), deadline);
    // Scheduler wake-up jitter on a loaded 2-core CI machine is outside the
    // service's control: the median of five steps must be within deadline +
    // 1 ms, and every one well inside the policy's 30 ms.
    let mut took = Vec::new();
    for i in 0..5 {
        std::thread::sleep(Duration::from_millis(40));
        let started = Instant::now();
        let err = tamiyo.step(&packet(1, 10 + i, None)).unwrap_err();
        took.push(started.elapsed());
        assert!(
            matches!(
                err,
                Error::DeadlineExceeded {
                    stage: "policy",
                    ..
                }
            ),
            "{err}"
        );
    }
    took.sort();
    assert!(took[2] < deadline + Duration::from_millis(1), "{took:?}");
    assert!(took[4] < Duration::from_millis(25), "{took:?}");
    // The worker finishes late; its answer (cancelled) is thrown away, and the
    // next step is not served with it.
    std::thread::sleep(Duration::from_millis(60));
    let err = tamiyo.step(&packet(1, 30, None)).unwrap_err();
    assert!(matches!(err, Error::DeadlineExceeded { .. }));
    assert!(tamiyo.stats().late_discarded >= 1, "{:?}", tamiyo.stats());
    assert_eq!(tamiyo.stats().commands, 0);
    assert_eq!(tamiyo.stats().deadline_misses, 6);
}

/// Proposes culling one named seed.
struct Culler(&'static str);

impl Policy for Culler {
    fn name(&self) -> &'static str {
        "culler"
    }

    fn export_state(&self) -> tamiyo::Result<serde_json::Value> {
        Ok(serde_json::Value::Null)
    }

    fn import_state(&mut self, _: serde_json::Value) -> tamiyo::Result<()> {
        Ok(())
    }

    fn decide(
        &mut self,
        _: &Observation<'_>,
        _: &[CatalogEntry],
        _: &Cancel,
    ) -> tamiyo::Result<Proposed> {
        Ok(Proposed {
            proposal: Proposal::Cull {
                seed_id: self.0.into(),
            },
            rule: "cull",
            detail: String::new(),
        })
    }
}

#[test]
fn culls_carry_the_seeds_slot_and_blueprint_and_unknown_seeds_are_refused() {
    let p = common::with_seed(
        packet(2, 100, None),
        "r1",
        "s",
        leyline::v1::SeedStage::Blending,
        1,
        None,
    );
    let mut tamiyo = service(Box::new(Culler("s")), Duration::from_millis(500));
    let decision = tamiyo.step(&p).unwrap();
    let command = decision.command().unwrap();
    let Some(leyline::v1::adaptation_command::Payload::SeedOperation(op)) = &command.payload else {
        panic!("{command:?}");
    };
    assert_eq!(
        (op.slot_id.as_str(), op.blueprint_id.as_str()),
        ("r1", "conv.residual")
    );
    let mut tamiyo = service(Box::new(Culler("ghost")), Duration::from_millis(500));
    assert!(matches!(
        tamiyo.step(&p).unwrap_err(),
        Error::InvalidCommand { .. }
    ));
}
