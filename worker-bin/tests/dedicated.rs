//! A process pool whose workers are the dedicated `twinpool-worker` program,
//! with the registry shared through `src/tasks.rs`. This test binary is not a
//! worker itself, so it uses libtest's ordinary harness.

use std::time::Duration;

use twinpool::{Error, Executor};

include!("../src/tasks.rs");

const LONG: Duration = Duration::from_secs(60);

fn pool(n: usize) -> Executor {
    Executor::builder()
        .processes(n)
        .registry(tasks())
        .worker_program(env!("CARGO_BIN_EXE_twinpool-worker"))
        .build()
        .expect("the dedicated worker program starts")
}

#[test]
fn dedicated_worker_runs_named_tasks() {
    let ex = pool(2);
    let f = ex
        .submit_named::<String, u64>("word_count", "one two three".into())
        .unwrap();
    assert_eq!(f.result_timeout(LONG).unwrap(), 3);
    let sums: Vec<i64> = ex
        .map_named::<(i64, i64), i64, _>("add", (0..50).map(|i| (i, -2 * i)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(sums, (0..50).map(|i| -i).collect::<Vec<_>>());
    let pid = ex
        .submit_named::<(), u32>("pid", ())
        .unwrap()
        .result_timeout(LONG)
        .unwrap();
    assert_ne!(pid, std::process::id());
}

#[test]
fn dedicated_worker_reports_panics() {
    let ex = pool(1);
    let r = ex
        .submit_named::<String, u64>("fail", "bad input".into())
        .unwrap()
        .result_timeout(LONG);
    assert_eq!(
        r,
        Err(Error::Panicked {
            message: "bad input".into()
        })
    );
    assert_eq!(
        ex.submit_named::<u64, u64>("square", 4)
            .unwrap()
            .result_timeout(LONG)
            .unwrap(),
        16
    );
}

#[test]
fn a_task_the_worker_lacks_is_a_spawn_error() {
    let r = Executor::builder()
        .processes(1)
        .registry(tasks().register("cube", |x: u64| x * x * x))
        .worker_program(env!("CARGO_BIN_EXE_twinpool-worker"))
        .build();
    match r {
        Err(Error::Spawn { reason }) => assert!(reason.contains("cube"), "{reason}"),
        other => panic!("expected a Spawn error naming the missing task, got {other:?}"),
    }
}

#[test]
fn run_by_hand_it_explains_itself() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_twinpool-worker"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("worker program for twinpool"), "{text}");
}
