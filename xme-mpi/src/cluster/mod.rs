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

use std::sync::Arc;
use std::time::Duration;

use mpi::Threading;
use mpi::traits::*;
use serde::{Deserialize, Serialize};

use crate::MpiError;
use crate::backend::ABORT_STATUS;
use crate::config::RunConfig;
use crate::handle::MpiHandle;
use crate::link::{Link, Peer};
use crate::logical::{self, LogicalProcess};
use crate::unit::Signature;
use crate::watch::{StopFlag, Watch, WatchPlan};
use channel::{Polling, RankReceiver, RankSender, World, recv_from};
use heart::{RankHeart, StartWatchdog};

mod channel;
mod heart;

/// Tag of request and reply frames.
const TAG_FRAME: i32 = 1;
/// Tag of a rank's hello (its units) to rank 0.
const TAG_HELLO: i32 = 2;
/// Tag of rank 0's verdict on a hello.
const TAG_VERDICT: i32 = 3;
/// Tag of heartbeat notes (both ways).
const TAG_WATCH: i32 = 4;

/// How long rank 0 waits for every hello, and a rank for its verdict: every
/// rank has passed `MPI_Init` (a fence) before saying hello, so only a rank
/// that died or froze since takes longer.
fn handshake(plan: &WatchPlan) -> Duration {
    plan.detection
        .saturating_mul(2)
        .saturating_add(Duration::from_secs(5))
}

/// Ends the job from rank `rank` because `why` (printed first: the launcher
/// may not show anything else).
fn abort_job(world: &World, rank: usize, why: &str) -> ! {
    eprintln!("xme-mpi rank {rank}: {why}; ending the MPI job (MPI_Abort, status {ABORT_STATUS})");
    log::error!("MPI: {why}; ending the MPI job");
    world.abort(ABORT_STATUS)
}

/// What a rank tells rank 0 at start.
#[derive(Serialize, Deserialize)]
struct Hello {
    pid: i32,
    host: String,
    units: Vec<Signature>,
}

