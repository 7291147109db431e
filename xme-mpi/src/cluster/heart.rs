//! Heartbeats between rank 0 and the other ranks (see `crate::watch`).
//!
//! Every rank's watcher thread sends rank 0 a note every period (a quarter
//! of the detection bound), and a note when its running call passes the
//! deadline. Rank 0's monitor thread sends every rank a beat each period,
//! and keeps each rank's [`Watch`] from its notes, which the main process
//! reads like a forked process's shared words. A rank that hears nothing
//! from rank 0 for the detection bound ends the job: rank 0 is dead or
//! frozen, and nobody else would end it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::TAG_WATCH;
use super::channel::{RankReceiver, RankSender, World};
use crate::backend::ABORT_STATUS;
use crate::channel::{RecvChannel, SendChannel};
use crate::watch::{Heart, Overdue, StopFlag, Watch, WatchPlan};

/// Bytes of heartbeat notes in flight to one rank, at most.
const NOTE_BYTES: usize = 4096;

/// What a watcher tells the other side.
#[derive(Serialize, Deserialize)]
enum Note {
    Beat,
    Overdue(Overdue),
}

fn send(to: &mut RankSender, note: &Note) {
    let bytes = postcard::to_stdvec(note).expect("notes encode");
    // A full channel means the peer takes nothing: this beat is not needed.
    let _ = to.try_send(&bytes);
}

/// A serving rank's heart: notes to rank 0, and rank 0's beats heard.
pub(super) struct RankHeart {
    world: Arc<World>,
    rank: usize,
    to_root: RankSender,
    from_root: RankReceiver,
    root_heard: Instant,
    detection: Duration,
    buf: Vec<u8>,
}

impl RankHeart {
    pub(super) fn new(world: Arc<World>, rank: usize, detection: Duration) -> RankHeart {
        RankHeart {
            to_root: RankSender::new(world.clone(), 0, TAG_WATCH, NOTE_BYTES),
            from_root: RankReceiver::new(world.clone(), 0, TAG_WATCH),
            world,
            rank,
            root_heard: Instant::now(),
            detection,
            buf: Vec::new(),
        }
    }
}

impl Heart for RankHeart {
    fn beat(&mut self) {
        send(&mut self.to_root, &Note::Beat);
        while let Ok(true) = self.from_root.try_recv(&mut self.buf) {
            self.root_heard = Instant::now();
        }
        let silent = self.root_heard.elapsed();
        if silent >= self.detection {
            eprintln!(
                "xme-mpi rank {}: rank 0 gave no sign of life for {silent:?} (Mpi::failure_detection): \
                 it died or stopped; ending the MPI job (MPI_Abort, status {ABORT_STATUS})",
                self.rank
            );
            self.world.abort(ABORT_STATUS);
        }
    }

    fn overdue(&mut self, call: Overdue) {
        send(&mut self.to_root, &Note::Overdue(call));
    }
}

/// Rank 0's monitor thread: beats to every rank each period, and each
/// rank's notes into its [`Watch`] (`watches[i]` is rank `i + 1`'s), read
/// every sixteenth of the detection bound (or eighth of the deadline, if
/// shorter), until `stop`.
pub(super) fn monitor(
    world: &Arc<World>,
    watches: &[Arc<Watch>],
    plan: WatchPlan,
    stop: &StopFlag,
) {
    let mut peers: Vec<(RankSender, RankReceiver)> = (1..=watches.len())
        .map(|rank| {
            (
                RankSender::new(world.clone(), rank, TAG_WATCH, NOTE_BYTES),
                RankReceiver::new(world.clone(), rank, TAG_WATCH),
            )
        })
        .collect();
    let mut buf = Vec::new();
    let mut next_beat = Instant::now();
    while !stop.stopped() {
        let beat = Instant::now() >= next_beat;
        if beat {
            next_beat = Instant::now() + plan.period();
        }
        for ((to, from), watch) in peers.iter_mut().zip(watches) {
            if beat {
                send(to, &Note::Beat);
            }
            while let Ok(true) = from.try_recv(&mut buf) {
                match postcard::from_bytes::<Note>(&buf) {
                    Ok(Note::Beat) => {
                        watch.beats.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Note::Overdue(call)) => watch.set_overdue(call),
                    Err(_) => log::error!("MPI: dropped a heartbeat note that does not decode"),
                }
            }
        }
        std::thread::park_timeout(plan.note_reading());
    }
}

/// Bounds a rank's start (`MPI_Init`, the handshake): a rank that dies
/// while the job starts leaves the others waiting in `MPI_Init`'s fence for
/// ever, under a launcher that does not end the job for it (`srun` without
/// `-K`). Past `limit`, this process leaves with [`ABORT_STATUS`] (no
/// `MPI_Abort` can be called before `MPI_Init` returns), and the launcher
/// then ends with every rank gone. Disarmed when dropped.
pub(super) struct StartWatchdog {
    armed: Arc<(Mutex<bool>, Condvar)>,
}

impl StartWatchdog {
    pub(super) fn arm(limit: Duration) -> StartWatchdog {
        let armed = Arc::new((Mutex::new(true), Condvar::new()));
        let watch = armed.clone();
        let spawned = std::thread::Builder::new()
            .name("xme-mpi-start".into())
            .spawn(move || {
                let (lock, changed) = &*watch;
                let guard = lock.lock().unwrap_or_else(|p| p.into_inner());
                let (still, _) = changed
                    .wait_timeout_while(guard, limit, |armed| *armed)
                    .unwrap_or_else(|p| p.into_inner());
                if *still {
                    eprintln!(
                        "xme-mpi: the MPI job did not start within {limit:?} (3 x \
                         Mpi::failure_detection + 5 s): a rank died or hangs while starting; \
                         leaving with status {ABORT_STATUS}"
                    );
                    // SAFETY: _exit ends the process at once, whatever the
                    // other threads do (one is blocked in MPI); nothing is
                    // left to run or flush that the message above needed.
                    unsafe { libc::_exit(ABORT_STATUS) };
                }
            });
        if spawned.is_err() {
            log::error!("MPI: could not start the start watchdog thread");
        }
        StartWatchdog { armed }
    }
}

impl Drop for StartWatchdog {
    fn drop(&mut self) {
        let (lock, changed) = &*self.armed;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = false;
        changed.notify_all();
    }
}
