//! Placeholder until the process back end lands.
fn main() {}
