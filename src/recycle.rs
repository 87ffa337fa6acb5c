//! Task states: counted handles whose memory is reused.
//!
//! Every task has one heap block, its [`Shared`](crate::future::Shared)
//! state, held by its `Future` and by whoever runs it. A burst of tasks
//! (submit a hundred thousand, then collect them) makes the system allocator
//! grow the heap, fault in fresh pages, and give them back when the burst is
//! collected, every time: with glibc that was most of the cost of a trivial
//! thread task. So a freed task state is kept for the next submit instead:
//!
//! * first in a free list of the thread that frees it, which the next
//!   submit on that thread takes from: no lock, no atomic. Each thread keeps
//!   at most [`CACHE_BYTES`] this way;
//! * past that, in a [`Depot`] shared by all threads, in batches of
//!   [`BATCH`] blocks: a thread whose own list is empty takes a whole batch
//!   (one lock per [`BATCH`] submits), and one whose list is full hands one
//!   over. The depot keeps at most [`DEPOT_BYTES`]. It is what lets a task
//!   freed on one thread (a worker dropped the last handle) serve a submit
//!   on another, and what a thread's list goes to when the thread ends, so
//!   that short-lived submitting threads start with blocks to reuse.
//!
//! Past both bounds a block goes back to the allocator. So the memory kept
//! for reuse is at most [`CACHE_BYTES`] per thread plus [`DEPOT_BYTES`]
//! (the README and the `Executor` docs say so).
//!
//! Blocks come in size classes whose sizes glibc's malloc serves without
//! waste (its chunks are multiples of 16 bytes, 8 of which are its own
//! header), so a 40-byte state costs 48 bytes of heap, not 64 or 80.
//!
//! [`Counted`] is the `Arc` of this module: std's `Arc` cannot take its
//! memory from anywhere but the global allocator on stable Rust.

use std::alloc::Layout;
use std::cell::RefCell;
use std::marker::PhantomData;
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::{Mutex, PoisonError};

use crate::sync::{fence, AtomicU32, Ordering};

/// The size of the smallest class; each next class is [`STEP`] bytes more.
const SMALLEST: usize = 24;
const STEP: usize = 16;
/// Classes up to 520 bytes; bigger states use the allocator directly.
const CLASSES: usize = 32;
/// Recycled blocks are aligned to this; a state that needs more is not
/// recycled.
const ALIGN: usize = 16;
/// The most memory one thread keeps for reuse.
pub(crate) const CACHE_BYTES: usize = 16 << 20;
/// The most memory the [`Depot`] keeps for reuse, for all threads.
pub(crate) const DEPOT_BYTES: usize = 64 << 20;
/// Blocks move between a thread and the depot this many at a time.
const BATCH: usize = 256;

/// The size class of `layout`, if its blocks are recycled.
///
/// Under loom (see [`crate::sync`]) nothing is recycled: loom's threads
/// share one OS thread, hence one cache, and the models check the task
/// state, not this cache; every block then comes from the allocator.
fn class(layout: Layout) -> Option<usize> {
    if cfg!(loom) {
        return None;
    }
    let class = layout.size().saturating_sub(SMALLEST).div_ceil(STEP);
    (class < CLASSES && layout.align() <= ALIGN).then_some(class)
}

/// The layout every block of `class` is allocated with, so that any block
/// of a class fits any state of that class.
fn class_layout(class: usize) -> Layout {
    // SAFETY: ALIGN is a power of two and the size, at most
    // SMALLEST + CLASSES * STEP, is far from overflowing when rounded up
    // to it.
    unsafe { Layout::from_size_align_unchecked(SMALLEST + class * STEP, ALIGN) }
}

/// Free blocks of one class, linked through their first word.
struct List {
    head: Option<NonNull<u8>>,
    len: usize,
}

// SAFETY: a list owns its blocks (free memory nobody else points to), and
// moving it to another thread moves that ownership; the blocks hold no
// values.
unsafe impl Send for List {}

impl List {
    const EMPTY: List = List { head: None, len: 0 };

    fn push(&mut self, block: NonNull<u8>) {
        // SAFETY: a free block is at least SMALLEST bytes, aligned to
        // ALIGN, and owned by this list from now on: its first word is
        // the link.
        unsafe { block.cast::<Option<NonNull<u8>>>().write(self.head) };
        self.head = Some(block);
        self.len += 1;
    }

    fn pop(&mut self) -> Option<NonNull<u8>> {
        let block = self.head?;
        // SAFETY: pushed by `push`, which wrote the link there.
        self.head = unsafe { block.cast::<Option<NonNull<u8>>>().read() };
        self.len -= 1;
        Some(block)
    }

