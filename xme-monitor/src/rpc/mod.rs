//! RPC over TCP and Unix sockets (seed 2.4.1, made real).
//!
//! Every request and reply is a Monitor message, encoded with the
//! connection's [`Codec`](crate::Codec) (sealed by default) inside a frame:
//! a 4-byte little-endian length, then the encoded message, at most
//! `max_frame` bytes. A request is `{"mark": <unique id>, "time": <ms since
//! the epoch>, "fun": <name>, "args": <JSON>}`; its reply carries the same
//! mark and either `"ok": <JSON>` or `"err": {"kind": …, "message": …}`.
//! Marks let one connection carry many calls at once, from several threads.
//! A client's first request, as it connects, calls the function `""` (a
//! hello, answered with `null`), so that its connection authenticates at
//! once (see [`Server`] for what an unauthenticated connection may hold).
//!
//! Built on std's blocking sockets and threads, started only by
//! [`Server::serve_tcp`]/[`Server::serve_unix`] and [`Client`] (no runtime
//! in the background): a process that forks while a server or client runs
//! gives its child none of their threads, so use them on one side of a fork.
//!
//! ```
//! use std::time::Duration;
//! use xme_monitor::Sealed;
//! use xme_monitor::rpc::{Client, Server};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let key = [5u8; 32];
//! let server = Server::new(Sealed::new(key))
//!     .register("add", |(a, b): (i64, i64)| a + b)
//!     .serve_tcp("127.0.0.1:0")?;
//! let client = Client::connect_tcp(server.local_addr().unwrap(), Sealed::new(key))?;
//! let sum: i64 = client.call("add", &(2, 3), Duration::from_secs(5))?;
//! assert_eq!(sum, 5);
//! drop(client);
//! server.shutdown();
//! # Ok(())
//! # }
//! ```

mod client;
mod frame;
mod replays;
mod server;
mod stream;

pub use client::{Client, PendingReply};
pub use frame::decode_frame_for_fuzzing;
pub use server::{Server, ServerHandle};
