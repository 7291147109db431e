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
//!
//! Failure modes, run under a launcher (`SECS`: the detection bound):
//!
//! ```text
//! srun --mpi=pmix -n 3 cluster_check dead-rank SECS   # the last rank SIGKILLs itself at its call 50
//! srun --mpi=pmix -n 4 cluster_check hung-rank SECS   # a unit that never returns; a stopped rank
//! srun --mpi=pmix -n 3 cluster_check dies-at-start SECS   # the last rank dies before MPI_Init
//! mpirun -n 3 cluster_check close-direct   # close a rank whose direct call never returns
//! mpirun -n 3 cluster_check big-reply      # a busy rank's large reply holds up no other rank (TCP)
//! ```
//!
//! Rank 0 checks what it sees (the lost rank's calls fail with the typed
//! error naming its rank and host; every other call succeeds once with its
//! own result), prints `cluster_check: <mode> ok: ...`, and returns from
//! `run`, which then ends the job (`MPI_Abort`): the launcher must exit
//! non-zero. (Under `mpirun` and MPICH's `mpiexec`, a rank that dies ends
//! the job at once, before rank 0 sees anything.)

use std::time::{Duration, Instant};

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
    /// Kills its own process (SIGKILL).
    die: Unit<u64, u64>,
    /// Never returns.
    spin: Unit<u64, u64>,
    /// Stops its own process (SIGSTOP): it answers nothing more.
    stop: Unit<u64, u64>,
    /// Sleeps this many milliseconds.
    nap: Unit<u64, u64>,
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

    // Streams over a lazy input: in order; as calls finish (each index
    // once); a narrow window never exceeded; a failing call fails alone.
    let ordered: Vec<u64> = m
        .stream(&u.add, (0..20_000u64).map(|i| (i, 3)))
        .ordered()
        .collect::<Result<_, _>>()
        .map_err(|e| format!("stream: {e}"))?;
    let mut seen = vec![false; 20_000];
    for (i, r) in m.stream(&u.add, (0..20_000u64).map(|i| (i, 4))).unordered() {
        let v = err(r, "unordered stream")?;
        ensure(v == add((i as u64, 4)) && !seen[i], || {
            format!("call {i}: {v}")
        })?;
        seen[i] = true;
    }
    let pulled = std::cell::Cell::new(0usize);
    let (mut yielded, mut most) = (0usize, 0usize);
    let inputs = (0..500u32).inspect(|_| pulled.set(pulled.get() + 1));
    for (i, r) in m.stream(&u.boom, inputs).window(7).ordered().enumerate() {
        most = most.max(pulled.get() - yielded);
        match r {
            Ok(v) => ensure(v as usize == i && i != 13, || format!("boom({i}) = {v}"))?,
            Err(MpiError::UnitPanicked { .. }) if i == 13 => {}
            Err(e) => return Err(format!("boom({i}): {e}")),
        }
        yielded += 1;
    }
    check(
        "streams",
        ensure(
            ordered == (0..20_000).map(|i| add((i, 3))).collect::<Vec<_>>()
                && seen.iter().all(|&s| s)
                && yielded == 500
                && most <= 7,
            || format!("ordered or unordered results wrong, or window 7 exceeded ({most})"),
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

    // Frames on both sides of the size the posted receive holds (64 KiB:
    // a larger frame is announced, then probed for on its own tag), in a
    // row, so that small and large frames interleave in order.
    let sizes: Vec<usize> = (65_400..65_700).step_by(4).chain([0, 1, 200_000]).collect();
    let mut wrong = Vec::new();
    for window in sizes.chunks(16) {
        let slots: Vec<_> = window
            .iter()
            .map(|&n| m.acquire(&u.echo, &vec![(n % 251) as u8; n], To::Process(1)))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
        for (&n, s) in window.iter().zip(slots) {
            let back = err(m.get(s), "echo")?;
            if back.len() != n || back.iter().any(|&b| b != (n % 251) as u8) {
                wrong.push(n);
            }
        }
    }
    check(
        "frames around the posted receive's 64 KiB, in order",
        ensure(wrong.is_empty(), || {
            format!("sizes {wrong:?} came back wrong")
        }),
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

/// The last rank kills itself at its call 50; rank 0 checks its calls fail
/// with the typed error (naming rank and host) and every other call
/// succeeds once with its own result.
fn dead_rank(m: &MpiHandle<'_>, u: &Units, cluster: bool) -> Result<String, String> {
    let procs = m.processes();
    let (&doomed, others) = procs.split_last().ok_or("no logical process")?;
    if others.is_empty() {
        return Err("dead-rank needs at least 3 ranks".into());
    }
    let t0 = Instant::now();
    let mut to_doomed = Vec::new();
    let mut to_others = Vec::new();
    let mut ok_others = 0;
    // The others' results are taken as they come, within the 255 slots.
    let mut drain = |slots: &mut Vec<((u64, u64), xme_mpi::Slot<'_, u64>)>| -> Result<(), String> {
        for (args, s) in slots.drain(..) {
            let got = err(m.get(s), "a call to a surviving rank")?;
            ensure(got == add(args), || format!("call {args:?} got {got}"))?;
            ok_others += 1;
        }
        Ok(())
    };
    for i in 0..100u64 {
        for &p in others {
            let s = err(m.acquire(&u.add, &(i, p as u64), To::Process(p)), "acquire")?;
            to_others.push(((i, p as u64), s));
        }
        if to_others.len() >= 100 {
            drain(&mut to_others)?;
        }
        let s = if i == 49 {
            err(m.acquire(&u.die, &i, To::Process(doomed)), "acquire die")?
        } else {
            err(
                m.acquire(&u.add, &(i, doomed as u64), To::Process(doomed)),
                "acquire",
            )?
        };
        to_doomed.push((i, s));
    }
    drain(&mut to_others)?;
    let (mut before, mut failed, mut detected) = (0, 0, None);
    for (i, s) in to_doomed {
        match m.get(s) {
            Ok(got) if i < 49 && got == add((i, doomed as u64)) => before += 1,
            Ok(got) => return Err(format!("call {i} to the dead rank gave {got}")),
            Err(MpiError::Unresponsive { process, host, .. }) if cluster && process == doomed => {
                ensure(host.is_some(), || "the error names no host".into())?;
                detected.get_or_insert((t0.elapsed(), host));
                failed += 1;
            }
            Err(MpiError::ProcessDied { process, .. }) if !cluster && process == doomed => {
                detected.get_or_insert((t0.elapsed(), None));
                failed += 1;
            }
            Err(e) => return Err(format!("call {i} to the dead rank: unexpected {e}")),
        }
    }
    ensure(failed >= 51, || format!("only {failed} calls failed"))?;
    // The others go on: To::Any and map use the live ranks only.
    let args: Vec<(u64, u64)> = (0..3000).map(|i| (i, 1)).collect();
    let got = err(m.map(&u.add, &args), "map after the death")?;
    ensure(
        got == args.iter().map(|&a| add(a)).collect::<Vec<_>>(),
        || "wrong map".into(),
    )?;
    let again = m.block_acquire(&u.add, &(1, 1), To::Process(doomed));
    ensure(again.is_err(), || "the dead rank answered".into())?;
    let (after, host) = detected.unwrap_or_default();
    Ok(format!(
        "rank {doomed} on host {} died at its call 50: {failed} calls to it failed with the typed \
         error {after:.1?} after the first call ({before} answered before); {} calls to the \
         other ranks succeeded once each",
        host.unwrap_or_else(|| "(this one)".into()),
        ok_others + args.len()
    ))
}

/// A unit that never returns on the last rank (a 500 ms `get_timeout`, then
/// the run's deadline), and, with 4 ranks or more, a rank that stops
/// answering (SIGSTOP); the first rank keeps serving throughout.
/// Every slot (4) held by dropped calls on a rank that stops itself: a
/// call to another rank still gets a slot once the stopped one is found
/// out (within the detection bound), and that rank serves on.
fn dropped_slots(m: &MpiHandle<'_>, u: &Units) -> Result<String, String> {
    let procs = m.processes();
    let (&lost, rest) = procs.split_last().ok_or("no logical process")?;
    let survivor = *rest.first().ok_or("dropped-slots needs at least 3 ranks")?;
    drop(err(
        m.acquire(&u.stop, &0, To::Process(lost)),
        "acquire stop",
    )?);
    for i in 0..3 {
        drop(err(
            m.acquire(&u.add, &(i, 0), To::Process(lost)),
            "acquire",
        )?);
    }
    let t = Instant::now();
    for i in 0..50 {
        let s = err(m.acquire(&u.add, &(i, 1), To::Process(survivor)), "acquire")?;
        let got = err(m.get(s), "a call to the surviving rank")?;
        ensure(got == add((i, 1)), || format!("call {i} got {got}"))?;
    }
    Ok(format!(
        "50 calls to rank {survivor} served, the first slot after {:?}",
        t.elapsed()
    ))
}

fn hung_rank(m: &MpiHandle<'_>, u: &Units, deadline: Duration) -> Result<String, String> {
    let procs = m.processes();
    let (&hung, rest) = procs.split_last().ok_or("no logical process")?;
    let survivor = *rest.first().ok_or("hung-rank needs at least 3 ranks")?;
    let stopped = rest.get(1).copied().filter(|&p| p != survivor);
    let serve = |n: u64| -> Result<usize, String> {
        for window in (0..n).collect::<Vec<_>>().chunks(100) {
            let slots: Vec<_> = window
                .iter()
                .map(|&i| {
                    m.acquire(&u.add, &(i, 5), To::Process(survivor))
                        .map(|s| (i, s))
                })
                .collect::<Result<_, _>>()
                .map_err(|e| format!("acquire: {e}"))?;
            for (i, s) in slots {
                let got = err(m.get(s), "a call to the surviving rank")?;
                ensure(got == add((i, 5)), || format!("call {i} got {got}"))?;
            }
        }
        Ok(n as usize)
    };
    let t0 = Instant::now();
    let mut slot = err(m.acquire(&u.spin, &0, To::Process(hung)), "acquire spin")?;
    let queued: Vec<_> = (0..5)
        .map(|i| m.acquire(&u.add, &(i, 0), To::Process(hung)))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("acquire: {e}"))?;
    let stop_slot = match stopped {
        Some(p) => Some(err(m.acquire(&u.stop, &0, To::Process(p)), "acquire stop")?),
        None => None,
    };
    let t = Instant::now();
    let waited = m.get_timeout(&mut slot, Duration::from_millis(500));
    let took = t.elapsed();
    match &waited {
        Err(MpiError::Timeout {
            process,
            host: Some(_),
            ..
        }) if *process == hung => {}
        other => {
            return Err(format!(
                "get_timeout: expected Timeout naming rank {hung}: {other:?}"
            ));
        }
    }
    ensure(
        took >= Duration::from_millis(500) && took <= Duration::from_millis(600),
        || format!("get_timeout(500 ms) returned after {took:?}"),
    )?;
    let mut served = serve(500)?;
    let e = m.get(slot);
    let overdue = t0.elapsed();
    let host = match e {
        Err(MpiError::DeadlineExceeded {
            process,
            host: Some(h),
            ..
        }) if process == hung => h,
        other => {
            return Err(format!(
                "expected DeadlineExceeded naming rank {hung}: {other:?}"
            ));
        }
    };
    ensure(overdue >= deadline, || {
        format!("deadline passed after {overdue:?}")
    })?;
    for s in queued {
        let e = m.get(s);
        ensure(matches!(e, Err(MpiError::Closed { .. })), || {
            format!("a call queued behind the hung one: {e:?}")
        })?;
    }
    let mut silent = String::new();
    if let Some(s) = stop_slot {
        match m.get(s) {
            Err(MpiError::Unresponsive {
                process,
                host: Some(h),
                silent: d,
                ..
            }) => {
                silent = format!("; stopped rank {process} on host {h} unresponsive after {d:.1?}");
            }
            other => {
                return Err(format!(
                    "expected Unresponsive for the stopped rank: {other:?}"
                ));
            }
        }
    }
    served += serve(500)?;
    Ok(format!(
        "get_timeout(500 ms) gave Timeout in {took:.0?}; the call on rank {hung} (host {host}) \
         ran past the {deadline:?} deadline at {overdue:.1?}{silent}; {served} calls to rank \
         {survivor} succeeded once each"
    ))
}

/// `close` of a rank while another thread's direct `block_acquire` (which
/// holds the replies' lock for its whole call) runs a unit that never
/// returns: `close` returns after its grace (it once waited for the call,
/// for ever), the direct call fails as closed, and the other rank serves
/// every call once with its own result. The rank lingers: `run` then ends
/// the job.
fn close_direct(m: &MpiHandle<'_>, u: &Units) -> Result<String, String> {
    let procs = m.processes();
    let (&hung, rest) = procs.split_last().ok_or("no logical process")?;
    let survivor = *rest.first().ok_or("close-direct needs at least 3 ranks")?;
    let (direct, took) = std::thread::scope(|s| {
        let caller = s.spawn(|| m.block_acquire(&u.spin, &0, To::Process(hung)));
        std::thread::sleep(Duration::from_millis(300));
        let t = Instant::now();
        let closed = m.close(To::Process(hung));
        let took = t.elapsed();
        (
            caller.join().map_err(|_| "the caller panicked".to_string()),
            (closed, took),
        )
    });
    let (closed, took) = took;
    err(closed, "close")?;
    ensure(
        took < xme_mpi::CLOSE_GRACE + Duration::from_millis(1500),
        || format!("close took {took:?}"),
    )?;
    match direct? {
        Err(MpiError::Closed { process, .. }) if process == hung => {}
        other => return Err(format!("the direct call: {other:?}")),
    }
    for i in 0..200u64 {
        let got = err(
            m.block_acquire(&u.add, &(i, 2), To::Process(survivor)),
            "survivor",
        )?;
        ensure(got == add((i, 2)), || format!("call {i} got {got}"))?;
    }
    Ok(format!(
        "close returned after {took:?}; 200 calls to rank {survivor} served"
    ))
}

/// A rank sends a 200 KB reply, then runs a 3 s unit: over TCP the reply's
/// bytes move only when that rank next calls MPI. Meanwhile every call to
/// another rank must be served at once (rank 0 once finished the large
/// frame with a blocking receive under its one MPI lock: each call to the
/// other ranks then waited up to 2.3 s), and the reply must come whole.
fn big_reply(m: &MpiHandle<'_>, u: &Units) -> Result<String, String> {
    let procs = m.processes();
    let (&busy, rest) = procs.split_first().ok_or("no logical process")?;
    let other = *rest.first().ok_or("big-reply needs at least 3 ranks")?;
    let big = vec![9u8; 200_000];
    let reply = err(m.acquire(&u.echo, &big, To::Process(busy)), "echo")?;
    let napping = err(m.acquire(&u.nap, &3000, To::Process(busy)), "nap")?;
    std::thread::sleep(Duration::from_millis(200));
    let (back, worst) = std::thread::scope(|s| {
        let waiter = s.spawn(|| m.get(reply));
        let mut worst = Duration::ZERO;
        let end = Instant::now() + Duration::from_millis(2000);
        let mut i = 0u64;
        while Instant::now() < end {
            let t = Instant::now();
            let got = m.block_acquire(&u.add, &(i, 1), To::Process(other));
            worst = worst.max(t.elapsed());
            if got.as_ref().ok() != Some(&add((i, 1))) {
                return (Err(format!("call {i} to rank {other}: {got:?}")), worst);
            }
            i += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        let back = waiter.join().map_err(|_| "the waiter panicked".to_string());
        (back.and_then(|r| r.map_err(|e| e.to_string())), worst)
    });
    let back = back?;
    ensure(back == big, || "the large reply came back wrong".into())?;
    ensure(worst < Duration::from_millis(500), || {
        format!("a call to rank {other} waited {worst:?} behind the large reply")
    })?;
    err(m.get(napping), "nap")?;
    Ok(format!("worst call to rank {other} meanwhile {worst:?}"))
}

fn units(mpi: &mut Mpi, mismatch: bool) -> Units {
    // In mismatch mode every rank but 0 registers `add` with other types.
    let add = if mismatch {
        let _ = mpi.register("add", |x: u32| x);
        mpi.register("add_real", add)
    } else {
        mpi.register("add", add)
    };
    Units {
        add,
        whoami: mpi.register("whoami", |(): ()| (std::process::id(), host())),
        boom: mpi.register("boom", boom),
        echo: mpi.register("echo", |v: Vec<u8>| v),
        die: mpi.register("die", |x: u64| {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
            x
        }),
        spin: mpi.register("spin", |x: u64| {
            loop {
                std::thread::sleep(Duration::from_millis(50));
                std::hint::black_box(x);
            }
        }),
        nap: mpi.register("nap", |ms: u64| {
            std::thread::sleep(Duration::from_millis(ms));
            ms
        }),
        stop: mpi.register("stop", |x: u64| {
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP);
            x
        }),
    }
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "suite".into());
    // `wrong-size` asks for one process more than the job has: refused.
    let pnum = xme_mpi::launcher_size().unwrap_or(3) + usize::from(mode == "wrong-size");
    let cluster = xme_mpi::launcher_size().is_some();
    let bound = std::env::args()
        .nth(2)
        .and_then(|s| s.parse::<f64>().ok())
        .map(Duration::from_secs_f64);
    let deadline = Duration::from_secs(2);
    let mut mpi = match Mpi::new(pnum) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("cluster_check: {e}");
            std::process::exit(2);
        }
    };
    if let Some(bound) = bound {
        mpi = mpi.failure_detection(bound);
    }
    if mode == "hung-rank" {
        mpi = mpi.call_timeout(deadline);
    }
    if mode == "dropped-slots" {
        mpi = mpi.buffer_size(4);
    }
    let rank: usize = [
        "OMPI_COMM_WORLD_RANK",
        "PMI_RANK",
        "PMIX_RANK",
        "SLURM_PROCID",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok()?.parse().ok())
    .unwrap_or(0);
    let units = units(&mut mpi, mode == "mismatch" && rank != 0);
    if mode == "dies-at-start" && rank + 1 == pnum {
        // The others wait in MPI_Init for this rank until their start
        // watchdog ends them (3 x the detection bound + 5 s).
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
    let out = mpi.run(|m| {
        let out = match mode.as_str() {
            "dead-rank" => dead_rank(m, &units, cluster),
            "hung-rank" => hung_rank(m, &units, deadline),
            "dropped-slots" => dropped_slots(m, &units),
            "close-direct" => close_direct(m, &units),
            "big-reply" => big_reply(m, &units),
            _ => return suite(m, &units, cluster).map(|n| format!("{n} passed, 0 failed")),
        };
        // Said here: once a rank is lost, `run` ends the job on return.
        match &out {
            Ok(s) => println!("cluster_check: {mode} ok: {s}"),
            Err(e) => println!("cluster_check: {mode} FAILED: {e}"),
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        out.map(|_| format!("{mode} done"))
    });
    match out {
        Ok(Ok(line)) => println!("cluster_check: {line}"),
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
