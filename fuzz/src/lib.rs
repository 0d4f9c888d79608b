//! What every fuzz target shares: an allocator that turns one oversized allocation into a
//! crash, so that "a huge length prefix must not allocate gigabytes" is checked without
//! AddressSanitizer (libFuzzer's own `-malloc_limit_mb` needs a sanitizer's malloc hooks,
//! and an untouched allocation never shows in the RSS limit).

use std::alloc::{GlobalAlloc, Layout, System};

/// The largest single allocation a target may make. The biggest legitimate one is the CSV
/// parser's row buffer (64 KiB); inputs are at most a few KiB.
pub const ALLOCATION_BYTES_MAX: usize = 16 * 1024 * 1024;

/// The system allocator, aborting on any allocation over `ALLOCATION_BYTES_MAX`. An abort
/// is a crash to libFuzzer, which saves the input in `artifacts/`.
pub struct BoundedAllocator;

// SAFETY: every call is passed on to `System` unchanged; the only addition is an abort
// before an oversized request, which allocates nothing.
unsafe impl GlobalAlloc for BoundedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: the caller's contract for `alloc` is passed on as it is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        // SAFETY: as for `alloc`.
        unsafe { System.realloc(pointer, layout, new_size) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: as for `alloc`.
        unsafe { System.dealloc(pointer, layout) }
    }
}

fn check(size: usize) {
    if size > ALLOCATION_BYTES_MAX {
        // No message: formatting one could allocate inside the allocator.
        std::process::abort();
    }
}
