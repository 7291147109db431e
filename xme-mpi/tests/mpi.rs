//! MPI across real processes: results, routing, pipelining, failures.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use xme_core::process::children_of;
use xme_mpi::{LpStatus, Mpi, MpiError, To};

mod common;
use common::clean;

#[test]
fn ten_thousand_calls_with_mixed_destinations_match_a_serial_run() {
    clean(|| {
        let mut mpi = Mpi::new(4).unwrap();
        let f = mpi.register("f", |(a, b): (u64, String)| a * 3 + b.len() as u64);
        let got = mpi
            .run(|m| {
                let mut out = Vec::new();
                let mut slots = Vec::new();
                for i in 0..10_000u64 {
                    let to = match i % 4 {
                        0 => To::Any,
                        k => To::Process(k as usize),
                    };
                    if i.is_multiple_of(97) {
                        out.push(
                            m.block_acquire(&f, &(i, "x".repeat(i as usize % 7)), to)
                                .unwrap(),
                        );
                    } else {
                        slots.push(m.acquire(&f, &(i, "x".repeat(i as usize % 7)), to).unwrap());
                    }
                    if slots.len() == 200 {
                        out.extend(slots.drain(..).map(|s| m.get(s).unwrap()));
                    }
                }
                out.extend(slots.drain(..).map(|s| m.get(s).unwrap()));
                out
            })
            .unwrap();
        let mut serial: Vec<u64> = (0..10_000u64).map(|i| i * 3 + (i % 7)).collect();
        let mut got = got;
        serial.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, serial);
    });
}

#[test]
fn results_come_back_to_their_own_slots_in_order() {
    clean(|| {
        let mut mpi = Mpi::new(3).unwrap();
        let id = mpi.register("id", |x: u32| x);
        mpi.run(|m| {
            // 250 in flight at a time: within the 255-slot buffer.
            for round in 0..4u32 {
                let slots: Vec<_> = (0..250u32)
                    .map(|i| m.acquire(&id, &(round * 250 + i), To::Any).unwrap())
                    .collect();
                for (i, s) in slots.into_iter().enumerate() {
                    assert_eq!(m.get(s).unwrap(), round * 250 + i as u32);
                }
            }
        })
        .unwrap();
    });
}

#[test]
fn broadcast_reaches_every_logical_process() {
    clean(|| {
        let mut mpi = Mpi::new(4).unwrap();
        let whoami = mpi.register("whoami", |(): ()| std::process::id());
        let pids = mpi
            .run(|m| {
                let slots = m.broadcast(&whoami, &()).unwrap();
                assert_eq!(slots.len(), 3);
                let got: Vec<u32> = slots.into_iter().map(|s| m.get(s).unwrap()).collect();
                let expected: HashSet<u32> = m
                    .processes()
                    .iter()
                    .map(|&p| m.pid(p).unwrap() as u32)
                    .collect();
                (got, expected)
            })
            .unwrap();
        assert_eq!(pids.0.iter().copied().collect::<HashSet<_>>(), pids.1);
    });
}

#[test]
fn direct_functions_need_no_registration() {
    fn cube(x: i64) -> i64 {
        x * x * x
    }
    clean(|| {
        let mpi = Mpi::new(2).unwrap();
        let v = mpi
            .run(|m| {
                let a = m.acquire_fn(cube, &3, To::Any).unwrap();
                let b = m
                    .acquire_fn(
                        |s: String| s.to_uppercase(),
                        &"hi".to_string(),
                        To::Process(1),
                    )
                    .unwrap();
                (m.get(a).unwrap(), m.get(b).unwrap())
            })
            .unwrap();
        assert_eq!(v, (27, "HI".to_string()));
    });
}

#[test]
fn a_full_buffer_blocks_and_its_timeout_errors() {
    clean(|| {
        let mut mpi = Mpi::new(2).unwrap().buffer_size(4);
        let slow = mpi.register("slow", |ms: u64| {
            std::thread::sleep(Duration::from_millis(ms));
            ms
        });
        mpi.run(|m| {
            let held: Vec<_> = (0..4)
                .map(|_| m.acquire(&slow, &50, To::Any).unwrap())
                .collect();
            let t = Instant::now();
            let e = m
                .acquire_timeout(&slow, &1, To::Any, Duration::from_millis(30))
                .unwrap_err();
            assert!(matches!(e, MpiError::BufferFull { size: 4, .. }), "{e}");
            assert!(t.elapsed() >= Duration::from_millis(30));
            // A plain acquire waits until a get frees a slot (here, from another thread).
            std::thread::scope(|s| {
                let mut held = held;
                let first = held.remove(0);
                s.spawn(|| {
                    std::thread::sleep(Duration::from_millis(20));
                    assert_eq!(m.get(first).unwrap(), 50);
                });
                let t = Instant::now();
                let extra = m.acquire(&slow, &1, To::Any).unwrap();
                assert!(
                    t.elapsed() >= Duration::from_millis(15),
                    "acquire did not wait for a slot"
                );
                assert_eq!(m.get(extra).unwrap(), 1);
                for h in held {
                    assert_eq!(m.get(h).unwrap(), 50);
                }
            });
        })
        .unwrap();
    });
}

