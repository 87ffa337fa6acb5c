// The tasks of the dedicated worker program, in a file of their own so that a
// parent program can build the very same registry: `include!` it, or copy it.
// The handshake checks that the parent's names and types are all here.

/// Every task `twinpool-worker` serves.
pub fn tasks() -> twinpool::Registry {
    twinpool::Registry::new()
        .register("square", |x: u64| x * x)
        .register("add", |(a, b): (i64, i64)| a + b)
        .register("word_count", |text: String| text.split_whitespace().count() as u64)
        .register("len", |bytes: Vec<u8>| bytes.len() as u64)
        .register("pid", |_: ()| std::process::id())
        .register("fail", |message: String| -> u64 { panic!("{message}") })
}
