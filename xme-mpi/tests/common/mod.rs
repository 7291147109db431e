//! Helpers shared by the test files.

use xme_core::process::children_of;
use xme_mpi::{MpiHandle, To, Unit};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Serialises the tests of a file: each counts this process's children and
/// descriptors, which a test running beside it would change.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `f` and checks it leaves no child process and no descriptor behind.
pub fn clean<T>(f: impl FnOnce() -> T) -> T {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let fds = open_fds();
    let out = f();
    assert_eq!(
        children_of(std::process::id() as i32),
        Vec::<i32>::new(),
        "children left"
    );
    assert_eq!(open_fds(), fds, "descriptors leaked");
    out
}

/// Sends `n` calls of `unit` (arguments `base..base + n`, 100 in flight at
/// a time) to `to` and checks each comes back once with its own result
/// (`x + 1`).
#[allow(dead_code)] // not every test file sends survivors
pub fn survivors(m: &MpiHandle<'_>, unit: &Unit<u64, u64>, to: To, base: u64, n: u64) {
    survivors_by(m, unit, to, base..base + n, 100);
}

/// [`survivors`] with at most `window` calls in flight (no more than the
/// run's slots: a caller holding every slot waits for ever for another).
#[allow(dead_code)]
pub fn survivors_by(
    m: &MpiHandle<'_>,
    unit: &Unit<u64, u64>,
    to: To,
    args: std::ops::Range<u64>,
    window: usize,
) {
    for window in args.collect::<Vec<_>>().chunks(window) {
        let slots: Vec<_> = window
            .iter()
            .map(|&x| (x, m.acquire(unit, &x, to).unwrap()))
            .collect();
        for (x, s) in slots {
            assert_eq!(m.get(s).unwrap(), x + 1, "call {x}");
        }
    }
}
