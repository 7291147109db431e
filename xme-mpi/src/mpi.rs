use std::marker::PhantomData;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use xme_core::process::{Child, fork_child};
use xme_core::{Fate, PanicReport, SharedRegion};

use crate::MpiError;
use crate::cores::CorePlan;
use crate::frame::{self, KIND_CALL, KIND_CALL_FN, KIND_EXIT, Request};
use crate::logical::{self, LogicalProcess};
use crate::ring::{self, Consumer, Producer, RecvChannel, SendChannel, Waited};
use crate::unit::{self, Registry, Unit};

/// Where a call goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum To {
    /// The least loaded live logical process (the seed's `ANY_PROCESS`).
    Any,
    /// Logical process `n`, in `1..pnum`.
    Process(usize),
    /// Every live logical process (the seed's `ALL_PROCESSES`): `broadcast`, `close`.
    All,
}

/// A logical process's state (the seed's `STATUS_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LpStatus {
    /// Started, not yet waiting for calls.
    Begin,
    /// Waiting for calls, none queued.
    Idle,
    /// Calls queued for it, not running one right now.
    Allocated,
    /// Running a call.
    InRun,
    /// Closed or dead.
    End,
}

/// The seed's default `mpi_buffer_size`.
pub const DEFAULT_BUFFER_SIZE: usize = 255;
/// Default bytes of each direction's channel to a logical process.
pub const DEFAULT_CHANNEL_BYTES: usize = 1 << 20;
/// How long `close` lets a logical process finish its queue before killing it.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Longest sleep of a thread waiting for a free slot before it re-checks.
const SLOT_RECHECK: Duration = Duration::from_millis(1);
/// Longest sleep before checking a peer is alive.
const LIVENESS: Duration = Duration::from_millis(20);

/// An MPI run: one main process and `pnum - 1` logical processes (seed 3).
///
/// ```
/// use xme_mpi::{Mpi, To};
///
/// fn distance((p, q): ((f64, f64), (f64, f64))) -> f64 {
///     ((q.0 - p.0).powi(2) + (q.1 - p.1).powi(2)).sqrt()
/// }
///
/// # fn main() -> Result<(), xme_mpi::MpiError> {
/// let mut mpi = Mpi::new(3)?;
/// let distance = mpi.register("distance", distance);
/// let right = mpi.run(|m| -> Result<bool, xme_mpi::MpiError> {
///     let (a, b, c) = ((0.0, 0.0), (3.0, 0.0), (0.0, 4.0));
///     let ab = m.block_acquire(&distance, &(a, b), To::Any)?;
///     let ac = m.acquire(&distance, &(a, c), To::Process(1))?;
///     let bc = m.acquire(&distance, &(b, c), To::Any)?;
///     let (ac, bc) = (m.get(ac)?, m.get(bc)?);
///     Ok((ab * ab + ac * ac - bc * bc).abs() < 1e-9)
/// })??;
/// assert!(right);
/// # Ok(())
/// # }
/// ```
pub struct Mpi {
    pnum: usize,
    buffer_size: usize,
    channel_bytes: usize,
    bind_to_cores: bool,
    registry: Registry,
}

impl Mpi {
    /// An MPI of `pnum` processes: the main one and `pnum - 1` logical ones.
    pub fn new(pnum: usize) -> Result<Mpi, MpiError> {
        if pnum < 2 {
            return Err(MpiError::PnumTooSmall(pnum));
        }
        Ok(Mpi {
            pnum,
            buffer_size: DEFAULT_BUFFER_SIZE,
            channel_bytes: DEFAULT_CHANNEL_BYTES,
            bind_to_cores: true,
            registry: Registry::default(),
        })
    }

    /// Result slots (the seed's `mpi_buffer_size`, default 255): calls in
    /// flight at most; `acquire` waits while every slot is taken.
    pub fn buffer_size(mut self, slots: usize) -> Mpi {
        self.buffer_size = slots.max(1);
        self
    }

    /// Bytes of each direction's channel to a logical process (default 1 MiB,
    /// rounded up to a power of two, 4 KiB to 1 TiB); one call's arguments or
    /// result must fit in half of it.
    pub fn channel_bytes(mut self, bytes: usize) -> Mpi {
        self.channel_bytes = bytes.clamp(4096, 1 << 40).next_power_of_two();
        self
    }

    /// Whether each logical process is bound to a core of its own, in turn
    /// over the cores this process may use, starting off the one the main
    /// process runs on (default: yes, as MPI launchers bind ranks). Unbound,
    /// the scheduler tends to put a process on the core of the one that woke
    /// it, where their spinning waits then take turns. The main process is
    /// never bound.
    pub fn bind_to_cores(mut self, bind: bool) -> Mpi {
        self.bind_to_cores = bind;
        self
    }