#[test]
fn a_panicking_unit_fails_its_call_and_the_process_lives_on() {
    clean(|| {
        let mut mpi = Mpi::new(2).unwrap();
        let div = mpi.register("div", |(a, b): (i32, i32)| {
            assert!(b != 0, "division by zero");
            a / b
        });
        mpi.run(|m| {
            let e = m.block_acquire(&div, &(1, 0), To::Any).unwrap_err();
            match &e {
                MpiError::UnitPanicked {
                    unit,
                    process,
                    panic,
                } => {
                    assert_eq!((unit.as_str(), *process), ("div", 1));
                    assert_eq!(panic.message, "division by zero");
                }
                other => panic!("{other}"),
            }
            // A registered unit that panicked is not TASK_NO_REGISTERED.
            assert!(
                e.to_string().starts_with(
                    "unit `div` panicked in logical process 1: 'division by zero' at "
                ),
                "{e}"
            );
            assert!(!e.to_string().contains("TASK_NO_REGISTERED"), "{e}");
            assert_eq!(m.block_acquire(&div, &(9, 3), To::Any).unwrap(), 3);
        })
        .unwrap();
    });
}

#[test]
fn a_killed_logical_process_fails_its_calls_and_the_others_go_on() {
    clean(|| {
        let mut mpi = Mpi::new(3).unwrap();
        let nap = mpi.register("nap", |ms: u64| {
            std::thread::sleep(Duration::from_millis(ms));
            ms
        });
        mpi.run(|m| {
            let doomed: Vec<_> = (0..5)
                .map(|_| m.acquire(&nap, &200, To::Process(1)).unwrap())
                .collect();
            let fine: Vec<_> = (0..5)
                .map(|_| m.acquire(&nap, &10, To::Process(2)).unwrap())
                .collect();
            std::thread::sleep(Duration::from_millis(50));
            let pid = m.pid(1).unwrap();
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
            for s in doomed {
                match m.get(s).unwrap_err() {
                    MpiError::ProcessDied {
                        process: 1, fate, ..
                    } => assert_eq!(fate.signal(), Some(9)),
                    other => panic!("{other}"),
                }
            }
            for s in fine {
                assert_eq!(m.get(s).unwrap(), 10);
            }
            // "Any" skips the dead process; naming it is an error.
            for _ in 0..5 {
                let s = m.acquire(&nap, &1, To::Any).unwrap();
                assert_eq!(s.process(), 2);
                m.get(s).unwrap();
            }
            assert!(matches!(
                m.acquire(&nap, &1, To::Process(1)),
                Err(MpiError::ProcessDied { .. })
            ));
            assert_eq!(m.status()[0], (1, LpStatus::End));
            m.close(To::All).unwrap();
        })
        .unwrap();
    });
}

#[test]
fn garbage_in_a_channel_is_dropped_or_ends_only_that_process() {
    clean(|| {
        let mut mpi = Mpi::new(3).unwrap();
        let twice = mpi.register("twice", |x: u8| x * 2);
        mpi.run(|m| {
            // A well-framed frame without the run's token: dropped, logged.
            m.inject_foreign_frame(1).unwrap();
            assert_eq!(m.block_acquire(&twice, &4, To::Process(1)).unwrap(), 8);
            // A frame header that breaks the channel: that process ends, its
            // calls fail, the other process goes on.
            let s = m.acquire(&twice, &1, To::Process(2)).unwrap();
            m.inject_corrupt_header(2).unwrap();
            let after = m.acquire(&twice, &2, To::Process(2));
            let r = m.get(s);
            assert!(
                r.is_ok() || matches!(r, Err(MpiError::ProcessDied { .. })),
                "{r:?}"
            );
            if let Ok(after) = after {
                assert!(matches!(
                    m.get(after),
                    Err(MpiError::ProcessDied { process: 2, .. })
                ));
            }
            assert_eq!(m.block_acquire(&twice, &5, To::Any).unwrap(), 10);
        })
        .unwrap();
    });
}

