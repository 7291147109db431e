//! The main process's side of one logical process: its channels, its
//! process, and how its liveness is checked.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use xme_core::Fate;
use xme_core::process::Child;

use crate::channel::{RecvChannel, SendChannel, Waited};
use crate::watch::Watch;

/// Longest sleep before checking a peer is alive.
pub(crate) const LIVENESS: Duration = Duration::from_millis(20);

impl Link<'_> {
    /// The id the logical process knows unit `id` (of this process) by.
    pub(crate) fn unit_id(&self, id: u32) -> u32 {
        self.unit_ids.get(id as usize).copied().unwrap_or(id)
    }
}

/// The sending end of a link with its frame buffer.
pub(crate) struct SendSide<'r> {
    pub(crate) channel: Box<dyn SendChannel + 'r>,
    pub(crate) buf: Vec<u8>,
}

/// The receiving end of a link with its frame buffer.
pub(crate) struct RecvSide<'r> {
    pub(crate) channel: Box<dyn RecvChannel + 'r>,
    pub(crate) buf: Vec<u8>,
}

/// Where a logical process runs.
pub(crate) enum Peer<'r> {
    /// A child forked from this process: its [`Watch`] is in shared memory,
    /// its death is seen by `waitpid`.
    Forked { child: Child, watch: &'r Watch },
    /// A rank of the MPI job (pid on its own host): its [`Watch`] is this
    /// process's, kept by the heartbeat monitor from the rank's messages.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    Rank { pid: i32, watch: Arc<Watch> },
}

/// A link's [`Watch`]: in shared memory, or this process's own.
pub(crate) enum WatchRef<'r> {
    Shared(&'r Watch),
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    Local(Arc<Watch>),
}

impl std::ops::Deref for WatchRef<'_> {
    type Target = Watch;
    fn deref(&self) -> &Watch {
        match self {
            WatchRef::Shared(w) => w,
            WatchRef::Local(w) => w,
        }
    }
}

/// The last beat count seen of a process, and since when.
pub(crate) struct BeatSeen {
    pub(crate) beats: u64,
    pub(crate) since: Instant,
}

/// The main process's side of one logical process.
pub(crate) struct Link<'r> {
    pub(crate) id: usize,
    /// What the process tells of itself: status (when forked), beats, an
    /// overdue call.
    pub(crate) watch: WatchRef<'r>,
    /// Its beats as last seen (see `MpiHandle::health`).
    pub(crate) beat_seen: Mutex<BeatSeen>,
    /// Whether it is a forked child (else a rank of an MPI job).
    pub(crate) forked: bool,
    /// Set when the logical process acknowledged EXIT: every reply it sent
    /// before has been read.
    pub(crate) exit_acked: AtomicBool,
    /// Set when the main process starts closing it: an end seen from now on
    /// is that close's doing (reported as closed, not as a death).
    pub(crate) closing: AtomicBool,
    /// The request channel: one producer at a time.
    pub(crate) send: Mutex<SendSide<'r>>,
    /// The reply channel: one consumer at a time.
    /// A fair lock (`parking_lot`): a thread waiting on a process's
    /// replies holds it in turns, and must hand it over to `close` or
    /// another waiter between turns (std's lock let the holder take it
    /// back at once, for ever).
    pub(crate) recv: parking_lot::Mutex<RecvSide<'r>>,
    pub(crate) child: Mutex<Option<Child>>,
    pub(crate) pid: i32,
    /// Calls sent and not yet answered.
    pub(crate) load: AtomicUsize,
    /// Generation of the next direct call (`block_acquire` without a slot);
    /// written only under `recv`.
    pub(crate) direct_generation: AtomicU32,
    /// Sequence number of the last request sent by the fast lane; written
    /// only under `recv`.
    pub(crate) fast_seq: AtomicU64,
    /// Largest request frame the channel carries.
    pub(crate) max_frame: usize,
    /// Bytes the request channel holds.
    pub(crate) capacity: usize,
    pub(crate) ended: OnceLock<Ended>,
    /// The logical process's id for each unit of this process (by index);
    /// empty: the same ids (a forked copy of this program).
    pub(crate) unit_ids: Vec<u32>,
    /// The host a rank runs on (cluster runs).
    pub(crate) host: Option<String>,
}

