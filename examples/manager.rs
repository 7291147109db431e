//! Seed 2.2: an XMEManager built with initial values; ten calls of the
//! standard interface, in worker processes, update it and report their status;
//! the parent prints the table and the statuses.

use xme::Operator;
use xme::exec::Context;
use xme::shm::{GuardTable, Manager, StatusTable, XmemBuilder};
use xme::{Array, Xme};

fn task(ctx: &mut Context<Manager>, i: u64) -> Result<u64, String> {
    let xmem = ctx.data();
    let op = ctx.operator(); // one operator per worker process
    let err = |e: xme::shm::ShmError| e.to_string();
    xmem.status(op, &format!("call {i} running")).map_err(err)?;
    // Lock-free read-modify-write: no update is lost, whoever runs at once.
    let total = xmem
        .update_with("total", |t: Option<u64>| t.unwrap_or(0) + i)
        .map_err(err)?;
    // A batch under the Manager's lock, as ADMIN (the READWRITE lock's writer).
    xmem.update([(format!("square {i}"), i * i)], Operator::ADMIN)
        .map_err(err)?;
    xmem.status(op, &format!("call {i} done")).map_err(err)?;
    Ok(total)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let xmem = XmemBuilder::new()
        .op_size(32)
        .value("total", &0u64)?
        .value("key", &"the initial key-value pairs in __valuetable__")?
        .build()?;
    xmem.set("a list key", &vec!["value", "of", "this", "key"])?;

    let xme = Xme::new().print_in_screen(false);
    let outcomes = xme.gfun(&xmem, task, Array::new(0..10u64))?;
    for (i, r) in outcomes.iter().enumerate() {
        match r {
            Ok(Ok(total)) => println!("call {i}: total was {total} after its update"),
            Ok(Err(e)) => println!("call {i}: manager error: {e}"),
            Err(e) => println!("call {i}: {e}"),
        }
    }

    println!("\nvalue table:");
    let mut items = xmem.items()?;
    items.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, value) in items {
        let shown = match key.as_str() {
            "total" => value.decode::<u64>()?.to_string(),
            "key" => format!("{:?}", value.decode::<String>()?),
            "a list key" => format!("{:?}", value.decode::<Vec<String>>()?),
            "__GUARD__" => format!("{:?}", value.decode::<GuardTable>()?),
            "__XMEM__" => format!("{:?}", value.decode::<Vec<String>>()?),
            "__STATUS__" => format!("{} operators", value.decode::<StatusTable>()?.len()),
            k if k.starts_with("square ") => value.decode::<u64>()?.to_string(),
            _ => format!("{} bytes", value.bytes().len()),
        };
        println!("  {key:>12}: {shown}");
    }

    println!("\nstatuses (__STATUS__), one operator per worker process:");
    for (op, s) in xmem.statuses()? {
        println!(
            "  {}: {:?} (pid {})",
            xmem.operator_name(op),
            s.status,
            s.pid
        );
    }
    println!(
        "\ntotal = {} (expected {})",
        xmem.get::<u64>("total")?,
        (0..10).sum::<u64>()
    );
    Ok(())
}
