use std::fmt;

use serde::{Deserialize, Serialize};

/// An operator: the identity under which a process or thread acts on shared state
/// (`AllocOperator` in the seed).
///
/// Operators are 64 random bits, so one process cannot guess another's id.
/// [`Operator::ADMIN`] is a distinguished, well-known operator; `0` is never
/// allocated, so shared-memory structures can use it to mean "nobody".
///
/// ```
/// use xme_core::Operator;
/// let a = Operator::alloc();
/// let b = Operator::alloc();
/// assert_ne!(a, b);
/// assert!(!a.is_admin());
/// assert!(Operator::ADMIN.is_admin());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Operator(u64);

impl Operator {
    /// The administrator operator.
    pub const ADMIN: Operator = Operator(u64::MAX);

    /// Allocates a fresh random operator id (never `0`, never `ADMIN`, never
    /// `u64::MAX - 1`, which shared tables keep for a freed entry).
    pub fn alloc() -> Operator {
        loop {
            let id = random_u64();
            if id != 0 && id < u64::MAX - 1 {
                return Operator(id);
            }
        }
    }

    /// The raw id, for storing in an atomic word.
    pub const fn id(self) -> u64 {
        self.0
    }

    /// Rebuilds an operator from a raw id read from shared memory; `0` means none.
    pub const fn from_id(id: u64) -> Option<Operator> {
        if id == 0 { None } else { Some(Operator(id)) }
    }

    /// True for [`Operator::ADMIN`].
    pub const fn is_admin(self) -> bool {
        self.0 == u64::MAX
    }
}

impl fmt::Debug for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_admin() {
            f.write_str("Operator(ADMIN)")
        } else {
            write!(f, "Operator({:016x})", self.0)
        }
    }
}

/// What was wrong with a text that should name an [`Operator`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not an operator: it is `ADMIN` or 16 hexadecimal digits, not all zero")]
pub struct ParseOperatorError {
    /// The text given.
    pub text: String,
}

/// Reads what [`Display`](fmt::Display) writes: `ADMIN` or 16 hex digits.
///
/// ```
/// use xme_core::Operator;
/// let op = Operator::alloc();
/// assert_eq!(op.to_string().parse::<Operator>(), Ok(op));
/// assert_eq!("ADMIN".parse::<Operator>(), Ok(Operator::ADMIN));
/// assert!("0000000000000000".parse::<Operator>().is_err());
/// ```
impl std::str::FromStr for Operator {
    type Err = ParseOperatorError;

    fn from_str(text: &str) -> Result<Operator, ParseOperatorError> {
        let err = || ParseOperatorError {
            text: text.to_string(),
        };
        if text == "ADMIN" {
            return Ok(Operator::ADMIN);
        }
        if text.len() != 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err());
        }
        u64::from_str_radix(text, 16)
            .ok()
            .and_then(Operator::from_id)
            .ok_or_else(err)
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_admin() {
            f.write_str("ADMIN")
        } else {
            write!(f, "{:016x}", self.0)
        }
    }
}

/// 64 bits from the operating system's random source.
pub(crate) fn random_u64() -> u64 {
    // The OS source only fails when the kernel has no entropy interface at all;
    // fall back to a mix of time and pid rather than panic.
    getrandom::u64().unwrap_or_else(|_| {
        let t = crate::monotonic_ns();
        t.rotate_left(17) ^ (u64::from(std::process::id()) << 32) ^ 0x9e37_79b9_7f4a_7c15
    })
}
