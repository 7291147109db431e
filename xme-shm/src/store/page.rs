//! A page's role word: `epoch:40 | count:16 | role:8`.
//!
//! Roles: FREE; a size class (`count`: blocks taken, a hint kept close, made
//! exact by every close); the same class CLOSING (its closer, holding the
//! page lock, is counting its blocks); INIT (being set up under the page
//! lock); the HEAD or a TAIL of an extent. The epoch moves on whenever the
//! page starts a new life (FREE, then INIT, then a role), so a reader that
//! read a block while the page changed life sees the epoch differ.

use crate::store::layout::CLASSES;

pub(crate) const ROLE_FREE: u64 = 0;
/// `CLOSING | (class + 1)`: the class page is being counted.
const CLOSING: u64 = 0x80;
pub(crate) const ROLE_INIT: u64 = 0xf0;
pub(crate) const ROLE_HEAD: u64 = 0xf1;
pub(crate) const ROLE_TAIL: u64 = 0xf2;

const EPOCH_MASK: u64 = (1 << 40) - 1;
/// The bits of a role word that change only when the page changes life:
/// a reader compares these before and after its copy.
pub(crate) const LIFE_MASK: u64 = !0 << 24;

/// A page's role word, unpacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Role {
    pub epoch: u64,
    pub count: u64,
    pub role: u64,
}

impl Role {
    pub fn unpack(w: u64) -> Role {
        Role {
            epoch: w >> 24,
            count: (w >> 8) & 0xffff,
            role: w & 0xff,
        }
    }

    pub fn pack(self) -> u64 {
        ((self.epoch & EPOCH_MASK) << 24) | ((self.count & 0xffff) << 8) | (self.role & 0xff)
    }

    /// The size class of a class page, closing or not.
    pub fn class(self) -> Option<usize> {
        let r = self.role & !CLOSING;
        (self.role & 0xf0 != 0xf0 && (1..=CLASSES as u64).contains(&r)).then(|| r as usize - 1)
    }

    /// Whether a class page is being closed.
    pub fn closing(self) -> bool {
        self.class().is_some() && self.role & CLOSING != 0
    }

    pub fn of_class(class: usize) -> u64 {
        class as u64 + 1
    }

    pub fn closing_of(class: usize) -> u64 {
        CLOSING | Self::of_class(class)
    }

    /// This page in its next life, as `role`.
    pub fn next(self, role: u64, count: u64) -> u64 {
        Role {
            epoch: self.epoch.wrapping_add(1),
            count,
            role,
        }
        .pack()
    }

    /// This page in the same life, as `role` with `count`.
    pub fn with(self, role: u64, count: u64) -> u64 {
        Role {
            epoch: self.epoch,
            count,
            role,
        }
        .pack()
    }
}

const _: () = assert!((CLASSES as u64) < CLOSING && (CLOSING | CLASSES as u64) < ROLE_INIT);

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn roles_unpack_as_packed() {
        for class in 0..CLASSES {
            let r = Role::unpack(
                Role {
                    epoch: 7,
                    count: 3,
                    role: Role::of_class(class),
                }
                .pack(),
            );
            assert_eq!((r.class(), r.closing(), r.count), (Some(class), false, 3));
            let c = Role::unpack(r.with(Role::closing_of(class), 0));
            assert_eq!((c.class(), c.closing(), c.epoch), (Some(class), true, 7));
        }
        for role in [ROLE_FREE, ROLE_INIT, ROLE_HEAD, ROLE_TAIL] {
            let r = Role::unpack(
                Role {
                    epoch: 1,
                    count: 0,
                    role,
                }
                .pack(),
            );
            assert_eq!((r.class(), r.closing()), (None, false));
        }
        let w = Role {
            epoch: (1 << 40) - 1,
            count: 0xffff,
            role: ROLE_TAIL,
        }
        .pack();
        assert_eq!(Role::unpack(w).epoch, (1 << 40) - 1);
        assert_eq!(Role::unpack(Role::unpack(w).next(ROLE_FREE, 0)).epoch, 0);
    }
}