impl<'r> Link<'r> {
    pub(crate) fn new(
        id: usize,
        requests: Box<dyn SendChannel + 'r>,
        replies: Box<dyn RecvChannel + 'r>,
        peer: Peer<'r>,
    ) -> Link<'r> {
        let (watch, pid, child) = match peer {
            Peer::Forked { child, watch } => (WatchRef::Shared(watch), child.pid(), Some(child)),
            Peer::Rank { pid, watch } => (WatchRef::Local(watch), pid, None),
        };
        let beat_seen = Mutex::new(BeatSeen {
            beats: watch.beats.load(Ordering::Relaxed),
            since: Instant::now(),
        });
        Link {
            id,
            max_frame: requests.max_frame(),
            capacity: requests.capacity(),
            send: Mutex::new(SendSide {
                channel: requests,
                buf: Vec::new(),
            }),
            recv: parking_lot::Mutex::new(RecvSide {
                channel: replies,
                buf: Vec::new(),
            }),
            watch,
            beat_seen,
            forked: child.is_some(),
            exit_acked: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            pid,
            child: Mutex::new(child),
            load: AtomicUsize::new(0),
            direct_generation: AtomicU32::new(0),
            fast_seq: AtomicU64::new(0),
            ended: OnceLock::new(),
            unit_ids: Vec::new(),
            host: None,
        }
    }
}

/// Why a logical process takes no more calls.
#[derive(Debug, Clone)]
pub(crate) enum Ended {
    /// A forked process died (its fate from `waitpid`).
    Died(Fate),
    /// Closed by the main process: why.
    Closed(String),
    /// Its channel broke, or it could not be waited for: why. A forked
    /// process is killed.
    Broken(String),
    /// A call ran past the run's deadline: the process was killed (forked)
    /// or is treated as hung (a rank).
    Overdue {
        /// The unit of the call that ran over.
        unit: &'static str,
        /// The request slot of that call, and its place in a batch.
        slot: u32,
        position: u32,
        /// How long it had run when reported.
        ran: Duration,
    },
    /// No beat for the detection bound: died or stopped answering.
    Silent(Duration),
    /// A rank that had not finished its queued calls when `close`'s grace
    /// ran out (a rank cannot be killed alone: the job ends instead).
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    Lingered,
}

impl Ended {
    /// Whether the process was lost (died, hung or silent), as opposed to
    /// closed by the main process.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn lost(&self) -> bool {
        !matches!(self, Ended::Closed(_))
    }
}

/// When a thread waiting for replies checks that their process lives: after
/// a wait that found nothing for [`LIVENESS`], and, in case wake-ups keep
/// coming without its reply, once per `LIVENESS` of short waits. Reads the
/// clock only every 64 short waits: a round trip must not pay for it.
#[derive(Default)]
pub(crate) struct LivenessCheck {
    pub(crate) since: Option<Instant>,
    pub(crate) short_waits: u32,
}

impl LivenessCheck {
    pub(crate) fn due(&mut self, waited: Waited) -> bool {
        if matches!(waited, Waited::Idle) {
            self.since = Some(Instant::now());
            return true;
        }
        self.short_waits = self.short_waits.wrapping_add(1);
        if !self.short_waits.is_multiple_of(64) {
            return false;
        }
        let since = *self.since.get_or_insert_with(Instant::now);
        if since.elapsed() < LIVENESS {
            return false;
        }
        self.since = Some(Instant::now());
        true
    }
}

pub(crate) fn log_foreign_reply(link: &Link<'_>, len: usize) {
    // The main process is the user's program: its diagnostics go through
    // `log`, never straight to its stdout.
    log::error!(
        "MPI: dropped a reply of {len} bytes from logical process {} without this run's token",
        link.id
    );
}

/// Locks a mutex, going on if a panicking thread poisoned it (the data it
/// guards is only frame buffers and slot bookkeeping, always left whole).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
