//! `esper tamiyo serve`: Tamiyo as a gRPC service (see [`tamiyo::grpc`]),
//! so that trainers anywhere share one controller process. Each trainer
//! (`tamiyo.remote = "http://host:port"`) opens a session with its own
//! policy instance, risk engine and field-report tracker, built from this
//! process's `[tamiyo]` settings: `heuristic`, or `learned` with this
//! process's `tamiyo.learned.policy`. Blueprint metadata comes from this
//! process's Urza (its library, or `urza.remote`), cached for
//! `tamiyo.catalog_ttl_ms`.
//!
//! SIGINT or SIGTERM stops it; trainers then miss their fences (counted)
//! and go on training without commands.
//!
//! With `learned`, the policy file is loaded and validated once
//! ([`tamiyo::ServedPolicy`]); SIGHUP reads it again and serves the new file
//! to new sessions only if it passes the same validation run — otherwise the
//! served policy stays and the rejection is printed on stderr (and counted
//! in `tamiyo_policy_reloads_total{outcome}`). Replacing the file on disk
//! changes nothing until then.
//!
//! With `[runtime] listen`, the process serves `/metrics` (its counters:
//! `tamiyo_policy_reloads_total`, `tamiyo_grpc_steps_total`,
//! `tamiyo_grpc_rejected_total`, the blueprint cache's `urza_cache_*`),
//! `/healthz`, and `/readyz` (ready while the gRPC service accepts
//! sessions), like `esper train`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tamiyo::{BlueprintCache, Controller, TamiyoService};
use tokio_util::sync::CancellationToken;

use crate::config::Resolved;
use crate::error::{Error, Result};

/// Default address of `esper tamiyo serve`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50052";

fn tamiyo_error(e: tamiyo::Error) -> Error {
    Error::Runtime(format!("tamiyo: {e}"))
}