    /// Registers a computing unit under `name` (the seed's `mpi["distance"] = distance`).
    pub fn register<A, R, F>(&mut self, name: &'static str, f: F) -> Unit<A, R>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
        F: Fn(A) -> R + Send + Sync + 'static,
    {
        self.registry.register(name, f)
    }

    /// Forks the logical processes, runs `main` with the handle in this
    /// process, and closes every logical process afterwards, also when `main`
    /// panics (the panic then continues). Returns what `main` returns.
    pub fn run<T>(self, main: impl FnOnce(&MpiHandle<'_>) -> T) -> Result<T, MpiError> {
        let lps = self.pnum - 1;
        let per_lp = 2 * ring::ring_bytes(self.channel_bytes) + 64;
        let region = SharedRegion::anonymous(lps * per_lp)?;
        let token = xme_core::Operator::alloc().id();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let spin = if self.pnum <= cpus {
            crate::ring::SPIN_DEDICATED
        } else {
            crate::ring::SPIN_SHARED
        };
        // Each process registers for heavy fences itself (a fork child too),
        // so that publishing a frame needs only a light one.
        let light = xme_core::fence::register();
        let parent = xme_core::process::current_pid();
        let cores = if self.bind_to_cores {
            CorePlan::new()
        } else {
            None
        };
        let mut links = Vec::with_capacity(lps);
        for i in 0..lps {
            let base = i * per_lp;
            let ring_bytes = ring::ring_bytes(self.channel_bytes);
            let (mut requests, lp_requests) =
                ring::split(&region, base, self.channel_bytes, token, spin)?;
            let (lp_replies, mut replies) =
                ring::split(&region, base + ring_bytes, self.channel_bytes, token, spin)?;
            let status = region.place::<AtomicU32>(base + 2 * ring_bytes)?;
            requests.use_light_fences(light);
            replies.use_light_fences(light);
            // The logical process takes the request consumer and the reply
            // producer; this process drops them when the closure is dropped
            // after fork, so each side of each ring has one owner.
            let lp = LogicalProcess {
                id: i + 1,
                token,
                requests: lp_requests,
                replies: lp_replies,
                status,
                registry: &self.registry,
                parent,
            };
            let child = fork_child(move || lp.run())?;
            if let Some(cores) = &cores {
                cores.bind(i + 1, child.pid()); // unbound if refused: slower, still correct
            }
            links.push(Link::new(i + 1, requests, replies, status, child));
        }
        let handle = MpiHandle {
            token,
            links,
            slots: Mutex::new(SlotTable::new(self.buffer_size)),
            slot_freed: Condvar::new(),
        };
        let out = panic::catch_unwind(AssertUnwindSafe(|| main(&handle)));
        let _ = handle.close(To::All);
        match out {
            Ok(v) => Ok(v),
            Err(p) => panic::resume_unwind(p),
        }
    }
}

/// The sending end of a link with its frame buffer.
struct SendSide<'r> {
    channel: Box<dyn SendChannel + 'r>,
    buf: Vec<u8>,
}

/// The receiving end of a link with its frame buffer.
struct RecvSide<'r> {
    channel: Box<dyn RecvChannel + 'r>,
    buf: Vec<u8>,
}

/// The main process's side of one logical process.
struct Link<'r> {
    id: usize,
    status: &'r AtomicU32,
    /// The request channel: one producer at a time.
    send: Mutex<SendSide<'r>>,
    /// The reply channel: one consumer at a time.
    recv: Mutex<RecvSide<'r>>,
    child: Mutex<Option<Child>>,
    pid: i32,
    /// Calls sent and not yet answered.
    load: AtomicUsize,
    /// Generation of the next direct call (`block_acquire` without a slot);
    /// written only under `recv`.
    direct_generation: AtomicU32,
    /// Sequence number of the last request sent by the fast lane; written
    /// only under `recv`.
    fast_seq: AtomicU64,
    /// Largest request frame the channel carries.
    max_frame: usize,
    /// Bytes the request channel holds.
    capacity: usize,
    ended: OnceLock<Ended>,
}

impl<'r> Link<'r> {
    fn new(
        id: usize,
        requests: Producer<'r>,
        replies: Consumer<'r>,
        status: &'r AtomicU32,
        child: Child,
    ) -> Link<'r> {
        Link {
            id,
            max_frame: requests.max_frame(),
            capacity: requests.capacity(),
            send: Mutex::new(SendSide {
                channel: Box::new(requests),
                buf: Vec::new(),
            }),
            recv: Mutex::new(RecvSide {
                channel: Box::new(replies),
                buf: Vec::new(),
            }),
            status,
            pid: child.pid(),
            child: Mutex::new(Some(child)),
            load: AtomicUsize::new(0),
            direct_generation: AtomicU32::new(0),
            fast_seq: AtomicU64::new(0),
            ended: OnceLock::new(),
        }
    }
}

#[derive(Debug, Clone)]
enum Ended {
    Died(Fate),
    Closed(String),
}

