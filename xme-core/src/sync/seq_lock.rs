//! A sequence lock whose writer word names its pid: readers never block a
//! writer and never keep a torn copy; a writer that died is taken over.

use std::time::Duration;

use super::PidLock;
use super::primitive::{AtomicU64, Ordering, fence};

/// A stamp and a writer word, placeable in a shared region, guarding data
/// that readers copy optimistically. Two ways to write:
///
/// - **In place** ([`write_in_place`](Self::write_in_place)): the stamp is odd
///   while the data changes; a reader that began at an odd stamp, or whose
///   stamp changed by the end of its copy, throws the copy away.
/// - **Double buffer** ([`write_spare`](Self::write_spare)): the data has two
///   copies; the writer fills the one readers are not directed to
///   ([`SpareWrite::spare`]) and [`publish`](SpareWrite::publish)es it, so a
///   reader never waits, and a writer killed mid-write leaves the published
///   copy whole.
///
/// The data itself is read and written with relaxed atomics (or, for bulk
/// copies, plain copies validated by the stamp). The writer word is a
/// [`PidLock`]: a writer killed mid-write is taken over by the next one (an
/// in-place write then continues at the odd stamp it left).
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::time::Duration;
/// use xme_core::{SharedRegion, process, sync::SeqLock};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let region = SharedRegion::anonymous(64)?;
/// let lock: &SeqLock = region.place(0)?;
/// let pair: &[AtomicU64] = region.slice(16, 2)?;
/// let child = process::fork_child(|| {
///     for i in 1..=1000u64 {
///         let _write = lock.write_in_place(Duration::from_secs(1)).unwrap();
///         pair[0].store(i, Ordering::Relaxed);
///         pair[1].store(i, Ordering::Relaxed);
///     }
///     0
/// })?;
/// for _ in 0..1000 {
///     let Some(stamp) = lock.read_begin() else { continue };
///     let (a, b) = (pair[0].load(Ordering::Relaxed), pair[1].load(Ordering::Relaxed));
///     if lock.read_validate(stamp) {
///         assert_eq!(a, b, "a validated copy is never torn");
///     }
/// }
/// assert!(child.wait()?.is_success());
/// # Ok(())
/// # }
/// ```
#[repr(C)]
pub struct SeqLock {
    /// In-place writes: odd while one runs. Double buffer: twice the count of
    /// publications (so always even), whose parity-of-half is the current copy.
    stamp: AtomicU64,
    /// The writer's pid, 0 when none (a [`PidLock`] word).
    writer: AtomicU64,
}

#[cfg(not(loom))]
// SAFETY: two `AtomicU64`s in a `#[repr(C)]` struct (no padding, no
// pointers): valid for every bit pattern. Any stamp is a valid stamp (an odd
// one left by nobody makes in-place readers give up via `writer_alive`, and
// the next writer continues from it); any writer word is a PidLock word
// (a dead or impossible pid is taken over).
unsafe impl crate::InRegion for SeqLock {}

/// Which copy (0 or 1) is current at a double buffer's `stamp`.
fn current_copy(stamp: u64) -> usize {
    ((stamp >> 1) & 1) as usize
}

impl Default for SeqLock {
    fn default() -> Self {
        SeqLock::new()
    }
}

impl std::fmt::Debug for SeqLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeqLock")
            .field("stamp", &self.stamp.load(Ordering::Relaxed))
            .field("writer", &self.writer.load(Ordering::Relaxed))
            .finish()
    }
}

impl SeqLock {
    /// A lock with stamp 0 (copy 0 current, no write running).
    pub fn new() -> SeqLock {
        SeqLock {
            stamp: AtomicU64::new(0),
            writer: AtomicU64::new(0),
        }
    }

    /// Begins an optimistic read: the stamp to validate against, or `None`
    /// while an in-place write runs (try again, or see
    /// [`writer_alive`](Self::writer_alive)).
    #[inline]
    pub fn read_begin(&self) -> Option<u64> {
        // Acquire: the data stores of the write that made this stamp happen
        // before the copy that follows.
        let stamp = self.stamp.load(Ordering::Acquire);
        stamp.is_multiple_of(2).then_some(stamp)
    }

    /// Begins an optimistic read of a double buffer: the stamp to validate
    /// against, and the copy (0 or 1) to read. Never waits: any stamp, even
    /// a corrupt odd one, names a copy.
    #[inline]
    pub fn read_copy_begin(&self) -> (u64, usize) {
        // Acquire: the data stores of the write that published this copy
        // happen before the copy that follows.
        let stamp = self.stamp.load(Ordering::Acquire);
        (stamp, current_copy(stamp))
    }

