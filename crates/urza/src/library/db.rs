//! The SQLite catalog: blueprints (descriptor, flags, tags, slot kinds) and
//! artifact rows (the protobuf record plus the columns queries filter on).

use leyline::v1::{ArtifactRecord, BlueprintDescriptor, CatalogEntry};
use prost::Message;
use rusqlite::{Connection, OptionalExtension, params};

use crate::error::{Error, Result};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS blueprints (
    blueprint_id      TEXT PRIMARY KEY,
    tier              INTEGER NOT NULL,
    descriptor        BLOB NOT NULL,
    quarantined       INTEGER NOT NULL DEFAULT 0,
    quarantine_reason TEXT NOT NULL DEFAULT '',
    updated_at_ms     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS blueprint_tags (
    blueprint_id TEXT NOT NULL REFERENCES blueprints(blueprint_id),
    tag          TEXT NOT NULL,
    PRIMARY KEY (blueprint_id, tag)
);
CREATE TABLE IF NOT EXISTS blueprint_slot_kinds (
    blueprint_id TEXT NOT NULL REFERENCES blueprints(blueprint_id),
    slot_kind    INTEGER NOT NULL,
    PRIMARY KEY (blueprint_id, slot_kind)
);
CREATE TABLE IF NOT EXISTS artifacts (
    artifact_ref      TEXT PRIMARY KEY,
    blueprint_id      TEXT NOT NULL REFERENCES blueprints(blueprint_id),
    slot_key          TEXT NOT NULL,
    parameters_key    TEXT NOT NULL,
    trained           INTEGER NOT NULL,
    created_at_ms     INTEGER NOT NULL,
    record            BLOB NOT NULL,
    quarantined       INTEGER NOT NULL DEFAULT 0,
    quarantine_reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS artifacts_by_blueprint
    ON artifacts (blueprint_id, slot_key, parameters_key, trained);
";

/// Opens (creating) the catalog database with durable settings.
pub(crate) fn open(path: &std::path::Path) -> Result<Connection> {
    let conn = Connection::open(path).map_err(Error::sqlite("opening"))?;
    // Several processes share one library (a cohort's workers, a fleet):
    // each waits for another's lock (even the one the WAL switch takes)
    // instead of failing at once.
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(Error::sqlite("setting the busy timeout"))?;
    // WAL + synchronous=FULL: a committed transaction survives a power cut.
    set_wal(&conn)?;
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(Error::sqlite("setting synchronous=FULL"))?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(Error::sqlite("enabling foreign keys"))?;
    conn.execute_batch(SCHEMA)
        .map_err(Error::sqlite("creating the schema"))?;
    Ok(conn)
}

/// Switches to WAL. On a new database another process may hold the lock the
/// switch needs, and SQLite then answers BUSY without waiting: retried for up
/// to the busy timeout.
fn set_wal(conn: &Connection) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Ok(()) => return Ok(()),
            Err(rusqlite::Error::SqliteFailure(f, _))
                if f.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => return Err(Error::sqlite("setting WAL journal")(e)),
        }
    }
}

/// How an upsert changed a blueprint row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Upsert {
    Added,
    Updated,
    Unchanged,
}

/// Inserts or updates a descriptor (its flags are kept).
pub(crate) fn upsert_blueprint(
    conn: &mut Connection,
    descriptor: &BlueprintDescriptor,
    now_ms: u64,
) -> Result<Upsert> {
    let bytes = descriptor.encode_to_vec();
    // IMMEDIATE: take the write lock before reading, so that two processes
    // never both read and then deadlock upgrading to write (SQLite answers
    // that with SQLITE_BUSY at once, whatever the busy timeout).
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(Error::sqlite("begin"))?;
    let existing: Option<Vec<u8>> = tx
        .query_row(
            "SELECT descriptor FROM blueprints WHERE blueprint_id = ?1",
            params![descriptor.blueprint_id],
            |r| r.get(0),
        )
        .optional()
        .map_err(Error::sqlite("reading a blueprint"))?;
    let outcome = match existing {
        Some(old) if old == bytes => return Ok(Upsert::Unchanged),
        Some(_) => Upsert::Updated,
        None => Upsert::Added,
    };
    tx.execute(
        "INSERT INTO blueprints (blueprint_id, tier, descriptor, updated_at_ms)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(blueprint_id) DO UPDATE SET
             tier = excluded.tier, descriptor = excluded.descriptor,
             updated_at_ms = excluded.updated_at_ms",
        params![
            descriptor.blueprint_id,
            descriptor.tier,
            bytes,
            now_ms as i64
        ],
    )
    .map_err(Error::sqlite("writing a blueprint"))?;
    tx.execute(
        "DELETE FROM blueprint_tags WHERE blueprint_id = ?1",
        params![descriptor.blueprint_id],
    )
    .map_err(Error::sqlite("clearing tags"))?;
    for tag in &descriptor.tags {
        tx.execute(
            "INSERT OR IGNORE INTO blueprint_tags (blueprint_id, tag) VALUES (?1, ?2)",
            params![descriptor.blueprint_id, tag],
        )
        .map_err(Error::sqlite("writing tags"))?;
    }
    tx.execute(
        "DELETE FROM blueprint_slot_kinds WHERE blueprint_id = ?1",
        params![descriptor.blueprint_id],
    )
    .map_err(Error::sqlite("clearing slot kinds"))?;
    for kind in &descriptor.slot_kinds {
        tx.execute(
            "INSERT OR IGNORE INTO blueprint_slot_kinds (blueprint_id, slot_kind) VALUES (?1, ?2)",
            params![descriptor.blueprint_id, kind],
        )
        .map_err(Error::sqlite("writing slot kinds"))?;
    }
    tx.commit().map_err(Error::sqlite("commit"))?;
    Ok(outcome)
}

