//! Durable checkpoints: safetensors files + a JSON manifest with SHA-256 checksums.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Snapshot;
use crate::error::{Error, Result};
use crate::optim::StateEntry;

const FORMAT: u32 = 1;
const MODEL: &str = "model.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";
const MANIFEST: &str = "manifest.json";

/// What a checkpoint says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Checkpoint format version.
    pub format: u32,
    /// Host name.
    pub host: String,
    /// Run seed.
    pub seed: u64,
    /// Completed epochs.
    pub epoch: u32,
    /// Global optimizer step.
    pub global_step: u64,
    /// Optimizer step count per parameter.
    pub optimizer_steps: BTreeMap<String, u64>,
    /// SHA-256 (hex) of every data file.
    pub sha256: BTreeMap<String, String>,
    /// Learning rate of the host group at `global_step` (schedule applied).
    #[serde(default)]
    pub lr: Option<f64>,
    /// SHA-256 (hex) of the training configuration, run length and output
    /// settings excluded; a resume under another one is reported.
    #[serde(default)]
    pub config_sha256: Option<String>,
    /// Random state: every random choice of the run derives from `seed` (weight
    /// initialisation) and `(seed, epoch)` (data order), so the next epoch's order
    /// is fixed by these two numbers.
    #[serde(default)]
    pub rng: Option<RngState>,
    /// Kasmina's seeds (stage, blend, ramp, age, evidence; weights are in the
    /// model file), for a resumed run to continue them.
    #[serde(default)]
    pub kasmina: Option<kasmina::KasminaState>,
    /// The trainer's counters and the control hook's state, for an exact
    /// resume (absent in checkpoints written before it existed).
    #[serde(default)]
    pub resume: Option<super::ResumeState>,
}

/// The random state a resumed run needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RngState {
    /// The run seed.
    pub seed: u64,
    /// The epoch whose data order comes next.
    pub next_epoch: u32,
}

/// What a checkpoint records besides the tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointMeta {
    /// Host name.
    pub host: String,
    /// Run seed.
    pub seed: u64,
    /// Learning rate at the snapshot's step.
    pub lr: f64,
    /// Hash of the training configuration.
    pub config_sha256: String,
}

/// A checkpoint that failed verification, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Corrupt {
    /// Its directory.
    pub path: PathBuf,
    /// What failed.
    pub reason: String,
}

/// A verified checkpoint, loaded.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Its directory.
    pub path: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// Its state.
    pub snapshot: Snapshot,
}

/// A directory of rotating checkpoints `ckpt-<step>`.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    dir: PathBuf,
    keep: usize,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(io(dir))
}

