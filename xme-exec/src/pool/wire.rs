//! Bytes on the pool's sockets.
//!
//! Driver → worker, one frame per dispatch, `[len u32][TASKS u8][tasks u32]`
//! then per task `[ordinal u64][entry u64][calls u32][flags u8][args_len u32]`
//! and the task's arguments, `[len u32][postcard bytes]` per call.
//!
//! Worker → driver: `[WAKE u8]` (look at my slot), or `[BIG u8][len u32]`
//! and the bytes of a result too large for the ring.
//!
//! Driver ↔ zygote, packets on a `SOCK_SEQPACKET` pair: the driver sends
//! `[SPAWN u8][slot u32]`; the zygote answers `[SPAWNED u8][pid i32]` with
//! the driver's end of the worker's socket and the worker's pidfd as
//! `SCM_RIGHTS`, or `[REFUSED u8][errno i32]`, and says on its own
//! `[DIED u8][pid i32][kind u8][value i32]` when a worker ended (kind 0: exit
//! status, 1: signal) and `[READY u8]` once, when it starts serving.

use std::io::Read;

pub(crate) const TASKS: u8 = 1;
pub(crate) const WAKE: u8 = 2;
pub(crate) const BIG: u8 = 3;

pub(crate) const SPAWN: u8 = 1;
pub(crate) const READY: u8 = 0x52;
pub(crate) const SPAWNED: u8 = 1;
pub(crate) const REFUSED: u8 = 2;
pub(crate) const DIED: u8 = 3;

/// Task flag: the worker stamps each call's start time (a time limit
/// applies to it).
pub(crate) const FLAG_TIMED: u8 = 1;

/// Largest frame or result either side accepts (a corrupt length is not an
/// allocation).
pub(crate) const MAX_FRAME: usize = 1 << 30;

/// Results from this size on go over the socket instead of the ring.
pub(crate) const BIG_RESULT: usize = 32 * 1024;

/// One task as the worker reads it from a frame.
#[derive(Debug)]
pub(crate) struct TaskView<'a> {
    pub ordinal: u64,
    pub entry: u64,
    pub calls: u32,
    pub flags: u8,
    pub args: &'a [u8],
}

/// Appends a task's header and arguments to a frame being built.
pub(crate) fn push_task(
    frame: &mut Vec<u8>,
    ordinal: u64,
    entry: u64,
    calls: u32,
    flags: u8,
    args: &[u8],
) {
    frame.extend_from_slice(&ordinal.to_le_bytes());
    frame.extend_from_slice(&entry.to_le_bytes());
    frame.extend_from_slice(&calls.to_le_bytes());
    frame.push(flags);
    frame.extend_from_slice(&(args.len() as u32).to_le_bytes());
    frame.extend_from_slice(args);
}

/// Starts a TASKS frame (length and count are filled by [`finish_frame`]).
pub(crate) fn start_frame(frame: &mut Vec<u8>) -> usize {
    let at = frame.len();
    frame.extend_from_slice(&[0; 4]);
    frame.push(TASKS);
    frame.extend_from_slice(&[0; 4]);
    at
}

/// Writes the length and task count of the frame started at `at`.
pub(crate) fn finish_frame(frame: &mut [u8], at: usize, tasks: u32) {
    let len = (frame.len() - at - 4) as u32;
    frame[at..at + 4].copy_from_slice(&len.to_le_bytes());
    frame[at + 5..at + 9].copy_from_slice(&tasks.to_le_bytes());
}

fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if bytes.len() < n {
        return None;
    }
    let (head, rest) = bytes.split_at(n);
    *bytes = rest;
    Some(head)
}

fn u32_at(bytes: &mut &[u8]) -> Option<u32> {
    take(bytes, 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
}

fn u64_at(bytes: &mut &[u8]) -> Option<u64> {
    take(bytes, 8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
}

/// The tasks of a frame body (after its length); `None` if it breaks the
/// format.
pub(crate) fn parse_tasks(mut body: &[u8]) -> Option<Vec<TaskView<'_>>> {
    let kind = take(&mut body, 1)?[0];
    if kind != TASKS {
        return None;
    }
    let count = u32_at(&mut body)? as usize;
    let mut tasks = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let ordinal = u64_at(&mut body)?;
        let entry = u64_at(&mut body)?;
        let calls = u32_at(&mut body)?;
        let flags = take(&mut body, 1)?[0];
        let len = u32_at(&mut body)? as usize;
        let args = take(&mut body, len)?;
        tasks.push(TaskView {
            ordinal,
            entry,
            calls,
            flags,
            args,
        });
    }
    body.is_empty().then_some(tasks)
}

/// The arguments of each call of a task, in order; `None` past a broken one.
pub(crate) fn calls(mut args: &[u8]) -> impl Iterator<Item = Option<&[u8]>> {
    std::iter::from_fn(move || {
        if args.is_empty() {
            return None;
        }
        Some(u32_at(&mut args).and_then(|len| take(&mut args, len as usize)))
    })
}

/// Appends one call's arguments to a task's argument bytes.
#[cfg(test)]
pub(crate) fn push_call_args(args: &mut Vec<u8>, call: &[u8]) {
    args.extend_from_slice(&(call.len() as u32).to_le_bytes());
    args.extend_from_slice(call);
}

/// The byte offset of call `k` in a task's arguments (`k` ≤ calls).
pub(crate) fn call_offset(args: &[u8], k: usize) -> usize {
    let mut at = 0;
    for _ in 0..k {
        let len = u32::from_le_bytes(args[at..at + 4].try_into().expect("4 bytes")) as usize;
        at += 4 + len;
    }
    at
}

/// Reads one frame body (after its `u32` length) into `buf`.
pub(crate) fn read_frame(r: &mut impl Read, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!(
            "a frame of {len} bytes (over the {MAX_FRAME}-byte limit)"
        )));
    }
    buf.clear();
    buf.resize(len, 0);
    r.read_exact(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_round_trip_and_broken_frames_are_refused() {
        let mut frame = Vec::new();
        let at = start_frame(&mut frame);
        let mut args = Vec::new();
        push_call_args(&mut args, b"ab");
        push_call_args(&mut args, b"");
        push_call_args(&mut args, b"xyz");
        push_task(&mut frame, 7, 99, 3, FLAG_TIMED, &args);
        push_task(&mut frame, 8, 100, 0, 0, &[]);
        finish_frame(&mut frame, at, 2);
        let body = &frame[4..];
        assert_eq!(
            u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize,
            body.len()
        );
        let tasks = parse_tasks(body).unwrap();
        assert_eq!(tasks.len(), 2);
        assert_eq!(
            (tasks[0].ordinal, tasks[0].entry, tasks[0].calls),
            (7, 99, 3)
        );
        assert_eq!(tasks[0].flags, FLAG_TIMED);
        let got: Vec<_> = calls(tasks[0].args).map(Option::unwrap).collect();
        assert_eq!(got, [&b"ab"[..], b"", b"xyz"]);
        assert_eq!(call_offset(tasks[0].args, 2), 4 + 2 + 4);
        assert!(parse_tasks(&body[..body.len() - 1]).is_none());
        assert!(parse_tasks(&[9]).is_none());
        let mut broken = args.clone();
        broken[0] = 200;
        assert!(calls(&broken).any(|c| c.is_none()));
    }
}
