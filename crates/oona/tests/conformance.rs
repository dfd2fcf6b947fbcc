//! One conformance suite, run unchanged against the in-process backend and
//! against Redis Streams on a real `redis-server` started on a free port.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use leyline::codec::BusPayload;
use leyline::security::{SigningKey, sign};
use leyline::v1::{
    BusEnvelope, BusMessageType, EmergencyLevel, EmergencySignal, MessagePriority,
    SystemStatePacket, TelemetryPacket,
};
use oona::ShedReason;
use oona::backend::Record;
use oona::{Bus, Delivery, Oona, Published, StartFrom, Stream};
use prost::Message;
use tokio_util::sync::CancellationToken;

fn state(step: u64) -> SystemStatePacket {
    SystemStatePacket {
        global_step: step,
        ..Default::default()
    }
}

fn step_of(d: &Delivery) -> u64 {
    match &d.payload {
        BusPayload::SystemState(s) => s.global_step,
        other => panic!("unexpected payload {other:?}"),
    }
}

async fn publish_steps<B: Bus>(oona: &Oona<B>, steps: std::ops::Range<u64>) -> Vec<oona::EntryId> {
    let mut ids = Vec::new();
    for i in steps {
        match oona
            .publish(&state(i), MessagePriority::Normal)
            .await
            .unwrap()
        {
            Published::Stored { entry, stream } => {
                assert_eq!(stream, Stream::Normal);
                ids.push(entry);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    ids
}

/// Reads until `n` deliveries arrived (or 5 s passed).
async fn read_n<B: Bus>(sub: &mut oona::Subscription<B>, n: usize) -> Vec<Delivery> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut out = Vec::new();
    while out.len() < n && Instant::now() < deadline {
        out.extend(sub.next_batch().await.unwrap());
    }
    out
}

async fn ordering_per_stream<B: Bus>(oona: Oona<B>) {
    // Fewer than `max_len` (200): none is trimmed.
    publish_steps(&oona, 0..150).await;
    let mut sub = oona
        .subscribe(Stream::Normal, "g", "c1", StartFrom::Beginning)
        .await
        .unwrap();
    let got = read_n(&mut sub, 150).await;
    let steps: Vec<u64> = got.iter().map(step_of).collect();
    assert_eq!(steps, (0..150).collect::<Vec<_>>());
    assert!(got.windows(2).all(|w| w[0].entry < w[1].entry));
    assert!(
        got.iter()
            .all(|d| d.attempt == 1 && d.envelope.source == "test")
    );
    for d in &got {
        sub.ack(d).await.unwrap();
    }
    assert_eq!(oona.depth(Stream::Normal).await.unwrap().depth, 0);
    assert!(sub.next_batch().await.unwrap().is_empty());
}

async fn unacked_entries_are_redelivered_with_their_count<B: Bus>(oona: Oona<B>) {
    publish_steps(&oona, 0..2).await;
    let mut sub = oona
        .subscribe(Stream::Normal, "g", "c1", StartFrom::Beginning)
        .await
        .unwrap();
    let first = read_n(&mut sub, 2).await;
    assert_eq!(first.len(), 2);
    // Entry 0 is never acknowledged (the consumer "crashed" on it); entry 1 fails.
    let outcome = sub.fail(&first[1], "boom").await.unwrap();
    assert_eq!(outcome, oona::FailOutcome::Retry);
    // A second consumer picks up both: the failed one after the short backoff,
    // the silent one after the idle timeout, each with delivery count 2.
    let mut other = oona
        .subscribe(Stream::Normal, "g", "c2", StartFrom::Beginning)
        .await
        .unwrap();
    let started = Instant::now();
    let retried = read_n(&mut other, 1).await;
    assert_eq!(retried.len(), 1);
    assert_eq!((step_of(&retried[0]), retried[0].attempt), (1, 2));
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "backoff, not idle timeout"
    );
    // Acknowledged at once, or it too would be reclaimed while we wait.
    other.ack(&retried[0]).await.unwrap();
    let reclaimed = read_n(&mut other, 1).await;
    assert_eq!(reclaimed.len(), 1);
    assert_eq!((step_of(&reclaimed[0]), reclaimed[0].attempt), (0, 2));
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "idle timeout respected"
    );
    other.ack(&reclaimed[0]).await.unwrap();
    assert_eq!(oona.depth(Stream::Normal).await.unwrap().depth, 0);
    let stats = oona.stats();
    assert_eq!(stats.retries, 2, "{stats:?}");
    assert_eq!(stats.delivered, 4);
}