/// Catalog query filters; `None` means any.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CatalogQuery {
    /// Only this tier (a `BlueprintTier` value).
    pub tier: Option<i32>,
    /// Only blueprints fitting this slot kind (a `SlotKind` value).
    pub slot_kind: Option<i32>,
    /// Only blueprints with this tag.
    pub tag: Option<String>,
    /// Include quarantined blueprints.
    pub include_quarantined: bool,
}

const ENTRY_COLUMNS: &str = "b.descriptor, b.quarantined, b.quarantine_reason, b.updated_at_ms,
    (SELECT COUNT(*) FROM artifacts a WHERE a.blueprint_id = b.blueprint_id)";

fn entry_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(Vec<u8>, bool, String, i64, i64)> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
    ))
}

fn to_entry(raw: (Vec<u8>, bool, String, i64, i64)) -> Result<CatalogEntry> {
    let (bytes, quarantined, reason, updated, count) = raw;
    let descriptor =
        BlueprintDescriptor::decode(bytes.as_slice()).map_err(|e| Error::CorruptCatalog {
            reason: format!("descriptor: {e}"),
        })?;
    Ok(CatalogEntry {
        descriptor: Some(descriptor),
        quarantined,
        quarantine_reason: reason,
        artifact_count: count.max(0) as u32,
        updated_at_ms: updated.max(0) as u64,
    })
}

/// Entries matching `query`, ordered by id.
pub(crate) fn list_blueprints(
    conn: &Connection,
    query: &CatalogQuery,
) -> Result<Vec<CatalogEntry>> {
    let sql = format!(
        "SELECT {ENTRY_COLUMNS} FROM blueprints b
         WHERE (?1 IS NULL OR b.tier = ?1)
           AND (?2 IS NULL OR EXISTS (SELECT 1 FROM blueprint_slot_kinds k
                                      WHERE k.blueprint_id = b.blueprint_id AND k.slot_kind = ?2))
           AND (?3 IS NULL OR EXISTS (SELECT 1 FROM blueprint_tags t
                                      WHERE t.blueprint_id = b.blueprint_id AND t.tag = ?3))
           AND (?4 OR b.quarantined = 0)
         ORDER BY b.blueprint_id"
    );
    let mut stmt = conn
        .prepare_cached(&sql)
        .map_err(Error::sqlite("listing blueprints"))?;
    let rows = stmt
        .query_map(
            params![
                query.tier,
                query.slot_kind,
                query.tag,
                query.include_quarantined
            ],
            entry_from_row,
        )
        .map_err(Error::sqlite("listing blueprints"))?;
    rows.map(|r| to_entry(r.map_err(Error::sqlite("reading a blueprint row"))?))
        .collect()
}

/// One entry by id.
pub(crate) fn get_blueprint(conn: &Connection, id: &str) -> Result<Option<CatalogEntry>> {
    let sql = format!("SELECT {ENTRY_COLUMNS} FROM blueprints b WHERE b.blueprint_id = ?1");
    let raw = conn
        .query_row(&sql, params![id], entry_from_row)
        .optional()
        .map_err(Error::sqlite("reading a blueprint"))?;
    raw.map(to_entry).transpose()
}

/// Sets a blueprint's quarantine flag; false when the id is unknown.
pub(crate) fn quarantine_blueprint(
    conn: &Connection,
    id: &str,
    reason: &str,
    now_ms: u64,
) -> Result<bool> {
    let n = conn
        .execute(
            "UPDATE blueprints SET quarantined = 1, quarantine_reason = ?2, updated_at_ms = ?3
             WHERE blueprint_id = ?1",
            params![id, reason, now_ms as i64],
        )
        .map_err(Error::sqlite("quarantining a blueprint"))?;
    Ok(n > 0)
}

/// The key an artifact's slot is indexed by.
pub(crate) fn slot_key(slot: &crate::SlotShape) -> String {
    slot.to_string()
}

