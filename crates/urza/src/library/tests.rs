#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use leyline::v1::{BlueprintTier, SlotKind};

use super::*;

fn open(dir: &Path) -> Library {
    Library::open(LibraryConfig::new(dir)).unwrap().0
}

fn slot() -> SlotShape {
    SlotShape::conv2d(4, 6, 6).unwrap()
}

#[test]
fn the_catalog_holds_the_builtins_and_answers_queries() {
    let dir = tempfile::tempdir().unwrap();
    let (library, report) = Library::open(LibraryConfig::new(dir.path())).unwrap();
    assert_eq!(report.blueprints_changed, catalog().len() as u64);
    let all = library.list(&CatalogQuery::default()).unwrap();
    assert_eq!(all.len(), catalog().len());
    let dense = library
        .list(&CatalogQuery {
            slot_kind: Some(SlotKind::Dense as i32),
            ..CatalogQuery::default()
        })
        .unwrap();
    assert!(dense.iter().all(|e| {
        e.descriptor
            .as_ref()
            .unwrap()
            .slot_kinds
            .contains(&(SlotKind::Dense as i32))
    }));
    assert!(dense.len() >= 5); // four dense blueprints and identity
    let experimental = library
        .list(&CatalogQuery {
            tier: Some(BlueprintTier::Experimental as i32),
            ..CatalogQuery::default()
        })
        .unwrap();
    assert!(!experimental.is_empty());
    let attention = library
        .list(&CatalogQuery {
            tag: Some("attention".into()),
            ..CatalogQuery::default()
        })
        .unwrap();
    assert_eq!(attention.len(), 2);
    // Reopening changes nothing.
    drop(library);
    let (_, again) = Library::open(LibraryConfig::new(dir.path())).unwrap();
    assert_eq!(again.blueprints_changed, 0);
}

#[test]
fn quarantined_blueprints_disappear_from_default_queries_and_are_announced() {
    let dir = tempfile::tempdir().unwrap();
    let library = open(dir.path());
    let mut changes = library.subscribe();
    library
        .quarantine_blueprint("conv.heavy", "operator")
        .unwrap();
    let update = changes.try_recv().unwrap();
    assert_eq!(update.blueprint_id, "conv.heavy");
    assert_eq!(update.change, CatalogChange::Quarantined as i32);
    let listed = library.list(&CatalogQuery::default()).unwrap();
    assert!(
        listed
            .iter()
            .all(|e| e.descriptor.as_ref().unwrap().blueprint_id != "conv.heavy")
    );
    let entry = library.blueprint("conv.heavy").unwrap();
    assert!(entry.quarantined);
    let err = library.ensure_artifact("conv.heavy", &slot(), &Parameters::new(), 0);
    assert!(matches!(err, Err(Error::Quarantined { .. })), "{err:?}");
    assert!(matches!(
        library.quarantine_blueprint("nope", "x"),
        Err(Error::UnknownBlueprint { .. })
    ));
}

#[test]
fn forged_artifacts_are_saved_once_fetched_verified_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let library = open(dir.path());
    let mut changes = library.subscribe();
    let record = library
        .ensure_artifact("conv.residual", &slot(), &Parameters::new(), 7)
        .unwrap();
    assert_eq!(record.blueprint_id, "conv.residual");
    assert_eq!(record.slot_shape, vec![4, 6, 6]);
    assert!(record.forward_p95_ms >= record.forward_p50_ms && record.forward_p50_ms > 0.0);
    let expected = definition("conv.residual")
        .unwrap()
        .parameter_count(&record.parameters, &slot())
        .unwrap();
    assert_eq!(record.parameter_count, expected);
    let announced = changes.try_recv().unwrap();
    assert_eq!(announced.artifact_ref, record.artifact_ref);
    assert_eq!(announced.guard_digest, record.guard_digest);

    // A second request finds the same artifact instead of forging again.
    let again = library
        .ensure_artifact("conv.residual", &slot(), &Parameters::new(), 8)
        .unwrap();
    assert_eq!(again.artifact_ref, record.artifact_ref);
    assert_eq!(
        library.blueprint("conv.residual").unwrap().artifact_count,
        1
    );

    let artifact = library.fetch(&record.artifact_ref).unwrap();
    assert_eq!(artifact::sha256_hex(&artifact.bytes), record.artifact_ref);
    let module = artifact.instantiate(&candle_core::Device::Cpu).unwrap();
    assert_eq!(crate::forge::guard_digest(&module), record.guard_digest);
    library.fetch(&record.artifact_ref).unwrap();
    let stats = library.cache_stats();
    assert_eq!((stats.hits, stats.misses), (1, 1));
    assert_eq!(stats.bytes, record.size_bytes);
}

#[test]
fn flipping_one_byte_is_detected_on_load_and_quarantines_the_artifact() {
    let dir = tempfile::tempdir().unwrap();
    let library = open(dir.path());
    let record = library
        .ensure_artifact(
            "dense.low_rank",
            &SlotShape::dense(16).unwrap(),
            &Parameters::new(),
            1,
        )
        .unwrap();
    let path = library.artifact_path(&record.artifact_ref);
    drop(library);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    let library = open(dir.path());
    let err = library.fetch(&record.artifact_ref);
    assert!(matches!(err, Err(Error::Integrity { .. })), "{err:?}");
    let stored = library.artifact_record(&record.artifact_ref).unwrap();
    assert!(stored.quarantined, "{stored:?}");
    assert!(matches!(
        library.fetch(&record.artifact_ref),
        Err(Error::Quarantined { .. })
    ));
    // A new request forges a healthy replacement rather than serving the corrupt one.
    let fresh = library
        .ensure_artifact(
            "dense.low_rank",
            &SlotShape::dense(16).unwrap(),
            &Parameters::new(),
            2,
        )
        .unwrap();
    assert_ne!(fresh.artifact_ref, record.artifact_ref);
    let report = library.verify().unwrap();
    assert_eq!(report.checked, 2);
    assert_eq!(report.healthy, 1);
    assert_eq!(report.corrupt.len(), 1);
}

