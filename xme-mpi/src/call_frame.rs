//! The bytes of requests and replies. Every frame starts with the run's
//! random token; a frame without it is dropped (and logged) by its reader.

pub(crate) const KIND_CALL: u8 = 1;
pub(crate) const KIND_CALL_FN: u8 = 2;
pub(crate) const KIND_EXIT: u8 = 3;
/// Many calls of one unit in one frame (`MpiHandle::map`).
pub(crate) const KIND_BATCH: u8 = 4;

/// The slot of the reply a logical process sends on EXIT, after every other
/// reply: once it is read, nothing more will come.
pub(crate) const EXIT_ACK_SLOT: u32 = u32::MAX - 1;

pub(crate) const REPLY_VALUE: u8 = 0;
pub(crate) const REPLY_PANICKED: u8 = 1;
pub(crate) const REPLY_FAILED: u8 = 2;
pub(crate) const REPLY_NOT_REGISTERED: u8 = 3;

/// Bytes before a request's arguments: token, kind, slot, generation, unit;
/// a `KIND_CALL_FN` request also carries two addresses.
pub(crate) const REQUEST_HEADER: usize = 8 + 1 + 4 + 4 + 4;
const FN_ADDRESSES: usize = 8 + 8;
/// Bytes before a reply's body.
pub(crate) const REPLY_HEADER: usize = 8 + 4 + 4 + 1;

/// A request: call unit `unit` (or `fn_addr` through `tramp_addr`) for slot `slot`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Request {
    pub kind: u8,
    pub slot: u32,
    pub generation: u32,
    pub unit: u32,
    pub fn_addr: u64,
    pub tramp_addr: u64,
}

impl Request {
    pub fn write(&self, token: u64, out: &mut Vec<u8>) {
        let mut h = [0u8; REQUEST_HEADER];
        h[..8].copy_from_slice(&token.to_le_bytes());
        h[8] = self.kind;
        h[9..13].copy_from_slice(&self.slot.to_le_bytes());
        h[13..17].copy_from_slice(&self.generation.to_le_bytes());
        h[17..21].copy_from_slice(&self.unit.to_le_bytes());
        out.clear();
        out.extend_from_slice(&h);
        // Only a direct function call needs the addresses: a unit call's
        // frame stays small (more frames per cache line).
        if self.kind == KIND_CALL_FN {
            out.extend_from_slice(&self.fn_addr.to_le_bytes());
            out.extend_from_slice(&self.tramp_addr.to_le_bytes());
        }
    }

    /// Parses a request; `None` if it is too short or carries another token.
    pub fn read(token: u64, b: &[u8]) -> Option<(Request, &[u8])> {
        if b.len() < REQUEST_HEADER || u64_at(b, 0) != token {
            return None;
        }
        let kind = b[8];
        let (fn_addr, tramp_addr, header) = if kind == KIND_CALL_FN {
            if b.len() < REQUEST_HEADER + FN_ADDRESSES {
                return None;
            }
            (
                u64_at(b, REQUEST_HEADER),
                u64_at(b, REQUEST_HEADER + 8),
                REQUEST_HEADER + FN_ADDRESSES,
            )
        } else {
            (0, 0, REQUEST_HEADER)
        };
        Some((
            Request {
                kind,
                slot: u32_at(b, 9),
                generation: u32_at(b, 13),
                unit: u32_at(b, 17),
                fn_addr,
                tramp_addr,
            },
            &b[header..],
        ))
    }
}

/// Starts a reply for `slot` with outcome `status`; the body follows.
pub(crate) fn reply_header(token: u64, slot: u32, generation: u32, status: u8, out: &mut Vec<u8>) {
    let mut h = [0u8; REPLY_HEADER];
    h[..8].copy_from_slice(&token.to_le_bytes());
    h[8..12].copy_from_slice(&slot.to_le_bytes());
    h[12..16].copy_from_slice(&generation.to_le_bytes());
    h[16] = status;
    out.clear();
    out.extend_from_slice(&h);
}

