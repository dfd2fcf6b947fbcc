//! The files that travel with fleet work: a job's attachments (the files
//! its configuration names) and a result's run files (the run directory's
//! top level). Names from the wire are checked before anything is written:
//! one path component, no `..`, nothing hidden.

use std::path::{Path, PathBuf};

use leyline::v1::RunFile;

use super::{FleetError, MAX_ATTACHMENT_BYTES, MAX_RESULT_BYTES, Result, io};
use crate::runlog::{LOCK, SUMMARY};

/// Configuration keys whose value is a file the run reads: the file goes
/// with the job, and the worker points the key at its copy.
pub const ATTACHED_KEYS: [&str; 2] = ["tamiyo.learned.policy", "tamiyo.script"];

fn lookup<'a>(table: &'a toml::Table, dotted: &str) -> Option<&'a toml::Value> {
    let mut parts = dotted.split('.');
    let mut value = table.get(parts.next()?)?;
    for part in parts {
        value = value.as_table()?.get(part)?;
    }
    Some(value)
}

fn set(table: &mut toml::Table, dotted: &str, value: toml::Value) -> Result<()> {
    let parts: Vec<&str> = dotted.split('.').collect();
    let (last, path) = parts
        .split_last()
        .ok_or_else(|| FleetError::Invalid("an empty configuration key".into()))?;
    let mut table = table;
    for part in path {
        table = table
            .entry((*part).to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| {
                FleetError::Invalid(format!("configuration key {dotted}: {part} is not a table"))
            })?;
    }
    table.insert((*last).to_owned(), value);
    Ok(())
}

/// The files `config` names under [`ATTACHED_KEYS`], read for a job.
pub fn attachments(config: &toml::Table) -> Result<Vec<RunFile>> {
    let mut out = Vec::new();
    for key in ATTACHED_KEYS {
        let Some(value) = lookup(config, key) else {
            continue;
        };
        let path = value
            .as_str()
            .ok_or_else(|| FleetError::Invalid(format!("{key} is not a path")))?;
        let len = std::fs::metadata(path).map_err(io(path))?.len();
        if len > MAX_ATTACHMENT_BYTES {
            return Err(FleetError::Invalid(format!(
                "{key} = {path}: {len} bytes, more than a job carries ({MAX_ATTACHMENT_BYTES})"
            )));
        }
        out.push(RunFile {
            name: key.to_owned(),
            content: std::fs::read(path).map_err(io(path))?,
        });
    }
    Ok(out)
}

/// Stores a job's attachments under `dir` and points their keys at the
/// copies; sets `run.dir` to `run_dir`. Returns the configuration to run.
pub fn localise(
    config: &mut toml::Table,
    attachments: &[RunFile],
    dir: &Path,
    run_dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    for file in attachments {
        if !ATTACHED_KEYS.contains(&file.name.as_str()) {
            return Err(FleetError::Invalid(format!(
                "the job attaches a file to {:?}, which is none of {ATTACHED_KEYS:?}",
                file.name
            )));
        }
        let original = lookup(config, &file.name)
            .and_then(toml::Value::as_str)
            .map(PathBuf::from);
        // Keep the extension: a policy is found by its name beside it.
        let ext = original
            .as_ref()
            .and_then(|p| p.extension())
            .and_then(|e| e.to_str())
            .map(|e| format!(".{e}"))
            .unwrap_or_default();
        let path = dir.join(format!("{}{ext}", file.name.replace('.', "_")));
        std::fs::write(&path, &file.content).map_err(io(&path))?;
        set(
            config,
            &file.name,
            toml::Value::String(path.display().to_string()),
        )?;
    }
    set(
        config,
        "run.dir",
        toml::Value::String(run_dir.display().to_string()),
    )
}

/// Whether `name` is one plain path component (a result's file name).
fn plain(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && Path::new(name).components().count() == 1
}