#[test]
fn pnum_below_two_is_refused() {
    assert!(matches!(Mpi::new(1), Err(MpiError::PnumTooSmall(1))));
    assert!(matches!(Mpi::new(0), Err(MpiError::PnumTooSmall(0))));
}

#[test]
fn close_twice_and_run_without_close_leave_nothing_behind() {
    clean(|| {
        let mut mpi = Mpi::new(3).unwrap();
        let one = mpi.register("one", |(): ()| 1u8);
        mpi.run(|m| {
            m.close(To::Process(1)).unwrap();
            m.close(To::Process(1)).unwrap();
            let e = m.acquire(&one, &(), To::Process(1)).unwrap_err();
            assert!(matches!(e, MpiError::Closed { .. }), "{e}");
            assert!(
                e.to_string().starts_with(
                    "logical process 1 is closed: the main process closed it (MpiHandle::close"
                ),
                "{e}"
            );
            assert_eq!(m.block_acquire(&one, &(), To::Any).unwrap(), 1);
            m.close(To::All).unwrap();
            m.close(To::All).unwrap();
            assert!(matches!(
                m.acquire(&one, &(), To::Any),
                Err(MpiError::NoLiveProcess)
            ));
        })
        .unwrap();
    });
    clean(|| {
        let mut mpi = Mpi::new(3).unwrap();
        let one = mpi.register("one", |(): ()| 1u8);
        // main returns with calls still queued and never closes.
        let queued = mpi
            .run(|m| {
                for _ in 0..100 {
                    std::mem::forget(m.acquire(&one, &(), To::Any).unwrap());
                }
                m.status().len()
            })
            .unwrap();
        assert_eq!(queued, 2);
    });
}

#[test]
fn main_panicking_still_closes_everything() {
    clean(|| {
        let mpi = Mpi::new(2).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            mpi.run(|_m| -> () { panic!("main gives up") })
        }));
        assert!(r.is_err());
    });
}

#[test]
fn status_reports_each_process() {
    clean(|| {
        let mut mpi = Mpi::new(3).unwrap();
        let nap = mpi.register("nap", |ms: u64| {
            std::thread::sleep(Duration::from_millis(ms))
        });
        mpi.run(|m| {
            let s = m.acquire(&nap, &100, To::Process(1)).unwrap();
            let t = Instant::now();
            while m.status()[0].1 != LpStatus::InRun {
                assert!(t.elapsed() < Duration::from_secs(5));
                std::thread::sleep(Duration::from_millis(1));
            }
            assert!(matches!(m.status()[1].1, LpStatus::Idle | LpStatus::Begin));
            m.get(s).unwrap();
        })
        .unwrap();
    });
}

#[test]
fn arguments_too_large_for_the_channel_are_an_error() {
    clean(|| {
        let mut mpi = Mpi::new(2).unwrap().channel_bytes(8192);
        let len = mpi.register("len", |v: Vec<u8>| v.len());
        mpi.run(|m| {
            let e = m.acquire(&len, &vec![0u8; 10_000], To::Any).unwrap_err();
            // The limit named is one frame's (under half the channel), not the channel's.
            let MpiError::FrameTooLarge { max, capacity, .. } = e else {
                panic!("{e}")
            };
            assert_eq!(capacity, 8192);
            assert!(max < capacity / 2, "{max}");
            assert!(
                e.to_string().contains(&format!(
                    "larger than the {max} bytes one frame may carry on a channel of 8192 bytes"
                )),
                "{e}"
            );
            // Just over the frame limit fails; just under it runs.
            let over = m.acquire(&len, &vec![0u8; max], To::Any).unwrap_err();
            assert!(matches!(over, MpiError::FrameTooLarge { .. }), "{over}");
            assert_eq!(
                m.block_acquire(&len, &vec![0u8; 1000], To::Any).unwrap(),
                1000
            );
        })
        .unwrap();
    });
}

