//! What a buffered call names, and how it is encoded into a buffer cell.

use std::collections::BTreeMap;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use xme_security::LockType;

use crate::manager::{Manager, ProcessStatus, Trampoline};
use crate::{RawValue, ShmError};

/// The seed's message for a call that failed inside the Guard.
pub const GUARD_FUN_FAIL: &str = "<-Guard Function Executes Failure->";
/// The seed's message for a `get` that found no result in time.
pub const XMEM_GET_FAIL: &str = "<-XMEM GET Failure->";

/// A built-in operation of the seed's `__XMEM__` map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Builtin {
    /// `"Table::update"`: store entries under the Manager's lock, as the caller.
    TableUpdate,
    /// `"Table::set"`: store one entry (lock-free).
    TableSet,
    /// `"Table::delete"`: delete keys under the lock, as the caller.
    TableDelete,
    /// `"Table::get"`: a copy of some entries.
    TableGet,
    /// `"Table::items"`: a copy of every entry.
    TableItems,
    /// `"Lock::update"`: change the type of the Manager's lock.
    LockUpdate,
    /// `"Status::update"`: record a status in `__STATUS__` (what a HeartJump sends).
    StatusUpdate,
}

impl Builtin {
    /// Every built-in, in `__XMEM__` order.
    pub const ALL: [Builtin; 7] = [
        Builtin::TableUpdate,
        Builtin::TableSet,
        Builtin::TableDelete,
        Builtin::TableGet,
        Builtin::TableItems,
        Builtin::LockUpdate,
        Builtin::StatusUpdate,
    ];

    /// Its name in `__XMEM__`.
    pub fn name(self) -> &'static str {
        match self {
            Builtin::TableUpdate => "Table::update",
            Builtin::TableSet => "Table::set",
            Builtin::TableDelete => "Table::delete",
            Builtin::TableGet => "Table::get",
            Builtin::TableItems => "Table::items",
            Builtin::LockUpdate => "Lock::update",
            Builtin::StatusUpdate => "Status::update",
        }
    }

    /// The built-in called `name`, if any.
    pub fn from_name(name: &str) -> Option<Builtin> {
        Builtin::ALL.into_iter().find(|b| b.name() == name)
    }
}

/// What a call runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Target {
    Builtin(Builtin),
    Named(String),
    /// A function pointer (and for a method, the shared object's key) with its
    /// monomorphised trampoline; valid only within the builder's fork family.
    /// `tag` authenticates the call (see [`FamilyKey`]).
    Pointer {
        tag: u64,
        function: u64,
        trampoline: u64,
        object: String,
    },
}

/// A call for the buffer, whose result is an `R`: build it with
/// [`Call::function`], a [`Named`] handle, a [`SharedObject`](crate::SharedObject)
/// method, or a built-in such as [`Call::table_update`]; then
/// [`Manager::append`] it.
#[derive(Debug, Clone)]
pub struct Call<R> {
    pub(crate) target: Target,
    pub(crate) args: Vec<u8>,
    _result: PhantomData<fn() -> R>,
}

fn encode_args<A: Serialize + ?Sized>(args: &A) -> Result<Vec<u8>, ShmError> {
    postcard::to_stdvec(args).map_err(|e| ShmError::Encode {
        key: "<call arguments>".into(),
        source: xme_core::CodecError::encoding(e, args),
    })
}

fn entries_of<K: AsRef<str>, V: Serialize>(
    entries: impl IntoIterator<Item = (K, V)>,
) -> Result<Vec<(String, Vec<u8>)>, ShmError> {
    entries
        .into_iter()
        .map(|(k, v)| {
            let key = k.as_ref().to_string();
            let bytes = postcard::to_stdvec(&v).map_err(|e| ShmError::Encode {
                key: key.clone(),
                source: xme_core::CodecError::encoding(e, &v),
            })?;
            Ok((key, bytes))
        })
        .collect()
}

impl<R> Call<R> {
    pub(crate) fn new(target: Target, args: Vec<u8>) -> Call<R> {
        Call {
            target,
            args,
            _result: PhantomData,
        }
    }

    /// What the call names, for logs and [`Manager::get_buffers`].
    pub fn name(&self) -> String {
        self.target.describe()
    }
}

