//! `close`: ending logical processes after their queued calls.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{MpiHandle, To};
use xme_core::Fate;

use crate::MpiError;
use crate::call_frame::{KIND_EXIT, Request};
use crate::link::{Ended, LIVENESS, Link, lock};

/// Why a closed logical process answers no more calls.
const CLOSED_BY_MAIN: &str = "the main process closed it (MpiHandle::close, or the end of the run)";

/// How long `close` lets a logical process finish its queue before killing it.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);

impl<'r> MpiHandle<'r> {
    /// Ends logical processes (the seed's `close`): each finishes the calls
    /// already queued for it, then exits; one that does not exit within
    /// [`CLOSE_GRACE`] is killed. Every logical process is reaped. Closing a
    /// closed process is a no-op.
    ///
    /// ```
    /// use xme_mpi::{Mpi, To};
    /// # fn main() -> Result<(), xme_mpi::MpiError> {
    /// let mut mpi = Mpi::new(3)?;
    /// let square = mpi.register("square", |x: u64| x * x);
    /// mpi.run(|m| -> Result<(), xme_mpi::MpiError> {
    ///     m.close(To::Process(1))?;
    ///     assert!(matches!(m.acquire(&square, &1, To::Process(1)), Err(xme_mpi::MpiError::Closed { .. })));
    ///     assert_eq!(m.block_acquire(&square, &3, To::Any)?, 9); // process 2 goes on
    ///     Ok(())
    /// })??;
    /// # Ok(())
    /// # }
    /// ```
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
            l.closing.store(true, Ordering::Release);
        }
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
            if !l.forked {
                self.close_rank(l, deadline);
                continue;
            }
            let fate = loop {
                // Keep draining replies so the process is never stuck on a
                // full channel (a thread that holds the lock drains them
                // itself; waiting for it could outlast the grace: a direct
                // call holds it until its process ends).
                if let Some(mut rx) = l.recv.try_lock() {
                    self.pump(l, &mut rx);
                }
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
            self.pump(l, &mut l.recv.lock());
            let _ = l.ended.set(Ended::Closed(closed_reason(fate)));
            self.fail_pending(l);
        }
        Ok(())
    }
}

impl MpiHandle<'_> {
    /// A rank cannot be waited for or killed from here: reads its replies
    /// until it acknowledges EXIT (all sent before it), while it lives and
    /// answers, until `deadline`; then it lingered. The replies' lock is
    /// only tried: a direct call holds it for its whole call (a unit that
    /// runs for ever, for ever), and reads the replies itself, the
    /// acknowledgement too; it then fails at its next liveness check.
    fn close_rank(&self, l: &Link<'_>, deadline: Instant) {
        while !l.exit_acked.load(Ordering::Acquire) && l.ended.get().is_none() {
            let past = Instant::now() >= deadline;
            match l.recv.try_lock() {
                Some(mut rx) => {
                    if !self.check_alive(l, &mut rx) {
                        break;
                    }
                    // Past the grace, one last look at what came.
                    if self.pump(l, &mut rx) == 0 {
                        if past {
                            break;
                        }
                        rx.channel.wait_recv(Duration::from_millis(1));
                    }
                }
                None if past => break,
                None => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        if l.exit_acked.load(Ordering::Acquire) {
            let _ = l.ended.set(Ended::Closed(CLOSED_BY_MAIN.to_string()));
        } else if l.ended.get().is_none() {
            match l.recv.try_lock() {
                Some(mut rx) => self.end(l, Ended::Lingered, &mut rx),
                // The holder notices at its next liveness check.
                None => {
                    let _ = l.ended.set(Ended::Lingered);
                }
            }
        }
        self.fail_pending(l);
    }
}

/// Why a process the main process closed ended, with its fate when it did
/// not exit cleanly (killed after the grace, say).
pub(crate) fn closed_reason(fate: Option<Fate>) -> String {
    match fate {
        Some(f) if !f.is_success() => format!("{CLOSED_BY_MAIN}; it {f}"),
        _ => CLOSED_BY_MAIN.to_string(),
    }
}
