//! The policy a service starts its sessions from, and its hot swap: a new
//! policy file replaces the served one only after it passes a validation
//! run — every observation of a fixed set of synthetic runs decided with no
//! non-finite logit or value and no action the mask forbids, greedily and
//! sampled. A file that fails (or does not load: signature, schema, shapes)
//! leaves the served policy as it was and says why; sessions already open
//! keep the policy they started with (a run's decisions and its trajectory
//! stay one policy's), new sessions get the new one.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use leyline::v1::{
    AlphaState, CatalogEntry, HardwareContext, SeedStage, SeedState, SlotKind, SlotState,
    SystemStatePacket,
};

use super::LearnedPolicy;
use crate::config::LearnedConfig;
use crate::error::{Error, Result};
use crate::graph::{GraphBuilder, GraphSchema};
use crate::policy::action::{self, Action, Mask, Op, Sampler};
use crate::policy::gnn::{GnnModel, PolicyManifest, load_policy, mask_for};

/// What a validation run checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Validated {
    /// Observations decided (each greedily and sampled).
    pub observations: usize,
    /// Of those, where GERMINATE was legal and the network's choice of it
    /// checked too.
    pub with_growth: usize,
}

/// The loaded policy sessions are started from.
#[derive(Debug)]
pub struct ServedPolicy {
    current: RwLock<Arc<(GnnModel, PolicyManifest)>>,
    config: LearnedConfig,
    schema: GraphSchema,
}

impl ServedPolicy {
    /// Loads `config.policy` under `key` and validates it.
    pub fn load(
        config: &LearnedConfig,
        schema: GraphSchema,
        key: &leyline::security::SigningKey,
    ) -> Result<(Self, Validated)> {
        let (model, manifest, report) = load_checked(config, &schema, key)?;
        Ok((
            Self {
                current: RwLock::new(Arc::new((model, manifest))),
                config: config.clone(),
                schema,
            },
            report,
        ))
    }

    /// A policy instance for a new session (the served weights, shared).
    pub fn session(&self) -> Result<LearnedPolicy> {
        let current = Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner()));
        LearnedPolicy::new(
            current.0.clone(),
            current.1.clone(),
            &self.config,
            self.schema.clone(),
        )
    }

    /// The served policy's manifest.
    pub fn manifest(&self) -> PolicyManifest {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .clone()
    }

    /// Reads `config.policy` again and serves it if it loads and validates;
    /// otherwise the served policy stays and the error says why.
    pub fn reload(&self, key: &leyline::security::SigningKey) -> Result<Validated> {
        let (model, manifest, report) = load_checked(&self.config, &self.schema, key)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new((model, manifest));
        Ok(report)
    }
}

fn load_checked(
    config: &LearnedConfig,
    schema: &GraphSchema,
    key: &leyline::security::SigningKey,
) -> Result<(GnnModel, PolicyManifest, Validated)> {
    let path = super::policy_path(config)?;
    let (model, manifest) = load_policy(path, key, schema)?;
    let report = validate(&model, &manifest, config, schema).map_err(|e| Error::PolicyFile {
        path: path.to_path_buf(),
        problem: format!("failed its validation run: {e}"),
    })?;
    Ok((model, manifest, report))
}

