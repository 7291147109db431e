use std::borrow::Cow;
use std::marker::PhantomData;
use std::time::Duration;

use xme_array::{ArrayError, SplitArgs};
use xme_core::result_frame;

use crate::{Context, Outcomes, Reply, TaskError, TaskFailure};

/// One row of the function table: a function, its arguments, and options.
///
/// Build it with [`Job::new`] (the function takes only its arguments) or
/// [`Job::with_context`] (it also takes a [`Context`]), then hand one job to
/// [`Xme::funs`](crate::Xme::funs), alone or in a tuple of jobs.
pub struct Job<F, A, R, D = ()> {
    f: F,
    args: A,
    name: Cow<'static, str>,
    timeout: Option<Duration>,
    results: Vec<Option<Result<R, TaskError>>>,
    _data: PhantomData<fn(&D)>,
}

impl<F, A, R, D> std::fmt::Debug for Job<F, A, R, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .field("results", &self.results.len())
            .finish_non_exhaustive()
    }
}

/// A function that takes only its arguments.
pub struct Plain<G>(G);
/// A function that takes a [`Context`] and its arguments.
pub struct WithContext<G>(G);

impl<G> std::fmt::Debug for Plain<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Plain(..)")
    }
}

impl<G> std::fmt::Debug for WithContext<G> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WithContext(..)")
    }
}

