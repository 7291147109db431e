//! A short walk through xme: run this first.
//!
//! `cargo run --release --example tour`

use std::rc::Rc;
use std::time::{Duration, Instant};

use xme::exec::Job;
use xme::monitor::rpc::{Client, Server};
use xme::monitor::{Monitor, Sealed, XmeWire};
use xme::shm::{Guard, Manager, SharedObject, XmemBuilder};
use xme::{Array, Context, Operator, Same, Xme};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let xme = Xme::new(); // pnum = number of CPUs
    println!(
        "xme tour: {} worker processes at most\n",
        xme.effective_pnum()
    );

    // 1. One function over an Array: each element is one call in a worker process.
    println!("1. fun: the sum of 1..=100 as ten calls");
    let sums = xme.fun(
        |v: u64| (v + 1..=v + 10).sum::<u64>(),
        Array::new((0..10).map(|v| v * 10)),
    )?;
    println!("   xme {}\n", sums.into_result()?.iter().sum::<u64>());

    // 2. Several functions with their own types, in one run.
    println!("2. funs: two functions, different argument and result types");
    let (lengths, greeting) = xme.funs((
        Job::new(|w: &str| w.len(), Array::from(["alpha", "be", "gamma"])),
        Job::new(
            |(name, n): (String, usize)| format!("hello {name} x{n}"),
            (Same("xme".to_string()), Same(2)),
        ),
    ))?;
    println!(
        "   lengths {:?}, greeting {:?}\n",
        lengths.into_result()?,
        greeting.into_result()?
    );

    // 3. Closures capture anything: forked workers need no serialization of inputs.
    println!("3. captures: an Rc and a large table, never serialized");
    let table = Rc::new((0..1_000_000u32).collect::<Vec<_>>());
    let picks = xme.fun(|i: usize| table[i * 250_000], Array::new(0..4usize))?;
    println!("   picked {:?}\n", picks.into_result()?);

    // 4. The pid-stamped logger, from every worker.
    println!("4. print: one line per call, each with its worker's pid");
    xme.fun_ctx(
        |ctx: &mut Context, i: u32| ctx.print(format!("call {i} says hello")).is_ok(),
        Array::new(0..4u32),
    )?;
    println!();

    // 5. Failures are typed and isolated.
    println!("5. failures: a panic and a timeout; the other results are kept");
    let out = Xme::new().timeout(Duration::from_millis(200)).fun(
        |i: u32| match i {
            1 => panic!("bad input {i}"),
            2 => {
                std::thread::sleep(Duration::from_secs(30));
                0
            }
            _ => i,
        },
        Array::new(0..4u32),
    )?;
    for (i, r) in out.iter().enumerate() {
        match r {
            Ok(v) => println!("   call {i}: {v}"),
            Err(e) => println!("   call {i}: {e}"),
        }
    }
    println!();

    // 6. Real work split across cores.
    println!("6. speed: the sum of 1..=4*10^7 in 4 calls vs one process");
    let work = |k: u64| {
        let mut s = 0u64;
        for i in k * 10_000_000 + 1..=(k + 1) * 10_000_000 {
            s += std::hint::black_box(i);
        }
        s
    };
    let t = Instant::now();
    let split: u64 = xme
        .fun(work, Array::new(0..4u64))?
        .into_result()?
        .iter()
        .sum();
    let t_split = t.elapsed();
    let t = Instant::now();
    let serial: u64 = (0..4).map(work).sum();
    let t_serial = t.elapsed();
    println!("   xme {split} in {t_split:.2?}, one process {serial} in {t_serial:.2?}\n");

    // 7. Shared state: a lock-free table, and a Guard that runs calls in order.
    println!("7. shared memory: 8 workers append 100 calls each; a Guard runs them");
    let xmem = XmemBuilder::new().build()?;
    let counter = SharedObject::create(&xmem, "counter", &Counter::default())?;
    let guard = Guard::new();
    let t = Instant::now();
    let (report, _) = Xme::new().pnum(3).print_in_screen(false).gfuns(
        &xmem,
        (
            Job::with_context(|ctx: &mut Context<Manager>, ()| guard.serve(ctx), ()),
            Job::with_context(
                |ctx: &mut Context<Manager>, _w: u32| {
                    let (m, op) = (ctx.data(), ctx.data().alloc_operator());
                    for _ in 0..100 {
                        m.append(&counter.call(Counter::add, &1).unwrap(), op)
                            .unwrap();
                    }
                },
                Array::new(0..8u32),
            ),
        ),
    )?;
    let report = report.into_result()?.remove(0);
    println!(
        "   counter = {} after {} buffered calls ({:.2?}, forks included)\n",
        counter.get(&xmem)?.n,
        report.executed,
        t.elapsed()
    );

    // 8. Messages: a JSON map, sealed or in Python XME's wire format, and RPC.
    println!("8. messages: a sealed frame, the Python wire format, an RPC call");
    let key = [7u8; 32];
    let monitor = Monitor::builder().key(key).build()?;
    monitor.update(serde_json::json!({"temperature": 21.5}), Operator::ADMIN)?;
    let sealed = monitor.marshal()?;
    let wire = monitor.marshal_with(&XmeWire::default())?;
    let server = Server::new(Sealed::new(key))
        .register("double", |x: f64| 2.0 * x)
        .serve_tcp("127.0.0.1:0")?;
    let addr = server.local_addr().ok_or("no address")?;
    let client = Client::connect_tcp(addr, Sealed::new(key))?;
    let doubled: f64 = client.call("double", &21.0, Duration::from_secs(5))?;
    drop(client);
    server.shutdown();
    println!(
        "   sealed: {} bytes, Python wire: {} bytes, rpc double(21) = {doubled}",
        sealed.len(),
        wire.len()
    );
    Ok(())
}

/// A shared object for section 7.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Counter {
    n: i64,
}

impl Counter {
    fn add(&mut self, by: i64) {
        self.n += by;
    }
}
