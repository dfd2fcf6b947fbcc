//! `esper train --script seeds.toml`: a schedule file drives the lifecycle by
//! hand (germinate, then cull), and a malformed one is refused before
//! training starts.

use crate::common;
use common::{esper_in as esper, text};

#[test]
fn a_schedule_file_drives_the_lifecycle_and_a_bad_one_is_refused() {
    let cwd = tempfile::tempdir().unwrap();
    let script = cwd.path().join("seeds.toml");
    std::fs::write(
        &script,
        r#"
[[action]]
at_step = 5
op = "germinate"
slot = "r0"
blueprint = "conv.residual"
seed = "scripted"

[[action]]
at_epoch = 1
op = "cull"
seed = "scripted"
"#,
    )
    .unwrap();
    let env = [
        ("ESPER_TOLARIA__HOST", "cnn-impaired"),
        ("ESPER_TOLARIA__EPOCHS", "2"),
        ("ESPER_TOLARIA__TRAIN_SIZE", "2048"),
        ("ESPER_TOLARIA__FENCE_EVERY_STEPS", "5"),
        ("ESPER_RUN__RUN_ID", "scripted"),
    ];
    let out = esper(&["train", "--script", "seeds.toml"], cwd.path(), &env);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("controller script"), "{t}");
    assert!(
        t.contains("GERMINATE scripted at r0 (conv.residual)"),
        "{t}"
    );
    assert!(t.contains("CULL scripted"), "{t}");
    // Culled at the end of epoch 1: embargoed, not part of the model.
    assert!(t.contains("seed_culled"), "{t}");
    assert!(!t.contains("ended FOSSILIZED"), "{t}");

    std::fs::write(&script, "[[action]]\nat_step = 1\nop = \"explode\"\n").unwrap();
    let out = esper(&["train", "--script", "seeds.toml"], cwd.path(), &env);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("schedule"), "{}", text(&out));
}
