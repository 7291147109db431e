//! Process-wide hooks that [`fork_child`](super::fork_child) calls around
//! every fork xme makes.
//!
//! The registry is a push-only list of leaked nodes: registering is one CAS
//! on its head, reading is loads only. A forked child therefore never finds
//! it locked by a thread that does not exist there, and a hook registered
//! while another thread forks is either wholly in that fork's snapshot or
//! wholly absent.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicPtr, Ordering};

use crate::Error;

type Hook = Box<dyn Fn() + Send + Sync + 'static>;

/// Functions to run around every fork xme makes: `prepare` in the parent
/// just before `fork(2)`, then `parent` in the parent and `child` in the
/// child just after it (the child's hooks first, before anything else runs
/// there), and `before_exit` in the child when its body has returned, just
/// before it leaves with `_exit`. The contract of `pthread_atfork` (plus an
/// exit hook, since `_exit` skips `atexit`), for xme's forks only
/// (`Xme` runs, the `Pool`'s zygote and workers, MPI's logical processes,
/// every [`fork_child`](super::fork_child)), so that a process running code
/// xme cannot see (an interpreter, a random generator, a connection pool)
/// can prepare itself for a fork and repair itself in the child.
///
/// Register them with [`at_fork`]. Hooks cannot be removed. Forks made
/// elsewhere (`libc::fork`, Python's `os.fork`) do not run them.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use xme_core::process::{self, ForkHooks};
/// use xme_core::SharedRegion;
///
/// // Each process draws from its own stream: the child hook reseeds it.
/// static SEED: AtomicU64 = AtomicU64::new(1);
///
/// # fn main() -> Result<(), xme_core::Error> {
/// process::at_fork(ForkHooks::new().child(|| {
///     SEED.store(u64::from(std::process::id()) * 0x9E37_79B9, Ordering::Relaxed);
/// }));
/// let region = SharedRegion::anonymous(8)?;
/// let seen: &AtomicU64 = region.place(0)?;
/// let child = process::fork_child(|| {
///     seen.store(SEED.load(Ordering::Relaxed), Ordering::SeqCst);
///     0
/// })?;
/// let pid = child.pid() as u64;
/// assert!(child.wait()?.is_success());
/// assert_eq!(seen.load(Ordering::SeqCst), pid * 0x9E37_79B9);
/// assert_eq!(SEED.load(Ordering::Relaxed), 1); // the parent's is untouched
/// # Ok(())
/// # }
/// ```
#[derive(Default)]
#[must_use = "hooks do nothing until registered with process::at_fork"]
pub struct ForkHooks {
    prepare: Option<Hook>,
    parent: Option<Hook>,
    child: Option<Hook>,
    before_exit: Option<Hook>,
}

impl std::fmt::Debug for ForkHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForkHooks")
            .field("prepare", &self.prepare.is_some())
            .field("parent", &self.parent.is_some())
            .field("child", &self.child.is_some())
            .field("before_exit", &self.before_exit.is_some())
            .finish()
    }
}

impl ForkHooks {
    /// No hooks yet.
    ///
    /// ```
    /// let hooks = xme_core::process::ForkHooks::new();
    /// assert_eq!(
    ///     format!("{hooks:?}"),
    ///     "ForkHooks { prepare: false, parent: false, child: false, before_exit: false }"
    /// );
    /// ```
    pub fn new() -> ForkHooks {
        ForkHooks::default()
    }

    /// Runs `f` in the parent just before each fork. Prepare hooks run in
    /// the reverse order of registration (the latest first), as
    /// `pthread_atfork`'s do. A prepare hook that panics cancels the fork:
    /// the parent hooks of the registrations whose prepare hook already ran
    /// are called, and `fork_child` returns [`Error::ForkHook`].
    ///
    /// ```
    /// use xme_core::process::{self, ForkHooks};
    /// // Flush what a buffered writer of the program holds, so it is not written twice.
    /// process::at_fork(ForkHooks::new().prepare(|| { let _ = std::io::Write::flush(&mut std::io::stdout()); }));
    /// ```
    pub fn prepare(mut self, f: impl Fn() + Send + Sync + 'static) -> ForkHooks {
        self.prepare = Some(Box::new(f));
        self
    }

    /// Runs `f` in the parent just after each fork, in the order of
    /// registration, also when `fork(2)` failed (so it can undo what its
    /// prepare hook did). If one panics, the others still run, the new child
    /// is killed and reaped, and `fork_child` returns [`Error::ForkHook`].
    ///
    /// ```
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use xme_core::process::{self, ForkHooks};
    /// static FORKS: AtomicUsize = AtomicUsize::new(0);
    /// # fn main() -> Result<(), xme_core::Error> {
    /// process::at_fork(ForkHooks::new().parent(|| { FORKS.fetch_add(1, Ordering::Relaxed); }));
    /// let before = FORKS.load(Ordering::Relaxed);
    /// process::fork_child(|| 0)?.wait()?;
    /// assert!(FORKS.load(Ordering::Relaxed) > before);
    /// # Ok(())
    /// # }
    /// ```
    pub fn parent(mut self, f: impl Fn() + Send + Sync + 'static) -> ForkHooks {
        self.parent = Some(Box::new(f));
        self
    }