    /// Ends an optimistic read begun at `stamp`: true if no write touched
    /// what it copied (keep the copy), false if one did (throw it away).
    #[inline]
    pub fn read_validate(&self, stamp: u64) -> bool {
        // Acquire fence: if the copy read any store of a later writer, that
        // writer's release fence (made after it changed the stamp) now
        // synchronises with us, so the load below sees the changed stamp.
        fence(Ordering::Acquire);
        self.stamp.load(Ordering::Relaxed) == stamp
    }

    /// Whether a writer holds the writer word now (alive or not).
    pub fn is_held(&self) -> bool {
        self.writer.load(Ordering::Acquire) != 0
    }

    /// Whether the pid in the writer word runs (false when no write is held,
    /// or its writer died): an in-place read that keeps finding an odd stamp
    /// asks this before it waits any longer.
    #[cfg(not(loom))]
    pub fn writer_alive(&self) -> bool {
        let w = self.writer.load(Ordering::Acquire);
        w != 0 && super::pid_lock::holder_alive(w)
    }

    /// Takes the writer word (waiting at most `patience` for a live holder:
    /// `Err(its pid)` then) and starts an in-place write: the stamp is odd
    /// until the guard drops. A write that a dead writer left unfinished is
    /// continued (its stamp is already odd).
    #[cfg(not(loom))]
    pub fn write_in_place(&self, patience: Duration) -> Result<InPlaceWrite<'_>, u32> {
        self.write_in_place_as(crate::process::current_pid(), patience)
    }

    /// [`write_in_place`](Self::write_in_place) for writer `pid` (the calling
    /// process's pid; under loom a thread's stand-in).
    pub fn write_in_place_as(&self, pid: u32, patience: Duration) -> Result<InPlaceWrite<'_>, u32> {
        let writer = PidLock::take_as(&self.writer, pid, patience)?;
        Ok(InPlaceWrite::begin(self, writer))
    }

    /// Like [`write_in_place`](Self::write_in_place), but takes the writer
    /// word whoever holds it once `patience` passed (for data only one live
    /// process writes by protocol: a live holder past `patience` is a
    /// corrupt word).
    #[cfg(not(loom))]
    pub fn write_in_place_or_seize(&self, patience: Duration) -> InPlaceWrite<'_> {
        let writer = PidLock::take_within(&self.writer, patience)
            .unwrap_or_else(|_| PidLock::seize(&self.writer));
        InPlaceWrite::begin(self, writer)
    }

    /// Takes the writer word (as [`write_in_place`](Self::write_in_place))
    /// for a double-buffered write: fill [`SpareWrite::spare`], then
    /// [`publish`](SpareWrite::publish). Dropped unpublished, it changes nothing.
    #[cfg(not(loom))]
    pub fn write_spare(&self, patience: Duration) -> Result<SpareWrite<'_>, u32> {
        self.write_spare_as(crate::process::current_pid(), patience)
    }

    /// [`write_spare`](Self::write_spare) for writer `pid`.
    pub fn write_spare_as(&self, pid: u32, patience: Duration) -> Result<SpareWrite<'_>, u32> {
        let writer = PidLock::take_as(&self.writer, pid, patience)?;
        // Relaxed: the writer word's acquire ordered us after the last writer.
        // An odd stamp here (a corrupt word) is rounded up on publish.
        let stamp = self.stamp.load(Ordering::Relaxed);
        // Release fence: any reader whose copy sees one of our spare-copy
        // stores also sees this stamp (or a later one) when it validates.
        fence(Ordering::Release);
        Ok(SpareWrite {
            lock: self,
            stamp,
            _writer: writer,
        })
    }
}

/// An in-place write of a [`SeqLock`]: the stamp is odd until this drops.
#[derive(Debug)]
#[must_use = "the write ends (and readers see its data) when this guard drops"]
pub struct InPlaceWrite<'a> {
    lock: &'a SeqLock,
    /// The odd stamp of this write.
    stamp: u64,
    /// Released after the stamp is even again (fields drop in order).
    writer: PidLock<'a>,
}

impl<'a> InPlaceWrite<'a> {
    fn begin(lock: &'a SeqLock, writer: PidLock<'a>) -> InPlaceWrite<'a> {
        let now = lock.stamp.load(Ordering::Relaxed);
        // Odd: a writer died mid-write; continue its write.
        let stamp = now | 1;
        lock.stamp.store(stamp, Ordering::Relaxed);
        // Release fence: a reader whose copy sees any of our data stores also
        // sees this odd stamp (or later) when it validates.
        fence(Ordering::Release);
        InPlaceWrite {
            lock,
            stamp,
            writer,
        }
    }

    /// Whether the previous writer died mid-write (its data may be torn:
    /// rewrite all of it).
    pub fn took_over(&self) -> bool {
        self.writer.took_over()
    }
}

