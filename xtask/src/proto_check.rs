//! `cargo xtask proto-check`: lints the Leyline contracts and guards their wire
//! compatibility against `proto/leyline.lock`.
//!
//! The lock lists every field (`message Name.field = number type`) and enum value
//! (`enum Name.VALUE = number`). A locked entry must stay as it is, or its number
//! must be `reserved` (a deliberate removal). New entries make the check fail until
//! they are recorded with `--bless`, so every contract change is intentional.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet};

const PACKAGE: &str = "esper.leyline.v1";
/// The flows contracts are organised by; one file each.
const FILES: &[&str] = &[
    "blueprints",
    "budgets",
    "bus",
    "commands",
    "field_reports",
    "jobs",
    "kernels",
    "lifecycle",
    "state",
    "tamiyo",
    "telemetry",
    "urza",
];
const LOCK: &str = "proto/leyline.lock";

pub(crate) fn run(root: &Path, bless: bool) -> Result<()> {
    let proto_root = root.join("proto");
    let dir = proto_root.join("leyline/v1");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "proto"))
        .collect();
    files.sort();
    let fds =
        protox::compile(&files, [&proto_root]).context("compiling the contracts with protox")?;

    let mut problems = lint(&fds);
    let current = entries(&fds);
    let lock_path = root.join(LOCK);
    let locked = match std::fs::read_to_string(&lock_path) {
        Ok(text) => parse_lock(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && bless => BTreeMap::new(),
        Err(e) => {
            return Err(e).with_context(|| format!("reading {LOCK} (create it with --bless)"));
        }
    };
    let reserved = reserved_numbers(&fds);
    let (breaking, added) = compare(&locked, &current, &reserved);
    problems.extend(breaking);

    if !problems.is_empty() {
        for p in &problems {
            eprintln!("proto-check: {p}");
        }
        bail!("{} contract problem(s)", problems.len());
    }
    if bless {
        let mut text = String::from(
            "# Wire contract lock: maintained by `cargo xtask proto-check --bless`.\n",
        );
        for (key, value) in &current {
            text.push_str(&format!("{key} = {value}\n"));
        }
        std::fs::write(&lock_path, text).with_context(|| format!("writing {LOCK}"))?;
        println!("proto-check: lock written ({} entries)", current.len());
        return Ok(());
    }
    if !added.is_empty() {
        for a in &added {
            eprintln!("proto-check: new contract entry not in the lock: {a}");
        }
        bail!(
            "{} new entries: run `cargo xtask proto-check --bless` to record them",
            added.len()
        );
    }
    println!(
        "proto-check: ok ({} files, {} locked entries)",
        files.len(),
        current.len()
    );
    Ok(())
}

fn lint(fds: &FileDescriptorSet) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen_files = BTreeSet::new();
    for file in &fds.file {
        let name = file.name();
        let stem = name
            .trim_start_matches("leyline/v1/")
            .trim_end_matches(".proto");
        seen_files.insert(stem.to_string());
        if !FILES.contains(&stem) {
            problems.push(format!("{name}: not one of the contract flows {FILES:?}"));
        }
        if file.package() != PACKAGE {
            problems.push(format!(
                "{name}: package `{}` must be `{PACKAGE}`",
                file.package()
            ));
        }
        for e in &file.enum_type {
            let prefix = screaming(e.name());
            match e.value.first() {
                Some(v)
                    if v.number() == 0
                        && (v.name().ends_with("_UNSPECIFIED")
                            || v.name().ends_with("_UNKNOWN")) => {}
                _ => problems.push(format!(
                    "enum {}: value 0 must be {prefix}_UNSPECIFIED or {prefix}_UNKNOWN",
                    e.name()
                )),
            }
            for v in &e.value {
                if !v.name().starts_with(&format!("{prefix}_")) {
                    problems.push(format!(
                        "enum {}: value {} must start with {prefix}_",
                        e.name(),
                        v.name()
                    ));
                }
            }
        }
        for m in &file.message_type {
            for f in &m.field {
                if f.name() != f.name().to_ascii_lowercase() {
                    problems.push(format!(
                        "{}.{}: field names are snake_case",
                        m.name(),
                        f.name()
                    ));
                }
            }
        }
    }
    for expected in FILES {
        if !seen_files.contains(*expected) {
            problems.push(format!("missing contract file leyline/v1/{expected}.proto"));
        }
    }
    problems
}

