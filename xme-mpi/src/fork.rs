//! The fork backend: logical processes forked from this one, each joined
//! to it by two shared-memory rings.

use xme_core::SharedRegion;
use xme_core::process::fork_child;

use crate::MpiError;
use crate::byte_ring;
use crate::config::RunConfig;
use crate::cores::CorePlan;
use crate::handle::MpiHandle;
use crate::link::{Link, Peer};
use crate::logical::LogicalProcess;
use crate::watch::{SharedHeart, Watch};

/// A forked run: the logical processes are forked from this one, `main`
/// runs here, and every logical process is closed (and reaped) after it.
pub(crate) fn run<T>(
    config: RunConfig,
    main: impl FnOnce(&MpiHandle<'_>) -> T,
) -> Result<T, MpiError> {
    let token = xme_core::Operator::alloc().id();
    let lps = config.pnum - 1;
    let region = SharedRegion::anonymous(lps * bytes_per_process(config.channel_bytes))?;
    let links = start(&config, &region, token)?;
    let handle = MpiHandle::new(
        token,
        links,
        config.buffer_size,
        config.watch_plan(),
        config.registry.names(),
    );
    Ok(handle.run_main(main))
}

/// Bytes of region one logical process takes: two rings and its [`Watch`].
fn bytes_per_process(channel_bytes: usize) -> usize {
    2 * byte_ring::ring_bytes(channel_bytes) + WATCH_BYTES
}

/// Room for a process's [`Watch`], keeping the next process's rings on
/// cache lines.
const WATCH_BYTES: usize = 64;
const _: () = assert!(std::mem::size_of::<Watch>() <= WATCH_BYTES);

/// Forks `pnum - 1` logical processes over rings in `region` and returns
/// the main process's links to them.
fn start<'r>(
    config: &'r RunConfig,
    region: &'r SharedRegion,
    token: u64,
) -> Result<Vec<Link<'r>>, MpiError> {
    let lps = config.pnum - 1;
    let per_lp = bytes_per_process(config.channel_bytes);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let spin = if config.pnum <= cpus {
        byte_ring::SPIN_DEDICATED
    } else {
        byte_ring::SPIN_SHARED
    };
    // Each process registers for heavy fences itself (a fork child too),
    // so that publishing a frame needs only a light one.
    let light = xme_core::fence::register();
    let parent = xme_core::process::current_pid();
    let cores = if config.bind_to_cores {
        CorePlan::new()
    } else {
        None
    };
    let mut links = Vec::with_capacity(lps);
    for i in 0..lps {
        let base = i * per_lp;
        let ring_bytes = byte_ring::ring_bytes(config.channel_bytes);
        let (mut requests, mut lp_requests) =
            byte_ring::split(region, base, config.channel_bytes, token, spin)?;
        let (mut lp_replies, mut replies) =
            byte_ring::split(region, base + ring_bytes, config.channel_bytes, token, spin)?;
        let watch = region.place::<Watch>(base + 2 * ring_bytes)?;
        requests.use_light_fences(light);
        replies.use_light_fences(light);
        // The logical process takes the request consumer and the reply
        // producer; this process drops them when the closure is dropped
        // after fork, so each side of each ring has one owner.
        let child = fork_child(move || {
            let light = xme_core::fence::register();
            lp_requests.use_light_fences(light);
            lp_replies.use_light_fences(light);
            LogicalProcess {
                id: i + 1,
                token,
                requests: lp_requests,
                replies: lp_replies,
                status: &watch.status,
                registry: &config.registry,
                parent: Some(parent),
                plan: config.watch_plan(),
            }
            .run(SharedHeart(watch))
        })?;
        if let Some(cores) = &cores {
            cores.bind(i + 1, child.pid()); // unbound if refused: slower, still correct
        }
        links.push(Link::new(
            i + 1,
            Box::new(requests),
            Box::new(replies),
            Peer::Forked { child, watch },
        ));
    }
    Ok(links)
}
