//! Artifact files: atomic writes (temp file, fsync, rename, directory fsync)
//! and the startup sweep that finishes or undoes interrupted saves.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub(crate) const TEMP_SUFFIX: &str = ".partial";
pub(crate) const ARTIFACT_SUFFIX: &str = ".safetensors";

/// The library's directories.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) artifacts: PathBuf,
    pub(crate) tmp: PathBuf,
    pub(crate) database: PathBuf,
}

impl Layout {
    pub(crate) fn create(root: &Path) -> Result<Self> {
        let layout = Self {
            artifacts: root.join("artifacts"),
            tmp: root.join("tmp"),
            database: root.join("catalog.sqlite"),
        };
        for dir in [root, &layout.artifacts, &layout.tmp] {
            fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
        }
        Ok(layout)
    }

    /// Where the artifact with this reference lives (two-level fan-out).
    pub(crate) fn artifact_path(&self, artifact_ref: &str) -> PathBuf {
        let fan = artifact_ref.get(..2).unwrap_or("00");
        self.artifacts
            .join(fan)
            .join(format!("{artifact_ref}{ARTIFACT_SUFFIX}"))
    }
}

/// Writes `bytes` to a fresh temp file and fsyncs it.
pub(crate) fn write_temp(layout: &Layout, bytes: &[u8]) -> Result<PathBuf> {
    let path = layout
        .tmp
        .join(format!("{}{TEMP_SUFFIX}", uuid::Uuid::new_v4()));
    let mut file = File::create(&path).map_err(Error::io("creating", &path))?;
    file.write_all(bytes).map_err(Error::io("writing", &path))?;
    file.sync_all().map_err(Error::io("syncing", &path))?;
    Ok(path)
}

/// Moves a synced temp file to its final place and makes the rename durable.
pub(crate) fn publish(temp: &Path, target: &Path) -> Result<()> {
    let dir = target.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
    fs::rename(temp, target).map_err(Error::io("renaming into place", target))?;
    sync_dir(dir)
}

/// fsync of a directory, so that a rename inside it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("syncing directory", dir))
}

/// Every artifact file under `artifacts/`, as (reference, path).
pub(crate) fn artifact_files(layout: &Layout) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let fans = fs::read_dir(&layout.artifacts).map_err(Error::io("listing", &layout.artifacts))?;
    for fan in fans {
        let fan = fan.map_err(Error::io("listing", &layout.artifacts))?.path();
        if !fan.is_dir() {
            continue;
        }
        for entry in fs::read_dir(&fan).map_err(Error::io("listing", &fan))? {
            let path = entry.map_err(Error::io("listing", &fan))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if let Some(reference) = name.strip_suffix(ARTIFACT_SUFFIX) {
                out.push((reference.to_string(), path.clone()));
            }
        }
    }
    Ok(out)
}

/// Removes leftover temp files; returns how many.
pub(crate) fn remove_temps(layout: &Layout) -> Result<u64> {
    let mut removed = 0;
    for entry in fs::read_dir(&layout.tmp).map_err(Error::io("listing", &layout.tmp))? {
        let path = entry.map_err(Error::io("listing", &layout.tmp))?.path();
        if path.extension().is_some_and(|e| e == "partial") {
            fs::remove_file(&path).map_err(Error::io("removing", &path))?;
            removed += 1;
        }
    }
    Ok(removed)
}
