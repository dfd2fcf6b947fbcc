//! The compute thread pool a CPU training run executes on.
//!
//! candle's CPU ops, the `gemm` crate and these ops parallelise on the rayon
//! pool of the calling thread. Called from `main`, each parallel section is
//! handed to the pool's workers while `main` waits, and between sections the
//! workers spin (yielding) while `main` runs candle's single-threaded
//! element-wise ops: on a 2-core machine three busy threads share two cores.
//! Run on one of the pool's own workers instead ([`ComputePool::run`]), the
//! training thread does its share of every parallel section. Measured on a
//! `cnn` step when it still took ~40 ms: 43–53 ms from `main`, 39–40 ms on
//! the pool; at today's ~15 ms the difference is within noise
//! (`docs/PERFORMANCE.md`).

use candle_core::Result;

/// Stack of each worker: the training loop runs on one of them, and candle's
/// backward walks the graph recursively.
const WORKER_STACK_BYTES: usize = 16 << 20;

/// A rayon pool that runs a whole training job on one of its workers.
#[derive(Debug)]
pub struct ComputePool {
    pool: rayon::ThreadPool,
}

impl ComputePool {
    /// `threads` workers; 0 = one per available core.
    pub fn new(threads: usize) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .stack_size(WORKER_STACK_BYTES)
            .thread_name(|i| format!("esper-compute-{i}"))
            .build()
            .map_err(|e| {
                candle_core::Error::Msg(format!("compute pool of {threads} threads: {e}"))
            })?;
        Ok(Self { pool })
    }

    /// Workers in the pool.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Runs `job` on one of the pool's workers and returns its result; every
    /// parallel op inside it uses this pool.
    pub fn run<R: Send>(&self, job: impl FnOnce() -> R + Send) -> R {
        self.pool.install(job)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn jobs_run_on_the_pool_and_parallel_ops_use_it() {
        let pool = ComputePool::new(3).unwrap();
        assert_eq!(pool.threads(), 3);
        let (inside, threads) = pool.run(|| {
            (
                rayon::current_thread_index().is_some(),
                rayon::current_num_threads(),
            )
        });
        assert!(inside, "the job runs on a worker");
        assert_eq!(threads, 3);
    }
}
