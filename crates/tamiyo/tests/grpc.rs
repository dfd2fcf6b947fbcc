//! Tamiyo over gRPC on loopback: a remote session decides exactly as an
//! in-process service (same signed command on the same packets), carries
//! its state through export/import, refuses callers without the shared
//! secret, keeps the trainer's deadline (a late answer is dropped and
//! counted), and a stopped service makes steps fail — counted — without
//! hanging the caller.
use crate::common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{catalog, packet};
use leyline::security::{SigningKey, Verifier};
use tamiyo::grpc::{RemoteTamiyo, RemoteTamiyoConfig, ServeConfig, SessionFactory};
use tamiyo::{Action, BlueprintCache, Config, Error, HeuristicPolicy, TamiyoService};
use tokio_util::sync::CancellationToken;

const KEY: [u8; 32] = [7; 32];

fn key() -> SigningKey {
    SigningKey::from_bytes(&KEY).unwrap()
}

fn local() -> TamiyoService {
    with_policy(Box::new(HeuristicPolicy::new(
        Config::default().heuristic,
        urza::select::SelectionPolicy::default(),
    )))
}

fn with_policy(policy: Box<dyn tamiyo::Policy>) -> TamiyoService {
    TamiyoService::new(
        Arc::new(Config::default()),
        policy,
        Arc::new(BlueprintCache::new(
            Box::new(|| Ok(catalog())),
            Duration::from_secs(60),
        )),
        key(),
        &leyline::LimitsConfig::default(),
        Duration::from_millis(500),
    )
    .unwrap()
}

struct Server {
    runtime: tokio::runtime::Runtime,
    shutdown: CancellationToken,
    endpoint: String,
}

fn server() -> Server {
    server_with(Arc::new(|_run: &str| Ok(local())))
}

fn server_with(factory: SessionFactory) -> Server {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let shutdown = CancellationToken::new();
    let config = ServeConfig {
        key: key(),
        window_ms: 60_000,
        skew_ms: 5_000,
        max_sessions: 2,
        policy: "heuristic",
        step_deadline_ms: 500.0,
    };
    let served = runtime
        .block_on(tamiyo::grpc::serve(
            factory,
            "127.0.0.1:0".parse().unwrap(),
            config,
            shutdown.clone(),
        ))
        .unwrap();
    Server {
        endpoint: format!("http://{}", served.addr),
        runtime,
        shutdown,
    }
}

fn client(server: &Server, key: SigningKey, deadline: Duration) -> Result<RemoteTamiyo, Error> {
    RemoteTamiyo::connect(
        RemoteTamiyoConfig {
            endpoint: server.endpoint.clone(),
            key,
            deadline,
            connect_timeout: Duration::from_secs(2),
            state_timeout: Duration::from_secs(5),
            run_id: "grpc-test".into(),
        },
        server.runtime.handle().clone(),
    )
}

#[test]
fn a_remote_session_decides_as_the_local_service_does() {
    let server = server();
    let mut remote = client(&server, key(), Duration::from_secs(2)).unwrap();
    assert_eq!(remote.policy(), "heuristic");
    let mut local = local();
    for (epoch, step, losses) in [(1, 63, (1.0, 0.5)), (2, 126, (0.95, 0.52))] {
        let p = packet(epoch, step, Some(losses));
        let (r, l) = (remote.step(&p).unwrap(), local.step(&p).unwrap());
        assert_eq!(r.diagnostics.rule, l.diagnostics.rule);
        assert_eq!(r.diagnostics.policy, "heuristic");
        match (&r.action, &l.action) {
            (Action::Wait { reason: a }, Action::Wait { reason: b }) => assert_eq!(a, b),
            (Action::Command(a), Action::Command(b)) => {
                assert_eq!(a.target_seed_id, b.target_seed_id);
                assert_eq!(a.payload, b.payload);
                // Signed by the service with the shared secret: Kasmina's
                // verifier takes it as it takes a local one.
                Verifier::new(key(), &leyline::SecurityConfig::default())
                    .verify_now(a.as_ref())
                    .unwrap();
            }
            (a, b) => panic!("remote {a:?} vs local {b:?}"),
        }
    }
    assert_eq!(remote.stats().steps, 2);
    assert_eq!(remote.stats().commands, 1);
    // The state travels: a new session that imports it continues the
    // controller (its counters come from the trainer).
    let state = remote.export_state().unwrap();
    assert_eq!(state.policy, "heuristic");
    let mut second = client(&server, key(), Duration::from_secs(2)).unwrap();
    second.import_state(state.clone()).unwrap();
    assert_eq!(second.stats(), state.stats);
    assert_eq!(second.export_state().unwrap().risk, state.risk);
    // max_sessions = 2: a third is refused with a reason.
    let third = client(&server, key(), Duration::from_secs(2)).unwrap_err();
    assert!(third.to_string().contains("sessions are open"), "{third}");
    server.shutdown.cancel();
}

#[test]
fn a_caller_without_the_secret_is_refused() {
    let server = server();
    let wrong = SigningKey::from_bytes(&[9; 32]).unwrap();
    let err = client(&server, wrong, Duration::from_secs(2)).unwrap_err();
    assert!(err.to_string().contains("secret"), "{err}");
    server.shutdown.cancel();
}

#[test]
fn a_late_answer_is_dropped_and_a_stopped_service_does_not_stop_the_caller() {
    // A service whose policy takes 100 ms (within the service's own 500 ms)
    // and a trainer that waits 20 ms.
    let slow = server_with(Arc::new(|_run: &str| {
        Ok(with_policy(Box::new(crate::service::Sleepy(
            Duration::from_millis(100),
        ))))
    }));
    let mut remote = client(&slow, key(), Duration::from_millis(20)).unwrap();
    let started = Instant::now();
    let err = remote.step(&packet(1, 63, Some((1.0, 0.5)))).unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(80),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(
            err,
            Error::DeadlineExceeded {
                stage: "network",
                ..
            }
        ),
        "{err}"
    );
    let stats = remote.stats();
    assert_eq!(
        (stats.deadline_misses, stats.late_discarded, stats.errors),
        (1, 1, 1)
    );
    slow.shutdown.cancel();
    let server = server();
    // The service goes away: steps fail within the deadline, counted.
    let mut remote = client(&server, key(), Duration::from_millis(200)).unwrap();
    remote.step(&packet(1, 63, Some((1.0, 0.5)))).unwrap();
    server.shutdown.cancel();
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..3 {
        let started = Instant::now();
        assert!(remote.step(&packet(1, 63, Some((1.0, 0.5)))).is_err());
        assert!(started.elapsed() < Duration::from_millis(400));
    }
    assert_eq!(remote.stats().errors, 3);
    assert_eq!(remote.stats().steps, 4);
}
