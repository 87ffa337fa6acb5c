// A typed task's future has the task's result type, and no other.

#[twinpool::task]
fn square(x: u64) -> u64 {
    x * x
}

fn main() {
    let ex = twinpool::Executor::builder()
        .threads(1)
        .registry(twinpool::Registry::new().task(square))
        .build()
        .unwrap();
    let _: twinpool::Future<String> = ex.submit_task(square, 3).unwrap();
}
