//! Helpers shared by xme's integration tests.

use std::process::{Command, Output};

/// Runs the ignored test `name` of the running test binary again, as a
/// fresh program (not a fork of this one: no memory, descriptors or fork
/// family shared), with `env` set. Panics unless the filter matched exactly
/// that one test (a filter that matched nothing would "pass"); returns its
/// output for the caller to check.
pub fn run_test_helper(name: &str, env: &[(&str, &str)]) -> Output {
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = Command::new(exe)
        .args([
            "--ignored",
            "--exact",
            name,
            "--nocapture",
            "--test-threads=1",
        ])
        .envs(env.iter().copied())
        .output()
        .expect("the test binary runs again");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("running 1 test"),
        "helper {name} did not run: {stdout}"
    );
    out
}

/// Both streams of `out`, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
