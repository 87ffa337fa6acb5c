//! Typed tasks are checked by the compiler: the programs in `tests/ui/`
//! call a `#[twinpool::task]` with a wrong argument, expect a wrong result,
//! map it over wrong items, or put the attribute where it cannot go; each
//! must fail to compile, with the error in its `.stderr` file. (Here rather
//! than in twinpool's tests, so that building twinpool's examples does not
//! build trybuild.)

#[test]
fn wrong_types_do_not_compile() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
