//! Result slots: the seed's buffer positions, where replies wait for `get`.

use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::de::DeserializeOwned;
use xme_core::PanicReport;

use crate::MpiError;
use crate::call_frame::{self};
use crate::link::Link;

/// Longest sleep of a thread waiting for a free slot before it re-checks.
pub(crate) const SLOT_RECHECK: Duration = Duration::from_millis(1);

pub(crate) enum SlotState {
    Free,
    Pending {
        lp: usize,
        unit: &'static str,
    },
    /// The result arrived; a value's bytes are in the entry's `body`.
    Ready(Result<(), MpiError>),
    /// Its `Slot` was dropped: the reply is discarded on arrival.
    Abandoned {
        lp: usize,
    },
}

pub(crate) struct SlotEntry {
    pub(crate) generation: u32,
    /// The bytes of a value result, reused from call to call (no allocation).
    pub(crate) body: Vec<u8>,
    /// The unit of the call the slot last held (for messages).
    pub(crate) unit: &'static str,
    pub(crate) state: SlotState,
}

pub(crate) struct SlotTable {
    pub(crate) entries: Vec<SlotEntry>,
    pub(crate) free: Vec<u32>,
    /// Threads waiting for a free slot (notify only when there are some: a
    /// condvar notify is a system call).
    pub(crate) waiters: usize,
    /// When a thread short of slots last checked that the processes holding
    /// them live (see `MpiHandle::take_slot`).
    pub(crate) liveness_checked: Option<std::time::Instant>,
}

impl SlotTable {
    pub(crate) fn new(size: usize) -> SlotTable {
        SlotTable {
            entries: (0..size)
                .map(|_| SlotEntry {
                    generation: 0,
                    body: Vec::new(),
                    unit: "",
                    state: SlotState::Free,
                })
                .collect(),
            free: (0..size as u32).rev().collect(),
            waiters: 0,
            liveness_checked: None,
        }
    }

    /// Frees slot `index`; true if a thread waiting for a slot should be
    /// woken now: once a batch of slots is free, so that a producer blocked
    /// on a full buffer wakes once per batch, not once per `get` (each wake
    /// takes a core from the logical processes). Waiters also re-check every
    /// [`SLOT_RECHECK`], so a single freed slot is never missed for long.
    #[must_use]
    pub(crate) fn release(&mut self, index: u32) -> bool {
        let e = &mut self.entries[index as usize];
        e.state = SlotState::Free;
        e.generation = e.generation.wrapping_add(1);
        self.free.push(index);
        let batch = (self.entries.len() / 8).clamp(1, 32);
        self.waiters > 0 && self.free.len() >= batch
    }
}

/// A pending call's result (the seed's buffer position): pass it to
/// [`MpiHandle::get`](crate::MpiHandle::get). Dropping it discards the result when it arrives.
#[must_use = "a slot holds a result: get it, or drop it to discard the result"]
pub struct Slot<'h, R> {
    /// The run the slot belongs to (behind a trait object, so that a slot's
    /// type does not name the run's channel lifetime).
    pub(crate) handle: &'h (dyn SlotOwner + 'h),
    pub(crate) index: u32,
    pub(crate) generation: u32,
    pub(crate) process: usize,
    pub(crate) taken: bool,
    pub(crate) _result: PhantomData<fn() -> R>,
}

impl<R> Slot<'_, R> {
    /// The logical process the call went to.
    pub fn process(&self) -> usize {
        self.process
    }
}

impl<R> std::fmt::Debug for Slot<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("index", &self.index)
            .field("process", &self.process)
            .finish()
    }
}

impl<R> Drop for Slot<'_, R> {
    fn drop(&mut self) {
        if !self.taken {
            self.handle.abandon(self.index, self.generation);
        }
    }
}

/// What a [`Slot`] needs of its run: to give its slot back when dropped, and
/// to say which run it is.
pub(crate) trait SlotOwner: Sync {
    fn abandon(&self, index: u32, generation: u32);
    fn token(&self) -> u64;
}

/// Puts a reply into its slot; true if a thread waiting for a slot should be
/// woken (the slot was abandoned and is free again).
pub(crate) fn deliver_to(
    table: &mut SlotTable,
    link: &Link<'_>,
    slot: u32,
    generation: u32,
    status: u8,
    body: &[u8],
) -> bool {
    if slot == call_frame::EXIT_ACK_SLOT {
        link.exit_acked.store(true, Ordering::Release);
        return false;
    }
    let Some(e) = table.entries.get_mut(slot as usize) else {
        return false;
    };
    if e.generation != generation {
        return false;
    }
    link.load.fetch_sub(1, Ordering::AcqRel);
    match e.state {
        SlotState::Pending { unit, .. } => {
            let outcome = reply_outcome(unit, link.id, status, body);
            if outcome.is_ok() {
                e.body.clear();
                e.body.extend_from_slice(body);
            }
            e.state = SlotState::Ready(outcome);
            false
        }
        SlotState::Abandoned { .. } => table.release(slot),
        _ => false,
    }
}

/// Decodes a unit's result.
pub(crate) fn decode_result<R: DeserializeOwned>(bytes: &[u8], unit: &str) -> Result<R, MpiError> {
    xme_core::result_frame::decode(bytes, "a unit result").map_err(|e| MpiError::Decode {
        unit: unit.to_string(),
        reason: xme_core::error_chain(&e),
    })
}

/// `Ok` for a value reply (its body is the result), else the unit's error.
pub(crate) fn reply_outcome(
    unit: &str,
    process: usize,
    status: u8,
    body: &[u8],
) -> Result<(), MpiError> {
    match status {
        call_frame::REPLY_VALUE => Ok(()),
        call_frame::REPLY_PANICKED => Err(MpiError::UnitPanicked {
            unit: unit.to_string(),
            process,
            panic: postcard::from_bytes(body).unwrap_or(PanicReport {
                message: "(unreadable panic report)".into(),
                location: None,
            }),
        }),
        call_frame::REPLY_NOT_REGISTERED => Err(MpiError::UnitNotRegistered {
            unit: unit.to_string(),
            process,
        }),
        _ => Err(MpiError::UnitFailed {
            unit: unit.to_string(),
            process,
            reason: String::from_utf8_lossy(body).into_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reply_status_gets_its_own_error_and_text() {
        let e = reply_outcome(
            "sum",
            2,
            call_frame::REPLY_NOT_REGISTERED,
            b"no unit with id 9",
        )
        .unwrap_err();
        assert!(
            matches!(e, MpiError::UnitNotRegistered { process: 2, .. }),
            "{e}"
        );
        assert!(
            e.to_string().starts_with(
                "<XME-MPI-RUN: TASK_NO_REGISTERED>: logical process 2 has no unit `sum`"
            ),
            "{e}"
        );
        let e = reply_outcome("sum", 2, call_frame::REPLY_FAILED, b"bad arguments").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unit `sum` could not run in logical process 2: bad arguments"
        );
        assert!(reply_outcome("sum", 2, call_frame::REPLY_VALUE, b"").is_ok());
    }
}