/// Serves until SIGINT or SIGTERM.
pub fn serve(resolved: &Resolved, listen: Option<&str>, max_sessions: usize) -> Result<()> {
    let text = listen.unwrap_or(DEFAULT_LISTEN);
    let addr: SocketAddr = text.parse().map_err(|e| {
        Error::Config(leyline::ConfigError::at(
            "--listen",
            format!("{text:?}: {e}"),
        ))
    })?;
    let config = &resolved.config;
    let (policy_name, reloadable) = match config.tamiyo.controller {
        Controller::Heuristic => ("heuristic", None),
        Controller::Learned => {
            // Loaded and validated once here: a bad policy file is one error
            // at start, not one per session.
            let (served, checked) = tamiyo::ServedPolicy::load(
                &config.tamiyo.learned,
                config.tamiyo.graph.clone(),
                &resolved.policy_key,
            )
            .map_err(tamiyo_error)?;
            println!(
                "esper tamiyo serve: policy {} validated ({} observations, {} with growth legal)",
                served
                    .manifest()
                    .weights_sha256
                    .get(..12)
                    .unwrap_or_default(),
                checked.observations,
                checked.with_growth
            );
            ("learned", Some(Arc::new(served)))
        }
        Controller::Script | Controller::Off => {
            return Err(Error::Config(leyline::ConfigError::at(
                "tamiyo.controller",
                "esper tamiyo serve runs \"heuristic\" or \"learned\"",
            )));
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("esper-tamiyo")
        .enable_all()
        .build()
        .map_err(|e| Error::Runtime(format!("cannot start the service runtime: {e}")))?;
    let exporter = match config.runtime.listen_addr()? {
        Some(at) => {
            let exporter = crate::exporter::install(at, runtime.handle())?;
            // Both outcomes exist from the start at 0, so that an alert on
            // `increase(...{outcome="rejected"})` sees a series.
            metrics::describe_counter!(
                "tamiyo_policy_reloads_total",
                "SIGHUP reloads of the served policy, by outcome (swapped or rejected)"
            );
            for outcome in ["swapped", "rejected"] {
                metrics::counter!("tamiyo_policy_reloads_total", "outcome" => outcome).increment(0);
            }
            println!(
                "esper tamiyo serve: metrics on http://{}/metrics (and /healthz, /readyz)",
                exporter.addr()
            );
            Some(exporter)
        }
        None => None,
    };
    let store: Arc<dyn urza::BlueprintStore> =
        Arc::from(runtime.block_on(crate::urza_cmd::store(resolved))?);
    let cache = Arc::new(BlueprintCache::from_store(
        store,
        runtime.handle().clone(),
        Duration::from_millis(config.tamiyo.catalog_ttl_ms),
    ));
    let deadline_ms = config.leyline.budgets.performance.tamiyo_step_deadline_ms;
    let factory: tamiyo::grpc::SessionFactory = {
        let resolved = resolved.clone();
        let cache = Arc::clone(&cache);
        let reloadable = reloadable.clone();
        Arc::new(move |_run_id: &str| {
            let config = &resolved.config;
            let policy: Box<dyn tamiyo::Policy> = match (&reloadable, config.tamiyo.controller) {
                (Some(policy), _) => {
                    Box::new(crate::control::with_teacher(&resolved, policy.session()?))
                }
                (None, Controller::Learned) => {
                    return Err(tamiyo::Error::Remote(
                        "the learned controller has no served policy".into(),
                    ));
                }
                (None, Controller::Heuristic | Controller::Script | Controller::Off) => {
                    Box::new(tamiyo::HeuristicPolicy::new(
                        config.tamiyo.heuristic.clone(),
                        urza::select::SelectionPolicy::default(),
                    ))
                }
            };
            TamiyoService::new(
                Arc::new(config.tamiyo.clone()),
                policy,
                Arc::clone(&cache),
                resolved.signing_key.clone(),
                &config.leyline.limits,
                Duration::from_secs_f64(deadline_ms / 1e3),
            )
        })
    };
    let security = &config.leyline.security;
    let serve_config = tamiyo::grpc::ServeConfig {
        key: resolved.signing_key.clone(),
        window_ms: u64::from(security.freshness_window_s) * 1000,
        skew_ms: u64::from(security.future_skew_s) * 1000,
        max_sessions: max_sessions.max(1),
        policy: policy_name,
        step_deadline_ms: deadline_ms,
    };
    let shutdown = CancellationToken::new();
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate())
            .map_err(|e| Error::Runtime(format!("installing the SIGTERM handler: {e}")))?;
        let served = tamiyo::grpc::serve(factory, addr, serve_config, shutdown.clone())
            .await
            .map_err(tamiyo_error)?;
        // Ready before it says so: whoever reads the line may probe at once.
        if let Some(exporter) = &exporter {
            exporter.set_ready(true);
        }
        println!(
            "esper tamiyo serve: {policy_name} controller on http://{} (up to {} sessions; calls need a token made with the shared secret; SIGINT/SIGTERM stops)",
            served.addr,
            max_sessions.max(1)
        );
        let mut hangup = signal(SignalKind::hangup())
            .map_err(|e| Error::Runtime(format!("installing the SIGHUP handler: {e}")))?;
        loop {
            tokio::select! {
                r = tokio::signal::ctrl_c() => {
                    r.map_err(|e| Error::Runtime(format!("waiting for Ctrl-C: {e}")))?;
                    break;
                }
                _ = terminate.recv() => break,
                _ = hangup.recv() => {
                    let Some(policy) = reloadable.clone() else {
                        println!("esper tamiyo serve: SIGHUP: the heuristic has no policy file to reload");
                        continue;
                    };
                    let key = resolved.policy_key.clone();
                    let outcome = tokio::task::spawn_blocking(move || {
                        policy.reload(&key).map(|checked| (checked, policy.manifest()))
                    })
                    .await
                    .map_err(|e| Error::Runtime(format!("policy reload: {e}")))?;
                    match outcome {
                        Ok((checked, manifest)) => {
                            metrics::counter!("tamiyo_policy_reloads_total", "outcome" => "swapped").increment(1);
                            println!(
                                "esper tamiyo serve: SIGHUP: now serving policy {} (training step {}; validated on {} observations); open sessions keep theirs",
                                manifest.weights_sha256.get(..12).unwrap_or_default(),
                                manifest.training_step,
                                checked.observations
                            );
                        }
                        Err(e) => {
                            metrics::counter!("tamiyo_policy_reloads_total", "outcome" => "rejected").increment(1);
                            eprintln!("esper tamiyo serve: SIGHUP: the new policy is REJECTED, the served one stays: {e}");
                        }
                    }
                }
            }
        }
        if let Some(exporter) = &exporter {
            exporter.set_ready(false);
        }
        shutdown.cancel();
        served
            .task
            .await
            .map_err(|e| Error::Runtime(format!("server task: {e}")))?
            .map_err(tamiyo_error)
    })?;
    if let Some(exporter) = exporter {
        let linger = Duration::from_secs(config.runtime.linger_s);
        exporter.finish(runtime.handle(), linger);
    }
    println!("esper tamiyo serve: stopped");
    Ok(())
}
