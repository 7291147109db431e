//! Seed 1.2.2, the multi-function model: two services with different argument
//! and result types run at once, each in its own processes.

use std::time::Duration;

use xme::exec::Job;
use xme::{Array, Same, Xme};

/// Service A: answers requests by id with a word count of a document.
fn service_a(doc_id: u32) -> (u32, usize) {
    std::thread::sleep(Duration::from_millis(50)); // stands for I/O
    let doc = "the quick brown fox jumps over the lazy dog ".repeat(doc_id as usize + 1);
    (doc_id, doc.split_whitespace().count())
}

/// Service B: checks a batch of readings against a limit.
fn service_b((readings, limit): (Vec<f64>, f64)) -> Vec<bool> {
    std::thread::sleep(Duration::from_millis(50));
    readings.iter().map(|r| *r > limit).collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let xme = Xme::new().pnum(2);
    let (a, b) = xme.funs((
        Job::new(service_a, Array::new(0..3u32)).named("ServicesA"),
        Job::new(
            service_b,
            (
                Array::from(vec![vec![0.5, 2.5], vec![3.0, 0.1, 9.9]]),
                Same(1.0),
            ),
        )
        .named("ServicesB"),
    ))?;
    for (id, words) in a.into_result()? {
        println!("ServicesA: document {id} has {words} words");
    }
    for (i, flags) in b.into_result()?.into_iter().enumerate() {
        println!("ServicesB: batch {i} over the limit: {flags:?}");
    }
    Ok(())
}
