//! The counting global allocator: every allocation and free of the process passes through it
//! to the real allocator, and the bytes in use are counted for the memory limiter
//! (`meshlens_collector::memory`). The one place in meshlens with unsafe code.
//!
//! Each thread counts into a thread-local and adds to the shared total once it is
//! [`FLUSH_BYTES`] away from its last flush (and when it exits), so the total is off by at most
//! that much per thread and an allocation costs no shared write.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};

/// Heap bytes in use, as flushed from the threads' local counts.
static HEAP: AtomicIsize = AtomicIsize::new(0);
/// Whether the process allocates through [`Counting`] (else there is nothing to limit on).
static COUNTING: AtomicBool = AtomicBool::new(false);

/// A thread's allocations not yet added to [`HEAP`]: one shared atomic touched by every
/// allocation of every thread would cost more than the allocation.
struct Local(Cell<isize>);

impl Drop for Local {
    fn drop(&mut self) {
        HEAP.fetch_add(self.0.get(), Ordering::Relaxed);
    }
}

thread_local! {
    static LOCAL: Local = const { Local(Cell::new(0)) };
}

/// A thread flushes its count once it is this far from the last flush: the shared count is off
/// by at most this much per thread.
pub const FLUSH_BYTES: isize = 64 << 10;

#[inline]
fn count(delta: isize) {
    let flushed = LOCAL.try_with(|l| {
        let v = l.0.get() + delta;
        if v.unsigned_abs() >= FLUSH_BYTES as usize {
            HEAP.fetch_add(v, Ordering::Relaxed);
            l.0.set(0);
        } else {
            l.0.set(v);
        }
    });
    // A thread past its locals' destruction counts straight into the total.
    if flushed.is_err() {
        HEAP.fetch_add(delta, Ordering::Relaxed);
    }
}

/// A global allocator that counts the bytes in use for the limiter:
/// `#[global_allocator] static A: Counting<mimalloc::MiMalloc> = Counting(mimalloc::MiMalloc);`
pub struct Counting<A>(pub A);

// SAFETY: every call is passed to the inner allocator unchanged; counting touches no allocation.
#[allow(unsafe_code)]
unsafe impl<A: GlobalAlloc> GlobalAlloc for Counting<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = self.0.alloc(layout);
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = self.0.alloc_zeroed(layout);
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.0.dealloc(ptr, layout);
        count(-(layout.size() as isize));
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = self.0.realloc(ptr, layout, new_size);
        if !p.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        p
    }
}

impl<A> Counting<A> {
    /// Says that the process allocates through this allocator; call once at start.
    pub fn enable(&self) {
        COUNTING.store(true, Ordering::Relaxed);
    }
}

/// Heap bytes in use, or `None` when the process does not allocate through [`Counting`].
pub fn heap_bytes() -> Option<usize> {
    COUNTING
        .load(Ordering::Relaxed)
        .then(|| HEAP.load(Ordering::Relaxed).max(0) as usize)
}

/// Asks mimalloc (the binary's allocator) to give the pages it holds free back to the system
/// now, not after its purge delay: when the resident set is far over the heap in use, this is
/// where the difference is. It costs a walk of the allocator's segments (milliseconds).
pub fn release_free_memory() {
    // SAFETY: `mi_collect` takes no pointers and may be called from any thread at any time.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_collect(true)
    };
}

#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    use super::*;

    struct Plain;
    // SAFETY: forwards to the system allocator.
    unsafe impl GlobalAlloc for Plain {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            std::alloc::System.alloc(l)
        }
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            std::alloc::System.dealloc(p, l)
        }
    }

    #[test]
    fn the_counting_allocator_counts_what_is_in_use_across_threads() {
        // Called directly (the test binary's global allocator is the default one): each thread's
        // count is flushed at its end, so after the threads the total is exact.
        let counting = Counting(Plain);
        let before = HEAP.load(Ordering::Relaxed);
        let big = Layout::from_size_align(1 << 20, 8).unwrap();
        let small = Layout::from_size_align(100, 8).unwrap();
        let kept: Vec<usize> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| unsafe {
                        // 1,000 small blocks made and freed, one big block grown and kept.
                        for _ in 0..1000 {
                            let p = counting.alloc(small);
                            counting.dealloc(p, small);
                        }
                        let p = counting.alloc(big);
                        let p = counting.realloc(p, big, 2 << 20);
                        p as usize
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(HEAP.load(Ordering::Relaxed) - before, 4 * (2 << 20));
        let grown = Layout::from_size_align(2 << 20, 8).unwrap();
        std::thread::scope(|s| {
            // Joined (not left to the scope): the thread's count is flushed as it exits.
            s.spawn(|| {
                for p in kept {
                    unsafe { counting.dealloc(p as *mut u8, grown) };
                }
            })
            .join()
            .unwrap();
        });
        assert_eq!(HEAP.load(Ordering::Relaxed), before);
    }
}
