//! `xme` against what another program or user can put in its way: a FIFO
//! in /dev/shm, keys and statuses carrying terminal escapes, a region cut
//! short, a region another user's process maps (found by an independent
//! review: each hung, drove the terminal, could not be removed, or was
//! removed while in use).

use assert_cmd::cargo::cargo_bin_cmd;
use xme_core::{Operator, SharedRegion};
use xme_shm::XmemBuilder;

fn xme(args: &[&str]) -> (bool, String, String) {
    let out = cargo_bin_cmd!("xme")
        .args(args)
        .timeout(std::time::Duration::from_secs(20))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_fifo_in_dev_shm_is_refused_at_once() {
    let name = format!("xme-cli-fifo-{}", std::process::id());
    let path = format!("/dev/shm/{name}");
    nix::unistd::mkfifo(path.as_str(), nix::sys::stat::Mode::S_IRWXU).unwrap();
    for args in [
        vec!["show", &name],
        vec!["top", &name, "--once"],
        vec!["rm", &name],
    ] {
        let (ok, _, err) = xme(&args);
        assert!(!ok && err.contains("not a plain file"), "{args:?}: {err}");
    }
    assert!(
        std::path::Path::new(&path).exists(),
        "a FIFO is not xme's to remove"
    );
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn keys_and_statuses_cannot_drive_the_terminal() {
    let name = format!("xme-cli-escapes-{}", std::process::id());
    let xmem = XmemBuilder::new().named(&name).build().unwrap();
    xmem.set("\x1b[2J\x1b[31mevil\nFAKE LINE", &1u8).unwrap();
    xmem.status(Operator::ADMIN, "ok\x1b[1;1H\x1b[2Kforged\rrow")
        .unwrap();
    let (ok, out, err) = xme(&["show", &name]);
    assert!(ok, "{err}");
    assert!(!out.contains('\x1b') && !out.contains('\r'), "{out:?}");
    assert!(!out.lines().any(|l| l.starts_with("FAKE LINE")), "{out}");
    assert!(
        out.contains("\\u{1b}[2J\\u{1b}[31mevil\\nFAKE LINE"),
        "{out}"
    );
    assert!(out.contains("forged\\rrow"), "{out}");
    drop(xmem);
}

#[test]
fn a_region_cut_short_is_named_by_ls_and_removed_by_rm_force() {
    let name = format!("xme-cli-cut-{}", std::process::id());
    let real = XmemBuilder::new().named(&name).build().unwrap();
    let bytes = std::fs::read(format!("/dev/shm/{name}")).unwrap();
    drop(real);
    let cut = format!("{name}-half");
    let path = format!("/dev/shm/{cut}");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let (ok, _, err) = xme(&["ls"]);
    assert!(
        ok && err.contains(&cut) && err.contains("rm --force"),
        "{err}"
    );
    let (ok, _, err) = xme(&["rm", &cut]);
    assert!(!ok && err.contains("corrupt or truncated"), "{err}");
    assert!(std::path::Path::new(&path).exists());
    let (ok, out, err) = xme(&["rm", &cut, "--force"]);
    assert!(ok && out.contains("could not be read"), "{out}{err}");
    assert!(!std::path::Path::new(&path).exists());
    // A foreign file is never removed, --force or not.
    let foreign = format!("{name}-foreign");
    std::fs::write(format!("/dev/shm/{foreign}"), [7u8; 4096]).unwrap();
    let (ok, _, _) = xme(&["rm", &foreign, "--force"]);
    assert!(!ok);
    assert!(std::path::Path::new(&format!("/dev/shm/{foreign}")).exists());
    std::fs::remove_file(format!("/dev/shm/{foreign}")).unwrap();
}

/// A region whose creator (user nobody) died while a root process still
/// maps it: `xme` run as nobody cannot read root's maps, so it must not
/// take "none seen" for "none" (root only: it needs two users).
#[test]
fn a_region_another_users_process_maps_is_never_cleaned_blindly() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || which("setpriv").is_none() {
        eprintln!("skipped: needs root and setpriv to act as two users");
        return;
    }
    let name = format!("xme-cli-twousers-{}", std::process::id());
    let path = format!("/dev/shm/{name}");
    // Made by a child running as nobody; root attaches while it lives,
    // then the child exits.
    use std::io::{Read, Write};
    let (mut ready_rx, mut ready_tx) = std::io::pipe().unwrap();
    let (mut go_rx, mut go_tx) = std::io::pipe().unwrap();
    let child = xme_core::process::fork_child(|| {
        // SAFETY: plain system calls in a single-threaded fork child.
        if unsafe { libc::setgid(65534) != 0 || libc::setuid(65534) != 0 } {
            return 2;
        }
        let Ok(region) = SharedRegion::create_named(&name, 4096, 1) else {
            return 3;
        };
        let _ = ready_tx.write_all(b"r");
        let _ = go_rx.read(&mut [0u8; 1]);
        std::mem::forget(region); // leave it: the creator dies
        0
    })
    .unwrap();
    let mut byte = [0u8; 1];
    ready_rx.read_exact(&mut byte).unwrap();
    let attached = SharedRegion::open_named(&name, 1).unwrap();
    go_tx.write_all(b"g").unwrap();
    assert!(child.wait().unwrap().is_success());
    let as_nobody = |args: &[&str]| {
        let exe = assert_cmd::cargo::cargo_bin!("xme");
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(exe)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (_, out) = as_nobody(&["clean", "--only", &name]);
    assert!(
        std::path::Path::new(&path).exists(),
        "clean removed it: {out}"
    );
    assert!(out.contains("could not be looked at"), "{out}");
    let (ok, out) = as_nobody(&["rm", &name]);
    assert!(!ok && out.contains("cannot tell whether"), "{out}");
    assert!(std::path::Path::new(&path).exists());
    // Root sees the user and refuses too; with --force it goes.
    let (ok, _, err) = xme(&["rm", &name]);
    assert!(!ok && err.contains("in use"), "{err}");
    drop(attached);
    let (ok, out, err) = xme(&["rm", &name]);
    assert!(ok, "{out}{err}");
    assert!(!std::path::Path::new(&path).exists());
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(program))
        .find(|p| p.exists())
}
