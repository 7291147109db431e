//! Writers killed with SIGKILL at random moments: every key keeps a whole value
//! ever written, readers never see a torn one, and the arena stays consistent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use xme_core::SharedRegion;
use xme_core::process::fork_child;
use xme_shm::{Manager, ShmError, XmemBuilder};

const KEYS: usize = 8;

/// A value that proves it is whole: every element is derived from the stamp.
#[derive(Debug, Serialize, Deserialize)]
struct Stamped {
    stamp: u64,
    data: Vec<u64>,
    check: u64,
}

impl Stamped {
    fn new(stamp: u64) -> Stamped {
        // 50 to 3,000 elements: blocks from 512 B to 32 KiB.
        let n = 50 + (stamp.wrapping_mul(2_654_435_761) % 2950) as usize;
        let data: Vec<u64> = (0..n as u64).map(|i| stamp.wrapping_mul(i + 1)).collect();
        let check = data.iter().fold(stamp, |a, &d| a.rotate_left(5) ^ d);
        Stamped { stamp, data, check }
    }

    fn is_whole(&self) -> bool {
        let again = Stamped::new(self.stamp);
        self.data == again.data && self.check == again.check
    }
}

/// xorshift: reproducible random numbers without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn torture(kills: usize, seed: u64) {
    let xmem = XmemBuilder::new().arena_bytes(16 << 20).build().unwrap();
    for k in 0..KEYS {
        xmem.set(&format!("k{k}"), &Stamped::new(k as u64 + 1))
            .unwrap();
    }
    let shared = SharedRegion::anonymous(64).unwrap();
    let stop: &AtomicU64 = shared.place(0).unwrap();
    let torn: &AtomicU64 = shared.place(8).unwrap();
    let reads: &AtomicU64 = shared.place(16).unwrap();
    let stamps: &AtomicU64 = shared.place(24).unwrap();

    // A reader checks every value it sees, all the time.
    let reader = fork_child(|| {
        while stop.load(Ordering::Relaxed) == 0 {
            for k in 0..KEYS {
                match xmem.get::<Stamped>(&format!("k{k}")) {
                    Ok(v) if v.is_whole() => {}
                    Ok(_) | Err(ShmError::WrongType { .. }) => {
                        torn.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => {} // deleted for a moment
                }
                reads.fetch_add(1, Ordering::Relaxed);
            }
        }
        0
    })
    .unwrap();

    let mut rng = Rng(seed);
    for round in 0..kills {
        let writer_seed = rng.next();
        let xmem: &Manager = &xmem;
        let writer = fork_child(move || {
            let mut rng = Rng(writer_seed | 1);
            loop {
                let k = (rng.next() % KEYS as u64) as usize;
                let key = format!("k{k}");
                match rng.next() % 10 {
                    0 => {
                        let _ = xmem.delete(&[&key], xme_core::Operator::ADMIN);
                    }
                    1 => {
                        let _ = xmem.update_with(&key, |v: Option<Stamped>| {
                            Stamped::new(v.map_or(1, |v| v.stamp.wrapping_add(1)))
                        });
                    }
                    _ => {
                        let stamp = stamps.fetch_add(1, Ordering::Relaxed) + 1000;
                        let _ = xmem.set(&key, &Stamped::new(stamp));
                    }
                }
            }
        })
        .unwrap();
        // Let it run 0 to ~2 ms, then kill it wherever it is.
        let spin = rng.next() % 2000;
        if spin > 100 {
            std::thread::sleep(Duration::from_micros(spin));
        }
        let fate = writer.kill().unwrap();
        assert_eq!(fate.signal(), Some(9), "round {round}: writer {fate}");
    }
    stop.store(1, Ordering::SeqCst);
    assert!(reader.wait().unwrap().is_success());

    assert_eq!(torn.load(Ordering::SeqCst), 0, "a reader saw a torn value");
    assert!(reads.load(Ordering::SeqCst) > 0);
    // Every key holds a whole value ever written (or was deleted).
    for k in 0..KEYS {
        match xmem.get::<Stamped>(&format!("k{k}")) {
            Ok(v) => assert!(v.is_whole(), "key k{k} holds a torn value"),
            Err(ShmError::NotFound(_)) => {}
            Err(e) => panic!("key k{k}: {e}"),
        }
    }
    // Blocks left by killed writers are swept; what stays is exactly the
    // published entries.
    xmem.sweep();
    let stats = xmem.check().unwrap();
    assert_eq!(stats.writing_blocks, 0, "{stats:?}");
    let live_keys = xmem.keys_claimed(); // live + deleted keys, each one block
    assert_eq!(stats.live_blocks, live_keys, "{stats:?}");
    // The lock is not held by a dead writer.
    assert!(
        xmem.security()
            .holder()
            .is_none_or(|(_, pid)| xme_core::process::is_alive(pid as i32))
    );
}

#[test]
fn two_thousand_kills() {
    torture(2000, 0x5eed_1234_abcd_0001);
}

#[test]
#[ignore = "long: 20,000 kills (several minutes)"]
fn twenty_thousand_kills() {
    torture(20_000, 0x5eed_1234_abcd_0002);
}
