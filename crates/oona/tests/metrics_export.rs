//! Oona's figures reach whatever `metrics` recorder the application installs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use leyline::v1::{MessagePriority, SystemStatePacket, TelemetryPacket};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use oona::backend::Record;
use oona::{Bus, StartFrom, Stream};

/// Name, labels, value.
type Exported = (String, Vec<(String, String)>, DebugValue);

#[test]
fn counters_histograms_and_gauges_are_exported() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let mut setup = common::config();
            setup.leyline.limits.max_queue_depth = 2;
            let oona = common::memory(&setup);
            oona.bus()
                .ensure_group(Stream::Telemetry, "slow", StartFrom::Beginning)
                .await
                .unwrap();
            for _ in 0..3 {
                oona.publish(&TelemetryPacket::default(), MessagePriority::Low)
                    .await
                    .unwrap();
            }
            oona.publish(&SystemStatePacket::default(), MessagePriority::High)
                .await
                .unwrap();
            oona.bus()
                .publish(
                    Stream::Normal,
                    Record {
                        payload: bytes::Bytes::from_static(b"junk"),
                        published_us: 0,
                        origin: None,
                        extra: Vec::new(),
                    },
                )
                .await
                .unwrap();
            let mut sub = oona
                .subscribe(Stream::Normal, "g", "c", StartFrom::Beginning)
                .await
                .unwrap();
            for d in sub.next_batch().await.unwrap() {
                sub.ack(&d).await.unwrap();
            }
        });
    });
    let metrics: Vec<Exported> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let labels = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            (key.name().to_owned(), labels, value)
        })
        .collect();
    let find = |name: &str, label: (&str, &str)| {
        metrics
            .iter()
            .find(|(n, labels, _)| {
                n == name && labels.iter().any(|(k, v)| k == label.0 && v == label.1)
            })
            .map(|(_, _, v)| v)
            .unwrap_or_else(|| panic!("{name} {label:?} not exported: {metrics:?}"))
    };
    assert_eq!(
        find("oona_published_total", ("stream", "telemetry")),
        &DebugValue::Counter(2)
    );
    assert_eq!(
        find("oona_dropped_total", ("reason", "depth_pressure")),
        &DebugValue::Counter(1)
    );
    assert_eq!(
        find("oona_quarantined_total", ("reason", "malformed_envelope")),
        &DebugValue::Counter(1)
    );
    assert!(
        matches!(find("oona_publish_latency_us", ("stream", "normal")), DebugValue::Histogram(h) if h.len() == 1)
    );
    assert!(
        matches!(find("oona_delivery_latency_us", ("stream", "normal")), DebugValue::Histogram(h) if h.len() == 1)
    );
    assert!(matches!(
        find("oona_depth", ("stream", "telemetry")),
        DebugValue::Gauge(_)
    ));
}
