//! Computing units: functions a logical process runs for the main process.
//!
//! A unit registered by name gets a numeric id; a call names the id, which
//! would carry across hosts in a later backend where the same program runs on
//! each host. A plain `fn` can also be passed directly: within one fork family
//! its address is valid in every process, so the call carries the address and
//! the address of a trampoline monomorphised for its argument and result
//! types.

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;
use xme_core::PanicReport;

/// What running a unit gave: the result was appended to the reply, or why not.
pub(crate) enum Ran {
    Value,
    Panicked(PanicReport),
    Failed(String),
    /// No unit has the id (the seed's `TASK_NO_REGISTERED`).
    NotRegistered(String),
}

type Erased = Box<dyn Fn(&[u8], &mut Vec<u8>) -> Ran + Send + Sync>;

/// Decodes the arguments, runs `f` (catching a panic), and appends the encoded
/// result to `out` (the reply frame being built: no copy, no allocation).
fn run_typed<A, R>(f: impl Fn(A) -> R, args: &[u8], out: &mut Vec<u8>) -> Ran
where
    A: DeserializeOwned,
    R: Serialize,
{
    let args: A = match xme_core::result_frame::decode(args, "unit arguments") {
        Ok(a) => a,
        Err(e) => return Ran::Failed(xme_core::error_chain(&e)),
    };
    match xme_core::process::catch_panic(|| f(args)) {
        Ok(r) => {
            let start = out.len();
            match crate::call_frame::encode_into(&r, out) {
                Ok(()) => Ran::Value,
                Err(e) => {
                    out.truncate(start);
                    Ran::Failed(format!("could not encode the result: {e}"))
                }
            }
        }
        Err(p) => Ran::Panicked(p),
    }
}

/// The trampoline a direct `fn` call names: `f` is a `fn(A) -> R`.
///
/// # Safety
/// `f` must be the address of a `fn(A) -> R` of this program, with exactly
/// these `A` and `R` (the caller wrote both addresses into the same frame).
pub(crate) unsafe fn trampoline<A: DeserializeOwned, R: Serialize>(
    f: usize,
    args: &[u8],
    out: &mut Vec<u8>,
) -> Ran {
    // SAFETY: guaranteed by the caller: `f` came from a `fn(A) -> R`, and fn
    // pointers are address-sized.
    let f: fn(A) -> R = unsafe { std::mem::transmute::<usize, fn(A) -> R>(f) };
    run_typed(f, args, out)
}

/// A typed handle to a registered unit: the call's argument and result types
/// are checked at compile time.
#[derive(Debug)]
pub struct Unit<A, R> {
    pub(crate) id: u32,
    pub(crate) name: &'static str,
    _types: PhantomData<fn(A) -> R>,
}

impl<A, R> Clone for Unit<A, R> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<A, R> Copy for Unit<A, R> {}

impl<A, R> Unit<A, R> {
    /// The name it was registered under.
    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// The units of one run, built before the logical processes are forked.
#[derive(Default)]
pub(crate) struct Registry {
    units: Vec<(&'static str, Erased)>,
    /// Each unit's (name, argument type, result type), in id order: what
    /// ranks compare to map ids by name.
    signatures: Vec<Signature>,
}

/// A unit's name, argument type and result type.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct Signature {
    pub name: String,
    pub args: String,
    pub result: String,
}

impl Registry {
    pub fn register<A, R, F>(&mut self, name: &'static str, f: F) -> Unit<A, R>
    where
        A: DeserializeOwned,
        R: Serialize,
        F: Fn(A) -> R + Send + Sync + 'static,
    {
        let id = self.units.len() as u32;
        self.signatures.push(Signature {
            name: name.to_string(),
            args: std::any::type_name::<A>().to_string(),
            result: std::any::type_name::<R>().to_string(),
        });
        self.units.push((
            name,
            Box::new(move |args, out: &mut Vec<u8>| run_typed(&f, args, out)),
        ));
        Unit {
            id,
            name,
            _types: PhantomData,
        }
    }

    /// Every unit's name, in id order.
    pub fn names(&self) -> Vec<&'static str> {
        self.units.iter().map(|(name, _)| *name).collect()
    }

    /// Every unit's signature, in id order.
    pub fn signatures(&self) -> &[Signature] {
        &self.signatures
    }

    pub fn run(&self, id: u32, args: &[u8], out: &mut Vec<u8>) -> Ran {
        match self.units.get(id as usize) {
            Some((_, f)) => f(args, out),
            None => Ran::NotRegistered(format!("no unit with id {id} is registered")),
        }
    }
}
