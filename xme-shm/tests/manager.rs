//! The Manager's table across real processes, and every typed error.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use xme_core::process::fork_child;
use xme_core::{Operator, SharedRegion};
use xme_security::{LockType, SecurityError};
use xme_shm::{GUARD_KEY, Manager, STATUS_KEY, ShmError, XMEM_KEY, XmemBuilder};

fn name(tag: &str) -> String {
    format!("xme-shm-test-{}-{tag}", std::process::id())
}

#[test]
fn eight_processes_ten_thousand_increments_each_exact_total() {
    let xmem = XmemBuilder::new()
        .value("counter", &0u64)
        .unwrap()
        .build()
        .unwrap();
    let children: Vec<_> = (0..8)
        .map(|_| {
            fork_child(|| {
                for _ in 0..10_000 {
                    xmem.update_with("counter", |n: Option<u64>| n.unwrap_or(0) + 1)
                        .unwrap();
                }
                0
            })
            .unwrap()
        })
        .collect();
    for c in children {
        assert!(c.wait().unwrap().is_success());
    }
    assert_eq!(xmem.get::<u64>("counter").unwrap(), 80_000);
    let stats = xmem.check().unwrap();
    assert_eq!(stats.writing_blocks, 0);
}

#[test]
fn set_get_items_get_table_delete_len() {
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Point {
        x: i32,
        y: i32,
    }
    let xmem = XmemBuilder::new()
        .value("a", &1u8)
        .unwrap()
        .value("p", &Point { x: 1, y: -2 })
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(xmem.len().unwrap(), 5); // 3 reserved + 2
    assert_eq!(xmem.get::<Point>("p").unwrap(), Point { x: 1, y: -2 });
    xmem.set("s", "text").unwrap();
    assert_eq!(xmem.get::<String>("s").unwrap(), "text");
    let t = xmem.get_table(&["a", "s"]).unwrap();
    assert_eq!(t["a"].decode::<u8>().unwrap(), 1);
    assert!(matches!(xmem.get_table(&["a", "nope"]), Err(ShmError::NotFound(k)) if k == "nope"));
    let keys: Vec<String> = xmem.items().unwrap().into_iter().map(|(k, _)| k).collect();
    for k in ["a", "p", "s", STATUS_KEY, GUARD_KEY, XMEM_KEY] {
        assert!(keys.iter().any(|x| x == k), "{k} missing from items");
    }
    // update and delete go through the lock: ADMIN is the default writer.
    xmem.update([("a", 2u8), ("b", 3u8)], Operator::ADMIN)
        .unwrap();
    assert_eq!(xmem.get::<u8>("b").unwrap(), 3);
    let claimed = xmem.keys_claimed();
    assert_eq!(xmem.delete(&["a", "missing"], Operator::ADMIN).unwrap(), 1);
    assert!(matches!(xmem.get::<u8>("a"), Err(ShmError::NotFound(_))));
    // A deleted key can be set again (in its slot, or the slot before it).
    xmem.set("a", &9u8).unwrap();
    assert_eq!(xmem.get::<u8>("a").unwrap(), 9);
    assert_eq!(xmem.keys_claimed(), claimed);
    // Delete with no key: every non-reserved key.
    xmem.delete(&[], Operator::ADMIN).unwrap();
    assert_eq!(xmem.len().unwrap(), 3);
    assert!(xmem.guard_status().unwrap());
}

#[test]
fn writes_follow_the_lock_rules() {
    let xmem = XmemBuilder::new().build().unwrap();
    let stranger = Operator::alloc();
    let e = xmem.update([("k", 1u8)], stranger).unwrap_err();
    assert!(
        matches!(e, ShmError::Lock(SecurityError::NotWriter { .. })),
        "{e}"
    );
    assert!(
        matches!(xmem.get::<u8>("k"), Err(ShmError::NotFound(_))),
        "a refused update wrote"
    );
    xmem.security().register(stranger);
    xmem.update([("k", 1u8)], stranger).unwrap();
    // Another lock type for the whole Manager.
    let xmem = XmemBuilder::new()
        .lock_type(LockType::Mutex)
        .build()
        .unwrap();
    xmem.update([("k", 1u8)], stranger).unwrap();
}