async fn dead_letter_after_max_attempts<B: Bus>(oona: Oona<B>) {
    let ids = publish_steps(&oona, 0..1).await;
    let sub = oona
        .subscribe(Stream::Normal, "g", "c1", StartFrom::Beginning)
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    let dlq = oona.clone();
    let watcher = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !dlq
                .bus()
                .range(Stream::DeadLetter, None, 10)
                .await
                .unwrap()
                .is_empty()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
    });
    let mut calls = 0;
    let report = sub
        .run(
            |_: &Delivery| {
                calls += 1;
                Err("always fails".to_owned())
            },
            cancel,
        )
        .await
        .unwrap();
    watcher.await.unwrap();
    let max = oona.max_attempts();
    assert_eq!(calls, max as usize);
    assert_eq!(report.dead_lettered, 1);
    let dead = oona
        .bus()
        .range(Stream::DeadLetter, None, 10)
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    let origin = dead[0].1.origin.clone().unwrap();
    assert_eq!(
        (origin.stream, origin.entry, origin.attempts),
        (Stream::Normal, ids[0], max)
    );
    assert!(origin.reason.contains("always fails"), "{}", origin.reason);
    // The original entry is no longer pending: nothing is lost, nothing is stuck.
    assert_eq!(oona.depth(Stream::Normal).await.unwrap().depth, 0);
    assert_eq!(oona.stats().dead_lettered, 1);
}

