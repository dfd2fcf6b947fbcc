//! GPU suite for a growing run (feature `cuda`; needs an NVIDIA GPU, so the
//! test is ignored by default and named `gpu_…`):
//!
//! ```text
//! cargo test --release -p esper-runtime --features cuda --test esper_runtime -- --ignored gpu
//! ```

use crate::common;
use crate::grow::decisions;
use common::{esper_in as esper, text};

/// `esper train` grows `cnn-impaired` on the GPU as it does on the CPU: a
/// seed germinated, trained, blended and fossilized from GPU tensors, with
/// the same controller decisions at the same fences as the CPU run, and
/// every checkpoint written from the device.
#[test]
#[ignore = "needs an NVIDIA GPU: cargo test --features cuda -- --ignored gpu"]
fn gpu_a_growing_run_takes_the_cpu_runs_decisions() {
    let cwd = tempfile::tempdir().unwrap();
    let runs = cwd.path().join("runs");
    // The bundled digits, found from the working directory (the repository
    // root, where scripts/gpu-suite.sh runs) or from the source tree.
    let data = tolaria::bundled_mnist_dir().canonicalize().unwrap();
    let data = data.to_str().unwrap();
    for device in ["cpu", "cuda"] {
        let env = [
            ("ESPER_TOLARIA__DATA_DIR", data),
            ("ESPER_TOLARIA__HOST", "cnn-impaired"),
            ("ESPER_TOLARIA__EPOCHS", "6"),
            ("ESPER_TOLARIA__DEVICE", device),
            ("ESPER_RUN__RUN_ID", device),
            // Decisions must not depend on how fast either device answers.
            (
                "ESPER_LEYLINE__BUDGETS__PERFORMANCE__TAMIYO_STEP_DEADLINE_MS",
                "10000",
            ),
        ];
        let out = esper(&["train"], cwd.path(), &env);
        let t = text(&out);
        assert!(out.status.success(), "{device}: {t}");
        assert!(t.contains("GERMINATE seed-r0"), "{device}: {t}");
        assert!(t.contains("ended FOSSILIZED"), "{device}: {t}");
        println!("{device}: {}", t.lines().last().unwrap_or_default());
    }
    let (cpu, gpu) = (decisions(&runs, "cpu"), decisions(&runs, "cuda"));
    assert_eq!(gpu, cpu, "the GPU run decided otherwise");
    let checkpoints = std::fs::read_dir(runs.join("cuda/checkpoints"))
        .unwrap()
        .count();
    assert!(checkpoints > 0, "no checkpoint written from the GPU run");
}
