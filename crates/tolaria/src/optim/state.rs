//! Export and import of optimizer state, keyed by parameter name, for checkpoints.

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};

use super::{Optimizer, ParamState};
use crate::error::{Error, Result};

/// The saved state of one parameter.
#[derive(Debug, Clone)]
pub struct StateEntry {
    /// Updates applied so far.
    pub step: u64,
    /// AdamW first moment, or the SGD momentum buffer.
    pub first: Option<Tensor>,
    /// AdamW second moment.
    pub second: Option<Tensor>,
}

impl Optimizer {
    /// Every parameter's state, by name (moments kept as buffers are copied
    /// into tensors on the CPU).
    pub fn export_state(&self) -> Result<BTreeMap<String, StateEntry>> {
        self.state
            .iter()
            .map(|(name, s)| {
                let (first, second) = match &s.buffers {
                    // Copies: the buffers go on changing in place.
                    Some(m) => (
                        Some(Tensor::from_slice(&m.first, &m.shape, &Device::Cpu)?),
                        Some(Tensor::from_slice(&m.second, &m.shape, &Device::Cpu)?),
                    ),
                    None => (s.first.clone(), s.second.clone()),
                };
                let entry = StateEntry {
                    step: s.step,
                    first,
                    second,
                };
                Ok((name.clone(), entry))
            })
            .collect()
    }

    /// Replaces the state with `entries`. Every name must be a parameter of a group
    /// and every tensor must have that parameter's shape; on any error nothing is
    /// changed.
    pub fn import_state(&mut self, entries: BTreeMap<String, StateEntry>) -> Result<()> {
        let shapes: BTreeMap<&str, &[usize]> = self
            .groups
            .iter()
            .flat_map(|g| g.params.iter())
            .map(|p| (p.name.as_str(), p.var.dims()))
            .collect();
        let mut state = BTreeMap::new();
        for (name, entry) in entries {
            let Some(shape) = shapes.get(name.as_str()) else {
                return Err(Error::Optimizer(format!(
                    "saved state for unknown parameter {name}"
                )));
            };
            for (what, tensor) in [("first", &entry.first), ("second", &entry.second)] {
                let Some(t) = tensor else { continue };
                if t.dims() != *shape {
                    return Err(Error::Optimizer(format!(
                        "saved {what} moment of {name} has shape {:?}, parameter has {shape:?}",
                        t.dims()
                    )));
                }
                if let Some(device) = self.device {
                    esper_ops::device::ensure_on(t, device, || {
                        format!("the saved {what} moment of {name}")
                    })?;
                }
            }
            state.insert(
                name,
                ParamState {
                    step: entry.step,
                    first: entry.first,
                    second: entry.second,
                    buffers: None,
                },
            );
        }
        self.state = state;
        Ok(())
    }
}