#[test]
fn a_process_killed_during_block_acquire_is_an_error_not_a_hang() {
    clean(|| {
        let mut mpi = Mpi::new(3).unwrap();
        let nap = mpi.register("nap", |ms: u64| {
            std::thread::sleep(Duration::from_millis(ms));
            ms
        });
        mpi.run(|m| {
            let pid = m.pid(1).unwrap();
            std::thread::scope(|s| {
                s.spawn(|| {
                    std::thread::sleep(Duration::from_millis(50));
                    nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    )
                    .unwrap();
                });
                let t = Instant::now();
                match m.block_acquire(&nap, &5000, To::Process(1)).unwrap_err() {
                    MpiError::ProcessDied { process: 1, .. } => {}
                    other => panic!("{other}"),
                }
                assert!(t.elapsed() < Duration::from_secs(2));
            });
            // The other process goes on, by both paths.
            assert_eq!(m.block_acquire(&nap, &1, To::Any).unwrap(), 1);
            let s = m.acquire(&nap, &2, To::Any).unwrap();
            assert_eq!(m.get(s).unwrap(), 2);
        })
        .unwrap();
    });
}

#[test]
fn threads_mixing_block_acquire_and_slots_on_one_process_get_their_own_results() {
    clean(|| {
        let mut mpi = Mpi::new(2).unwrap();
        let tag = mpi.register("tag", |(t, i): (u64, u64)| t * 1_000_000 + i);
        mpi.run(|m| {
            std::thread::scope(|s| {
                for t in 0..4u64 {
                    s.spawn(move || {
                        for i in 0..2000u64 {
                            if (i + t).is_multiple_of(3) {
                                let slots: Vec<_> = (0..5)
                                    .map(|k| m.acquire(&tag, &(t, i * 10 + k), To::Any).unwrap())
                                    .collect();
                                for (k, s) in slots.into_iter().enumerate() {
                                    assert_eq!(
                                        m.get(s).unwrap(),
                                        t * 1_000_000 + i * 10 + k as u64
                                    );
                                }
                            } else {
                                assert_eq!(
                                    m.block_acquire(&tag, &(t, i), To::Any).unwrap(),
                                    t * 1_000_000 + i
                                );
                            }
                        }
                    });
                }
            });
            // Every call was answered: nothing is left counted on the process.
            assert_eq!(m.status()[0], (1, LpStatus::Idle));
        })
        .unwrap();
    });
}

