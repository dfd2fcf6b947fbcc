//! `esper urza …`: list, show, forge, verify and serve the blueprint library,
//! with table output. `list` and `show` go through [`urza::BlueprintStore`], so
//! they read the shared service when `urza.remote` is set.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use leyline::v1::{BlueprintTier, CatalogEntry, SlotKind};
use tokio_util::sync::CancellationToken;
use urza::grpc::RemoteStore;
use urza::{
    BlueprintStore, CatalogQuery, EnsureRequest, Library, LocalStore, Parameters, SlotShape,
};

use crate::bus::RunBus;
use crate::config::Resolved;
use crate::error::{Error, Result};

/// Filters of `esper urza list`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// `safe`, `experimental` or `high_risk`.
    pub tier: Option<String>,
    /// `dense` or `conv2d`.
    pub slot_kind: Option<String>,
    /// A tag.
    pub tag: Option<String>,
    /// Include quarantined blueprints.
    pub all: bool,
}

fn bad(key: &str, detail: String) -> Error {
    Error::Config(leyline::ConfigError::at(key, detail))
}

/// Parses `safe | experimental | high_risk`.
pub fn parse_tier(text: &str) -> Result<BlueprintTier> {
    match text {
        "safe" => Ok(BlueprintTier::Safe),
        "experimental" => Ok(BlueprintTier::Experimental),
        "high_risk" | "high-risk" => Ok(BlueprintTier::HighRisk),
        other => Err(bad(
            "--tier",
            format!("{other:?} is not safe, experimental or high_risk"),
        )),
    }
}

/// Parses `dense:F` or `conv2d:CxHxW`.
pub fn parse_slot(text: &str) -> Result<SlotShape> {
    let err = |detail: String| bad("--slot", detail);
    let (kind, dims) = text
        .split_once(':')
        .ok_or_else(|| err(format!("{text:?} is not dense:F or conv2d:CxHxW")))?;
    let shape = dims
        .split('x')
        .map(|d| d.parse::<usize>())
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| err(format!("{dims:?}: {e}")))?;
    let kind = match kind {
        "dense" => SlotKind::Dense,
        "conv2d" => SlotKind::Conv2d,
        other => return Err(err(format!("slot kind {other:?} is not dense or conv2d"))),
    };
    Ok(SlotShape::new(kind, shape)?)
}

/// Parses `name=value` pairs.
pub fn parse_params(pairs: &[String]) -> Result<Parameters> {
    let mut out = Parameters::new();
    for pair in pairs {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| bad("--param", format!("{pair:?} is not name=value")))?;
        let value = v
            .parse::<f64>()
            .map_err(|e| bad("--param", format!("{pair:?}: {e}")))?;
        out.insert(k.to_string(), value);
    }
    Ok(out)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Runtime(format!("cannot start a runtime: {e}")))
}

fn open_library(resolved: &Resolved) -> Result<Arc<Library>> {
    // The root is named: a read-only or full disk is then a message about
    // this directory, not about "a readonly database".
    let (library, report) =
        Library::open(resolved.config.urza.library()).map_err(|e| Error::Library {
            root: resolved.config.urza.root.clone(),
            source: Box::new(e),
        })?;
    if report.temp_files_removed + report.orphans_recovered > 0
        || !report.missing_files.is_empty()
        || !report.orphans_quarantined.is_empty()
    {
        eprintln!(
            "urza: recovered the library: {} temp file(s) of interrupted saves removed, \
             {} uncatalogued artifact(s) verified and catalogued again, \
             {} missing file(s) quarantined",
            report.temp_files_removed,
            report.orphans_recovered,
            report.missing_files.len()
        );
        for (reference, why) in &report.orphans_quarantined {
            eprintln!(
                "urza: uncatalogued artifact {reference} did not verify ({why}): moved to {}",
                resolved.config.urza.root.join("quarantine").display()
            );
        }
    }
    Ok(Arc::new(library))
}

/// The configured store: the shared service when `urza.remote` is set, else
/// the local library.
pub(crate) async fn store(resolved: &Resolved) -> Result<Box<dyn BlueprintStore>> {
    Ok(match resolved.config.urza.remote_store() {
        // Uploads carry a write token made with the run's shared secret.
        Some(remote) => Box::new(
            RemoteStore::connect(&remote.with_auth_key(resolved.signing_key.clone())).await?,
        ),
        None => Box::new(LocalStore::new(open_library(resolved)?)),
    })
}

fn tier_name(tier: i32) -> &'static str {
    match BlueprintTier::try_from(tier).unwrap_or(BlueprintTier::Unspecified) {
        BlueprintTier::Unspecified => "?",
        BlueprintTier::Safe => "safe",
        BlueprintTier::Experimental => "experimental",
        BlueprintTier::HighRisk => "high_risk",
    }
}

