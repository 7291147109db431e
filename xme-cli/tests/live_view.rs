//! `xme top` in a real terminal: tmux runs it in a pseudo-terminal; the
//! test reads the screen with `capture-pane` and types with `send-keys`.
//! Skipped, saying why, only where tmux is not installed (CI installs it).

use std::process::Command;
use std::time::{Duration, Instant};

use xme_shm::XmemBuilder;

const WAIT: Duration = Duration::from_secs(20);

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux").args(args).output().expect("tmux runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until the pane of `session` shows something `want` accepts.
fn screen_until(session: &str, what: &str, want: impl Fn(&str) -> bool) -> String {
    let t = Instant::now();
    loop {
        let screen = tmux(&["capture-pane", "-p", "-t", session]);
        if want(&screen) {
            return screen;
        }
        assert!(t.elapsed() < WAIT, "no {what} on the screen:\n{screen}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A tmux session running `xme top name`, then a line with its exit status
/// and whether the terminal is canonical again; killed when dropped.
struct Session(String);
impl Session {
    fn start(session: &str, name: &str) -> Session {
        let xme = env!("CARGO_BIN_EXE_xme");
        let script = format!(
            "{xme} top {name} --interval-ms 100; echo EXITED $?; stty -a | tr ' ' '\\n' | grep -x -- '-\\?icanon'; sleep 60"
        );
        let ok = Command::new("tmux")
            .args(["new-session", "-d", "-s", session, "-x", "120", "-y", "40"])
            .arg(script)
            .status()
            .expect("tmux runs")
            .success();
        assert!(ok, "tmux could not start a session");
        Session(session.to_string())
    }
}
impl Drop for Session {
    fn drop(&mut self) {
        tmux(&["kill-session", "-t", &self.0]);
    }
}

/// Waits until xme has exited with `status` and the script has checked the
/// terminal; asserts the alternate screen is gone (no frame on the main
/// screen) and the terminal is canonical again (raw mode off). Returns the
/// screen.
fn exited_restored(session: &Session, status: i32) -> String {
    // `stty` prints `icanon`, or `-icanon` if raw mode were left on.
    let screen = screen_until(&session.0, "exit", |s| {
        s.contains("EXITED") && s.lines().any(|l| l.trim().ends_with("icanon"))
    });
    assert!(screen.contains(&format!("EXITED {status}")), "{screen}");
    assert!(!screen.contains("xme top:"), "{screen}");
    assert!(screen.lines().any(|l| l.trim() == "icanon"), "{screen}");
    assert_eq!(
        tmux(&["display-message", "-p", "-t", &session.0, "#{alternate_on}"]).trim(),
        "0"
    );
    screen
}

fn tmux_missing() -> bool {
    if Command::new("tmux").arg("-V").output().is_err() {
        println!("SKIPPED: tmux is not installed (apt-get install tmux); .ci/run installs it");
        return true;
    }
    false
}

#[test]
fn top_draws_quits_on_q_and_restores_the_terminal() {
    if tmux_missing() {
        return;
    }
    let name = format!("xme-cli-live-{}", std::process::id());
    let xmem = XmemBuilder::new().named(&name).build().unwrap();
    let op = xmem.alloc_operator();
    xmem.status(op, "watching the view").unwrap();
    let session = Session::start(&name, &name);

    let screen = screen_until(&session.0, "frame", |s| {
        s.contains(&format!("xme top: {name}")) && s.contains("watching the view")
    });
    assert!(
        screen.contains("calls/s") && screen.contains("statuses (1)"),
        "{screen}"
    );
    // The view refreshes: a new status shows without a key.
    xmem.status(op, "changed while watched").unwrap();
    screen_until(&session.0, "refresh", |s| {
        s.contains("changed while watched")
    });

    tmux(&["send-keys", "-t", &session.0, "q"]);
    exited_restored(&session, 0);
}

#[test]
fn top_leaves_cleanly_when_its_region_disappears() {
    if tmux_missing() {
        return;
    }
    let name = format!("xme-cli-gone-{}", std::process::id());
    let xmem = XmemBuilder::new().named(&name).build().unwrap();
    let session = Session::start(&name, &name);
    screen_until(&session.0, "frame", |s| {
        s.contains(&format!("xme top: {name}"))
    });
    drop(xmem); // its creator removes it
    let screen = exited_restored(&session, 1);
    assert!(screen.contains("disappeared"), "{screen}");
}

#[test]
fn top_restores_the_terminal_on_sigint() {
    if tmux_missing() {
        return;
    }
    let name = format!("xme-cli-sigint-{}", std::process::id());
    let xmem = XmemBuilder::new().named(&name).build().unwrap();
    let session = Session::start(&name, &name);
    screen_until(&session.0, "frame", |s| {
        s.contains(&format!("xme top: {name}"))
    });
    // The pane runs `sh -c '…'`, whose child is xme: SIGINT it from outside
    // (in raw mode ^C is a key, so this is the signal path).
    let shell: i32 = tmux(&["display-message", "-p", "-t", &session.0, "#{pane_pid}"])
        .trim()
        .parse()
        .unwrap();
    let xme = *xme_core::process::children_of(shell)
        .first()
        .expect("xme runs under the pane's shell");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(xme),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    exited_restored(&session, 0);
    drop(xmem);
}
