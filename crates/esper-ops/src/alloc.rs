//! mimalloc as the global allocator of a process that trains on the CPU, and
//! the one option it needs for tensor work (feature `mimalloc`).
//!
//! A training step allocates and frees the same multi-megabyte buffers
//! (activations, gradients) every step. mimalloc's default returns freed
//! memory to the OS after a delay (`purge_delay`), so a step may map those
//! pages again: on `cnn`, before the convolutions kept their scratch between
//! calls, that was 1 400–1 650 page faults a step and 43–53 ms instead of
//! 36–37 ms (`docs/PERFORMANCE.md`); today's `cnn` step allocates too little
//! for it to show, candle's own ops and seeds still allocate per op.
//! [`retain_freed_memory`] keeps freed memory for reuse instead; the
//! process's resident memory then stays at its peak working set, which a
//! training process reaches in its first steps anyway.
//!
//! ```ignore
//! #[global_allocator]
//! static GLOBAL: esper_ops::alloc::MiMalloc = esper_ops::alloc::MiMalloc;
//!
//! fn main() {
//!     esper_ops::alloc::retain_freed_memory();
//!     // …
//! }
//! ```

pub use mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_e` (libmimalloc-sys
/// names no constant for it): milliseconds before freed memory is returned to
/// the OS; −1 never.
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Never returns freed memory to the OS, so the next step reuses it without
/// page faults. Call once, first thing in `main`; harmless when mimalloc is
/// linked but not the global allocator.
pub fn retain_freed_memory() {
    // SAFETY: `mi_option_set` takes two integers, touches only mimalloc's
    // option table (atomic stores) and may be called from any thread at any
    // time; `PURGE_DELAY` is a valid option of the linked mimalloc (v3).
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY, -1);
    }
}

/// The current purge delay in milliseconds (−1: freed memory is retained).
pub fn purge_delay_ms() -> i64 {
    // SAFETY: as above; `mi_option_get` only reads the option table.
    #[allow(unsafe_code)]
    let value = unsafe { libmimalloc_sys::mi_option_get(PURGE_DELAY) };
    #[allow(clippy::useless_conversion)] // `c_long` is not `i64` on every platform
    i64::from(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_memory_is_retained_once_asked() {
        retain_freed_memory();
        assert_eq!(purge_delay_ms(), -1);
    }
}