async fn group_start_id_keeps_history<B: Bus>(oona: Oona<B>) {
    let ids = publish_steps(&oona, 0..5).await;
    let mut all = oona
        .subscribe(Stream::Normal, "late", "c", StartFrom::Beginning)
        .await
        .unwrap();
    let got = read_n(&mut all, 5).await;
    assert_eq!(
        got.iter().map(step_of).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    let mut tail = oona
        .subscribe(Stream::Normal, "tail", "c", StartFrom::After(ids[2]))
        .await
        .unwrap();
    let got = read_n(&mut tail, 2).await;
    assert_eq!(got.iter().map(step_of).collect::<Vec<_>>(), vec![3, 4]);
    // Re-subscribing to an existing group does not move its cursor.
    let mut again = oona
        .subscribe(Stream::Normal, "tail", "c", StartFrom::Beginning)
        .await
        .unwrap();
    assert!(again.next_batch().await.unwrap().is_empty());
}

async fn trimming_caps_length_and_keeps_unacknowledged<B: Bus>(oona: Oona<B>) {
    let max_len = oona.config().max_len;
    for i in 0..1000 {
        let packet = TelemetryPacket {
            global_step: i,
            ..Default::default()
        };
        oona.publish(&packet, MessagePriority::High).await.unwrap();
    }
    let len = oona.depth(Stream::Telemetry).await.unwrap().len;
    // Redis trims whole nodes (`MAXLEN ~`): at least max_len, less than one node more.
    assert!(
        len >= max_len && len < max_len + 100,
        "telemetry length {len}"
    );

    // The emergency stream is never length-capped; housekeeping removes only
    // what every group acknowledged.
    for i in 0..(max_len + 10) {
        let signal = EmergencySignal {
            signal_id: format!("sig-{i}"),
            level: EmergencyLevel::Notice as i32,
            origin: "test".into(),
            triggered_at_ms: leyline::unix_now_ms(),
            training_run_id: "run-test".into(),
            ..Default::default()
        };
        oona.publish_signal(signal).await.unwrap();
    }
    assert_eq!(
        oona.depth(Stream::Emergency).await.unwrap().len,
        max_len + 10
    );
    let mut sub = oona
        .subscribe(Stream::Emergency, "g", "c", StartFrom::Beginning)
        .await
        .unwrap();
    let got = read_n(&mut sub, 20).await;
    for d in &got[..10] {
        sub.ack(d).await.unwrap();
    }
    let removed = oona
        .bus()
        .trim_acknowledged(Stream::Emergency, leyline::unix_now_ms() + 1_000)
        .await
        .unwrap();
    assert_eq!(removed, 10);
    let d = oona.depth(Stream::Emergency).await.unwrap();
    assert_eq!(d.len, max_len);
    assert_eq!(d.depth, max_len);
    // Retention cut-off in the past: nothing newer is touched.
    assert_eq!(oona.housekeep().await.unwrap(), 0);
}

fn envelope(key: &SigningKey, id: &str, issued_at_ms: u64) -> BusEnvelope {
    let mut e = BusEnvelope {
        message_type: BusMessageType::SystemState as i32,
        payload: state(42).encode_to_vec(),
        message_id: id.into(),
        source: "intruder".into(),
        issued_at_ms,
        training_run_id: "run-test".into(),
        priority: MessagePriority::Normal as i32,
        ..Default::default()
    };
    sign(key, &mut e);
    e
}

fn raw(e: &BusEnvelope) -> Record {
    Record {
        payload: Bytes::from(e.encode_to_vec()),
        published_us: 0,
        origin: None,
        extra: Vec::new(),
    }
}

async fn bad_messages_go_to_quarantine<B: Bus>(oona: Oona<B>) {
    let bus = oona.bus();
    let now = leyline::unix_now_ms();
    let good = envelope(&common::key(), "m-1", now);
    let mut tampered = good.clone();
    tampered.message_id = "m-2".into();
    tampered.payload = state(43).encode_to_vec();
    let wrong_key = envelope(&SigningKey::from_bytes(&[9u8; 32]).unwrap(), "m-3", now);
    let stale = envelope(&common::key(), "m-4", now - 600_000);
    for record in [
        raw(&good),
        raw(&tampered),
        raw(&good), // replay: same message id again
        raw(&wrong_key),
        raw(&stale),
        Record {
            payload: Bytes::from_static(b"\xff\xff\xff not protobuf"),
            published_us: 0,
            origin: None,
            // A field another producer wrote: the quarantined copy keeps it.
            extra: vec![(
                Bytes::from_static(b"sender"),
                Bytes::from_static(b"mallory"),
            )],
        },
    ] {
        bus.publish(Stream::Normal, record).await.unwrap();
    }
    let mut sub = oona
        .subscribe(Stream::Normal, "g", "c", StartFrom::Beginning)
        .await
        .unwrap();
    let got = read_n(&mut sub, 1).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].envelope.message_id, "m-1");
    sub.ack(&got[0]).await.unwrap();
    assert!(sub.next_batch().await.unwrap().is_empty());
    let quarantined = bus.range(Stream::Quarantine, None, 10).await.unwrap();
    let reasons: Vec<String> = quarantined
        .iter()
        .map(|(_, r)| r.origin.clone().unwrap().reason)
        .collect();
    assert_eq!(reasons.len(), 5, "{reasons:?}");
    for (reason, expected) in reasons.iter().zip([
        "INVALID_SIGNATURE",
        "REPLAY",
        "INVALID_SIGNATURE",
        "STALE",
        "malformed_envelope",
    ]) {
        assert!(
            reason.contains(expected),
            "{reason} should mention {expected}"
        );
    }
    // Quarantined entries keep their bytes, and are acknowledged in their stream.
    assert_eq!(quarantined[1].1.payload, raw(&good).payload);
    assert_eq!(
        quarantined[4].1.extra,
        [(
            Bytes::from_static(b"sender"),
            Bytes::from_static(b"mallory")
        )]
    );
    assert_eq!(oona.depth(Stream::Normal).await.unwrap().depth, 0);
    assert_eq!(oona.stats().quarantined_total(), 5);
}

