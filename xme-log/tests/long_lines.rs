//! Lines longer than PIPE_BUF (4,096 bytes) written by several processes to
//! one pipe come out whole.

use xme_core::process::fork_child;
use xme_log::Logger;

const PROCESSES: usize = 4;
const LINES: usize = 40;
const LEN: usize = 20_000;

/// Run by the test below with its stdout a pipe: four processes write long lines.
#[test]
#[ignore = "helper: run by another test in its own process"]
fn helper_long_lines_from_four_processes() {
    let log = Logger::new().time(false).pid(false).msgtype(false);
    let children: Vec<_> = (0..PROCESSES)
        .map(|p| {
            let log = log.clone();
            fork_child(move || {
                let body = char::from(b'a' + p as u8).to_string().repeat(LEN);
                for i in 0..LINES {
                    log.print(format!("LONG {p} {i:03} {body}")).unwrap();
                }
                0
            })
            .unwrap()
        })
        .collect();
    for c in children {
        assert!(c.wait().unwrap().is_success());
    }
}

#[test]
fn long_lines_through_a_pipe_never_tear() {
    let out = xme_test_support::run_test_helper("helper_long_lines_from_four_processes", &[]);
    assert!(out.status.success(), "{}", xme_test_support::text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().filter(|l| l.contains("LONG ")).collect();
    assert_eq!(lines.len(), PROCESSES * LINES, "lines lost or split");
    for line in lines {
        let rest = line.trim_start_matches(|c: char| c != 'L');
        let mut parts = rest.splitn(4, ' ');
        let (_, p, _, body) = (
            parts.next(),
            parts.next().unwrap(),
            parts.next(),
            parts.next().unwrap_or(""),
        );
        let p: usize = p.parse().expect("a process number");
        let want = char::from(b'a' + p as u8);
        assert!(
            body.len() == LEN && body.chars().all(|c| c == want),
            "a torn line from process {p}: {} bytes, starting {:?}",
            body.len(),
            &body[..body.len().min(40)]
        );
    }
}