/// The top-level regular files of a run directory (not the lock, not
/// `checkpoints/`), for a result.
pub fn collect(run_dir: &Path) -> Result<Vec<RunFile>> {
    let mut out = Vec::new();
    let mut total = 0u64;
    let entries = match std::fs::read_dir(run_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io(run_dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io(run_dir))?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let kind = entry.file_type().map_err(io(entry.path()))?;
        if !kind.is_file() || name == LOCK || !plain(&name) {
            continue;
        }
        let content = std::fs::read(entry.path()).map_err(io(entry.path()))?;
        total += content.len() as u64;
        if total > MAX_RESULT_BYTES {
            return Err(FleetError::Invalid(format!(
                "{}: the run's files pass {MAX_RESULT_BYTES} bytes, more than a result carries",
                run_dir.display()
            )));
        }
        out.push(RunFile { name, content });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Writes a result's files into `run_dir`, each atomically, the summary
/// last (a run is finished once its summary is there). Every name is
/// checked before anything is written.
pub fn write(run_dir: &Path, files: &[RunFile]) -> Result<()> {
    if let Some(bad) = files.iter().find(|f| !plain(&f.name) || f.name == LOCK) {
        return Err(FleetError::Invalid(format!(
            "a result names the file {:?}: not a plain file name",
            bad.name
        )));
    }
    std::fs::create_dir_all(run_dir).map_err(io(run_dir))?;
    let (summary, rest): (Vec<&RunFile>, Vec<&RunFile>) =
        files.iter().partition(|f| f.name == SUMMARY);
    for file in rest.into_iter().chain(summary) {
        let path = run_dir.join(&file.name);
        let tmp = run_dir.join(format!(".{}.fleet-tmp", file.name));
        std::fs::write(&tmp, &file.content).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_files_round_trip_without_the_lock_or_checkpoints() {
        let from = tempfile::tempdir().unwrap();
        std::fs::write(from.path().join(SUMMARY), "{}").unwrap();
        std::fs::write(from.path().join("metrics.jsonl"), "line\n").unwrap();
        std::fs::write(from.path().join(LOCK), "pid").unwrap();
        std::fs::create_dir(from.path().join("checkpoints")).unwrap();
        std::fs::write(from.path().join("checkpoints/e1.ckpt"), "x").unwrap();
        let files = collect(from.path()).unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["metrics.jsonl", SUMMARY]);
        let to = tempfile::tempdir().unwrap();
        write(&to.path().join("run"), &files).unwrap();
        assert_eq!(
            std::fs::read_to_string(to.path().join("run/metrics.jsonl")).unwrap(),
            "line\n"
        );
        assert!(collect(&to.path().join("missing")).unwrap().is_empty());
    }

    #[test]
    fn a_result_naming_a_path_writes_nothing() {
        let to = tempfile::tempdir().unwrap();
        for name in ["../escape", "a/b", "", ".hidden", LOCK, "/etc/x"] {
            let files = [
                RunFile {
                    name: "metrics.jsonl".into(),
                    content: b"x".to_vec(),
                },
                RunFile {
                    name: name.into(),
                    content: b"x".to_vec(),
                },
            ];
            let err = write(to.path(), &files).unwrap_err();
            assert!(err.to_string().contains("not a plain file name"), "{err}");
            assert!(!to.path().join("metrics.jsonl").exists());
        }
    }

    #[test]
    fn attachments_travel_and_land_where_the_config_points() {
        let dir = tempfile::tempdir().unwrap();
        let policy = dir.path().join("p.safetensors");
        std::fs::write(&policy, b"weights").unwrap();
        let mut config: toml::Table = toml::from_str(&format!(
            "[tamiyo.learned]\npolicy = \"{}\"\n[run]\ndir = \"/elsewhere\"\n",
            policy.display()
        ))
        .unwrap();
        let files = attachments(&config).unwrap();
        assert_eq!(files.len(), 1);
        let worker = dir.path().join("worker");
        localise(
            &mut config,
            &files,
            &worker.join("att"),
            &worker.join("runs"),
        )
        .unwrap();
        let moved = lookup(&config, "tamiyo.learned.policy")
            .and_then(toml::Value::as_str)
            .unwrap()
            .to_owned();
        assert!(
            moved.ends_with("tamiyo_learned_policy.safetensors"),
            "{moved}"
        );
        assert_eq!(std::fs::read(&moved).unwrap(), b"weights");
        assert_eq!(
            lookup(&config, "run.dir").and_then(toml::Value::as_str),
            Some(worker.join("runs").display().to_string().as_str())
        );
        let bad = [RunFile {
            name: "leyline.security.secret".into(),
            content: vec![],
        }];
        assert!(localise(&mut config, &bad, &worker, &worker).is_err());
        let missing: toml::Table =
            toml::from_str("[tamiyo]\nscript = \"/no/such/file\"\n").unwrap();
        assert!(
            attachments(&missing)
                .unwrap_err()
                .to_string()
                .contains("/no/such/file")
        );
    }
}
