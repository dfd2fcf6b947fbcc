//! Redis killed (SIGKILL) and restarted while a consumer loop runs: every
//! message whose publish was acknowledged reaches the handler exactly once or
//! sits in the dead-letter stream; consumers reconnect and reclaim on their own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use leyline::codec::BusPayload;
use leyline::v1::{MessagePriority, SystemStatePacket};
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
        let (mut acknowledged, mut failed) = (Vec::new(), 0u64);
        for i in 0..MESSAGES {
            let packet = SystemStatePacket {
                global_step: i,
                ..Default::default()
            };
            match publisher.publish(&packet, MessagePriority::High).await {
                Ok(Published::Stored { .. }) => acknowledged.push(i),
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
        (acknowledged, failed, publisher)
    });

    tokio::time::sleep(Duration::from_millis(400)).await;
    server.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart();

    let (acknowledged, failed, publisher) = publishing.await.unwrap();
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
        "published ok {}, publish errors {failed}, handled {}, dead {}, consumer {report:?}",
        acknowledged.len(),
        h.len(),
        dead.len()
    );
    // The outage really happened and was survived.
    assert!(
        failed + report.backend_errors > 0,
        "the restart was not noticed"
    );
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
