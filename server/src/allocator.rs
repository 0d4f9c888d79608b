//! The allocator the binaries (`license-server`, `replay-tool`) use: mimalloc instead of
//! glibc's. Under load most allocations are sled's short-lived node copies, and glibc's
//! malloc and free took a quarter of the server's CPU (BENCHMARKS.md, session 5). Each
//! binary declares `#[global_allocator] static _: mimalloc::MiMalloc` itself, so that
//! linking this library does not choose an allocator for anyone else, and calls [`tune`]
//! first thing.

use std::ffi::{c_int, c_long};

// Links mimalloc's static library (and so the functions below) into every binary that uses
// this module, whichever allocator that binary chose.
extern crate mimalloc;

// mimalloc's option setter and version, from the static library the `mimalloc` crate links.
unsafe extern "C" {
    fn mi_version() -> c_int;
    fn mi_option_set(option: c_int, value: c_long);
    #[cfg(test)]
    fn mi_option_get(option: c_int) -> c_long;
}

/// `mi_option_arena_eager_commit` and `mi_option_purge_delay` in mimalloc 2.x and 3.x's
/// `mi_option_t` (mimalloc.h); other major versions are left at their defaults.
const MIMALLOC_OPTION_ARENA_EAGER_COMMIT: c_int = 4;
const MIMALLOC_OPTION_PURGE_DELAY: c_int = 15;

/// How long freed memory stays with the process before it goes back to the system. At 0
/// (sessions 5-12) a quarter of the projector's time was page faults: memory given back
/// and faulted in again a moment later. At 100 ms a 1,000,000-row import became visible
/// after 7.2-8.2 s instead of 9.7-10.8 s, at a peak of 468-470 MiB, once the import's own
/// peak had come down (session 13, BENCHMARKS.md); 200 ms was faster still but peaked at
/// 485-500 MiB, too close to the 512 MiB target.
pub const PURGE_DELAY_MS: c_long = 100;

/// Commits arenas only as they are used and keeps freed memory for `PURGE_DELAY_MS`,
/// unless the operator set `MIMALLOC_ARENA_EAGER_COMMIT` or `MIMALLOC_PURGE_DELAY`. With
/// mimalloc's defaults (a one-second purge delay, eager arenas) a 1,000,000-row import
/// peaked at 946 MiB against glibc's 796 in session 5 (BENCHMARKS.md).
pub fn tune() {
    let options = [
        (
            MIMALLOC_OPTION_ARENA_EAGER_COMMIT,
            "MIMALLOC_ARENA_EAGER_COMMIT",
            0,
        ),
        (
            MIMALLOC_OPTION_PURGE_DELAY,
            "MIMALLOC_PURGE_DELAY",
            PURGE_DELAY_MS,
        ),
    ];
    // SAFETY: `mi_version` takes nothing and reads a constant.
    let major = unsafe { mi_version() } / 10_000;
    if !(2..=3).contains(&major) {
        return;
    }
    for (option, variable, value) in options {
        if std::env::var_os(variable).is_none() {
            // SAFETY: takes plain integers and sets one of mimalloc's process-wide
            // options, which mimalloc allows at any time.
            unsafe { mi_option_set(option, value) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_numbers_name_the_linked_mimallocs_eager_commit_and_purge_delay() {
        // The numbers are copied from mimalloc.h: their defaults (2 and 1,000 ms) must be
        // what the linked library reports for them, and `tune` must set them to 0 and to
        // `PURGE_DELAY_MS`.
        if std::env::var_os("MIMALLOC_ARENA_EAGER_COMMIT").is_some()
            || std::env::var_os("MIMALLOC_PURGE_DELAY").is_some()
        {
            return;
        }
        // SAFETY: plain integers in and out, as in `tune`.
        let get = |option| unsafe { mi_option_get(option) };
        assert_eq!(unsafe { mi_version() } / 10_000, 3);
        assert_eq!(get(MIMALLOC_OPTION_ARENA_EAGER_COMMIT), 2);
        assert_eq!(get(MIMALLOC_OPTION_PURGE_DELAY), 1_000);
        tune();
        assert_eq!(get(MIMALLOC_OPTION_ARENA_EAGER_COMMIT), 0);
        assert_eq!(get(MIMALLOC_OPTION_PURGE_DELAY), PURGE_DELAY_MS);
    }
}