#[test]
fn reserved_keys_cannot_be_deleted_or_given_another_type() {
    let xmem = XmemBuilder::new()
        .value("x", &1u8)
        .unwrap()
        .build()
        .unwrap();
    for k in [STATUS_KEY, GUARD_KEY, XMEM_KEY] {
        let e = xmem.delete(&[k, "x"], Operator::ADMIN).unwrap_err();
        assert!(matches!(e, ShmError::Reserved { .. }), "{e}");
    }
    assert_eq!(
        xmem.get::<u8>("x").unwrap(),
        1,
        "a refused delete deleted other keys"
    );
    assert!(matches!(
        xmem.set(GUARD_KEY, &"not a table"),
        Err(ShmError::Reserved { .. })
    ));
    xmem.set_guard_status(false).unwrap();
    assert!(!xmem.guard_status().unwrap());
    let builtins: Vec<String> = xmem.get(XMEM_KEY).unwrap();
    assert!(builtins.contains(&"Table::update".to_string()));
}

#[test]
fn statuses_from_many_processes() {
    let xmem = XmemBuilder::new().build().unwrap();
    let children: Vec<_> = (0..6)
        .map(|i| {
            let xmem = &xmem;
            fork_child(move || {
                let op = Operator::alloc();
                xmem.status(op, &format!("worker {i} running")).unwrap();
                xmem.status(op, &format!("worker {i} done")).unwrap();
                0
            })
            .unwrap()
        })
        .collect();
    let pids: Vec<u32> = children.iter().map(|c| c.pid() as u32).collect();
    for c in children {
        assert!(c.wait().unwrap().is_success());
    }
    let statuses = xmem.statuses().unwrap();
    assert_eq!(statuses.len(), 6);
    assert!(
        statuses
            .values()
            .all(|s| s.status.ends_with("done") && pids.contains(&s.pid))
    );
}

#[test]
fn arena_full_capacity_full_too_big_wrong_type_key_too_long() {
    // Four 64 KiB pages, two of them taken by the reserved keys' size classes:
    // the arena fills fast.
    let xmem = XmemBuilder::new()
        .arena_bytes(4 * 64 * 1024)
        .capacity(10_000)
        .build()
        .unwrap();
    let big = vec![7u8; 4000];
    let mut stored = 0;
    let err = loop {
        match xmem.set(&format!("k{stored}"), &big) {
            Ok(()) => stored += 1,
            Err(e) => break e,
        }
        assert!(stored < 1000, "the arena never filled");
    };
    assert!(matches!(err, ShmError::ArenaFull { .. }), "{err}");
    for i in 0..stored {
        assert_eq!(
            xmem.get::<Vec<u8>>(&format!("k{i}")).unwrap(),
            big,
            "key k{i} lost"
        );
    }
    assert!(stored > 10);
    // An overwrite is copy-on-write: it needs one free block of its class
    // until the old one is released. Deleting a key frees one.
    assert!(matches!(
        xmem.set("k0", &vec![8u8; 4000]),
        Err(ShmError::ArenaFull { .. })
    ));
    assert_eq!(
        xmem.get::<Vec<u8>>("k0").unwrap(),
        big,
        "a failed overwrite lost the old value"
    );
    xmem.delete(&["k1"], Operator::ADMIN).unwrap();
    xmem.set("k0", &vec![8u8; 4000]).unwrap();
    assert_eq!(xmem.get::<Vec<u8>>("k0").unwrap(), vec![8u8; 4000]);

    // Capacity 4: at least 4 keys, plus the room kept for status entries
    // (status_keep 16: 16 + 16 + 4 + 16), which other keys may use.
    let xmem = XmemBuilder::new()
        .capacity(4)
        .status_keep(16)
        .build()
        .unwrap();
    let capacity = xmem.capacity();
    assert_eq!(capacity, 4 + 3 + 52);
    let mut stored = 0;
    let err = loop {
        match xmem.set(&format!("k{stored}"), &(stored as i32)) {
            Ok(()) => stored += 1,
            Err(e) => break e,
        }
    };
    assert!(
        matches!(err, ShmError::CapacityFull { capacity: c } if c == capacity),
        "{err}"
    );
    assert_eq!(stored, capacity - 2, "__GUARD__ and __XMEM__ take two");
    for i in 0..stored {
        assert_eq!(xmem.get::<i32>(&format!("k{i}")).unwrap(), i as i32);
    }
    // Values of any size up to the arena (16 MiB by default).
    xmem.set("k0", &vec![1u8; 70_000]).unwrap();
    let err = xmem.set("k0", &vec![0u8; 20 << 20]).unwrap_err();
    assert!(matches!(err, ShmError::ValueTooLarge { .. }), "{err}");
    assert_eq!(xmem.get::<Vec<u8>>("k0").unwrap(), vec![1u8; 70_000]);
    // postcard is not self-describing: only bytes that are not a valid String
    // are caught (a 0i32 would read as ""); 300i32 is [0xd8, 0x04], a length
    // of 88 with no bytes after it.
    xmem.set("k0", &300i32).unwrap();
    let err = xmem.get::<String>("k0").unwrap_err();
    assert!(matches!(err, ShmError::WrongType { .. }), "{err}");
    let err = xmem.set(&"x".repeat(2000), &0).unwrap_err();
    assert!(matches!(err, ShmError::KeyTooLong { .. }), "{err}");
}

