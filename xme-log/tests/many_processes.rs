//! Lines from many processes sharing one log file are whole and well-formed.

use std::collections::HashMap;

use xme_core::process::fork_child;
use xme_log::Logger;

fn temp_log(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("xme-log-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("run.log");
    let _ = std::fs::remove_file(&path);
    path
}

/// Parses `YYYY-MM-DD HH:MM:SS(pid@N):payload`, returning (pid, payload).
fn parse(line: &str) -> Option<(u32, &str)> {
    let (time, rest) = (line.get(..19)?, line.get(19..)?);
    chrono::NaiveDateTime::parse_from_str(time, "%Y-%m-%d %H:%M:%S").ok()?;
    let rest = rest.strip_prefix("(pid@")?;
    let close = rest.find("):")?;
    Some((rest[..close].parse().ok()?, &rest[close + 2..]))
}

#[test]
fn eight_processes_thousand_lines_each_never_tear() {
    const PROCS: usize = 8;
    const LINES: usize = 1000;
    let path = temp_log("tear");
    let log = Logger::new().screen(false).logfile(&path).unwrap();
    // Long payloads make a torn or interleaved write easy to see.
    let children: Vec<_> = (0..PROCS)
        .map(|p| {
            let log = log.clone();
            fork_child(move || {
                for i in 0..LINES {
                    let body = format!("proc {p} line {i} ") + &"x".repeat(150 + (i % 50));
                    if log.print(body).is_err() {
                        return 1;
                    }
                }
                0
            })
            .unwrap()
        })
        .collect();
    let mut pids = Vec::new();
    for c in children {
        pids.push(c.pid() as u32);
        assert!(c.wait().unwrap().is_success());
    }

    let text = std::fs::read_to_string(&path).unwrap();
    let mut per_pid: HashMap<u32, Vec<usize>> = HashMap::new();
    for line in text.lines() {
        let (pid, payload) = parse(line).unwrap_or_else(|| panic!("malformed line: {line:?}"));
        let mut words = payload.split(' ');
        assert_eq!(words.next(), Some("proc"), "{line:?}");
        let p: usize = words.next().unwrap().parse().unwrap();
        assert_eq!(words.next(), Some("line"));
        let i: usize = words.next().unwrap().parse().unwrap();
        let xs = words.next().unwrap();
        assert_eq!(xs, "x".repeat(150 + (i % 50)), "torn payload in {line:?}");
        assert_eq!(pids[p], pid, "line of proc {p} stamped with another pid");
        per_pid.entry(pid).or_default().push(i);
    }
    assert_eq!(per_pid.len(), PROCS);
    for (pid, lines) in per_pid {
        // Each process's own lines arrive whole and in its order.
        assert_eq!(lines, (0..LINES).collect::<Vec<_>>(), "pid {pid}");
    }
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[test]
fn log_crate_macros_work_in_the_parent_and_a_child() {
    let path = temp_log("facade");
    Logger::new()
        .screen(false)
        .logfile(&path)
        .unwrap()
        .install(log::LevelFilter::Info)
        .unwrap();
    log::info!("from parent");
    let child = fork_child(|| {
        log::warn!("from child");
        0
    })
    .unwrap();
    let child_pid = child.pid();
    assert!(child.wait().unwrap().is_success());
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines[0].starts_with("(INFO)"));
    assert!(lines[0].ends_with(&format!("(pid@{}):from parent", std::process::id())));
    assert!(lines[1].starts_with("(WARN)"));
    assert!(lines[1].ends_with(&format!("(pid@{child_pid}):from child")));
    std::fs::remove_dir_all(path.parent().unwrap()).unwrap();
}
