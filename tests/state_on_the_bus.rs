//! Tolaria → Oona → a controller: a real training epoch's state packet is
//! published by the code `esper train` runs after each epoch
//! (`esper_runtime::epoch_end::publish_epoch`), arrives signed and verified
//! at a consumer group (as Tamiyo will read it), and says what really
//! happened.
use std::collections::BTreeMap;

use leyline::codec::BusPayload;
use leyline::v1::SeedStage;
use oona::{StartFrom, Stream};

#[test]
fn an_epoch_state_packet_reaches_a_controller_over_oona() {
    let env = BTreeMap::from([
        ("ESPER_TOLARIA__HOST".to_owned(), "mlp".to_owned()),
        ("ESPER_TOLARIA__EPOCHS".to_owned(), "1".to_owned()),
        ("ESPER_TOLARIA__TRAIN_SIZE".to_owned(), "1024".to_owned()),
        ("ESPER_RUN__EXPERIMENT".to_owned(), "bus-flow".to_owned()),
    ]);
    let resolved = esper_runtime::config::load(None, &env).unwrap();
    let mut trainer = tolaria::Trainer::new(resolved.config.tolaria.clone(), 1, &resolved.run_id)
        .unwrap()
        .with_experiment(resolved.config.run.experiment.clone());
    let bus = esper_runtime::RunBus::start(&resolved, "tolaria").unwrap();

    // The controller's consumer group exists before training starts.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut controller = runtime
        .block_on(
            bus.oona()
                .subscribe(Stream::Normal, "tamiyo", "tamiyo-0", StartFrom::Beginning),
        )
        .unwrap();

    let report = trainer.run_epoch().unwrap();
    let mut summary = esper_runtime::epoch_end::ControlSummary::default();
    let notes = esper_runtime::epoch_end::publish_epoch(
        &resolved,
        &bus,
        &mut trainer,
        &report,
        &mut summary,
        &mut esper_runtime::narrate::Narrator::new(),
    )
    .unwrap();
    assert!(
        notes.iter().all(|n| !n.contains("shed")),
        "nothing is shed on an idle bus: {notes:?}"
    );
    // Every event of the epoch went out with it.
    assert!(trainer.drain_events().is_empty());

    let deliveries = runtime.block_on(controller.next_batch()).unwrap();
    assert_eq!(deliveries.len(), 1);
    let d = &deliveries[0];
    assert_eq!(d.envelope.source, "tolaria");
    assert_eq!(d.envelope.training_run_id, resolved.run_id);
    let BusPayload::SystemState(got) = &d.payload else {
        panic!("expected a state packet, got {:?}", d.payload);
    };
    assert_eq!(got.current_epoch, 1);
    assert_eq!(got.global_step, report.global_step);
    assert_eq!(got.validation_accuracy, Some(report.validation.accuracy));
    assert_eq!(got.experiment_name, "bus-flow");
    assert_eq!(got.slots.len(), trainer.host().slots().len());
    assert!(
        got.slots
            .iter()
            .all(|s| s.stage == SeedStage::Dormant as i32)
    );
    let verdict =
        leyline::validate::Validator::new(&resolved.config.leyline.limits).state_packet(got);
    assert!(verdict.passed(), "{:?}", verdict.violations());
    runtime.block_on(controller.ack(d)).unwrap();

    let bus_summary = bus.finish().unwrap();
    assert_eq!(bus_summary.stats.published.get(&Stream::Normal), Some(&1));
    assert!(
        bus_summary
            .stats
            .published
            .get(&Stream::Telemetry)
            .is_some_and(|n| *n >= 1)
    );
    // validation_accuracy and train_images_per_second, at least.
    assert!(bus_summary.emitter.queued >= 2, "{:?}", bus_summary.emitter);
}
