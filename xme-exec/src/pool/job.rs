//! The functions a [`Pool`](crate::Pool) batch runs: one task with its
//! arguments ([`PoolJob`]), and tables of them ([`PoolJobs`]) for
//! `Pool::funs`.

use std::borrow::Cow;
use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;
use xme_array::SplitArgs;

use super::PoolInner;
use super::feed::{self, Source};
use crate::{ExecError, Outcomes, TaskError, TaskFailure};

/// One call of a batch as it crosses to a worker: its entry (or why it
/// cannot run) and its `[len][bytes]` arguments.
pub(crate) struct BatchCall {
    pub entry: Result<u64, TaskFailure>,
    pub args: Vec<u8>,
}

/// The calls of a batch, in order, for a feed.
pub(crate) struct BatchSource(pub std::vec::IntoIter<BatchCall>);

impl Source for BatchSource {
    fn next_call(&mut self, args: &mut Vec<u8>) -> Option<Result<u64, TaskFailure>> {
        let call = self.0.next()?;
        if call.entry.is_ok() {
            args.extend_from_slice(&call.args);
        }
        Some(call.entry)
    }
}

/// One function of a [`Pool::funs`](crate::Pool::funs) table: a task (a
/// `fn` item or a closure that captures nothing) and its arguments, split as
/// for [`Xme::fun`](crate::Xme::fun).
///
/// ```
/// use xme_exec::{Array, Pool, PoolJob, Same};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = Pool::new(2)?;
/// let (lengths, over) = pool.funs((
///     PoolJob::new(|s: String| s.len(), Array::new(["ab", "cde"].map(String::from))),
///     PoolJob::new(|(x, limit): (f64, f64)| x > limit, (Array::from([0.5, 2.0]), Same(1.0))),
/// ))?;
/// assert_eq!(lengths.into_result()?, [2, 3]);
/// assert_eq!(over.into_result()?, [false, true]);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PoolJob<F, A, R> {
    args: A,
    name: Option<Cow<'static, str>>,
    _task: PhantomData<(F, fn() -> R)>,
}

impl<F, A, R> PoolJob<F, A, R>
where
    A: SplitArgs,
    A::Call: Serialize + DeserializeOwned,
    F: Fn(A::Call) -> R + Copy + 'static,
    R: Serialize + DeserializeOwned,
{
    /// `f` over `args`. A closure that captures is refused at compile time.
    pub fn new(f: F, args: A) -> Self {
        const {
            assert!(
                std::mem::size_of::<F>() == 0,
                "a Pool task must be a fn item or a closure that captures nothing: pass what it needs as arguments"
            )
        };
        let _ = f; // zero-sized: the worker makes its own (see `trampoline`)
        PoolJob {
            args,
            name: None,
            _task: PhantomData,
        }
    }

    /// A name for errors and logs (default: the function's type name).
    #[must_use]
    pub fn named(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = Some(name.into());
        self
    }

    fn name(&self) -> String {
        self.name
            .clone()
            .map_or_else(|| std::any::type_name::<F>().to_string(), Cow::into_owned)
    }

    pub(crate) fn calls(&self, job: usize, pool: &PoolInner) -> Result<Vec<BatchCall>, ExecError> {
        let plan = self.args.plan().map_err(|source| ExecError::Arguments {
            job,
            function: self.name(),
            source,
        })?;
        let entry = pool.entry_of::<F, A::Call, R>();
        Ok((0..plan.calnum())
            .map(|i| {
                let mut args = Vec::new();
                let entry = entry
                    .clone()
                    .and_then(|e| feed::encode_call(&self.args.call(i), &mut args).map(|()| e));
                BatchCall { entry, args }
            })
            .collect())
    }

    pub(crate) fn outcomes(
        &self,
        job: usize,
        raw: Vec<Result<Vec<u8>, TaskFailure>>,
    ) -> Outcomes<R> {
        let function = self.name();
        Outcomes::new(
            raw.into_iter()
                .enumerate()
                .map(|(call, r)| {
                    r.and_then(|bytes| {
                        postcard::from_bytes::<R>(&bytes).map_err(|e| {
                            TaskFailure::Decode(xme_core::CodecError::decoding(e).to_string())
                        })
                    })
                    .map_err(|failure| TaskError {
                        call,
                        job,
                        function: function.clone(),
                        failure,
                    })
                })
                .collect(),
        )
    }
}

/// A table of [`PoolJob`]s for [`Pool::funs`](crate::Pool::funs): a tuple of
/// 1 to 6 of them, each with its own argument and result types.
pub trait PoolJobs {
    /// The outcomes, shaped like the table.
    type Output;

    #[doc(hidden)]
    #[allow(private_interfaces)]
    fn calls(&self, pool: &PoolInner) -> Result<Vec<Vec<BatchCall>>, ExecError>;

    #[doc(hidden)]
    fn outcomes(&self, raw: Vec<Vec<Result<Vec<u8>, TaskFailure>>>) -> Self::Output;
}

macro_rules! pool_jobs {
    ($($job:ident $f:ident $a:ident $r:ident . $idx:tt),+) => {
        impl<$($f, $a, $r),+> PoolJobs for ($(PoolJob<$f, $a, $r>,)+)
        where
            $(
                $a: SplitArgs,
                $a::Call: Serialize + DeserializeOwned,
                $f: Fn($a::Call) -> $r + Copy + 'static,
                $r: Serialize + DeserializeOwned,
            )+
        {
            type Output = ($(Outcomes<$r>,)+);

            #[allow(private_interfaces)]
            fn calls(&self, pool: &PoolInner) -> Result<Vec<Vec<BatchCall>>, ExecError> {
                Ok(vec![$(self.$idx.calls($idx, pool)?),+])
            }

            fn outcomes(&self, raw: Vec<Vec<Result<Vec<u8>, TaskFailure>>>) -> Self::Output {
                let mut raw = raw.into_iter();
                ($(self.$idx.outcomes($idx, raw.next().unwrap_or_default()),)+)
            }
        }
    };
}

pool_jobs!(J0 F0 A0 R0 . 0);
pool_jobs!(J0 F0 A0 R0 . 0, J1 F1 A1 R1 . 1);
pool_jobs!(J0 F0 A0 R0 . 0, J1 F1 A1 R1 . 1, J2 F2 A2 R2 . 2);
pool_jobs!(J0 F0 A0 R0 . 0, J1 F1 A1 R1 . 1, J2 F2 A2 R2 . 2, J3 F3 A3 R3 . 3);
pool_jobs!(J0 F0 A0 R0 . 0, J1 F1 A1 R1 . 1, J2 F2 A2 R2 . 2, J3 F3 A3 R3 . 3, J4 F4 A4 R4 . 4);
pool_jobs!(
    J0 F0 A0 R0 . 0, J1 F1 A1 R1 . 1, J2 F2 A2 R2 . 2, J3 F3 A3 R3 . 3, J4 F4 A4 R4 . 4,
    J5 F5 A5 R5 . 5
);
