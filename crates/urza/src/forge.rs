//! The forge: builds a blueprint instance, proves it on a probe input of the
//! slot's shape (shape kept, forward and backward finite, a gradient reaching
//! every parameter), measures build time and forward latency, and computes the
//! guard digest that Kasmina checks before it loads the artifact.

use std::time::Instant;

use candle_core::{Device, Tensor};
use esper_ops::ParamInit;
use sha2::{Digest, Sha256};

use crate::blueprint::{BlueprintDef, BlueprintModule, Weights};
use crate::error::{Error, Result, rejected};
use crate::params::Parameters;
use crate::slot::SlotShape;

/// How to probe.
#[derive(Debug, Clone)]
pub struct ForgeOptions {
    /// Batch size of the probe input.
    pub batch: usize,
    /// Timed forward passes (after one warm-up) for the latency percentiles.
    pub runs: usize,
    /// Seed of the initial weights and of the probe input.
    pub seed: u64,
    /// Device to build and probe on.
    pub device: Device,
}

impl Default for ForgeOptions {
    /// Batch 8, 10 timed runs, seed 0, CPU.
    fn default() -> Self {
        Self {
            batch: 8,
            runs: 10,
            seed: 0,
            device: Device::Cpu,
        }
    }
}

/// What the forge built and measured.
#[derive(Debug)]
pub struct Forged {
    /// The instance (its weights are the artifact's initial weights).
    pub module: BlueprintModule,
    /// Time to build the instance, in ms.
    pub build_ms: f64,
    /// Forward latency percentiles over the timed runs, in ms.
    pub forward_p50_ms: f64,
    /// 95th percentile.
    pub forward_p95_ms: f64,
    /// Guard digest of the instance's weight spec.
    pub guard_digest: String,
    /// Scalar parameters.
    pub parameter_count: u64,
    /// Parameters whose probe gradient was exactly zero (e.g. a dead ReLU
    /// unit of a narrow bottleneck for this probe).
    pub dead_parameters: Vec<String>,
}

/// Builds `def` for `slot` with `params` and probes it.
pub fn forge(
    def: &BlueprintDef,
    params: &Parameters,
    slot: &SlotShape,
    options: &ForgeOptions,
) -> Result<Forged> {
    let fail = |reason: String| {
        rejected(Error::Forge {
            blueprint_id: def.id.to_string(),
            reason,
        })
    };
    let started = Instant::now();
    let mut init = ParamInit::new(options.seed, options.device.clone());
    let module = def.build(params, slot, Weights::Init(&mut init))?;
    let build_ms = started.elapsed().as_secs_f64() * 1e3;

    let expected = def.parameter_count(params, slot)?;
    if module.parameter_count() != expected {
        return Err(fail(format!(
            "built {} parameters, the blueprint declares {expected}",
            module.parameter_count()
        )));
    }

    let probe_shape = slot.batch_shape(options.batch.max(1));
    let probe = init
        .uniform(&probe_shape, 1.0)
        .map_err(Error::tensor("probe input"))?
        .as_tensor()
        .clone();
    // Backward through a random projection of the output, so that no parameter
    // sees a structurally zero gradient (a plain sum would, e.g. for a norm).
    let weights = init
        .uniform(&probe_shape, 1.0)
        .map_err(Error::tensor("probe weights"))?
        .as_tensor()
        .clone();
    let out = module.forward(&probe)?;
    check_finite(&out, "forward output").map_err(&fail)?;
    let loss = (&out * &weights)
        .and_then(|t| t.sum_all())
        .map_err(Error::tensor("probe loss"))?;
    let grads = loss.backward().map_err(Error::tensor("probe backward"))?;
    let mut dead_parameters = Vec::new();
    for (name, var) in module.named_vars() {
        let Some(grad) = grads.get(var.as_tensor()) else {
            return Err(fail(format!("no gradient reaches `{name}`")));
        };
        check_finite(grad, name).map_err(&fail)?;
        let magnitude = grad
            .abs()
            .and_then(|g| g.sum_all())
            .and_then(|g| g.to_scalar::<f32>())
            .map_err(Error::tensor("gradient magnitude"))?;
        if magnitude == 0.0 {
            dead_parameters.push(name.clone());
        }
    }
    // A zero gradient on one tensor can be a dead ReLU unit for this probe (a
    // narrow bottleneck); it is reported. A module none of whose parameters
    // gets a gradient cannot learn at all: refused.
    if !module.named_vars().is_empty() && dead_parameters.len() == module.named_vars().len() {
        return Err(fail("no parameter receives a non-zero gradient".into()));
    }

    let mut samples = Vec::with_capacity(options.runs);
    for _ in 0..options.runs.max(1) {
        let t = Instant::now();
        let y = module.forward(&probe)?;
        // Force the computation to finish (lazy devices).
        y.sum_all()
            .and_then(|s| s.to_scalar::<f32>())
            .map_err(Error::tensor("timed forward"))?;
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    samples.sort_by(f64::total_cmp);
    let forward_p50_ms = percentile(&samples, 0.50);
    let forward_p95_ms = percentile(&samples, 0.95);

    Ok(Forged {
        guard_digest: guard_digest(&module),
        parameter_count: expected,
        dead_parameters,
        module,
        build_ms,
        forward_p50_ms,
        forward_p95_ms,
    })
}

/// SHA-256 (hex) of the instance's interface: blueprint id, slot, and every
/// weight's name, dtype and shape, in name order.
pub fn guard_digest(module: &BlueprintModule) -> String {
    let mut spec: Vec<String> = module
        .named_vars()
        .iter()
        .map(|(name, var)| format!("{name}:{:?}:{:?}", var.dtype(), var.dims()))
        .collect();
    spec.sort();
    let mut hasher = Sha256::new();
    hasher.update(module.blueprint_id().as_bytes());
    hasher.update(b"\n");
    hasher.update(module.slot().to_string().as_bytes());
    for line in spec {
        hasher.update(b"\n");
        hasher.update(line.as_bytes());
    }
    crate::hex(&hasher.finalize())
}

fn check_finite(t: &Tensor, what: &str) -> std::result::Result<(), String> {
    let finite = t
        .flatten_all()
        .and_then(|f| f.to_vec1::<f32>())
        .map_err(|e| format!("{what}: {e}"))?
        .iter()
        .all(|v| v.is_finite());
    if finite {
        Ok(())
    } else {
        Err(format!("{what} is not finite"))
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}
