//! Calls through the buffer: what a call names ([`Call`](call::Call)), the
//! Manager's `append` / `exec` / `get` (`manager_calls`), the Guard that runs
//! them, and HeartJump, which reports through them.

pub(crate) mod call;
pub(crate) mod guard;
pub(crate) mod heartjump;
pub(crate) mod manager_calls;
