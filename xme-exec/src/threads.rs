//! How many threads this process has (for the fork-with-threads warning).

/// Threads of this process (entries of `/proc/self/task`; 1 if unknown).
pub(crate) fn count() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count().max(1))
}

/// Logs, once per process, that forking with other threads running is a
/// hazard, through the `log` crate (never on stdout).
pub(crate) fn warn_if_threaded() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let n = count();
    if n > 1 {
        ONCE.call_once(|| {
            log::warn!(
                "xme: forking workers while this process has {n} threads: a worker has only the forking thread, so a lock another thread held at the fork stays held (a task taking it hangs) and pools such as rayon's have no threads; use xme::Pool (made before any thread) or set a timeout"
            );
        });
    }
}
