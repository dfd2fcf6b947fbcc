//! A save killed between its durable steps leaves the library consistent: the
//! artifact is either fully present (file and row) or absent, and the library
//! opens and works afterwards. The "crash" is real: a child process (this test
//! binary, re-invoked) aborts inside the save.

use std::process::Command;

use urza::library::{Measured, SaveStep};
use urza::{Library, LibraryConfig, Parameters, SlotShape, artifact, definition, forge};

const DIR: &str = "URZA_CRASH_DIR";
const AT: &str = "URZA_CRASH_AT";

fn step_name(step: SaveStep) -> &'static str {
    match step {
        SaveStep::TempWritten => "temp",
        SaveStep::Renamed => "renamed",
        SaveStep::Committed => "committed",
    }
}

fn artifact_bytes() -> Vec<u8> {
    let def = definition("conv.light").unwrap();
    let forged = forge::forge(
        def,
        &def.default_parameters(),
        &SlotShape::conv2d(4, 5, 5).unwrap(),
        &forge::ForgeOptions::default(),
    )
    .unwrap();
    artifact::encode(&forged.module, None).unwrap()
}

/// The child: saves an artifact and aborts the process at the requested step.
/// Run only by `a_killed_save_leaves_the_library_consistent`.
#[test]
#[ignore = "child process of a_killed_save_leaves_the_library_consistent"]
fn crash_child() {
    let dir = std::env::var(DIR).expect("run by the parent test");
    let at = std::env::var(AT).expect("run by the parent test");
    let (library, _) = Library::open(LibraryConfig::new(dir)).unwrap();
    let bytes = artifact_bytes();
    library
        .save_bytes_observed(&bytes, Measured::default(), &mut |step| {
            if step_name(step) == at {
                std::process::abort();
            }
        })
        .unwrap();
}

#[test]
fn a_killed_save_leaves_the_library_consistent() {
    let exe = std::env::current_exe().unwrap();
    let expected_ref = artifact::sha256_hex(&artifact_bytes());
    for step in [
        SaveStep::TempWritten,
        SaveStep::Renamed,
        SaveStep::Committed,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new(&exe)
            .args(["--exact", "crash::crash_child", "--ignored", "--nocapture"])
            .env(DIR, dir.path())
            .env(AT, step_name(step))
            .status()
            .unwrap();
        assert!(!status.success(), "{step:?}: the child was meant to die");

        let (library, report) = Library::open(LibraryConfig::new(dir.path())).unwrap();
        let artifacts = library.artifacts("").unwrap();
        let file_exists = library.artifact_path(&expected_ref).exists();
        match step {
            SaveStep::TempWritten => {
                assert_eq!(report.temp_files_removed, 1, "{report:?}");
                assert!(artifacts.is_empty() && !file_exists);
            }
            SaveStep::Renamed => {
                assert_eq!(report.orphan_files_removed, 1, "{report:?}");
                assert!(artifacts.is_empty() && !file_exists);
            }
            SaveStep::Committed => {
                assert_eq!(report, urza::library::RecoveryReport::default());
                assert_eq!(artifacts.len(), 1);
                assert_eq!(artifacts[0].artifact_ref, expected_ref);
                library.fetch(&expected_ref).unwrap();
            }
        }
        // Either way the library works afterwards, and the same save succeeds.
        let (record, _) = library
            .save_bytes(&artifact_bytes(), Measured::default())
            .unwrap();
        assert_eq!(record.artifact_ref, expected_ref);
        library.fetch(&expected_ref).unwrap();
        let _: Parameters = record.parameters;
    }
}
