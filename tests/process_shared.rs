//! `Shared` bytes in process pools: handed to each worker once, read in
//! place by every task, let go when the pool drops them, handed again to a
//! worker that replaced a dead one.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use twinpool::{serve_if_worker, Error, Executor, MapOptions, Registry, Shared};

mod proc_common;
use proc_common as common;
use proc_common::{Census, LONG};

/// A task argument with a handle inside it.
#[derive(Serialize, Deserialize, Clone)]
struct Lookup {
    table: Shared,
    at: u32,
}

/// Where the worker sees the bytes: its pid, the address of the first
/// byte, and a checksum.
fn look(table: Shared) -> (u32, u64, u64) {
    let sum = table.iter().step_by(4096).map(|&b| u64::from(b)).sum();
    (std::process::id(), table.as_ptr() as u64, sum)
}

fn tasks() -> Registry {
    Registry::new()
        .register("look", look)
        .register("at", |l: Lookup| l.table[l.at as usize])
        .register("echo", |s: Shared| s)
        .register("make", |n: u64| Shared::new(&vec![1; n as usize]).unwrap())
        .register("memfd_maps", |_: ()| common::memfd_maps("self") as u64)
        .register("abort", |_: ()| -> u64 { std::process::abort() })
}

/// Bytes with a known checksum over every 4096th byte.
fn table(len: usize) -> (Shared, u64) {
    let s = Shared::from_fn(len, |b| {
        for (i, x) in b.iter_mut().enumerate() {
            *x = (i / 4096) as u8;
        }
    })
    .unwrap();
    let sum = s.iter().step_by(4096).map(|&b| u64::from(b)).sum();
    (s, sum)
}

fn pool(n: usize) -> Executor {
    Executor::processes(n, tasks()).unwrap()
}

/// Every task reads the same mapping in its worker: the segment was handed
/// over once per worker, not once per task.
fn each_worker_maps_a_shared_once() {
    let before = Census::now();
    let ex = pool(2);
    let (shared, sum) = table(8 << 20);
    let futures: Vec<_> = (0..40)
        .map(|_| {
            ex.submit_named::<Shared, (u32, u64, u64)>("look", shared.clone())
                .unwrap()
        })
        .collect();
    let mut addresses: HashMap<u32, Vec<u64>> = HashMap::new();
    for f in futures {
        let (pid, address, got) = f.result_timeout(LONG).unwrap();
        assert_eq!(got, sum, "a worker read other bytes");
        addresses.entry(pid).or_default().push(address);
    }
    for (pid, seen) in &addresses {
        assert!(
            seen.iter().all(|a| *a == seen[0]),
            "worker {pid} mapped the bytes more than once: {seen:x?}"
        );
    }
    drop(shared);
    ex.shutdown(true, false);
    drop(ex);
    let after = Census::back_to(&before, LONG);
    assert!(after.within(&before), "{before:?} -> {after:?}");
}

/// Once the pool drops its last handle, each worker unmaps the bytes when
/// it is next sent work.
fn a_dropped_shared_is_let_go_by_the_workers() {
    let ex = pool(1);
    let base: u64 = ex.submit_named("memfd_maps", ()).unwrap().result().unwrap();
    let (shared, sum) = table(4 << 20);
    let (_, _, got) = ex
        .submit_named::<Shared, (u32, u64, u64)>("look", shared.clone())
        .unwrap()
        .result()
        .unwrap();
    assert_eq!(got, sum);
    let held: u64 = ex.submit_named("memfd_maps", ()).unwrap().result().unwrap();
    assert_eq!(held, base + 1, "the worker does not hold the bytes");
    drop(shared);
    let after: u64 = ex.submit_named("memfd_maps", ()).unwrap().result().unwrap();
    assert_eq!(after, base, "the worker kept bytes the pool let go");
}

/// Handles inside structs, in a chunked map, and back in a result.
fn a_shared_crosses_inside_values_and_chunks() {
    let ex = pool(2);
    let shared = ex.share((0..=255u8).collect::<Vec<u8>>()).unwrap();
    let items: Vec<Lookup> = (0..1000u32)
        .map(|i| Lookup {
            table: shared.clone(),
            at: i % 256,
        })
        .collect();
    let got: Vec<u8> = ex
        .map_named_with::<Lookup, u8, _>(
            "at",
            items,
            MapOptions {
                chunksize: 100,
                ..MapOptions::default()
            },
        )
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(got, (0..1000u32).map(|i| i as u8).collect::<Vec<_>>());
    let back: Shared = ex
        .submit_named("echo", shared.clone())
        .unwrap()
        .result()
        .unwrap();
    assert_eq!(back, shared);
    assert_eq!(back.as_ptr(), shared.as_ptr(), "a copy came back");
}

/// A handle made inside a worker cannot come back: the error says why.
fn a_shared_made_in_a_worker_cannot_come_back() {
    let ex = pool(1);
    match ex.submit_named::<u64, Shared>("make", 10).unwrap().result() {
        Err(Error::Decode { detail, .. }) => {
            assert!(detail.contains("does not hold"), "{detail}")
        }
        other => panic!("expected a decode error, got {other:?}"),
    }
}

/// A worker that replaced a dead one is handed the bytes again.
fn a_new_worker_is_handed_the_bytes_again() {
    let ex = pool(1);
    let (shared, sum) = table(1 << 20);
    let first = ex
        .submit_named::<Shared, (u32, u64, u64)>("look", shared.clone())
        .unwrap()
        .result()
        .unwrap();
    assert!(matches!(
        ex.submit_named::<(), u64>("abort", ()).unwrap().result(),
        Err(Error::WorkerDied { .. })
    ));
    let second = ex
        .submit_named::<Shared, (u32, u64, u64)>("look", shared.clone())
        .unwrap()
        .result_timeout(LONG)
        .unwrap();
    assert_ne!(first.0, second.0, "the same worker after an abort");
    assert_eq!((first.2, second.2), (sum, sum));
}

/// In a thread pool a handle is an `Arc`: closures and named tasks read the
/// bytes in place.
fn threads_read_the_same_bytes() {
    let ex = Executor::builder()
        .threads(2)
        .registry(tasks())
        .build()
        .unwrap();
    let (shared, sum) = table(1 << 20);
    let s = shared.clone();
    let f = ex.submit(move || s.as_ptr() as u64).unwrap();
    assert_eq!(f.result().unwrap(), shared.as_ptr() as u64);
    let (_, address, got) = ex
        .submit_named::<Shared, (u32, u64, u64)>("look", shared.clone())
        .unwrap()
        .result()
        .unwrap();
    assert_eq!((address, got), (shared.as_ptr() as u64, sum));
}

fn main() {
    serve_if_worker(&tasks());
    common::run_guarded(&[
        (
            "each_worker_maps_a_shared_once",
            each_worker_maps_a_shared_once,
        ),
        (
            "a_dropped_shared_is_let_go_by_the_workers",
            a_dropped_shared_is_let_go_by_the_workers,
        ),
        (
            "a_shared_crosses_inside_values_and_chunks",
            a_shared_crosses_inside_values_and_chunks,
        ),
        (
            "a_shared_made_in_a_worker_cannot_come_back",
            a_shared_made_in_a_worker_cannot_come_back,
        ),
        (
            "a_new_worker_is_handed_the_bytes_again",
            a_new_worker_is_handed_the_bytes_again,
        ),
        ("threads_read_the_same_bytes", threads_read_the_same_bytes),
    ]);
}
