// What #[task] refuses, with a message saying why.

#[twinpool::task]
async fn fetch(x: u64) -> u64 {
    x
}

#[twinpool::task]
fn identity<T>(x: T) -> T {
    x
}

#[twinpool::task(label = "x")]
fn labelled(x: u64) -> u64 {
    x
}

fn main() {}