    /// Gives every block back to the allocator.
    fn free_all(&mut self, class: usize) {
        while let Some(block) = self.pop() {
            // SAFETY: every recycled block of `class` was allocated with
            // this layout.
            unsafe { std::alloc::dealloc(block.as_ptr(), class_layout(class)) };
        }
    }
}

/// One thread's free blocks of one class: the list it takes from and gives
/// to, and full batches behind it.
struct Shelf {
    current: List,
    full: Vec<List>,
}

/// One thread's free blocks, by class.
struct Cache {
    shelves: [Shelf; CLASSES],
    bytes: usize,
}

/// Free blocks shared by all threads, in batches, by class.
struct Depot {
    batches: [Vec<List>; CLASSES],
    bytes: usize,
}

static DEPOT: Mutex<Depot> = Mutex::new(Depot {
    batches: [const { Vec::new() }; CLASSES],
    bytes: 0,
});

fn depot() -> std::sync::MutexGuard<'static, Depot> {
    // The depot holds no invariant a panic could break half-way (nothing
    // in it panics but an allocation failure, which aborts).
    DEPOT.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Depot {
    /// Takes `list` if there is room, else gives it back.
    fn offer(&mut self, class: usize, list: List) -> Result<(), List> {
        let size = list.len * class_layout(class).size();
        if self.bytes + size > DEPOT_BYTES {
            return Err(list);
        }
        self.bytes += size;
        self.batches[class].push(list);
        Ok(())
    }

    fn take(&mut self, class: usize) -> Option<List> {
        let list = self.batches[class].pop()?;
        self.bytes -= list.len * class_layout(class).size();
        Some(list)
    }
}

impl Drop for Cache {
    /// A thread's blocks go to the depot, as far as it has room, so that
    /// the next thread finds them; the rest back to the allocator.
    fn drop(&mut self) {
        let mut depot = depot();
        for (class, shelf) in self.shelves.iter_mut().enumerate() {
            let lists = shelf.full.drain(..);
            let current = std::mem::replace(&mut shelf.current, List::EMPTY);
            for list in lists.chain(std::iter::once(current)) {
                if list.len == 0 {
                    continue;
                }
                if let Err(mut list) = depot.offer(class, list) {
                    list.free_all(class);
                }
            }
        }
    }
}

thread_local! {
    static CACHE: RefCell<Cache> = const {
        RefCell::new(Cache {
            shelves: [const { Shelf { current: List::EMPTY, full: Vec::new() } }; CLASSES],
            bytes: 0,
        })
    };
}

impl Cache {
    fn pop(&mut self, class: usize) -> Option<NonNull<u8>> {
        let shelf = &mut self.shelves[class];
        if shelf.current.len == 0 {
            shelf.current = match shelf.full.pop() {
                Some(list) => list,
                None => {
                    let list = depot().take(class)?;
                    self.bytes += list.len * class_layout(class).size();
                    list
                }
            };
        }
        let block = shelf.current.pop()?;
        self.bytes -= class_layout(class).size();
        Some(block)
    }

    /// Keeps `block`; false if this thread and the depot are both full.
    fn push(&mut self, class: usize, block: NonNull<u8>) -> bool {
        let size = class_layout(class).size();
        let shelf = &mut self.shelves[class];
        if self.bytes + size > CACHE_BYTES {
            // Hand a full batch to the depot to make room.
            let Some(list) = shelf.full.pop() else {
                return false;
            };
            let moved = list.len * size;
            match depot().offer(class, list) {
                Ok(()) => self.bytes -= moved,
                Err(list) => {
                    shelf.full.push(list);
                    return false;
                }
            }
        }
        if shelf.current.len == BATCH {
            let full = std::mem::replace(&mut shelf.current, List::EMPTY);
            shelf.full.push(full);
        }
        shelf.current.push(block);
        self.bytes += size;
        true
    }
}