#[test]
fn verify_finds_corruption_and_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let library = open(dir.path());
    let a = library
        .ensure_artifact("conv.depthwise", &slot(), &Parameters::new(), 1)
        .unwrap();
    let b = library
        .ensure_artifact("conv.grouped", &slot(), &Parameters::new(), 1)
        .unwrap();
    std::fs::remove_file(library.artifact_path(&a.artifact_ref)).unwrap();
    let mut bytes = std::fs::read(library.artifact_path(&b.artifact_ref)).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x80;
    std::fs::write(library.artifact_path(&b.artifact_ref), bytes).unwrap();
    let report = library.verify().unwrap();
    assert_eq!(report.missing, vec![a.artifact_ref.clone()]);
    assert_eq!(report.corrupt.len(), 1);
    assert_eq!(report.corrupt[0].0, b.artifact_ref);
    assert!(
        library
            .artifact_record(&a.artifact_ref)
            .unwrap()
            .quarantined
    );
}

#[test]
fn trained_weights_are_stored_back_with_provenance() {
    let dir = tempfile::tempdir().unwrap();
    let library = open(dir.path());
    let parent = library
        .ensure_artifact("conv.squeeze_excitation", &slot(), &Parameters::new(), 3)
        .unwrap();
    let module = library
        .fetch(&parent.artifact_ref)
        .unwrap()
        .instantiate(&candle_core::Device::Cpu)
        .unwrap();
    // "Train": change the weights.
    for (_, var) in module.named_vars() {
        var.set(&(var.as_tensor() * 0.5).unwrap()).unwrap();
    }
    let provenance = ArtifactProvenance {
        training_run_id: "run-42".into(),
        slot_id: "slot1".into(),
        contribution: 3.2,
        parent_artifact_ref: parent.artifact_ref.clone(),
    };
    let trained = library.store_trained(&module, provenance.clone()).unwrap();
    assert_ne!(trained.artifact_ref, parent.artifact_ref);
    assert_eq!(trained.provenance, Some(provenance));
    assert_eq!(trained.guard_digest, parent.guard_digest);
    // Trained artifacts are not what `ensure_artifact` hands out as initial weights.
    let initial = library
        .ensure_artifact("conv.squeeze_excitation", &slot(), &Parameters::new(), 3)
        .unwrap();
    assert_eq!(initial.artifact_ref, parent.artifact_ref);
    assert_eq!(
        library.artifacts("conv.squeeze_excitation").unwrap().len(),
        2
    );
}

#[test]
fn bad_uploads_are_rejected_and_leave_the_library_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let library = open(dir.path());
    let record = library
        .ensure_artifact(
            "dense.mlp_small",
            &SlotShape::dense(8).unwrap(),
            &Parameters::new(),
            1,
        )
        .unwrap();
    let good = library.fetch(&record.artifact_ref).unwrap().bytes;
    // The first weight made NaN: shapes and guard digest still match.
    let mut nan = good.to_vec();
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    nan[8 + header_len..8 + header_len + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    let refused = library.save_bytes(&nan, Measured::default());
    assert!(
        matches!(&refused, Err(Error::MalformedArtifact { reason }) if reason.contains("not a finite number")),
        "{refused:?}"
    );
    for bad in [
        b"garbage".to_vec(),
        Vec::new(),
        good[..good.len() - 3].to_vec(),
    ] {
        assert!(library.save_bytes(&bad, Measured::default()).is_err());
    }
    assert_eq!(library.artifacts("").unwrap().len(), 1);
    let (same, created) = library.save_bytes(&good, Measured::default()).unwrap();
    assert!(!created);
    assert_eq!(same.artifact_ref, record.artifact_ref);
    let files = files::artifact_files(&library.layout).unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(std::fs::read_dir(&library.layout.tmp).unwrap().count(), 0);
}

#[test]
fn invalid_requests_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let library = open(dir.path());
    assert!(matches!(
        library.ensure_artifact("nope", &slot(), &Parameters::new(), 0),
        Err(Error::UnknownBlueprint { .. })
    ));
    let mut params = Parameters::new();
    params.insert("depth".into(), 9.0);
    params.insert("expansion".into(), 1.0);
    assert!(matches!(
        library.ensure_artifact("conv.residual", &slot(), &params, 0),
        Err(Error::InvalidParameter { .. })
    ));
    assert!(matches!(
        library.ensure_artifact("dense.mlp_small", &slot(), &Parameters::new(), 0),
        Err(Error::SlotMismatch { .. })
    ));
    assert!(matches!(
        library.fetch("00ff"),
        Err(Error::UnknownArtifact { .. })
    ));
}

#[test]
fn many_processes_can_open_one_library_at_once() {
    // A cohort's workers open the same library at the same moment; each
    // syncs the built-in catalog (reads, then writes). Separate connections
    // lock like separate processes.
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let openers: Vec<_> = (0..6)
            .map(|_| {
                let root = root.clone();
                std::thread::spawn(move || Library::open(LibraryConfig::new(&root)).map(|_| ()))
            })
            .collect();
        for opener in openers {
            opener.join().unwrap().unwrap();
        }
        assert_eq!(
            open(&root).list(&CatalogQuery::default()).unwrap().len(),
            catalog().len()
        );
    }
}