    /// Runs `f` in the child just after the fork, before anything else xme
    /// does there, in the order of registration. The child has one thread:
    /// `f` must not wait for a lock another thread of the parent may have
    /// held at the fork. If one panics, the child exits with
    /// [`EXIT_PANICKED`](super::EXIT_PANICKED) without running its body.
    ///
    /// ```
    /// use xme_core::process::{self, ForkHooks};
    /// // Forget a connection that belongs to the parent.
    /// process::at_fork(ForkHooks::new().child(|| { /* drop the pool's sockets */ }));
    /// ```
    pub fn child(mut self, f: impl Fn() + Send + Sync + 'static) -> ForkHooks {
        self.child = Some(Box::new(f));
        self
    }

    /// Runs `f` in the child when its body has returned (or panicked), just
    /// before it flushes Rust's stdout and stderr and leaves with `_exit`,
    /// in the order of registration: `_exit` skips `atexit` handlers and
    /// destructors, so this is where a runtime flushes what it buffered in
    /// the child. A panic in one is ignored (the others still run). Not run
    /// when the child is killed, or when a child hook panicked.
    ///
    /// ```
    /// use std::io::Write;
    /// use xme_core::process::{self, ForkHooks};
    /// # fn main() -> Result<(), xme_core::Error> {
    /// process::at_fork(ForkHooks::new().before_exit(|| {
    ///     let _ = std::io::stderr().write_all(b"a child is leaving\n");
    /// }));
    /// process::fork_child(|| 0)?.wait()?; // prints: a child is leaving
    /// # Ok(())
    /// # }
    /// ```
    pub fn before_exit(mut self, f: impl Fn() + Send + Sync + 'static) -> ForkHooks {
        self.before_exit = Some(Box::new(f));
        self
    }
}

/// Registers `hooks` for every later fork that xme makes in this process
/// (and, since the registry is copied by fork, in its forked children).
/// Registering never fails and never blocks; hooks stay registered for the
/// life of the process.
///
/// ```
/// use xme_core::process::{self, ForkHooks};
/// process::at_fork(ForkHooks::new().child(|| { /* reseed, reconnect, ... */ }));
/// ```
pub fn at_fork(hooks: ForkHooks) {
    registry().push(hooks);
}

/// The registered hooks of one fork, oldest first: taken once before the
/// fork, so that prepare, parent and child hooks all see the same list.
pub(super) struct Snapshot(Vec<&'static ForkHooks>);

impl Snapshot {
    pub(super) fn take() -> Snapshot {
        Snapshot(registry().snapshot())
    }

    /// Runs the prepare hooks, latest registration first. If one panics,
    /// the parent hooks of those that ran are called and the fork must not
    /// happen.
    pub(super) fn prepare(&self) -> Result<(), Error> {
        for (done, hooks) in self.0.iter().rev().enumerate() {
            if let Some(f) = &hooks.prepare
                && let Err(payload) = catch_unwind(AssertUnwindSafe(f))
            {
                let prepared = &self.0[self.0.len() - done..];
                let _ = run_each(prepared.iter().filter_map(|h| h.parent.as_ref()));
                return Err(Error::ForkHook {
                    stage: "prepare",
                    message: super::panic_message(&*payload),
                });
            }
        }
        Ok(())
    }

    /// Runs every parent hook in registration order, even after one panicked.
    pub(super) fn parent(&self) -> Result<(), Error> {
        run_each(self.0.iter().filter_map(|h| h.parent.as_ref())).map_err(|message| {
            Error::ForkHook {
                stage: "parent",
                message,
            }
        })
    }

    /// Runs the child hooks in registration order; stops at a panic.
    /// Allocates nothing: the list was gathered before the fork.
    pub(super) fn child(&self) -> Result<(), ()> {
        for f in self.0.iter().filter_map(|h| h.child.as_ref()) {
            catch_unwind(AssertUnwindSafe(f)).map_err(|_| ())?;
        }
        Ok(())
    }

    /// Runs every exit hook in registration order, panics ignored.
    pub(super) fn before_exit(&self) {
        let _ = run_each(self.0.iter().filter_map(|h| h.before_exit.as_ref()));
    }
}

/// Runs every hook; the message of the first that panicked, if one did.
fn run_each<'a>(hooks: impl Iterator<Item = &'a Hook>) -> Result<(), String> {
    let mut first_panic = None;
    for f in hooks {
        if let Err(payload) = catch_unwind(AssertUnwindSafe(f)) {
            first_panic.get_or_insert_with(|| super::panic_message(&*payload));
        }
    }
    first_panic.map_or(Ok(()), Err)
}

