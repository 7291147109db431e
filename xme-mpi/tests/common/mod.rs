//! Helpers shared by the test files.

use xme_core::process::children_of;

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
