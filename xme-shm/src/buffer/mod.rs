//! The call buffer in the Manager's region: the ring of call cells, the
//! mailboxes of results, and the event counts their waiters sleep on.

// Under loom only the ring's protocol is built, and model-checked.
#[cfg(not(loom))]
pub(crate) mod call_buffer;
pub(crate) mod call_ring;