/// A push-only list of leaked nodes, newest at the head. Generic over the
/// head's atomic so that the loom model checks this very code.
struct Registry<H: Head = AtomicPtr<Node>> {
    head: H,
}

struct Node {
    hooks: ForkHooks,
    /// The node registered before this one; never changes once published.
    older: *const Node,
}

// SAFETY: a node is immutable once published and never freed, and its hooks
// are `Send + Sync`; the raw `older` pointer only ever points at another
// such node (or is null).
unsafe impl Send for Node {}
// SAFETY: as above: shared `&Node`s are only ever read.
unsafe impl Sync for Node {}

/// The atomic pointer at the head of the list (std's, or loom's in the model).
trait Head {
    fn load(&self, order: Ordering) -> *mut Node;
    fn compare_exchange_weak(
        &self,
        current: *mut Node,
        new: *mut Node,
        success: Ordering,
        failure: Ordering,
    ) -> Result<*mut Node, *mut Node>;
}

impl Head for AtomicPtr<Node> {
    fn load(&self, order: Ordering) -> *mut Node {
        AtomicPtr::load(self, order)
    }

    fn compare_exchange_weak(
        &self,
        current: *mut Node,
        new: *mut Node,
        success: Ordering,
        failure: Ordering,
    ) -> Result<*mut Node, *mut Node> {
        AtomicPtr::compare_exchange_weak(self, current, new, success, failure)
    }
}

impl<H: Head> Registry<H> {
    fn push(&self, hooks: ForkHooks) {
        let node: &'static mut Node = Box::leak(Box::new(Node {
            hooks,
            older: std::ptr::null(),
        }));
        // Relaxed: the CAS below publishes, and a failed CAS only tells us
        // the newer head to link to.
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            node.older = head;
            // Release: a reader that sees this node (Acquire) also sees its
            // hooks and `older` written above.
            match self.head.compare_exchange_weak(
                head,
                &raw mut *node,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(newer) => head = newer,
            }
        }
    }

    /// Every registered hook set, oldest first.
    fn snapshot(&self) -> Vec<&'static ForkHooks> {
        let mut all = Vec::new();
        // Acquire: pairs with the Release of the push that published the
        // head; older nodes were published before it, so they are visible too.
        let mut at = self.head.load(Ordering::Acquire).cast_const();
        // SAFETY: every non-null pointer in the list is a leaked `Node`
        // (never freed, never changed after publication), visible through
        // the Acquire load above.
        while let Some(node) = unsafe { at.as_ref() } {
            all.push(&node.hooks);
            at = node.older;
        }
        all.reverse();
        all
    }
}

fn registry() -> &'static Registry {
    static REGISTRY: Registry = Registry {
        head: AtomicPtr::new(std::ptr::null_mut()),
    };
    &REGISTRY
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;

    impl Head for loom::sync::atomic::AtomicPtr<Node> {
        fn load(&self, order: Ordering) -> *mut Node {
            loom::sync::atomic::AtomicPtr::load(self, order)
        }

        fn compare_exchange_weak(
            &self,
            current: *mut Node,
            new: *mut Node,
            success: Ordering,
            failure: Ordering,
        ) -> Result<*mut Node, *mut Node> {
            loom::sync::atomic::AtomicPtr::compare_exchange_weak(
                self, current, new, success, failure,
            )
        }
    }

    /// Two threads register while a third snapshots: the snapshot holds
    /// a prefix of what was registered, each hook whole and callable, and
    /// after both pushes every hook is there exactly once.
    #[test]
    fn concurrent_registration_is_seen_whole() {
        crate::sync::loom_model(3, || {
            let registry = Arc::new(Registry {
                head: loom::sync::atomic::AtomicPtr::new(std::ptr::null_mut()),
            });
            // A std counter: the leaked hooks outlive the model's objects,
            // and only this thread calls them.
            let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let pushers: Vec<_> = (0..2)
                .map(|_| {
                    let (registry, calls) = (registry.clone(), calls.clone());
                    loom::thread::spawn(move || {
                        let calls = calls.clone();
                        registry.push(ForkHooks::new().child(move || {
                            calls.fetch_add(1, Ordering::Relaxed);
                        }));
                    })
                })
                .collect();
            let seen = registry.snapshot();
            assert!(seen.len() <= 2);
            for hooks in &seen {
                (hooks.child.as_ref().expect("a child hook"))();
            }
            assert_eq!(calls.load(Ordering::Relaxed), seen.len());
            for p in pushers {
                p.join().unwrap();
            }
            assert_eq!(registry.snapshot().len(), 2);
        });
    }
}