fn slot_kinds(kinds: &[i32]) -> String {
    kinds
        .iter()
        .map(
            |k| match SlotKind::try_from(*k).unwrap_or(SlotKind::Unspecified) {
                SlotKind::Unspecified => "?",
                SlotKind::Dense => "dense",
                SlotKind::Conv2d => "conv2d",
            },
        )
        .collect::<Vec<_>>()
        .join(",")
}

/// Renders rows as an aligned table under `header`.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

fn entry_row(e: &CatalogEntry) -> Vec<String> {
    let d = e.descriptor.clone().unwrap_or_default();
    let mut flags = Vec::new();
    if e.quarantined {
        flags.push("quarantined");
    }
    if d.approval_required {
        flags.push("approval");
    }
    vec![
        d.blueprint_id,
        tier_name(d.tier).into(),
        format!("{:.2}", d.risk),
        slot_kinds(&d.slot_kinds),
        d.allowed_parameters
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(","),
        e.artifact_count.to_string(),
        flags.join(","),
    ]
}

/// `esper urza list`.
pub fn list(resolved: &Resolved, filter: &ListFilter) -> Result<String> {
    let query = CatalogQuery {
        tier: filter
            .tier
            .as_deref()
            .map(parse_tier)
            .transpose()?
            .map(|t| t as i32),
        slot_kind: filter
            .slot_kind
            .as_deref()
            .map(|k| parse_slot(&format!("{k}:1x1x1")).or_else(|_| parse_slot(&format!("{k}:1"))))
            .transpose()?
            .map(|s| s.kind() as i32),
        tag: filter.tag.clone(),
        include_quarantined: filter.all,
    };
    let entries = runtime()?
        .block_on(async { Ok::<_, Error>(store(resolved).await?.list_blueprints(query).await?) })?;
    let rows: Vec<Vec<String>> = entries.iter().map(entry_row).collect();
    Ok(table(
        &[
            "ID",
            "TIER",
            "RISK",
            "SLOTS",
            "PARAMETERS",
            "ARTIFACTS",
            "FLAGS",
        ],
        &rows,
    ))
}