#[test]
fn a_long_run_of_overwrites_reuses_blocks() {
    // 16 pages; the values use 5 size classes.
    let xmem = XmemBuilder::new().arena_bytes(1 << 20).build().unwrap();
    for i in 0..100_000u32 {
        let size = 100 + (i % 7) as usize * 900;
        xmem.set(&format!("k{}", i % 5), &vec![i as u8; size])
            .unwrap();
    }
    let stats = xmem.check().unwrap();
    // __GUARD__ and __XMEM__ (__STATUS__ is gathered from entries, none here).
    assert_eq!(stats.live_blocks, 2 + 5);
    assert!(stats.pages_used <= 8, "{stats:?}");
}

#[test]
fn named_manager_attached_by_an_unrelated_process() {
    let n = name("named");
    let xmem = XmemBuilder::new()
        .named(&n)
        .value("from", &"creator")
        .unwrap()
        .build()
        .unwrap();
    let out =
        xme_test_support::run_test_helper("helper_attach_and_write", &[("XME_TEST_REGION", &n)]);
    assert!(out.status.success(), "{}", xme_test_support::text(&out));
    assert_eq!(xmem.get::<String>("reply").unwrap(), "from another program");
    assert_eq!(xmem.get::<u64>("n").unwrap(), 1000);
    drop(xmem);
    assert!(!std::path::Path::new("/dev/shm").join(&n).exists());
}

/// Run by `named_manager_attached_by_an_unrelated_process` as another program.
#[test]
#[ignore = "helper: run by another test in its own process"]
fn helper_attach_and_write() {
    let n = std::env::var("XME_TEST_REGION").unwrap();
    let xmem = Manager::attach(&n).unwrap();
    assert_eq!(xmem.get::<String>("from").unwrap(), "creator");
    xmem.set("reply", "from another program").unwrap();
    for _ in 0..1000 {
        xmem.update_with("n", |v: Option<u64>| v.unwrap_or(0) + 1)
            .unwrap();
    }
}

