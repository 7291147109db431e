//! Each way a call can fail gives its own error, and every other result arrives.

use std::time::{Duration, Instant};

use xme_exec::{Array, Job, TaskFailure, Xme};

fn kill_self(signal: nix::sys::signal::Signal) -> ! {
    nix::sys::signal::raise(signal).unwrap();
    unreachable!("the signal ends the process")
}

#[test]
fn panic_sigkill_abort_exit_and_timeout_each_fail_one_call_only() {
    let started = Instant::now();
    let out = Xme::new()
        .pnum(2)
        .timeout(Duration::from_millis(500))
        .fun(
            |i: u32| -> u32 {
                match i {
                    2 => panic!("call two gives up"),
                    4 => kill_self(nix::sys::signal::Signal::SIGKILL),
                    6 => std::process::abort(),
                    8 => std::process::exit(3),
                    10 => {
                        std::thread::sleep(Duration::from_secs(30));
                        0
                    }
                    _ => i * 100,
                }
            },
            Array::new(0..14u32),
        )
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the timed-out call held the run"
    );

    for (i, r) in out.iter().enumerate() {
        match i {
            2 => {
                let e = r.as_ref().unwrap_err();
                assert!(e.is_panic());
                assert_eq!(e.panic_message(), Some("call two gives up"));
                assert_eq!(e.call, 2);
                assert!(e.to_string().contains("call 2 of function 0"), "{e}");
                let TaskFailure::Panicked(report) = &e.failure else {
                    unreachable!()
                };
                assert!(report.location.as_deref().unwrap().contains("failures.rs"));
            }
            4 => assert_eq!(r.as_ref().unwrap_err().signal(), Some(9)),
            6 => assert_eq!(r.as_ref().unwrap_err().signal(), Some(6)),
            8 => assert_eq!(r.as_ref().unwrap_err().exit_code(), Some(3)),
            10 => {
                let e = r.as_ref().unwrap_err();
                assert!(e.is_timeout(), "{e}");
                assert!(e.to_string().contains("timed out after 500ms"), "{e}");
            }
            _ => assert_eq!(r.as_ref().unwrap(), &(i as u32 * 100)),
        }
    }
    assert_eq!(out.errors().count(), 5);
}

#[test]
fn every_call_failing_still_returns_every_error() {
    let out = Xme::new()
        .pnum(2)
        .fun(|i: i32| -> i32 { std::process::exit(i) }, Array::new(0..10))
        .unwrap();
    let codes: Vec<_> = out
        .iter()
        .map(|r| r.as_ref().unwrap_err().exit_code())
        .collect();
    // exit(0) mid-call too: the call's worker exited with status 0.
    assert_eq!(codes, (0..10).map(Some).collect::<Vec<_>>());
    let zero = out[0].as_ref().unwrap_err();
    assert_eq!(zero.failure, xme_exec::TaskFailure::Exited { code: 0 });
    assert!(
        zero.to_string()
            .ends_with("its worker exited with status 0 before returning"),
        "{zero}"
    );
}

#[test]
fn a_job_timeout_overrides_the_run_timeout() {
    let (fast, slow) = Xme::new()
        .pnum(2)
        .timeout(Duration::from_secs(60))
        .funs((
            Job::new(|()| 1u8, ()),
            Job::new(
                |()| {
                    std::thread::sleep(Duration::from_secs(60));
                    2u8
                },
                (),
            )
            .timeout(Duration::from_millis(200))
            .named("sleeper"),
        ))
        .unwrap();
    assert_eq!(fast.into_result().unwrap(), [1]);
    let e = slow.into_result().unwrap_err();
    assert!(e.is_timeout());
    assert!(e.to_string().contains("`sleeper`"), "{e}");
}

#[test]
fn a_result_that_cannot_be_decoded_is_reported() {
    // serde_json-style untagged enums are fine; here the result type's
    // Deserialize rejects what its Serialize wrote.
    #[derive(Debug)]
    struct OneWay;
    impl serde::Serialize for OneWay {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_u8(1)
        }
    }
    impl<'de> serde::Deserialize<'de> for OneWay {
        fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
            Err(serde::de::Error::custom("OneWay never decodes"))
        }
    }
    let out = Xme::new().fun(|()| OneWay, ()).unwrap();
    let e = out.into_result().unwrap_err();
    assert!(matches!(e.failure, TaskFailure::Decode(_)), "{e}");
}

/// A result whose `Serialize` impl fails with its own message.
#[derive(Debug)]
struct Offline;
impl serde::Serialize for Offline {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("the sensor is offline"))
    }
}
impl<'de> serde::Deserialize<'de> for Offline {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Ok(Offline)
    }
}

/// An untagged enum: it needs `deserialize_any`, which postcard cannot do.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
enum Reading {
    Number(f64),
    Text(String),
}

fn offline(_: ()) -> Offline {
    Offline
}

