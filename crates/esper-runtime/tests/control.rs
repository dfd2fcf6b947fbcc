//! The control plane of `esper train`: its blueprint metadata cache is
//! invalidated by a `KernelCatalogUpdate` published on Oona by anyone.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use candle_core::Device;
use leyline::v1::{KernelCatalogUpdate, MessagePriority};

#[test]
fn a_catalog_update_on_oona_invalidates_tamiyos_metadata_cache() {
    let dir = tempfile::tempdir().unwrap();
    let env: BTreeMap<String, String> = [
        ("ESPER_TOLARIA__HOST", "cnn-impaired"),
        ("ESPER_RUN__RUN_ID", "control-test"),
        ("ESPER_RUN__DIR", dir.path().join("runs").to_str().unwrap()),
        (
            "ESPER_URZA__ROOT",
            dir.path().join("urza").to_str().unwrap(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let resolved = esper_runtime::config::load(None, &env).unwrap();
    std::fs::create_dir_all(resolved.run_dir()).unwrap();
    let bus = esper_runtime::RunBus::start(&resolved, "tolaria").unwrap();
    let slots = [
        kasmina::SlotSpec::conv2d("r0", 4, 14, 14, 0),
        kasmina::SlotSpec::conv2d("r1", 8, 7, 7, 1),
    ];
    let plane = esper_runtime::control::build(&resolved, &slots, &Device::Cpu, &bus)
        .unwrap()
        .expect("heuristic by default");
    assert_eq!(plane.policy, "heuristic");
    assert_eq!(plane.catalog.stats().loads, 1, "loaded once at start");
    assert_eq!(plane.catalog.stats().invalidations, 0);

    let update = KernelCatalogUpdate {
        blueprint_id: "conv.residual".into(),
        updated_at_ms: leyline::unix_now_ms(),
        ..KernelCatalogUpdate::default()
    };
    bus.block_on(bus.oona().publish(&update, MessagePriority::High))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while plane.catalog.stats().invalidations == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(plane.catalog.stats().invalidations, 1);
    bus.finish().unwrap();
}