impl Call<()> {
    /// `"Table::update"`: store `entries` under the Manager's lock, as the
    /// appending operator (`Status: false` under `__GUARD__` stops the Guard).
    pub fn table_update<K: AsRef<str>, V: Serialize>(
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Call<()>, ShmError> {
        let entries = entries_of(entries)?;
        Ok(Call::new(
            Target::Builtin(Builtin::TableUpdate),
            encode_args(&entries)?,
        ))
    }

    /// `"Table::set"`: store one entry.
    pub fn table_set<V: Serialize + ?Sized>(key: &str, value: &V) -> Result<Call<()>, ShmError> {
        let mut entries = entries_of([(key, value)])?;
        let (k, v) = entries.pop().expect("one entry");
        Ok(Call::new(
            Target::Builtin(Builtin::TableSet),
            encode_args(&(k, v))?,
        ))
    }

    /// `"Lock::update"`: change the Manager's lock type.
    pub fn lock_update(lock_type: LockType) -> Result<Call<()>, ShmError> {
        Ok(Call::new(
            Target::Builtin(Builtin::LockUpdate),
            encode_args(&(lock_type as u32))?,
        ))
    }

    /// `"Status::update"`: record `status` for the appending operator, unless
    /// its entry is its last word (a stopped [`HeartJump`](crate::HeartJump)).
    pub fn status_update(status: &str) -> Result<Call<()>, ShmError> {
        let entry = ProcessStatus::now(status);
        Ok(Call::new(
            Target::Builtin(Builtin::StatusUpdate),
            encode_args(&entry)?,
        ))
    }
}

impl Call<usize> {
    /// `"Table::delete"`: delete `keys` under the lock; the result is how many existed.
    pub fn table_delete(keys: &[&str]) -> Result<Call<usize>, ShmError> {
        Ok(Call::new(
            Target::Builtin(Builtin::TableDelete),
            encode_args(keys)?,
        ))
    }
}

impl Call<BTreeMap<String, RawValue>> {
    /// `"Table::get"`: a copy of the entries for `keys` (all with none).
    pub fn table_get(keys: &[&str]) -> Result<Call<BTreeMap<String, RawValue>>, ShmError> {
        Ok(Call::new(
            Target::Builtin(Builtin::TableGet),
            encode_args(keys)?,
        ))
    }
}

impl Call<Vec<(String, RawValue)>> {
    /// `"Table::items"`: a copy of every entry.
    pub fn table_items() -> Result<Call<Vec<(String, RawValue)>>, ShmError> {
        Ok(Call::new(Target::Builtin(Builtin::TableItems), Vec::new()))
    }
}

impl<R: Serialize + DeserializeOwned> Call<R> {
    /// A call of a plain function, run by the Guard with the Manager. Only
    /// for processes forked from the one that built the Manager (the pointer
    /// means nothing elsewhere): [`Manager::append`] refuses it in a process
    /// that attached by name. Use [`Manager::register`] to call across programs.
    pub fn function<A>(f: fn(&Manager, A) -> R, args: &A) -> Result<Call<R>, ShmError>
    where
        A: Serialize + DeserializeOwned,
    {
        let trampoline: Trampoline = run_function::<A, R>;
        Ok(Call::new(
            Target::Pointer {
                tag: 0, // filled in by `append`
                function: f as usize as u64,
                trampoline: trampoline as usize as u64,
                object: String::new(),
            },
            encode_args(args)?,
        ))
    }
}

fn run_function<A: DeserializeOwned, R: Serialize>(
    m: &Manager,
    f: u64,
    _object: &str,
    args: &[u8],
) -> Result<Vec<u8>, String> {
    // SAFETY: `f` was made from a `fn(&Manager, A) -> R` by `Call::function`,
    // and this trampoline was instantiated with the same A and R there. The
    // Guard runs a pointer call only if its tag checks under the family key
    // (`FamilyKey`), which exists only in processes forked (without exec)
    // from the builder, where the function sits at the same address; a
    // process without the key cannot make a tag that checks.
    let f = unsafe { std::mem::transmute::<usize, fn(&Manager, A) -> R>(f as usize) };
    let args: A = postcard::from_bytes(args).map_err(|e| format!("bad arguments: {e}"))?;
    postcard::to_stdvec(&f(m, args)).map_err(|e| format!("could not encode the result: {e}"))
}

pub(crate) fn run_method<T, A, R>(
    m: &Manager,
    f: u64,
    object: &str,
    args: &[u8],
) -> Result<Vec<u8>, String>
where
    T: Serialize + DeserializeOwned,
    A: DeserializeOwned + Clone,
    R: Serialize,
{
    // SAFETY: as in `run_function`: `f` is a `fn(&mut T, A) -> R` made by
    // `SharedObject::call` with the same T, A, R, and the tag checked under
    // the family key, so it was appended by this fork family.
    let f = unsafe { std::mem::transmute::<usize, fn(&mut T, A) -> R>(f as usize) };
    let args: A = postcard::from_bytes(args).map_err(|e| format!("bad arguments: {e}"))?;
    let out = m
        .modify(object, |v: &mut T| f(v, args.clone()))
        .map_err(|e| e.to_string())?;
    postcard::to_stdvec(&out).map_err(|e| format!("could not encode the result: {e}"))
}

impl Target {
    pub(crate) fn describe(&self) -> String {
        match self {
            Target::Builtin(b) => b.name().to_string(),
            Target::Named(n) => n.clone(),
            Target::Pointer { object, .. } if object.is_empty() => "<function pointer>".into(),
            Target::Pointer { object, .. } => format!("<method of {object}>"),
        }
    }
}

/// A function registered by name with [`Manager::register`]: callable from
/// any process that shares or attaches the Manager.
pub struct Named<A, R> {
    name: String,
    _types: PhantomData<fn(A) -> R>,
}

impl<A, R> Clone for Named<A, R> {
    fn clone(&self) -> Self {
        Named {
            name: self.name.clone(),
            _types: PhantomData,
        }
    }
}

impl<A, R> std::fmt::Debug for Named<A, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Named({:?})", self.name)
    }
}

impl<A: Serialize, R> Named<A, R> {
    pub(crate) fn new(name: String) -> Named<A, R> {
        Named {
            name,
            _types: PhantomData,
        }
    }

    /// The registered name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A call of this function with `args`.
    pub fn call(&self, args: &A) -> Result<Call<R>, ShmError> {
        Ok(Call::new(
            Target::Named(self.name.clone()),
            encode_args(args)?,
        ))
    }
}

/// How a call ended, as stored in a mailbox: a status byte, then the result
/// (postcard) or a message.
pub(crate) mod reply {
    pub const OK: u8 = 0;
    pub const PANICKED: u8 = 1;
    pub const FAILED: u8 = 2;

    pub fn ok(bytes: Vec<u8>) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len() + 1);
        out.push(OK);
        out.extend_from_slice(&bytes);
        out
    }

    pub fn err(status: u8, message: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(message.len() + 1);
        out.push(status);
        out.extend_from_slice(message.as_bytes());
        out
    }
}