impl Drop for InPlaceWrite<'_> {
    fn drop(&mut self) {
        // Release: a reader that sees the even stamp sees all our data.
        self.lock.stamp.store(self.stamp + 1, Ordering::Release);
    }
}

/// A double-buffered write of a [`SeqLock`]: fill [`spare`](Self::spare),
/// then [`publish`](Self::publish).
#[derive(Debug)]
#[must_use = "a spare write changes nothing until published"]
pub struct SpareWrite<'a> {
    lock: &'a SeqLock,
    stamp: u64,
    _writer: PidLock<'a>,
}

impl SpareWrite<'_> {
    /// The copy (0 or 1) readers read now: read it to build the new data.
    pub fn current(&self) -> usize {
        current_copy(self.stamp)
    }

    /// The copy (0 or 1) to fill.
    pub fn spare(&self) -> usize {
        1 - self.current()
    }

    /// Directs readers to the spare copy, and releases the writer word.
    pub fn publish(self) {
        // Release: a reader that sees the new stamp sees the spare's data.
        let next = (self.stamp | 1) + 1;
        self.lock.stamp.store(next, Ordering::Release);
    }
}

#[cfg(all(test, loom))]
mod loom_models {
    //! `RUSTFLAGS="--cfg loom" cargo test -p xme-core --release --lib`

    use super::*;
    use crate::sync::LOOM_DEAD_PIDS;
    use loom::sync::Arc;
    use loom::thread;

    fn model(f: impl Fn() + Sync + Send + 'static) {
        crate::sync::loom_model(3, f);
    }

    const PATIENCE: Duration = Duration::from_secs(1);

    /// In place: a validated read never holds half of a write.
    #[test]
    fn an_in_place_read_that_validates_is_never_torn() {
        model(|| {
            let lock = Arc::new(SeqLock::new());
            let data = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
            let (l2, d2) = (lock.clone(), data.clone());
            let writer = thread::spawn(move || {
                for v in 1..=2 {
                    let _w = l2.write_in_place_as(1, PATIENCE).unwrap();
                    d2[0].store(v, Ordering::Relaxed);
                    d2[1].store(v, Ordering::Relaxed);
                }
            });
            if let Some(stamp) = lock.read_begin() {
                let a = data[0].load(Ordering::Relaxed);
                let b = data[1].load(Ordering::Relaxed);
                if lock.read_validate(stamp) {
                    assert_eq!(a, b);
                }
            }
            writer.join().unwrap();
        });
    }

    /// Double buffer: a validated read of the current copy is never torn,
    /// even across two publications (the second rewrites the copy read).
    #[test]
    fn a_double_buffered_read_that_validates_is_never_torn() {
        model(|| {
            let lock = Arc::new(SeqLock::new());
            let copies = Arc::new([
                [AtomicU64::new(0), AtomicU64::new(0)],
                [AtomicU64::new(0), AtomicU64::new(0)],
            ]);
            let (l2, c2) = (lock.clone(), copies.clone());
            let writer = thread::spawn(move || {
                for v in 1..=2 {
                    let w = l2.write_spare_as(1, PATIENCE).unwrap();
                    let s = w.spare();
                    c2[s][0].store(v, Ordering::Relaxed);
                    c2[s][1].store(v, Ordering::Relaxed);
                    w.publish();
                }
            });
            let (stamp, current) = lock.read_copy_begin();
            let copy = &copies[current];
            let a = copy[0].load(Ordering::Relaxed);
            let b = copy[1].load(Ordering::Relaxed);
            if lock.read_validate(stamp) {
                assert_eq!(a, b);
            }
            writer.join().unwrap();
        });
    }

    /// A writer that died mid-write (odd stamp, its pid in the word) is taken
    /// over by exactly one of two writers, and the write it left is finished.
    #[test]
    fn a_dead_writer_is_taken_over_once_and_its_write_finished() {
        model(|| {
            let lock = Arc::new(SeqLock::new());
            lock.stamp.store(3, Ordering::Relaxed);
            lock.writer.store(LOOM_DEAD_PIDS + 1, Ordering::Relaxed);
            let took_over = Arc::new(AtomicU64::new(0));
            let hs: Vec<_> = (1..=2u32)
                .map(|pid| {
                    let (l, t) = (lock.clone(), took_over.clone());
                    thread::spawn(move || {
                        let w = l.write_in_place_as(pid, PATIENCE).unwrap();
                        if w.took_over() {
                            t.fetch_add(1, Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            for h in hs {
                h.join().unwrap();
            }
            assert_eq!(took_over.load(Ordering::Relaxed), 1);
            assert_eq!(lock.read_begin(), Some(6));
        });
    }
}
