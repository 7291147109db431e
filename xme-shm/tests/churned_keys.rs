//! A key other processes insert and delete without pause: a read-modify-write
//! on it sees them make progress, never a "corrupt table" (found by an
//! independent review of #26: absent, then a conflict, then absent again was
//! taken for a stuck slot).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use xme_core::process::fork_child;
use xme_core::{Operator, SharedRegion};
use xme_shm::XmemBuilder;

#[test]
fn update_with_on_a_key_others_insert_and_delete_never_reports_corruption() {
    let xmem = XmemBuilder::new().capacity(64).build().unwrap();
    // Counters shared with the children: stop, updates done, errors seen.
    let region = SharedRegion::anonymous(3 * 8).unwrap();
    let word = |i: usize| region.place::<AtomicU64>(i * 8).unwrap();
    let (stop, updates, errors) = (word(0), word(1), word(2));
    let churners: Vec<_> = (0..2u64)
        .map(|p| {
            let xmem = &xmem;
            fork_child(move || {
                while stop.load(Ordering::Relaxed) == 0 {
                    if p == 0 {
                        xmem.set("flip", &1u64).unwrap();
                    }
                    xmem.delete(&["flip"], Operator::ADMIN).unwrap();
                }
                0
            })
            .unwrap()
        })
        .collect();
    let xmem2 = &xmem;
    let updater = fork_child(move || {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(2) {
            match xmem2.update_with("flip", |v: Option<u64>| v.unwrap_or(0) + 1) {
                Ok(_) => updates.fetch_add(1, Ordering::SeqCst),
                Err(e) => {
                    eprintln!("update_with: {e}");
                    errors.fetch_add(1, Ordering::SeqCst)
                }
            };
        }
        0
    })
    .unwrap();
    assert!(updater.wait().unwrap().is_success());
    stop.store(1, Ordering::SeqCst);
    for c in churners {
        assert!(c.wait().unwrap().is_success());
    }
    let (ok, bad) = (
        updates.load(Ordering::SeqCst),
        errors.load(Ordering::SeqCst),
    );
    assert_eq!(
        bad, 0,
        "update_with failed {bad} times on a churned key ({ok} succeeded)"
    );
    assert!(ok > 0, "no update went through");
    // A key nobody churns is still updated exactly.
    for _ in 0..100 {
        xmem.update_with("steady", |v: Option<u64>| v.unwrap_or(0) + 1)
            .unwrap();
    }
    assert_eq!(xmem.get::<u64>("steady").unwrap(), 100);
}