/// How a job's function is called; implemented for [`Plain`] and [`WithContext`].
pub trait CallWith<D, In, R> {
    /// Calls the function.
    fn call_with(&self, ctx: &mut Context<'_, D>, input: In) -> R;
}

impl<D, In, R, G: Fn(In) -> R> CallWith<D, In, R> for Plain<G> {
    fn call_with(&self, _ctx: &mut Context<'_, D>, input: In) -> R {
        (self.0)(input)
    }
}

impl<D, In, R, G: Fn(&mut Context<'_, D>, In) -> R> CallWith<D, In, R> for WithContext<G> {
    fn call_with(&self, ctx: &mut Context<'_, D>, input: In) -> R {
        (self.0)(ctx, input)
    }
}

impl<G, A, R, D> Job<Plain<G>, A, R, D>
where
    A: SplitArgs,
    G: Fn(A::Call) -> R,
{
    /// A job calling `f` once per element of the arguments' split plan.
    pub fn new(f: G, args: A) -> Self {
        Job::build(Plain(f), args, std::any::type_name::<G>())
    }
}

impl<G, A, R, D> Job<WithContext<G>, A, R, D>
where
    A: SplitArgs,
    G: Fn(&mut Context<'_, D>, A::Call) -> R,
{
    /// A job whose function also receives the call's [`Context`].
    pub fn with_context(f: G, args: A) -> Self {
        Job::build(WithContext(f), args, std::any::type_name::<G>())
    }
}

impl<F, A, R, D> Job<F, A, R, D> {
    fn build(f: F, args: A, name: &'static str) -> Self {
        Job {
            f,
            args,
            name: Cow::Borrowed(name),
            timeout: None,
            results: Vec::new(),
            _data: PhantomData,
        }
    }

    /// Names the function in errors and logs (default: its Rust type name).
    pub fn named(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Limits each call of this job to `limit`; a call running longer is
    /// killed with its worker and reported [`TaskFailure::TimedOut`].
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }
}

/// Byte that starts a reply frame's body.
pub(crate) mod tag {
    pub const VALUE: u8 = 0;
    pub const PANICKED: u8 = 1;
    pub const ENCODE_FAILED: u8 = 2;
}

/// A job with its types erased, as the runner sees it. Implemented by [`Job`];
/// not meant to be implemented elsewhere.
#[doc(hidden)]
pub trait ErasedJob<D> {
    /// Plans the calls and makes room for their results; returns `calnum`.
    fn prepare(&mut self) -> Result<usize, ArrayError>;
    /// The function's name.
    fn name(&self) -> &str;
    /// The per-call time limit, if set on the job.
    fn timeout(&self) -> Option<Duration>;
    /// Makes room for the results of its `calnum` calls (after
    /// [`prepare`](Self::prepare)); fails, never aborts, when the memory is
    /// not there.
    fn make_room(&mut self, calnum: usize) -> Result<(), std::collections::TryReserveError>;
    /// In a worker: runs call `call` and appends its tagged reply to `out`.
    fn run_call(&self, call: usize, ctx: &mut Context<'_, D>, out: &mut Vec<u8>);
    /// In the parent: stores call `call`'s reply (tagged bytes) or failure.
    fn deliver(&mut self, job: usize, call: usize, reply: Result<&[u8], TaskFailure>);
}

impl<F, A, R, D> ErasedJob<D> for Job<F, A, R, D>
where
    A: SplitArgs,
    F: CallWith<D, A::Call, R>,
    R: Reply,
{
    fn prepare(&mut self) -> Result<usize, ArrayError> {
        let calnum = self.args.plan()?.calnum();
        self.results = Vec::new();
        Ok(calnum)
    }

    fn make_room(&mut self, calnum: usize) -> Result<(), std::collections::TryReserveError> {
        self.results.try_reserve_exact(calnum)?;
        self.results.resize_with(calnum, || None);
        Ok(())
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    fn run_call(&self, call: usize, ctx: &mut Context<'_, D>, out: &mut Vec<u8>) {
        let input = self.args.call(call);
        let mark = out.len();
        let encoded = match xme_core::process::catch_panic(|| self.f.call_with(ctx, input)) {
            Ok(value) => {
                out.push(tag::VALUE);
                value.encode_into(out)
            }
            Err(report) => {
                out.push(tag::PANICKED);
                report.encode_into(out)
            }
        };
        if let Err(e) = encoded {
            out.truncate(mark);
            out.push(tag::ENCODE_FAILED);
            out.extend_from_slice(e.to_string().as_bytes());
        }
    }

    fn deliver(&mut self, job: usize, call: usize, reply: Result<&[u8], TaskFailure>) {
        let outcome = reply.and_then(|bytes| match bytes.split_first() {
            Some((&tag::VALUE, body)) => {
                R::decode_from(body).map_err(|e| TaskFailure::Decode(xme_core::error_chain(&e)))
            }
            Some((&tag::PANICKED, body)) => Err(result_frame::decode(body, "a panic report")
                .map(TaskFailure::Panicked)
                .unwrap_or_else(|e| TaskFailure::Decode(xme_core::error_chain(&e)))),
            Some((&tag::ENCODE_FAILED, body)) => Err(TaskFailure::Encode(
                String::from_utf8_lossy(body).into_owned(),
            )),
            _ => Err(TaskFailure::Decode("reply frame has no known tag".into())),
        });
        self.results[call] = Some(outcome.map_err(|failure| TaskError {
            call,
            job,
            function: self.name.to_string(),
            failure,
        }));
    }
}

impl<F, A, R, D> Job<F, A, R, D> {
    fn take_outcomes(&mut self, job: usize) -> Outcomes<R> {
        let name = self.name.to_string();
        Outcomes::new(
            std::mem::take(&mut self.results)
                .into_iter()
                .enumerate()
                .map(|(call, r)| {
                    // The runner delivers every call; a hole would be a runner bug,
                    // reported rather than hidden.
                    r.unwrap_or_else(|| {
                        Err(TaskError {
                            call,
                            job,
                            function: name.clone(),
                            failure: TaskFailure::ChannelClosed,
                        })
                    })
                })
                .collect(),
        )
    }
}

/// A function table: one [`Job`], a tuple of jobs (up to 8, each with its own
/// argument and result types), or a `Vec` of jobs of one type.
pub trait JobTable<D> {
    /// The typed results: [`Outcomes`] per job, shaped like the table.
    type Output;
    /// The jobs, type-erased, in table order.
    #[doc(hidden)]
    fn erased(&mut self) -> Vec<&mut dyn ErasedJob<D>>;
    /// Collects the results after the run.
    #[doc(hidden)]
    fn finish(self, first_job: usize) -> Self::Output;
    /// Number of jobs.
    #[doc(hidden)]
    fn job_count(&self) -> usize;
}

impl<F, A, R, D> JobTable<D> for Job<F, A, R, D>
where
    A: SplitArgs,
    F: CallWith<D, A::Call, R>,
    R: Reply,
{
    type Output = Outcomes<R>;

    fn erased(&mut self) -> Vec<&mut dyn ErasedJob<D>> {
        vec![self]
    }

    fn finish(mut self, first_job: usize) -> Outcomes<R> {
        self.take_outcomes(first_job)
    }

    fn job_count(&self) -> usize {
        1
    }
}

impl<D, T: JobTable<D>> JobTable<D> for Vec<T> {
    type Output = Vec<T::Output>;

    fn erased(&mut self) -> Vec<&mut dyn ErasedJob<D>> {
        self.iter_mut().flat_map(|t| t.erased()).collect()
    }

    fn finish(self, mut first_job: usize) -> Self::Output {
        self.into_iter()
            .map(|t| {
                let n = t.job_count();
                let out = t.finish(first_job);
                first_job += n;
                out
            })
            .collect()
    }

    fn job_count(&self) -> usize {
        self.iter().map(JobTable::job_count).sum()
    }
}

macro_rules! tuple_table {
    ($($name:ident . $idx:tt),+) => {
        impl<D, $($name: JobTable<D>),+> JobTable<D> for ($($name,)+) {
            type Output = ($($name::Output,)+);

            fn erased(&mut self) -> Vec<&mut dyn ErasedJob<D>> {
                let mut all = Vec::new();
                $(all.extend(self.$idx.erased());)+
                all
            }

            #[allow(unused_assignments)] // the last job's offset is not needed
            fn finish(self, mut first_job: usize) -> Self::Output {
                ($({
                    let n = self.$idx.job_count();
                    let out = self.$idx.finish(first_job);
                    first_job += n;
                    out
                },)+)
            }

            fn job_count(&self) -> usize {
                0 $(+ self.$idx.job_count())+
            }
        }
    };
}

tuple_table!(A.0);
tuple_table!(A.0, B.1);
tuple_table!(A.0, B.1, C.2);
tuple_table!(A.0, B.1, C.2, D2.3);
tuple_table!(A.0, B.1, C.2, D2.3, E.4);
tuple_table!(A.0, B.1, C.2, D2.3, E.4, F.5);
tuple_table!(A.0, B.1, C.2, D2.3, E.4, F.5, G.6);
tuple_table!(A.0, B.1, C.2, D2.3, E.4, F.5, G.6, H.7);
