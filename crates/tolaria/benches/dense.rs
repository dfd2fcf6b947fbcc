//! Where a small dense training step's time goes (issue #23), in one run:
//!
//! 1. **Fixed cost per op**: a candle add of two 1-element tensors, and
//!    esper-ops' fused linear on a `[1, 1]` input — time and allocations per
//!    call (no arithmetic to speak of: what is left is the op's bookkeeping).
//! 2. **`mlp` step by phase** at batch 128 and 32, on esper-ops and on
//!    candle's own ops: forward, loss (with the loss read back, as the
//!    trainer does), backward, AdamW — median microseconds and allocations
//!    per phase.
//! 3. **A GNN-sized network** (three 64-wide ReLU layers and a 10-way head
//!    over 64 nodes, cross-entropy, AdamW — the learned controller's kind of
//!    work): steps per second on esper-ops, on candle's ops, and in PyTorch
//!    (`scripts/torch_step.py`'s `gnn-dense`) at the same thread count.
//!
//! Runs as `esper train` does (compute pool, mimalloc retaining freed
//! memory), with a counting wrapper around the allocator that counts only
//! while a phase is being counted. Run: `cargo bench -p tolaria --bench dense`.

// A benchmark that cannot set itself up should abort loudly, hence `expect`.
#![allow(missing_docs, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor, Var};
use esper_ops::{Activation, ComputePool};
use kasmina::DormantSlots;
use tolaria::hosts::Ops;
use tolaria::optim::Optimizer;

mod common;
use common::{StepFixture, adamw, python, torch_rates};

static COUNTING: AtomicBool = AtomicBool::new(false);
static CALLS: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);

/// mimalloc, counting calls and bytes while `COUNTING` is set.
struct Counting;

