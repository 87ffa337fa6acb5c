//! Task states: counted handles whose memory is reused.
//!
//! Every task has one heap block, its [`Shared`](crate::future::Shared)
//! state, held by its `Future` and by whoever runs it. A burst of tasks
//! (submit a hundred thousand, then collect them) makes the system allocator
//! grow the heap, fault in fresh pages, and give them back when the burst is
//! collected, every time: with glibc that was most of the cost of a trivial
//! thread task. So a freed task state goes to a small free list of the
//! thread that frees it, and the next submit on that thread takes it from
//! there. Each thread keeps at most [`CACHE_BYTES`] this way; the rest goes
//! back to the allocator, and a thread's list is freed when the thread ends.
//!
//! [`Counted`] is the `Arc` of this module: std's `Arc` cannot take its
//! memory from anywhere but the global allocator on stable Rust.

use std::alloc::Layout;
use std::cell::RefCell;
use std::marker::PhantomData;
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicUsize, Ordering};

/// Blocks are recycled in size classes of this many bytes...
const CLASS: usize = 64;
/// ...up to this many classes (states up to 512 bytes); bigger states use
/// the allocator directly.
const CLASSES: usize = 8;
/// Recycled blocks are aligned to this; a state that needs more is not
/// recycled.
const ALIGN: usize = 16;
/// The most memory one thread keeps for reuse.
pub(crate) const CACHE_BYTES: usize = 16 << 20;

/// The size class of `layout`, if its blocks are recycled.
///
/// Under loom (see [`crate::sync`]) nothing is recycled: loom's threads
/// share one OS thread, hence one cache, and the models check the task
/// state, not this cache; every block then comes from the allocator.
fn class(layout: Layout) -> Option<usize> {
    if cfg!(loom) {
        return None;
    }
    let class = layout.size().checked_sub(1)? / CLASS;
    (class < CLASSES && layout.align() <= ALIGN).then_some(class)
}

/// The layout every block of `class` is allocated with, so that any block
/// of a class fits any state of that class.
fn class_layout(class: usize) -> Layout {
    // SAFETY: ALIGN is a power of two and the size, at most
    // CLASSES * CLASS, is far from overflowing when rounded up to it.
    unsafe { Layout::from_size_align_unchecked((class + 1) * CLASS, ALIGN) }
}

/// One thread's free blocks, by class.
struct Cache {
    free: [Vec<NonNull<u8>>; CLASSES],
    bytes: usize,
}

impl Drop for Cache {
    fn drop(&mut self) {
        for (class, list) in self.free.iter_mut().enumerate() {
            for block in list.drain(..) {
                // SAFETY: every cached block was allocated with this layout.
                unsafe { std::alloc::dealloc(block.as_ptr(), class_layout(class)) };
            }
        }
    }
}

thread_local! {
    static CACHE: RefCell<Cache> = const {
        RefCell::new(Cache { free: [const { Vec::new() }; CLASSES], bytes: 0 })
    };
}

/// Memory for a `layout`-shaped value: a recycled block when there is one.
fn alloc(layout: Layout) -> NonNull<u8> {
    let layout = match class(layout) {
        Some(class) => {
            let reused = CACHE
                .try_with(|c| {
                    let mut c = c.borrow_mut();
                    let block = c.free[class].pop()?;
                    c.bytes -= class_layout(class).size();
                    Some(block)
                })
                .ok()
                .flatten();
            if let Some(block) = reused {
                return block;
            }
            class_layout(class)
        }
        None => layout,
    };
    // SAFETY: task states are never zero-sized (they hold a counter).
    let ptr = unsafe { std::alloc::alloc(layout) };
    NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout))
}

/// Gives back the memory of a `layout`-shaped value got from [`alloc`].
///
/// # Safety
/// `block` came from `alloc(layout)` and is not used again.
unsafe fn free(block: NonNull<u8>, layout: Layout) {
    let layout = match class(layout) {
        Some(class) => {
            let size = class_layout(class).size();
            let kept = CACHE
                .try_with(|c| {
                    let mut c = c.borrow_mut();
                    if c.bytes + size > CACHE_BYTES {
                        return false;
                    }
                    c.bytes += size;
                    c.free[class].push(block);
                    true
                })
                .unwrap_or(false);
            if kept {
                return;
            }
            class_layout(class)
        }
        None => layout,
    };
    // SAFETY: the caller's promise; `layout` is the one it was allocated with.
    unsafe { std::alloc::dealloc(block.as_ptr(), layout) };
}

/// A counted, shared handle to a `P` in recycled memory: `Arc<P>` without
/// weak references. `P` may be unsized (`dyn Job`, `Shared<T>`), in which
/// case the handle was made from a sized value and coerced.
///
/// The count lives in the value itself, as its first field: every type
/// placed here is `#[repr(C)]` and starts with an `AtomicUsize` (see
/// [`place`]), so a handle finds the count without knowing the type.
pub(crate) struct Counted<P: ?Sized> {
    ptr: NonNull<P>,
    _owns: PhantomData<P>,
}

