//! The server's memory of requests already served: their marks, kept while
//! their time is admissible, within a bound in bytes.

use std::collections::{BinaryHeap, HashSet};

/// How far a request's time may be from the server's clock. A mark is
/// remembered for as long as its request's time is admissible (until that
/// time plus the window has passed), so a replay within it is refused as a
/// replay and one after it as stale.
const REPLAY_WINDOW_MS: u64 = 5 * 60 * 1000;
/// Bytes one remembered mark may cost at most: a 16-byte digest in a hash
/// set and, with its expiry, in a heap, both at their largest growth.
pub(crate) const MARK_BYTES: usize = 128;

/// Marks of requests whose time is still admissible, server-wide, kept as
/// 128-bit keyed digests: a mark costs the same few bytes whatever its length.
pub(crate) struct Replays {
    /// Digests of admitted requests' marks whose time is still admissible.
    seen: HashSet<u128>,
    /// The same digests by expiry, soonest first.
    expiry: BinaryHeap<std::cmp::Reverse<(u64, u128)>>,
    /// Marks remembered at most (the byte bound over [`MARK_BYTES`]).
    capacity: usize,
    /// The digest's key, random per server: a peer cannot make two marks
    /// collide on purpose.
    key: (u64, u64),
}

impl Replays {
    pub(crate) fn new(bytes: usize) -> Replays {
        let mut key = [0u8; 16];
        // Without randomness a fixed key still tells marks apart; only a
        // collision made on purpose (a refused request, never an admitted
        // replay) would need the key.
        let _ = getrandom::fill(&mut key);
        Replays {
            seen: HashSet::new(),
            expiry: BinaryHeap::new(),
            capacity: (bytes / MARK_BYTES).max(1),
            key: (
                u64::from_le_bytes(key[..8].try_into().expect("8 bytes")),
                u64::from_le_bytes(key[8..].try_into().expect("8 bytes")),
            ),
        }
    }

    fn digest(&self, mark: &str) -> u128 {
        use std::hash::Hasher;
        let mut h = siphasher::sip128::SipHasher13::new_with_keys(self.key.0, self.key.1);
        h.write(mark.as_bytes());
        siphasher::sip128::Hasher128::finish128(&h).as_u128()
    }

    /// `Err` with the kind and reason if the request must be refused.
    pub(crate) fn admit(
        &mut self,
        mark: &str,
        time_ms: u64,
        now: u64,
    ) -> Result<(), (&'static str, String)> {
        // Forget only marks whose requests can no longer be admitted anyway.
        while let Some(std::cmp::Reverse((until, _))) = self.expiry.peek() {
            if *until >= now {
                break;
            }
            let std::cmp::Reverse((_, old)) = self.expiry.pop().expect("peeked");
            self.seen.remove(&old);
        }
        if time_ms.abs_diff(now) > REPLAY_WINDOW_MS {
            return Err((
                "stale",
                format!(
                    "request time {time_ms} is more than {REPLAY_WINDOW_MS} ms from the server's clock {now}"
                ),
            ));
        }
        let digest = self.digest(mark);
        if self.seen.contains(&digest) {
            return Err((
                "replayed",
                format!("mark {:.64} was already used: a replayed request", mark),
            ));
        }
        if self.seen.len() >= self.capacity {
            // Forgetting a live mark would let its request be replayed: refuse instead.
            return Err((
                "busy",
                format!(
                    "the server remembers {} request marks of the last {} s, all its replay memory holds; try again later",
                    self.capacity,
                    REPLAY_WINDOW_MS / 1000
                ),
            ));
        }
        self.seen.insert(digest);
        self.expiry
            .push(std::cmp::Reverse((time_ms + REPLAY_WINDOW_MS, digest)));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60 * 1000;

    #[test]
    fn a_mark_is_remembered_while_its_time_is_admissible() {
        let mut r = Replays::new(100 * MARK_BYTES);
        let now = 1_000 * MIN;
        // A request stamped 4 minutes ahead of the server's clock.
        r.admit("ahead", now + 4 * MIN, now).unwrap();
        // 305 s later its time is still admissible: a replay is refused as one.
        let later = now + 5 * MIN + 5_000;
        assert_eq!(
            r.admit("ahead", now + 4 * MIN, later).unwrap_err().0,
            "replayed"
        );
        // Once its time is past the window, it is refused as stale.
        let much_later = now + 9 * MIN + 1;
        assert_eq!(
            r.admit("ahead", now + 4 * MIN, much_later).unwrap_err().0,
            "stale"
        );
        // ... and only then forgotten.
        assert!(!r.seen.contains(&r.digest("ahead")));
    }

    #[test]
    fn a_full_memory_refuses_new_requests_and_forgets_nothing_early() {
        let mut r = Replays::new(3 * MARK_BYTES);
        let now = 1_000 * MIN;
        for m in ["a", "b", "c"] {
            r.admit(m, now, now).unwrap();
        }
        let (kind, why) = r.admit("d", now, now + 1).unwrap_err();
        assert_eq!(kind, "busy", "{why}");
        for m in ["a", "b", "c"] {
            assert_eq!(r.admit(m, now, now + 2).unwrap_err().0, "replayed");
        }
        // When the old marks' times pass the window, room is made again.
        r.admit("d", now + 6 * MIN, now + 6 * MIN).unwrap();
    }

    #[test]
    fn marks_cost_the_same_whatever_their_length_and_stay_in_the_byte_bound() {
        let bound = 1000 * MARK_BYTES;
        let mut r = Replays::new(bound);
        let now = 1_000 * MIN;
        let long = "m".repeat(64 << 10);
        let mut admitted = 0;
        for i in 0..2000 {
            match r.admit(&format!("{i}{long}"), now, now) {
                Ok(()) => admitted += 1,
                Err((kind, _)) => assert_eq!(kind, "busy"),
            }
        }
        assert_eq!(admitted, 1000);
        // What the two collections hold, at their allocated sizes.
        let held = r.seen.capacity() * (std::mem::size_of::<u128>() + 1)
            + r.expiry.capacity() * std::mem::size_of::<std::cmp::Reverse<(u64, u128)>>();
        assert!(held <= bound, "{held} bytes for a bound of {bound}");
        // A replay of a long mark is still seen.
        assert_eq!(
            r.admit(&format!("7{long}"), now, now + 1).unwrap_err().0,
            "replayed"
        );
    }
}
