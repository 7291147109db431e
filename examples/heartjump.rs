//! Seed 2.5.1: each of ten children starts a HeartJump, appends `add(i)` for
//! `i` in `0..100`, and stops it. No child stops the Guard: it ends by itself
//! (here when every other task of the run has ended; a Guard started on its
//! own ends after `ExitTime` without calls or heartbeats). The parent prints
//! the final value, 49500.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use xme::shm::{Guard, HeartJump, Manager, SharedObject, XmemBuilder};
use xme::{Array, Context, Job, Xme};

#[derive(Debug, Default, Serialize, Deserialize)]
struct V {
    value: i64,
}

impl V {
    fn add(&mut self, value: i64) {
        self.value += value;
    }
}

fn fun(ctx: &mut Context<Manager>, _child: u32) -> Result<(), String> {
    let xmem = ctx.data();
    let err = |e: xme::shm::ShmError| e.to_string();
    let op = xmem.alloc_operator();
    let mut heart = HeartJump::new(op, xmem, Duration::from_secs(1));
    heart.start().map_err(err)?;
    let v = SharedObject::<V>::named("v");
    for i in 0..100 {
        ctx.print(format!("i {i}")).map_err(|e| e.to_string())?;
        xmem.append(&v.call(V::add, &i).map_err(err)?, op)
            .map_err(err)?;
    }
    heart.stop().map_err(err)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let xmem = XmemBuilder::new().build()?;
    let v = SharedObject::create(&xmem, "v", &V::default())?;
    let guard = Guard::new().exit_time(Duration::from_secs(2));
    let (report, children) = Xme::new().pnum(11).print_in_screen(false).gfuns(
        &xmem,
        (
            Job::with_context(|ctx: &mut Context<Manager>, ()| guard.serve(ctx), ()),
            Job::with_context(fun, Array::new(0..10u32)),
        ),
    )?;
    for child in children.into_result()? {
        child?;
    }
    let report = report.into_result()?.remove(0);
    let statuses = xmem.statuses()?;
    eprintln!(
        "Guard ran {} calls, stopped: {:?}; {} heartbeats recorded, all {:?}",
        report.executed,
        report.stopped,
        statuses.len(),
        statuses
            .values()
            .map(|s| s.status.as_str())
            .collect::<std::collections::BTreeSet<_>>()
    );
    println!("{}", v.get(&xmem)?.value);
    Ok(())
}
