//! `xme` end to end, through the real binary: a program (this test binary
//! run again as `demo_program`) makes a named Manager with keys, statuses
//! from 3 forked workers, a Guard running calls and a held lock, and a
//! named Monitor; the commands read them, then the program is SIGKILLed and
//! `clean` removes what it left, leaving a live region alone.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use assert_cmd::cargo::cargo_bin_cmd;
use serde_json::{Value, json};
use xme_core::{Operator, process};
use xme_monitor::Monitor;
use xme_shm::{Call, Guard, XmemBuilder};

const WAIT: Duration = Duration::from_secs(20);

/// The names in /dev/shm a test makes (tests run in parallel): those
/// starting with `prefix`.
fn shm(prefix: &str) -> std::collections::BTreeSet<String> {
    xme_core::inspect::shm_names()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect()
}

fn xme(args: &[&str]) -> (bool, String, String) {
    let out = cargo_bin_cmd!("xme").args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn xme_ok(args: &[&str]) -> String {
    let (ok, stdout, stderr) = xme(args);
    assert!(ok, "xme {args:?} failed: {stderr}{stdout}");
    stdout
}

fn json_of(args: &[&str]) -> Value {
    let out = xme_ok(args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("xme {args:?}: {e}: {out}"))
}

/// The program the test inspects; prints `XME-DEMO-READY <op> <guard pid>`
/// and waits to be killed.
#[test]
#[ignore = "run by cli_sees_a_running_program_and_cleans_up_after_it"]
fn demo_program() {
    let name = std::env::var("XME_CLI_DEMO").expect("XME_CLI_DEMO names the regions");
    let xmem = XmemBuilder::new()
        .named(&name)
        .value("greeting", "hello")
        .unwrap()
        .value("answer", &42u32)
        .unwrap()
        .value("blob", &vec![7u8; 100])
        .unwrap()
        .build()
        .unwrap();
    let monitor = Monitor::builder()
        .named(format!("{name}-mon"))
        .build()
        .unwrap();
    monitor
        .update(json!({"stage": "loading", "done": 3}), Operator::ADMIN)
        .unwrap();
    let guard = Guard::new()
        .exit_time(Duration::from_secs(3600))
        .spawn(&xmem)
        .unwrap();
    let op = xmem.alloc_operator();
    for i in 0..5u32 {
        xmem.append(&Call::table_set(&format!("via-guard-{i}"), &i).unwrap(), op)
            .unwrap()
            .wait(&xmem, WAIT)
            .unwrap();
    }
    // Three workers report and stay (they die with this program).
    let mut workers = Vec::new();
    for w in 0..3 {
        let child = process::fork_child(|| {
            xmem.status(Operator::alloc(), &format!("worker {w} ready"))
                .unwrap();
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        })
        .unwrap();
        workers.push(child);
    }
    let t = Instant::now();
    while xmem.statuses().unwrap().len() < 3 {
        assert!(t.elapsed() < WAIT, "the workers did not report");
        std::thread::sleep(Duration::from_millis(5));
    }
    let holder = xmem.alloc_operator();
    xmem.security().register(holder);
    let _held = xmem.security().lock(holder).unwrap();
    // libtest has printed "test demo_program ... " on this line already.
    println!("\nXME-DEMO-READY {holder} {}", guard.pid());
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The demo program, killed and reaped however the test ends (its workers
/// and Guard die with it: they have a parent-death signal).
struct Demo(Child);
impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the demo program; returns it, its lock holder and its Guard's pid.
fn start_demo(name: &str) -> (Demo, String, u32) {
    let mut demo = Demo(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "demo_program",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("XME_CLI_DEMO", name)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(demo.0.stdout.take().unwrap()).lines();
    loop {
        let line = lines
            .next()
            .expect("the demo program ended before it was ready")
            .unwrap();
        if let Some(rest) = line.strip_prefix("XME-DEMO-READY ") {
            let (op, guard) = rest.split_once(' ').unwrap();
            return (demo, op.to_string(), guard.parse().unwrap());
        }
    }
}

#[test]
fn cli_sees_a_running_program_and_cleans_up_after_it() {
    let name = format!("xme-cli-test-{}", std::process::id());
    let before = shm(&name);
    let mon = format!("{name}-mon");
    let (mut demo, holder, guard_pid) = start_demo(&name);
    let demo_pid = demo.0.id();

    // ls: both regions, by kind, creator alive.
    let ls = json_of(&["ls", "--json"]);
    let find = |ls: &Value, n: &str| {
        ls.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == n)
            .cloned()
            .unwrap_or_else(|| panic!("{n} not listed: {ls}"))
    };
    let entry = find(&ls, &name);
    assert_eq!(entry["kind"], "Manager");
    assert_eq!(entry["creator_pid"], demo_pid);
    assert_eq!(entry["creator_alive"], true);
    let users: Vec<u64> = entry["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_u64().unwrap())
        .collect();
    assert!(users.contains(&u64::from(demo_pid)), "{entry}");
    assert!(users.contains(&u64::from(guard_pid)), "{entry}");
    assert_eq!(find(&ls, &mon)["kind"], "Monitor");
    let text = xme_ok(&["ls"]);
    assert!(text.contains(&name) && text.contains("alive"), "{text}");

    // show --json, field by field.
    let show = json_of(&["show", &name, "--json"]);
    assert_eq!(show["name"], name);
    assert_eq!(show["kind"], "Manager");
    assert_eq!(show["creator_alive"], true);
    let key = |k: &str| {
        show["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["key"] == k)
            .cloned()
            .unwrap_or_else(|| panic!("no key {k}: {show}"))
    };
    assert_eq!(key("greeting")["value"], "hello");
    assert_eq!(key("greeting")["bytes"], 6);
    assert_eq!(key("answer")["hex"], "2a");
    assert_eq!(key("blob")["bytes"], 101);
    assert_eq!(
        key("blob")["hex"].as_str().unwrap(),
        format!("64{}", "07".repeat(31))
    );
    for i in 0..5u32 {
        let k = key(&format!("via-guard-{i}"));
        assert_eq!(k["hex"], model_hex(&postcard::to_stdvec(&i).unwrap()));
    }
    let statuses = show["statuses"].as_array().unwrap();
    assert_eq!(statuses.len(), 3, "{show}");
    let mut texts: Vec<&str> = statuses
        .iter()
        .map(|s| s["status"].as_str().unwrap())
        .collect();
    texts.sort();
    assert_eq!(
        texts,
        ["worker 0 ready", "worker 1 ready", "worker 2 ready"]
    );
    for s in statuses {
        assert_eq!(s["alive"], true, "{s}");
        assert_ne!(s["pid"], demo_pid);
        assert!(s["age_s"].as_f64().unwrap() < WAIT.as_secs_f64());
    }
    assert!(show["status_reports"].as_u64().unwrap() >= 3);
    assert!(show["writes"].as_u64().unwrap() >= 3 + 5 + 3, "{show}");
    let guard = &show["guard"];
    assert_eq!(guard["pid"], guard_pid);
    assert_eq!(guard["alive"], true);
    assert_eq!(guard["calls_run"], 5);
    assert_eq!(guard["calls_queued"], 0);
    assert_eq!(guard["enabled"], true);
    let lock = &show["lock"];
    assert_eq!(lock["type"], "READWRITE");
    assert_eq!(lock["holder"]["pid"], demo_pid);
    assert_eq!(lock["holder"]["operator"], holder);
    assert_eq!(lock["holder"]["alive"], true);
    assert_eq!(lock["waiters"], 0);
    assert!(show["keys_claimed"].as_u64().unwrap() >= 3 + 5 + 3);
    let arena = &show["arena"];
    assert!(arena["pages_total"].as_u64().unwrap() > arena["pages_free"].as_u64().unwrap());
    assert!(!arena["classes"].as_array().unwrap().is_empty());

    // The Monitor's messages.
    let show_mon = json_of(&["show", &mon, "--json"]);
    assert_eq!(show_mon["kind"], "Monitor");
    assert_eq!(show_mon["messages"], json!({"stage": "loading", "done": 3}));
    assert_eq!(show_mon["publishes"], 1);

    // top --once: the statuses and the lock holder appear.
    let frame = xme_ok(&["top", &name, "--once", "--interval-ms", "100"]);
    for w in 0..3 {
        assert!(frame.contains(&format!("worker {w} ready")), "{frame}");
    }
    assert!(
        frame.contains(&format!("held by pid {demo_pid} (alive) as {holder}")),
        "{frame}"
    );
    assert!(
        frame.contains(&format!("guard: pid {guard_pid} alive")),
        "{frame}"
    );

    // rm refuses a region in use.
    let (ok, _, err) = xme(&["rm", &name]);
    assert!(!ok && err.contains("in use"), "{err}");

    // A live region of this test, which clean must leave alone.
    let live_name = format!("{name}-live");
    let live = XmemBuilder::new()
        .named(&live_name)
        .value("kept", &1u32)
        .unwrap()
        .build()
        .unwrap();

    // SIGKILL the program; its workers and Guard die with it.
    demo.0.kill().unwrap();
    demo.0.wait().unwrap();
    let t = Instant::now();
    let entry = loop {
        let entry = find(&json_of(&["ls", "--json"]), &name);
        if entry["users"].as_array().unwrap().is_empty() {
            break entry;
        }
        assert!(t.elapsed() < WAIT, "users left: {entry}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(entry["creator_alive"], false);
    let show = json_of(&["show", &name, "--json"]);
    assert_eq!(show["lock"]["holder"]["alive"], false);
    assert_eq!(show["guard"]["alive"], false);

    let dry = xme_ok(&["clean", "--dry-run"]);
    assert!(dry.contains(&format!("would remove {name} ")), "{dry}");
    assert!(dry.contains(&format!("would remove {mon} ")), "{dry}");
    assert!(!dry.contains(&live_name), "{dry}");
    assert!(shm(&name).contains(&name) && shm(&name).contains(&mon));

    // Only this test's regions: others' abandoned ones are not its to remove.
    let cleaned = xme_ok(&["clean", "--only", &name]);
    assert!(cleaned.contains(&format!("removed {name} ")), "{cleaned}");
    assert!(cleaned.contains(&format!("removed {mon} ")), "{cleaned}");
    assert!(!cleaned.contains(&live_name), "{cleaned}");
    let now = shm(&name);
    assert!(!now.contains(&name) && !now.contains(&mon));
    assert!(now.contains(&live_name));
    assert_eq!(live.get::<u32>("kept").unwrap(), 1);
    // rm refuses the live one (its creator is this test), --force removes it.
    let (ok, _, err) = xme(&["rm", &live_name]);
    assert!(!ok && err.contains("in use"), "{err}");
    assert!(shm(&name).contains(&live_name));
    let removed = xme_ok(&["rm", &live_name, "--force"]);
    assert!(
        removed.contains(&format!("removed {live_name} (Manager)")),
        "{removed}"
    );
    assert!(!shm(&name).contains(&live_name));
    assert_eq!(
        live.get::<u32>("kept").unwrap(),
        1,
        "the mapping stays valid"
    );
    drop(live);
    assert_eq!(shm(&name), before, "/dev/shm before and after");
}

fn model_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn foreign_corrupt_and_missing_regions_give_clear_errors() {
    let name = format!("xme-cli-foreign-{}", std::process::id());
    let before = shm(&name);
    let path = format!("/dev/shm/{name}");
    std::fs::write(&path, vec![0xabu8; 4096]).unwrap();
    let (ok, _, err) = xme(&["show", &name]);
    assert!(!ok && err.contains("is not an xme region"), "{err}");
    std::fs::write(&path, [1u8; 10]).unwrap();
    let (ok, _, err) = xme(&["show", &name]);
    assert!(!ok && err.contains("too small"), "{err}");
    // Not listed, not cleaned: it is not xme's.
    assert!(!xme_ok(&["ls"]).contains(&name));
    assert!(!xme_ok(&["clean", "--dry-run"]).contains(&name));
    std::fs::remove_file(&path).unwrap();
    // A Manager of another layout version says which.
    let version = u32::from(xme_shm::MANAGER_KIND) << 16 | 0x63;
    let other = xme_core::SharedRegion::create_named(&name, 4096, version).unwrap();
    let (ok, _, err) = xme(&["show", &name]);
    assert!(
        !ok && err.contains("a Manager of layout version 99, this xme reads layout version"),
        "{err}"
    );
    drop(other);
    // A Manager's header over nothing: the table is not there.
    let version = u32::from(xme_shm::MANAGER_KIND) << 16 | u32::from(xme_shm::MANAGER_LAYOUT);
    let empty = xme_core::SharedRegion::create_named(&name, 4096, version).unwrap();
    let (ok, _, err) = xme(&["show", &name]);
    assert!(!ok && err.contains("is not initialised"), "{err}");
    drop(empty);
    // A real Manager cut short: the header's size says so.
    let real = XmemBuilder::new()
        .named(&name)
        .arena_bytes(1 << 20)
        .build()
        .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let cut = format!("{name}-cut");
    std::fs::write(format!("/dev/shm/{cut}"), &bytes[..bytes.len() / 2]).unwrap();
    let (ok, _, err) = xme(&["show", &cut]);
    assert!(!ok && err.contains("corrupt or truncated"), "{err}");
    std::fs::remove_file(format!("/dev/shm/{cut}")).unwrap();
    // Garbage in its table's header: a clear error, no panic.
    let mut garbled = bytes.clone();
    // The Manager header's second word is the table's offset in the payload,
    // which starts after the 64-byte region header.
    let offset = u64::from_le_bytes(bytes[64 + 8..64 + 16].try_into().unwrap()) as usize;
    assert!(offset >= 256 && 64 + offset + 64 <= bytes.len());
    garbled[64 + offset..64 + offset + 64].fill(0x5a);
    std::fs::write(format!("/dev/shm/{cut}"), &garbled).unwrap();
    let (ok, _, err) = xme(&["show", &cut]);
    assert!(!ok && err.contains("magic"), "{err}");
    std::fs::remove_file(format!("/dev/shm/{cut}")).unwrap();
    drop(real);
    let (ok, _, err) = xme(&["show", "xme-cli-no-such-region"]);
    assert!(!ok && err.contains("xme-cli-no-such-region"), "{err}");
    assert_eq!(shm(&name), before);
}

#[test]
fn reading_changes_not_one_byte() {
    let name = format!("xme-cli-readonly-{}", std::process::id());
    let xmem = XmemBuilder::new()
        .named(&name)
        .arena_bytes(1 << 20)
        .value("k", "v")
        .unwrap()
        .build()
        .unwrap();
    xmem.status(xmem.alloc_operator(), "idle").unwrap();
    let path = format!("/dev/shm/{name}");
    let before = std::fs::read(&path).unwrap();
    xme_ok(&["ls"]);
    xme_ok(&["ls", "--json"]);
    xme_ok(&["show", &name]);
    xme_ok(&["show", &name, "--json"]);
    xme_ok(&["top", &name, "--once", "--interval-ms", "50"]);
    xme_ok(&["clean", "--dry-run"]);
    assert!(
        std::fs::read(&path).unwrap() == before,
        "a reader changed the region"
    );
    drop(xmem);
    assert!(shm(&name).is_empty());
}
