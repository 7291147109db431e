//! The Monitor across real processes: locks, named attachment, whole reads,
//! a full map, the Manager's message methods.

use std::sync::Mutex;

use serde_json::{Value, json};
use xme_core::process::fork_child;
use xme_core::{Operator, SharedRegion};
use xme_monitor::{JsonViews, ManagerMessages, Monitor, MonitorError, Sealed, XmeWire};
use xme_security::{LockType, SecurityError};
use xme_shm::XmemBuilder;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Four children each add 1 to a counter 200 times (read-modify-write under
/// the lock) and write their own key.
fn four_children_count(monitor: &Monitor, ops: &[Operator; 4]) {
    monitor.update(json!({"count": 0}), ops[0]).unwrap();
    let children: Vec<_> = ops
        .iter()
        .enumerate()
        .map(|(i, &op)| {
            fork_child(move || {
                for n in 0..200 {
                    monitor
                        .modify(op, |m| {
                            let c = m["count"].as_u64().unwrap();
                            m.insert("count".into(), json!(c + 1));
                            m.insert(format!("child {i}"), json!(n));
                            Ok(())
                        })
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
}

#[test]
fn concurrent_updates_from_children_under_each_lock_type() {
    let _s = serial();
    for lock_type in [
        LockType::Mutex,
        LockType::Spin,
        LockType::Authorisation,
        LockType::ReadWrite,
        LockType::Disable,
    ] {
        let monitor = Monitor::builder().lock_type(lock_type).build().unwrap();
        let ops = [(); 4].map(|_| Operator::alloc());
        match lock_type {
            LockType::Authorisation => {
                for op in ops {
                    monitor.security().authorize(&[op]).unwrap();
                }
                monitor.security().authorize(&[Operator::ADMIN]).unwrap();
            }
            LockType::ReadWrite => {
                // One writer: the children share it.
                let w = ops[0];
                monitor.security().register(w);
                four_children_count(&monitor, &[w; 4]);
                assert_eq!(monitor.get(&["count"]).unwrap(), 800);
                continue;
            }
            _ => {}
        }
        four_children_count(&monitor, &ops);
        // The Monitor's own writer lock makes even DISABLE lose nothing.
        assert_eq!(monitor.get(&["count"]).unwrap(), 800, "{lock_type}");
        for i in 0..4 {
            assert_eq!(monitor.get(&[&format!("child {i}")]).unwrap(), 199);
        }
    }
}

#[test]
fn refused_updates_change_nothing() {
    let _s = serial();
    let monitor = Monitor::builder()
        .lock_type(LockType::Authorisation)
        .build()
        .unwrap();
    let allowed = Operator::alloc();
    monitor.security().authorize(&[allowed]).unwrap();
    monitor.update(json!({"a": 1}), allowed).unwrap();
    let stranger = Operator::alloc();
    let e = monitor.update(json!({"a": 2}), stranger).unwrap_err();
    assert!(
        matches!(e, MonitorError::Lock(SecurityError::Unauthorised { .. })),
        "{e}"
    );
    assert!(matches!(
        monitor.delete(&[], stranger),
        Err(MonitorError::Lock(_))
    ));
    assert_eq!(monitor.get(&[]).unwrap(), json!({"a": 1}));
    // Not an object.
    assert!(matches!(
        monitor.update(json!([1]), allowed),
        Err(MonitorError::NotAnObject { .. })
    ));
    assert!(matches!(
        monitor.get(&["zz"]),
        Err(MonitorError::NotFound(_))
    ));
    assert!(matches!(monitor.marshal(), Err(MonitorError::NoKey)));
}

#[test]
fn an_update_too_large_is_refused_whole() {
    let monitor = Monitor::builder().capacity(64).build().unwrap();
    monitor
        .update(json!({"keep": "me"}), Operator::ADMIN)
        .unwrap();
    let e = monitor
        .update(json!({"big": "x".repeat(100), "other": 1}), Operator::ADMIN)
        .unwrap_err();
    assert!(
        matches!(e, MonitorError::MonitorFull { capacity: 64, .. }),
        "{e}"
    );
    assert_eq!(monitor.get(&[]).unwrap(), json!({"keep": "me"}));
    // Exactly the capacity fits.
    let fill = "y".repeat(64 - r#"{"keep":"me","f":""}"#.len());
    monitor.update(json!({"f": fill}), Operator::ADMIN).unwrap();
}

#[test]
fn readers_never_see_half_an_update() {
    let _s = serial();
    let monitor = Monitor::new().unwrap();
    monitor
        .update(json!({"a": 0, "b": 0, "pad": ""}), Operator::ADMIN)
        .unwrap();
    let writer = fork_child(|| {
        for n in 0..3000u64 {
            let pad = "z".repeat((n % 500) as usize);
            monitor
                .update(json!({"a": n, "pad": pad, "b": n}), Operator::ADMIN)
                .unwrap();
        }
        0
    })
    .unwrap();
    let mut reads = 0;
    loop {
        let v = monitor.get(&[]).unwrap();
        assert_eq!(v["a"], v["b"], "a torn read");
        reads += 1;
        if v["a"] == 2999 {
            break;
        }
    }
    assert!(writer.wait().unwrap().is_success());
    assert!(reads > 1);
}

#[test]
fn named_monitor_attached_by_another_process_and_removed() {
    let _s = serial();
    let name = format!("xme-monitor-test-{}", std::process::id());
    let monitor = Monitor::builder()
        .named(&name)
        .key([1; 32])
        .build()
        .unwrap();
    monitor
        .update(json!({"from": "creator"}), Operator::ADMIN)
        .unwrap();
    let child = fork_child(|| {
        let attached = Monitor::attach(&name, Some([1; 32])).unwrap();
        let ok = attached.get(&["from"]).unwrap() == "creator";
        attached
            .update(json!({"reply": "from the attached side"}), Operator::ADMIN)
            .unwrap();
        // Its sealed frames open with the creator's key.
        let frame = attached.marshal().unwrap();
        attached.unmarshal(&frame, Operator::ADMIN).unwrap();
        i32::from(!ok)
    })
    .unwrap();
    assert!(child.wait().unwrap().is_success());
    assert_eq!(monitor.get(&["reply"]).unwrap(), "from the attached side");
    drop(monitor);
    assert!(!std::path::Path::new("/dev/shm").join(&name).exists());
    assert!(SharedRegion::open_named(&name, 0).is_err());
}

#[test]
fn marshal_round_trips_with_each_codec_and_bad_frames_change_nothing() {
    let a = Monitor::builder().key([2; 32]).build().unwrap();
    a.update(
        json!({"n": 1.5, "s": "ü", "l": [null, true]}),
        Operator::ADMIN,
    )
    .unwrap();
    let b = Monitor::builder().key([2; 32]).build().unwrap();
    b.update(json!({"old": 1}), Operator::ADMIN).unwrap();
    b.unmarshal(&a.marshal().unwrap(), Operator::ADMIN).unwrap();
    b.unmarshal_with(
        &XmeWire::default(),
        &a.marshal_with(&XmeWire::default()).unwrap(),
        Operator::ADMIN,
    )
    .unwrap();
    let mut expected = a.get(&[]).unwrap();
    expected["old"] = json!(1);
    assert_eq!(b.get(&["old", "n", "s", "l"]).unwrap(), {
        let mut m = serde_json::Map::new();
        for k in ["old", "n", "s", "l"] {
            m.insert(k.into(), expected[k].clone());
        }
        Value::Object(m)
    });
    let mut frame = a.marshal().unwrap();
    frame[50] ^= 1;
    let before = b.get(&[]).unwrap();
    assert!(matches!(
        b.unmarshal(&frame, Operator::ADMIN),
        Err(MonitorError::Tampered)
    ));
    assert!(matches!(
        b.unmarshal_with(
            &Sealed::new([3; 32]),
            &a.marshal().unwrap(),
            Operator::ADMIN
        ),
        Err(MonitorError::WrongKey)
    ));
    assert_eq!(b.get(&[]).unwrap(), before);
    assert_eq!(b.items().unwrap().len(), 4);
    assert_eq!(b.delete(&["old", "nope"], Operator::ADMIN).unwrap(), 1);
    assert_eq!(b.delete(&[], Operator::ADMIN).unwrap(), 3);
    assert_eq!(b.get(&[]).unwrap(), json!({}));
}

#[test]
fn manager_message_methods() {
    let _s = serial();
    let xmem = XmemBuilder::new()
        .value("hits", &7u64)
        .unwrap()
        .value("name", &"xme")
        .unwrap()
        .build()
        .unwrap();
    assert_eq!(xmem.get_msg(&[]).unwrap(), json!({}));
    let children: Vec<_> = (0..4)
        .map(|i| {
            let xmem = &xmem;
            fork_child(move || {
                xmem.update_msg(json!({ format!("c{i}"): i }), Operator::ADMIN)
                    .unwrap();
                0
            })
            .unwrap()
        })
        .collect();
    for c in children {
        assert!(c.wait().unwrap().is_success());
    }
    assert_eq!(xmem.get_msg(&["c3"]).unwrap(), 3);
    assert_eq!(xmem.delete_msg(&["c0"], Operator::ADMIN).unwrap(), 1);
    let stranger = Operator::alloc();
    assert!(xmem.update_msg(json!({"x": 1}), stranger).is_err());
    let report = xmem
        .copy_msg(&JsonViews::new().with::<u64>("hits"), Operator::ADMIN)
        .unwrap();
    assert_eq!(
        report.unshown,
        vec![(
            "name".to_string(),
            "no JSON view registered for this key".to_string()
        )]
    );
    assert_eq!(report.shown, 4); // three reserved tables and "hits"
    let all = xmem.get_msg(&[]).unwrap();
    assert_eq!(all["hits"], 7);
    assert_eq!(all["__GUARD__"], json!({"Status": true}));
    assert!(
        all["__XMEM__"]
            .as_array()
            .unwrap()
            .contains(&json!("Table::update"))
    );
    assert_eq!(all["name"]["$bytes"], 4);
    assert!(all.get("c1").is_none(), "copy_msg replaces the map");
    // A view of the wrong type is reported too.
    let report = xmem
        .copy_msg(&JsonViews::new().with::<[u64; 5]>("name"), Operator::ADMIN)
        .unwrap();
    assert!(
        report
            .unshown
            .iter()
            .any(|(k, why)| k == "name" && why.contains("not a"))
    );
}

#[test]
fn a_named_monitor_is_shared_with_an_unrelated_program() {
    let _s = serial();
    let name = format!("xme-monitor-exec-{}", std::process::id());
    let monitor = Monitor::builder()
        .named(&name)
        .lock_type(LockType::Mutex)
        .key([9; 32])
        .build()
        .unwrap();
    monitor
        .update(json!({"question": 6}), Operator::ADMIN)
        .unwrap();
    let out = xme_test_support::run_test_helper(
        "helper_unrelated_monitor_program",
        &[("XME_TEST_MONITOR", &name)],
    );
    assert!(out.status.success(), "{}", xme_test_support::text(&out));
    assert_eq!(monitor.get(&["answer"]).unwrap(), 42);
    // Its sealed frame, made in the other program, opens here.
    let frame = monitor.get(&["frame"]).unwrap();
    let bytes: Vec<u8> = serde_json::from_value(frame).unwrap();
    let copy = Monitor::builder().key([9; 32]).build().unwrap();
    copy.unmarshal(&bytes, Operator::ADMIN).unwrap();
    assert_eq!(copy.get(&["question"]).unwrap(), 6);
    drop(monitor);
    assert!(!std::path::Path::new("/dev/shm").join(&name).exists());
}

/// Run by `a_named_monitor_is_shared_with_an_unrelated_program` as another program.
#[test]
#[ignore = "helper: run by another test in its own process"]
fn helper_unrelated_monitor_program() {
    let name = std::env::var("XME_TEST_MONITOR").unwrap();
    let monitor = Monitor::attach(&name, Some([9; 32])).unwrap();
    assert_eq!(monitor.security().lock_type(), LockType::Mutex);
    let q = monitor.get(&["question"]).unwrap().as_u64().unwrap();
    let frame = monitor.marshal().unwrap();
    monitor
        .update(json!({"answer": q * 7, "frame": frame}), Operator::alloc())
        .unwrap();
}
