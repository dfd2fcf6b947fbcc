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

[[action]]
at_epoch = 2
op = "fossilize"
seed = "ghost"
"#,
    )
    .unwrap();
    let env = [
        ("ESPER_TOLARIA__HOST", "cnn-impaired"),
        ("ESPER_TOLARIA__EPOCHS", "2"),
        ("ESPER_TOLARIA__TRAIN_SIZE", "2048"),
        ("ESPER_TOLARIA__FENCE_EVERY_STEPS", "5"),
        ("ESPER_RUN__RUN_ID", "scripted"),
        // What this test checks does not depend on wall-clock time: a loaded
        // CI machine must not turn a fence into a missed deadline.
        (
            "ESPER_LEYLINE__BUDGETS__PERFORMANCE__TAMIYO_STEP_DEADLINE_MS",
            "10000",
        ),
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
    // A proposal naming no live seed is an error in the summary, and says
    // which command it was.
    assert!(
        t.contains("the proposed command failed validation: seed ghost is not in the state packet"),
        "{t}"
    );

    std::fs::write(&script, "[[action]]\nat_step = 1\nop = \"explode\"\n").unwrap();
    let out = esper(&["train", "--script", "seeds.toml"], cwd.path(), &env);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("schedule"), "{}", text(&out));

    // A slot the host lacks, or a dense blueprint on a conv slot: refused at
    // load, naming the action, and no run directory is left behind.
    for (n, (slot, blueprint, why)) in [
        ("r9", "conv.residual", "the host has no slot \"r9\""),
        ("r0", "dense.mlp_small", "does not fit slot r0"),
    ]
    .into_iter()
    .enumerate()
    {
        std::fs::write(
            &script,
            format!(
                "[[action]]\nat_step = 5\nop = \"germinate\"\nslot = \"{slot}\"\nblueprint = \"{blueprint}\"\n"
            ),
        )
        .unwrap();
        let id = format!("bad-{n}");
        let env: Vec<_> = env[..4]
            .iter()
            .copied()
            .chain([("ESPER_RUN__RUN_ID", id.as_str())])
            .collect();
        let out = esper(&["train", "--script", "seeds.toml"], cwd.path(), &env);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{t}");
        assert!(t.contains("action 1") && t.contains(why), "{t}");
        assert!(!cwd.path().join("runs").join(&id).exists(), "{t}");
    }
}