/// The validation run: synthetic runs of 1, 3 and 8 convolutional slots
/// over six epochs, without and with a seed blending in the first slot,
/// each observation decided greedily and sampled from the policy's
/// normaliser statistics on.
fn validate(
    model: &GnnModel,
    manifest: &PolicyManifest,
    config: &LearnedConfig,
    schema: &GraphSchema,
) -> Result<Validated> {
    let catalog: Vec<CatalogEntry> = urza::catalog()
        .iter()
        .map(|d| CatalogEntry {
            descriptor: Some(d.descriptor()),
            ..CatalogEntry::default()
        })
        .collect();
    let mut report = Validated::default();
    let mut rng = Sampler::new(0x5a11_da7e);
    for slots in [1usize, 3, 8] {
        for seeded in [false, true] {
            let mut builder = GraphBuilder::new(schema.clone())?
                .with_blueprint_parameters(config.blueprint_parameters.clone());
            builder.set_normalisers(manifest.normalisers.clone())?;
            for epoch in 1..=6 {
                let packet = synthetic(slots, seeded, epoch);
                let graph = builder.build(&packet, &catalog)?;
                let mask = mask_for(&graph, &packet, config.max_live_seeds);
                let out = model.forward(&graph)?;
                let where_ = format!("{slots} slot(s), seeded {seeded}, epoch {epoch}");
                if !out.value.is_finite() {
                    return Err(Error::Action(format!("{where_}: value {}", out.value)));
                }
                let logits = &out.logits;
                let every = logits
                    .op
                    .iter()
                    .chain(&logits.slot)
                    .chain(logits.blueprint.iter().flatten())
                    .chain(logits.blend.iter().flatten())
                    .chain(&logits.tempo)
                    .chain(&logits.seed);
                if let Some(bad) = every.copied().find(|x| !x.is_finite()) {
                    return Err(Error::Action(format!("{where_}: a logit is {bad}")));
                }
                let (greedy, _) = action::greedy(logits, &mask)?;
                let (sampled, _) = action::sample(logits, &mask, &mut rng)?;
                for a in [greedy, sampled] {
                    if let Some(why) = forbidden(&mask, &a) {
                        return Err(Error::Action(format!("{where_}: {a:?}: {why}")));
                    }
                }
                report.observations += 1;
                if mask.op.get(Op::Germinate.index()).copied().unwrap_or(false) {
                    report.with_growth += 1;
                }
            }
        }
    }
    Ok(report)
}

/// Why `mask` forbids `a`, if it does.
fn forbidden(mask: &Mask, a: &Action) -> Option<String> {
    let ok = |v: &[bool], i: Option<usize>| i.is_some_and(|i| v.get(i).copied().unwrap_or(false));
    if !mask.op.get(a.op.index()).copied().unwrap_or(false) {
        return Some(format!("{:?} is masked", a.op));
    }
    match a.op {
        Op::Wait => None,
        Op::Germinate => {
            if !ok(&mask.slot, a.slot) {
                return Some("a slot that is not free".into());
            }
            let blueprints = a.slot.and_then(|s| mask.blueprint.get(s));
            if !blueprints.is_some_and(|b| ok(b, a.blueprint)) {
                return Some("a blueprint the slot does not take".into());
            }
            let blends = a.blueprint.and_then(|b| mask.blend.get(b));
            if !blends.is_some_and(|b| ok(b, a.blend)) {
                return Some("a blend the blueprint does not allow".into());
            }
            (!ok(&mask.tempo, a.tempo)).then(|| "a tempo not allowed".into())
        }
        Op::Cull => (!ok(&mask.cull, a.seed)).then(|| "a seed that cannot be culled".into()),
        Op::Fossilize => {
            (!ok(&mask.fossilize, a.seed)).then(|| "a seed that cannot fossilize".into())
        }
    }
}

