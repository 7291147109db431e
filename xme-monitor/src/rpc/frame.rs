//! Length-prefixed frames of encoded Monitor messages, and the request and
//! reply messages inside them.

use std::io::{self, Read, Write};

use serde_json::{Value, json};

use crate::{Codec, Message, MonitorError};

/// The function name of a client's hello: the request a client sends as it
/// connects, so that its connection authenticates at once (answered with
/// `null`, whatever functions the server has).
pub(crate) const HELLO: &str = "";

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub(crate) fn read_frame(r: &mut impl Read, max: usize) -> Result<Option<Vec<u8>>, MonitorError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(source) => {
            return Err(MonitorError::Io {
                doing: "reading a frame length",
                source,
            });
        }
    }
    read_body(r, u32::from_le_bytes(len) as usize, max).map(Some)
}

/// Reads a frame's body of `len` bytes (its length already read), refusing
/// one over `max`. Memory grows with the bytes that arrive, not with the
/// length announced: a peer that announces a large frame and sends little
/// costs little.
pub(crate) fn read_body(
    r: &mut impl Read,
    len: usize,
    max: usize,
) -> Result<Vec<u8>, MonitorError> {
    if len > max {
        return Err(MonitorError::FrameTooLarge { len, max });
    }
    let mut body = Vec::with_capacity(len.min(64 * 1024));
    let got = r
        .take(len as u64)
        .read_to_end(&mut body)
        .map_err(|source| MonitorError::Io {
            doing: "reading a frame body",
            source,
        })?;
    if got < len {
        return Err(MonitorError::Io {
            doing: "reading a frame body",
            source: io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the connection ended after {got} of {len} bytes"),
            ),
        });
    }
    Ok(body)
}

/// Appends one frame (length, then body) to `out`.
pub(crate) fn push_frame(out: &mut impl Write, body: &[u8]) -> io::Result<()> {
    out.write_all(&(body.len() as u32).to_le_bytes())?;
    out.write_all(body)
}

/// A decoded request.
pub(crate) struct Request {
    pub mark: String,
    pub time_ms: u64,
    pub fun: String,
    pub args: Value,
}

/// A decoded reply.
pub(crate) struct Reply {
    pub mark: String,
    pub result: Result<Value, (String, String)>,
}

fn field<'a>(m: &'a Message, k: &str) -> Result<&'a Value, MonitorError> {
    m.get(k)
        .ok_or_else(|| MonitorError::NotFound(k.to_string()))
}

fn text(m: &Message, k: &str) -> Result<String, MonitorError> {
    field(m, k)?
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| MonitorError::NotFound(format!("{k} (as a string)")))
}

pub(crate) fn encode_request(
    codec: &dyn Codec,
    mark: &str,
    time_ms: u64,
    fun: &str,
    args: Value,
) -> Result<Vec<u8>, MonitorError> {
    let v = json!({"mark": mark, "time": time_ms, "fun": fun, "args": args});
    codec.encode(v.as_object().expect("an object"))
}

pub(crate) fn decode_request(codec: &dyn Codec, body: &[u8]) -> Result<Request, MonitorError> {
    let mut m = codec.decode(body)?;
    Ok(Request {
        mark: text(&m, "mark")?,
        time_ms: field(&m, "time")?
            .as_u64()
            .ok_or_else(|| MonitorError::NotFound("time (as an integer)".into()))?,
        fun: text(&m, "fun")?,
        args: m.swap_remove("args").unwrap_or(Value::Null),
    })
}

pub(crate) fn encode_reply(
    codec: &dyn Codec,
    mark: &str,
    result: Result<Value, (&str, String)>,
) -> Result<Vec<u8>, MonitorError> {
    let v = match result {
        Ok(v) => json!({"mark": mark, "ok": v}),
        Err((kind, message)) => json!({"mark": mark, "err": {"kind": kind, "message": message}}),
    };
    codec.encode(v.as_object().expect("an object"))
}

pub(crate) fn decode_reply(codec: &dyn Codec, body: &[u8]) -> Result<Reply, MonitorError> {
    let mut m = codec.decode(body)?;
    let mark = text(&m, "mark")?;
    if let Some(v) = m.swap_remove("ok") {
        return Ok(Reply {
            mark,
            result: Ok(v),
        });
    }
    let err = field(&m, "err")?;
    let s = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    Ok(Reply {
        mark,
        result: Err((s("kind"), s("message"))),
    })
}

/// Runs `bytes` through the frame reader and both message decoders, as the
/// server and client would; for fuzzing. Never panics.
#[doc(hidden)]
pub fn decode_frame_for_fuzzing(codec: &dyn Codec, bytes: &[u8]) -> Result<(), MonitorError> {
    let mut r = bytes;
    while let Some(body) = read_frame(&mut r, 1 << 20)? {
        let _ = decode_request(codec, &body);
        let _ = decode_reply(codec, &body);
    }
    Ok(())
}
