//! The Manager at scale (issue #16), across real processes: values of any
//! size up to the arena, deletes that free their space at once, a status
//! table without a size cap, mailboxes freed for new operators, a
//! HeartJump's last word, and `check` while others write.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use xme_core::process::fork_child;
use xme_core::{Operator, SharedRegion};
use xme_shm::{Call, Guard, HeartJump, PAGE_BYTES, RawValue, ShmError, XmemBuilder};

const WAIT: Duration = Duration::from_secs(20);

/// Bytes that say where they are: byte `i` of value `seed`.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64).wrapping_mul(31).wrapping_add(seed) as u8)
        .collect()
}

#[test]
fn a_100_mb_value_set_here_is_read_whole_by_another_process() {
    let xmem = XmemBuilder::new().arena_bytes(256 << 20).build().unwrap();
    let value = RawValue::encode(&pattern(7, 100_000_000)).unwrap();
    xmem.set_raw("big", &value).unwrap();
    let child = fork_child(|| {
        let got = xmem.get_raw("big").unwrap();
        i32::from(got.as_ref() != Some(&value))
    })
    .unwrap();
    assert!(
        child.wait().unwrap().is_success(),
        "the child read another value"
    );
    // Too large for the arena: a clear error, the old value kept.
    let err = xmem.set("big", &vec![0u8; 300 << 20]).unwrap_err();
    assert!(matches!(err, ShmError::ValueTooLarge { .. }), "{err}");
    assert!(err.to_string().contains("arena"), "{err}");
    assert_eq!(xmem.get_raw("big").unwrap().as_ref(), Some(&value));
    // Deleting it gives its pages back at once.
    let before = xmem.check().unwrap();
    xmem.delete(&["big"], Operator::ADMIN).unwrap();
    let after = xmem.check().unwrap();
    assert!(
        before.pages_used - after.pages_used >= 100_000_000 / PAGE_BYTES,
        "{before:?} → {after:?}"
    );
}

#[test]
fn a_thousand_1_mb_keys_rewritten_ten_times_by_four_processes_without_growth() {
    const KEYS: usize = 1000;
    const MB: usize = 1 << 20;
    let xmem = XmemBuilder::new()
        .arena_bytes(KEYS * (MB + PAGE_BYTES) + 64 * MB)
        .build()
        .unwrap();
    // One value per round (built once: encoding a megabyte a thousand times
    // would be the test's whole time in a debug build).
    let rounds: Vec<RawValue> = (0..=10u64)
        .map(|r| RawValue::encode(&pattern(r, MB)).unwrap())
        .collect();
    for k in 0..KEYS {
        xmem.set_raw(&format!("k{k}"), &rounds[0]).unwrap();
    }
    let first = xmem.check().unwrap();
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (xmem, rounds) = (&xmem, &rounds);
            fork_child(move || {
                for value in &rounds[1..] {
                    for k in (w..KEYS).step_by(4) {
                        xmem.set_raw(&format!("k{k}"), value).unwrap();
                    }
                }
                0
            })
            .unwrap()
        })
        .collect();
    for w in workers {
        assert!(w.wait().unwrap().is_success());
    }
    let last = xmem.check().unwrap();
    assert_eq!(last.live_blocks, first.live_blocks, "{first:?} → {last:?}");
    assert_eq!(last.live_bytes, first.live_bytes, "{first:?} → {last:?}");
    assert!(
        last.pages_used <= first.pages_used + 4,
        "{first:?} → {last:?}"
    );
    for k in (0..KEYS).step_by(97) {
        assert_eq!(
            xmem.get_raw(&format!("k{k}")).unwrap().as_ref(),
            Some(&rounds[10]),
            "k{k}"
        );
    }
}

#[test]
fn fill_delete_refill_a_hundred_rounds_never_runs_out() {
    // A 1 MiB arena; rounds of 200-byte values, and every third round values
    // of 5,000 bytes, so pages change size class between rounds.
    let xmem = XmemBuilder::new()
        .arena_bytes(1 << 20)
        .capacity(10_000)
        .build()
        .unwrap();
    let mut first: [Option<usize>; 2] = [None, None];
    for round in 0..100 {
        let kind = usize::from(round % 3 == 2);
        let value = vec![round as u8; [200, 5000][kind]];
        let mut stored = 0;
        let err = loop {
            match xmem.set(&format!("r{round}-k{stored}"), &value) {
                Ok(()) => stored += 1,
                Err(e) => break e,
            }
        };
        assert!(
            matches!(err, ShmError::ArenaFull { .. }),
            "round {round}: {err}"
        );
        let expected = *first[kind].get_or_insert(stored);
        assert!(
            stored + 2 >= expected,
            "round {round} stored {stored}, the first such round {expected}"
        );
        // Deleting a full table never needs room.
        let deleted = xmem.delete(&[], Operator::ADMIN).unwrap();
        assert_eq!(deleted, stored, "round {round}");
        assert_eq!(xmem.len().unwrap(), 3, "round {round}");
    }
    assert!(first[0].unwrap() > 3000, "{first:?}");
    let stats = xmem.check().unwrap();
    assert!(stats.pages_used <= 4, "{stats:?}");
}

