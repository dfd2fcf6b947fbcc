//! Redis killed (SIGKILL) and restarted while a consumer loop runs: every
//! message whose publish was accepted — stored, or held through the outage
//! and sent after reconnect — reaches the handler exactly once or sits in the
//! dead-letter stream; consumers reconnect and reclaim on their own. Without
//! persistence the restarted server has lost the streams and groups: held
//! publications, emergency signals first among them, still arrive, and the
//! consumers' groups are created again.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use leyline::codec::BusPayload;
use leyline::v1::{EmergencyLevel, EmergencySignal, MessagePriority, SystemStatePacket};
use oona::{Bus, Delivery, Published, StartFrom, Stream};
use tokio_util::sync::CancellationToken;

const MESSAGES: u64 = 3_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_loses_nothing_acknowledged_and_duplicates_nothing() {
    let mut config = common::config();
    config.oona.max_len = 100_000;
    config.oona.claim_idle_ms = 500;
    let mut server = common::RedisServer::start();
    let publisher = common::handle(server.bus(&config).await, &config);
    let consumer = common::handle(server.bus(&config).await, &config);

    let handled: Arc<Mutex<BTreeMap<u64, u32>>> = Arc::default();
    let seen = Arc::clone(&handled);
    let cancel = CancellationToken::new();
    let sub = consumer
        .subscribe(Stream::Normal, "tamiyo", "t0", StartFrom::Beginning)
        .await
        .unwrap();
    let consumer_task = tokio::spawn(sub.run(
        move |d: &Delivery| {
            let BusPayload::SystemState(s) = &d.payload else {
                return Err("unexpected payload".into());
            };
            *seen.lock().unwrap().entry(s.global_step).or_default() += 1;
            Ok(())
        },
        cancel.clone(),
    ));

    let publishing = tokio::spawn(async move {
        let (mut acknowledged, mut held, mut failed) = (Vec::new(), 0u64, 0u64);
        for i in 0..MESSAGES {
            let packet = SystemStatePacket {
                global_step: i,
                ..Default::default()
            };
            match publisher.publish(&packet, MessagePriority::High).await {
                Ok(Published::Stored { .. }) => acknowledged.push(i),
                Ok(Published::Held { .. }) => {
                    held += 1;
                    acknowledged.push(i);
                }
                Ok(Published::Shed { .. }) => panic!("HIGH is never shed"),
                Err(e) => {
                    assert!(e.is_transient(), "unexpected error {e}");
                    failed += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            if i % 20 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        (acknowledged, held, failed, publisher)
    });

    tokio::time::sleep(Duration::from_millis(400)).await;
    server.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart();

    let (acknowledged, held, failed, publisher) = publishing.await.unwrap();
    assert_eq!(publisher.drain_held(Duration::from_secs(10)).await, 0);
    // Wait until every acknowledged message is handled or dead-lettered.
    let deadline = Instant::now() + Duration::from_secs(20);
    let dead_steps = || async {
        let mut steps = Vec::new();
        for (_, r) in publisher
            .bus()
            .range(Stream::DeadLetter, None, 10_000)
            .await
            .unwrap()
        {
            let env: leyline::v1::BusEnvelope = leyline::codec::decode(&r.payload).unwrap();
            if let BusPayload::SystemState(s) = leyline::codec::decode_payload(&env).unwrap() {
                steps.push(s.global_step);
            }
        }
        steps
    };
    loop {
        let done = {
            let h = handled.lock().unwrap();
            acknowledged.iter().all(|i| h.contains_key(i))
        };
        if done || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cancel.cancel();
    let report = consumer_task.await.unwrap().unwrap();
    let dead = dead_steps().await;
    let h = handled.lock().unwrap().clone();
    eprintln!(
        "accepted {} ({held} held), publish errors {failed}, handled {}, dead {}, consumer {report:?}, outage {:?}",
        acknowledged.len(),
        h.len(),
        dead.len(),
        publisher.outage()
    );
    // The outage really happened and was survived.
    assert!(
        held + failed + report.backend_errors > 0,
        "the restart was not noticed"
    );
    // Holding is on by default: no publish failed outright.
    assert_eq!(failed, 0);
    let outage = publisher.outage();
    assert_eq!(outage.held, outage.delivered_late);
    assert_eq!((outage.dropped, outage.pending), (0, 0));
    assert!(acknowledged.len() as u64 > MESSAGES / 2);
    for i in &acknowledged {
        let times = h.get(i).copied().unwrap_or(0);
        assert!(
            times == 1 || (times == 0 && dead.contains(i)),
            "message {i} handled {times} times (dead-lettered: {})",
            dead.contains(i)
        );
    }
    // Nothing at all (acknowledged or not) was handled twice.
    assert!(h.values().all(|&n| n == 1), "duplicate handling");
}

fn signal(i: u64) -> EmergencySignal {
    EmergencySignal {
        level: EmergencyLevel::Halt as i32,
        reason: format!("drill signal {i}"),
        ..Default::default()
    }
}

/// Issue #21 items 6 and 7: `redis-server` without persistence SIGKILLed
/// and restarted under a publisher and two consumers. Publishing during the
/// outage costs at most one quick probe per `probe_ms` (no error reaches the
/// caller), every emergency signal raised while it was down arrives after
/// the restart, the lost groups are created again, and the outage is counted
/// and timed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volatile_restart_loses_no_signal_and_the_groups_come_back() {
    let mut config = common::config();
    config.oona.outage.probe_ms = 100;
    let mut server = common::RedisServer::start_volatile();
    let publisher = common::handle(server.bus(&config).await, &config);
    let consumer = common::handle(server.bus(&config).await, &config);

    let signals: Arc<Mutex<Vec<String>>> = Arc::default();
    let states: Arc<Mutex<Vec<u64>>> = Arc::default();
    let cancel = CancellationToken::new();
    let emergency = consumer
        .subscribe(Stream::Emergency, "watch", "w0", StartFrom::Beginning)
        .await
        .unwrap();
    let normal = consumer
        .subscribe(Stream::Normal, "tamiyo", "t0", StartFrom::Beginning)
        .await
        .unwrap();
    let seen = Arc::clone(&signals);
    let watching = tokio::spawn(emergency.run(
        move |d: &Delivery| {
            if let BusPayload::EmergencySignal(s) = &d.payload {
                seen.lock().unwrap().push(s.reason.clone());
            }
            Ok(())
        },
        cancel.clone(),
    ));
    let seen = Arc::clone(&states);
    let reading = tokio::spawn(normal.run(
        move |d: &Delivery| {
            if let BusPayload::SystemState(s) = &d.payload {
                seen.lock().unwrap().push(s.global_step);
            }
            Ok(())
        },
        cancel.clone(),
    ));
    let state = |step| SystemStatePacket {
        global_step: step,
        ..Default::default()
    };
    for step in 0..5 {
        let p = publisher
            .publish(&state(step), MessagePriority::Normal)
            .await;
        assert!(matches!(p, Ok(Published::Stored { .. })), "{p:?}");
    }
    publisher.publish_signal(signal(0)).await.unwrap();
    // Both consumers have read what was there before the outage.
    let before = Instant::now() + Duration::from_secs(5);
    while (states.lock().unwrap().len() < 5 || signals.lock().unwrap().is_empty())
        && Instant::now() < before
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    server.kill();
    let started = Instant::now();
    let mut outcomes = Vec::new();
    for i in 1..=3 {
        outcomes.push(publisher.publish_signal(signal(i)).await.unwrap());
        for step in (i * 10)..(i * 10 + 5) {
            outcomes.push(
                publisher
                    .publish(&state(step), MessagePriority::Normal)
                    .await
                    .unwrap(),
            );
        }
    }
    let publishing_took = started.elapsed();
    assert!(
        outcomes.iter().all(|p| matches!(p, Published::Held { .. })),
        "{outcomes:?}"
    );
    let down = publisher.outage();
    assert!(down.down_now);
    assert_eq!((down.interruptions, down.held, down.pending), (1, 18, 18));
    assert!(down.last_error.is_some());

    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart();
    assert_eq!(publisher.drain_held(Duration::from_secs(10)).await, 0);
    let after = Instant::now() + Duration::from_secs(10);
    while (signals.lock().unwrap().len() < 4 || states.lock().unwrap().len() < 20)
        && Instant::now() < after
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel.cancel();
    let watch = watching.await.unwrap().unwrap();
    let read = reading.await.unwrap().unwrap();
    let up = publisher.outage();
    eprintln!(
        "publishing 18 messages into the outage took {publishing_took:?}; outage {up:?}; \
         watch {watch:?}; read {read:?}"
    );
    let got = signals.lock().unwrap().clone();
    assert_eq!(
        got,
        (0..=3)
            .map(|i| format!("drill signal {i}"))
            .collect::<Vec<_>>(),
        "every emergency signal, in order, once"
    );
    let mut steps = states.lock().unwrap().clone();
    steps.sort_unstable();
    let expected: Vec<u64> = (0..5)
        .chain((1..=3).flat_map(|i| (i * 10)..(i * 10 + 5)))
        .collect();
    assert_eq!(steps, expected);
    assert!(watch.groups_recreated >= 1 && read.groups_recreated >= 1);
    assert_eq!(
        consumer.stats().groups_recreated,
        watch.groups_recreated + read.groups_recreated
    );
    assert!(!up.down_now);
    assert_eq!(
        (up.interruptions, up.delivered_late, up.dropped, up.pending),
        (1, 18, 0, 0)
    );
    assert!(
        up.down_ms >= 300,
        "the outage lasted at least the 300 ms it was down"
    );
}