enum SlotState {
    Free,
    Pending {
        lp: usize,
        unit: &'static str,
    },
    /// The result arrived; a value's bytes are in the entry's `body`.
    Ready(Result<(), MpiError>),
    /// Its `Slot` was dropped: the reply is discarded on arrival.
    Abandoned {
        lp: usize,
    },
}

struct SlotEntry {
    generation: u32,
    /// The bytes of a value result, reused from call to call (no allocation).
    body: Vec<u8>,
    /// The unit of the call the slot last held (for messages).
    unit: &'static str,
    state: SlotState,
}

struct SlotTable {
    entries: Vec<SlotEntry>,
    free: Vec<u32>,
    /// Threads waiting for a free slot (notify only when there are some: a
    /// condvar notify is a system call).
    waiters: usize,
}

impl SlotTable {
    fn new(size: usize) -> SlotTable {
        SlotTable {
            entries: (0..size)
                .map(|_| SlotEntry {
                    generation: 0,
                    body: Vec::new(),
                    unit: "",
                    state: SlotState::Free,
                })
                .collect(),
            free: (0..size as u32).rev().collect(),
            waiters: 0,
        }
    }

    /// Frees slot `index`; true if a thread waiting for a slot should be
    /// woken now: once a batch of slots is free, so that a producer blocked
    /// on a full buffer wakes once per batch, not once per `get` (each wake
    /// takes a core from the logical processes). Waiters also re-check every
    /// [`SLOT_RECHECK`], so a single freed slot is never missed for long.
    #[must_use]
    fn release(&mut self, index: u32) -> bool {
        let e = &mut self.entries[index as usize];
        e.state = SlotState::Free;
        e.generation = e.generation.wrapping_add(1);
        self.free.push(index);
        let batch = (self.entries.len() / 8).clamp(1, 32);
        self.waiters > 0 && self.free.len() >= batch
    }
}

/// A pending call's result (the seed's buffer position): pass it to
/// [`MpiHandle::get`]. Dropping it discards the result when it arrives.
#[must_use = "a slot holds a result: get it, or drop it to discard the result"]
pub struct Slot<'h, R> {
    /// The run the slot belongs to (behind a trait object, so that a slot's
    /// type does not name the run's channel lifetime).
    handle: &'h (dyn SlotOwner + 'h),
    index: u32,
    generation: u32,
    process: usize,
    taken: bool,
    _result: PhantomData<fn() -> R>,
}

impl<R> Slot<'_, R> {
    /// The logical process the call went to.
    pub fn process(&self) -> usize {
        self.process
    }
}

impl<R> std::fmt::Debug for Slot<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("index", &self.index)
            .field("process", &self.process)
            .finish()
    }
}

impl<R> Drop for Slot<'_, R> {
    fn drop(&mut self) {
        if !self.taken {
            self.handle.abandon(self.index, self.generation);
        }
    }
}

/// What a [`Slot`] needs of its run: to give its slot back when dropped, and
/// to say which run it is.
trait SlotOwner: Sync {
    fn abandon(&self, index: u32, generation: u32);
    fn token(&self) -> u64;
}

impl SlotOwner for MpiHandle<'_> {
    fn abandon(&self, index: u32, generation: u32) {
        MpiHandle::abandon(self, index, generation)
    }
    fn token(&self) -> u64 {
        self.token
    }
}

/// The main function's handle on the logical processes (the seed's `XMEMPI`).
/// It may be used from several threads at once.
pub struct MpiHandle<'r> {
    token: u64,
    links: Vec<Link<'r>>,
    slots: Mutex<SlotTable>,
    slot_freed: Condvar,
}

impl<'r> MpiHandle<'r> {
    /// Ids of the logical processes, `1..pnum`.
    pub fn processes(&self) -> Vec<usize> {
        self.links.iter().map(|l| l.id).collect()
    }

    /// The pid of logical process `id`.
    pub fn pid(&self, id: usize) -> Result<i32, MpiError> {
        self.link(id).map(|l| l.pid)
    }

    /// Each logical process's state.
    pub fn status(&self) -> Vec<(usize, LpStatus)> {
        self.links
            .iter()
            .map(|l| {
                let s = if l.ended.get().is_some() {
                    LpStatus::End
                } else {
                    match l.status.load(Ordering::Acquire) {
                        logical::ST_BEGIN => LpStatus::Begin,
                        logical::ST_INRUN => LpStatus::InRun,
                        logical::ST_END => LpStatus::End,
                        _ if l.load.load(Ordering::Acquire) > 0 => LpStatus::Allocated,
                        _ => LpStatus::Idle,
                    }
                };
                (l.id, s)
            })
            .collect()
    }