/// Rank 0's answer: the run's token and how ranks are watched, or why the
/// run cannot start.
#[derive(Serialize, Deserialize)]
enum Verdict {
    Start { token: u64, plan: WatchPlan },
    Refused { rank: usize, detail: String },
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
    let started = StartWatchdog::arm(
        config
            .failure_detection
            .saturating_mul(3)
            .saturating_add(Duration::from_secs(5)),
    );
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
    let polling = if local <= cpus {
        Polling::DEDICATED
    } else {
        Polling::SHARED
    };
    let world = Arc::new(World::new(comm, polling));
    let (rank, size) = {
        let comm = world.lock();
        (comm.rank() as usize, comm.size() as usize)
    };
    if size == 1
        && let Some(tasks) = crate::backend::srun_tasks().filter(|&t| t > 1)
    {
        drop(world);
        drop(universe);
        return Err(MpiError::SrunWithoutPmi {
            tasks,
            reason: format!(
                "its MPI library sees a job of 1 rank: it does not speak the PMI srun offered \
                 ({})",
                if std::env::var_os("PMIX_RANK").is_some() {
                    "PMIx"
                } else {
                    "PMI-2"
                }
            ),
            advice: crate::backend::srun_advice(),
        });
    }
    if size != config.pnum {
        drop(world);
        drop(universe);
        return Err(MpiError::WorldSize {
            pnum: config.pnum,
            world: size,
        });
    }
    let out = if rank == 0 {
        lead(&config, &world, size, started, main)
    } else {
        let code = serve(&config, &world, rank, started);
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

/// Rank 0: gathers every rank's units, answers, runs `main` with a monitor
/// thread beside that exchanges heartbeats. If a rank was lost (died, hung,
/// went silent, or lingered after close), ends the job once `main` returned
/// (MPI cannot finalise without that rank).
fn lead<T>(
    config: &RunConfig,
    world: &Arc<World>,
    size: usize,
    started: StartWatchdog,
    main: impl FnOnce(&MpiHandle<'_>) -> T,
) -> Result<T, MpiError> {
    let plan = config.watch_plan();
    let ours = config.registry.signatures();
    let mut hellos = Vec::with_capacity(size - 1);
    for r in 1..size {
        let hello = recv_from(world, r as i32, TAG_HELLO, handshake(&plan))
            .and_then(|b| postcard::from_bytes::<Hello>(&b).ok());
        match hello {
            Some(hello) => hellos.push(hello),
            // It passed MPI_Init, then went silent: finalising would wait for it.
            None => abort_job(
                world,
                0,
                &format!(
                    "rank {r} did not send its units within {:?} of start",
                    handshake(&plan)
                ),
            ),
        }
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
        None => Verdict::Start { token, plan },
    };
    {
        let comm = world.lock();
        let bytes = encode(&verdict);
        for r in 1..size {
            comm.process_at_rank(r as i32)
                .send_with_tag(&bytes[..], TAG_VERDICT);
        }
    }
    drop(started); // every rank is in: heartbeats watch from here
    if let Some((rank, detail)) = refused {
        return Err(MpiError::UnitMismatch { rank, detail });
    }
    let watches: Vec<Arc<Watch>> = (1..size).map(|_| Arc::default()).collect();
    let links: Vec<Link<'static>> = hellos
        .iter()
        .zip(mapped)
        .zip(&watches)
        .enumerate()
        .map(|(i, ((hello, ids), watch))| {
            let mut link = Link::new(
                i + 1,
                Box::new(RankSender::new(
                    world.clone(),
                    i + 1,
                    TAG_FRAME,
                    config.channel_bytes,
                )),
                Box::new(RankReceiver::new(world.clone(), i + 1, TAG_FRAME)),
                Peer::Rank {
                    pid: hello.pid,
                    watch: watch.clone(),
                },
            );
            link.unit_ids = ids.expect("checked above");
            link.host = Some(hello.host.clone());
            link
        })
        .collect();
    let handle = MpiHandle::new(
        token,
        links,
        config.buffer_size,
        plan,
        config.registry.names(),
    );
    let stop = StopFlag::default();
    let out = std::thread::scope(|s| {
        let monitor = std::thread::Builder::new()
            .name("xme-mpi-monitor".into())
            .spawn_scoped(s, || heart::monitor(world, &watches, plan, &stop))
            .map_err(|e| MpiError::Setup(format!("could not start the heartbeat thread: {e}")))?;
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handle.run_main(main)));
        if let Some(why) = handle.lost_processes() {
            abort_job(world, 0, &why);
        }
        stop.stop(monitor.thread());
        let _ = monitor.join();
        Ok::<_, MpiError>(out)
    })?;
    out.map_err(|panic| std::panic::resume_unwind(panic))
}

/// Ranks `1..N`: says hello, then serves requests until closed, a watcher
/// thread beating beside. Returns the exit status, or the start error every
/// rank shares.
fn serve(
    config: &RunConfig,
    world: &Arc<World>,
    rank: usize,
    started: StartWatchdog,
) -> Result<i32, MpiError> {
    let hello = Hello {
        pid: std::process::id() as i32,
        host: host(),
        units: config.registry.signatures().to_vec(),
    };
    world
        .lock()
        .process_at_rank(0)
        .send_with_tag(&encode(&hello)[..], TAG_HELLO);
    let wait = handshake(&config.watch_plan()).saturating_mul(2);
    let Some(verdict) = recv_from(world, 0, TAG_VERDICT, wait)
        .and_then(|b| postcard::from_bytes::<Verdict>(&b).ok())
    else {
        abort_job(
            world,
            rank,
            &format!("rank 0 did not answer within {wait:?} of start"),
        );
    };
    drop(started); // rank 0 answered: heartbeats watch from here
    let (token, plan) = match verdict {
        Verdict::Start { token, plan } => (token, plan),
        Verdict::Refused { rank, detail } => return Err(MpiError::UnitMismatch { rank, detail }),
    };
    let status = std::sync::atomic::AtomicU32::new(logical::ST_BEGIN);
    let code = LogicalProcess {
        id: rank,
        token,
        requests: RankReceiver::new(world.clone(), 0, TAG_FRAME),
        replies: RankSender::new(world.clone(), 0, TAG_FRAME, config.channel_bytes),
        status: &status,
        registry: &config.registry,
        parent: None,
        plan,
    }
    .run(RankHeart::new(world.clone(), rank, plan.detection));
    Ok(code)
}
