//! The cluster backend: the ranks of an MPI job started by a launcher, over
//! a real MPI library through the `mpi` crate (rsmpi). Rank 0 runs `main`;
//! ranks `1..N` are the logical processes.
//!
//! - **Start**: MPI is initialised with `MPI_THREAD_SERIALIZED`; every MPI
//!   call of this process holds one lock ([`World`]), so any thread of the
//!   main function may call. Each rank sends rank 0 its pid, host and units
//!   (name, argument and result type names); rank 0 maps unit ids by name
//!   and answers every rank with the run's token or the mismatch, so that a
//!   mismatch ends every rank with the same error, never a hang.
//! - **Frames**: the same request and reply frames as the fork backend, one
//!   MPI message each (tag [`TAG_FRAME`]; MPI keeps messages between two
//!   ranks in order). Sends are non-blocking: each owns its buffer until
//!   `MPI_Test` says it is done. Receives probe (`MPI_Improbe`) and never
//!   block inside MPI: a waiting side polls, then yields, then sleeps with a
//!   growing pause, like the shared-memory ring.
//! - **End**: `close` sends EXIT; a rank answers with an acknowledgement
//!   after its last reply, completes its sends, finalises MPI and exits 0.

use std::collections::VecDeque;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mpi::Threading;
use mpi::request::{Request, StaticScope};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use serde::{Deserialize, Serialize};

use crate::MpiError;
use crate::channel::{Corrupt, RecvChannel, SendChannel, Waited};
use crate::config::RunConfig;
use crate::handle::MpiHandle;
use crate::link::{Link, Peer};
use crate::logical::{self, LogicalProcess};
use crate::unit::Signature;

/// Tag of request and reply frames.
const TAG_FRAME: i32 = 1;
/// Tag of a rank's hello (its units) to rank 0.
const TAG_HELLO: i32 = 2;
/// Tag of rank 0's verdict on a hello.
const TAG_VERDICT: i32 = 3;
/// How long rank 0 waits for every hello, and a rank for its verdict.
const HANDSHAKE: Duration = Duration::from_secs(120);

/// The world communicator, behind the one lock every MPI call of this
/// process takes.
pub(crate) struct World {
    comm: Mutex<SimpleCommunicator>,
    /// How a waiting side polls before it sleeps.
    polling: Polling,
}

// SAFETY: MPI was initialised with MPI_THREAD_SERIALIZED (checked in `run`),
// under which any thread may call MPI as long as no two do at once; every
// use of `comm` (and of requests made through it) holds the mutex.
unsafe impl Send for World {}
// SAFETY: as above.
unsafe impl Sync for World {}

