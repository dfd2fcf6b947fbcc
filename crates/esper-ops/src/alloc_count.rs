//! A counting global allocator for this crate's hot-path allocation tests.
//!
//! Only threads of its own two-thread pool count, so the unit tests running
//! beside a measurement do not disturb it; measurements take turns.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

static BYTES: AtomicUsize = AtomicUsize::new(0);
static CALLS: AtomicUsize = AtomicUsize::new(0);

fn record(bytes: usize) {
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        BYTES.fetch_add(bytes, Ordering::Relaxed);
        CALLS.fetch_add(1, Ordering::Relaxed);
    }
}

struct Counting;

// SAFETY: every call is passed unchanged to the system allocator; counting
// touches only atomics and a `const`-initialised thread-local without a
// destructor (so it never allocates and is valid during thread teardown).
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(new_size);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes and calls allocated while a job ran.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Allocated {
    pub(crate) bytes: usize,
    /// Reported in the tests' failure messages.
    #[allow(dead_code)]
    pub(crate) calls: usize,
}

/// Runs `job` on the counting pool (two threads) twice and returns the second
/// run's result and what it allocated: the steady state of an op a training
/// step repeats. (Measured on a first run, what the pool's threads kept from
/// earlier tests — their scratch buffers, the `gemm` crate's packing caches —
/// changed the count, and the same test passed or failed by test order.)
pub(crate) fn counted<R: Send>(job: impl Fn() -> R + Send + Sync) -> (R, Allocated) {
    static POOL: OnceLock<rayon::ThreadPool> = OnceLock::new();
    static TURN: Mutex<()> = Mutex::new(());
    #[allow(clippy::expect_used)] // a test helper that cannot start should fail the test
    let pool = POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .start_handler(|_| COUNTING.with(|c| c.set(true)))
            .build()
            .expect("counting pool")
    });
    let _turn = TURN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    pool.install(|| {
        drop(job());
        BYTES.store(0, Ordering::SeqCst);
        CALLS.store(0, Ordering::SeqCst);
        let result = job();
        let allocated = Allocated {
            bytes: BYTES.load(Ordering::SeqCst),
            calls: CALLS.load(Ordering::SeqCst),
        };
        (result, allocated)
    })
}

/// What the `gemm` crate allocates per call to pack the operands of an
/// `[m, k] · [k, n]` product: about their size, rounded up to its register
/// blocks (measured 0.9–1.1× on the convolutions' shapes; bounded at 1.25×
/// plus an aligned block).
pub(crate) fn gemm_packing(m: usize, k: usize, n: usize) -> usize {
    (m * k + k * n) * 4 * 5 / 4 + 1024
}

/// Tensor bookkeeping per op call (shapes, layouts, graph nodes).
pub(crate) const BOOKKEEPING: usize = 16 << 10;

/// How the convolution splits a batch of `n` samples with `l` output
/// positions on the counting pool's two threads: `(samples per GEMM, GEMM
/// calls per pass)` (as `conv::plan` does: one run of samples per thread,
/// blocks of about 1024 columns).
pub(crate) fn conv_blocking(n: usize, l: usize) -> (usize, usize) {
    let per_task = n.div_ceil(2);
    let block = 1024usize.div_ceil(l).clamp(1, per_task);
    (block, 2 * per_task.div_ceil(block))
}
