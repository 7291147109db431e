//! How many threads this process has (for the fork-with-threads warning).

/// Threads of this process (entries of `/proc/self/task`; 1 if unknown).
pub(crate) fn count() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(1, |d| d.count().max(1))
}

/// Logs, once per process, that forking with other threads running is a
/// hazard, through the `log` crate (never on stdout).
pub(crate) fn warn_if_threaded() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // Counting reads /proc: not when the warning was given, or would go
    // nowhere (no `log` backend takes warnings, as in the Python module,
    // which warns through Python's `warnings` itself).
    if ONCE.is_completed() || !log::log_enabled!(log::Level::Warn) {
        return;
    }
    let n = count();
    if n > 1 {
        ONCE.call_once(|| {
            log::warn!(
                "xme: forking workers while this process has {n} threads: a worker has only the forking thread, so a lock another thread held at the fork stays held (a task taking it hangs) and pools such as rayon's have no threads; use xme::Pool (made before any thread) or set a timeout"
            );
        });
    }
}