fn reading(_: ()) -> Reading {
    Reading::Text("n/a".into())
}

#[test]
fn a_custom_serialize_error_keeps_its_message_and_an_untagged_enum_says_why() {
    let e = Xme::new()
        .fun(offline, ())
        .unwrap()
        .into_result()
        .unwrap_err();
    assert!(matches!(e.failure, TaskFailure::Encode(_)), "{e}");
    assert!(
        e.to_string()
            .ends_with("its result could not be encoded: the value's Serialize impl failed: the sensor is offline"),
        "{e}"
    );
    let e = Xme::new()
        .fun(reading, ())
        .unwrap()
        .into_result()
        .unwrap_err();
    assert!(matches!(e.failure, TaskFailure::Decode(_)), "{e}");
    let text = e.to_string();
    assert!(
        text.contains(
            "could not decode a task result: the type needs a self-describing format (an untagged"
        ),
        "{text}"
    );
    assert!(!text.contains("a a "), "{text}");
    // The warm pool says the same.
    let pool = xme_exec::Pool::new(1).unwrap();
    let e = pool.fun(offline, ()).unwrap().into_result().unwrap_err();
    assert!(
        e.to_string()
            .ends_with("the value's Serialize impl failed: the sensor is offline"),
        "{e}"
    );
    let e = pool.fun(reading, ()).unwrap().into_result().unwrap_err();
    assert!(
        e.to_string()
            .contains("the type needs a self-describing format"),
        "{e}"
    );
}

#[test]
fn a_task_that_closes_the_result_channel_is_reported_as_such() {
    // Closes every descriptor from 3 up, the worker's result pipe with them,
    // as Python's os.closerange(3, ...) does; then returns at once (call 1)
    // or runs on past the parent's patience (call 3).
    let out = Xme::new()
        .pnum(2)
        .fun(
            |i: u32| -> u32 {
                if i == 1 || i == 3 {
                    for fd in 3..1024 {
                        // SAFETY: closing descriptors in this worker only; the
                        // test wants its result pipe gone.
                        unsafe { libc::close(fd) };
                    }
                    if i == 3 {
                        std::thread::sleep(Duration::from_secs(2));
                    }
                }
                i * 10
            },
            Array::new((0..6u32).collect::<Vec<_>>()),
        )
        .unwrap();
    for (i, r) in out.into_iter().enumerate() {
        match r {
            Ok(v) => assert!(i != 1 && i != 3 && v == i as u32 * 10, "call {i}: {v}"),
            Err(e) => {
                assert!(i == 1 || i == 3, "call {i}: {e}");
                assert_eq!(e.failure, TaskFailure::ChannelClosed, "call {i}");
                assert!(e.to_string().contains("closes file descriptors"), "{e}");
            }
        }
    }
}

/// A call that forks, and whose child returns instead of leaving (Python's
/// `os.fork()` in a task without `os._exit`): the child is no worker. It
/// must neither reply for the call nor take others; every call gets the
/// worker's own result, once.
#[test]
fn a_forked_child_returning_from_a_call_is_not_a_worker() {
    let out = Xme::new()
        .pnum(2)
        .fun(
            |i: u32| -> u32 {
                if i == 1 {
                    // SAFETY: the worker is single-threaded; the child only
                    // returns (and is made to leave by the worker loop).
                    match unsafe { nix::unistd::fork() }.unwrap() {
                        nix::unistd::ForkResult::Child => return 9999,
                        nix::unistd::ForkResult::Parent { child } => {
                            // The child has had every chance to reply first.
                            nix::sys::wait::waitpid(child, None).unwrap();
                        }
                    }
                }
                i * 100
            },
            Array::new(0..8u32),
        )
        .unwrap();
    let got: Vec<u32> = out.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(got, (0..8).map(|i| i * 100).collect::<Vec<_>>());
}

/// A run whose bookkeeping does not fit in the memory the process may use
/// (here `RLIMIT_AS`, as a container or batch system sets it) is an
/// `OutOfMemory` error, not an abort.
#[test]
fn a_run_too_big_for_the_memory_limit_is_an_error_not_an_abort() {
    let child = xme_core::process::fork_child(|| {
        let limit = libc::rlimit {
            rlim_cur: 2 << 30,
            rlim_max: 2 << 30,
        };
        // SAFETY: setrlimit reads one rlimit we own.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) }, 0);
        // 50 M calls: the arguments fit (400 MB); their results do not.
        match Xme::new()
            .pnum(1)
            .fun(|i: u64| i, Array::new(0..50_000_000u64))
        {
            Err(xme_exec::ExecError::OutOfMemory {
                calls: 50_000_000, ..
            }) => 0,
            Err(e) => {
                eprintln!("another error: {e}");
                1
            }
            Ok(_) => 2,
        }
    })
    .unwrap();
    assert_eq!(child.wait().unwrap(), xme_core::Fate::Exited(0));
}
