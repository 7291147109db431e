//! The Monitor of xme (seed 2.4): a JSON message map shared by processes,
//! two codecs to turn it into bytes (sealed, and the Python XME 4.2 wire
//! format), and an RPC server and client that carry Monitor messages over
//! TCP and Unix sockets (seed 2.4.1, made real).
//!
//! ```
//! use serde_json::json;
//! use xme_core::Operator;
//! use xme_monitor::Monitor;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let monitor = Monitor::builder().key([1; 32]).build()?;
//! monitor.update(json!({"a": 1, "b": [1, 2]}), Operator::ADMIN)?;
//! let frame = monitor.marshal()?;
//! let other = Monitor::builder().key([1; 32]).build()?;
//! other.unmarshal(&frame, Operator::ADMIN)?;
//! assert_eq!(other.get(&["b"])?, json!([1, 2]));
//! # Ok(())
//! # }
//! ```
//!
//! Linux only: xme uses shared regions.

#[cfg(not(target_os = "linux"))]
compile_error!("xme-monitor runs on Linux only (shared regions): build it for a Linux target");

mod codec;
mod error;
mod inspect;
mod manager_ext;
mod monitor;
mod python;
#[cfg(feature = "rpc")]
pub mod rpc;

#[cfg(feature = "sealed")]
pub use codec::Sealed;
pub use codec::{Codec, DEFAULT_MAX_FRAME, XmeWire, swap_nibbles};
pub use error::MonitorError;
pub use inspect::{MONITOR_KIND, MONITOR_LAYOUT, MonitorSnapshot};
pub use manager_ext::{CopyReport, JsonViews, MESSAGE_KEY, ManagerMessages};
pub use monitor::{Monitor, MonitorBuilder};
// Types of other crates in this crate's signatures, so it can be used alone.
pub use serde_json;
pub use xme_core::{Operator, SharedRegion};
pub use xme_security::{LockType, Security, SecurityError};
pub use xme_shm::Manager;

/// A message map: string keys to JSON values, in insertion order.
pub type Message = serde_json::Map<String, serde_json::Value>;

/// The seed's `get(*keys)` on a map: all, one value, or a sub-map.
pub(crate) fn select(mut map: Message, keys: &[&str]) -> Result<serde_json::Value, MonitorError> {
    use serde_json::Value;
    match keys {
        [] => Ok(Value::Object(map)),
        [k] => map
            .swap_remove(*k)
            .ok_or_else(|| MonitorError::NotFound(k.to_string())),
        _ => {
            let mut sub = Message::new();
            for k in keys {
                let v = map
                    .swap_remove(*k)
                    .ok_or_else(|| MonitorError::NotFound(k.to_string()))?;
                sub.insert(k.to_string(), v);
            }
            Ok(Value::Object(sub))
        }
    }
}

// The README's example runs as a doctest (and, depending on this crate
// alone, in CI: scripts/standalone-check.sh).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
