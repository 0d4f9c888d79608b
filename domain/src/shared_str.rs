//! An immutable string shared by reference count, one pointer wide.
//!
//! `Arc<str>` is two words (pointer and length) and its allocation starts with two
//! word-sized counts (strong and weak). A license of a million members holds a million
//! emails, each in the aggregate's member table, in the command that brought it and in
//! that command's events, so every byte of the handle and of the header is paid a million
//! times or more. Here the handle is one pointer and the header is eight bytes (a 32-bit
//! count and a 32-bit length, no weak count): a 1,000,000-row import's peak is about
//! 30 MB lower (issue 7, BENCHMARKS.md).
//!
//! This is the only `unsafe` code of the domain. Its invariants: the pointer always points
//! at a live allocation of `layout(len)` bytes made by `SharedStr::new`, whose header's
//! `count` is the number of live handles and whose `len` bytes after the header are valid
//! UTF-8 and never written after creation.

use std::alloc::{self, Layout};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ptr::NonNull;
use std::sync::atomic::{self, AtomicU32, Ordering};

/// The allocation's first eight bytes; the string's bytes follow.
#[repr(C)]
struct Header {
    count: AtomicU32,
    len: u32,
}

/// A handle count above this aborts the process, as `std::sync::Arc` does: the count would
/// otherwise wrap and free a string still in use. No program keeps two billion handles of
/// one string; reaching this means a leak of handles in a loop.
const HANDLES_MAX: u32 = i32::MAX as u32;

pub struct SharedStr {
    header: NonNull<Header>,
}

// SAFETY: the bytes are never written after creation and the count is atomic, so handles
// may be moved and shared between threads as `Arc<str>` may.
unsafe impl Send for SharedStr {}
// SAFETY: as above: `&SharedStr` only reads immutable bytes or updates the atomic count.
unsafe impl Sync for SharedStr {}

impl SharedStr {
    fn layout(len: usize) -> Layout {
        Layout::new::<Header>()
            .extend(Layout::array::<u8>(len).expect("a string's length fits a layout"))
            .expect("a string's length fits a layout")
            .0
    }

    /// Copies `text` into a new allocation with one handle.
    ///
    /// # Panics
    /// When `text` is 4 GiB or longer (emails are at most 254 bytes).
    pub fn new(text: &str) -> Self {
        let len = u32::try_from(text.len()).expect("a shared string is shorter than 4 GiB");
        let layout = Self::layout(text.len());
        // SAFETY: the layout is never zero-sized (the header alone is eight bytes).
        let raw = unsafe { alloc::alloc(layout) };
        let Some(header) = NonNull::new(raw.cast::<Header>()) else {
            alloc::handle_alloc_error(layout);
        };
        // SAFETY: `raw` is a fresh allocation of `layout`, aligned for `Header`, with room
        // for the header and then `len` bytes, which `text` does not overlap.
        unsafe {
            header.as_ptr().write(Header {
                count: AtomicU32::new(1),
                len,
            });
            std::ptr::copy_nonoverlapping(text.as_ptr(), raw.add(size_of::<Header>()), text.len());
        }
        Self { header }
    }

    fn header(&self) -> &Header {
        // SAFETY: the allocation lives while this handle does (the module's invariants).
        unsafe { self.header.as_ref() }
    }

    pub fn as_str(&self) -> &str {
        let len = self.header().len as usize;
        // SAFETY: `len` bytes of valid UTF-8 follow the header and are never written while
        // a handle lives (the module's invariants).
        unsafe {
            let bytes = self.header.as_ptr().cast::<u8>().add(size_of::<Header>());
            std::str::from_utf8_unchecked(std::slice::from_raw_parts(bytes, len))
        }
    }

    /// How many handles share this string (tests).
    #[cfg(test)]
    fn handles(&self) -> u32 {
        self.header().count.load(Ordering::Acquire)
    }
}

impl Clone for SharedStr {
    fn clone(&self) -> Self {
        // Relaxed, as in `Arc::clone`: a new handle can only be made from a live one, which
        // keeps the allocation alive; nothing else is ordered by the count going up.
        let before = self.header().count.fetch_add(1, Ordering::Relaxed);
        if before > HANDLES_MAX {
            std::process::abort();
        }
        Self {
            header: self.header,
        }
    }
}

impl Drop for SharedStr {
    fn drop(&mut self) {
        // Release, then an acquire fence before freeing, as in `Arc::drop`: every other
        // handle's use of the bytes happens before the allocation is freed.
        if self.header().count.fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        atomic::fence(Ordering::Acquire);
        let layout = Self::layout(self.header().len as usize);
        // SAFETY: this was the last handle, so nothing else reads the allocation, which
        // `new` made with this very layout.
        unsafe { alloc::dealloc(self.header.as_ptr().cast::<u8>(), layout) };
    }
}

impl std::ops::Deref for SharedStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for SharedStr {
    fn eq(&self, other: &Self) -> bool {
        self.header == other.header || self.as_str() == other.as_str()
    }
}

impl Eq for SharedStr {}

impl PartialOrd for SharedStr {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for SharedStr {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Hash for SharedStr {
    /// Hashes as the `str` it holds, as `Arc<str>` does.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl fmt::Display for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for SharedStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handle_is_one_pointer_wide_and_reads_back_its_text() {
        assert_eq!(size_of::<SharedStr>(), size_of::<usize>());
        assert_eq!(size_of::<Option<SharedStr>>(), size_of::<usize>());
        for text in ["", "a", "ada@north.edu", "émile@école.fr", &"x".repeat(254)] {
            let shared = SharedStr::new(text);
            assert_eq!(shared.as_str(), text);
            assert_eq!(shared.to_string(), text);
            assert_eq!(format!("{shared:?}"), format!("{text:?}"));
        }
    }

    #[test]
    fn clones_share_one_allocation_until_the_last_is_dropped() {
        let first = SharedStr::new("ada@north.edu");
        let second = first.clone();
        assert_eq!(first.header, second.header, "a clone shares the allocation");
        assert_eq!(first.handles(), 2);
        drop(second);
        assert_eq!(first.handles(), 1);
        assert_eq!(first.as_str(), "ada@north.edu");
    }

    #[test]
    fn equality_order_and_hash_are_the_texts() {
        let hash = |value: &dyn Fn(&mut std::collections::hash_map::DefaultHasher)| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            value(&mut hasher);
            hasher.finish()
        };
        let ada = SharedStr::new("ada@north.edu");
        let ada_again = SharedStr::new("ada@north.edu");
        let bob = SharedStr::new("bob@north.edu");
        assert_eq!(ada, ada_again);
        assert_ne!(ada, bob);
        assert!(ada < bob);
        assert_eq!(
            hash(&|h| ada.hash(h)),
            hash(&|h| "ada@north.edu".hash(h)),
            "hashes as its str, as Arc<str> does"
        );
    }

    #[test]
    fn handles_cloned_and_dropped_on_many_threads_free_the_text_once() {
        let shared = SharedStr::new("ada@north.edu");
        std::thread::scope(|scope| {
            for _ in 0..4 {
                let mine = shared.clone();
                scope.spawn(move || {
                    let clones: Vec<SharedStr> = (0..10_000).map(|_| mine.clone()).collect();
                    assert!(clones.iter().all(|c| c.as_str() == "ada@north.edu"));
                });
            }
        });
        assert_eq!(shared.handles(), 1, "every other handle was dropped");
    }
}
