#![cfg(feature = "named")]
//! Named regions: attach by name, header checks, stale regions, cleanup.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use xme_core::process::fork_child;
use xme_core::{Error, SharedRegion};

fn name(tag: &str) -> String {
    format!("xme-test-{}-{tag}", std::process::id())
}

fn shm_exists(name: &str) -> bool {
    std::path::Path::new("/dev/shm").join(name).exists()
}

#[test]
fn create_attach_and_remove_on_drop() {
    let n = name("basic");
    let region = SharedRegion::create_named(&n, 4096, 7).unwrap();
    let cell: &AtomicU64 = region.place(0).unwrap();
    cell.store(42, Ordering::SeqCst);
    let meta = std::fs::metadata(format!("/dev/shm/{n}")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        meta.permissions().mode() & 0o077,
        0,
        "group/other may access the region"
    );
    {
        let other = SharedRegion::open_named(&n, 7).unwrap();
        assert_eq!(
            other.place::<AtomicU64>(0).unwrap().load(Ordering::SeqCst),
            42
        );
        assert_eq!(
            other.header().token.load(Ordering::SeqCst),
            region.header().token.load(Ordering::SeqCst)
        );
    }
    assert!(
        shm_exists(&n),
        "dropping an attached copy removed the region"
    );
    // Creating it again while its creator lives is refused.
    assert!(matches!(
        SharedRegion::create_named(&n, 64, 7),
        Err(Error::RegionExists { .. })
    ));
    drop(region);
    assert!(
        !shm_exists(&n),
        "the creator's drop did not remove the region"
    );
}

#[test]
fn wrong_version_and_bad_names_are_errors() {
    let n = name("version");
    let _region = SharedRegion::create_named(&n, 64, 1).unwrap();
    let err = SharedRegion::open_named(&n, 2).unwrap_err();
    assert!(matches!(err, Error::HeaderMismatch { .. }), "{err}");
    for bad in ["", "a/b", ".hidden", &"x".repeat(300)] {
        assert!(matches!(
            SharedRegion::create_named(bad, 64, 1),
            Err(Error::RegionOpen { .. })
        ));
    }
    assert!(matches!(
        SharedRegion::open_named(&name("missing"), 1),
        Err(Error::RegionOpen { .. })
    ));
}

#[test]
fn a_region_left_by_a_killed_creator_is_reported_then_reclaimed() {
    let n = name("stale");
    let ready = SharedRegion::anonymous(8).unwrap();
    let flag: &AtomicU64 = ready.place(0).unwrap();
    let creator = {
        let n = n.clone();
        fork_child(move || {
            let region = SharedRegion::create_named(&n, 4096, 3).unwrap();
            region
                .place::<AtomicU64>(0)
                .unwrap()
                .store(9, Ordering::SeqCst);
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
    let pid = creator.pid() as u32;
    creator.kill().unwrap();
    assert!(shm_exists(&n), "a killed creator cannot clean up");
    let err = SharedRegion::open_named(&n, 3).unwrap_err();
    assert!(
        matches!(err, Error::StaleRegion { creator_pid, .. } if creator_pid == pid),
        "{err}"
    );
    // Creating the name again reclaims it: a fresh, zeroed region.
    let fresh = SharedRegion::create_named(&n, 4096, 3).unwrap();
    assert_eq!(
        fresh.place::<AtomicU64>(0).unwrap().load(Ordering::SeqCst),
        0
    );
    drop(fresh);
    assert!(!shm_exists(&n));
}

#[test]
fn a_forked_child_dropping_its_copy_does_not_remove_the_region() {
    let n = name("child-drop");
    let region = SharedRegion::create_named(&n, 64, 1).unwrap();
    let mut region = Some(region);
    let child = fork_child(|| {
        drop(region.take());
        0
    })
    .unwrap();
    assert!(child.wait().unwrap().is_success());
    assert!(shm_exists(&n));
    drop(region);
    assert!(!shm_exists(&n));
}
