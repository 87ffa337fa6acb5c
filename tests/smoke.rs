use std::time::Duration;
use twinpool::*;

#[test]
fn smoke() {
    let ex = Executor::threads(2);
    let f = ex.submit(|| 1 + 1).unwrap();
    assert_eq!(f.result().unwrap(), 2);
    let v: Vec<i32> = ex
        .map(|x| x * 2, 0..10)
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(v, (0..10).map(|x| x * 2).collect::<Vec<_>>());
    let p = ex.submit(|| -> i32 { panic!("boom") }).unwrap();
    assert_eq!(
        p.result(),
        Err(Error::Panicked {
            message: "boom".into()
        })
    );
}

#[test]
fn nested_one_worker() {
    let ex = Executor::threads(1);
    let ex2 = ex.clone();
    let f = ex
        .submit(move || ex2.submit(|| 5).unwrap().result().unwrap() + 1)
        .unwrap();
    assert_eq!(f.result_timeout(Duration::from_secs(30)).unwrap(), 6);
}