/// An epoch-end packet of a synthetic run: `slots` conv slots of 8 × 7 × 7,
/// a validation loss falling 10 % an epoch, and with `seeded` a seed
/// blending in the first slot.
fn synthetic(slots: usize, seeded: bool, epoch: u32) -> SystemStatePacket {
    let mut p = SystemStatePacket {
        version: leyline::CONTRACT_VERSION,
        current_epoch: epoch,
        global_step: u64::from(epoch) * 100,
        packet_id: format!("validation-{slots}-{seeded}-{epoch}"),
        training_run_id: "policy-validation".into(),
        validation_loss: Some(0.9f64.powi(epoch as i32)),
        validation_accuracy: Some(0.6 + 0.03 * f64::from(epoch)),
        training_loss: Some(0.8f64.powi(epoch as i32)),
        hardware: Some(HardwareContext::default()),
        training_metrics: BTreeMap::from([
            ("learning_rate".to_string(), 1e-3),
            ("step_ms".to_string(), 10.0),
            ("train_accuracy".to_string(), 0.6 + 0.03 * f64::from(epoch)),
            ("host_parameters".to_string(), 20_000.0),
            ("host_forward_macs".to_string(), 1_000_000.0),
            ("epochs_total".to_string(), 6.0),
        ]),
        slots: (0..slots)
            .map(|i| SlotState {
                slot_id: format!("r{i}"),
                kind: SlotKind::Conv2d as i32,
                feature_shape: vec![8, 7, 7],
                stage: SeedStage::Dormant as i32,
                layer_depth: i as u32,
                ..SlotState::default()
            })
            .collect(),
        ..SystemStatePacket::default()
    };
    if seeded {
        p.slots[0].stage = SeedStage::Blending as i32;
        p.slots[0].seed_id = "validation-seed".into();
        p.seed_states.push(SeedState {
            seed_id: "validation-seed".into(),
            slot_id: "r0".into(),
            stage: SeedStage::Blending as i32,
            blueprint_id: "conv.depthwise".into(),
            age_epochs: epoch,
            alpha: Some(AlphaState {
                alpha: 0.5,
                ..AlphaState::default()
            }),
            gradient_norm: 0.1,
            ..SeedState::default()
        });
    }
    p
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::Path;

    use super::*;
    use crate::graph::Normalisers;
    use crate::policy::gnn::{GnnConfig, save_policy};

    fn key(byte: u8) -> leyline::security::SigningKey {
        leyline::security::SigningKey::from_bytes(&[byte; 32]).unwrap()
    }

    /// Writes a policy of `seed`'s weights — or, `broken`, every weight
    /// 3e38: finite, so the file loads, but its scores overflow.
    fn write(path: &Path, seed: u64, broken: bool, signer: u8) {
        let model = GnnModel::new(GnnConfig { hidden: 8 }, seed).unwrap();
        if broken {
            for v in model.vars() {
                let huge =
                    candle_core::Tensor::full(3e38f32, v.as_tensor().shape(), v.device()).unwrap();
                v.set(&huge).unwrap();
            }
        }
        let schema = GraphSchema::default();
        let manifest = PolicyManifest::new(8, &schema, Normalisers::new(0.05));
        save_policy(path, &model, &manifest, &key(signer)).unwrap();
    }

    /// A policy is served only after its validation run; SIGHUP's reload
    /// swaps in a new file that passes, and keeps the served one — saying
    /// why — when the new file's signature fails or its network produces
    /// non-finite scores (finite weights of 3e38: the file loads, the
    /// validation run refuses it).
    #[test]
    fn a_reload_swaps_only_a_policy_that_passes_its_validation_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("served.safetensors");
        write(&path, 1, false, 1);
        let config = LearnedConfig {
            policy: Some(path.clone()),
            ..LearnedConfig::default()
        };
        let (served, checked) =
            ServedPolicy::load(&config, GraphSchema::default(), &key(1)).unwrap();
        assert_eq!(checked.observations, 36);
        assert!(checked.with_growth > 0, "{checked:?}");
        let first = served.manifest().weights_sha256;
        let session = served.session().unwrap();
        assert_eq!(session.manifest().weights_sha256, first);

        // Signed with another key: refused, the served policy stays.
        write(&path, 2, false, 2);
        let e = served.reload(&key(1)).unwrap_err();
        assert!(e.to_string().contains("signature"), "{e}");
        assert_eq!(served.manifest().weights_sha256, first);

        // Weights that blow the scores up: loads, fails validation.
        write(&path, 2, true, 1);
        let e = served.reload(&key(1)).unwrap_err();
        assert!(e.to_string().contains("validation run"), "{e}");
        assert_eq!(served.manifest().weights_sha256, first);
        assert_eq!(served.session().unwrap().manifest().weights_sha256, first);

        // A good new file: swapped, new sessions get it, an open one keeps
        // its own.
        write(&path, 2, false, 1);
        served.reload(&key(1)).unwrap();
        let second = served.manifest().weights_sha256;
        assert_ne!(second, first);
        assert_eq!(served.session().unwrap().manifest().weights_sha256, second);
        assert_eq!(session.manifest().weights_sha256, first);

        // A first load that fails its validation run is an error too.
        write(&path, 3, true, 1);
        let e = ServedPolicy::load(&config, GraphSchema::default(), &key(1)).unwrap_err();
        assert!(e.to_string().contains("validation run"), "{e}");
    }
}
