//! The zygote's loop (in the zygote process): fork workers on request, and
//! tell the driver at once when one of them ends.
//!
//! It waits in `poll(2)` on its control socket and on a pidfd per worker.
//! A `SPAWN slot` request forks a worker for that slot and answers `SPAWNED
//! pid` with two descriptors (the driver's end of the worker's socket, and the
//! worker's pidfd), or `REFUSED errno`. A worker that ends is reaped at once
//! and reported as `DIED pid kind value`. When the driver closes the socket,
//! the remaining workers are killed and reaped (their `Child` handles drop)
//! and the zygote exits.

use std::collections::HashMap;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{ControlMessage, MsgFlags, recv, sendmsg};
use xme_core::{Fate, process};

use super::layout::PoolRegion;
use super::wire;

/// Sends one packet on the control socket, with descriptors.
pub(crate) fn send_packet(control: &OwnedFd, bytes: &[u8], fds: &[RawFd]) -> nix::Result<()> {
    let iov = [IoSlice::new(bytes)];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    loop {
        match sendmsg::<()>(control.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None) {
            Err(nix::Error::EINTR) => continue,
            other => return other.map(|_| ()),
        }
    }
}

/// `DIED` packet for worker `pid`.
fn died(pid: i32, fate: Fate) -> [u8; 10] {
    let (kind, value) = match fate {
        Fate::Exited(code) => (0u8, code),
        Fate::Signaled { signal, .. } => (1u8, signal),
    };
    let mut p = [0u8; 10];
    p[0] = wire::DIED;
    p[1..5].copy_from_slice(&pid.to_le_bytes());
    p[5] = kind;
    p[6..10].copy_from_slice(&value.to_le_bytes());
    p
}

/// Forks a worker for `slot`: its handle and the driver's end of its
/// socket, or the errno that stopped it.
fn spawn_worker(
    control: &OwnedFd,
    region: &PoolRegion,
    slot: usize,
) -> Result<(process::Child, UnixStream), i32> {
    let (driver_end, worker_end) =
        UnixStream::pair().map_err(|e| e.raw_os_error().unwrap_or(libc::EMFILE))?;
    let control_fd = control.as_raw_fd();
    let driver_fd = driver_end.as_raw_fd();
    // The closure owns the worker's end: dropped here once forked (so the
    // driver sees EOF when the worker ends).
    let child = process::fork_child(move || {
        // SAFETY: both descriptors were inherited by fork and are not used in
        // the worker (the zygote and the driver use them); the values owning
        // them are never dropped here (the worker leaves with `_exit`).
        unsafe {
            drop(OwnedFd::from_raw_fd(driver_fd));
            drop(OwnedFd::from_raw_fd(control_fd));
        }
        super::worker::work(worker_end, region.slot(slot), region.header())
    })
    .map_err(|_| libc::EAGAIN)?;
    Ok((child, driver_end))
}

/// The zygote's loop; its exit status.
pub(crate) fn serve(control: OwnedFd, region: &PoolRegion) -> i32 {
    // SAFETY: setting a signal's disposition to "ignore" runs no handler
    // code; a worker writing to a closed socket then gets EPIPE, as in any
    // Rust program (whose runtime ignores SIGPIPE the same way).
    let _ = unsafe {
        nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGPIPE,
            nix::sys::signal::SigHandler::SigIgn,
        )
    };
    if send_packet(&control, &[wire::READY], &[]).is_err() {
        return 2;
    }
    let mut workers: HashMap<i32, process::Child> = HashMap::new();
    let mut packet = [0u8; 16];
    loop {
        let pids: Vec<i32> = workers.keys().copied().collect();
        let mut fds = vec![PollFd::new(control.as_fd(), PollFlags::POLLIN)];
        let mut watched = Vec::with_capacity(pids.len());
        let mut blind = false;
        for pid in &pids {
            match workers[pid].pidfd() {
                Some(fd) => {
                    fds.push(PollFd::new(fd, PollFlags::POLLIN));
                    watched.push(*pid);
                }
                None => blind = true,
            }
        }
        // Without pidfds (kernels before 5.3), look for deaths every 20 ms.
        let timeout = if blind {
            PollTimeout::from(20u16)
        } else {
            PollTimeout::NONE
        };
        match nix::poll::poll(&mut fds, timeout) {
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(_) => return 3,
        }
        let request = fds[0].revents().is_some_and(|r| !r.is_empty());
        let ended: Vec<i32> = if blind {
            pids
        } else {
            watched
                .iter()
                .zip(&fds[1..])
                .filter(|(_, f)| f.revents().is_some_and(|r| !r.is_empty()))
                .map(|(&pid, _)| pid)
                .collect()
        };
        drop(fds);
        for pid in ended {
            let fate = workers.get_mut(&pid).map(process::Child::try_wait);
            if let Some(Ok(Some(fate))) = fate {
                workers.remove(&pid);
                if send_packet(&control, &died(pid, fate), &[]).is_err() {
                    return 4;
                }
            }
        }
        if !request {
            continue;
        }
        let n = match recv(control.as_raw_fd(), &mut packet, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => return 0, // the driver closed the socket: the pool is done
            Ok(n) => n,
            Err(nix::Error::EINTR | nix::Error::EAGAIN) => continue,
            Err(_) => return 5,
        };
        if n != 5 || packet[0] != wire::SPAWN {
            return 6;
        }
        let slot = u32::from_le_bytes(packet[1..5].try_into().expect("4 bytes")) as usize;
        if slot >= region.slots() {
            return 7;
        }
        let sent = match spawn_worker(&control, region, slot) {
            Ok((child, driver_end)) => {
                let pid = child.pid();
                let mut reply = [wire::SPAWNED, 0, 0, 0, 0];
                reply[1..].copy_from_slice(&pid.to_le_bytes());
                let mut fds = vec![driver_end.as_raw_fd()];
                fds.extend(child.pidfd().map(|fd| fd.as_raw_fd()));
                let sent = send_packet(&control, &reply, &fds);
                workers.insert(pid, child);
                sent
            }
            Err(errno) => {
                let mut reply = [wire::REFUSED, 0, 0, 0, 0];
                reply[1..].copy_from_slice(&errno.to_le_bytes());
                send_packet(&control, &reply, &[])
            }
        };
        if sent.is_err() {
            return 8;
        }
    }
}

/// Gives descriptors 0, 1 and 2 something to point at if the program
/// started with one closed, so that no socket or region the zygote opens
/// lands there (a task's `println!` would write into it).
pub(crate) fn fill_standard_descriptors() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only reads the descriptor's flags.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0 {
            continue;
        }
        if let Ok(null) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
        {
            let null = OwnedFd::from(null);
            if null.as_raw_fd() != fd {
                // SAFETY: dup2 onto a descriptor this process does not use
                // (F_GETFD just said it is closed).
                unsafe { libc::dup2(null.as_raw_fd(), fd) };
            } else {
                std::mem::forget(null); // it is the one we wanted
            }
        }
    }
}
