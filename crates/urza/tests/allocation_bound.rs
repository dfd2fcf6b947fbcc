//! Issue #21 item 4: a request for a huge slot or module is refused before
//! anything of its size is allocated. A counting allocator measures every
//! byte the refused requests allocate (this binary holds this test alone).
#![allow(clippy::unwrap_used)]
// A global allocator is an `unsafe impl`; it only forwards to `System`.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use urza::{Error, Library, LibraryConfig, Parameters, SlotShape};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counter only observes sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        }
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn huge_requests_are_refused_without_allocating_their_size() {
    let dir = tempfile::tempdir().unwrap();
    let (library, _) = Library::open(LibraryConfig::new(dir.path())).unwrap();
    let requests = [
        (
            "conv.residual",
            SlotShape::conv2d(65_536, 1_024, 1_024).unwrap(),
        ),
        ("conv.heavy", SlotShape::conv2d(4_096, 4, 4).unwrap()),
        ("dense.mlp_large", SlotShape::dense(1 << 20).unwrap()),
    ];
    for (blueprint, slot) in requests {
        ALLOCATED.store(0, Ordering::Relaxed);
        COUNTING.store(true, Ordering::Relaxed);
        let refused = library.ensure_artifact(blueprint, &slot, &Parameters::new(), 1);
        COUNTING.store(false, Ordering::Relaxed);
        let allocated = ALLOCATED.load(Ordering::Relaxed);
        assert!(
            matches!(&refused, Err(Error::InvalidSlot { .. })),
            "{blueprint} on {slot}: {refused:?}"
        );
        // The refusal's own text and bookkeeping: kilobytes, where the
        // request asked for gigabytes.
        assert!(
            allocated < 64 << 10,
            "{blueprint} on {slot}: {allocated} bytes allocated before the refusal"
        );
    }
    // A slot whose element count overflows a u64 is not even a slot.
    let conv = leyline::v1::SlotKind::Conv2d as i32;
    assert!(matches!(
        SlotShape::from_wire(conv, &[u32::MAX; 3]),
        Err(Error::InvalidSlot { .. })
    ));
}
