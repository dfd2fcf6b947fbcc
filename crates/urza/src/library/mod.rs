//! The local artifact library: a SQLite catalog plus content-addressed
//! artifact files, with a byte-bounded cache of verified bytes.
//!
//! Invariants:
//! * an artifact file is named by the SHA-256 of its bytes, and every load from
//!   disk re-hashes it; a mismatch quarantines the artifact and is a typed error;
//! * a save writes a temp file, fsyncs it, renames it into place, fsyncs the
//!   directory and only then inserts the row (one transaction), so after a
//!   crash an artifact is either fully present (file and row) or absent — the
//!   startup sweep deletes temp files and files without a row;
//! * every catalog change is announced on the change channel
//!   ([`Library::subscribe`]), which the runtime forwards onto Oona.

mod cache;
mod db;
mod files;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use leyline::v1::{
    ArtifactProvenance, ArtifactRecord, CatalogChange, CatalogEntry, KernelCatalogUpdate,
};
use rusqlite::Connection;
use tokio::sync::broadcast;

pub use cache::{ArtifactCache, CacheStats};
pub use db::CatalogQuery;

use crate::artifact::{self, Artifact};
use crate::blueprint::{BlueprintModule, catalog, definition};
use crate::error::{Error, Result, rejected};
use crate::forge::{ForgeOptions, forge};
use crate::params::Parameters;
use crate::slot::SlotShape;
use files::Layout;

/// Library settings (the `[urza]` config section fills them).
#[derive(Debug, Clone, PartialEq)]
pub struct LibraryConfig {
    /// Directory holding `catalog.sqlite`, `artifacts/` and `tmp/`.
    pub root: PathBuf,
    /// Byte budget of the in-memory artifact cache.
    pub cache_bytes: u64,
    /// Lookups the windowed hit rate covers.
    pub stats_window: usize,
    /// Forge probe settings used when an artifact is forged on demand.
    pub forge_batch: usize,
    /// Timed forward passes of the forge probe.
    pub forge_runs: usize,
    /// Most elements per image of a slot forged on request.
    pub max_slot_elements: u64,
    /// Most parameters of a module forged on request.
    pub max_forge_parameters: u64,
}

impl LibraryConfig {
    /// Defaults under `root`: 64 MiB cache, 1 024-lookup window, probe batch 8
    /// with 10 timed runs.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            cache_bytes: 64 << 20,
            stats_window: 1024,
            forge_batch: 8,
            forge_runs: 10,
            max_slot_elements: 1 << 22,
            max_forge_parameters: 32_000_000,
        }
    }
}

/// What the startup sweep found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Temp files of interrupted saves, removed.
    pub temp_files_removed: u64,
    /// Artifact files without a catalog row (a save interrupted before its
    /// commit, or a lost catalog) that verified and were catalogued again
    /// (an artifact describes itself: blueprint, slot, parameters, digest).
    pub orphans_recovered: u64,
    /// Artifact files without a catalog row that did not verify, moved to
    /// `<root>/quarantine/` (never deleted), with the reason.
    pub orphans_quarantined: Vec<(String, String)>,
    /// Rows whose file is missing, quarantined.
    pub missing_files: Vec<String>,
    /// Built-in blueprints added or updated in the catalog.
    pub blueprints_changed: u64,
}

/// What [`Library::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Artifacts checked.
    pub checked: u64,
    /// Artifacts whose bytes hash to their reference and whose weights rebuild.
    pub healthy: u64,
    /// Corrupt artifacts (now quarantined), with the reason.
    pub corrupt: Vec<(String, String)>,
    /// Artifacts whose file is missing (now quarantined).
    pub missing: Vec<String>,
}

/// A step of [`Library::save_bytes_observed`]; the observer runs after each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveStep {
    /// The bytes are in a synced temp file.
    TempWritten,
    /// The file is at its final path (rename synced).
    Renamed,
    /// The catalog row is committed: the artifact is visible.
    Committed,
}