/// The cores a process may run on, from `/proc/<pid>/status`.
fn allowed_cores(pid: i32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn logical_processes_are_bound_to_cores_in_turn_unless_told_not_to() {
    clean(|| {
        let ours = allowed_cores(std::process::id() as i32);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let bound = Mpi::new(3)
            .unwrap()
            .run(|m| [1, 2].map(|id| allowed_cores(m.pid(id).unwrap())))
            .unwrap();
        if cpus >= 2 {
            for cores in &bound {
                assert!(
                    cores.parse::<usize>().is_ok(),
                    "one core each, got {cores:?}"
                );
            }
            assert_ne!(bound[0], bound[1], "two processes, two cores");
        } else {
            assert_eq!(bound, [ours.clone(), ours.clone()]);
        }
        let free = Mpi::new(2)
            .unwrap()
            .bind_to_cores(false)
            .run(|m| allowed_cores(m.pid(1).unwrap()))
            .unwrap();
        assert_eq!(free, ours, "unbound: the main process's cores");
        assert_eq!(
            allowed_cores(std::process::id() as i32),
            ours,
            "the main process is never bound"
        );
    });
}

#[test]
fn blocking_calls_of_every_size_match_and_a_corrupt_fast_lane_ends_only_its_process() {
    clean(|| {
        let mut mpi = Mpi::new(3).unwrap();
        // Small calls go by the fast lane, large ones by the ring; a panic's
        // report is too long for the lane's reply.
        let echo = mpi.register("echo", |v: Vec<u8>| {
            assert!(
                v.first() != Some(&0xEE),
                "asked to fail with {} bytes",
                v.len()
            );
            v.into_iter().rev().collect::<Vec<u8>>()
        });
        mpi.run(|m| {
            for n in [0usize, 1, 20, 27, 28, 40, 200, 5000, 3, 100_000, 2] {
                let v: Vec<u8> = (0..n).map(|i| (i % 251) as u8 + 1).collect();
                let back = m.block_acquire(&echo, &v, To::Process(1)).unwrap();
                assert_eq!(
                    back,
                    v.iter().rev().copied().collect::<Vec<u8>>(),
                    "{n} bytes"
                );
                let failed = m.block_acquire(&echo, &vec![0xEE; n.max(1)], To::Process(1));
                match failed {
                    Err(MpiError::UnitPanicked {
                        process: 1, panic, ..
                    }) => {
                        assert!(panic.message.contains("asked to fail"), "{}", panic.message)
                    }
                    other => panic!("{n} bytes: {other:?}"),
                }
            }
            m.inject_corrupt_fast_frame(2).unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            while m.status()[1] != (2, LpStatus::End) {
                assert!(
                    Instant::now() < deadline,
                    "process 2 read the corrupt frame"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            assert!(matches!(
                m.block_acquire(&echo, &vec![1u8], To::Process(2)),
                Err(MpiError::ProcessDied { process: 2, .. } | MpiError::Closed { process: 2, .. })
            ));
            assert_eq!(
                m.block_acquire(&echo, &vec![1u8, 2], To::Any).unwrap(),
                [2, 1]
            );
        })
        .unwrap();
    });
}

#[test]
fn a_slot_of_another_run_is_refused_not_answered() {
    clean(|| {
        let mut outer = Mpi::new(2).unwrap();
        let double = outer.register("double", |x: u64| x * 2);
        outer
            .run(|m| {
                let mut inner = Mpi::new(2).unwrap();
                let triple = inner.register("triple", |x: u64| x * 3);
                inner
                    .run(|n| {
                        // A slot of the inner run given to the outer handle.
                        let s = n.acquire(&triple, &5, To::Any).unwrap();
                        assert!(matches!(m.get(s), Err(MpiError::BadSlot)));
                        // And the other way round.
                        let s = m.acquire(&double, &7, To::Any).unwrap();
                        let err = n.get(s).unwrap_err();
                        assert!(matches!(err, MpiError::BadSlot), "{err}");
                        assert!(err.to_string().contains("another MPI run"), "{err}");
                        // Both runs go on: the refused slots were discarded.
                        assert_eq!(n.block_acquire(&triple, &5, To::Any).unwrap(), 15);
                    })
                    .unwrap();
                assert_eq!(m.block_acquire(&double, &7, To::Any).unwrap(), 14);
                let s = m.acquire(&double, &8, To::Any).unwrap();
                assert_eq!(m.get(s).unwrap(), 16);
            })
            .unwrap();
    });
}

#[test]
fn map_returns_every_result_in_order() {
    clean(|| {
        let mut mpi = Mpi::new(3).unwrap();
        let f = mpi.register("f", |(a, s): (u64, String)| a * 3 + s.len() as u64);
        let args: Vec<(u64, String)> = (0..10_000u64)
            .map(|i| (i, "x".repeat(i as usize % 7)))
            .collect();
        let (got, empty, small) = mpi
            .run(|m| {
                let got = m.map(&f, &args).unwrap();
                let empty = m.map(&f, &[]).unwrap();
                let small = m.map(&f, &args[..3]).unwrap();
                (got, empty, small)
            })
            .unwrap();
        let serial: Vec<u64> = args.iter().map(|(a, s)| a * 3 + s.len() as u64).collect();
        assert_eq!(got, serial);
        assert!(empty.is_empty());
        assert_eq!(small, serial[..3]);
    });
}

#[test]
fn map_names_the_call_that_failed_and_the_run_goes_on() {
    clean(|| {
        let mut mpi = Mpi::new(3).unwrap();
        let picky = mpi.register("picky", |x: u32| {
            assert!(x != 4321, "no 4321 here");
            x
        });
        mpi.run(|m| {
            let args: Vec<u32> = (0..10_000).collect();
            let e = m.map(&picky, &args).unwrap_err();
            match &e {
                MpiError::MapCall { index, error } => {
                    assert_eq!(*index, 4321);
                    assert!(matches!(**error, MpiError::UnitPanicked { .. }), "{error}");
                }
                other => panic!("{other}"),
            }
            assert!(
                e.to_string().contains("call 4321") && e.to_string().contains("no 4321 here"),
                "{e}"
            );
            // Nothing is left behind: the next map and calls work.
            assert_eq!(m.map(&picky, &[1, 2, 3]).unwrap(), [1, 2, 3]);
            assert_eq!(m.block_acquire(&picky, &7, To::Any).unwrap(), 7);
        })
        .unwrap();
    });
}

#[test]
fn map_splits_batches_too_large_for_the_channels() {
    clean(|| {
        // 8 KiB channels: at most about 4 KiB per frame each way.
        let mut mpi = Mpi::new(2).unwrap().channel_bytes(8192);
        let grow = mpi.register("grow", |n: usize| vec![n as u8; n]);
        let echo = mpi.register("echo", |v: Vec<u8>| v.len());
        mpi.run(|m| {
            // Results of 1-3 KiB: a batch's replies do not fit one frame.
            let sizes: Vec<usize> = (0..200).map(|i| 1000 + (i * 37) % 2000).collect();
            let got = m.map(&grow, &sizes).unwrap();
            for (n, v) in sizes.iter().zip(&got) {
                assert_eq!(v.len(), *n);
            }
            // Arguments of 1-3 KiB: a batch's requests do not fit one frame.
            let blobs: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![1; n]).collect();
            assert_eq!(m.map(&echo, &blobs).unwrap(), sizes);
            // One call too large for any frame is an error, not a hang.
            let e = m.map(&echo, &[vec![0u8; 100_000]]).unwrap_err();
            assert!(matches!(e, MpiError::FrameTooLarge { .. }), "{e}");
            // A result too large for any frame fails that call.
            let e = m.map(&grow, &[10, 100_000]).unwrap_err();
            assert!(matches!(e, MpiError::MapCall { index: 1, .. }), "{e}");
        })
        .unwrap();
    });
}

/// Runs `helper_backend_choice` in a fresh process with `env` set.
#[cfg(not(feature = "cluster"))]
fn run_helper(env: &[(&str, &str)]) -> std::process::Output {
    xme_test_support::run_test_helper("helper_backend_choice", env)
}

#[test]
#[cfg(not(feature = "cluster"))]
fn under_a_launcher_without_the_cluster_feature_run_is_an_error_not_a_pool() {
    // The helper processes are children too: counted by the others' checks.
    clean(|| {
        for var in ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"] {
            let out = run_helper(&[(var, "3"), ("XME_EXPECT", "not-built")]);
            assert!(
                out.status.success(),
                "{var}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // XME_MPI_BACKEND overrides the launcher's variables, both ways.
        for (env, expect) in [
            (vec![("XME_MPI_BACKEND", "cluster")], "not-built"),
            (
                vec![("XME_MPI_BACKEND", "fork"), ("OMPI_COMM_WORLD_SIZE", "3")],
                "forked",
            ),
            // A batch script's own process: allocation variables, no step.
            (vec![("SLURM_NTASKS", "3"), ("SLURM_JOB_ID", "7")], "forked"),
            // One srun task alone is a program like any other.
            (vec![("SLURM_STEP_NUM_TASKS", "1")], "forked"),
            // Several srun tasks without PMI (srun --mpi=none): refused.
            (
                vec![("SLURM_STEP_NUM_TASKS", "3"), ("SLURM_NTASKS", "3")],
                "no-pmi",
            ),
            // ... unless each should run alone.
            (
                vec![("SLURM_STEP_NUM_TASKS", "3"), ("XME_MPI_BACKEND", "fork")],
                "forked",
            ),
            (vec![("XME_MPI_BACKEND", "threads")], "bad-backend"),
        ] {
            let mut env = env.clone();
            env.push(("XME_EXPECT", expect));
            let out = run_helper(&env);
            assert!(
                out.status.success(),
                "{env:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    });
}

#[test]
#[ignore = "helper: run by another test in its own process"]
fn helper_backend_choice() {
    let expect = std::env::var("XME_EXPECT").unwrap();
    let mut mpi = Mpi::new(3).unwrap();
    let id = mpi.register("id", |x: u8| x);
    let out = mpi.run(|m| m.block_acquire(&id, &7, To::Any).unwrap());
    match (expect.as_str(), out) {
        ("forked", Ok(7)) => {}
        ("not-built", Err(e @ MpiError::ClusterNotBuilt { .. })) => {
            assert!(
                e.to_string().contains("without the `cluster` feature"),
                "{e}"
            );
            assert!(
                e.to_string().contains("every rank would fork its own pool"),
                "{e}"
            );
        }
        ("no-pmi", Err(e @ MpiError::SrunWithoutPmi { tasks: 3, .. })) => {
            let text = e.to_string();
            assert!(text.contains("one of 3 tasks of an srun step"), "{e}");
            assert!(text.contains("srun --mpi=pmix"), "{e}");
            assert!(text.contains("srun --mpi=pmi2"), "{e}");
        }
        ("bad-backend", Err(e @ MpiError::BadBackend(_))) => {
            assert!(e.to_string().contains("`fork` or `cluster`"), "{e}");
        }
        (want, got) => panic!("expected {want}, got {got:?}"),
    }
    assert_eq!(children_of(std::process::id() as i32), Vec::<i32>::new());
}