impl CheckpointStore {
    /// A store over `dir` for reading only (`esper inspect`): nothing is
    /// created, removed or rotated.
    pub fn read_only(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            keep: usize::MAX,
        }
    }

    /// A store in `dir` keeping the newest `keep` checkpoints. Half-written
    /// checkpoints left by a crash (`*.tmp`) are removed; their count is returned.
    pub fn open(dir: &Path, keep: usize) -> Result<(Self, usize)> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let mut removed = 0;
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let path = entry.map_err(io(dir))?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                std::fs::remove_dir_all(&path).map_err(io(&path))?;
                removed += 1;
            }
        }
        Ok((
            Self {
                dir: dir.to_path_buf(),
                keep: keep.max(1),
            },
            removed,
        ))
    }

    /// Checkpoint directories, oldest first.
    pub fn list(&self) -> Result<Vec<PathBuf>> {
        let mut found: Vec<(u64, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io(&self.dir))? {
            let path = entry.map_err(io(&self.dir))?.path();
            let step = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("ckpt-"))
                .and_then(|s| s.parse::<u64>().ok());
            if let (Some(step), true) = (step, path.is_dir()) {
                found.push((step, path));
            }
        }
        found.sort();
        Ok(found.into_iter().map(|(_, p)| p).collect())
    }

    /// The directory of the checkpoint of `global_step`.
    pub fn path_for(&self, global_step: u64) -> PathBuf {
        self.dir.join(format!("ckpt-{global_step:012}"))
    }

    /// Writes `snapshot` atomically, then deletes checkpoints beyond `keep`.
    pub fn save(&self, snapshot: &Snapshot, meta: &CheckpointMeta) -> Result<PathBuf> {
        let name = format!("ckpt-{:012}", snapshot.global_step);
        let final_dir = self.path_for(snapshot.global_step);
        let tmp = self.dir.join(format!("{name}.tmp"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;

        let mut optimizer_tensors: HashMap<String, Tensor> = HashMap::new();
        let mut optimizer_steps = BTreeMap::new();
        for (param, entry) in &snapshot.optimizer {
            optimizer_steps.insert(param.clone(), entry.step);
            if let Some(t) = &entry.first {
                optimizer_tensors.insert(format!("{param}#first"), t.clone());
            }
            if let Some(t) = &entry.second {
                optimizer_tensors.insert(format!("{param}#second"), t.clone());
            }
        }
        let model_tensors: HashMap<String, Tensor> = snapshot
            .params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut sha256 = BTreeMap::new();
        for (file, tensors) in [(MODEL, &model_tensors), (OPTIMIZER, &optimizer_tensors)] {
            let path = tmp.join(file);
            candle_core::safetensors::save(tensors, &path)?;
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(io(&path))?;
            sha256.insert(file.to_string(), sha256_hex(&bytes));
        }
        let manifest = Manifest {
            format: FORMAT,
            host: meta.host.clone(),
            seed: meta.seed,
            epoch: snapshot.epoch,
            global_step: snapshot.global_step,
            optimizer_steps,
            sha256,
            lr: Some(meta.lr),
            config_sha256: Some(meta.config_sha256.clone()),
            rng: Some(RngState {
                seed: meta.seed,
                next_epoch: snapshot.epoch + 1,
            }),
            kasmina: snapshot.kasmina.clone(),
            resume: snapshot.resume.clone(),
        };
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Data {
            path: tmp.clone(),
            detail: e.to_string(),
        })?;
        let manifest_path = tmp.join(MANIFEST);
        std::fs::write(&manifest_path, json).map_err(io(&manifest_path))?;
        File::open(&manifest_path)
            .and_then(|f| f.sync_all())
            .map_err(io(&manifest_path))?;
        fsync_dir(&tmp)?;
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir).map_err(io(&final_dir))?;
        }
        std::fs::rename(&tmp, &final_dir).map_err(io(&final_dir))?;
        fsync_dir(&self.dir)?;

        let all = self.list()?;
        for old in all.iter().take(all.len().saturating_sub(self.keep)) {
            std::fs::remove_dir_all(old).map_err(io(old))?;
        }
        Ok(final_dir)
    }

    /// Loads and verifies one checkpoint.
    pub fn load(&self, path: &Path, device: &Device) -> std::result::Result<Loaded, Corrupt> {
        let corrupt = |reason: String| Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let manifest_path = path.join(MANIFEST);
        let text = std::fs::read(&manifest_path)
            .map_err(|e| corrupt(format!("manifest unreadable: {e}")))?;
        let manifest: Manifest =
            serde_json::from_slice(&text).map_err(|e| corrupt(format!("manifest invalid: {e}")))?;
        if manifest.format != FORMAT {
            return Err(corrupt(format!(
                "format {} (this build reads {FORMAT})",
                manifest.format
            )));
        }
        let mut maps = Vec::new();
        for file in [MODEL, OPTIMIZER] {
            let bytes = std::fs::read(path.join(file))
                .map_err(|e| corrupt(format!("{file} unreadable: {e}")))?;
            let expected = manifest
                .sha256
                .get(file)
                .ok_or_else(|| corrupt(format!("manifest has no checksum for {file}")))?;
            let actual = sha256_hex(&bytes);
            if &actual != expected {
                return Err(corrupt(format!(
                    "{file} checksum mismatch (expected {expected}, found {actual})"
                )));
            }
            // The checkpoint-load crossing: verified bytes in host memory
            // become tensors on the model's device.
            maps.push(
                candle_core::safetensors::load_buffer(&bytes, device)
                    .map_err(|e| corrupt(format!("{file}: {e}")))?,
            );
        }
        let optimizer_tensors = maps.pop().unwrap_or_default();
        let params: BTreeMap<String, Tensor> = maps.pop().unwrap_or_default().into_iter().collect();
        let mut optimizer = BTreeMap::new();
        for (param, step) in &manifest.optimizer_steps {
            optimizer.insert(
                param.clone(),
                StateEntry {
                    step: *step,
                    first: optimizer_tensors.get(&format!("{param}#first")).cloned(),
                    second: optimizer_tensors.get(&format!("{param}#second")).cloned(),
                },
            );
        }
        let snapshot = Snapshot {
            global_step: manifest.global_step,
            epoch: manifest.epoch,
            params,
            optimizer,
            kasmina: manifest.kasmina.clone(),
            resume: manifest.resume.clone(),
        };
        Ok(Loaded {
            path: path.to_path_buf(),
            manifest,
            snapshot,
        })
    }

    /// The newest checkpoint that verifies, with every newer one that did not.
    pub fn load_latest(&self, device: &Device) -> Result<(Option<Loaded>, Vec<Corrupt>)> {
        let mut skipped = Vec::new();
        for path in self.list()?.into_iter().rev() {
            match self.load(&path, device) {
                Ok(loaded) => return Ok((Some(loaded), skipped)),
                Err(corrupt) => skipped.push(corrupt),
            }
        }
        Ok((None, skipped))
    }
}