/// `esper urza show ID`.
pub fn show(resolved: &Resolved, blueprint_id: &str) -> Result<String> {
    let (entry, artifacts) = runtime()?.block_on(async {
        let store = store(resolved).await?;
        let entry = store.get_blueprint(blueprint_id.to_string()).await?;
        let artifacts = store.list_artifacts(blueprint_id.to_string()).await?;
        Ok::<_, Error>((entry, artifacts))
    })?;
    let d = entry.descriptor.clone().unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(out, "{} — {}", d.blueprint_id, d.name);
    let _ = writeln!(out, "{}", d.description);
    let _ = writeln!(
        out,
        "tier {}  risk {:.2}  slots {}  tags {}{}{}",
        tier_name(d.tier),
        d.risk,
        slot_kinds(&d.slot_kinds),
        d.tags.join(","),
        if d.approval_required {
            "  approval required"
        } else {
            ""
        },
        if entry.quarantined {
            format!("  QUARANTINED: {}", entry.quarantine_reason)
        } else {
            String::new()
        }
    );
    if let Some(def) = urza::definition(&d.blueprint_id) {
        let rows: Vec<Vec<String>> = def
            .params
            .iter()
            .map(|p| {
                vec![
                    p.name.to_string(),
                    format!("{}", p.min),
                    format!("{}", p.max),
                    format!("{}", p.default),
                    if p.integer { "int" } else { "real" }.to_string(),
                    p.doc.to_string(),
                ]
            })
            .collect();
        if !rows.is_empty() {
            out.push('\n');
            out.push_str(&table(
                &["PARAMETER", "MIN", "MAX", "DEFAULT", "TYPE", "MEANING"],
                &rows,
            ));
        }
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = artifacts
        .iter()
        .map(|a| {
            let shape: Vec<String> = a.slot_shape.iter().map(|d| d.to_string()).collect();
            vec![
                a.artifact_ref
                    .get(..16)
                    .unwrap_or(&a.artifact_ref)
                    .to_string(),
                shape.join("x"),
                a.parameter_count.to_string(),
                a.size_bytes.to_string(),
                format!("{:.3}", a.forward_p50_ms),
                format!("{:.3}", a.forward_p95_ms),
                a.provenance
                    .as_ref()
                    .map(|p| {
                        format!(
                            "run {} slot {} ({:+.2})",
                            p.training_run_id, p.slot_id, p.contribution
                        )
                    })
                    .unwrap_or_else(|| "forged".into()),
                if a.quarantined {
                    "quarantined".into()
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "ARTIFACT",
            "SLOT",
            "PARAMS",
            "BYTES",
            "FWD P50 MS",
            "FWD P95 MS",
            "ORIGIN",
            "FLAGS",
        ],
        &rows,
    ));
    Ok(out)
}

/// `esper urza forge ID --slot … [--param k=v …]`: builds, probes and stores an
/// artifact (or finds the stored one).
pub fn forge(
    resolved: &Resolved,
    blueprint_id: &str,
    slot: &str,
    params: &[String],
) -> Result<String> {
    let request = EnsureRequest {
        blueprint_id: blueprint_id.to_string(),
        slot: parse_slot(slot)?,
        parameters: parse_params(params)?,
        init_seed: resolved.config.run.seed,
    };
    let record = runtime()?.block_on(async {
        Ok::<_, Error>(store(resolved).await?.ensure_artifact(request).await?)
    })?;
    let params: BTreeMap<_, _> = record.parameters.iter().collect();
    Ok(format!(
        "artifact {}\nblueprint {}  parameters {params:?}\n{} parameters, {} bytes, build {:.2} ms, forward p50 {:.3} ms p95 {:.3} ms\nguard digest {}\n",
        record.artifact_ref,
        record.blueprint_id,
        record.parameter_count,
        record.size_bytes,
        record.build_ms,
        record.forward_p50_ms,
        record.forward_p95_ms,
        record.guard_digest
    ))
}

/// `esper urza verify`: re-hashes and rebuilds every artifact; returns the
/// report and whether everything was healthy.
pub fn verify(resolved: &Resolved) -> Result<(String, bool)> {
    let library = open_library(resolved)?;
    let report = library.verify()?;
    let mut rows = Vec::new();
    for (reference, reason) in &report.corrupt {
        rows.push(vec![reference.clone(), "corrupt".into(), reason.clone()]);
    }
    for reference in &report.missing {
        rows.push(vec![reference.clone(), "missing".into(), String::new()]);
    }
    let mut out = format!(
        "{} artifact(s) checked in {}: {} healthy, {} corrupt, {} missing (problems are quarantined)\n",
        report.checked,
        library.root().display(),
        report.healthy,
        report.corrupt.len(),
        report.missing.len()
    );
    if !rows.is_empty() {
        out.push_str(&table(&["ARTIFACT", "PROBLEM", "DETAIL"], &rows));
    }
    Ok((out, report.corrupt.is_empty() && report.missing.is_empty()))
}

/// `esper urza serve`: serves the local library over gRPC and forwards every
/// catalog change onto Oona, until Ctrl-C.
pub fn serve(resolved: &Resolved, listen: Option<&str>) -> Result<()> {
    let addr = match listen {
        Some(text) => text
            .parse()
            .map_err(|e| bad("--listen", format!("{text:?}: {e}")))?,
        None => resolved
            .config
            .urza
            .listen_addr()
            .map_err(|e| bad("urza.listen", e.problem))?,
    };
    let library = open_library(resolved)?;
    let bus = RunBus::start(resolved, "urza")?;
    let shutdown = CancellationToken::new();
    let report = bus.block_on(async {
        let auth = if resolved.config.urza.write_auth {
            urza::grpc::ServiceAuth::with_key(
                resolved.signing_key.clone(),
                &resolved.config.leyline.security,
            )
        } else {
            urza::grpc::ServiceAuth::Open
        };
        let writes = if resolved.config.urza.write_auth {
            "writes (and reads beyond loopback) need a token made with the shared secret"
        } else {
            "WRITES ARE OPEN to anyone who reaches the port (urza.write_auth = false)"
        };
        let served = urza::grpc::serve(Arc::clone(&library), addr, auth, shutdown.clone()).await?;
        println!(
            "urza: serving {} blueprint(s) from {} on http://{}; {writes} (Ctrl-C stops)",
            library.list(&CatalogQuery::default())?.len(),
            library.root().display(),
            served.addr
        );
        let forwarder = tokio::spawn({
            let watch = LocalStore::new(Arc::clone(&library))
                .watch_catalog()
                .await?;
            let oona = bus.oona().clone();
            let cancel = shutdown.clone();
            async move { urza::notify::forward_catalog_updates(watch, &oona, cancel).await }
        });
        tokio::signal::ctrl_c()
            .await
            .map_err(|e| Error::Runtime(format!("waiting for Ctrl-C: {e}")))?;
        shutdown.cancel();
        served
            .task
            .await
            .map_err(|e| Error::Runtime(format!("server task: {e}")))??;
        forwarder
            .await
            .map_err(|e| Error::Runtime(format!("catalog forwarder: {e}")))
    })?;
    println!(
        "urza: stopped; {} catalog update(s) published on Oona, {} failed, {} missed",
        report.published, report.failed, report.missed
    );
    bus.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn arguments_parse_or_name_the_flag() {
        assert_eq!(
            parse_slot("conv2d:4x28x28").unwrap(),
            SlotShape::conv2d(4, 28, 28).unwrap()
        );
        assert_eq!(
            parse_slot("dense:128").unwrap(),
            SlotShape::dense(128).unwrap()
        );
        for bad in ["conv2d", "conv3d:1x2x3", "dense:x", "conv2d:4x4"] {
            assert!(parse_slot(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_params(&["rank=4".into()]).unwrap()["rank"], 4.0);
        assert!(parse_params(&["rank".into()]).is_err());
        assert!(parse_tier("risky").is_err());
        let t = table(&["A", "BB"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    BB\nxyz  1\n");
    }
}
