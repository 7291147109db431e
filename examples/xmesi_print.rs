//! Seed 1.3.1: every call prints through the xme logger; each line carries the
//! time and the pid of the worker that ran it:
//! `2023-10-20 03:34:27(pid@114796):This is function fun`.

use xme::{Array, Context, Xme};

fn fun(ctx: &mut Context, _call: u32) {
    // A little work per call, as in a real task, so that every worker takes some.
    std::thread::sleep(std::time::Duration::from_millis(10));
    // `ctx.print` is the seed's `print`; a failed write is reported, not hidden.
    if let Err(e) = ctx.print("This is function fun") {
        eprintln!("log write failed: {e}");
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let xme = Xme::new().do_with_log(true);
    xme.fun_ctx(fun, Array::new(0..10u32))?.into_result()?;
    Ok(())
}
