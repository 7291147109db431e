use std::fmt;

/// The five lock types of the seed (`Security.DISABLE` … `Security.SPIN`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u32)]
pub enum LockType {
    /// No exclusion: acquire and release always succeed.
    Disable = 0,
    /// Exclusive. A waiter spins briefly, then sleeps on a shared futex (woken
    /// by the release, and at least every `MuteTime` to check the holder lives).
    Mutex = 1,
    /// Exclusive among the operators on the lock's list ([`authorize`](crate::Security::authorize));
    /// any other operator is refused at once.
    Authorisation = 2,
    /// Readers–writer: any operator may read, concurrently; only the
    /// [`register`](crate::Security::register)ed operator may write. The default.
    #[default]
    ReadWrite = 3,
    /// Exclusive; a waiter busy-waits (`spin_loop`, then yielding), never sleeps.
    Spin = 4,
}

impl LockType {
    pub(crate) fn from_raw(raw: u32) -> LockType {
        match raw {
            0 => LockType::Disable,
            1 => LockType::Mutex,
            2 => LockType::Authorisation,
            4 => LockType::Spin,
            // 3, and anything a foreign writer left: the safest type.
            _ => LockType::ReadWrite,
        }
    }
}

impl fmt::Display for LockType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LockType::Disable => "DISABLE",
            LockType::Mutex => "MUTEX",
            LockType::Authorisation => "AUTHORISATION",
            LockType::ReadWrite => "READWRITE",
            LockType::Spin => "SPIN",
        })
    }
}
