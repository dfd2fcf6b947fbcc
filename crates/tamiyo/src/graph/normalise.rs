//! Per-feature EWMA normalisers of the graph's continuous features, saved and
//! loaded as JSON (atomically written; every failure returned).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::NodeType;
use super::features::Row;
use crate::error::{Error, Result};

/// Running mean and variance of one feature.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct Stat {
    mean: f64,
    var: f64,
    count: u64,
}

/// EWMA statistics per node type and feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Normalisers {
    alpha: f64,
    stats: BTreeMap<NodeType, Vec<Stat>>,
}

impl Normalisers {
    /// Fresh statistics with smoothing `alpha`.
    pub fn new(alpha: f64) -> Self {
        let stats = [
            NodeType::Global,
            NodeType::Slot,
            NodeType::Seed,
            NodeType::Blueprint,
        ]
        .into_iter()
        .map(|t| (t, vec![Stat::default(); t.dim()]))
        .collect();
        Self { alpha, stats }
    }

    /// Checks every type's width against the code's.
    pub(crate) fn check_dims(&self) -> Result<()> {
        if !(self.alpha > 0.0 && self.alpha <= 1.0) {
            return Err(Error::Graph(format!(
                "normaliser alpha {} outside (0, 1]",
                self.alpha
            )));
        }
        for (t, stats) in &self.stats {
            if stats.len() != t.dim() {
                return Err(Error::Graph(format!(
                    "normalisers hold {} features for {t:?}, the graph has {}",
                    stats.len(),
                    t.dim()
                )));
            }
        }
        Ok(())
    }

    /// Updates the statistics with `row`'s present continuous features and
    /// returns the normalised row (missing features stay 0).
    pub(crate) fn apply(&mut self, kind: NodeType, row: &Row) -> Vec<f32> {
        let alpha = self.alpha;
        let stats = self
            .stats
            .entry(kind)
            .or_insert_with(|| vec![Stat::default(); kind.dim()]);
        let mut out = row.values.clone();
        for &i in row.continuous {
            if row.mask[i] == 0.0 {
                continue;
            }
            let x = f64::from(row.values[i]);
            let s = &mut stats[i];
            if s.count == 0 {
                s.mean = x;
                s.var = 0.0;
            } else {
                let d = x - s.mean;
                s.mean += alpha * d;
                s.var = (1.0 - alpha) * (s.var + alpha * d * d);
            }
            s.count += 1;
            out[i] = ((x - s.mean) / (s.var + 1e-6).sqrt()) as f32;
        }
        out
    }

    /// Writes the statistics to `path` (temp file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let io = |context| {
            move |source| Error::Io {
                context,
                path: path.to_path_buf(),
                source,
            }
        };
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::Graph(format!("normalisers: {e}")))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, json).map_err(io("writing normalisers"))?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io("syncing normalisers"))?;
        std::fs::rename(&tmp, path).map_err(io("renaming normalisers"))?;
        Ok(())
    }

    /// Reads statistics written by [`Normalisers::save`]; a missing,
    /// unreadable, malformed or mis-sized file is an error.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            context: "reading normalisers",
            path: path.to_path_buf(),
            source,
        })?;
        let n: Self = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Graph(format!("normalisers {}: {e}", path.display())))?;
        n.check_dims()?;
        Ok(n)
    }
}