/// The key an artifact's parameters are indexed by (canonical JSON).
pub(crate) fn parameters_key(params: &crate::Parameters) -> String {
    serde_json::to_string(params).unwrap_or_default()
}

/// Inserts an artifact row in one transaction; false when it already existed.
pub(crate) fn insert_artifact(
    conn: &mut Connection,
    record: &ArtifactRecord,
    slot_key: &str,
    parameters_key: &str,
) -> Result<bool> {
    // IMMEDIATE: take the write lock before reading, so that two processes
    // never both read and then deadlock upgrading to write (SQLite answers
    // that with SQLITE_BUSY at once, whatever the busy timeout).
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(Error::sqlite("begin"))?;
    let n = tx
        .execute(
            "INSERT OR IGNORE INTO artifacts
                 (artifact_ref, blueprint_id, slot_key, parameters_key, trained, created_at_ms, record)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                record.artifact_ref,
                record.blueprint_id,
                slot_key,
                parameters_key,
                record.provenance.is_some(),
                record.created_at_ms as i64,
                record.encode_to_vec()
            ],
        )
        .map_err(Error::sqlite("writing an artifact row"))?;
    tx.commit().map_err(Error::sqlite("commit"))?;
    Ok(n > 0)
}

const ARTIFACT_COLUMNS: &str = "record, quarantined, quarantine_reason";

fn artifact_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(Vec<u8>, bool, String)> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
}

fn to_record(raw: (Vec<u8>, bool, String)) -> Result<ArtifactRecord> {
    let (bytes, quarantined, reason) = raw;
    let mut record =
        ArtifactRecord::decode(bytes.as_slice()).map_err(|e| Error::CorruptCatalog {
            reason: format!("artifact record: {e}"),
        })?;
    record.quarantined = quarantined;
    record.quarantine_reason = reason;
    Ok(record)
}

/// One artifact row.
pub(crate) fn get_artifact(
    conn: &Connection,
    artifact_ref: &str,
) -> Result<Option<ArtifactRecord>> {
    let sql = format!("SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE artifact_ref = ?1");
    conn.query_row(&sql, params![artifact_ref], artifact_from_row)
        .optional()
        .map_err(Error::sqlite("reading an artifact"))?
        .map(to_record)
        .transpose()
}

/// Artifacts of a blueprint (all when `blueprint_id` is empty), newest first.
pub(crate) fn list_artifacts(conn: &Connection, blueprint_id: &str) -> Result<Vec<ArtifactRecord>> {
    let sql = format!(
        "SELECT {ARTIFACT_COLUMNS} FROM artifacts WHERE (?1 = '' OR blueprint_id = ?1)
         ORDER BY created_at_ms DESC, artifact_ref"
    );
    let mut stmt = conn
        .prepare_cached(&sql)
        .map_err(Error::sqlite("listing artifacts"))?;
    let rows = stmt
        .query_map(params![blueprint_id], artifact_from_row)
        .map_err(Error::sqlite("listing artifacts"))?;
    rows.map(|r| to_record(r.map_err(Error::sqlite("reading an artifact row"))?))
        .collect()
}

/// The newest healthy forged (untrained) artifact for this blueprint, slot and parameters.
pub(crate) fn find_forged(
    conn: &Connection,
    blueprint_id: &str,
    slot_key: &str,
    parameters_key: &str,
) -> Result<Option<ArtifactRecord>> {
    let sql = format!(
        "SELECT {ARTIFACT_COLUMNS} FROM artifacts
         WHERE blueprint_id = ?1 AND slot_key = ?2 AND parameters_key = ?3
           AND trained = 0 AND quarantined = 0
         ORDER BY created_at_ms DESC LIMIT 1"
    );
    conn.query_row(
        &sql,
        params![blueprint_id, slot_key, parameters_key],
        artifact_from_row,
    )
    .optional()
    .map_err(Error::sqlite("finding an artifact"))?
    .map(to_record)
    .transpose()
}

/// Sets an artifact's quarantine flag; false when the reference is unknown.
pub(crate) fn quarantine_artifact(
    conn: &Connection,
    artifact_ref: &str,
    reason: &str,
) -> Result<bool> {
    let n = conn
        .execute(
            "UPDATE artifacts SET quarantined = 1, quarantine_reason = ?2 WHERE artifact_ref = ?1",
            params![artifact_ref, reason],
        )
        .map_err(Error::sqlite("quarantining an artifact"))?;
    Ok(n > 0)
}

/// Every artifact reference with a row.
pub(crate) fn artifact_refs(conn: &Connection) -> Result<Vec<String>> {
    let mut stmt = conn
        .prepare("SELECT artifact_ref FROM artifacts")
        .map_err(Error::sqlite("listing references"))?;
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(Error::sqlite("listing references"))?;
    rows.map(|r| r.map_err(Error::sqlite("reading a reference")))
        .collect()
}
