//! What a failing call looks like: one call panics, one is killed by SIGKILL,
//! one runs past its time limit. Each gives a typed error naming the call; the
//! other results arrive all the same.

use std::time::Duration;

use xme::{Array, Xme};

fn task(i: u32) -> u32 {
    match i {
        1 => panic!("call one refuses its input"),
        3 => {
            // As if the OOM killer or an operator ended this worker.
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
            unreachable!()
        }
        5 => {
            std::thread::sleep(Duration::from_secs(60));
            0
        }
        _ => i * i,
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = Xme::new()
        .pnum(2)
        .timeout(Duration::from_millis(300))
        .fun(task, Array::new(0..8u32))?;
    for (i, r) in out.iter().enumerate() {
        match r {
            Ok(v) => println!("call {i}: {v}"),
            Err(e) => println!("call {i}: ERROR {e}"),
        }
    }
    println!(
        "{} results, {} failures",
        out.iter().filter(|r| r.is_ok()).count(),
        out.errors().count()
    );
    Ok(())
}