    /// Sends a call of `unit` to a logical process and returns its slot at once
    /// (the seed's `acquire`). Waits while every slot is taken: only `get`
    /// (or dropping a slot) frees one, so a thread holding `mpi_buffer_size`
    /// slots must `get` some before acquiring more, or use
    /// [`acquire_timeout`](Self::acquire_timeout).
    pub fn acquire<A, R>(
        &self,
        unit: &Unit<A, R>,
        args: &A,
        to: To,
    ) -> Result<Slot<'_, R>, MpiError>
    where
        A: Serialize,
        R: DeserializeOwned,
    {
        self.send(unit_request(unit.id), unit.name, args, to, None)
    }

    /// [`acquire`](Self::acquire), waiting at most `wait` for a free slot.
    pub fn acquire_timeout<A, R>(
        &self,
        unit: &Unit<A, R>,
        args: &A,
        to: To,
        wait: Duration,
    ) -> Result<Slot<'_, R>, MpiError>
    where
        A: Serialize,
        R: DeserializeOwned,
    {
        self.send(unit_request(unit.id), unit.name, args, to, Some(wait))
    }

    /// Calls a plain function directly, without registering it (seed 3.3's
    /// `acquire(scatter, …)`). Works because logical processes are forks of
    /// this program; a closure that captures nothing coerces to a `fn`.
    pub fn acquire_fn<A, R>(&self, f: fn(A) -> R, args: &A, to: To) -> Result<Slot<'_, R>, MpiError>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        let req = Request {
            kind: KIND_CALL_FN,
            slot: 0,
            generation: 0,
            unit: u32::MAX,
            fn_addr: f as *const () as usize as u64,
            tramp_addr: unit::trampoline::<A, R> as *const () as usize as u64,
        };
        self.send(req, "fn", args, to, None)
    }

    /// Calls and waits for the result (the seed's `acquire(…, block=True)`).
    pub fn block_acquire<A, R>(&self, unit: &Unit<A, R>, args: &A, to: To) -> Result<R, MpiError>
    where
        A: Serialize,
        R: DeserializeOwned,
    {
        let link = self.choose(to)?;
        if link.load.load(Ordering::Acquire) == 0
            && let Ok(mut reader) = link.recv.try_lock()
        {
            return self.direct_call(link, &mut reader, unit_request(unit.id), unit.name, args);
        }
        let slot = self.acquire(unit, args, To::Process(link.id))?;
        self.get(slot)
    }

    /// Sends the call to every live logical process: one slot each.
    pub fn broadcast<A, R>(&self, unit: &Unit<A, R>, args: &A) -> Result<Vec<Slot<'_, R>>, MpiError>
    where
        A: Serialize,
        R: DeserializeOwned,
    {
        let live: Vec<usize> = self
            .links
            .iter()
            .filter(|l| l.ended.get().is_none())
            .map(|l| l.id)
            .collect();
        if live.is_empty() {
            return Err(MpiError::NoLiveProcess);
        }
        live.into_iter()
            .map(|id| self.acquire(unit, args, To::Process(id)))
            .collect()
    }

    /// Waits for a call's result and frees its slot (the seed's `get`).
    ///
    /// # Errors
    /// [`MpiError::BadSlot`] for a slot of another run (a nested or
    /// concurrent [`Mpi::run`]): it is left to its own run, which discards
    /// its result. Else the call's own error (see [`MpiError`]).
    pub fn get<R: DeserializeOwned>(&self, mut slot: Slot<'_, R>) -> Result<R, MpiError> {
        if slot.handle.token() != self.token
            || !std::ptr::addr_eq(slot.handle as *const dyn SlotOwner, self as *const Self)
        {
            return Err(MpiError::BadSlot);
        }
        slot.taken = true;
        self.wait_result(slot.index, slot.generation, decode_result)
    }

    /// Ends logical processes (the seed's `close`): each finishes the calls
    /// already queued for it, then exits; one that does not exit within
    /// [`CLOSE_GRACE`] is killed. Every logical process is reaped. Closing a
    /// closed process is a no-op.
    pub fn close(&self, to: To) -> Result<(), MpiError> {
        let targets: Vec<&Link<'r>> = match to {
            To::All | To::Any => self.links.iter().collect(),
            To::Process(id) => vec![self.link(id)?],
        };
        let exit = Request {
            kind: KIND_EXIT,
            slot: 0,
            generation: 0,
            unit: 0,
            fn_addr: 0,
            tramp_addr: 0,
        };
        for l in &targets {
            if l.ended.get().is_none() {
                let mut tx = lock(&l.send);
                let tx = &mut *tx;
                exit.write(self.token, &mut tx.buf);
                let deadline = Instant::now() + CLOSE_GRACE;
                while !tx.channel.try_send(&tx.buf) && Instant::now() < deadline {
                    tx.channel.wait_send(tx.buf.len(), LIVENESS);
                }
            }
        }
        for l in &targets {
            if l.ended.get().is_some() {
                continue;
            }
            let deadline = Instant::now() + CLOSE_GRACE;
            let fate = loop {
                // Keep draining replies so the process is never stuck on a full channel.
                self.pump(l, &mut lock(&l.recv));
                let mut child = lock(&l.child);
                let Some(c) = child.as_mut() else { break None };
                match c.try_wait() {
                    Ok(Some(f)) => break Some(f),
                    Ok(None) if Instant::now() >= deadline => break c.kill_mut().ok(),
                    Ok(None) => {}
                    Err(_) => break None,
                }
                // Sleep until it exits (its pidfd turns readable), 1 ms at most,
                // then drain replies again.
                match c.pidfd() {
                    Some(fd) => {
                        let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
                        let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(1u8));
                    }
                    None => std::thread::sleep(Duration::from_millis(1)),
                }
            };
            self.pump(l, &mut lock(&l.recv));
            let reason = match fate {
                Some(f) if f.is_success() => "closed".to_string(),
                Some(f) => format!("closed; it {f}"),
                None => "closed".to_string(),
            };
            let _ = l.ended.set(Ended::Closed(reason));
            self.fail_pending(l);
        }
        Ok(())
    }

    fn link(&self, id: usize) -> Result<&Link<'r>, MpiError> {
        id.checked_sub(1)
            .and_then(|i| self.links.get(i))
            .ok_or(MpiError::NoSuchProcess(id))
    }

    fn choose(&self, to: To) -> Result<&Link<'r>, MpiError> {
        match to {
            To::All => Err(MpiError::UseBroadcast),
            To::Process(id) => {
                let l = self.link(id)?;
                match l.ended.get() {
                    None => Ok(l),
                    Some(e) => Err(self.ended_error(l, e)),
                }
            }
            To::Any => self
                .links
                .iter()
                .filter(|l| l.ended.get().is_none())
                .min_by_key(|l| l.load.load(Ordering::Relaxed))
                .ok_or(MpiError::NoLiveProcess),
        }
    }

    fn ended_error(&self, l: &Link<'_>, e: &Ended) -> MpiError {
        match e {
            Ended::Died(fate) => MpiError::ProcessDied {
                process: l.id,
                pid: l.pid,
                fate: *fate,
            },
            Ended::Closed(reason) => MpiError::Closed {
                process: l.id,
                reason: reason.clone(),
            },
        }
    }

    fn send<A: Serialize, R>(
        &self,
        mut req: Request,
        unit: &'static str,
        args: &A,
        to: To,
        wait: Option<Duration>,
    ) -> Result<Slot<'_, R>, MpiError> {
        let link = self.choose(to)?;
        let (index, generation) = self.take_slot(link.id, unit, wait)?;
        let slot = Slot {
            handle: self,
            index,
            generation,
            process: link.id,
            taken: false,
            _result: PhantomData,
        };
        req.slot = index;
        req.generation = generation;
        if let Err(e) = self.write_request(link, req, unit, args, None) {
            if !matches!(e, MpiError::ProcessDied { .. } | MpiError::Closed { .. }) {
                self.release(index, generation);
            }
            return Err(e);
        }
        Ok(slot)
    }

    /// Encodes `req` with `args` and writes it to `link`'s request channel,
    /// waiting for room; counts it in the link's load once it is written.
    /// A direct call passes `direct`: the fast-lane sequence number to use,
    /// and the reply buffer whose lock (`link.recv`) it holds. Returns
    /// whether the request went by the fast lane.
    fn write_request<A: Serialize>(
        &self,
        link: &Link<'_>,
        req: Request,
        unit: &'static str,
        args: &A,
        mut direct: Option<(u64, &mut RecvSide<'_>)>,
    ) -> Result<bool, MpiError> {
        let mut tx = lock(&link.send);
        let tx = &mut *tx;
        req.write(self.token, &mut tx.buf);
        tx.buf = postcard::to_extend(args, std::mem::take(&mut tx.buf)).map_err(|e| {
            MpiError::Encode {
                unit: unit.to_string(),
                reason: e.to_string(),
            }
        })?;
        if tx.buf.len() > link.max_frame {
            return Err(MpiError::FrameTooLarge {
                len: tx.buf.len(),
                capacity: link.capacity,
            });
        }
        link.load.fetch_add(1, Ordering::AcqRel);
        if let Some((seq, _)) = direct
            && tx.channel.send_fast(seq, &tx.buf)
        {
            return Ok(true);
        }
        while !tx.channel.try_send(&tx.buf) {
            // The process is slow or gone: check before waiting again.
            if let Waited::Idle = tx.channel.wait_send(tx.buf.len(), LIVENESS) {
                let alive = match direct.as_mut() {
                    Some((_, reader)) => self.check_alive(link, reader),
                    None => self.check_alive(link, &mut lock(&link.recv)),
                };
                if !alive {
                    return Err(self.ended_error(link, link.ended.get().expect("just ended")));
                }
            }
        }
        Ok(false)
    }

    /// `block_acquire` without a slot, when no other call waits on `link` and
    /// no other thread reads its replies: the reply is read straight from the
    /// channel (replies of calls sent meanwhile by other threads are
    /// delivered to their slots on the way).
    fn direct_call<A: Serialize, R: DeserializeOwned>(
        &self,
        link: &Link<'_>,
        reader: &mut RecvSide<'_>,
        mut req: Request,
        unit: &'static str,
        args: &A,
    ) -> Result<R, MpiError> {
        req.slot = DIRECT_SLOT;
        // Only the holder of `link.recv` (the caller) counts: no atomic adds.
        req.generation = link.direct_generation.load(Ordering::Relaxed);
        link.direct_generation
            .store(req.generation.wrapping_add(1), Ordering::Relaxed);
        let seq = link.fast_seq.load(Ordering::Relaxed) + 1;
        if self.write_request(link, req, unit, args, Some((seq, reader)))? {
            link.fast_seq.store(seq, Ordering::Relaxed);
            reader.channel.expect_fast(seq);
        }
        let out = self.direct_reply(link, reader, req.generation, unit);
        reader.channel.expect_fast(0);
        out
    }

    /// Reads `link`'s replies until the direct call `generation`'s arrives,
    /// by the fast lane or the channel (delivering other calls' replies to
    /// their slots on the way).
    fn direct_reply<R: DeserializeOwned>(
        &self,
        link: &Link<'_>,
        reader: &mut RecvSide<'_>,
        generation: u32,
        unit: &'static str,
    ) -> Result<R, MpiError> {
        let mut liveness = LivenessCheck::default();
        loop {
            let got = match reader.channel.recv_fast(&mut reader.buf) {
                Ok(false) => reader.channel.try_recv(&mut reader.buf),
                fast => fast,
            };
            match got {
                Ok(true) => match frame::read_reply(self.token, &reader.buf) {
                    Some((DIRECT_SLOT, g, status, body)) if g == generation => {
                        link.load.fetch_sub(1, Ordering::AcqRel);
                        return reply_outcome(unit, link.id, status, body)
                            .and_then(|()| decode_result(body, unit));
                    }
                    Some((slot, g, status, body)) => {
                        self.deliver(link, slot, g, status, body);
                    }
                    None => log_foreign_reply(link, reader.buf.len()),
                },
                Ok(false) => {
                    if liveness.due(reader.channel.wait_recv(LIVENESS))
                        && !self.check_alive(link, reader)
                    {
                        self.fail_pending(link);
                        return Err(self.ended_error(link, link.ended.get().expect("ended")));
                    }
                }
                Err(corrupt) => {
                    self.corrupt_replies(link, &corrupt);
                    return Err(self.ended_error(link, link.ended.get().expect("ended")));
                }
            }
        }
    }

    /// Takes a free slot, waiting while all are taken (at most `wait`).
    fn take_slot(
        &self,
        lp: usize,
        unit: &'static str,
        wait: Option<Duration>,
    ) -> Result<(u32, u32), MpiError> {
        let mut start = None;
        let mut table = lock(&self.slots);
        loop {
            if let Some(index) = table.free.pop() {
                let e = &mut table.entries[index as usize];
                e.state = SlotState::Pending { lp, unit };
                e.unit = unit;
                return Ok((index, e.generation));
            }
            let start = *start.get_or_insert_with(Instant::now);
            table.waiters += 1;
            // Woken when a batch of slots is free (see `SlotTable::release`),
            // and at least every SLOT_RECHECK to take a single freed slot.
            table = match wait {
                None => {
                    self.slot_freed
                        .wait_timeout(table, SLOT_RECHECK)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                Some(w) => match w.checked_sub(start.elapsed()) {
                    Some(left) => {
                        self.slot_freed
                            .wait_timeout(table, left.min(SLOT_RECHECK))
                            .unwrap_or_else(|p| p.into_inner())
                            .0
                    }
                    None => {
                        table.waiters -= 1;
                        return Err(MpiError::BufferFull {
                            size: table.entries.len(),
                            waited: start.elapsed(),
                        });
                    }
                },
            };
            table.waiters -= 1;
        }
    }

    fn release(&self, index: u32, generation: u32) {
        let mut table = lock(&self.slots);
        if table.entries[index as usize].generation == generation && table.release(index) {
            self.slot_freed.notify_one();
        }
    }

    fn abandon(&self, index: u32, generation: u32) {
        let mut table = lock(&self.slots);
        let e = &mut table.entries[index as usize];
        if e.generation != generation {
            return;
        }
        let release = match e.state {
            SlotState::Pending { lp, .. } => {
                e.state = SlotState::Abandoned { lp };
                false
            }
            SlotState::Ready(_) => true,
            _ => false,
        };
        if release && table.release(index) {
            self.slot_freed.notify_one();
        }
    }

    /// Waits for slot `index` to hold its result, reading replies meanwhile;
    /// `decode` reads a value's bytes (with the unit's name) in place.
    fn wait_result<T>(
        &self,
        index: u32,
        generation: u32,
        decode: impl FnOnce(&[u8], &'static str) -> Result<T, MpiError>,
    ) -> Result<T, MpiError> {
        let mut decode = Some(decode);
        let mut liveness = LivenessCheck::default();
        loop {
            let lp = {
                let mut table = lock(&self.slots);
                let e = &mut table.entries[index as usize];
                if e.generation != generation {
                    return Err(MpiError::BadSlot);
                }
                match std::mem::replace(&mut e.state, SlotState::Free) {
                    SlotState::Ready(r) => {
                        let decode = decode.take().expect("returns after decoding");
                        let out = r.and_then(|()| decode(&e.body, e.unit));
                        if table.release(index) {
                            self.slot_freed.notify_one();
                        }
                        return out;
                    }
                    SlotState::Pending { lp, unit } => {
                        e.state = SlotState::Pending { lp, unit };
                        lp
                    }
                    other => {
                        e.state = other;
                        return Err(MpiError::BadSlot);
                    }
                }
            };
            let link = &self.links[lp - 1];
            // One thread reads a process's replies at a time; the others find
            // their slot filled when they get the lock.
            let mut reader = lock(&link.recv);
            if self.slot_ready(index, generation) {
                continue;
            }
            if self.pump(link, &mut reader) > 0 {
                continue;
            }
            if liveness.due(reader.channel.wait_recv(LIVENESS))
                && !self.check_alive(link, &mut reader)
            {
                self.fail_pending(link);
            }
        }
    }

    fn slot_ready(&self, index: u32, generation: u32) -> bool {
        let table = lock(&self.slots);
        let e = &table.entries[index as usize];
        e.generation != generation || !matches!(e.state, SlotState::Pending { .. })
    }

    /// Delivers every reply waiting in `link`'s channel; returns how many.
    /// `rx` is `link.recv`, whose lock the caller holds.
    fn pump(&self, link: &Link<'_>, rx: &mut RecvSide<'_>) -> usize {
        let mut n = 0;
        // One slot-table lock for every reply waiting (lock order: recv, then slots).
        let mut table = lock(&self.slots);
        let mut notify = false;
        loop {
            match rx.channel.try_recv(&mut rx.buf) {
                Ok(true) => {
                    n += 1;
                    match frame::read_reply(self.token, &rx.buf) {
                        Some((slot, generation, status, body)) => {
                            notify |= deliver_to(&mut table, link, slot, generation, status, body);
                        }
                        None => log_foreign_reply(link, rx.buf.len()),
                    }
                }
                Ok(false) => break,
                Err(corrupt) => {
                    drop(table);
                    self.corrupt_replies(link, &corrupt);
                    return n;
                }
            }
        }
        drop(table);
        if notify {
            self.slot_freed.notify_all();
        }
        n
    }

    /// Ends `link` whose reply channel broke the ring's format.
    fn corrupt_replies(&self, link: &Link<'_>, corrupt: &crate::ring::Corrupt) {
        let _ = xme_log::Logger::new()
            .entry()
            .msgtype("Error")
            .print(format!(
                "MPI: reply channel of logical process {} is corrupt ({}); closing it",
                link.id, corrupt.0
            ));
        if let Some(c) = lock(&link.child).as_mut() {
            let _ = c.kill_mut();
        }
        let _ = link
            .ended
            .set(Ended::Closed("its reply channel was corrupt".into()));
        self.fail_pending(link);
    }

    fn deliver(&self, link: &Link<'_>, slot: u32, generation: u32, status: u8, body: &[u8]) {
        let notify = deliver_to(&mut lock(&self.slots), link, slot, generation, status, body);
        if notify {
            self.slot_freed.notify_all();
        }
    }

    /// Whether `link`'s process lives; records its death if not. `reader` is
    /// the held `link.recv`.
    fn check_alive(&self, link: &Link<'_>, reader: &mut RecvSide<'_>) -> bool {
        if link.ended.get().is_some() {
            return false;
        }
        let mut child = lock(&link.child);
        match child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(Ok(Some(fate))) => {
                drop(child);
                self.pump(link, reader); // replies it wrote before dying still count
                let _ = link.ended.set(Ended::Died(fate));
                false
            }
            _ => {
                let _ = link
                    .ended
                    .set(Ended::Closed("its process could not be waited for".into()));
                false
            }
        }
    }

    /// Fails every slot still pending on an ended process.
    fn fail_pending(&self, link: &Link<'_>) {
        let Some(ended) = link.ended.get() else {
            return;
        };
        let err = self.ended_error(link, ended);
        let mut table = lock(&self.slots);
        let mut freed = false;
        for i in 0..table.entries.len() {
            match table.entries[i].state {
                SlotState::Pending { lp, .. } if lp == link.id => {
                    table.entries[i].state = SlotState::Ready(Err(err.clone()));
                }
                SlotState::Abandoned { lp } if lp == link.id => {
                    freed |= table.release(i as u32);
                }
                _ => {}
            }
        }
        link.load.store(0, Ordering::Release);
        if freed {
            self.slot_freed.notify_all();
        }
    }

    /// Writes a frame with a foreign token to logical process `id` (tests).
    #[doc(hidden)]
    pub fn inject_foreign_frame(&self, id: usize) -> Result<(), MpiError> {
        let l = self.link(id)?;
        let mut tx = lock(&l.send);
        let mut junk = vec![0xA5u8; 64];
        junk[..8].copy_from_slice(&(!self.token).to_le_bytes());
        while !tx.channel.try_send(&junk) {
            tx.channel.wait_send(junk.len(), LIVENESS);
        }
        Ok(())
    }

    /// Writes a fast-lane frame header that breaks the channel of logical
    /// process `id` (tests).
    #[doc(hidden)]
    pub fn inject_corrupt_fast_frame(&self, id: usize) -> Result<(), MpiError> {
        let l = self.link(id)?;
        let _reader = lock(&l.recv); // the fast lane's numbers are kept under it
        let seq = l.fast_seq.load(Ordering::Relaxed) + 1;
        l.fast_seq.store(seq, Ordering::Relaxed);
        lock(&l.send).channel.inject_corrupt_fast(seq);
        Ok(())
    }

    /// Writes a frame header that breaks the channel of logical process `id` (tests).
    #[doc(hidden)]
    pub fn inject_corrupt_header(&self, id: usize) -> Result<(), MpiError> {
        let l = self.link(id)?;
        lock(&l.send).channel.inject_corrupt();
        Ok(())
    }
}

/// Puts a reply into its slot; true if a thread waiting for a slot should be
/// woken (the slot was abandoned and is free again).
fn deliver_to(
    table: &mut SlotTable,
    link: &Link<'_>,
    slot: u32,
    generation: u32,
    status: u8,
    body: &[u8],
) -> bool {
    let Some(e) = table.entries.get_mut(slot as usize) else {
        return false;
    };
    if e.generation != generation {
        return false;
    }
    link.load.fetch_sub(1, Ordering::AcqRel);
    match e.state {
        SlotState::Pending { unit, .. } => {
            let outcome = reply_outcome(unit, link.id, status, body);
            if outcome.is_ok() {
                e.body.clear();
                e.body.extend_from_slice(body);
            }
            e.state = SlotState::Ready(outcome);
            false
        }
        SlotState::Abandoned { .. } => table.release(slot),
        _ => false,
    }
}

/// Decodes a unit's result.
fn decode_result<R: DeserializeOwned>(bytes: &[u8], unit: &str) -> Result<R, MpiError> {
    xme_core::frame::decode(bytes, "a unit result").map_err(|e| MpiError::Decode {
        unit: unit.to_string(),
        reason: e.to_string(),
    })
}

/// When a thread waiting for replies checks that their process lives: after
/// a wait that found nothing for [`LIVENESS`], and, in case wake-ups keep
/// coming without its reply, once per `LIVENESS` of short waits. Reads the
/// clock only every 64 short waits: a round trip must not pay for it.
#[derive(Default)]
struct LivenessCheck {
    since: Option<Instant>,
    short_waits: u32,
}

impl LivenessCheck {
    fn due(&mut self, waited: Waited) -> bool {
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

/// The slot number of a direct call (`block_acquire` without a slot).
const DIRECT_SLOT: u32 = u32::MAX;

/// `Ok` for a value reply (its body is the result), else the unit's error.
fn reply_outcome(unit: &str, process: usize, status: u8, body: &[u8]) -> Result<(), MpiError> {
    match status {
        frame::REPLY_VALUE => Ok(()),
        frame::REPLY_PANICKED => Err(MpiError::UnitPanicked {
            unit: unit.to_string(),
            process,
            panic: postcard::from_bytes(body).unwrap_or(PanicReport {
                message: "(unreadable panic report)".into(),
                location: None,
            }),
        }),
        _ => Err(MpiError::UnitFailed {
            unit: unit.to_string(),
            process,
            reason: String::from_utf8_lossy(body).into_owned(),
        }),
    }
}

fn log_foreign_reply(link: &Link<'_>, len: usize) {
    let _ = xme_log::Logger::new()
        .entry()
        .msgtype("Error")
        .print(format!(
            "MPI: dropped a reply of {len} bytes from logical process {} without this run's token",
            link.id
        ));
}

fn unit_request(id: u32) -> Request {
    Request {
        kind: KIND_CALL,
        slot: 0,
        generation: 0,
        unit: id,
        fn_addr: 0,
        tramp_addr: 0,
    }
}

/// Locks a mutex, going on if a panicking thread poisoned it (the data it
/// guards is only frame buffers and slot bookkeeping, always left whole).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
