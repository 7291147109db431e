//! The worker process: claims calls from the board, runs them, and writes each
//! reply as one frame to its pipe.

use std::os::fd::{AsFd, OwnedFd};

use xme_core::{Operator, process};
use xme_log::Logger;

use crate::Context;
use crate::board::Board;
use crate::job::ErasedJob;

/// A worker's exit status when it could not write a reply (its pipe was
/// closed: by the parent, or by a task that closed descriptors). Read as
/// such only when the parent saw the pipe close first.
pub(crate) const EXIT_REPLY_FAILED: i32 = 123;

/// Everything a worker needs; borrowed from the parent's memory, copied by fork.
pub(crate) struct WorkerPlan<'a, 't, D> {
    pub jobs: &'a [&'t mut dyn ErasedJob<D>],
    /// First global call index of each job.
    pub offsets: &'a [usize],
    pub board: &'a Board,
    pub logger: &'a Logger,
    pub data: &'a D,
}

impl<D> WorkerPlan<'_, '_, D> {
    /// Maps a global call index to (job, call within the job).
    pub fn locate(&self, g: usize) -> (usize, usize) {
        let job = self.offsets.partition_point(|&o| o <= g) - 1;
        (job, g - self.offsets[job])
    }

    /// The body of worker `serial` in slot `w`; returns its exit status.
    pub fn run(&self, w: usize, serial: u32, pipe: OwnedFd) -> i32 {
        process::install_quiet_panic_hook();
        let operator = Operator::alloc();
        let mut frame = Vec::with_capacity(256);
        let me = nix::unistd::getpid();
        while let Some(g) = self.board.claim(w, serial) {
            let (job, call) = self.locate(g);
            let mut ctx = Context {
                call,
                job,
                operator,
                logger: self.logger,
                data: self.data,
                board: self.board,
            };
            frame.clear();
            frame.extend_from_slice(&[0; 4]);
            frame.extend_from_slice(&(g as u64).to_le_bytes());
            self.jobs[job].run_call(call, &mut ctx, &mut frame);
            if nix::unistd::getpid() != me {
                // The call forked (`os.fork()` in a task) and this is its
                // child, returning instead of leaving: it is no worker. Not a
                // byte to the pipe, no claim, no exit hook: leave at once.
                // SAFETY: `_exit` never returns and skips every destructor
                // and handler, which belong to the worker.
                unsafe { libc::_exit(0) }
            }
            let len = match u32::try_from(frame.len() - 4) {
                Ok(len) => len,
                Err(_) => {
                    let msg = format!(
                        "result of {} bytes exceeds the 4 GiB frame limit",
                        frame.len()
                    );
                    frame.truncate(12);
                    frame.push(crate::job::tag::ENCODE_FAILED);
                    frame.extend_from_slice(msg.as_bytes());
                    (frame.len() - 4) as u32
                }
            };
            frame[..4].copy_from_slice(&len.to_le_bytes());
            if xme_core::fdio::write_all(pipe.as_fd(), &frame).is_err() {
                // The parent is gone or closed our pipe, or a task closed
                // the descriptor: nobody gets results. Not closed again (a
                // closed descriptor's drop aborts a debug build).
                std::mem::forget(pipe);
                return EXIT_REPLY_FAILED;
            }
            self.board.finish(w);
        }
        // The pipe stays open until `_exit`, after the exit hooks (which
        // wait for the non-daemon threads a task started): to the parent
        // the worker is still at work, not a process that closed its pipe
        // and lingers (which it kills). The kernel closes it at exit.
        std::mem::forget(pipe);
        0
    }
}
