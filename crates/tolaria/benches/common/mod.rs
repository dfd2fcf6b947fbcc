//! What the training-step benches share: a reference host with AdamW and one
//! random batch of 128 MNIST-shaped images.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{Device, Tensor};
use kasmina::{DormantSlots, Host};
use tolaria::optim::{Optimizer, ParamGroup, Rule};

/// Images per step.
pub(crate) const BATCH: usize = 128;

/// A host, its AdamW (lr 1e-3, weight decay 0.01) and a fixed batch.
pub(crate) struct StepFixture {
    pub(crate) host: Box<dyn Host>,
    pub(crate) optimizer: Optimizer,
    pub(crate) x: Tensor,
    pub(crate) y: Tensor,
    pub(crate) ops: tolaria::hosts::Ops,
}

impl StepFixture {
    /// The reference host `name`, seed 0, on the CPU, on esper-ops.
    #[allow(dead_code)] // not every bench uses both constructors
    pub(crate) fn new(name: &str) -> Self {
        Self::with_ops(name, tolaria::hosts::Ops::Esper)
    }

    /// The reference host `name`, seed 0, on the CPU, on `ops`.
    #[allow(dead_code)] // not every bench uses every constructor
    pub(crate) fn with_ops(name: &str, ops: tolaria::hosts::Ops) -> Self {
        Self::on(name, ops, &Device::Cpu, BATCH)
    }

    /// The reference host `name`, seed 0, on `device`, on `ops`, with a
    /// batch of `batch` images.
    pub(crate) fn on(name: &str, ops: tolaria::hosts::Ops, device: &Device, batch: usize) -> Self {
        let x = Tensor::randn(0f32, 1.0, (batch, 1, 28, 28), device).expect("input");
        let labels: Vec<u32> = (0..batch as u32).map(|i| i % 10).collect();
        let y = Tensor::from_vec(labels, batch, device).expect("labels");
        let host = tolaria::hosts::build_with_ops(name, 0, device, ops).expect("host");
        let optimizer = adamw(host.parameters(), device);
        Self {
            host,
            optimizer,
            x,
            y,
            ops,
        }
    }

    /// One training step: forward through dormant slots, cross-entropy,
    /// backward, AdamW.
    #[allow(dead_code)] // the dense bench times the step's phases itself
    pub(crate) fn step(&mut self) {
        let logits = self
            .host
            .forward_with_slots(&self.x, &mut DormantSlots)
            .expect("forward");
        let loss = self.ops.cross_entropy(&logits, &self.y).expect("loss");
        let grads = loss.backward().expect("backward");
        self.optimizer.step(&grads).expect("step");
    }
}

/// AdamW (lr 1e-3, weight decay 0.01, PyTorch's betas and eps) over
/// `params` on `device`, as `scripts/torch_step.py` trains.
pub(crate) fn adamw(params: Vec<kasmina::NamedParameter>, device: &Device) -> Optimizer {
    let mut optimizer = Optimizer::new(Rule::AdamW {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
    })
    .expect("rule")
    .on(device.location());
    optimizer
        .add_group(ParamGroup::new("host", params, 1e-3, 0.01))
        .expect("group");
    optimizer
}

/// A Python that can `import torch`: `target/torch-venv` (made by `cargo
/// xtask bench step --with-torch`) or the system `python3`.
#[allow(dead_code)] // not every bench compares with PyTorch
pub(crate) fn python() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let venv = root.join("target/torch-venv/bin/python");
    [venv, PathBuf::from("python3")].into_iter().find(|p| {
        Command::new(p)
            .args(["-c", "import torch"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// (torch version, {host: img/s}) from `scripts/torch_step.py` for `steps`
/// (host, timed steps) on `device` (`cpu` or `cuda`) at `batch`. The script
/// is found from the working directory first (a bench executable carried to
/// another machine runs from the repository root there), then from the
/// source tree.
#[allow(dead_code)] // not every bench compares with PyTorch
pub(crate) fn torch_rates(
    python: &Path,
    threads: usize,
    steps: &[(&str, usize)],
    device: &str,
    batch: usize,
) -> Option<(String, Vec<(String, f64)>)> {
    let local = PathBuf::from("scripts/torch_step.py");
    let script = if local.is_file() {
        local
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/torch_step.py")
    };
    let steps_json = format!(
        "{{{}}}",
        steps
            .iter()
            .map(|(n, s)| format!("\"{n}\": {s}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let out = Command::new(python)
        .arg(script)
        .arg(threads.to_string())
        .arg(steps_json)
        .arg(device)
        .arg(batch.to_string())
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "torch_step.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let version = v["torch"].as_str()?.to_owned();
    let hosts = steps
        .iter()
        .filter_map(|(n, _)| v["hosts"][n].as_f64().map(|r| ((*n).to_owned(), r)))
        .collect();
    Some((version, hosts))
}