impl World {
    fn lock(&self) -> MutexGuard<'_, SimpleCommunicator> {
        self.comm.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What a rank tells rank 0 at start.
#[derive(Serialize, Deserialize)]
struct Hello {
    pid: i32,
    host: String,
    units: Vec<Signature>,
}

/// Rank 0's answer: the run's token, or why the run cannot start.
#[derive(Serialize, Deserialize)]
enum Verdict {
    Start { token: u64 },
    Refused { rank: usize, detail: String },
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
struct Polling {
    spin: Duration,
    yields: Duration,
}

impl Polling {
    const DEDICATED: Polling = Polling {
        spin: Duration::from_micros(200),
        yields: Duration::from_micros(100),
    };
    /// Yielding (not sleeping) for a while lets the rank whose turn it is
    /// run at once, and costs nothing a runnable rank needs.
    const SHARED: Polling = Polling {
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

/// Frames to one rank: non-blocking sends, at most `capacity` bytes in flight.
pub(crate) struct RankSender {
    world: Arc<World>,
    rank: i32,
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
    fn new(world: Arc<World>, rank: usize, channel_bytes: usize) -> RankSender {
        RankSender {
            world,
            rank: rank as i32,
            pending: VecDeque::new(),
            pending_bytes: 0,
            spare: Vec::new(),
            max_frame: channel_bytes / 2,
            capacity: channel_bytes,
        }
    }

    /// Takes back the buffers of the sends MPI has finished, oldest first.
    /// The caller holds the world lock.
    fn reap(&mut self) {
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

    fn has_room(&self, len: usize) -> bool {
        self.pending.is_empty() || self.pending_bytes + len <= self.capacity
    }
}

impl SendChannel for RankSender {
    fn try_send(&mut self, frame: &[u8]) -> bool {
        let world = self.world.clone();
        let comm = world.lock();
        self.reap();
        if !self.has_room(frame.len()) {
            return false;
        }
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
                .immediate_send_with_tag(StaticScope, data, TAG_FRAME);
        self.pending_bytes += frame.len();
        self.pending.push_back(PendingSend { request, buf: ptr });
        true
    }

    fn wait_send(&mut self, len: usize, max: Duration) -> Waited {
        let world = self.world.clone();
        poll_until(world.polling, max, || {
            let _comm = world.lock();
            self.reap();
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
        // finalised, which drops the world after every channel).
        let world = self.world.clone();
        let _comm = world.lock();
        while let Some(PendingSend { request, buf }) = self.pending.pop_front() {
            request.wait_without_status();
            // SAFETY: leaked by `try_send` for this send, which completed.
            drop(unsafe { reclaim(buf) });
        }
    }
}

/// Frames from one rank.
pub(crate) struct RankReceiver {
    world: Arc<World>,
    rank: i32,
    /// A message the last wait matched (`MPI_Improbe`), received by the next
    /// `try_recv`: a wait that finds a frame does not probe for it again.
    matched: Option<(mpi::point_to_point::Message, usize)>,
}

// SAFETY: the matched message handle is used only by the owner of this
// receiver (`&mut self`), under the world lock (MPI_THREAD_SERIALIZED).
unsafe impl Send for RankReceiver {}

impl RankReceiver {
    fn new(world: Arc<World>, rank: usize) -> RankReceiver {
        RankReceiver {
            world,
            rank: rank as i32,
            matched: None,
        }
    }

    /// Matches the next frame from the rank, if one came (the caller holds
    /// the world lock).
    fn probe(&mut self, comm: &SimpleCommunicator) -> Result<bool, Corrupt> {
        if self.matched.is_some() {
            return Ok(true);
        }
        let Some((message, status)) = comm
            .process_at_rank(self.rank)
            .immediate_matched_probe_with_tag(TAG_FRAME)
        else {
            return Ok(false);
        };
        let len = status.count(u8::equivalent_datatype());
        match usize::try_from(len) {
            Ok(len) => {
                self.matched = Some((message, len));
                Ok(true)
            }
            Err(_) => {
                message.matched_receive_into(&mut [0u8; 0][..]);
                Err(Corrupt(format!(
                    "a message of {len} bytes from rank {}",
                    self.rank
                )))
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
        let (message, len) = self.matched.take().expect("probed");
        out.clear();
        out.resize(len, 0);
        message.matched_receive_into(&mut out[..]);
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
        // A matched message must be received: take it (nobody reads it now).
        if let Some((message, len)) = self.matched.take() {
            let _comm = self.world.lock();
            message.matched_receive_into(&mut vec![0u8; len][..]);
        }
    }
}

/// Receives one message of `tag` from `rank` (polling, never blocking in
/// MPI), waiting at most `max`.
fn recv_from(world: &World, rank: i32, tag: i32, max: Duration) -> Option<Vec<u8>> {
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

/// Compares rank `rank`'s units with ours: the ids it knows ours by, or
/// what differs.
fn map_units(ours: &[Signature], theirs: &[Signature], rank: usize) -> Result<Vec<u32>, String> {
    let mut problems = Vec::new();
    let mut ids = Vec::with_capacity(ours.len());
    for s in ours {
        match theirs.iter().position(|t| t.name == s.name) {
            None => problems.push(format!("rank {rank} has no unit {:?}", s.name)),
            Some(i) if theirs[i] != *s => problems.push(format!(
                "unit {:?} is {} -> {} on rank 0 but {} -> {} on rank {rank}",
                s.name, s.args, s.result, theirs[i].args, theirs[i].result
            )),
            Some(i) => ids.push(i as u32),
        }
    }
    if problems.is_empty() {
        Ok(ids)
    } else {
        Err(problems.join("; "))
    }
}

fn host() -> String {
    mpi::environment::processor_name().unwrap_or_else(|_| "?".into())
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_stdvec(v).expect("handshake messages encode")
}

/// A cluster run: rank 0 runs `main` and returns; every other rank serves
/// and exits inside (0 when closed). On any start error every rank returns
/// the same error (after finalising MPI).
pub(crate) fn run<T>(
    config: RunConfig,
    main: impl FnOnce(&MpiHandle<'_>) -> T,
) -> Result<T, MpiError> {
    let Some((universe, threading)) = mpi::initialize_with_threading(Threading::Serialized) else {
        return Err(MpiError::Cluster(
            "MPI was initialised already in this process: one cluster run per launch".into(),
        ));
    };
    if threading < Threading::Serialized {
        drop(universe);
        return Err(MpiError::Cluster(format!(
            "the MPI library gives thread level {threading:?}; xme needs Serialized"
        )));
    }
    let comm = universe.world();
    // Ranks sharing this host (MPI_Comm_split_type SHARED) against its cores.
    let local = comm.split_shared(0).size() as usize;
    // The host's cores, not this process's affinity mask: a launcher binds
    // each rank to one core, which says nothing about who shares it.
    // SAFETY: sysconf only reads a system value; _SC_NPROCESSORS_ONLN is a
    // valid name on Linux, and -1 (unknown) is handled.
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    let cpus = usize::try_from(online).unwrap_or(1).max(1);
    let world = Arc::new(World {
        comm: Mutex::new(comm),
        polling: if local <= cpus {
            Polling::DEDICATED
        } else {
            Polling::SHARED
        },
    });
    let (rank, size) = {
        let comm = world.lock();
        (comm.rank() as usize, comm.size() as usize)
    };
    if size != config.pnum {
        drop(world);
        drop(universe);
        return Err(MpiError::WorldSize {
            pnum: config.pnum,
            world: size,
        });
    }
    let out = if rank == 0 {
        lead(&config, &world, size, main)
    } else {
        let code = serve(&config, &world, rank);
        drop(world);
        drop(universe); // MPI_Finalize
        match code {
            Ok(code) => std::process::exit(code),
            Err(e) => return Err(e),
        }
    };
    drop(world);
    drop(universe); // MPI_Finalize, once every channel is gone
    out
}

/// Rank 0: gathers every rank's units, answers, runs `main`.
fn lead<T>(
    config: &RunConfig,
    world: &Arc<World>,
    size: usize,
    main: impl FnOnce(&MpiHandle<'_>) -> T,
) -> Result<T, MpiError> {
    let ours = config.registry.signatures();
    let mut hellos = Vec::with_capacity(size - 1);
    for r in 1..size {
        let hello = recv_from(world, r as i32, TAG_HELLO, HANDSHAKE)
            .and_then(|b| postcard::from_bytes::<Hello>(&b).ok())
            .ok_or_else(|| {
                MpiError::Cluster(format!(
                    "rank {r} did not send its units within {HANDSHAKE:?}"
                ))
            })?;
        hellos.push(hello);
    }
    let mapped: Vec<Result<Vec<u32>, String>> = hellos
        .iter()
        .enumerate()
        .map(|(i, h)| map_units(ours, &h.units, i + 1))
        .collect();
    let refused = mapped
        .iter()
        .enumerate()
        .find_map(|(i, m)| m.as_ref().err().map(|d| (i + 1, d.clone())));
    let token = xme_core::Operator::alloc().id();
    let verdict = match &refused {
        Some((rank, detail)) => Verdict::Refused {
            rank: *rank,
            detail: detail.clone(),
        },
        None => Verdict::Start { token },
    };
    {
        let comm = world.lock();
        let bytes = encode(&verdict);
        for r in 1..size {
            comm.process_at_rank(r as i32)
                .send_with_tag(&bytes[..], TAG_VERDICT);
        }
    }
    if let Some((rank, detail)) = refused {
        return Err(MpiError::UnitMismatch { rank, detail });
    }
    let links: Vec<Link<'static>> = hellos
        .iter()
        .zip(mapped)
        .enumerate()
        .map(|(i, (hello, ids))| {
            let mut link = Link::new(
                i + 1,
                Box::new(RankSender::new(world.clone(), i + 1, config.channel_bytes)),
                Box::new(RankReceiver::new(world.clone(), i + 1)),
                Peer::Rank { pid: hello.pid },
            );
            link.unit_ids = ids.expect("checked above");
            link.host = Some(hello.host.clone());
            link
        })
        .collect();
    let handle = MpiHandle::new(token, links, config.buffer_size, true);
    Ok(handle.run_main(main))
}

/// Ranks `1..N`: says hello, then serves requests until closed. Returns the
/// exit status, or the start error every rank shares.
fn serve(config: &RunConfig, world: &Arc<World>, rank: usize) -> Result<i32, MpiError> {
    let hello = Hello {
        pid: std::process::id() as i32,
        host: host(),
        units: config.registry.signatures().to_vec(),
    };
    world
        .lock()
        .process_at_rank(0)
        .send_with_tag(&encode(&hello)[..], TAG_HELLO);
    let verdict = recv_from(world, 0, TAG_VERDICT, HANDSHAKE)
        .and_then(|b| postcard::from_bytes::<Verdict>(&b).ok())
        .ok_or_else(|| MpiError::Cluster(format!("rank 0 did not answer within {HANDSHAKE:?}")))?;
    let token = match verdict {
        Verdict::Start { token } => token,
        Verdict::Refused { rank, detail } => return Err(MpiError::UnitMismatch { rank, detail }),
    };
    let status = AtomicU32::new(logical::ST_BEGIN);
    let code = LogicalProcess {
        id: rank,
        token,
        requests: RankReceiver::new(world.clone(), 0),
        replies: RankSender::new(world.clone(), 0, config.channel_bytes),
        status: &status,
        registry: &config.registry,
        parent: None,
    }
    .run();
    Ok(code)
}