/// Parses a reply: (slot, generation, status, body).
pub(crate) fn read_reply(token: u64, b: &[u8]) -> Option<(u32, u32, u8, &[u8])> {
    if b.len() < REPLY_HEADER || u64_at(b, 0) != token {
        return None;
    }
    Some((u32_at(b, 8), u32_at(b, 12), b[16], &b[REPLY_HEADER..]))
}

/// A batch request's body: each call's arguments as `[len: u32][bytes]`.
/// Appends one call's arguments.
pub(crate) fn push_batch_call<A: serde::Serialize + ?Sized>(
    out: &mut Vec<u8>,
    args: &A,
) -> Result<(), postcard::Error> {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    if let Err(e) = encode_into(args, out) {
        out.truncate(at);
        return Err(e);
    }
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

pub(crate) use xme_core::result_frame::encode_into;

/// Splits a batch request's body into its calls' arguments; `None` at a
/// malformed entry.
pub(crate) fn batch_calls(mut body: &[u8]) -> impl Iterator<Item = Option<&[u8]>> {
    std::iter::from_fn(move || {
        if body.is_empty() {
            return None;
        }
        let call = (body.len() >= 4)
            .then(|| u32_at(body, 0) as usize)
            .and_then(|len| body.get(4..4 + len));
        match call {
            Some(args) => {
                body = &body[4 + args.len()..];
                Some(Some(args))
            }
            None => {
                body = &[];
                Some(None)
            }
        }
    })
}

/// A batch reply's body: `[done: u32]`, then per call `[status: u8][len:
/// u32][bytes]`. `done` may be fewer than the calls sent, when the rest
/// would not fit the reply channel: the main process sends those again.
pub(crate) const BATCH_ENTRY_HEADER: usize = 5;

/// One call's (status, body) in a batch reply; `None` where malformed.
pub(crate) type BatchEntry<'a> = Option<(u8, &'a [u8])>;

/// Reads a batch reply's body: how many calls it answers, then each call's
/// (status, body); `None` if malformed.
pub(crate) fn batch_replies(body: &[u8]) -> Option<(usize, impl Iterator<Item = BatchEntry<'_>>)> {
    let done = u32_at(body.get(..4)?, 0) as usize;
    let mut rest = &body[4..];
    let entries = std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let entry = (rest.len() >= BATCH_ENTRY_HEADER)
            .then(|| (rest[0], u32_at(rest, 1) as usize))
            .and_then(|(status, len)| Some((status, rest.get(5..5 + len)?)));
        match entry {
            Some((status, bytes)) => {
                rest = &rest[5 + bytes.len()..];
                Some(Some((status, bytes)))
            }
            None => {
                rest = &[];
                Some(None)
            }
        }
    });
    Some((done, entries))
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"))
}

fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_foreign_tokens_are_refused() {
        let r = Request {
            kind: KIND_CALL_FN,
            slot: 7,
            generation: 9,
            unit: 3,
            fn_addr: 0xdead,
            tramp_addr: 0xbeef,
        };
        let mut b = Vec::new();
        r.write(42, &mut b);
        b.extend_from_slice(b"args");
        let (back, args) = Request::read(42, &b).unwrap();
        assert_eq!((back, args), (r, &b"args"[..]));
        assert!(Request::read(43, &b).is_none());
        assert!(Request::read(42, &b[..10]).is_none());
        assert!(Request::read(42, &b[..REQUEST_HEADER + 4]).is_none());
        let unit = Request {
            kind: KIND_CALL,
            fn_addr: 0,
            tramp_addr: 0,
            ..r
        };
        unit.write(42, &mut b);
        assert_eq!(b.len(), REQUEST_HEADER);
        b.extend_from_slice(b"xy");
        assert_eq!(Request::read(42, &b), Some((unit, &b"xy"[..])));
        let mut rep = Vec::new();
        reply_header(42, 7, 9, REPLY_VALUE, &mut rep);
        rep.push(1);
        assert_eq!(read_reply(42, &rep), Some((7, 9, REPLY_VALUE, &[1u8][..])));
        assert!(read_reply(1, &rep).is_none());
    }
}
