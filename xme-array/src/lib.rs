//! `Array` marks an argument to split across calls; the split plan says how many
//! calls there are and what each one receives (seed 1.1).
//!
//! - `calnum` is the length of the longest [`Array`] (1 when there is none).
//! - A shorter `Array` is padded with **its last element** (seed 1.1, special case 1).
//! - An empty `Array` is an error: it has no element to give.
//! - A [`Same`] argument goes whole to every call.
//!
//! ```
//! use xme_array::{Array, Same, SplitArgs};
//!
//! let args = (Array::from(vec![1, 2, 3, 4]), Array::from(vec!["b1", "b2"]), Same(10));
//! let plan = args.plan().unwrap();
//! assert_eq!(plan.calnum(), 4);
//! assert_eq!(args.call(0), (1, "b1", 10));
//! assert_eq!(args.call(3), (4, "b2", 10)); // "b2" padded: it is the last element
//! ```
//!
//! Pure logic: no processes here. `xme-exec` runs the calls. Unlike the
//! other xme crates, which run on Linux only, this one builds on any target.

mod array;
mod error;
mod plan;

pub use array::{Array, Same};
pub use error::ArrayError;
pub use plan::{Split, SplitArgs, SplitPlan};

// The README's example runs as a doctest (and, depending on this crate
// alone, in CI: scripts/standalone-check.sh).
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
