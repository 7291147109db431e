//! Streams over forked logical processes: every result once, in order or as
//! calls finish; the window bounds what is pulled; lazy input; early drop;
//! failures fail only their own calls; the async face.

use std::cell::Cell;
use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use futures_core::Stream as _;
use xme_mpi::{Mpi, MpiError, To};

mod common;
use common::clean;

fn nap_then_double(x: u64) -> u64 {
    // Calls of different lengths, so that processes finish out of order.
    std::thread::sleep(Duration::from_micros(x % 7 * 100));
    x * 2
}

#[test]
fn ordered_and_unordered_give_every_result_once() {
    clean(|| {
        let mut mpi = Mpi::new(4).unwrap();
        let double = mpi.register("double", |x: u64| x * 2);
        let slow = mpi.register("nap_then_double", nap_then_double);
        mpi.run(|m| {
            let n = 20_000u64;
            let got: Vec<u64> = m
                .stream(&double, 0..n)
                .ordered()
                .map(Result::unwrap)
                .collect();
            assert_eq!(got, (0..n).map(|x| x * 2).collect::<Vec<_>>());
            for chunk in [None, Some(1), Some(7)] {
                let builder = m.stream(&slow, 0..2000u64);
                let builder = match chunk {
                    Some(c) => builder.chunk(c),
                    None => builder,
                };
                let mut seen = vec![false; 2000];
                for (i, r) in builder.unordered() {
                    assert_eq!(r.unwrap(), i as u64 * 2, "input {i}");
                    assert!(!seen[i], "input {i} twice");
                    seen[i] = true;
                }
                assert!(seen.iter().all(|&s| s), "an input never came back");
                let got: Vec<u64> = m
                    .stream(&slow, 0..500u64)
                    .window(9)
                    .ordered()
                    .map(Result::unwrap)
                    .collect();
                assert_eq!(got, (0..500).map(|x| x * 2).collect::<Vec<_>>());
            }
            assert_eq!(m.stream(&double, Vec::<u64>::new()).ordered().count(), 0);
            assert_eq!(m.stream(&double, Vec::<u64>::new()).unordered().count(), 0);
        })
        .unwrap();
    });
}

#[test]
fn the_window_bounds_calls_pulled_and_not_yielded_even_inside_next() {
    clean(|| {
        let mut mpi = Mpi::new(3).unwrap();
        let slow = mpi.register("nap_then_double", nap_then_double);
        mpi.run(|m| {
            for window in [1, 2, 5, 64] {
                for ordered in [true, false] {
                    for chunk in [None, Some(3)] {
                        let pulled = Cell::new(0usize);
                        let yielded = Cell::new(0usize);
                        let most = Cell::new(0usize);
                        let inputs = (0..300u64).inspect(|_| {
                            // Runs inside the stream's `next`: the result
                            // being waited for is not yielded yet.
                            pulled.set(pulled.get() + 1);
                            most.set(most.get().max(pulled.get() - yielded.get()));
                        });
                        let b = m.stream(&slow, inputs).window(window);
                        let b = match chunk {
                            Some(c) => b.chunk(c),
                            None => b,
                        };
                        let mut count = 0;
                        if ordered {
                            for (k, r) in b.ordered().enumerate() {
                                assert_eq!(r.unwrap(), k as u64 * 2);
                                yielded.set(yielded.get() + 1);
                                count += 1;
                            }
                        } else {
                            for (i, r) in b.unordered() {
                                assert_eq!(r.unwrap(), i as u64 * 2);
                                yielded.set(yielded.get() + 1);
                                count += 1;
                            }
                        }
                        assert_eq!(count, 300);
                        assert!(
                            most.get() <= window,
                            "window {window}, ordered {ordered}, chunk {chunk:?}: {} pulled \
                             and not yielded",
                            most.get()
                        );
                        // A window wider than one call does get used.
                        if window >= 5 {
                            assert!(most.get() >= 2, "window {window}: {}", most.get());
                        }
                    }
                }
            }
        })
        .unwrap();
    });
}

