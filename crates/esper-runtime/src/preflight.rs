//! Preflight: what must hold before a long command starts, each checked for
//! real and each failure naming what to fix — the bus answering (Redis,
//! when configured), the Urza library writable or the remote service
//! answering to this run's secret, the training data readable with enough
//! images, and the device (CUDA when asked). `esper check` lists them;
//! `esper train` and `esper cohort` run them first and stop before any work
//! (and before any run directory) when one fails.

use std::time::{Duration, Instant};

use crate::config::Resolved;
use crate::selfcheck::{Check, check as named};

/// Runs every preflight check (they are independent: all are reported).
pub fn checks(resolved: &Resolved) -> Vec<Check> {
    checks_for(resolved, true)
}

fn checks_for(resolved: &Resolved, urza_too: bool) -> Vec<Check> {
    let mut checks = vec![named("bus reachable", bus(resolved))];
    if urza_too {
        checks.push(named("urza library", urza(resolved)));
    }
    checks.push(named("training data", data(resolved)));
    checks.push(named("device", device(resolved)));
    checks
}

/// [`checks`] (the library only when `urza_too`: a run whose controller is
/// off never opens it), as an error listing each failure, for long commands.
pub fn require(resolved: &Resolved, urza_too: bool) -> crate::Result<()> {
    let failed: Vec<String> = checks_for(resolved, urza_too)
        .into_iter()
        .filter(|c| !c.passed)
        .map(|c| format!("{}: {}", c.name, c.detail))
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(crate::Error::Preflight(failed))
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))
}

fn bus(resolved: &Resolved) -> Result<String, String> {
    let config = &resolved.config.oona;
    let oona::config::BackendConfig::Redis { url } = &config.backend else {
        return Ok("in-process (nothing to reach)".into());
    };
    let started = Instant::now();
    runtime()?.block_on(async {
        use oona::Bus as _;
        let bus = oona::RedisBus::connect(url, &config.namespace, config.max_len)
            .await
            .map_err(|e| {
                format!(
                    "redis {url}: {} — start redis-server or fix oona.backend.url",
                    leyline::error_chain(&e)
                )
            })?;
        bus.depth(oona::Stream::Emergency)
            .await
            .map_err(|e| format!("redis {url}: {}", leyline::error_chain(&e)))?;
        bus.close().await;
        Ok(format!(
            "redis {url} answered in {:.1} ms (signing with the configured shared secret)",
            started.elapsed().as_secs_f64() * 1e3
        ))
    })
}

fn urza(resolved: &Resolved) -> Result<String, String> {
    let config = &resolved.config.urza;
    if let Some(remote) = config.remote_store() {
        let endpoint = remote.endpoint.clone();
        let remote = remote.with_auth_key(resolved.signing_key.clone());
        return runtime()?.block_on(async {
            use urza::BlueprintStore as _;
            let store = urza::grpc::RemoteStore::connect(&remote)
                .await
                .map_err(|e| {
                    format!("{endpoint}: {e} — start `esper urza serve` or fix urza.remote")
                })?;
            let entries = tokio::time::timeout(
                Duration::from_millis(config.request_timeout_ms),
                store.list_blueprints(urza::CatalogQuery::default()),
            )
            .await
            .map_err(|_| format!("{endpoint}: no answer within urza.request_timeout_ms"))?
            .map_err(|e| format!("{endpoint}: {e}"))?;
            Ok(format!(
                "{endpoint} answered: {} blueprint(s)",
                entries.len()
            ))
        });
    }
    // The library writes under its root: a file must be creatable there.
    let root = &config.root;
    std::fs::create_dir_all(root)
        .map_err(|e| format!("urza.root {}: cannot create it: {e}", root.display()))?;
    let probe = root.join(format!(".preflight-{}", std::process::id()));
    std::fs::write(&probe, b"preflight")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| format!("urza.root {}: not writable: {e}", root.display()))?;
    Ok(format!("{} is writable", root.display()))
}

fn data(resolved: &Resolved) -> Result<String, String> {
    let t = &resolved.config.tolaria;
    let dir = t
        .data_dir
        .clone()
        .unwrap_or_else(tolaria::bundled_mnist_dir);
    let data = tolaria::load_mnist(&dir).map_err(|e| leyline::error_chain(&e))?;
    if t.train_size == 0 || t.train_size >= data.len() {
        return Err(format!(
            "{}: tolaria.train_size = {} but the data holds {} images; it must be in 1..{} \
             (the rest is the validation set)",
            dir.display(),
            t.train_size,
            data.len(),
            data.len()
        ));
    }
    Ok(format!(
        "{}: {} images ({} for training, {} for validation)",
        dir.display(),
        data.len(),
        t.train_size,
        data.len() - t.train_size
    ))
}

fn device(resolved: &Resolved) -> Result<String, String> {
    let kind = resolved.config.tolaria.device;
    tolaria::open_device(kind)
        .map(|d| match d {
            candle_core::Device::Cpu => "cpu".to_owned(),
            other => format!("{kind:?}: {other:?}"),
        })
        .map_err(|e| {
            let hint = if cfg!(feature = "cuda") {
                "check the driver and that a GPU is visible"
            } else {
                "this build has no CUDA: build with --features cuda"
            };
            format!("{} — {hint}", leyline::error_chain(&e))
        })
}