#[test]
fn header_mismatch_and_stale_named_managers() {
    // A named region that is not a Manager.
    let n = name("not-a-manager");
    let _other = SharedRegion::create_named(&n, 4096, 12345).unwrap();
    let e = Manager::attach(&n).unwrap_err();
    assert!(
        matches!(e, ShmError::Region(xme_core::Error::HeaderMismatch { .. })),
        "{e}"
    );

    // A Manager whose creator was killed.
    let n = name("stale");
    let flag_region = SharedRegion::anonymous(8).unwrap();
    let flag: &AtomicU64 = flag_region.place(0).unwrap();
    let creator = {
        let n = n.clone();
        fork_child(move || {
            let _x = XmemBuilder::new().named(&n).build().unwrap();
            flag.store(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_secs(60));
            0
        })
        .unwrap()
    };
    let t = Instant::now();
    while flag.load(Ordering::SeqCst) == 0 {
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(1));
    }
    creator.kill().unwrap();
    let e = Manager::attach(&n).unwrap_err();
    assert!(
        matches!(e, ShmError::Region(xme_core::Error::StaleRegion { .. })),
        "{e}"
    );
    // Building it again reclaims the name.
    let fresh = XmemBuilder::new().named(&n).build().unwrap();
    drop(fresh);
    assert!(!std::path::Path::new("/dev/shm").join(&n).exists());
}

#[test]
fn bad_settings_are_refused() {
    assert!(matches!(
        XmemBuilder::new().capacity(0).build(),
        Err(ShmError::Config(_))
    ));
    assert!(matches!(
        XmemBuilder::new().op_size(0).build(),
        Err(ShmError::Config(_))
    ));
    let x = XmemBuilder::new().op_size(8).build().unwrap();
    let op = x.alloc_operator();
    assert_eq!(x.operator_name(op).len(), "<Operator::>".len() + 8);
}

#[test]
fn reserved_tables_are_written_only_by_their_owners() {
    use xme_shm::{Call, StatusTable};
    let xmem = XmemBuilder::new().build().unwrap();
    let op = xmem.alloc_operator();
    xmem.status(op, "working").unwrap();
    let empty = StatusTable::new();
    let names: Vec<String> = Vec::new();
    let refused = |r: Result<(), ShmError>| {
        let e = r.unwrap_err();
        assert!(matches!(e, ShmError::Reserved { .. }), "{e}");
    };
    // Every write path, with a value of the right type.
    refused(xmem.set(STATUS_KEY, &empty));
    refused(xmem.set(XMEM_KEY, &names));
    refused(xmem.update([(STATUS_KEY, &empty)], Operator::ADMIN));
    refused(
        xmem.update_with(STATUS_KEY, |_: Option<StatusTable>| StatusTable::new())
            .map(drop),
    );
    refused(xmem.modify(STATUS_KEY, |t: &mut StatusTable| t.clear()));
    refused(
        xmem.update_with(XMEM_KEY, |_: Option<Vec<String>>| Vec::new())
            .map(drop),
    );
    refused(
        XmemBuilder::new()
            .value(STATUS_KEY, &empty)
            .unwrap()
            .build()
            .map(drop),
    );
    // Through the call buffer, run by exec as a Guard would.
    for call in [
        Call::table_set(STATUS_KEY, &empty).unwrap(),
        Call::table_update([(XMEM_KEY, &names)]).unwrap(),
    ] {
        xmem.append(&call, op).unwrap();
        xmem.exec().unwrap();
        let e = xmem
            .get_result::<()>(op, Duration::from_secs(5))
            .unwrap_err();
        assert!(e.to_string().contains("reserved"), "{e}");
    }
    // Nothing was wiped: the status and the built-ins are still there.
    assert_eq!(xmem.statuses().unwrap()[&op].status, "working");
    let builtins: Vec<String> = xmem.get(XMEM_KEY).unwrap();
    assert!(builtins.contains(&"Table::update".to_string()));
    // The owners' own paths still write them.
    xmem.register("f", |_m: &Manager, x: u8| x).unwrap();
    assert!(
        xmem.get::<Vec<String>>(XMEM_KEY)
            .unwrap()
            .contains(&"f".to_string())
    );
    xmem.status(op, "done").unwrap();
    assert_eq!(xmem.statuses().unwrap()[&op].status, "done");
    // __GUARD__ is the seed's way to stop a Guard: a GuardTable is accepted.
    xmem.set(
        GUARD_KEY,
        &xme_shm::GuardTable::from([("Status".to_string(), false)]),
    )
    .unwrap();
    assert!(!xmem.guard_status().unwrap());
}
