// map_task takes items of the task's argument type.

#[twinpool::task]
fn add(a: i64, b: i64) -> i64 {
    a + b
}

fn main() {
    let ex = twinpool::Executor::builder()
        .threads(1)
        .registry(twinpool::Registry::new().task(add))
        .build()
        .unwrap();
    let _ = ex.map_task(add, vec![1_i64, 2, 3]);
}
