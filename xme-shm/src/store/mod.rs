//! The value table and its arena: one region of words, read without locks,
//! written with pid-named locks only where probe chains or page roles change.

pub(crate) mod arena;
pub(crate) mod block;
#[cfg(not(loom))]
pub(crate) mod census;
mod chain;
pub(crate) mod layout;
#[cfg(all(test, loom))]
mod loom_models;
pub(crate) mod page;
mod sweep;
pub(crate) mod table;
pub(crate) mod word_lock;
