// A typed task called with an argument of another type does not compile.

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
    let _ = ex.submit_task(square, "three");
}
