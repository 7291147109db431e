//! What a Manager keeps for calls in process memory, never in the region:
//! the fork family's key, and the functions registered by name.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Manager;

/// Runs a function-pointer call: `(manager, function, object key, args) -> result`.
pub(crate) type Trampoline = fn(&Manager, u64, &str, &[u8]) -> Result<Vec<u8>, String>;

/// The fork family's secret: 128 random bits made when the Manager is
/// built, kept only in process memory (never in the region), so it reaches
/// exactly the processes forked from the builder. A function-pointer call
/// carries a SipHash-2-4 tag under this key over its addresses, object key
/// and arguments; the Guard runs the call only if the tag checks under its own
/// key. A process that attached by name (or wrote the region by hand) has no
/// key, so it cannot make the Guard jump to an address of its choosing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct FamilyKey([u64; 2]);

impl std::fmt::Debug for FamilyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FamilyKey(..)")
    }
}

impl FamilyKey {
    pub fn random() -> FamilyKey {
        FamilyKey([
            xme_core::Operator::alloc().id(),
            xme_core::Operator::alloc().id(),
        ])
    }

    /// The tag of a pointer call.
    pub fn tag(&self, function: u64, trampoline: u64, object: &str, args: &[u8]) -> u64 {
        use std::hash::Hasher;
        let mut h = siphasher::sip::SipHasher24::new_with_keys(self.0[0], self.0[1]);
        h.write_u64(function);
        h.write_u64(trampoline);
        h.write_usize(object.len());
        h.write(object.as_bytes());
        h.write(args);
        h.finish()
    }
}

type Erased = Arc<dyn Fn(&Manager, &[u8]) -> Result<Vec<u8>, String> + Send + Sync>;

/// The functions this process can run by name, and the names it has seen
/// registered in the region.
#[derive(Default)]
pub(crate) struct Registry {
    functions: RwLock<HashMap<String, Erased>>,
    known: RwLock<HashSet<String>>,
}

impl Registry {
    pub fn insert<A, R, F>(&self, name: &str, f: F)
    where
        A: DeserializeOwned,
        R: Serialize,
        F: Fn(&Manager, A) -> R + Send + Sync + 'static,
    {
        let erased: Erased = Arc::new(move |m, bytes| {
            let args: A = postcard::from_bytes(bytes).map_err(|e| format!("bad arguments: {e}"))?;
            postcard::to_stdvec(&f(m, args))
                .map_err(|e| format!("could not encode the result: {e}"))
        });
        write(&self.functions).insert(name.to_string(), erased);
        write(&self.known).insert(name.to_string());
    }

    pub fn get(&self, name: &str) -> Option<Erased> {
        read(&self.functions).get(name).cloned()
    }

    pub fn is_known(&self, name: &str) -> bool {
        read(&self.known).contains(name)
    }

    pub fn learn(&self, name: &str) {
        write(&self.known).insert(name.to_string());
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}