async fn cancellation_stops_consumers_promptly<B: Bus>(oona: Oona<B>) {
    let sub = oona
        .subscribe(Stream::Normal, "g", "c", StartFrom::Beginning)
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(sub.run(|_: &Delivery| Ok(()), cancel.clone()));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = Instant::now();
    cancel.cancel();
    task.await.unwrap().unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(500),
        "consumer took {took:?} to stop"
    );
}

async fn close_stops_blocked_consumers_and_later_calls_fail<B: Bus>(oona: Oona<B>) {
    let sub = oona
        .subscribe(Stream::Normal, "g", "c", StartFrom::Beginning)
        .await
        .unwrap();
    // Never cancelled: only closing the bus can end this loop.
    let task = tokio::spawn(sub.run(|_: &Delivery| Ok(()), CancellationToken::new()));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = Instant::now();
    oona.close().await;
    task.await.unwrap().unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(500),
        "consumer took {took:?} to see the close"
    );
    let err = oona
        .publish(&state(1), MessagePriority::High)
        .await
        .unwrap_err();
    assert!(matches!(err, oona::Error::Closed), "{err}");
}

async fn backpressure_sheds_low_and_normal_only<B: Bus>(oona: Oona<B>) {
    let shed_depth = oona.shed_depth();
    // A group that never reads: the backlog grows.
    oona.bus()
        .ensure_group(Stream::Telemetry, "slow", StartFrom::Beginning)
        .await
        .unwrap();
    let low = TelemetryPacket::default();
    for _ in 0..shed_depth {
        let p = oona.publish(&low, MessagePriority::Low).await.unwrap();
        assert!(matches!(p, Published::Stored { .. }));
    }
    let p = oona.publish(&low, MessagePriority::Normal).await.unwrap();
    assert_eq!(
        p,
        Published::Shed {
            stream: Stream::Telemetry,
            reason: ShedReason::DepthPressure
        }
    );
    let p = oona.publish(&low, MessagePriority::High).await.unwrap();
    assert!(matches!(
        p,
        Published::Stored {
            stream: Stream::Telemetry,
            ..
        }
    ));
    // CRITICAL telemetry takes the emergency stream; it is never shed, never
    // counted against the telemetry stream.
    let p = oona.publish(&low, MessagePriority::Critical).await.unwrap();
    assert!(matches!(
        p,
        Published::Stored {
            stream: Stream::Emergency,
            ..
        }
    ));
    let stats = oona.stats();
    assert_eq!(
        stats.shed.get(&(Stream::Telemetry, "depth_pressure")),
        Some(&1)
    );
    assert_eq!(stats.shed_total(), 1);
    // Conservative mode on request sheds NORMAL on every stream, not HIGH.
    oona.enter_conservative();
    let p = oona
        .publish(&state(1), MessagePriority::Normal)
        .await
        .unwrap();
    assert!(matches!(
        p,
        Published::Shed {
            reason: ShedReason::Conservative,
            ..
        }
    ));
    let p = oona
        .publish(&state(1), MessagePriority::High)
        .await
        .unwrap();
    assert!(matches!(p, Published::Stored { .. }));
    oona.leave_conservative();
    oona.depth(Stream::Normal).await.unwrap();
    assert!(!oona.conservative());
}

