//! The standard interface over real forked processes: ordering, padding,
//! typed multi-function results, captures that cannot be serialized.

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::rc::Rc;
use std::time::Duration;

use xme_exec::{Array, Context, Job, Same, Xme};

#[test]
fn results_keep_call_order_when_pnum_is_below_calnum() {
    // Early calls sleep longest, so they finish last: order must still hold.
    let out = Xme::new()
        .pnum(2)
        .fun(
            |i: u64| {
                std::thread::sleep(Duration::from_millis(20u64.saturating_sub(i)));
                (i, i * i)
            },
            Array::new(0..25u64),
        )
        .unwrap()
        .into_result()
        .unwrap();
    assert_eq!(out, (0..25).map(|i| (i, i * i)).collect::<Vec<_>>());
}

#[test]
fn workers_are_reused_and_at_most_pnum_run() {
    let pids = Xme::new()
        .pnum(2)
        .fun(|_: u32| std::process::id(), Array::new(0..40u32))
        .unwrap()
        .into_result()
        .unwrap();
    let distinct: HashSet<u32> = pids.iter().copied().collect();
    assert!(
        distinct.len() <= 2,
        "40 calls used {} processes",
        distinct.len()
    );
    assert!(
        !distinct.contains(&std::process::id()),
        "calls ran in the parent"
    );
}

#[test]
fn a_slow_call_does_not_hold_back_a_stripe() {
    // Call 0 is slow; with static striping, calls 2, 4, 6... would wait for it.
    // With dynamic claiming the other worker takes every remaining call.
    let pids = Xme::new()
        .pnum(2)
        .fun(
            |i: u32| {
                if i == 0 {
                    std::thread::sleep(Duration::from_millis(400));
                } else {
                    std::thread::sleep(Duration::from_millis(5));
                }
                std::process::id()
            },
            Array::new(0..20u32),
        )
        .unwrap()
        .into_result()
        .unwrap();
    let slow = pids[0];
    let by_slow = pids.iter().filter(|&&p| p == slow).count();
    assert!(
        by_slow <= 2,
        "the slow worker also ran {by_slow} calls: {pids:?}"
    );
}

#[test]
fn shorter_arrays_are_padded_with_their_last_element() {
    let out = Xme::new()
        .pnum(2)
        .fun(
            |(a, b, c): (u32, &str, char)| format!("{a}{b}{c}"),
            (Array::new(0..5u32), Array::from(["x", "y"]), Same('!')),
        )
        .unwrap()
        .into_result()
        .unwrap();
    assert_eq!(out, ["0x!", "1y!", "2y!", "3y!", "4y!"]);
}

#[test]
fn no_array_means_one_call_and_an_empty_array_is_an_error() {
    let one = Xme::new().fun(|()| 7u8, ()).unwrap().into_result().unwrap();
    assert_eq!(one, [7]);
    let err = Xme::new().fun(|x: u8| x, Array::<u8>::new([])).unwrap_err();
    // The message names the function; its source says why.
    assert!(err.to_string().contains("has unusable arguments"), "{err}");
    let why = std::error::Error::source(&err)
        .expect("a source")
        .to_string();
    assert!(why.contains("is empty"), "{why}");
}

#[test]
fn several_functions_with_different_types_in_one_run() {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Stats {
        n: usize,
        mean: f64,
    }
    let (lens, stats, flags) = Xme::new()
        .pnum(2)
        .funs((
            Job::new(
                |s: String| s.len(),
                Array::from(vec!["a".to_string(), "bcd".to_string()]),
            ),
            Job::new(
                |v: Vec<f64>| Stats {
                    n: v.len(),
                    mean: v.iter().sum::<f64>() / v.len() as f64,
                },
                Same(vec![1.0, 2.0, 6.0]),
            )
            .named("stats"),
            Job::new(|x: i64| x < 0, Array::from(vec![-1i64, 0, 1])),
        ))
        .unwrap();
    assert_eq!(lens.into_result().unwrap(), [1, 3]);
    assert_eq!(stats.into_result().unwrap(), [Stats { n: 3, mean: 3.0 }]);
    assert_eq!(flags.into_result().unwrap(), [true, false, false]);
}

#[test]
fn a_vec_of_jobs_is_a_table_too() {
    let jobs: Vec<_> = (0..3u64)
        .map(|k| Job::new(move |x: u64| x * k, Array::new(1..=3u64)))
        .collect();
    let out: Vec<Vec<u64>> = Xme::new()
        .funs(jobs)
        .unwrap()
        .into_iter()
        .map(|o| o.into_result().unwrap())
        .collect();
    assert_eq!(out, [vec![0, 0, 0], vec![1, 2, 3], vec![2, 4, 6]]);
}

#[test]
fn closures_capture_an_open_file_and_an_rc() {
    // Neither a File nor an Rc could be pickled or sent: fork makes them usable.
    let mut file = tempfile();
    file.write_all(b"hello from the parent").unwrap();
    let shared = Rc::new(vec![10u32, 20, 30]);
    let out = Xme::new()
        .pnum(2)
        .fun(
            |i: usize| {
                // Workers share the file's offset (one open file description),
                // so read at a position instead of seeking.
                let mut text = [0u8; 5];
                file.read_exact_at(&mut text, 0).unwrap();
                format!("{}:{}", String::from_utf8_lossy(&text), shared[i])
            },
            Array::new(0..3usize),
        )
        .unwrap()
        .into_result()
        .unwrap();
    assert_eq!(out, ["hello:10", "hello:20", "hello:30"]);
}

#[test]
fn the_context_names_the_call_and_the_job() {
    let (a, b) = Xme::new()
        .pnum(2)
        .print_in_screen(false)
        .funs((
            Job::with_context(
                |ctx: &mut Context, x: u8| (ctx.job(), ctx.call(), x),
                Array::new(5..7u8),
            ),
            Job::with_context(|ctx: &mut Context, ()| (ctx.job(), ctx.call(), 0u8), ()),
        ))
        .unwrap();
    assert_eq!(a.into_result().unwrap(), [(0, 0, 5), (0, 1, 6)]);
    assert_eq!(b.into_result().unwrap(), [(1, 0, 0)]);
}

#[test]
fn pnum_is_clamped_to_the_cpu_count() {
    let cpus = xme_exec::cpus();
    assert_eq!(Xme::new().pnum(0).effective_pnum(), 1);
    assert_eq!(Xme::new().pnum(cpus + 5).effective_pnum(), cpus);
    assert_eq!(Xme::new().effective_pnum(), cpus);
}

#[test]
fn large_results_cross_intact() {
    let out = Xme::new()
        .pnum(2)
        .fun(
            |n: usize| vec![n as u8; n],
            Array::from(vec![1usize, 300_000, 2_000_000]),
        )
        .unwrap()
        .into_result()
        .unwrap();
    assert_eq!(out[1].len(), 300_000);
    assert!(out[2].iter().all(|&b| b == 2_000_000usize as u8));
}

fn tempfile() -> std::fs::File {
    let path = std::env::temp_dir().join(format!("xme-exec-test-{}", std::process::id()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    f
}