#[test]
fn an_endless_input_is_pulled_lazily_and_dropping_the_stream_returns_at_once() {
    clean(|| {
        let mut mpi = Mpi::new(3).unwrap().buffer_size(16);
        let nap = mpi.register("nap", |ms: u64| {
            std::thread::sleep(Duration::from_millis(ms));
            ms
        });
        let inc = mpi.register("inc", |x: u64| x + 1);
        mpi.run(|m| {
            let pulled = Cell::new(0u64);
            let endless = std::iter::repeat_with(|| {
                pulled.set(pulled.get() + 1);
                150u64
            });
            let mut results = m.stream(&nap, endless).window(6).chunk(1).unordered();
            for _ in 0..3 {
                let (_, r) = results.next().unwrap();
                assert_eq!(r.unwrap(), 150);
            }
            let before = pulled.get();
            assert!(before <= 3 + 6, "{before} pulled");
            let t = Instant::now();
            drop(results);
            assert!(
                t.elapsed() < Duration::from_millis(100),
                "{:?}",
                t.elapsed()
            );
            assert_eq!(pulled.get(), before, "pulled after the drop");
            // Other calls go on (behind the calls already sent, which run to
            // their end); their slots come back as the discarded replies land.
            for round in 0..3u64 {
                let slots: Vec<_> = (0..16u64)
                    .map(|x| m.acquire(&inc, &(round * 100 + x), To::Any).unwrap())
                    .collect();
                for (x, s) in slots.into_iter().enumerate() {
                    assert_eq!(m.get(s).unwrap(), round * 100 + x as u64 + 1);
                }
            }
        })
        .unwrap();
    });
}

#[test]
fn a_failing_call_fails_only_itself() {
    clean(|| {
        let mut mpi = Mpi::new(3).unwrap();
        let picky = mpi.register("picky", |x: u64| {
            assert!(x % 1000 != 13, "{x} is unlucky");
            x + 1
        });
        mpi.run(|m| {
            for ordered in [true, false] {
                let results: Vec<(usize, Result<u64, MpiError>)> = if ordered {
                    m.stream(&picky, 0..5000u64).ordered().enumerate().collect()
                } else {
                    m.stream(&picky, 0..5000u64).unordered().collect()
                };
                assert_eq!(results.len(), 5000);
                let mut seen = HashSet::new();
                for (i, r) in results {
                    assert!(seen.insert(i), "input {i} twice");
                    match r {
                        Ok(v) => assert_eq!(v, i as u64 + 1),
                        Err(MpiError::UnitPanicked { unit, panic, .. }) => {
                            assert_eq!(i % 1000, 13, "input {i} failed");
                            assert_eq!(unit, "picky");
                            assert_eq!(panic.message, format!("{i} is unlucky"));
                        }
                        Err(e) => panic!("input {i}: {e}"),
                    }
                }
            }
        })
        .unwrap();
    });
}

#[test]
fn a_process_killed_or_past_its_deadline_fails_its_calls_and_the_rest_go_on() {
    clean(|| {
        let mut mpi = Mpi::new(4)
            .unwrap()
            .call_timeout(Duration::from_millis(300));
        let fragile = mpi.register("fragile", |x: u64| {
            match x {
                700 => {
                    let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
                }
                1400 => std::thread::sleep(Duration::from_secs(600)),
                _ => {}
            }
            x * 3
        });
        mpi.run(|m| {
            let mut seen = HashSet::new();
            let (mut ok, mut died, mut overdue, mut closed) = (0, 0, 0, 0);
            for (i, r) in m.stream(&fragile, 0..3000u64).chunk(50).unordered() {
                assert!(seen.insert(i), "input {i} twice");
                match r {
                    Ok(v) => {
                        assert_eq!(v, i as u64 * 3);
                        ok += 1;
                    }
                    Err(MpiError::ProcessDied { .. }) => died += 1,
                    Err(MpiError::DeadlineExceeded { unit, .. }) => {
                        assert_eq!((i, unit.as_str()), (1400, "fragile"));
                        overdue += 1;
                    }
                    Err(MpiError::Closed { reason, .. }) => {
                        assert!(reason.contains("deadline"), "{reason}");
                        closed += 1;
                    }
                    Err(e) => panic!("input {i}: {e}"),
                }
            }
            assert_eq!(seen.len(), 3000);
            assert_eq!(overdue, 1);
            assert!(died >= 1, "the killed call's frame failed");
            assert!(!seen.is_empty() && ok >= 3000 - 8 * 50, "{ok} succeeded");
            assert!(
                closed + died + overdue <= 8 * 50,
                "{closed} + {died} failed"
            );
            // Two processes were ended; the last one takes a stream alone.
            let alive = m
                .status()
                .iter()
                .filter(|(_, s)| *s != xme_mpi::LpStatus::End)
                .count();
            assert_eq!(alive, 1);
            let got: Vec<u64> = m
                .stream(&fragile, 0..100u64)
                .ordered()
                .map(Result::unwrap)
                .collect();
            assert_eq!(got, (0..100).map(|x| x * 3).collect::<Vec<_>>());
        })
        .unwrap();
    });
}