/// Issue #21 item 7: a group deleted under a reading consumer (as a restarted
/// server without persistence loses it) is created again after the newest
/// entry read — counted, nothing handed over twice, nothing after it missed.
async fn a_deleted_group_is_created_again_after_the_last_entry_read<B: Bus>(oona: Oona<B>) {
    let mut sub = oona
        .subscribe(Stream::Normal, "catalog", "c0", StartFrom::Beginning)
        .await
        .unwrap();
    publish_steps(&oona, 0..3).await;
    for d in read_n(&mut sub, 3).await {
        sub.ack(&d).await.unwrap();
    }
    assert!(oona.remove_group(Stream::Normal, "catalog").await.unwrap());
    assert!(!oona.remove_group(Stream::Normal, "catalog").await.unwrap());
    // The read that finds the group missing creates it again and returns nothing.
    assert!(sub.next_batch().await.unwrap().is_empty());
    publish_steps(&oona, 3..5).await;
    let steps: Vec<u64> = read_n(&mut sub, 2).await.iter().map(step_of).collect();
    assert_eq!(steps, [3, 4]);
    assert_eq!(sub.report().groups_recreated, 1);
    assert_eq!(oona.stats().groups_recreated, 1);
}

/// A fleet worker renews the lease on the job it runs: no other worker
/// reclaims it while the renewals go on, and one does (with the next
/// delivery count) once they stop — the worker died. Jobs are never shed,
/// not even in conservative mode.
async fn a_renewed_lease_keeps_a_job_until_its_worker_stops<B: Bus>(oona: Oona<B>) {
    oona.enter_conservative();
    let job = leyline::v1::RunJob {
        job_id: "sub/run-1".into(),
        run_id: "run-1".into(),
        ..Default::default()
    };
    let published = oona.publish(&job, MessagePriority::Low).await.unwrap();
    assert!(
        matches!(published, Published::Stored { .. }),
        "{published:?}"
    );
    oona.leave_conservative();
    let mut worker = oona
        .subscribe(Stream::Jobs, "workers", "w1", StartFrom::Beginning)
        .await
        .unwrap()
        .with_batch(1);
    let got = read_n(&mut worker, 1).await;
    assert_eq!(got.len(), 1);
    let mut other = oona
        .subscribe(Stream::Jobs, "workers", "w2", StartFrom::Beginning)
        .await
        .unwrap()
        .with_batch(1);
    let claim = Duration::from_millis(oona.config().claim_idle_ms);
    let until = Instant::now() + claim * 3;
    while Instant::now() < until {
        worker.renew(&got[0]).await.unwrap();
        assert!(
            other.next_batch().await.unwrap().is_empty(),
            "reclaimed while its lease was renewed"
        );
        tokio::time::sleep(claim / 4).await;
    }
    let reclaimed = read_n(&mut other, 1).await;
    assert_eq!(reclaimed.len(), 1);
    assert_eq!(reclaimed[0].attempt, 2);
    match &reclaimed[0].payload {
        BusPayload::RunJob(j) => assert_eq!(j.run_id, "run-1"),
        other => panic!("{other:?}"),
    }
    other.ack(&reclaimed[0]).await.unwrap();
}

fn backpressure_config() -> common::Setup {
    let mut setup = common::config();
    setup.leyline.limits.max_queue_depth = 20;
    let c = &mut setup.oona;
    c.backpressure.conservative_enter_depth = 1_000;
    c.backpressure.conservative_exit_depth = 500;
    c.backpressure.conservative_min_ms = 0;
    setup
}

on_both_backends! {
    ordering_per_stream,
    unacked_entries_are_redelivered_with_their_count,
    dead_letter_after_max_attempts,
    group_start_id_keeps_history,
    trimming_caps_length_and_keeps_unacknowledged,
    bad_messages_go_to_quarantine,
    cancellation_stops_consumers_promptly,
    close_stops_blocked_consumers_and_later_calls_fail,
    backpressure_sheds_low_and_normal_only with super::backpressure_config(),
    a_deleted_group_is_created_again_after_the_last_entry_read,
    a_renewed_lease_keeps_a_job_until_its_worker_stops,
}
