use xme_core::Operator;
use xme_log::{LogError, Logger};

/// What a task can reach besides its arguments: its logger (`print` / `logobj`
/// of the seed), its call index, its operator, and the data attached to the
/// run (the Manager handle in `gfun`).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use xme_exec::{Array, Context, Xme};
/// let xme = Xme::new().pnum(2).print_in_screen(false);
/// let out = xme.fun_ctx(|ctx: &mut Context, word: &str| {
///     ctx.print(format!("call {} got {word}", ctx.call())).unwrap();
///     (ctx.call(), std::process::id())
/// }, Array::from(["a", "b"]))?;
/// assert_eq!(out.into_result()?.iter().map(|r| r.0).collect::<Vec<_>>(), [0, 1]);
/// # Ok(())
/// # }
/// ```
pub struct Context<'a, D = ()> {
    pub(crate) call: usize,
    pub(crate) job: usize,
    pub(crate) operator: Operator,
    pub(crate) logger: &'a Logger,
    pub(crate) data: &'a D,
    pub(crate) board: &'a crate::board::Board,
}

impl<D> std::fmt::Debug for Context<'_, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("call", &self.call)
            .field("job", &self.job)
            .field("operator", &self.operator)
            .finish_non_exhaustive()
    }
}

impl<D> Context<'_, D> {
    /// The call's index among its function's calls (0-based).
    pub fn call(&self) -> usize {
        self.call
    }

    /// The function's index in the run's table (0 for `fun`).
    pub fn job(&self) -> usize {
        self.job
    }

    /// The operator of this worker process (one per process).
    pub fn operator(&self) -> Operator {
        self.operator
    }

    /// Writes one line with the run's logger (the seed's `print`).
    pub fn print(&self, message: impl AsRef<str>) -> Result<(), LogError> {
        self.logger.print(message)
    }

    /// The run's logger (the seed's `logobj`). Clone it and change options to
    /// log differently from this task:
    /// `ctx.logger().clone().msgtype(true).indent_style("*", 2)`.
    pub fn logger(&self) -> &Logger {
        self.logger
    }

    /// True once every other call of this run has ended (returned, panicked or
    /// was killed). A task that serves the others, such as a Manager's Guard
    /// run in the same table, uses it to end with its run instead of hanging it.
    pub fn others_ended(&self) -> bool {
        self.board.all_others_ended()
    }

    /// The data attached to the run (`()` for `fun` / `funs`).
    pub fn data(&self) -> &D {
        self.data
    }
}
