//! Seed 2.5: a shared object `V` with `add`; ten children each append 100
//! `add(1)` calls to the Manager's buffer; a Guard, run as the first function
//! of the same table, executes them; the parent prints the final value, 1000.
//!
//! The seed's children each append a `"Table::update"` of `__GUARD__` to stop
//! the Guard, which races (the first stop could end the Guard before another
//! child's calls ran: seed 2.5.1 explains). Here the Guard ends by itself when
//! every other task of the run has ended, after running every call.

use serde::{Deserialize, Serialize};
use xme::shm::{Guard, Manager, SharedObject, XmemBuilder};
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

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let xmem = XmemBuilder::new().build()?;
    let v = SharedObject::create(&xmem, "v", &V::default())?; // Object("Class_V", V)
    let fun = |ctx: &mut Context<Manager>, _i: u32| -> Result<(), String> {
        let xmem = ctx.data();
        let op = xmem.alloc_operator();
        for _ in 0..100 {
            let call = v.call(V::add, &1).map_err(|e| e.to_string())?;
            xmem.append(&call, op).map_err(|e| e.to_string())?;
        }
        Ok(())
    };
    let guard = Guard::new();
    let (guard_report, children) = Xme::new().pnum(11).print_in_screen(false).gfuns(
        &xmem,
        (
            Job::with_context(|ctx: &mut Context<Manager>, ()| guard.serve(ctx), ()),
            Job::with_context(fun, Array::new(0..10u32)),
        ),
    )?;
    for child in children.into_result()? {
        child?;
    }
    let report = guard_report.into_result()?.remove(0);
    eprintln!(
        "Guard ran {} calls ({} failed), stopped: {:?}",
        report.executed, report.failed, report.stopped
    );
    println!("{}", v.get(&xmem)?.value);
    Ok(())
}
