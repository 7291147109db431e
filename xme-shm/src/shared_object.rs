//! Shared objects (seed 2.1 `Object("Class_V", V)`): a typed value kept in the
//! Manager under a name, whose methods run in the caller or in the Guard.

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::calls::call::{Call, Target, run_method};
use crate::manager::Trampoline;
use crate::{Manager, ShmError};

/// A typed handle to a value of type `T` stored in a [`Manager`] under a name.
///
/// Two ways to call a method `fn(&mut T, A) -> R`:
/// - [`invoke`](Self::invoke) runs it **in the calling process** as an atomic
///   read-modify-write of the stored value: lock-free, no lost update, no
///   Guard needed. If another process changes the value meanwhile, the
///   method runs again on the newer value, so it must have no other side
///   effects. Choose it for speed (hundreds of nanoseconds).
/// - [`call`](Self::call) makes a buffered [`Call`] that the Guard runs,
///   serialised with every other buffered call, exactly once. Choose it when
///   the method has side effects, must be ordered with other buffered calls,
///   or runs in the Guard's process on purpose.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use xme_shm::{SharedObject, XmemBuilder};
///
/// #[derive(Serialize, Deserialize, Default)]
/// struct V { value: i64 }
/// impl V {
///     fn add(&mut self, n: i64) -> i64 { self.value += n; self.value }
/// }
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let xmem = XmemBuilder::new().build()?;
/// let v = SharedObject::create(&xmem, "v", &V::default())?;
/// assert_eq!(v.invoke(&xmem, V::add, 2)?, 2);
/// assert_eq!(v.get(&xmem)?.value, 2);
/// # Ok(())
/// # }
/// ```
pub struct SharedObject<T> {
    key: String,
    _type: PhantomData<fn() -> T>,
}

impl<T> Clone for SharedObject<T> {
    fn clone(&self) -> Self {
        SharedObject {
            key: self.key.clone(),
            _type: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for SharedObject<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SharedObject<{}>({:?})",
            std::any::type_name::<T>(),
            self.key
        )
    }
}

impl<T: Serialize + DeserializeOwned> SharedObject<T> {
    /// Stores `value` under `key` and returns its handle.
    pub fn create(manager: &Manager, key: &str, value: &T) -> Result<SharedObject<T>, ShmError> {
        manager.set(key, value)?;
        Ok(SharedObject::named(key))
    }

    /// A handle to the object already stored under `key`.
    pub fn named(key: &str) -> SharedObject<T> {
        SharedObject {
            key: key.to_string(),
            _type: PhantomData,
        }
    }

    /// Its key in the Manager.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// A copy of the current value.
    pub fn get(&self, manager: &Manager) -> Result<T, ShmError> {
        manager.get(&self.key)
    }

    /// Runs `method` in this process as an atomic read-modify-write (see the
    /// type's docs); returns what the method returned.
    pub fn invoke<A: Clone, R>(
        &self,
        manager: &Manager,
        method: fn(&mut T, A) -> R,
        args: A,
    ) -> Result<R, ShmError> {
        manager.modify(&self.key, |v: &mut T| method(v, args.clone()))
    }

    /// A buffered call of `method` with `args`, for the Guard to run.
    /// Within the builder's fork family only (a method is a function pointer).
    pub fn call<A, R>(&self, method: fn(&mut T, A) -> R, args: &A) -> Result<Call<R>, ShmError>
    where
        A: Serialize + DeserializeOwned + Clone,
        R: Serialize + DeserializeOwned,
    {
        let trampoline: Trampoline = run_method::<T, A, R>;
        let args = postcard::to_stdvec(args).map_err(|e| ShmError::Encode {
            key: self.key.clone(),
            source: xme_core::CodecError::encoding(e, args),
        })?;
        Ok(Call::new(
            Target::Pointer {
                tag: 0, // filled in by `append`
                function: method as usize as u64,
                trampoline: trampoline as usize as u64,
                object: self.key.clone(),
            },
            args,
        ))
    }
}
