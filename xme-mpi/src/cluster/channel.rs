//! MPI messages as the channels of the cluster backend: one lock for every
//! MPI call of the process ([`World`]), non-blocking sends that own their
//! buffers until done ([`RankSender`]), probing receives ([`RankReceiver`]),
//! and the polling wait both use.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mpi::request::{Request, StaticScope};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use crate::channel::{Corrupt, RecvChannel, SendChannel, Waited};

/// How long dropping a sender waits for its sends to finish before giving
/// them up (a peer that is gone never takes them).
const SEND_DRAIN: Duration = Duration::from_secs(2);

/// The largest frame sent as one message on its channel's tag, into the
/// receive its reader keeps posted. A larger frame (or an empty one) goes
/// as an empty message on that tag, then its bytes on [`big_tag`], which
/// the reader probes for: a posted receive must be as large as any
/// message it may match (a larger one is a fatal truncation error).
const SMALL_FRAME: usize = 64 * 1024;

/// The tag of the bytes of a channel's large frames.
fn big_tag(tag: i32) -> i32 {
    tag + 16
}

/// The world communicator, behind the one lock every MPI call of this
/// process takes.
pub(crate) struct World {
    comm: Mutex<SimpleCommunicator>,
    /// How a waiting side polls before it sleeps.
    pub(super) polling: Polling,
}

// SAFETY: MPI was initialised with MPI_THREAD_SERIALIZED (checked in `run`),
// under which any thread may call MPI as long as no two do at once; every
// use of `comm` (and of requests made through it) holds the mutex.
unsafe impl Send for World {}
// SAFETY: as above.
unsafe impl Sync for World {}

