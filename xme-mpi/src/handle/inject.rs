//! Broken frames on purpose, for the tests of broken channels.

use std::sync::atomic::Ordering;

use super::MpiHandle;
use crate::MpiError;
use crate::link::{LIVENESS, lock};

impl MpiHandle<'_> {
    /// Writes a frame with a foreign token to logical process `id` (tests).
    #[doc(hidden)]
    pub fn inject_foreign_frame(&self, id: usize) -> Result<(), MpiError> {
        let l = self.link(id)?;
        let mut tx = lock(&l.send);
        let mut junk = vec![0xA5u8; 64];
        junk[..8].copy_from_slice(&(!self.token).to_le_bytes());
        while !tx.channel.try_send(&junk) {
            tx.channel.wait_send(junk.len(), LIVENESS);
        }
        Ok(())
    }

    /// Writes a fast-lane frame header that breaks the channel of logical
    /// process `id` (tests).
    #[doc(hidden)]
    pub fn inject_corrupt_fast_frame(&self, id: usize) -> Result<(), MpiError> {
        let l = self.link(id)?;
        let _reader = l.recv.lock(); // the fast lane's numbers are kept under it
        let seq = l.fast_seq.load(Ordering::Relaxed) + 1;
        l.fast_seq.store(seq, Ordering::Relaxed);
        lock(&l.send).channel.inject_corrupt_fast(seq);
        Ok(())
    }

    /// Writes a frame header that breaks the channel of logical process `id` (tests).
    #[doc(hidden)]
    pub fn inject_corrupt_header(&self, id: usize) -> Result<(), MpiError> {
        let l = self.link(id)?;
        lock(&l.send).channel.inject_corrupt();
        Ok(())
    }
}