/// Memory for a `layout`-shaped value: a recycled block when there is one.
fn alloc(layout: Layout) -> NonNull<u8> {
    let layout = match class(layout) {
        Some(class) => {
            let reused = CACHE.try_with(|c| c.borrow_mut().pop(class)).ok().flatten();
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
            let kept = CACHE
                .try_with(|c| c.borrow_mut().push(class, block))
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
/// placed here is `#[repr(C)]` and starts with an [`AtomicU32`] (see
/// [`place`]), so a handle finds the count without knowing the type. Under
/// loom the count is loom's atomic, so that the models see the last
/// handle's drop synchronise with the other handles' uses.
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

/// More handles than this to one value abort the process, as `Arc` does
/// past `isize::MAX`: a count that wrapped would free the value under live
/// handles. Each handle is a pointer in memory, so no program gets near.
const MAX_REFS: u32 = i32::MAX as u32;

/// Moves `value` into recycled memory with a count of `refs` handles;
/// exactly `refs` handles must then be made with [`Counted::from_raw`].
///
/// # Safety
/// `V` is `#[repr(C)]` and its first field is an [`AtomicU32`] that
/// nothing but [`Counted`] touches.
pub(crate) unsafe fn place<V>(value: V, refs: u32) -> NonNull<V> {
    let ptr = alloc(Layout::new::<V>()).cast::<V>();
    // SAFETY: the block is fresh (or recycled and unused), sized and aligned
    // for `V`.
    unsafe { ptr.as_ptr().write(value) };
    // SAFETY: the caller promises the count is the first field.
    unsafe { ptr.cast::<AtomicU32>().as_ref() }.store(refs, Ordering::Relaxed);
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

    /// Gives up the handle without dropping it: the count still includes
    /// it, and [`from_raw`](Self::from_raw) (possibly with the pointer
    /// coerced to an unsized type) takes it back.
    #[cfg_attr(not(feature = "process"), allow(dead_code))]
    pub(crate) fn into_raw(this: Self) -> NonNull<P> {
        let this = std::mem::ManuallyDrop::new(this);
        this.ptr
    }

    /// The count, the first field of the value (see [`place`]).
    fn refs(&self) -> &AtomicU32 {
        // SAFETY: the value lives while any handle does, and starts with its
        // count.
        unsafe { self.ptr.cast::<AtomicU32>().as_ref() }
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
        if self.refs().fetch_add(1, Ordering::Relaxed) > MAX_REFS {
            std::process::abort();
        }
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
    use std::sync::atomic::AtomicUsize;

    #[repr(C)]
    struct Probe {
        refs: AtomicU32,
        dropped: std::sync::Arc<AtomicUsize>,
        /// Big enough that no task state of the other tests, which run
        /// meanwhile and share the depot, is of its size class.
        payload: [u64; 60],
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            self.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn probe(dropped: &std::sync::Arc<AtomicUsize>, refs: u32) -> NonNull<Probe> {
        let probe = Probe {
            refs: AtomicU32::new(0),
            dropped: dropped.clone(),
            payload: [7; 60],
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
        assert_eq!(c.payload, [7; 60]);
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
    fn size_classes_cover_small_aligned_layouts_without_malloc_waste() {
        assert_eq!(class(Layout::new::<[u8; 1]>()), Some(0));
        assert_eq!(class(Layout::new::<[u8; 24]>()), Some(0));
        assert_eq!(class(Layout::new::<[u8; 25]>()), Some(1));
        assert_eq!(class(Layout::new::<[u64; 5]>()), Some(1));
        assert_eq!(class(Layout::new::<[u8; 520]>()), Some(31));
        assert_eq!(class(Layout::new::<[u8; 521]>()), None);
        assert_eq!(class(Layout::from_size_align(64, 64).unwrap()), None);
        for c in 0..CLASSES {
            let size = class_layout(c).size();
            assert!(c == 0 || size > class_layout(c - 1).size());
            // A glibc chunk is the request plus its 8-byte header, rounded
            // up to 16: these sizes fill theirs exactly.
            assert_eq!((size + 8) % 16, 0);
        }
    }

    /// A thread's blocks outlive it in the depot: a thread started after
    /// it reuses them.
    #[test]
    fn a_finished_threads_blocks_serve_the_next_thread() {
        let made = std::thread::spawn(|| {
            let dropped = std::sync::Arc::new(AtomicUsize::new(0));
            let blocks: Vec<_> = (0..BATCH)
                // SAFETY: one handle for a count of one.
                .map(|_| unsafe { Counted::from_raw(probe(&dropped, 1)) })
                .collect();
            let addresses: Vec<usize> = blocks.iter().map(|b| b.ptr.as_ptr() as usize).collect();
            drop(blocks);
            addresses
        })
        .join()
        .unwrap();
        let reused = std::thread::spawn(move || {
            let dropped = std::sync::Arc::new(AtomicUsize::new(0));
            // SAFETY: one handle for a count of one.
            let block = unsafe { Counted::from_raw(probe(&dropped, 1)) };
            made.contains(&(block.ptr.as_ptr() as usize))
        })
        .join()
        .unwrap();
        assert!(reused, "the second thread allocated afresh");
    }
}