/// The catalog row of verified artifact bytes (and their header back).
fn record_of(
    bytes: &[u8],
    artifact_ref: String,
    header: &artifact::ArtifactHeader,
    module: &BlueprintModule,
    measured: Measured,
) -> (ArtifactRecord, artifact::ArtifactHeader) {
    let record = ArtifactRecord {
        artifact_ref,
        blueprint_id: header.blueprint_id.clone(),
        slot_kind: header.slot.kind() as i32,
        slot_shape: header.slot.wire_shape(),
        parameters: header.parameters.clone(),
        guard_digest: header.guard_digest.clone(),
        size_bytes: bytes.len() as u64,
        created_at_ms: now_ms(),
        build_ms: measured.build_ms,
        forward_p50_ms: measured.forward_p50_ms,
        forward_p95_ms: measured.forward_p95_ms,
        parameter_count: module.parameter_count(),
        provenance: header.provenance.clone(),
        quarantined: false,
        quarantine_reason: String::new(),
    };
    (record, header.clone())
}

/// The local library. Thread-safe; each call is short local I/O.
pub struct Library {
    layout: Layout,
    conn: Mutex<Connection>,
    cache: Mutex<ArtifactCache>,
    changes: broadcast::Sender<KernelCatalogUpdate>,
    config: LibraryConfig,
}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Library")
            .field("root", &self.config.root)
            .finish_non_exhaustive()
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Library {
    /// Opens (creating) the library at `config.root`, sweeps interrupted
    /// saves, and registers the built-in blueprints.
    pub fn open(config: LibraryConfig) -> Result<(Self, RecoveryReport)> {
        let layout = Layout::create(&config.root)?;
        let conn = db::open(&layout.database)?;
        let (changes, _) = broadcast::channel(1024);
        let library = Self {
            cache: Mutex::new(ArtifactCache::new(config.cache_bytes, config.stats_window)),
            layout,
            conn: Mutex::new(conn),
            changes,
            config,
        };
        let (mut report, orphans) = library.recover()?;
        report.blueprints_changed = library.sync_builtin_catalog()?;
        // After the blueprints: an orphan is adopted only under a known one.
        library.adopt_orphans(orphans, &mut report)?;
        if report.temp_files_removed + report.orphans_recovered > 0
            || !report.orphans_quarantined.is_empty()
            || !report.missing_files.is_empty()
        {
            tracing::warn!(target: "urza", ?report, "recovered the library");
        }
        Ok((library, report))
    }

    /// The library's settings.
    pub fn config(&self) -> &LibraryConfig {
        &self.config
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent
        // (transactions roll back), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, ArtifactCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes interrupted saves' temp files, quarantines rows whose file is
    /// missing, and returns the artifact files that have no row.
    fn recover(&self) -> Result<(RecoveryReport, Vec<(String, PathBuf)>)> {
        let mut report = RecoveryReport {
            temp_files_removed: files::remove_temps(&self.layout)?,
            ..RecoveryReport::default()
        };
        let known: std::collections::BTreeSet<String> =
            db::artifact_refs(&self.conn())?.into_iter().collect();
        let mut on_disk = std::collections::BTreeSet::new();
        let mut orphans = Vec::new();
        for (reference, path) in files::artifact_files(&self.layout)? {
            if known.contains(&reference) {
                on_disk.insert(reference);
            } else {
                orphans.push((reference, path));
            }
        }
        for reference in known.difference(&on_disk) {
            db::quarantine_artifact(&self.conn(), reference, "artifact file missing")?;
            report.missing_files.push(reference.clone());
        }
        Ok((report, orphans))
    }

    /// Catalogues again each orphan file that verifies (its bytes hash to its
    /// name, its module rebuilds with the header's digest, its blueprint is
    /// known); moves the others to `<root>/quarantine/`.
    fn adopt_orphans(
        &self,
        orphans: Vec<(String, PathBuf)>,
        report: &mut RecoveryReport,
    ) -> Result<()> {
        for (reference, path) in orphans {
            let verified = std::fs::read(&path)
                .map_err(|e| format!("cannot read it: {e}"))
                .and_then(|bytes| {
                    let actual = artifact::sha256_hex(&bytes);
                    if actual != reference {
                        return Err(format!("its bytes hash to {actual}"));
                    }
                    let (header, module) = artifact::instantiate(&bytes, &candle_core::Device::Cpu)
                        .map_err(|e| e.to_string())?;
                    match self.blueprint(&header.blueprint_id) {
                        Ok(entry) if !entry.quarantined => {}
                        Ok(entry) => {
                            return Err(format!(
                                "blueprint quarantined: {}",
                                entry.quarantine_reason
                            ));
                        }
                        Err(e) => return Err(e.to_string()),
                    }
                    Ok(record_of(
                        &bytes,
                        reference.clone(),
                        &header,
                        &module,
                        Measured::default(),
                    ))
                });
            match verified {
                Ok((record, header)) => {
                    db::insert_artifact(
                        &mut self.conn(),
                        &record,
                        &db::slot_key(&header.slot),
                        &db::parameters_key(&header.parameters),
                    )?;
                    report.orphans_recovered += 1;
                }
                Err(reason) => {
                    let dir = self.config.root.join("quarantine");
                    std::fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
                    let name = path.file_name().map_or_else(
                        || std::ffi::OsString::from(&reference),
                        std::ffi::OsStr::to_os_string,
                    );
                    let target = dir.join(name);
                    std::fs::rename(&path, &target)
                        .map_err(Error::io("moving an unverified orphan to", &target))?;
                    report.orphans_quarantined.push((reference, reason));
                }
            }
        }
        Ok(())
    }

    fn announce(&self, update: KernelCatalogUpdate) {
        metrics::counter!("urza_catalog_updates_total").increment(1);
        // No receiver is fine: nobody is watching.
        let _ = self.changes.send(update);
    }

    /// Upserts every built-in blueprint; returns how many were added or changed.
    pub fn sync_builtin_catalog(&self) -> Result<u64> {
        let mut changed = 0;
        for def in catalog() {
            let outcome = db::upsert_blueprint(&mut self.conn(), &def.descriptor(), now_ms())?;
            let change = match outcome {
                db::Upsert::Added => CatalogChange::Added,
                db::Upsert::Updated => CatalogChange::Updated,
                db::Upsert::Unchanged => continue,
            };
            changed += 1;
            self.announce(KernelCatalogUpdate {
                blueprint_id: def.id.to_string(),
                change: change as i32,
                updated_at_ms: now_ms(),
                ..KernelCatalogUpdate::default()
            });
        }
        Ok(changed)
    }

    /// Catalog changes from now on (ADDED/UPDATED/QUARANTINED blueprints, new
    /// artifacts). A receiver that falls more than 1 024 updates behind is told
    /// how many it missed.
    pub fn subscribe(&self) -> broadcast::Receiver<KernelCatalogUpdate> {
        self.changes.subscribe()
    }

    /// Catalog entries matching `query`, ordered by id.
    pub fn list(&self, query: &CatalogQuery) -> Result<Vec<CatalogEntry>> {
        db::list_blueprints(&self.conn(), query)
    }

    /// One catalog entry.
    pub fn blueprint(&self, blueprint_id: &str) -> Result<CatalogEntry> {
        db::get_blueprint(&self.conn(), blueprint_id)?.ok_or_else(|| {
            rejected(Error::UnknownBlueprint {
                blueprint_id: blueprint_id.to_string(),
            })
        })
    }

    /// Quarantines a blueprint: selection never returns it again.
    pub fn quarantine_blueprint(&self, blueprint_id: &str, reason: &str) -> Result<()> {
        if !db::quarantine_blueprint(&self.conn(), blueprint_id, reason, now_ms())? {
            return Err(rejected(Error::UnknownBlueprint {
                blueprint_id: blueprint_id.to_string(),
            }));
        }
        self.announce(KernelCatalogUpdate {
            blueprint_id: blueprint_id.to_string(),
            change: CatalogChange::Quarantined as i32,
            updated_at_ms: now_ms(),
            ..KernelCatalogUpdate::default()
        });
        Ok(())
    }

    /// Artifacts of a blueprint (all when empty), newest first.
    pub fn artifacts(&self, blueprint_id: &str) -> Result<Vec<ArtifactRecord>> {
        // An unknown blueprint is NOT_FOUND, as GetBlueprint says, not an
        // empty list ("" lists every artifact).
        if !blueprint_id.is_empty() {
            self.blueprint(blueprint_id)?;
        }
        db::list_artifacts(&self.conn(), blueprint_id)
    }

    /// One artifact's record.
    pub fn artifact_record(&self, artifact_ref: &str) -> Result<ArtifactRecord> {
        db::get_artifact(&self.conn(), artifact_ref)?.ok_or_else(|| {
            rejected(Error::UnknownArtifact {
                artifact_ref: artifact_ref.to_string(),
            })
        })
    }

    /// An artifact's verified bytes: from the cache, or from disk re-hashed
    /// against the reference (a mismatch quarantines it and fails).
    pub fn fetch(&self, artifact_ref: &str) -> Result<Artifact> {
        let record = self.artifact_record(artifact_ref)?;
        if record.quarantined {
            return Err(rejected(Error::Quarantined {
                what: format!("artifact {artifact_ref}"),
                reason: record.quarantine_reason,
            }));
        }
        if let Some(bytes) = self.cache().get(artifact_ref) {
            return Ok(Artifact { record, bytes });
        }
        let started = Instant::now();
        let path = self.layout.artifact_path(artifact_ref);
        let bytes = match std::fs::read(&path) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                if e.kind() == std::io::ErrorKind::NotFound {
                    db::quarantine_artifact(&self.conn(), artifact_ref, "artifact file missing")?;
                }
                return Err(rejected(Error::Io {
                    context: "reading artifact",
                    path,
                    source: e,
                }));
            }
        };
        let actual = artifact::sha256_hex(&bytes);
        if actual != artifact_ref {
            self.quarantine_corrupt(artifact_ref, &format!("SHA-256 mismatch ({actual})"))?;
            return Err(rejected(Error::Integrity {
                artifact_ref: artifact_ref.to_string(),
                actual,
            }));
        }
        metrics::histogram!("urza_artifact_load_ms").record(started.elapsed().as_secs_f64() * 1e3);
        self.cache().insert(artifact_ref.to_string(), bytes.clone());
        Ok(Artifact { record, bytes })
    }

    fn quarantine_corrupt(&self, artifact_ref: &str, reason: &str) -> Result<()> {
        metrics::counter!("urza_integrity_failures_total").increment(1);
        self.cache().remove(artifact_ref);
        db::quarantine_artifact(&self.conn(), artifact_ref, reason)?;
        let blueprint_id = db::get_artifact(&self.conn(), artifact_ref)?
            .map(|r| r.blueprint_id)
            .unwrap_or_default();
        self.announce(KernelCatalogUpdate {
            blueprint_id,
            artifact_ref: artifact_ref.to_string(),
            checksum: artifact_ref.to_string(),
            change: CatalogChange::Quarantined as i32,
            updated_at_ms: now_ms(),
            ..KernelCatalogUpdate::default()
        });
        Ok(())
    }

    /// The newest forged artifact of `blueprint_id` for `slot` with `params`
    /// (the blueprint's defaults when empty), forging and saving one with
    /// weights seeded by `init_seed` when there is none.
    pub fn ensure_artifact(
        &self,
        blueprint_id: &str,
        slot: &SlotShape,
        params: &Parameters,
        init_seed: u64,
    ) -> Result<ArtifactRecord> {
        let def = definition(blueprint_id).ok_or_else(|| {
            rejected(Error::UnknownBlueprint {
                blueprint_id: blueprint_id.to_string(),
            })
        })?;
        // Given parameters override the defaults; the rest keep theirs.
        let params = def.with_defaults(params);
        self.check_bounds(def, blueprint_id, &params, slot)?;
        let entry = self.blueprint(blueprint_id)?;
        if entry.quarantined {
            return Err(rejected(Error::Quarantined {
                what: format!("blueprint {blueprint_id}"),
                reason: entry.quarantine_reason,
            }));
        }
        if let Some(found) = db::find_forged(
            &self.conn(),
            blueprint_id,
            &db::slot_key(slot),
            &db::parameters_key(&params),
        )? {
            return Ok(found);
        }
        let forged = forge(
            def,
            &params,
            slot,
            &ForgeOptions {
                batch: self.config.forge_batch,
                runs: self.config.forge_runs,
                seed: init_seed,
                ..ForgeOptions::default()
            },
        )?;
        let bytes = artifact::encode(&forged.module, None)?;
        let measured = Measured {
            build_ms: forged.build_ms,
            forward_p50_ms: forged.forward_p50_ms,
            forward_p95_ms: forged.forward_p95_ms,
        };
        self.save_bytes(&bytes, measured).map(|(record, _)| record)
    }

    /// Stores a trained instance (e.g. a fossilized seed) as a new artifact
    /// with its provenance, so the library learns from runs.
    pub fn store_trained(
        &self,
        module: &BlueprintModule,
        provenance: ArtifactProvenance,
    ) -> Result<ArtifactRecord> {
        let bytes = artifact::encode(module, Some(&provenance))?;
        self.save_bytes(&bytes, Measured::default())
            .map(|(record, _)| record)
    }

    /// Refuses, before anything is allocated, a slot or module larger than
    /// `max_slot_elements` / `max_forge_parameters` (requests come from
    /// outside: the gRPC service), or parameters the blueprint refuses.
    fn check_bounds(
        &self,
        def: &crate::blueprint::BlueprintDef,
        blueprint_id: &str,
        params: &Parameters,
        slot: &SlotShape,
    ) -> Result<()> {
        // Requests come from outside (the gRPC service): bound what forging
        // would allocate before anything is allocated.
        if slot.elements() > self.config.max_slot_elements {
            return Err(rejected(Error::InvalidSlot {
                reason: format!(
                    "{slot} has {} elements per image, more than urza.max_slot_elements = {}",
                    slot.elements(),
                    self.config.max_slot_elements
                ),
            }));
        }
        def.check(params, slot).map_err(rejected)?;
        let parameters = def.parameter_count(params, slot).map_err(rejected)?;
        if parameters > self.config.max_forge_parameters {
            return Err(rejected(Error::InvalidSlot {
                reason: format!(
                    "{blueprint_id} on {slot} would have {parameters} parameters, more than \
                     urza.max_forge_parameters = {}",
                    self.config.max_forge_parameters
                ),
            }));
        }
        Ok(())
    }

    /// Validates and stores artifact bytes (an upload); `created` is false when
    /// identical bytes were stored already.
    pub fn save_bytes(&self, bytes: &[u8], measured: Measured) -> Result<(ArtifactRecord, bool)> {
        self.save_bytes_observed(bytes, measured, &mut |_| {})
    }

    /// [`Library::save_bytes`], calling `observe` after each durable step (crash
    /// tests stop the process there; progress displays report it).
    pub fn save_bytes_observed(
        &self,
        bytes: &[u8],
        measured: Measured,
        observe: &mut dyn FnMut(SaveStep),
    ) -> Result<(ArtifactRecord, bool)> {
        // Validation first: the declared slot and module within the bounds
        // of a request from outside, the blueprint known, the weights finite
        // and rebuilding it with a matching guard digest.
        let declared = artifact::read_header(bytes).map_err(rejected)?;
        if let Some(def) = definition(&declared.blueprint_id) {
            self.check_bounds(
                def,
                &declared.blueprint_id,
                &declared.parameters,
                &declared.slot,
            )?;
        }
        let (header, module) =
            artifact::instantiate(bytes, &candle_core::Device::Cpu).map_err(rejected)?;
        let entry = self.blueprint(&header.blueprint_id)?;
        if entry.quarantined {
            return Err(rejected(Error::Quarantined {
                what: format!("blueprint {}", header.blueprint_id),
                reason: entry.quarantine_reason,
            }));
        }
        let artifact_ref = artifact::sha256_hex(bytes);
        if let Some(existing) = db::get_artifact(&self.conn(), &artifact_ref)? {
            return Ok((existing, false));
        }
        let (record, header) = record_of(bytes, artifact_ref.clone(), &header, &module, measured);

        let temp = files::write_temp(&self.layout, bytes)?;
        observe(SaveStep::TempWritten);
        let target = self.layout.artifact_path(&artifact_ref);
        if let Err(e) = files::publish(&temp, &target) {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
        observe(SaveStep::Renamed);
        let created = db::insert_artifact(
            &mut self.conn(),
            &record,
            &db::slot_key(&header.slot),
            &db::parameters_key(&header.parameters),
        )?;
        observe(SaveStep::Committed);
        self.announce(KernelCatalogUpdate {
            blueprint_id: record.blueprint_id.clone(),
            artifact_ref: artifact_ref.clone(),
            checksum: artifact_ref,
            guard_digest: record.guard_digest.clone(),
            build_ms: record.build_ms,
            prewarm_ms: record.forward_p50_ms,
            change: CatalogChange::Updated as i32,
            updated_at_ms: record.created_at_ms,
        });
        Ok((record, created))
    }

    /// Re-hashes and rebuilds every artifact; corrupt or missing ones are
    /// quarantined.
    pub fn verify(&self) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        for record in self.artifacts("")? {
            report.checked += 1;
            let path = self.layout.artifact_path(&record.artifact_ref);
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    db::quarantine_artifact(
                        &self.conn(),
                        &record.artifact_ref,
                        "artifact file missing",
                    )?;
                    report.missing.push(record.artifact_ref);
                    continue;
                }
                Err(e) => return Err(Error::io("reading artifact", path)(e)),
            };
            let actual = artifact::sha256_hex(&bytes);
            let problem = if actual != record.artifact_ref {
                Some(format!("SHA-256 mismatch ({actual})"))
            } else {
                artifact::instantiate(&bytes, &candle_core::Device::Cpu)
                    .err()
                    .map(|e| e.to_string())
            };
            match problem {
                Some(reason) => {
                    self.quarantine_corrupt(&record.artifact_ref, &reason)?;
                    report.corrupt.push((record.artifact_ref, reason));
                }
                None => report.healthy += 1,
            }
        }
        Ok(report)
    }

    /// Cache statistics.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache().stats()
    }

    /// Where an artifact's file lives (for operators and tests).
    pub fn artifact_path(&self, artifact_ref: &str) -> PathBuf {
        self.layout.artifact_path(artifact_ref)
    }

    /// The library's root directory.
    pub fn root(&self) -> &Path {
        &self.config.root
    }
}

/// Forge measurements stored with an artifact (zero for uploads and trained weights).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Measured {
    /// Build time, ms.
    pub build_ms: f64,
    /// Forward latency p50, ms.
    pub forward_p50_ms: f64,
    /// Forward latency p95, ms.
    pub forward_p95_ms: f64,
}

#[cfg(test)]
mod tests;
