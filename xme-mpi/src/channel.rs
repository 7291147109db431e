//! What the main process and a logical process exchange frames through,
//! whatever carries them: the shared-memory ring (`ring`) or MPI messages
//! (`cluster`).

use std::time::Duration;

/// The frame read or written does not follow the channel's format.
#[derive(Debug)]
pub(crate) struct Corrupt(pub String);

/// How a wait ended.
pub(crate) enum Waited {
    /// Something changed: try again.
    Ready,
    /// The bounded sleep passed: check the peer, then wait again.
    Idle,
}

/// The sending end of a channel between the main process and one logical
/// process: the shared-memory ring's `Producer` (forked processes) or a
/// `RankSender` (the ranks of an MPI job).
/// `&mut self`: one sender at a time (callers keep it behind a `Mutex`).
pub(crate) trait SendChannel: Send {
    /// Writes a frame if there is room.
    fn try_send(&mut self, frame: &[u8]) -> bool;
    /// Waits at most `max` for room for a frame of `len` bytes.
    fn wait_send(&mut self, len: usize, max: Duration) -> Waited;
    /// Largest frame the channel carries.
    fn max_frame(&self) -> usize;
    /// Bytes the channel holds.
    fn capacity(&self) -> usize;
    /// Sends frame `seq` (from 1) of a one-at-a-time exchange by the
    /// channel's fastest path; false if it has none for this frame (then
    /// [`try_send`](Self::try_send) it).
    fn send_fast(&mut self, _seq: u64, _frame: &[u8]) -> bool {
        false
    }
    /// Publishes a frame header that breaks the format (tests of broken channels).
    fn inject_corrupt(&mut self);
    /// Publishes fast frame `seq` with a header that breaks the format (tests).
    fn inject_corrupt_fast(&mut self, _seq: u64) {}
}

/// The receiving end of a channel (see [`SendChannel`]).
pub(crate) trait RecvChannel: Send {
    /// Reads the next frame into `out`, if any.
    fn try_recv(&mut self, out: &mut Vec<u8>) -> Result<bool, Corrupt>;
    /// Waits at most `max` for a frame.
    fn wait_recv(&mut self, max: Duration) -> Waited;
    /// Makes the receiver wait for fast frame `seq` as well (0: none).
    fn expect_fast(&mut self, _seq: u64) {}
    /// Takes the expected fast frame, if it arrived.
    fn recv_fast(&mut self, _out: &mut Vec<u8>) -> Result<bool, Corrupt> {
        Ok(false)
    }
}
