//! Seed 1.3.2: each task shapes its own log lines from the run's logger (the
//! seed's `logobj`): message type, indent, time, pid.

use xme::{Array, Context, Xme};

fn fun(ctx: &mut Context, call: u32) -> Result<(), String> {
    // Start from the run's logger and change its options for this task only.
    let logobj = ctx.logger().clone().indent_style("-", 4);
    let logobj = if call.is_multiple_of(2) {
        logobj
    } else {
        logobj.time(false)
    };
    let err = |e: xme::log::LogError| e.to_string();
    logobj
        .entry()
        .msgtype("Task")
        .print(format!("call {call} starts"))
        .map_err(err)?;
    logobj
        .entry()
        .indent(1)
        .print(format!("working on item {call}"))
        .map_err(err)?;
    logobj
        .entry()
        .default_type()
        .print(format!("call {call} done"))
        .map_err(err)?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("xme-logobj-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let logfile = dir.join("xme.log");
    let xme = Xme::new().pnum(2).logfile(&logfile)?;
    for r in xme.fun_ctx(fun, Array::new(0..4u32))?.into_result()? {
        r?;
    }
    println!("--- the same lines were appended to {}:", logfile.display());
    print!("{}", std::fs::read_to_string(&logfile)?);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
