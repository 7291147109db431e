//! Length-prefixed postcard frames: how results cross a pipe.
//!
//! A frame is a little-endian `u32` payload length followed by the payload.
//! [`FrameReader`] reassembles frames from arbitrary chunks, refuses lengths above
//! its maximum, and reports a frame cut short by a closed channel.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{CodecError, Error};

/// Bytes in a frame's length prefix.
pub const LEN_BYTES: usize = 4;

/// Encodes `value` with postcard.
pub fn encode<T: Serialize + ?Sized>(value: &T, what: &'static str) -> Result<Vec<u8>, Error> {
    postcard::to_stdvec(value).map_err(|e| Error::Encode {
        what,
        source: CodecError::encoding(e, value),
    })
}

/// Appends `value`'s postcard bytes to `out` (on an error `out` may hold
/// part of them: the caller truncates). Neither `to_extend`, which moves the
/// vector in and out per value, nor the `io::Write` flavor, a `write_all`
/// per byte: both showed in profiles of short calls.
///
/// ```
/// let mut out = vec![7u8];
/// xme_core::result_frame::encode_into(&300u16, &mut out).unwrap();
/// assert_eq!(out, [7, 0xac, 0x02]);
/// ```
pub fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), postcard::Error> {
    postcard::serialize_with_flavor(value, AppendTo(out))
}

/// A postcard flavor that appends to a vector it borrows: one `push` per
/// byte and a copy per longer slice (postcard's `io::Write` flavor makes a
/// `write_all` call per byte, which showed in profiles of short calls).
struct AppendTo<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for AppendTo<'_> {
    type Output = ();

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if data.len() <= 16 {
            for &b in data {
                self.0.push(b);
            }
        } else {
            self.0.extend_from_slice(data);
        }
        Ok(())
    }

    #[inline]
    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Decodes a `T` from postcard bytes; trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], what: &'static str) -> Result<T, Error> {
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|e| Error::Decode {
        what,
        source: CodecError::decoding(e),
    })?;
    if !rest.is_empty() {
        return Err(Error::Decode {
            what,
            source: CodecError::other(format!(
                "{} bytes are left after the value: a different type, or corrupted",
                rest.len()
            )),
        });
    }
    Ok(value)
}

/// Appends a frame holding `payload` to `out`.
pub fn push_frame(out: &mut Vec<u8>, payload: &[u8]) -> Result<(), Error> {
    let len = u32::try_from(payload.len()).map_err(|_| Error::FrameTooLarge {
        len: payload.len(),
        max: u32::MAX as usize,
    })?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Reassembles frames from a byte stream.
#[derive(Debug)]
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    max: usize,
}

impl FrameReader {
    /// A reader refusing frames longer than `max` payload bytes.
    pub fn new(max: usize) -> FrameReader {
        FrameReader {
            buf: Vec::new(),
            start: 0,
            max,
        }
    }

    /// Adds bytes read from the channel.
    pub fn extend(&mut self, bytes: &[u8]) {
        // Drop consumed frames first; only a partial frame is ever moved.
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame's payload, `None` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, Error> {
        let avail = &self.buf[self.start..];
        if avail.len() < LEN_BYTES {
            return Ok(None);
        }
        let len = u32::from_le_bytes(avail[..LEN_BYTES].try_into().expect("4 bytes")) as usize;
        if len > self.max {
            return Err(Error::FrameTooLarge { len, max: self.max });
        }
        if avail.len() < LEN_BYTES + len {
            return Ok(None);
        }
        let begin = self.start + LEN_BYTES;
        self.start = begin + len;
        Ok(Some(&self.buf[begin..begin + len]))
    }

    /// Called when the channel closed: an error if a frame was cut short.
    pub fn finish(&self) -> Result<(), Error> {
        let avail = &self.buf[self.start..];
        if avail.is_empty() {
            return Ok(());
        }
        let expected = if avail.len() >= LEN_BYTES {
            u32::from_le_bytes(avail[..LEN_BYTES].try_into().expect("4 bytes")) as usize
        } else {
            LEN_BYTES
        };
        Err(Error::FrameTruncated {
            expected,
            got: avail.len().saturating_sub(LEN_BYTES),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_survive_any_chunking() {
        let mut stream = Vec::new();
        for i in 0..50u32 {
            push_frame(
                &mut stream,
                &encode(&(i, "x".repeat(i as usize)), "t").unwrap(),
            )
            .unwrap();
        }
        for chunk in [1, 3, 7, 64, 4096] {
            let mut r = FrameReader::new(1 << 20);
            let mut got = Vec::new();
            for c in stream.chunks(chunk) {
                r.extend(c);
                while let Some(f) = r.next_frame().unwrap() {
                    got.push(decode::<(u32, String)>(f, "t").unwrap());
                }
            }
            r.finish().unwrap();
            assert_eq!(got.len(), 50);
            assert_eq!(got[49], (49, "x".repeat(49)));
        }
    }

    #[test]
    fn oversized_and_truncated_frames_are_errors() {
        let mut r = FrameReader::new(8);
        r.extend(&100u32.to_le_bytes());
        assert!(matches!(
            r.next_frame(),
            Err(Error::FrameTooLarge { len: 100, max: 8 })
        ));
        let mut r = FrameReader::new(8);
        r.extend(&[4, 0, 0, 0, 1, 2]);
        assert!(r.next_frame().unwrap().is_none());
        assert!(matches!(
            r.finish(),
            Err(Error::FrameTruncated {
                expected: 4,
                got: 2
            })
        ));
    }

    #[test]
    fn trailing_bytes_and_wrong_types_do_not_decode() {
        let bytes = encode(&7u8, "t").unwrap();
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode::<u8>(&longer, "t").is_err());
        assert!(decode::<String>(&[200], "t").is_err());
    }
}