#[test]
fn a_multi_key_update_that_fails_says_which_keys_were_done() {
    let xmem = XmemBuilder::new()
        .arena_bytes(4 * PAGE_BYTES)
        .build()
        .unwrap();
    let err = xmem
        .update(
            [
                ("a", vec![1u8; 10]),
                ("b", vec![2u8; 10]),
                ("c", vec![3u8; 1 << 20]),
            ],
            Operator::ADMIN,
        )
        .unwrap_err();
    match &err {
        ShmError::PartlyDone {
            done,
            failed,
            total,
            source,
        } => {
            assert_eq!(done, &["a", "b"]);
            assert_eq!((failed.as_str(), *total), ("c", 3));
            assert!(
                matches!(**source, ShmError::ValueTooLarge { .. }),
                "{source}"
            );
        }
        other => panic!("expected PartlyDone, got {other}"),
    }
    assert_eq!(
        err.to_string(),
        "stopped at key \"c\" after 2 of 3 keys were done"
    );
    assert_eq!(xmem.get::<Vec<u8>>("b").unwrap(), vec![2u8; 10]);
}

/// `n` operators, each reporting a status and taking a call's result.
fn operators_report_and_take_results(n: usize) {
    let xmem = XmemBuilder::new()
        .mailboxes(16)
        .status_keep(256)
        .build()
        .unwrap();
    let guard = Guard::new().spawn(&xmem).unwrap();
    let call = Call::table_set("last", &0u8).unwrap();
    for i in 0..n {
        let op = xmem.alloc_operator();
        xmem.status(op, "working")
            .unwrap_or_else(|e| panic!("operator {i}: status: {e}"));
        xmem.append(&call, op)
            .unwrap_or_else(|e| panic!("operator {i}: append: {e}"));
        xmem.get_result::<()>(op, WAIT)
            .unwrap_or_else(|e| panic!("operator {i}: result: {e}"));
    }
    let statuses = xmem.statuses().unwrap();
    assert!(
        (256..=256 + 64 + 1).contains(&statuses.len()),
        "{} entries kept",
        statuses.len()
    );
    assert!(guard.stop(WAIT).unwrap());
}

#[test]
fn twenty_thousand_operators_report_and_take_results() {
    operators_report_and_take_results(20_000);
}

#[test]
#[ignore = "long in a debug build: run with --release (CI does)"]
fn a_million_operators_report_and_take_results() {
    operators_report_and_take_results(1_000_000);
}

#[test]
fn statuses_of_ended_processes_are_pruned_first() {
    let xmem = XmemBuilder::new().status_keep(20).build().unwrap();
    let mine: Vec<Operator> = (0..10).map(|_| xmem.alloc_operator()).collect();
    for &op in &mine {
        xmem.status(op, "mine").unwrap();
    }
    for _ in 0..40 {
        let child = fork_child(|| {
            xmem.status(Operator::alloc(), "ended").unwrap();
            0
        })
        .unwrap();
        assert!(child.wait().unwrap().is_success());
    }
    let statuses = xmem.statuses().unwrap();
    assert!(statuses.len() <= 20 + 16, "{}", statuses.len());
    for op in &mine {
        assert_eq!(
            statuses[op].status, "mine",
            "a live process's entry was pruned"
        );
    }
}

#[test]
fn a_heartjumps_stopped_is_its_last_word() {
    let xmem = XmemBuilder::new().build().unwrap();
    let op = xmem.alloc_operator();
    // No Guard yet: beats wait in the buffer.
    let mut beat = HeartJump::new(op, &xmem, Duration::from_millis(2));
    beat.start().unwrap();
    std::thread::sleep(Duration::from_millis(30));
    beat.stop().unwrap();
    assert!(xmem.buffer_len() >= 2, "no beat waits in the buffer");
    assert_eq!(xmem.statuses().unwrap()[&op].status, "stopped");
    // The Guard now runs the old beats: "stopped" stays.
    let guard = Guard::new().spawn(&xmem).unwrap();
    let t = Instant::now();
    while xmem.buffer_len() > 0 {
        assert!(t.elapsed() < WAIT, "the Guard ran no call");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(guard.stop(WAIT).unwrap());
    let s = &xmem.statuses().unwrap()[&op];
    assert_eq!(s.status, "stopped");
    assert!(s.last_word);
    // Starting again makes it beat again.
    beat.start().unwrap();
    assert_eq!(xmem.statuses().unwrap()[&op].status, "alive");
    beat.stop().unwrap();
}

#[test]
fn check_reports_nothing_while_four_processes_write() {
    let xmem = XmemBuilder::new().arena_bytes(8 << 20).build().unwrap();
    let shared = SharedRegion::anonymous(64).unwrap();
    let stop: &AtomicU64 = shared.place(0).unwrap();
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let xmem = &xmem;
            fork_child(move || {
                let mut i = 0u64;
                while stop.load(Ordering::Relaxed) == 0 {
                    let key = format!("k{}", (i * 7 + w) % 64);
                    match i % 5 {
                        0 => {
                            xmem.delete(&[&key], Operator::ADMIN).unwrap();
                        }
                        1 => {
                            let counter = format!("c{}", i % 16);
                            xmem.update_with(&counter, |v: Option<u64>| v.unwrap_or(0) + 1)
                                .unwrap();
                        }
                        _ => xmem.set(&key, &vec![w as u8; (i % 3000) as usize]).unwrap(),
                    }
                    i += 1;
                }
                0
            })
            .unwrap()
        })
        .collect();
    let t = Instant::now();
    let mut checks = 0;
    while t.elapsed() < Duration::from_secs(2) {
        if let Err(e) = xmem.check() {
            stop.store(1, Ordering::Relaxed);
            panic!("check {checks} reported {e} while processes wrote");
        }
        checks += 1;
    }
    stop.store(1, Ordering::Relaxed);
    for w in writers {
        assert!(w.wait().unwrap().is_success());
    }
    assert!(checks > 10, "{checks}");
}
