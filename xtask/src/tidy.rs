//! `cargo xtask tidy`: structural rules that the compiler does not check.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Longest allowed source file, in lines.
const MAX_LINES: usize = 800;

/// Internal dependencies each crate may have (docs/ARCHITECTURE.md, Codemap). Crates listed with
/// `None` may depend on anything in the workspace.
const ALLOWED: &[(&str, Option<&[&str]>)] = &[
    ("esper-ops", Some(&[])),
    ("leyline", Some(&[])),
    ("oona", Some(&["leyline"])),
    ("urza", Some(&["leyline", "oona", "esper-ops"])),
    ("kasmina", Some(&["leyline", "oona", "urza", "esper-ops"])),
    ("tamiyo", Some(&["leyline", "oona", "urza", "esper-ops"])),
    (
        "tolaria",
        Some(&["leyline", "oona", "kasmina", "esper-ops"]),
    ),
    ("esper-runtime", None),
    ("xtask", None),
    ("esper-integration-tests", None),
];

pub(crate) fn run(root: &Path) -> Result<()> {
    let mut problems = Vec::new();
    problems.extend(dependency_dag(root)?);
    let sources = rust_sources(root)?;
    for file in &sources {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let rel = file
            .strip_prefix(root)
            .unwrap_or(file)
            .display()
            .to_string();
        let lines = text.lines().count();
        if lines > MAX_LINES {
            problems.push(format!(
                "{rel}: {lines} lines, more than {MAX_LINES}: split it into modules"
            ));
        }
        problems.extend(wildcard_arms(&rel, &text, &leyline_enums(root)?));
        problems.extend(device_crossings(&rel, &text));
    }
    problems.extend(library_docs(root)?);
    if problems.is_empty() {
        println!("tidy: ok ({} source files)", sources.len());
        Ok(())
    } else {
        for p in &problems {
            eprintln!("tidy: {p}");
        }
        bail!("{} tidy problem(s)", problems.len())
    }
}

fn dependency_dag(root: &Path) -> Result<Vec<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(root)
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing cargo metadata")?;
    let packages = meta["packages"]
        .as_array()
        .context("metadata without packages")?;
    let members: BTreeSet<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    let allowed: BTreeMap<&str, Option<&[&str]>> = ALLOWED.iter().copied().collect();
    let mut problems = Vec::new();
    for package in packages {
        let name = package["name"].as_str().unwrap_or("?");
        let Some(rule) = allowed.get(name) else {
            problems.push(format!(
                "crate `{name}` is not in the dependency DAG (xtask/src/tidy.rs ALLOWED)"
            ));
            continue;
        };
        let Some(permitted) = rule else { continue };
        for dep in package["dependencies"].as_array().into_iter().flatten() {
            let dep_name = dep["name"].as_str().unwrap_or("?");
            // A crate's own tests may depend on it with test-only features.
            let own_tests = dep_name == name && dep["kind"].as_str() == Some("dev");
            if members.contains(dep_name) && !permitted.contains(&dep_name) && !own_tests {
                let kind = dep["kind"].as_str().unwrap_or("normal");
                problems.push(format!(
                    "`{name}` may not depend on `{dep_name}` ({kind} dependency); see docs/ARCHITECTURE.md"
                ));
            }
        }
    }
    Ok(problems)
}

fn rust_sources(root: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for dir in ["crates", "xtask", "tests", "fuzz/fuzz_targets"] {
        collect(&root.join(dir), &mut files)?;
    }
    files.sort();
    Ok(files)
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            collect(&path, files)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    Ok(())
}

/// The one module allowed to move tensors between devices.
const DEVICE_MODULE: &str = "crates/esper-ops/src/device.rs";

/// `.to_device(` in library code outside [`DEVICE_MODULE`]: a device
/// crossing not made through `esper_ops::device::move_to`. Test code (files
/// named `tests.rs`, `tests/` folders, anything after a file's first
/// `#[cfg(test)]`) may move tensors freely; benches are not library code.
fn device_crossings(rel: &str, text: &str) -> Vec<String> {
    let library = rel.starts_with("crates/") && rel.contains("/src/");
    if !library || rel == DEVICE_MODULE || rel.ends_with("/tests.rs") || rel.contains("/tests/") {
        return Vec::new();
    }
    text.lines()
        .take_while(|line| line.trim() != "#[cfg(test)]")
        .enumerate()
        .filter(|(_, line)| !line.trim_start().starts_with("//") && line.contains(".to_device("))
        .map(|(i, _)| {
            format!(
                "{rel}:{}: `.to_device(` outside {DEVICE_MODULE}: cross devices with \
                 esper_ops::device::move_to, naming the crossing",
                i + 1
            )
        })
        .collect()
}

/// Enum names declared in the contracts.
fn leyline_enums(root: &Path) -> Result<Vec<String>> {
    let dir = root.join("proto/leyline/v1");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let text = std::fs::read_to_string(entry?.path())?;
        for line in text.lines() {
            if let Some(rest) = line.trim_start().strip_prefix("enum ") {
                names.push(rest.trim_end_matches('{').trim().to_string());
            }
        }
    }
    Ok(names)
}

