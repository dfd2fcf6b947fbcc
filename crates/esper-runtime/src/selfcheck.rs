//! The contract self-check run by `esper check`.
//!
//! It exercises the real contract code with the resolved configuration: the
//! lifecycle table's properties, a command's encode/decode round trip through a
//! bus envelope, the shared validator, and signing and verification with the
//! resolved key (replay, tamper and staleness must be rejected with their reason),
//! and it measures sign + verify against the configured budget. Each check reports
//! what it saw; nothing is assumed.

use std::time::Instant;

use leyline::codec::{BusPayload, decode, decode_payload, encode};
use leyline::lifecycle::{ALL_GATES, ALL_STAGES, all_transitions, successors};
use leyline::security::{Verifier, sign};
use leyline::v1::adaptation_command::Payload;
use leyline::v1::{
    AdaptationCommand, BlendConfig, BlendMode, BusEnvelope, BusMessageType, CommandSeedOperation,
    CommandType, MessagePriority, SeedOperation, SeedStage, VerificationFailure,
};
use leyline::validate::Validator;

use crate::config::Resolved;

/// Outcome of one check.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// Short name.
    pub name: &'static str,
    /// Whether it held.
    pub passed: bool,
    /// What was observed.
    pub detail: String,
}

/// Outcome of the whole self-check.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Every check, in the order run.
    pub checks: Vec<Check>,
}

impl Report {
    /// Every check held.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        for c in &self.checks {
            let mark = if c.passed { "ok  " } else { "FAIL" };
            writeln!(f, "{mark}  {:width$}  {}", c.name, c.detail)?;
        }
        let failed = self.checks.iter().filter(|c| !c.passed).count();
        write!(
            f,
            "{} checks, {} passed, {} failed",
            self.checks.len(),
            self.checks.len() - failed,
            failed
        )
    }
}

pub(crate) fn check(name: &'static str, outcome: Result<String, String>) -> Check {
    match outcome {
        Ok(detail) => Check {
            name,
            passed: true,
            detail,
        },
        Err(detail) => Check {
            name,
            passed: false,
            detail,
        },
    }
}

/// Runs every check with the resolved configuration: the contract checks,
/// then the preflight of long commands ([`crate::preflight`]).
pub fn run(resolved: &Resolved) -> Report {
    let validator = Validator::new(&resolved.config.leyline.limits);
    let mut checks = vec![
        check("lifecycle table", lifecycle()),
        check("contract round trip", round_trip(resolved)),
        check("validator", validation(resolved, &validator)),
        check("signing and verification", security(resolved)),
        check("verification latency", latency(resolved)),
        check("oona round trip", bus_round_trip(resolved)),
        check("oona quarantine", bus_quarantine(resolved)),
    ];
    checks.extend(crate::preflight::checks(resolved));
    Report { checks }
}

