//! What the growth tests share: a scripted controller that germinates seeds
//! at given steps, and a Kasmina wired to a temporary Urza library.

#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use candle_core::Device;
use kasmina::CommandIntake;
use kasmina::GateConfig;
use kasmina::{Kasmina, LibrarySource, SlotSpec};
use leyline::security::{SigningKey, sign};
use leyline::v1::adaptation_command::Payload;
use leyline::v1::{
    AdaptationCommand, AlphaSchedule, AlphaScheduleKind, BlendConfig, BlendMode,
    CommandSeedOperation, CommandType, SeedOperation,
};
use tolaria::fence::{ControlHook, FenceContext, FenceDecision, FenceError};

/// The key the script signs with and Kasmina verifies with.
pub(crate) const KEY: [u8; 32] = [0x42; 32];

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Germinates `conv.residual` (depth 1, expansion 4) at `slot` as `seed_id`
/// at the first fence at or after `at_step`, for each planned entry.
pub(crate) struct Script {
    plan: Vec<(u64, &'static str, &'static str)>,
}

impl Script {
    /// A script of (step, slot, seed id).
    pub(crate) fn new(plan: Vec<(u64, &'static str, &'static str)>) -> Self {
        Self { plan }
    }
}

impl ControlHook for Script {
    fn at_fence(&mut self, c: &FenceContext<'_>) -> Result<FenceDecision, FenceError> {
        let due: Vec<_> = self
            .plan
            .iter()
            .filter(|(step, _, _)| c.global_step >= *step)
            .copied()
            .collect();
        self.plan.retain(|(step, _, _)| c.global_step < *step);
        let mut commands = Vec::new();
        for (_, slot, seed) in due {
            let mut command = AdaptationCommand {
                version: 1,
                command_id: format!("germinate-{slot}-{}", c.global_step),
                command_type: CommandType::Seed as i32,
                target_seed_id: seed.into(),
                issued_at_ms: now_ms(),
                deadline_at_ms: now_ms() + 10_000,
                issued_by: "script".into(),
                training_run_id: "growth".into(),
                payload: Some(Payload::SeedOperation(CommandSeedOperation {
                    operation: SeedOperation::Germinate as i32,
                    blueprint_id: "conv.residual".into(),
                    parameters: [("depth".to_string(), 1.0), ("expansion".to_string(), 4.0)].into(),
                    slot_id: slot.into(),
                    mesh_layers: vec![slot.into()],
                    blend: Some(BlendConfig {
                        mode: BlendMode::Convex as i32,
                        ..BlendConfig::default()
                    }),
                    alpha_schedule: Some(AlphaSchedule {
                        kind: AlphaScheduleKind::Linear as i32,
                        steps: 40,
                        temperature: 0.0,
                    }),
                    ..CommandSeedOperation::default()
                })),
                ..AdaptationCommand::default()
            };
            sign(&SigningKey::from_bytes(&KEY).unwrap(), &mut command);
            commands.push(command);
        }
        Ok(FenceDecision {
            commands,
            ..FenceDecision::proceed()
        })
    }
}

/// Kasmina for `slots` with `gates`, loading from `library`.
pub(crate) fn kasmina(
    slots: &[SlotSpec],
    gates: GateConfig,
    library: &Arc<urza::Library>,
    seed: u64,
) -> Kasmina {
    let intake = CommandIntake::new(
        SigningKey::from_bytes(&KEY).unwrap(),
        &leyline::Config::default(),
    );
    let source = LibrarySource::new(Arc::clone(library), Device::Cpu);
    Kasmina::new(slots, gates, intake, Box::new(source), seed)
}