impl World {
    pub(super) fn new(comm: SimpleCommunicator, polling: Polling) -> World {
        World {
            comm: Mutex::new(comm),
            polling,
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, SimpleCommunicator> {
        self.comm.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends the whole MPI job (`MPI_Abort` on the world): every rank, on
    /// every host, through the launcher, which then exits non-zero. Taken
    /// under the world lock, as every MPI call of this process.
    pub(super) fn abort(&self, code: i32) -> ! {
        self.lock().abort(code)
    }
}

/// How long a waiting side polls before it sleeps: long where every rank of
/// this host has a core (an answer comes within microseconds, and spinning
/// costs nobody), very short where ranks outnumber cores (a spinning rank
/// takes the time the others need to compute). There is no wake-up across
/// MPI, so a side that sleeps notices a message only when it wakes: the
/// spin must outlast the peer's whole turn, or both sides fall into a
/// convoy of sleeps (measured: 0.65 ms per round trip with a 200-poll spin,
/// against 1-2 µs spinning).
#[derive(Clone, Copy)]
pub(super) struct Polling {
    spin: Duration,
    yields: Duration,
}

impl Polling {
    pub(super) const DEDICATED: Polling = Polling {
        spin: Duration::from_micros(200),
        yields: Duration::from_micros(100),
    };
    /// Yielding (not sleeping) for a while lets the rank whose turn it is
    /// run at once, and costs nothing a runnable rank needs.
    pub(super) const SHARED: Polling = Polling {
        spin: Duration::from_micros(2),
        yields: Duration::from_micros(50),
    };
}

/// Polls `ready` until it holds or `max` passed: spins (each poll is an
/// `MPI_Iprobe` or `MPI_Test` under the world lock), then yields, then
/// sleeps 20 µs doubling to 1 ms, so an idle rank leaves its core free.
fn poll_until(polling: Polling, max: Duration, mut ready: impl FnMut() -> bool) -> Waited {
    // Most waits of a round trip end within the first polls: no clock read.
    for _ in 0..16 {
        if ready() {
            return Waited::Ready;
        }
    }
    let start = Instant::now();
    while start.elapsed() < polling.spin {
        for _ in 0..16 {
            if ready() {
                return Waited::Ready;
            }
            std::hint::spin_loop();
        }
    }
    while start.elapsed() < polling.spin + polling.yields {
        if ready() {
            return Waited::Ready;
        }
        std::thread::yield_now();
    }
    let mut pause = Duration::from_micros(20);
    loop {
        if ready() {
            return Waited::Ready;
        }
        let left = max.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Waited::Idle;
        }
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(Duration::from_millis(1));
    }
}

/// A send MPI has not finished with: it owns its buffer until then.
struct PendingSend {
    request: Request<'static, [u8], StaticScope>,
    /// The buffer `request` reads, leaked to give it a `'static` borrow;
    /// taken back when the send completes.
    buf: *mut [u8],
}

/// Takes back the buffer of a completed send.
///
/// # Safety
/// `buf` must come from `Box::leak` in [`RankSender::try_send`] and its send
/// must have completed (`MPI_Test` or `MPI_Wait` said so): MPI no longer
/// reads it and no other reference to it exists.
unsafe fn reclaim(buf: *mut [u8]) -> Vec<u8> {
    // SAFETY: guaranteed by the caller.
    unsafe { Box::from_raw(buf) }.into_vec()
}

/// Messages of one tag to one rank: non-blocking sends, at most `capacity`
/// bytes in flight (frames over [`SMALL_FRAME`] in two messages).
pub(crate) struct RankSender {
    world: Arc<World>,
    rank: i32,
    tag: i32,
    pending: VecDeque<PendingSend>,
    pending_bytes: usize,
    /// Buffers of completed sends, reused.
    spare: Vec<Vec<u8>>,
    max_frame: usize,
    capacity: usize,
}

// SAFETY: the requests and leaked buffers are touched only by the owner of
// this sender (`&mut self`), and every MPI call on them holds the world lock
// (MPI_THREAD_SERIALIZED allows any thread to make them, one at a time).
unsafe impl Send for RankSender {}

impl RankSender {
    pub(super) fn new(
        world: Arc<World>,
        rank: usize,
        tag: i32,
        channel_bytes: usize,
    ) -> RankSender {
        RankSender {
            world,
            rank: rank as i32,
            tag,
            pending: VecDeque::new(),
            pending_bytes: 0,
            spare: Vec::new(),
            max_frame: channel_bytes / 2,
            capacity: channel_bytes,
        }
    }

    /// Takes back the buffers of the sends MPI has finished, oldest first.
    /// The caller holds the world lock.
    fn reap_locked(&mut self) {
        while let Some(PendingSend { request, buf }) = self.pending.pop_front() {
            match request.test() {
                Ok(_) => {
                    // SAFETY: `buf` was leaked by `try_send` for this send,
                    // which just completed.
                    let buf = unsafe { reclaim(buf) };
                    self.pending_bytes -= buf.len();
                    if self.spare.len() < 8 {
                        self.spare.push(buf);
                    }
                }
                Err(request) => {
                    self.pending.push_front(PendingSend { request, buf });
                    break;
                }
            }
        }
    }

    /// Starts a send of a copy of `frame` with `tag` (the caller holds the
    /// world lock, `comm`).
    fn send_locked(&mut self, comm: &SimpleCommunicator, frame: &[u8], tag: i32) {
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(frame);
        let leaked: &'static mut [u8] = Box::leak(buf.into_boxed_slice());
        let ptr: *mut [u8] = leaked;
        // SAFETY: `ptr` is the leaked box just made; the shared borrow lent to
        // MPI lives until the send completes, and the box is only taken back
        // then (`reap`, `drop`).
        let data: &'static [u8] = unsafe { &*ptr };
        let request =
            comm.process_at_rank(self.rank)
                .immediate_send_with_tag(StaticScope, data, tag);
        self.pending_bytes += frame.len();
        self.pending.push_back(PendingSend { request, buf: ptr });
    }

    fn has_room(&self, len: usize) -> bool {
        self.pending.is_empty() || self.pending_bytes + len <= self.capacity
    }
}

impl SendChannel for RankSender {
    fn try_send(&mut self, frame: &[u8]) -> bool {
        let world = self.world.clone();
        let comm = world.lock();
        self.reap_locked();
        if !self.has_room(frame.len()) {
            return false;
        }
        if frame.is_empty() || frame.len() > SMALL_FRAME {
            // The announcement, then the bytes (in order: one sender per
            // tag and rank, and MPI keeps the order of each tag).
            self.send_locked(&comm, &[], self.tag);
            self.send_locked(&comm, frame, big_tag(self.tag));
        } else {
            self.send_locked(&comm, frame, self.tag);
        }
        true
    }

    fn wait_send(&mut self, len: usize, max: Duration) -> Waited {
        let world = self.world.clone();
        poll_until(world.polling, max, || {
            let _comm = world.lock();
            self.reap_locked();
            self.has_room(len)
        })
    }

    fn max_frame(&self) -> usize {
        self.max_frame
    }

    fn capacity(&self) -> usize {
        self.capacity
    }

    fn inject_corrupt(&mut self) {
        // A frame with no valid header: its reader drops it (no token).
        self.try_send(&[0xA5; 8]);
    }
}

impl Drop for RankSender {
    fn drop(&mut self) {
        // Every send completes before its buffer goes (and before MPI is
        // finalised, which drops the world after every channel), unless the
        // peer never takes it: after SEND_DRAIN the rest is given up, its
        // buffers leaked (MPI may still read them), with a log line.
        let world = self.world.clone();
        let start = Instant::now();
        while !self.pending.is_empty() && start.elapsed() < SEND_DRAIN {
            {
                let _comm = world.lock();
                self.reap_locked();
            }
            if !self.pending.is_empty() {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        if !self.pending.is_empty() {
            log::error!(
                "MPI: {} message(s) to rank {} not taken within {SEND_DRAIN:?}; given up",
                self.pending.len(),
                self.rank
            );
        }
        for PendingSend { request, .. } in self.pending.drain(..) {
            // SAFETY: the request is left to MPI, never waited on again; its
            // buffer (leaked by `try_send`) is never taken back, so MPI may
            // read it for as long as the process lives.
            let _ = unsafe { request.into_raw() };
        }
    }
}

/// Messages of one tag from one rank: a receive of up to [`SMALL_FRAME`]
/// bytes stays posted (testing it is cheaper than probing, and a frame
/// that arrives lands in place); a larger frame is announced there and
/// probed for on [`big_tag`].
pub(crate) struct RankReceiver {
    world: Arc<World>,
    rank: i32,
    tag: i32,
    /// The posted receive and its buffer.
    posted: Option<PostedReceive>,
    /// The buffer of the last receive, while no receive is posted.
    spare: Option<*mut [u8]>,
    /// What the last wait found, taken by the next `try_recv`.
    arrived: Option<Arrived>,
}

/// A receive MPI may be writing into: its buffer is MPI's until it ends.
struct PostedReceive {
    request: Request<'static, [u8], StaticScope>,
    /// The buffer `request` writes, leaked to give it a `'static` borrow;
    /// taken back when the receive completes (or is cancelled).
    buf: *mut [u8],
}

/// A frame found by a wait and not yet taken.
enum Arrived {
    /// In `spare`'s first `len` bytes.
    Small(usize),
    /// Announced: its bytes are on the big tag, not yet matched.
    Announced,
    /// Matched on the big tag and being received (`MPI_Imrecv`, never a
    /// blocking receive: over TCP a large message moves only when its
    /// sender next calls MPI, and a blocking receive would hold the world
    /// lock, every other rank's traffic and the heartbeats, until then).
    Receiving(PostedReceive),
    /// Received whole: the buffer of `Receiving`, taken back.
    Big(Vec<u8>),
}

// SAFETY: the request, the leaked buffers and the matched message are used
// only by the owner of this receiver (`&mut self`), and every MPI call on
// them holds the world lock (MPI_THREAD_SERIALIZED).
unsafe impl Send for RankReceiver {}

impl RankReceiver {
    pub(super) fn new(world: Arc<World>, rank: usize, tag: i32) -> RankReceiver {
        let buf: *mut [u8] = Box::leak(vec![0u8; SMALL_FRAME].into_boxed_slice());
        RankReceiver {
            world,
            rank: rank as i32,
            tag,
            posted: None,
            spare: Some(buf),
            arrived: None,
        }
    }

    /// Looks for the next frame from the rank (the caller holds the world
    /// lock, `comm`): whether one arrived.
    fn probe(&mut self, comm: &SimpleCommunicator) -> Result<bool, Corrupt> {
        match self.arrived {
            Some(Arrived::Small(_) | Arrived::Big(_)) => return Ok(true),
            Some(Arrived::Announced) => return self.probe_big(comm),
            Some(Arrived::Receiving(_)) => return Ok(self.test_big()),
            None => {}
        }
        if let Some(buf) = self.spare.take() {
            // SAFETY: `buf` is the leaked box of `new`, not lent to MPI now
            // (no receive is posted); the borrow lent to the receive lives
            // until it completes or is cancelled, and only then is the
            // buffer read again (`spare`) or taken back (`drop`).
            let data: &'static mut [u8] = unsafe { &mut *buf };
            let request = comm
                .process_at_rank(self.rank)
                .immediate_receive_into_with_tag(StaticScope, data, self.tag);
            self.posted = Some(PostedReceive { request, buf });
        }
        let PostedReceive { request, buf } = self.posted.take().expect("posted above");
        match request.test() {
            Err(request) => {
                self.posted = Some(PostedReceive { request, buf });
                Ok(false)
            }
            Ok(status) => {
                self.spare = Some(buf);
                let len = status.count(u8::equivalent_datatype());
                match usize::try_from(len) {
                    Ok(0) => {
                        self.arrived = Some(Arrived::Announced);
                        self.probe_big(comm)
                    }
                    Ok(len) => {
                        self.arrived = Some(Arrived::Small(len));
                        Ok(true)
                    }
                    Err(_) => Err(Corrupt(format!(
                        "a message of {len} bytes from rank {}",
                        self.rank
                    ))),
                }
            }
        }
    }

    /// Matches the bytes of an announced large frame, if they came.
    fn probe_big(&mut self, comm: &SimpleCommunicator) -> Result<bool, Corrupt> {
        let Some((message, status)) = comm
            .process_at_rank(self.rank)
            .immediate_matched_probe_with_tag(big_tag(self.tag))
        else {
            return Ok(false);
        };
        let len = status.count(u8::equivalent_datatype());
        match usize::try_from(len) {
            Ok(len) => {
                let buf: *mut [u8] = Box::leak(vec![0u8; len].into_boxed_slice());
                // SAFETY: `buf` is the leaked box just made; the borrow lent
                // to the receive lives until it completes (`test_big`) or
                // is cancelled (`drop`), and only then is the box taken back.
                let data: &'static mut [u8] = unsafe { &mut *buf };
                let request = message.immediate_matched_receive_into(StaticScope, data);
                self.arrived = Some(Arrived::Receiving(PostedReceive { request, buf }));
                Ok(self.test_big())
            }
            Err(_) => {
                self.arrived = None;
                message.matched_receive_into(&mut [0u8; 0][..]);
                Err(Corrupt(format!(
                    "a message of {len} bytes from rank {}",
                    self.rank
                )))
            }
        }
    }
}

impl RankReceiver {
    /// [`test_big`](Self::test_big), taking the world lock.
    fn test_big_locked(&mut self) -> bool {
        let world = self.world.clone();
        let _comm = world.lock();
        self.test_big()
    }

    /// Whether the large frame being received has come whole (the caller
    /// holds the world lock).
    fn test_big(&mut self) -> bool {
        let Some(Arrived::Receiving(PostedReceive { request, buf })) = self.arrived.take() else {
            unreachable!("called while a large frame is being received");
        };
        match request.test() {
            Ok(_) => {
                // SAFETY: `buf` was leaked by `probe_big` for this receive,
                // which just completed: MPI no longer writes it.
                let bytes = unsafe { Box::from_raw(buf) }.into_vec();
                self.arrived = Some(Arrived::Big(bytes));
                true
            }
            Err(request) => {
                self.arrived = Some(Arrived::Receiving(PostedReceive { request, buf }));
                false
            }
        }
    }
}

impl RecvChannel for RankReceiver {
    fn try_recv(&mut self, out: &mut Vec<u8>) -> Result<bool, Corrupt> {
        let world = self.world.clone();
        let comm = world.lock();
        if !self.probe(&comm)? {
            return Ok(false);
        }
        match self.arrived.take().expect("probed") {
            Arrived::Small(len) => {
                let buf = self
                    .spare
                    .expect("a completed receive gives its buffer back");
                // SAFETY: the receive into `buf` completed (`probe`), so MPI
                // no longer writes it, and no receive is posted into it.
                let bytes: &[u8] = unsafe { &*buf };
                out.clear();
                out.extend_from_slice(&bytes[..len]);
            }
            Arrived::Big(bytes) => *out = bytes,
            Arrived::Announced | Arrived::Receiving(_) => {
                unreachable!("probe returns true only once received")
            }
        }
        Ok(true)
    }

    fn wait_recv(&mut self, max: Duration) -> Waited {
        let world = self.world.clone();
        poll_until(world.polling, max, || {
            // A corrupt length is reported by the next `try_recv`.
            self.probe(&world.lock()).unwrap_or(true)
        })
    }
}

impl Drop for RankReceiver {
    fn drop(&mut self) {
        // A large frame being received must end before its buffer goes (a
        // matched receive cannot be cancelled): wait for it, as a sender's
        // drop does, then give it up, its buffer leaked, if its rank never
        // sends the rest.
        let start = Instant::now();
        while matches!(self.arrived, Some(Arrived::Receiving(_))) {
            if !self.test_big_locked() {
                if start.elapsed() >= SEND_DRAIN {
                    if let Some(Arrived::Receiving(PostedReceive { request, .. })) =
                        self.arrived.take()
                    {
                        // SAFETY: the request is left to MPI, never waited
                        // on again; its buffer (leaked by `probe_big`) is
                        // never taken back, so MPI may write it for as long
                        // as the process lives.
                        let _ = unsafe { request.into_raw() };
                    }
                    break;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        let _comm = self.world.lock();
        if let Some(PostedReceive { request, buf }) = self.posted.take() {
            // Cancelled, or it completed meanwhile: either way it has ended
            // once `wait` returns, and MPI no longer writes `buf`.
            request.cancel();
            request.wait();
            self.spare = Some(buf);
        }
        if let Some(buf) = self.spare.take() {
            // SAFETY: `buf` is the leaked box of `new`; no receive is posted
            // into it (none, or the one above ended), so it is ours again.
            drop(unsafe { Box::from_raw(buf) });
        }
    }
}

/// Receives one message of `tag` from `rank` (polling, never blocking in
/// MPI), waiting at most `max`.
pub(super) fn recv_from(world: &World, rank: i32, tag: i32, max: Duration) -> Option<Vec<u8>> {
    let mut got = None;
    poll_until(world.polling, max, || {
        let comm = world.lock();
        if let Some((message, status)) = comm
            .process_at_rank(rank)
            .immediate_matched_probe_with_tag(tag)
        {
            let mut buf = vec![0u8; status.count(u8::equivalent_datatype()).max(0) as usize];
            message.matched_receive_into(&mut buf[..]);
            got = Some(buf);
        }
        got.is_some()
    });
    got
}
