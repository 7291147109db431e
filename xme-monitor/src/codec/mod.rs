//! Codecs: how a message map becomes bytes and back.
//!
//! - `Sealed` (the Monitor's default, `sealed` feature): JSON encrypted and
//!   authenticated with XChaCha20-Poly1305 under a 32-byte key.
//! - [`XmeWire`]: byte for byte the Python XME 4.2 format, to exchange
//!   messages with Python XME programs.

#[cfg(feature = "sealed")]
mod sealed;

#[cfg(feature = "sealed")]
pub use sealed::Sealed;

use crate::python;
use crate::{Message, MonitorError};

/// Largest frame a codec reads or writes unless told otherwise: 64 MiB.
pub const DEFAULT_MAX_FRAME: usize = 64 << 20;

/// Turns a message map into bytes and back. Decoding checks everything and
/// returns a typed error, never a partial map.
pub trait Codec: Send + Sync {
    /// A short name for logs.
    fn name(&self) -> &'static str;
    /// Encodes `message`.
    fn encode(&self, message: &Message) -> Result<Vec<u8>, MonitorError>;
    /// Decodes bytes made by [`encode`](Self::encode) (or by a peer).
    fn decode(&self, bytes: &[u8]) -> Result<Message, MonitorError>;
}

pub(crate) fn check_size(len: usize, max: usize) -> Result<(), MonitorError> {
    if len > max {
        Err(MonitorError::FrameTooLarge { len, max })
    } else {
        Ok(())
    }
}

pub(crate) fn parse_object(json: &[u8]) -> Result<Message, MonitorError> {
    match serde_json::from_slice(json).map_err(MonitorError::BadJson)? {
        serde_json::Value::Object(map) => Ok(map),
        other => Err(MonitorError::NotAnObject {
            found: python::kind(&other),
        }),
    }
}

/// The Python XME 4.2 wire format: `json.dumps` with its default separators
/// (`", "`, `": "`) and `ensure_ascii` (non-ASCII as `\uXXXX`), UTF-8, then
/// the two 4-bit halves of every byte swapped (`{` = `0x7b` becomes `0xb7`).
///
/// Encoding writes numbers as Python does: integers exactly (any size),
/// floats in `repr` form (`1e+16`, `1e-05`, `-0.0`, `0.1`). Decoding accepts
/// any JSON object; the `NaN` and `Infinity` that Python writes for those
/// floats are not JSON and are refused ([`MonitorError::BadJson`]). Not
/// authenticated: anyone can forge or alter a frame.
///
/// ```
/// use xme_monitor::{Codec, XmeWire};
///
/// let msg = serde_json::json!({"a": 1, "é": [true, null]});
/// let wire = XmeWire::default().encode(msg.as_object().unwrap()).unwrap();
/// assert_eq!(wire[0], 0xb7); // '{' with its nibbles swapped
/// let back = XmeWire::default().decode(&wire).unwrap();
/// assert_eq!(serde_json::Value::Object(back), msg);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XmeWire {
    max_frame: usize,
}

impl Default for XmeWire {
    fn default() -> Self {
        XmeWire {
            max_frame: DEFAULT_MAX_FRAME,
        }
    }
}

impl XmeWire {
    /// Frames larger than `bytes` are refused both ways.
    pub fn max_frame(mut self, bytes: usize) -> XmeWire {
        self.max_frame = bytes;
        self
    }
}

/// Swaps the two 4-bit halves of every byte (its own inverse).
pub fn swap_nibbles(bytes: &mut [u8]) {
    for b in bytes {
        *b = b.rotate_left(4);
    }
}

impl Codec for XmeWire {
    fn name(&self) -> &'static str {
        "xme-wire"
    }

    fn encode(&self, message: &Message) -> Result<Vec<u8>, MonitorError> {
        let mut out = Vec::with_capacity(256);
        python::write_object(message, &mut out);
        check_size(out.len(), self.max_frame)?;
        swap_nibbles(&mut out);
        Ok(out)
    }

    fn decode(&self, bytes: &[u8]) -> Result<Message, MonitorError> {
        check_size(bytes.len(), self.max_frame)?;
        let mut json = bytes.to_vec();
        swap_nibbles(&mut json);
        parse_object(&json)
    }
}