#[test]
fn frames_too_large_are_split_and_one_call_too_large_fails_alone() {
    clean(|| {
        // 4 KiB channels: a frame carries under 2 KiB each way.
        let mut mpi = Mpi::new(3).unwrap().channel_bytes(4096);
        let echo = mpi.register("echo", |v: Vec<u8>| v);
        mpi.run(|m| {
            let inputs = (0..400u32).map(|i| {
                let len = if i == 123 {
                    5000
                } else {
                    300 + i as usize % 50
                };
                vec![i as u8; len]
            });
            for (i, r) in m.stream(&echo, inputs).chunk(64).ordered().enumerate() {
                if i == 123 {
                    assert!(matches!(r, Err(MpiError::FrameTooLarge { .. })), "{r:?}");
                } else {
                    assert_eq!(r.unwrap(), vec![i as u8; 300 + i % 50], "input {i}");
                }
            }
        })
        .unwrap();
    });
}

/// A minimal executor: polls `f` on this thread, sleeping until woken.
fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park(),
        }
    }
}

/// Collects a stream with `poll_next` alone, counting the polls.
async fn collect<S: futures_core::Stream + Unpin>(mut s: S) -> (Vec<S::Item>, usize) {
    let mut out = Vec::new();
    let mut polls = 0;
    std::future::poll_fn(|cx| {
        loop {
            polls += 1;
            match Pin::new(&mut s).poll_next(cx) {
                Poll::Ready(Some(item)) => out.push(item),
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await;
    (out, polls)
}

#[test]
fn the_async_face_gives_the_same_results_without_blocking_a_poll() {
    clean(|| {
        let mut mpi = Mpi::new(3).unwrap();
        let slow = mpi.register("nap_then_double", nap_then_double);
        let nap = mpi.register("nap", |ms: u64| {
            std::thread::sleep(Duration::from_millis(ms));
            ms
        });
        mpi.run(|m| {
            let (got, _) = block_on(collect(m.stream(&slow, 0..3000u64).ordered()));
            let got: Vec<u64> = got.into_iter().map(Result::unwrap).collect();
            assert_eq!(got, (0..3000).map(|x| x * 2).collect::<Vec<_>>());
            let (got, _) = block_on(collect(m.stream(&slow, 0..3000u64).unordered()));
            let mut idx: Vec<usize> = got
                .into_iter()
                .map(|(i, r)| {
                    assert_eq!(r.unwrap(), i as u64 * 2);
                    i
                })
                .collect();
            idx.sort_unstable();
            assert_eq!(idx, (0..3000).collect::<Vec<_>>());
            // A poll with nothing ready returns at once (Pending), however
            // long the calls take.
            let mut s = m.stream(&nap, [300u64, 300]).ordered();
            let waker = Waker::noop();
            let mut cx = Context::from_waker(waker);
            let t = Instant::now();
            let first = Pin::new(&mut s).poll_next(&mut cx);
            assert!(first.is_pending());
            assert!(
                t.elapsed() < Duration::from_millis(100),
                "{:?}",
                t.elapsed()
            );
            let (rest, polls) = block_on(collect(s));
            assert_eq!(
                rest.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
                [300, 300]
            );
            // Woken by the timer every 1 ms at most, not spinning.
            assert!(polls < 2000, "{polls} polls");
        })
        .unwrap();
    });
}

/// Resident memory of this process, in bytes.
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn a_million_lazy_inputs_keep_the_main_process_small() {
    clean(|| {
        let mut mpi = Mpi::new(3).unwrap();
        let inc = mpi.register("inc", |x: u64| x + 1);
        mpi.run(|m| {
            let n = 1_000_000u64;
            // Warm up (allocator arenas, buffers), then measure the growth.
            let _ = m.stream(&inc, 0..100_000u64).unordered().count();
            let before = rss();
            let mut peak = before;
            let mut sum = 0u64;
            for (k, r) in m.stream(&inc, 0..n).ordered().enumerate() {
                sum += r.unwrap();
                if k % 65_536 == 0 {
                    peak = peak.max(rss());
                }
            }
            assert_eq!(sum, n * (n + 1) / 2);
            let growth = peak.saturating_sub(before);
            assert!(growth <= 32 << 20, "grew {} MiB", growth >> 20);
        })
        .unwrap();
    });
}
