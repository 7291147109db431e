//! The MPI suite as one program, for running under a launcher as well as
//! directly: the same checks pass on forked logical processes and on the
//! ranks of an MPI job (one `run` per launch, so one program runs them all).
//!
//! ```text
//! cargo run --example cluster_check                     # forked, pnum 3
//! mpirun -n 3 target/debug/examples/cluster_check       # ranks (--features cluster)
//! mpirun -n 2 target/debug/examples/cluster_check mismatch   # must fail on every rank
//! mpirun -n 2 target/debug/examples/cluster_check wrong-size # likewise
//! ```
//!
//! Prints `cluster_check: N passed, 0 failed` and exits 0 when every check
//! holds; exits 1 naming the first that does not.

use xme_mpi::{LpStatus, Mpi, MpiError, MpiHandle, To, Unit};

type Check = Result<(), String>;

fn ensure(ok: bool, what: impl FnOnce() -> String) -> Check {
    if ok { Ok(()) } else { Err(what()) }
}

fn err<T: std::fmt::Debug>(r: Result<T, MpiError>, what: &str) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

struct Units {
    add: Unit<(u64, u64), u64>,
    whoami: Unit<(), (u32, String)>,
    boom: Unit<u32, u32>,
    echo: Unit<Vec<u8>, Vec<u8>>,
}

fn add((a, b): (u64, u64)) -> u64 {
    a * 3 + b
}

