//! Small pure helpers of the training loop: metrics reductions and checkpoint
//! metadata.

use candle_core::{D, DType, Tensor};

use crate::checkpoints::CheckpointMeta;
use crate::config::Config;
use crate::error::Result;

/// The hash of the training configuration, without what a resumed run may
/// legitimately change: its length (`epochs`) and its outputs (checkpoint and
/// profiler settings).
pub(super) fn training_config_sha256(config: &Config) -> Result<String> {
    let mut c = config.clone();
    c.epochs = 0;
    c.checkpoint = crate::config::CheckpointConfig::default();
    c.profiler = crate::profiler::ProfilerConfig::default();
    let text = serde_json::to_vec(&c).map_err(|e| {
        crate::error::Error::Config(
            leyline::ConfigError::at("tolaria", "cannot serialise the configuration to hash it")
                .caused_by(e),
        )
    })?;
    Ok(crate::checkpoints::sha256_hex(&text))
}

pub(super) fn checkpoint_meta(
    config: &Config,
    seed: u64,
    config_sha256: &str,
    step: u64,
) -> CheckpointMeta {
    CheckpointMeta {
        host: config.host.clone(),
        seed,
        lr: config.optimizer.lr * config.lr.factor(step),
        config_sha256: config_sha256.to_owned(),
    }
}

/// Global L2 norm of every parameter's gradient, reduced on the device and read once.
pub(super) fn global_grad_norm(
    params: &[kasmina::NamedParameter],
    grads: &candle_core::backprop::GradStore,
) -> Result<f64> {
    let mut total: Option<Tensor> = None;
    for p in params {
        if let Some(g) = grads.get(p.var.as_tensor()) {
            let s = g.sqr()?.sum_all()?;
            total = Some(match total {
                Some(t) => (t + s)?,
                None => s,
            });
        }
    }
    Ok(match total {
        Some(t) => f64::from(t.to_dtype(DType::F32)?.to_scalar::<f32>()?).sqrt(),
        None => 0.0,
    })
}

/// `q`-quantile of sorted values (0 when empty).
pub(super) fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

pub(super) fn count_correct(logits: &Tensor, labels: &Tensor) -> Result<usize> {
    let predicted = logits.argmax(D::Minus1)?;
    let hits = predicted
        .eq(labels)?
        .to_dtype(DType::U32)?
        .sum_all()?
        .to_scalar::<u32>()?;
    Ok(hits as usize)
}
