//! The sealed codec: JSON under XChaCha20-Poly1305 (the `sealed` feature).

use chacha20poly1305::aead::{Aead, AeadInPlace, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use super::{Codec, DEFAULT_MAX_FRAME, check_size, parse_object};
use crate::{Message, MonitorError};

/// First bytes of a sealed frame.
const MAGIC: &[u8; 4] = b"XMES";
/// Version of the sealed frame layout.
const VERSION: u8 = 1;
const KEY_ID: usize = 8;
const NONCE: usize = 24;
const TAG: usize = 16;
/// magic, version, key id, nonce.
const HEADER: usize = 4 + 1 + KEY_ID + NONCE;

/// Authenticated encryption of the JSON text with XChaCha20-Poly1305
/// (RustCrypto's `chacha20poly1305`) under a 32-byte key, with a fresh random
/// 24-byte nonce per message.
///
/// Frame: `"XMES"`, a version byte, an 8-byte key id (derived from the key,
/// so a frame sealed under another key is told apart from a tampered one),
/// the nonce, then the ciphertext and its 16-byte tag. The header is
/// authenticated too. Errors, each distinct: [`MonitorError::FrameTooLarge`],
/// [`MonitorError::Truncated`], [`MonitorError::Foreign`] (not a sealed
/// frame), [`MonitorError::UnsupportedVersion`], [`MonitorError::WrongKey`],
/// [`MonitorError::Tampered`] (any altered byte of nonce, ciphertext or tag),
/// [`MonitorError::BadJson`].
///
/// ```
/// use xme_monitor::{Codec, MonitorError, Sealed};
///
/// let sealed = Sealed::new([7; 32]);
/// let msg = serde_json::json!({"temperature": 21.5});
/// let mut frame = sealed.encode(msg.as_object().unwrap()).unwrap();
/// assert_eq!(sealed.decode(&frame).unwrap()["temperature"], 21.5);
/// assert!(matches!(Sealed::new([8; 32]).decode(&frame), Err(MonitorError::WrongKey)));
/// let last = frame.len() - 1;
/// frame[last] ^= 1;
/// assert!(matches!(sealed.decode(&frame), Err(MonitorError::Tampered)));
/// ```
#[derive(Clone)]
pub struct Sealed {
    cipher: XChaCha20Poly1305,
    key_id: [u8; KEY_ID],
    max_frame: usize,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealed")
            .field("key_id", &self.key_id)
            .field("max_frame", &self.max_frame)
            .finish_non_exhaustive()
    }
}

impl Sealed {
    /// A codec sealing under `key`. Keep the key secret; share it with every
    /// party that must read the messages.
    pub fn new(key: [u8; 32]) -> Sealed {
        let cipher = XChaCha20Poly1305::new(&key.into());
        // The key id: the tag of an empty message under a fixed nonce. It
        // identifies the key without revealing it.
        let probe = cipher
            .encrypt(
                &XNonce::default(),
                Payload {
                    msg: b"",
                    aad: b"xme sealed key id",
                },
            )
            .expect("encrypting an empty message cannot fail");
        let mut key_id = [0; KEY_ID];
        key_id.copy_from_slice(&probe[..KEY_ID]);
        Sealed {
            cipher,
            key_id,
            max_frame: DEFAULT_MAX_FRAME,
        }
    }

    /// Frames larger than `bytes` are refused both ways.
    pub fn max_frame(mut self, bytes: usize) -> Sealed {
        self.max_frame = bytes;
        self
    }

    /// The 8-byte id of this codec's key, as written in its frames.
    pub fn key_id(&self) -> [u8; KEY_ID] {
        self.key_id
    }

    /// Seals arbitrary bytes.
    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, MonitorError> {
        self.seal_with(|out| {
            out.extend_from_slice(plain);
            Ok(())
        })
    }

    /// Seals what `write` appends to the frame: the plaintext is written in
    /// place and encrypted there, without a copy.
    fn seal_with(
        &self,
        write: impl FnOnce(&mut Vec<u8>) -> Result<(), MonitorError>,
    ) -> Result<Vec<u8>, MonitorError> {
        let mut nonce = [0u8; NONCE];
        getrandom::fill(&mut nonce).map_err(|e| MonitorError::Random(e.to_string()))?;
        let mut out = Vec::with_capacity(HEADER + 256 + TAG);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.key_id);
        out.extend_from_slice(&nonce);
        write(&mut out)?;
        check_size(out.len() + TAG, self.max_frame)?;
        let (header, body) = out.split_at_mut(HEADER);
        let tag = self
            .cipher
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), header, body)
            .map_err(|_| MonitorError::FrameTooLarge {
                len: body.len(),
                max: self.max_frame,
            })?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Opens a frame made by [`seal`](Self::seal).
    pub fn open(&self, frame: &[u8]) -> Result<Vec<u8>, MonitorError> {
        check_size(frame.len(), self.max_frame)?;
        if frame.len() < MAGIC.len() + 1 {
            return Err(MonitorError::Truncated {
                len: frame.len(),
                min: HEADER + TAG,
            });
        }
        if &frame[..4] != MAGIC {
            return Err(MonitorError::Foreign);
        }
        if frame[4] != VERSION {
            return Err(MonitorError::UnsupportedVersion(frame[4]));
        }
        if frame.len() < HEADER + TAG {
            return Err(MonitorError::Truncated {
                len: frame.len(),
                min: HEADER + TAG,
            });
        }
        if frame[5..5 + KEY_ID] != self.key_id {
            return Err(MonitorError::WrongKey);
        }
        let (body, tag) = frame[HEADER..].split_at(frame.len() - HEADER - TAG);
        let mut plain = body.to_vec();
        self.cipher
            .decrypt_in_place_detached(
                XNonce::from_slice(&frame[5 + KEY_ID..HEADER]),
                &frame[..HEADER],
                &mut plain,
                tag.into(),
            )
            .map_err(|_| MonitorError::Tampered)?;
        Ok(plain)
    }
}

impl Codec for Sealed {
    fn name(&self) -> &'static str {
        "sealed"
    }

    fn encode(&self, message: &Message) -> Result<Vec<u8>, MonitorError> {
        self.seal_with(|out| serde_json::to_writer(out, message).map_err(MonitorError::BadJson))
    }

    fn decode(&self, bytes: &[u8]) -> Result<Message, MonitorError> {
        parse_object(&self.open(bytes)?)
    }
}