fn suite(m: &MpiHandle<'_>, u: &Units, cluster: bool) -> Result<usize, String> {
    let procs = m.processes();
    let mut passed = 0;
    let mut check = |name: &str, c: Check| -> Check {
        c.map_err(|e| format!("{name}: {e}"))?;
        passed += 1;
        Ok(())
    };

    // Pipelined calls to every process and to any, against a serial run.
    let mut bad = 0;
    for window in 0..10u64 {
        // 200 in flight at a time: within the 255 result slots.
        let mut slots = Vec::new();
        for i in window * 200..(window + 1) * 200 {
            let to = if i % 3 == 0 {
                To::Any
            } else {
                To::Process(procs[i as usize % procs.len()])
            };
            slots.push((i, err(m.acquire(&u.add, &(i, 7), to), "acquire")?));
        }
        for (i, s) in slots {
            bad += usize::from(err(m.get(s), "get")? != add((i, 7)));
        }
    }
    check(
        "acquire/get",
        ensure(bad == 0, || format!("{bad} wrong results")),
    )?;

    let mut bad = 0;
    for i in 0..1000u64 {
        bad += usize::from(err(m.block_acquire(&u.add, &(i, 1), To::Any), "block")? != add((i, 1)));
    }
    check("block_acquire", ensure(bad == 0, || format!("{bad} wrong")))?;

    let who: Vec<(u32, String)> = err(m.broadcast(&u.whoami, &()), "broadcast")?
        .into_iter()
        .map(|s| err(m.get(s), "get"))
        .collect::<Result<_, _>>()?;
    let pids: Vec<i32> = procs.iter().map(|&p| m.pid(p).unwrap_or(-1)).collect();
    check(
        "broadcast",
        ensure(
            who.len() == procs.len()
                && who
                    .iter()
                    .zip(&pids)
                    .all(|((pid, _), want)| *pid as i32 == *want),
            || format!("{who:?} vs pids {pids:?}"),
        ),
    )?;

    let args: Vec<(u64, u64)> = (0..10_000).map(|i| (i, i % 11)).collect();
    let got = err(m.map(&u.add, &args), "map")?;
    check(
        "map",
        ensure(
            got == args.iter().map(|&a| add(a)).collect::<Vec<_>>(),
            || "wrong map results".into(),
        ),
    )?;

    let e = m.block_acquire(&u.boom, &13, To::Process(procs[0]));
    check(
        "a panicking unit",
        ensure(matches!(e, Err(MpiError::UnitPanicked { .. })), || {
            format!("{e:?}")
        }),
    )?;
    let after = m.block_acquire(&u.boom, &2, To::Process(procs[0]));
    check(
        "the process lives on",
        ensure(matches!(after, Ok(2)), || format!("{after:?}")),
    )?;

    let direct = m.acquire_fn(add, &(1, 2), To::Any);
    check(
        "acquire_fn",
        if cluster {
            ensure(matches!(direct, Err(MpiError::FnAcrossHosts)), || {
                format!("{direct:?}")
            })
        } else {
            match direct {
                Ok(s) => ensure(m.get(s).ok() == Some(5), || "wrong result".into()),
                Err(e) => Err(e.to_string()),
            }
        },
    )?;

    let big = vec![7u8; 100_000];
    let back = err(m.block_acquire(&u.echo, &big, To::Any), "echo")?;
    let s = err(m.acquire(&u.echo, &big, To::Any), "echo")?;
    let back2 = err(m.get(s), "echo")?;
    check(
        "100 KB both ways",
        ensure(back == big && back2 == big, || "corrupted".into()),
    )?;

    // Several threads at once, mixing every kind of call.
    let bad: usize = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4u64)
            .map(|t| {
                s.spawn(move || {
                    let mut bad = 0;
                    for i in 0..300u64 {
                        let x = t * 1000 + i;
                        let got = match i % 3 {
                            0 => m.block_acquire(&u.add, &(x, 0), To::Any),
                            1 => m.acquire(&u.add, &(x, 0), To::Any).and_then(|s| m.get(s)),
                            _ => m.map(&u.add, &[(x, 0)]).map(|v| v[0]),
                        };
                        bad += usize::from(got.ok() != Some(add((x, 0))));
                    }
                    bad
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or(usize::MAX))
            .sum()
    });
    check("four threads", ensure(bad == 0, || format!("{bad} wrong")))?;

    // `--hosts N`: the ranks (this one included) must span N hosts.
    if let Some(n) = std::env::args()
        .skip_while(|a| a != "--hosts")
        .nth(1)
        .and_then(|n| n.parse::<usize>().ok())
    {
        let mut hosts: Vec<&String> = who.iter().map(|(_, h)| h).collect();
        let me = host();
        hosts.push(&me);
        hosts.sort();
        hosts.dedup();
        check(
            "hosts",
            ensure(hosts.len() == n, || {
                format!("ranks on {hosts:?}, expected {n} hosts")
            }),
        )?;
    }

    let status = m.status();
    check(
        "status",
        ensure(status.iter().all(|(_, s)| *s == LpStatus::Idle), || {
            format!("{status:?}")
        }),
    )?;

    if procs.len() >= 2 {
        err(m.close(To::Process(procs[0])), "close")?;
        let closed = m.block_acquire(&u.add, &(1, 1), To::Process(procs[0]));
        let others = m.block_acquire(&u.add, &(1, 1), To::Any);
        check(
            "close one process",
            ensure(
                matches!(closed, Err(MpiError::Closed { .. })) && others.as_ref().ok() == Some(&4),
                || format!("{closed:?} / {others:?}"),
            ),
        )?;
    }
    Ok(passed)
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "suite".into());
    // `wrong-size` asks for one process more than the job has: refused.
    let pnum = xme_mpi::launcher_size().unwrap_or(3) + usize::from(mode == "wrong-size");
    let cluster = xme_mpi::launcher_size().is_some();
    let mut mpi = match Mpi::new(pnum) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("cluster_check: {e}");
            std::process::exit(2);
        }
    };
    // In mismatch mode every rank but 0 registers `add` with other types.
    let rank: usize = ["OMPI_COMM_WORLD_RANK", "PMI_RANK"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
        .unwrap_or(0);
    let units = if mode == "mismatch" && rank != 0 {
        let _ = mpi.register("add", |x: u32| x);
        Units {
            add: mpi.register("add_real", add),
            whoami: mpi.register("whoami", |(): ()| (std::process::id(), host())),
            boom: mpi.register("boom", boom),
            echo: mpi.register("echo", |v: Vec<u8>| v),
        }
    } else {
        Units {
            add: mpi.register("add", add),
            whoami: mpi.register("whoami", |(): ()| (std::process::id(), host())),
            boom: mpi.register("boom", boom),
            echo: mpi.register("echo", |v: Vec<u8>| v),
        }
    };
    match mpi.run(|m| suite(m, &units, cluster)) {
        Ok(Ok(n)) => println!("cluster_check: {n} passed, 0 failed"),
        Ok(Err(e)) => {
            eprintln!("cluster_check: FAILED {e}");
            println!("cluster_check: 0 passed, 1 failed");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("cluster_check (rank {rank}): {e}");
            std::process::exit(3);
        }
    }
}

fn boom(x: u32) -> u32 {
    assert!(x != 13, "13 is unlucky");
    x
}

/// The host name and network namespace: simulated hosts (namespaces on
/// one machine) share a host name but not a namespace.
fn host() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let netns = std::fs::read_link("/proc/self/ns/net").unwrap_or_default();
    format!("{}/{}", name.trim(), netns.display())
}