/// Catch-all arms (`_ =>`, `other =>`) in a `match` whose other arms name a Leyline enum. A cheap textual
/// check (clippy's `wildcard_enum_match_arm` is the compiler-side one): from each
/// wildcard arm, look back to the nearest `match` and scan the arms in between.
fn wildcard_arms(rel: &str, text: &str, enums: &[String]) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut problems = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if !is_catch_all(line) {
            continue;
        }
        for back in (i.saturating_sub(60)..i).rev() {
            let line = lines[back];
            // Only the arm's pattern counts: the text before `=>`, without its guard.
            let pattern = line.split("=>").next().unwrap_or("");
            let pattern = pattern.split(" if ").next().unwrap_or(pattern);
            let is_arm = line.contains("=>");
            if let Some(name) = enums
                .iter()
                .find(|e| is_arm && pattern.contains(&format!("{e}::")))
            {
                problems.push(format!(
                    "{rel}:{}: `_ =>` in a match over Leyline enum `{name}`: list every variant",
                    i + 1
                ));
                break;
            }
            if line.contains("match ") {
                break;
            }
        }
    }
    problems
}

/// An arm that matches anything: `_ =>` or a bare binding such as `other =>`.
fn is_catch_all(line: &str) -> bool {
    let Some((pattern, _)) = line.trim_start().split_once("=>") else {
        return false;
    };
    let pattern = pattern.trim();
    pattern == "_"
        || (!pattern.is_empty()
            && pattern
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && pattern.starts_with(|c: char| c.is_ascii_lowercase() || c == '_'))
}

/// Every library crate opens with `//!` docs and denies missing docs.
fn library_docs(root: &Path) -> Result<Vec<String>> {
    let mut libs = vec![root.join("tests/lib.rs")];
    for entry in std::fs::read_dir(root.join("crates"))? {
        let lib = entry?.path().join("src/lib.rs");
        if lib.exists() {
            libs.push(lib);
        }
    }
    let mut problems = Vec::new();
    for lib in libs {
        let text = std::fs::read_to_string(&lib)?;
        let rel = lib.strip_prefix(root).unwrap_or(&lib).display().to_string();
        if !text.trim_start().starts_with("//!") {
            problems.push(format!("{rel}: must open with `//!` crate documentation"));
        }
        if !text.contains("#![deny(missing_docs)]") {
            problems.push(format!("{rel}: must contain `#![deny(missing_docs)]`"));
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_over_a_leyline_enum_is_reported() {
        let enums = vec!["SeedStage".to_string()];
        let bad = "match s {\n    SeedStage::Dormant => 1,\n    _ => 2,\n}\n";
        assert_eq!(wildcard_arms("x.rs", bad, &enums).len(), 1);
        let in_body = "match n {\n    Some(1) => SeedStage::Dormant,\n    x if x == SeedStage::Dormant => 3,\n    _ => 2,\n}\n";
        assert!(wildcard_arms("x.rs", in_body, &enums).is_empty());
        let other = "match n {\n    Some(1) => 1,\n    _ => 2,\n}\n";
        assert!(wildcard_arms("x.rs", other, &enums).is_empty());
        let exhaustive =
            "match s {\n    SeedStage::Dormant => 1,\n    SeedStage::Unknown => 2,\n}\n";
        assert!(wildcard_arms("x.rs", exhaustive, &enums).is_empty());
    }

    #[test]
    fn a_device_crossing_outside_the_device_module_is_reported() {
        let raw = "fn f(t: &Tensor, d: &Device) {\n    t.to_device(d)\n}\n";
        let found = device_crossings("crates/urza/src/x.rs", raw);
        assert_eq!(found.len(), 1);
        assert!(found[0].starts_with("crates/urza/src/x.rs:2:"), "{found:?}");
        assert!(device_crossings(DEVICE_MODULE, raw).is_empty());
        assert!(device_crossings("crates/urza/src/tests.rs", raw).is_empty());
        assert!(device_crossings("crates/urza/tests/x.rs", raw).is_empty());
        let in_tests = format!("fn g() {{}}\n#[cfg(test)]\n{raw}");
        assert!(device_crossings("crates/urza/src/x.rs", &in_tests).is_empty());
        let doc = "/// `.to_device(` is not called here\nfn g() {}\n";
        assert!(device_crossings("crates/urza/src/x.rs", doc).is_empty());
    }

    #[test]
    fn the_dag_forbids_tamiyo_on_kasmina() {
        let rules: BTreeMap<&str, Option<&[&str]>> = ALLOWED.iter().copied().collect();
        let tamiyo = rules["tamiyo"].unwrap();
        assert!(!tamiyo.contains(&"kasmina") && !tamiyo.contains(&"tolaria"));
        assert_eq!(rules["leyline"], Some(&[][..]));
    }

    /// `cargo test` alone catches a broken dependency DAG, an oversized file,
    /// a wildcard arm over a Leyline enum or an undocumented crate.
    #[test]
    fn the_workspace_is_tidy() {
        let root = crate::workspace_root().expect("workspace root");
        if let Err(e) = run(&root) {
            panic!("{e:#}");
        }
    }
}