fn sample_command(resolved: &Resolved, id: u64, now: u64) -> AdaptationCommand {
    AdaptationCommand {
        version: leyline::CONTRACT_VERSION,
        command_id: format!("selfcheck-{id}-{}", leyline::new_id()),
        command_type: CommandType::Seed as i32,
        target_seed_id: "selfcheck-seed".into(),
        issued_at_ms: now,
        deadline_at_ms: now + 1_000,
        issued_by: "esper-selfcheck".into(),
        training_run_id: resolved.run_id.clone(),
        payload: Some(Payload::SeedOperation(CommandSeedOperation {
            operation: SeedOperation::Germinate as i32,
            blueprint_id: "selfcheck-blueprint".into(),
            slot_id: "r0".into(),
            mesh_layers: vec!["r0".into()],
            blend: Some(BlendConfig {
                mode: BlendMode::Convex as i32,
                ..Default::default()
            }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn lifecycle() -> Result<String, String> {
    let edges: Vec<_> = all_transitions().collect();
    for stage in ALL_STAGES {
        if stage.is_terminal() && stage != SeedStage::Terminated {
            return Err(format!("{} has no exit", stage.as_str_name()));
        }
        // Walk forward; every non-terminal stage must reach DORMANT or TERMINATED.
        let mut frontier = vec![stage];
        let mut seen = Vec::new();
        let mut reaches = stage.is_terminal();
        while let Some(s) = frontier.pop() {
            for &(next, _) in successors(s) {
                if matches!(next, SeedStage::Dormant | SeedStage::Terminated) {
                    reaches = true;
                }
                if !seen.contains(&next) {
                    seen.push(next);
                    frontier.push(next);
                }
            }
        }
        if !reaches {
            return Err(format!(
                "{} can reach neither DORMANT nor TERMINATED",
                stage.as_str_name()
            ));
        }
    }
    for gate in ALL_GATES {
        if !edges.iter().any(|t| t.gate == Some(gate)) {
            return Err(format!("{} guards no edge", gate.as_str_name()));
        }
    }
    let gated = edges.iter().filter(|t| t.gate.is_some()).count();
    Ok(format!(
        "{} stages, {} edges ({gated} gated), {} gates",
        ALL_STAGES.len(),
        edges.len(),
        ALL_GATES.len()
    ))
}

fn round_trip(resolved: &Resolved) -> Result<String, String> {
    let now = leyline::unix_now_ms();
    let mut cmd = sample_command(resolved, 0, now);
    sign(&resolved.signing_key, &mut cmd);
    let envelope = BusEnvelope {
        message_type: BusMessageType::AdaptationCommand as i32,
        payload: encode(&cmd),
        message_id: leyline::new_id(),
        source: "esper-selfcheck".into(),
        issued_at_ms: now,
        training_run_id: resolved.run_id.clone(),
        priority: MessagePriority::Normal as i32,
        ..Default::default()
    };
    let wire = encode(&envelope);
    let back: BusEnvelope = decode(&wire).map_err(|e| e.to_string())?;
    match decode_payload(&back).map_err(|e| e.to_string())? {
        BusPayload::AdaptationCommand(decoded) if decoded == cmd => Ok(format!(
            "AdaptationCommand in BusEnvelope: {} bytes, decoded identical",
            wire.len()
        )),
        other => Err(format!("decoded a different message: {other:?}")),
    }
}

fn validation(resolved: &Resolved, validator: &Validator) -> Result<String, String> {
    let now = leyline::unix_now_ms();
    let good = sample_command(resolved, 1, now);
    let report = validator.command(&good);
    if !report.passed() {
        return Err(format!(
            "a well-formed command was rejected: {:?}",
            report.violations()
        ));
    }
    let mut bad = good;
    if let Some(Payload::SeedOperation(op)) = &mut bad.payload {
        op.blend = Some(BlendConfig {
            mode: BlendMode::Channel as i32,
            ..Default::default()
        });
    }
    let report = validator.command(&bad);
    match report.violations().first() {
        Some(v) if v.field == "seed_operation.blend.channel_alpha" => Ok(format!(
            "well-formed command passes; CHANNEL without alpha rejected at `{}`",
            v.field
        )),
        other => Err(format!(
            "CHANNEL blend without alpha vector not caught as expected: {other:?}"
        )),
    }
}

fn security(resolved: &Resolved) -> Result<String, String> {
    let sec = &resolved.config.leyline.security;
    let mut verifier = Verifier::new(resolved.signing_key.clone(), sec);
    let now = leyline::unix_now_ms();
    let mut cmd = sample_command(resolved, 2, now);
    sign(&resolved.signing_key, &mut cmd);
    verifier
        .verify(&cmd, now)
        .map_err(|e| format!("a fresh signed command was rejected: {e}"))?;

    let expect = |result: Result<(), leyline::security::Rejection>, want: VerificationFailure| {
        match result {
            Err(r) if r.reason == want => Ok(()),
            other => Err(format!("expected {}, got {other:?}", want.as_str_name())),
        }
    };
    expect(
        verifier.verify(&cmd, now),
        VerificationFailure::NonceReplayed,
    )?;
    let mut tampered = sample_command(resolved, 3, now);
    sign(&resolved.signing_key, &mut tampered);
    tampered.generation += 1;
    expect(
        verifier.verify(&tampered, now),
        VerificationFailure::InvalidSignature,
    )?;
    let stale_at = now.saturating_sub(u64::from(sec.freshness_window_s) * 1000 + 1);
    let mut stale = sample_command(resolved, 4, stale_at);
    sign(&resolved.signing_key, &mut stale);
    expect(verifier.verify(&stale, now), VerificationFailure::Stale)?;
    expect(
        verifier.verify(&sample_command(resolved, 5, now), now),
        VerificationFailure::MissingSignature,
    )?;
    Ok("accepted once; replay, tamper, stale and unsigned rejected with their reasons".into())
}

fn latency(resolved: &Resolved) -> Result<String, String> {
    const N: usize = 1_000;
    let budget_ms = resolved
        .config
        .leyline
        .budgets
        .performance
        .command_verification_ms;
    let mut verifier = Verifier::new(
        resolved.signing_key.clone(),
        &resolved.config.leyline.security,
    );
    let now = leyline::unix_now_ms();
    let mut samples = Vec::with_capacity(N);
    for i in 0..N {
        let mut cmd = sample_command(resolved, 100 + i as u64, now);
        let start = Instant::now();
        sign(&resolved.signing_key, &mut cmd);
        verifier.verify(&cmd, now).map_err(|e| e.to_string())?;
        samples.push(start.elapsed().as_secs_f64() * 1e3);
    }
    samples.sort_by(f64::total_cmp);
    let p50 = samples[N / 2];
    let p99 = samples[N * 99 / 100];
    let detail = format!(
        "sign+verify p50 {p50:.4} ms, p99 {p99:.4} ms over {N} commands (budget {budget_ms} ms)"
    );
    if p99 <= budget_ms {
        Ok(detail)
    } else {
        Err(detail)
    }
}

/// Publishes a signed state packet on the configured backend (under the
/// `<namespace>.selfcheck` streams, so that real traffic is untouched), reads it
/// back through a consumer group, verifies, acknowledges and trims it.
fn bus_round_trip(resolved: &Resolved) -> Result<String, String> {
    use oona::Bus as _;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let mut config = resolved.config.oona.clone();
    config.namespace = format!("{}.selfcheck", config.namespace);
    let backend = match &config.backend {
        oona::config::BackendConfig::InProcess => "in-process".to_owned(),
        oona::config::BackendConfig::Redis { url } => format!("redis {url}"),
    };
    runtime.block_on(async {
        let fail = |what: &str, e: oona::Error| {
            format!("{backend}: {what}: {}", leyline::error_chain(&e))
        };
        let identity = oona::Identity {
            source: "esper-check".into(),
            run_id: resolved.run_id.clone(),
        };
        let bus = oona::connect(
            &config,
            &resolved.config.leyline,
            resolved.signing_key.clone(),
            identity,
        )
        .await
        .map_err(|e| fail("connect", e))?;
        let mut sub = bus
            .subscribe(oona::Stream::Normal, "esper-check", "check", oona::StartFrom::Beginning)
            .await
            .map_err(|e| fail("subscribe", e))?;
        let packet = leyline::v1::SystemStatePacket {
            packet_id: leyline::new_id(),
            training_run_id: resolved.run_id.clone(),
            ..Default::default()
        };
        let started = Instant::now();
        bus.publish(&packet, MessagePriority::High)
            .await
            .map_err(|e| fail("publish", e))?;
        let deadline = Instant::now() + std::time::Duration::from_secs(2);
        while Instant::now() < deadline {
            for d in sub.next_batch().await.map_err(|e| fail("read", e))? {
                sub.ack(&d).await.map_err(|e| fail("ack", e))?;
                if matches!(&d.payload, BusPayload::SystemState(p) if p.packet_id == packet.packet_id)
                {
                    let took = started.elapsed();
                    let trimmed = bus
                        .bus()
                        .trim_acknowledged(oona::Stream::Normal, leyline::unix_now_ms() + 1)
                        .await
                        .map_err(|e| fail("trim", e))?;
                    // Entries that failed verification on the way are news
                    // for the operator, not a pass.
                    let hostile = sub.report().quarantined;
                    if hostile > 0 {
                        return Err(format!(
                            "{backend}: the round trip worked, but {hostile} other entr(ies) on \
                             {} failed verification and were quarantined ({})",
                            config.stream_key(oona::Stream::Normal),
                            reasons(&bus.stats().quarantined)
                        ));
                    }
                    return Ok(format!(
                        "{backend}: signed, published, delivered, verified and acknowledged in {:.2} ms ({trimmed} acknowledged entries trimmed)",
                        took.as_secs_f64() * 1e3
                    ));
                }
            }
        }
        Err(format!("{backend}: the published packet was not delivered within 2 s"))
    })
}

fn reasons(counts: &std::collections::BTreeMap<String, u64>) -> String {
    counts
        .iter()
        .map(|(r, n)| format!("{n} {r}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the real streams set aside: entries in the quarantine and
/// dead-letter streams (they age out after `oona.retention_s`). Any is a
/// failure to look into — hostile or broken traffic reached the bus.
fn bus_quarantine(resolved: &Resolved) -> Result<String, String> {
    use oona::Bus as _;
    let config = &resolved.config.oona;
    let url = match &config.backend {
        oona::config::BackendConfig::InProcess => {
            return Ok(
                "in-process: each process has a fresh bus, nothing stored to inspect".into(),
            );
        }
        oona::config::BackendConfig::Redis { url } => url.clone(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    runtime.block_on(async {
        let fail = |e: oona::Error| format!("redis {url}: {}", leyline::error_chain(&e));
        let bus = oona::RedisBus::connect(&url, &config.namespace, config.max_len)
            .await
            .map_err(fail)?;
        let mut found = Vec::new();
        for stream in [oona::Stream::Quarantine, oona::Stream::DeadLetter] {
            let entries = bus.range(stream, None, 1_000).await.map_err(fail)?;
            if entries.is_empty() {
                continue;
            }
            let mut counts = std::collections::BTreeMap::new();
            for (_, record) in &entries {
                let reason = record.origin.as_ref().map_or("no reason recorded", |o| {
                    // "INVALID_SIGNATURE: detail" → "INVALID_SIGNATURE"
                    o.reason.split(':').next().unwrap_or(&o.reason)
                });
                *counts.entry(reason.to_owned()).or_insert(0u64) += 1;
            }
            let len = bus.depth(stream).await.map_err(fail)?.len;
            found.push(format!(
                "{} holds {len} entr(ies) ({})",
                config.stream_key(stream),
                reasons(&counts)
            ));
        }
        bus.close().await;
        if found.is_empty() {
            Ok(format!(
                "redis {url}: {} and {} are empty",
                config.stream_key(oona::Stream::Quarantine),
                config.stream_key(oona::Stream::DeadLetter)
            ))
        } else {
            Err(format!(
                "redis {url}: {}; inspect them (redis-cli XRANGE), they age out after \
                 oona.retention_s = {} s",
                found.join("; "),
                config.retention_s
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn self_check_passes_with_default_config() {
        let resolved = crate::config::load(None, &BTreeMap::new()).unwrap();
        let report = run(&resolved);
        assert!(report.passed(), "{report}");
        assert_eq!(report.checks.len(), 11);
    }

    #[test]
    fn an_unreachable_bus_fails_the_round_trip() {
        let mut resolved = crate::config::load(None, &BTreeMap::new()).unwrap();
        resolved.config.oona.backend = oona::config::BackendConfig::Redis {
            url: "redis://127.0.0.1:1/0".into(),
        };
        let report = run(&resolved);
        let failed: Vec<_> = report.checks.iter().filter(|c| !c.passed).collect();
        assert_eq!(failed.len(), 3, "{report}");
        assert_eq!(failed[0].name, "oona round trip");
        assert_eq!(failed[1].name, "oona quarantine");
        assert_eq!(failed[2].name, "bus reachable");
        for f in failed {
            // The cause, not only "connect failed" (issue #21 item 8).
            assert!(f.detail.contains("refused"), "{}", f.detail);
        }
    }

    #[test]
    fn an_impossible_latency_budget_fails_the_check() {
        let mut resolved = crate::config::load(None, &BTreeMap::new()).unwrap();
        resolved
            .config
            .leyline
            .budgets
            .performance
            .command_verification_ms = 1e-9;
        let report = run(&resolved);
        assert!(!report.passed());
        let failed: Vec<_> = report
            .checks
            .iter()
            .filter(|c| !c.passed)
            .map(|c| c.name)
            .collect();
        assert_eq!(failed, vec!["verification latency"]);
    }
}