/// `SeedStage` → `SEED_STAGE`.
fn screaming(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

fn field_type(f: &prost_types::FieldDescriptorProto) -> String {
    let label = match f.label() {
        Label::Repeated => "repeated ",
        Label::Optional if f.proto3_optional() => "optional ",
        Label::Optional | Label::Required => "",
    };
    let ty = match f.r#type() {
        Type::Message | Type::Enum => f.type_name().trim_start_matches('.').to_string(),
        other => other
            .as_str_name()
            .trim_start_matches("TYPE_")
            .to_ascii_lowercase(),
    };
    format!("{label}{ty}")
}

fn message_entries(prefix: &str, m: &DescriptorProto, out: &mut BTreeMap<String, String>) {
    let name = format!("{prefix}.{}", m.name());
    for f in &m.field {
        out.insert(
            format!("message {name}.{}", f.name()),
            format!("{} {}", f.number(), field_type(f)),
        );
    }
    for nested in &m.nested_type {
        // Map entries are implied by their map field's type.
        if !nested.options.as_ref().is_some_and(|o| o.map_entry()) {
            message_entries(&name, nested, out);
        }
    }
}

fn entries(fds: &FileDescriptorSet) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for file in &fds.file {
        for m in &file.message_type {
            message_entries(file.package(), m, &mut out);
        }
        for e in &file.enum_type {
            for v in &e.value {
                out.insert(
                    format!("enum {}.{}.{}", file.package(), e.name(), v.name()),
                    v.number().to_string(),
                );
            }
        }
    }
    out
}

/// Reserved numbers per message or enum (`message pkg.Name` / `enum pkg.Name`).
fn reserved_numbers(fds: &FileDescriptorSet) -> BTreeMap<String, Vec<(i32, i32)>> {
    let mut out = BTreeMap::new();
    for file in &fds.file {
        for m in &file.message_type {
            let ranges = m
                .reserved_range
                .iter()
                .map(|r| (r.start(), r.end() - 1))
                .collect();
            out.insert(format!("message {}.{}", file.package(), m.name()), ranges);
        }
        for e in &file.enum_type {
            let ranges = e
                .reserved_range
                .iter()
                .map(|r| (r.start(), r.end()))
                .collect();
            out.insert(format!("enum {}.{}", file.package(), e.name()), ranges);
        }
    }
    out
}

fn parse_lock(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split_once(" = "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Breaking changes (changed or unreserved removals) and additions.
fn compare(
    locked: &BTreeMap<String, String>,
    current: &BTreeMap<String, String>,
    reserved: &BTreeMap<String, Vec<(i32, i32)>>,
) -> (Vec<String>, Vec<String>) {
    let mut breaking = Vec::new();
    for (key, old) in locked {
        match current.get(key) {
            Some(new) if new == old => {}
            Some(new) => breaking.push(format!(
                "{key} changed from `{old}` to `{new}` (wire-incompatible)"
            )),
            None => {
                let owner = key.rsplit_once('.').map(|(o, _)| o).unwrap_or(key);
                let number: i32 = old
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(-1);
                let is_reserved = reserved.get(owner).is_some_and(|ranges| {
                    ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&number))
                });
                if !is_reserved {
                    breaking.push(format!(
                        "{key} (= {old}) was removed without reserving its number"
                    ));
                }
            }
        }
    }
    let added = current
        .keys()
        .filter(|k| !locked.contains_key(*k))
        .cloned()
        .collect();
    (breaking, added)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_and_unreserved_removals_are_breaking() {
        let locked = parse_lock(
            "message p.M.a = 1 string\nmessage p.M.b = 2 int32\nmessage p.M.c = 3 bool\n",
        );
        let mut current = locked.clone();
        current.insert("message p.M.a".into(), "1 bytes".into());
        current.remove("message p.M.b");
        current.remove("message p.M.c");
        current.insert("message p.M.d".into(), "4 string".into());
        let reserved = BTreeMap::from([("message p.M".to_string(), vec![(3, 3)])]);
        let (breaking, added) = compare(&locked, &current, &reserved);
        assert_eq!(breaking.len(), 2, "{breaking:?}");
        assert!(breaking[0].contains("p.M.a") && breaking[1].contains("p.M.b"));
        assert_eq!(added, vec!["message p.M.d".to_string()]);
    }

    #[test]
    fn screaming_case() {
        assert_eq!(screaming("SeedStage"), "SEED_STAGE");
        assert_eq!(screaming("BusMessageType"), "BUS_MESSAGE_TYPE");
    }
}