// SAFETY: every call is passed unchanged to mimalloc; counting touches only
// atomics (it never allocates).
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            CALLS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { esper_ops::alloc::MiMalloc.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { esper_ops::alloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            CALLS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { esper_ops::alloc::MiMalloc.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            CALLS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(new_size, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { esper_ops::alloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// `(calls, bytes)` allocated by `job` (on any thread).
fn allocations<R>(job: impl FnOnce() -> R) -> (R, usize, usize) {
    CALLS.store(0, Ordering::SeqCst);
    BYTES.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    let result = job();
    COUNTING.store(false, Ordering::SeqCst);
    (
        result,
        CALLS.load(Ordering::SeqCst),
        BYTES.load(Ordering::SeqCst),
    )
}

fn median(mut xs: Vec<Duration>) -> f64 {
    xs.sort();
    xs[xs.len() / 2].as_secs_f64() * 1e6
}

/// Part 1: microseconds and allocations per call of `op`.
fn per_call(name: &str, op: impl Fn() -> Tensor) {
    const CALLS_TIMED: usize = 200_000;
    for _ in 0..1000 {
        drop(op());
    }
    let started = Instant::now();
    for _ in 0..CALLS_TIMED {
        drop(op());
    }
    let us = started.elapsed().as_secs_f64() * 1e6 / CALLS_TIMED as f64;
    let (_, calls, bytes) = allocations(|| drop(op()));
    println!("{name:>44}: {us:6.3} µs/call, {calls} allocations ({bytes} B)");
}

const PHASES: [&str; 4] = ["forward", "loss", "backward", "AdamW"];

/// Part 2: one `mlp` step by phase, `steps` times; prints the medians.
fn phases(ops: Ops, batch: usize, steps: usize) {
    let mut f = StepFixture::on("mlp", ops, &Device::Cpu, batch);
    let mut times: [Vec<Duration>; 4] = Default::default();
    let mut counts = [(0usize, 0usize); 4];
    for i in 0..steps + 20 {
        let count = i == steps + 19;
        let mut phase = |k: usize, job: &mut dyn FnMut()| {
            let started = Instant::now();
            if count {
                let (_, c, b) = allocations(job);
                counts[k] = (c, b);
            } else {
                job();
            }
            if i >= 20 && !count {
                times[k].push(started.elapsed());
            }
        };
        let mut logits = None;
        phase(0, &mut || {
            logits = Some(
                f.host
                    .forward_with_slots(&f.x, &mut DormantSlots)
                    .expect("forward"),
            );
        });
        let logits = logits.expect("logits");
        let mut loss = None;
        phase(1, &mut || {
            let l = f.ops.cross_entropy(&logits, &f.y).expect("loss");
            l.to_scalar::<f32>().expect("read back");
            loss = Some(l);
        });
        let loss = loss.expect("loss");
        let mut grads = None;
        phase(2, &mut || grads = Some(loss.backward().expect("backward")));
        let grads = grads.expect("grads");
        phase(3, &mut || f.optimizer.step(&grads).expect("step"));
    }
    let line: Vec<String> = PHASES
        .iter()
        .zip(times)
        .zip(counts)
        .map(|((name, t), (c, b))| {
            format!("{name} {:6.1} µs ({c} allocs, {} KB)", median(t), b / 1024)
        })
        .collect();
    let ops = match ops {
        Ops::Esper => "esper-ops",
        Ops::Candle => "candle ops",
    };
    println!("  mlp batch {batch:>3} {ops:>10}: {}", line.join(" | "));
}

/// Part 3: the GNN-sized network.
struct Gnn {
    layers: Vec<(Var, Var)>,
    optimizer: Optimizer,
    x: Tensor,
    y: Tensor,
    ops: Ops,
}

impl Gnn {
    const NODES: usize = 64;
    const WIDTH: usize = 64;

    fn new(ops: Ops) -> Self {
        let mut init = esper_ops::ParamInit::new(0, Device::Cpu);
        let mut layers = Vec::new();
        for out in [Self::WIDTH, Self::WIDTH, Self::WIDTH, 10] {
            let bound = 1.0 / (Self::WIDTH as f32).sqrt();
            layers.push((
                init.uniform(&[out, Self::WIDTH], bound).expect("weight"),
                init.uniform(&[out], bound).expect("bias"),
            ));
        }
        let params = layers
            .iter()
            .enumerate()
            .flat_map(|(i, (w, b))| {
                [
                    kasmina::NamedParameter {
                        name: format!("l{i}.weight"),
                        var: w.clone(),
                    },
                    kasmina::NamedParameter {
                        name: format!("l{i}.bias"),
                        var: b.clone(),
                    },
                ]
            })
            .collect();
        let optimizer = adamw(params, &Device::Cpu);
        let x = Tensor::randn(0f32, 1.0, (Self::NODES, Self::WIDTH), &Device::Cpu).expect("x");
        let labels: Vec<u32> = (0..Self::NODES as u32).map(|i| i % 10).collect();
        let y = Tensor::from_vec(labels, Self::NODES, &Device::Cpu).expect("y");
        Self {
            layers,
            optimizer,
            x,
            y,
            ops,
        }
    }

    fn step(&mut self) {
        let last = self.layers.len() - 1;
        let mut h = self.x.clone();
        for (i, (w, b)) in self.layers.iter().enumerate() {
            let act = if i < last {
                Activation::Relu
            } else {
                Activation::Identity
            };
            h = match self.ops {
                Ops::Esper => esper_ops::linear(&h, w.as_tensor(), b.as_tensor(), act),
                Ops::Candle => h
                    .matmul(&w.as_tensor().t().expect("t"))
                    .and_then(|y| y.broadcast_add(b.as_tensor()))
                    .and_then(|y| act.apply(y)),
            }
            .expect("layer");
        }
        let loss = self.ops.cross_entropy(&h, &self.y).expect("loss");
        loss.to_scalar::<f32>().expect("read back");
        let grads = loss.backward().expect("backward");
        self.optimizer.step(&grads).expect("step");
    }

    /// Steps per second over `steps` after warming up.
    fn rate(ops: Ops, steps: usize) -> f64 {
        let mut net = Self::new(ops);
        for _ in 0..steps / 10 {
            net.step();
        }
        let started = Instant::now();
        for _ in 0..steps {
            net.step();
        }
        steps as f64 / started.elapsed().as_secs_f64()
    }
}

fn main() {
    esper_ops::alloc::retain_freed_memory();
    let pool = ComputePool::new(0).expect("compute pool");
    let threads = pool.threads();
    println!("small dense work, {threads} threads, release + mimalloc");
    pool.run(|| {
        println!("1. fixed cost per op");
        let a = Tensor::new(&[1f32], &Device::Cpu).expect("a");
        let b = Tensor::new(&[2f32], &Device::Cpu).expect("b");
        per_call("candle add, 1 element", || (&a + &b).expect("add"));
        let x = Tensor::new(&[[1f32]], &Device::Cpu).expect("x");
        let w = Tensor::new(&[[3f32]], &Device::Cpu).expect("w");
        per_call("esper-ops linear, [1,1]·[1,1]ᵀ + [1]", || {
            esper_ops::linear(&x, &w, &b, Activation::Relu).expect("linear")
        });
        println!("2. mlp step by phase (median of 200 steps; allocations of one)");
        for batch in [128, 32] {
            for ops in [Ops::Esper, Ops::Candle] {
                phases(ops, batch, 200);
            }
        }
    });
    const GNN_STEPS: usize = 2000;
    let (esper, candle) = pool.run(|| {
        (
            Gnn::rate(Ops::Esper, GNN_STEPS),
            Gnn::rate(Ops::Candle, GNN_STEPS),
        )
    });
    println!("3. GNN-sized network (64 nodes, 3×64 ReLU + 10-way head), steps/s");
    let torch = python()
        .and_then(|p| torch_rates(&p, threads, &[("gnn-dense", GNN_STEPS)], "cpu", Gnn::NODES))
        .and_then(|(version, rates)| {
            rates
                .into_iter()
                .find(|(n, _)| n == "gnn-dense")
                .map(|(_, r)| (version, r / Gnn::NODES as f64))
        });
    let torch = match torch {
        Some((version, t)) => format!(
            " | PyTorch {version} {t:8.0} | esper-ops/torch {:.2}",
            esper / t
        ),
        None => " | PyTorch not available (cargo xtask bench step --with-torch installs it)".into(),
    };
    println!(
        "  esper-ops {esper:8.0} | candle ops {candle:8.0} | esper-ops/candle {:.2}{torch}",
        esper / candle
    );
}