// SAFETY: like `Arc<P>`: handles on several threads share `&P` and the last
// one drops `P` wherever it is, so `P` must be both `Send` and `Sync`.
unsafe impl<P: ?Sized + Send + Sync> Send for Counted<P> {}
// SAFETY: as above.
unsafe impl<P: ?Sized + Send + Sync> Sync for Counted<P> {}
// Like `Arc<P>`: moving the handle never moves the value.
impl<P: ?Sized> Unpin for Counted<P> {}

/// Moves `value` into recycled memory with a count of `refs` handles;
/// exactly `refs` handles must then be made with [`Counted::from_raw`].
///
/// # Safety
/// `V` is `#[repr(C)]` and its first field is an `AtomicUsize` that nothing
/// but [`Counted`] touches.
pub(crate) unsafe fn place<V>(value: V, refs: usize) -> NonNull<V> {
    let ptr = alloc(Layout::new::<V>()).cast::<V>();
    // SAFETY: the block is fresh (or recycled and unused), sized and aligned
    // for `V`.
    unsafe { ptr.as_ptr().write(value) };
    // SAFETY: the caller promises the count is the first field.
    unsafe { ptr.cast::<AtomicUsize>().as_ref() }.store(refs, Ordering::Relaxed);
    ptr
}

impl<P: ?Sized> Counted<P> {
    /// Takes over one of the references counted by [`place`].
    ///
    /// # Safety
    /// `ptr` came from `place` (possibly coerced to an unsized `P`), and the
    /// number of handles made for it does not exceed the count given there.
    pub(crate) unsafe fn from_raw(ptr: NonNull<P>) -> Self {
        Counted {
            ptr,
            _owns: PhantomData,
        }
    }

    /// The count, the first field of the value (see [`place`]).
    fn refs(&self) -> &AtomicUsize {
        // SAFETY: the value lives while any handle does, and starts with its
        // count.
        unsafe { self.ptr.cast::<AtomicUsize>().as_ref() }
    }
}

impl<P: ?Sized> Deref for Counted<P> {
    type Target = P;
    fn deref(&self) -> &P {
        // SAFETY: the value lives while any handle does.
        unsafe { self.ptr.as_ref() }
    }
}

impl<P: ?Sized> Clone for Counted<P> {
    fn clone(&self) -> Self {
        // As in `Arc`: a new handle is made from an existing one, so no
        // ordering is needed here.
        self.refs().fetch_add(1, Ordering::Relaxed);
        Counted {
            ptr: self.ptr,
            _owns: PhantomData,
        }
    }
}

impl<P: ?Sized> Drop for Counted<P> {
    fn drop(&mut self) {
        if self.refs().fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        // As in `Arc`: every other handle's use happens before this drop.
        fence(Ordering::Acquire);
        // SAFETY: this was the last handle, so nobody else sees the value;
        // its layout is read before it is dropped; the block came from
        // `alloc` with that layout (`place`).
        unsafe {
            let layout = Layout::for_value(self.ptr.as_ref());
            std::ptr::drop_in_place(self.ptr.as_ptr());
            free(self.ptr.cast(), layout);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[repr(C)]
    struct Probe {
        refs: AtomicUsize,
        dropped: std::sync::Arc<AtomicUsize>,
        payload: [u64; 4],
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            self.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn probe(dropped: &std::sync::Arc<AtomicUsize>, refs: usize) -> NonNull<Probe> {
        let probe = Probe {
            refs: AtomicUsize::new(0),
            dropped: dropped.clone(),
            payload: [7; 4],
        };
        // SAFETY: `Probe` is `repr(C)` and starts with its count.
        unsafe { place(probe, refs) }
    }

    #[test]
    fn the_value_is_dropped_once_with_its_last_handle() {
        let dropped = std::sync::Arc::new(AtomicUsize::new(0));
        let ptr = probe(&dropped, 2);
        // SAFETY: two handles for a count of two.
        let (a, b) = unsafe { (Counted::from_raw(ptr), Counted::from_raw(ptr)) };
        let c = a.clone();
        assert_eq!(c.payload, [7; 4]);
        drop(a);
        drop(b);
        assert_eq!(dropped.load(Ordering::SeqCst), 0);
        drop(c);
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_freed_block_is_reused_by_the_next_value_of_its_class() {
        let dropped = std::sync::Arc::new(AtomicUsize::new(0));
        let first = probe(&dropped, 1);
        // SAFETY: one handle for a count of one.
        drop(unsafe { Counted::from_raw(first) });
        let second = probe(&dropped, 1);
        assert_eq!(first.as_ptr(), second.as_ptr());
        // SAFETY: as above.
        drop(unsafe { Counted::from_raw(second) });
        assert_eq!(dropped.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn size_classes_cover_small_aligned_layouts_only() {
        assert_eq!(class(Layout::new::<[u8; 1]>()), Some(0));
        assert_eq!(class(Layout::new::<[u8; 64]>()), Some(0));
        assert_eq!(class(Layout::new::<[u8; 65]>()), Some(1));
        assert_eq!(class(Layout::new::<[u8; 512]>()), Some(7));
        assert_eq!(class(Layout::new::<[u8; 513]>()), None);
        assert_eq!(class(Layout::from_size_align(64, 64).unwrap()), None);
        for c in 0..CLASSES {
            assert!(class_layout(c).size() >= (c + 1) * CLASS);
        }
    }
}
