//! Typed tasks (`#[twinpool::task]`, `Registry::task`, `submit_task`,
//! `map_task`) on the thread back end. The compile-time checks that are
//! their point (wrong types do not compile) are trybuild tests of the
//! macro crate, `macros/tests/compile_fail.rs`; the process back end runs
//! typed tasks in `tests/process.rs`.

use twinpool::{Executor, MapOptions, Registry, Task};

/// Squares.
#[twinpool::task]
fn square(x: u64) -> u64 {
    x * x
}

#[twinpool::task]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

#[twinpool::task(name = "greeting")]
fn greet(name: String) -> String {
    format!("hello, {name}")
}

#[twinpool::task]
fn answer() -> u32 {
    42
}

fn pool() -> Executor {
    let tasks = Registry::new()
        .task(square)
        .task(add)
        .task(greet)
        .task(answer);
    Executor::builder()
        .threads(2)
        .registry(tasks)
        .build()
        .expect("a pool")
}

#[test]
fn submit_and_map_typed_tasks() {
    let ex = pool();
    assert_eq!(ex.submit_task(square, 12).unwrap().result(), Ok(144));
    assert_eq!(ex.submit_task(answer, ()).unwrap().result(), Ok(42));
    assert_eq!(
        ex.submit_task(greet, "Ada".to_string()).unwrap().result(),
        Ok("hello, Ada".to_string())
    );
    let sums: Vec<i64> = ex
        .map_task(add, vec![(1, 2), (10, 20)])
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(sums, [3, 30]);
    let squares: Vec<u64> = ex
        .map_task_with(square, 1..=6, MapOptions::new().chunksize(4))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(squares, [1, 4, 9, 16, 25, 36]);
}

#[test]
fn names_are_paths_unless_given() {
    assert_eq!(<square as Task>::NAME, "typed_tasks::square");
    assert_eq!(<greet as Task>::NAME, "greeting");
    // The string API reaches the same task.
    let ex = pool();
    assert_eq!(
        ex.submit_named::<u64, u64>("typed_tasks::square", 3)
            .unwrap()
            .result(),
        Ok(9)
    );
}

#[test]
fn the_function_stays_callable() {
    assert_eq!(square::call(5), 25);
    assert_eq!(add::call(2, 3), 5);
    assert_eq!(<add as Task>::run((4, 5)), 9);
}

#[test]
#[should_panic(expected = "registered twice")]
fn a_name_registered_twice_panics() {
    let _ = Registry::new()
        .task(square)
        .register("typed_tasks::square", |x: u64| x);
}
