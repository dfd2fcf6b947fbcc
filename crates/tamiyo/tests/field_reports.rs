//! Field-report outcomes come from measured deltas after the observation
//! window, never at issue time; the WAL keeps them.
use crate::common;

use common::{packet, with_seed};
use leyline::v1::adaptation_command::Payload;
use leyline::v1::{
    AdaptationCommand, CommandSeedOperation, FieldReportOutcome, SeedOperation, SeedStage,
};
use tamiyo::FieldReportConfig;
use tamiyo::field_reports::{OutcomeTracker, Wal};

fn germinate(seed: &str) -> AdaptationCommand {
    AdaptationCommand {
        command_id: format!("cmd-{seed}"),
        target_seed_id: seed.into(),
        training_run_id: "run".into(),
        issued_at_ms: leyline::unix_now_ms(),
        payload: Some(Payload::SeedOperation(CommandSeedOperation {
            operation: SeedOperation::Germinate as i32,
            blueprint_id: "conv.residual".into(),
            slot_id: "r0".into(),
            ..CommandSeedOperation::default()
        })),
        ..AdaptationCommand::default()
    }
}

/// The outcome of a germination at 70 % followed by two epoch ends at
/// `then` (accuracy, 0–1), the seed alive throughout.
fn outcome_after(then: [f64; 2]) -> (FieldReportOutcome, f64) {
    let mut t = OutcomeTracker::new(FieldReportConfig::default(), "heuristic");
    t.observe(&packet(2, 126, Some((0.9, 0.70))));
    t.track(&germinate("s"));
    t.observe(&with_seed(
        packet(3, 150, None),
        "r0",
        "s",
        SeedStage::Training,
        0,
        None,
    ));
    assert!(
        t.take_closed().is_empty(),
        "nothing is decided at issue time"
    );
    t.observe(&with_seed(
        packet(3, 189, Some((0.8, then[0]))),
        "r0",
        "s",
        SeedStage::Blending,
        1,
        None,
    ));
    assert!(t.take_closed().is_empty(), "the window is two epoch ends");
    t.observe(&with_seed(
        packet(4, 252, Some((0.7, then[1]))),
        "r0",
        "s",
        SeedStage::Probationary,
        2,
        Some(1.5),
    ));
    let closed = t.take_closed();
    assert_eq!(closed.len(), 1);
    let r = &closed[0];
    assert_eq!((r.command_id.as_str(), r.seed_id.as_str()), ("cmd-s", "s"));
    assert_eq!(r.metrics["seed_contribution_points"], 1.5);
    (
        FieldReportOutcome::try_from(r.outcome).unwrap(),
        r.metrics["accuracy_delta_points"],
    )
}

#[test]
fn outcomes_follow_the_measured_delta_over_the_window() {
    let (o, d) = outcome_after([0.72, 0.75]);
    assert_eq!(o, FieldReportOutcome::Success);
    assert!((d - 5.0).abs() < 1e-9, "{d}");
    assert_eq!(outcome_after([0.70, 0.702]).0, FieldReportOutcome::Neutral);
    assert_eq!(
        outcome_after([0.69, 0.68]).0,
        FieldReportOutcome::Regression
    );
}

#[test]
fn a_seed_that_is_culled_or_never_appears_is_aborted() {
    let mut t = OutcomeTracker::new(FieldReportConfig::default(), "heuristic");
    t.observe(&packet(1, 63, Some((0.9, 0.70))));
    t.track(&germinate("culled"));
    t.track(&germinate("ghost"));
    t.observe(&with_seed(
        packet(2, 80, None),
        "r0",
        "culled",
        SeedStage::Embargoed,
        0,
        None,
    ));
    let closed = t.take_closed();
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].seed_id, "culled");
    assert_eq!(closed[0].outcome, FieldReportOutcome::Aborted as i32);
    t.observe(&packet(2, 126, Some((0.8, 0.72))));
    t.observe(&packet(3, 189, Some((0.7, 0.75))));
    let closed = t.take_closed();
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].seed_id, "ghost");
    assert_eq!(closed[0].outcome, FieldReportOutcome::Aborted as i32);
    assert!(
        closed[0].notes.contains("never appeared"),
        "{}",
        closed[0].notes
    );
    assert_eq!(t.open_reports(), 0);

    // Decided reports go into the WAL and come back from it.
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, loaded) = Wal::open(dir.path().join("reports.wal")).unwrap();
    assert!(loaded.reports.is_empty());
    wal.append(&closed[0]).unwrap();
    drop(wal);
    let (_, loaded) = Wal::open(dir.path().join("reports.wal")).unwrap();
    assert_eq!(loaded.reports, closed);
}
