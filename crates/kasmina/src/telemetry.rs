//! Per-step seed telemetry: one packet per active seed (stage, α, seed loss,
//! seed gradient norm and its share of the whole gradient, time in stage,
//! isolation violations, the latest counterfactual contribution) and one
//! global packet (active seeds, the α summary — mean, p95 and the fraction of
//! effective α values pinned at 0 or 1 — and gate pass/fail counts).

use leyline::telemetry::PacketBuilder;
use leyline::v1::{SeedStage, TelemetryPacket};

use crate::blend::Blend;
use crate::engine::Kasmina;

/// What the training loop measured for one seed this step.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SeedSignal {
    /// Slot of the seed.
    pub slot_id: String,
    /// L2 norm of the seed's gradient.
    pub grad_norm: f64,
}

/// α statistics over every effective α value of the blending seeds (a
/// CHANNEL seed contributes one value per channel).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct AlphaSummary {
    /// Mean.
    pub mean: f64,
    /// 95th percentile.
    pub p95: f64,
    /// Fraction of values at exactly 0 or 1 (clamped ends of the ramp).
    pub clamped_fraction: f64,
    /// Values summarised.
    pub count: usize,
}

/// The α summary of `kasmina`'s seeds at BLENDING and later.
pub(crate) fn alpha_summary(kasmina: &Kasmina) -> AlphaSummary {
    let mut values: Vec<f64> = Vec::new();
    for seed in kasmina.slots().slots().filter_map(|s| s.seed()) {
        if !matches!(
            seed.stage(),
            SeedStage::Blending
                | SeedStage::Shadowing
                | SeedStage::Probationary
                | SeedStage::Fossilized
        ) {
            continue;
        }
        match seed.blend() {
            Blend::Channel(per_channel) => {
                values.extend(per_channel.iter().map(|a| f64::from(*a) * seed.alpha()));
            }
            Blend::Convex | Blend::Residual | Blend::Confidence(_) => values.push(seed.alpha()),
        }
    }
    if values.is_empty() {
        return AlphaSummary::default();
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    AlphaSummary {
        mean: values.iter().sum::<f64>() / n as f64,
        p95: values[((0.95 * n as f64).ceil() as usize).clamp(1, n) - 1],
        clamped_fraction: values.iter().filter(|a| **a <= 0.0 || **a >= 1.0).count() as f64
            / n as f64,
        count: n,
    }
}

/// The step's packets: one per occupied slot, then the global one.
/// `total_grad_norm` is the L2 norm of every gradient of the step (host and
/// seeds), for the seeds' shares.
pub(crate) fn step_packets(
    kasmina: &Kasmina,
    run_id: &str,
    step: u64,
    now_ms: u64,
    signals: &[SeedSignal],
    total_grad_norm: f64,
    loss: f64,
) -> Vec<TelemetryPacket> {
    let mut packets = Vec::new();
    let mut active = 0u32;
    for slot in kasmina.slots().slots() {
        let Some(seed) = slot.seed() else { continue };
        active += 1;
        let id = &slot.spec().id;
        let grad = signals
            .iter()
            .find(|s| &s.slot_id == id)
            .map_or(0.0, |s| s.grad_norm);
        let share = if total_grad_norm > 0.0 {
            (grad / total_grad_norm).powi(2)
        } else {
            0.0
        };
        let mut packet = PacketBuilder::new("kasmina", run_id, now_ms)
            .global_step(step)
            .seed(seed.id())
            .metric("seed.stage", f64::from(seed.stage() as i32), "enum")
            .metric("seed.alpha", seed.alpha(), "ratio")
            .metric("seed.loss", loss, "nats")
            .metric("seed.grad_norm", grad, "l2")
            .metric("seed.grad_share", share, "ratio");
        if let Some(e) = kasmina.lifecycle().evidence(id) {
            packet = packet
                .metric("seed.steps_in_stage", e.steps_in_stage as f64, "steps")
                .metric(
                    "seed.isolation_violations",
                    e.isolation_violations as f64,
                    "count",
                );
            if let Some(cf) = e.counterfactual {
                packet = packet.metric("seed.contribution", cf.contribution(), "points");
            }
        }
        packets.push(packet.build());
    }
    let alpha = alpha_summary(kasmina);
    let (passed, failed) = kasmina.lifecycle().gate_counts();
    packets.push(
        PacketBuilder::new("kasmina", run_id, now_ms)
            .global_step(step)
            .metric("seeds.active", f64::from(active), "count")
            .metric("alpha.mean", alpha.mean, "ratio")
            .metric("alpha.p95", alpha.p95, "ratio")
            .metric("alpha.clamped_fraction", alpha.clamped_fraction, "ratio")
            .metric("gates.passed", passed as f64, "count")
            .metric("gates.failed", failed as f64, "count")
            .build(),
    );
    packets
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use candle_core::Device;
    use esper_ops::ParamInit;
    use leyline::security::SigningKey;
    use urza::{BlueprintModule, Parameters, Weights};

    use super::*;
    use crate::alpha::{AlphaRamp, RampShape};
    use crate::gates::GateConfig;
    use crate::host::SlotSpec;
    use crate::intake::CommandIntake;
    use crate::seed::Seed;
    use crate::{KernelSource, Lifecycle};

    /// Builds modules from the catalog directly (tests only).
    struct Build;

    impl KernelSource for Build {
        fn load(
            &mut self,
            blueprint_id: &str,
            params: &Parameters,
            slot: &urza::SlotShape,
            init_seed: u64,
        ) -> urza::Result<(String, BlueprintModule)> {
            let def = urza::definition(blueprint_id).ok_or(urza::Error::UnknownBlueprint {
                blueprint_id: blueprint_id.into(),
            })?;
            let mut init = ParamInit::new(init_seed, Device::Cpu);
            Ok((
                "built".into(),
                def.build(params, slot, Weights::Init(&mut init))?,
            ))
        }
    }

    #[test]
    fn packets_describe_every_seed_and_the_alpha_summary() {
        let specs = [
            SlotSpec::conv2d("r0", 4, 6, 6, 0),
            SlotSpec::conv2d("r1", 4, 6, 6, 1),
        ];
        let intake = CommandIntake::new(
            SigningKey::from_bytes(&[1; 32]).unwrap(),
            &leyline::Config::default(),
        );
        let gates = GateConfig {
            window: 1,
            min_steps: [0; 4],
            min_epochs: [0; 4],
            ..GateConfig::default()
        };
        let mut k = Kasmina::new(&specs, gates.clone(), intake, Box::new(Build), 0);
        let mut lc = Lifecycle::new(gates);
        let def = urza::definition("conv.light").unwrap();
        for (i, slot) in ["r0", "r1"].iter().enumerate() {
            let mut init = ParamInit::new(i as u64, Device::Cpu);
            let module = def
                .build(
                    &def.default_parameters(),
                    &urza::SlotShape::conv2d(4, 6, 6).unwrap(),
                    Weights::Init(&mut init),
                )
                .unwrap();
            let blend = if i == 0 {
                Blend::Convex
            } else {
                Blend::Channel(vec![1.0, 0.5, 0.0, 1.0])
            };
            let seed = Seed::new(
                format!("s{i}"),
                *slot,
                "a",
                module,
                blend,
                AlphaRamp::new(RampShape::Linear, 2).unwrap(),
            );
            lc.germinate(k.slots_mut(), seed, 0, 0).unwrap();
        }
        // Nothing blends yet: an empty summary.
        assert_eq!(alpha_summary(&k), AlphaSummary::default());
        let packets = step_packets(
            &k,
            "run",
            1,
            5,
            &[SeedSignal {
                slot_id: "r0".into(),
                grad_norm: 3.0,
            }],
            5.0,
            0.7,
        );
        assert_eq!(packets.len(), 3);
        let share = packets[0]
            .metrics
            .iter()
            .find(|m| m.name == "seed.grad_share")
            .unwrap()
            .value;
        assert!((share - 0.36).abs() < 1e-12, "{share}");
        assert_eq!(packets[0].seed_id, "s0");
        assert!(packets[2].seed_id.is_empty());

        // Move both seeds to BLENDING with α = 1 (ramp of 2 steps).
        for slot in ["r0", "r1"] {
            lc.advance(k.slots_mut(), slot, 0, 0).unwrap();
            lc.record_step(
                slot,
                crate::gates::StepEvidence {
                    seed_grad_norm: 1.0,
                    loss: 1.0,
                    alpha: 0.0,
                    isolation_checked: true,
                    isolation_ok: true,
                    step_ms: 1.0,
                },
            );
            lc.advance(k.slots_mut(), slot, 0, 0).unwrap();
        }
        k.slots_mut().step();
        k.slots_mut().step();
        let summary = alpha_summary(&k);
        // Values: convex 1.0; channel 1.0, 0.5, 0.0, 1.0.
        assert_eq!(summary.count, 5);
        assert!((summary.mean - 0.7).abs() < 1e-12);
        assert_eq!(summary.p95, 1.0);
        assert!((summary.clamped_fraction - 0.8).abs() < 1e-12);
    }
}
