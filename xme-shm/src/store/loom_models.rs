//! Loom models of the value table and its arena:
//! `RUSTFLAGS="--cfg loom" cargo test -p xme-shm --release --lib`.
//!
//! Threads stand for processes (their pids are 1 and 2; pids from
//! `LOOM_DEAD_PIDS` up stand for processes that died). A process killed in
//! the middle of a protocol is modelled by the state it leaves, written
//! before the threads start.

use loom::sync::Arc;
use loom::thread;
use xme_core::sync::LOOM_DEAD_PIDS;

use crate::primitive::{AtomicU64, Ordering};
use crate::store::block;
use crate::store::layout::{self, Layout, MOVING, TOMB, TableHeader};
use crate::store::table::ValueTable;

/// Runs `f` under loom and checks that loom explored more than one
/// execution (a model loom cannot interleave checks nothing).
fn model(f: impl Fn() + Sync + Send + 'static) {
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = runs.clone();
    xme_core::sync::loom_model(3, move || {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f();
    });
    let runs = runs.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("{runs} executions explored");
    assert!(
        runs > 1,
        "loom explored a single execution: the model checks nothing"
    );
}

/// A table for `capacity` keys (2 slots per key) over 4 tiny pages.
fn table(capacity: usize) -> Arc<Vec<AtomicU64>> {
    let layout = Layout::new(capacity, 4 * layout::PAGE_BYTES).unwrap();
    let mem: Vec<AtomicU64> = (0..layout.total_words).map(|_| AtomicU64::new(0)).collect();
    let mem = Arc::new(mem);
    ValueTable::init(&mem, layout).unwrap();
    mem
}

fn value(id: u8) -> Vec<u8> {
    vec![id; 24]
}

fn whole(v: &[u8]) -> Option<u8> {
    (v.len() == 24 && v.iter().all(|&b| b == v[0])).then_some(v[0])
}

fn get(t: &ValueTable<'_>, key: &str, pid: u32) -> Option<u8> {
    let mut out = Vec::new();
    t.get_into(key, &mut out, pid)
        .unwrap()
        .then(|| whole(&out).expect("torn read"))
}

/// Two keys whose probe chains start at the same slot of a 4-slot table.
fn colliding_keys() -> (String, String) {
    let layout = Layout::new(2, 4 * layout::PAGE_BYTES).unwrap();
    let keys: Vec<String> = (0..64).map(|i| format!("k{i}")).collect();
    let start = |k: &String| layout.home(block::key_hash(k.as_bytes()));
    for a in &keys {
        if let Some(b) = keys.iter().find(|b| *b != a && start(b) == start(a)) {
            return (a.clone(), b.clone());
        }
    }
    unreachable!("64 keys over 4 slots collide")
}

/// A table of 4 slots holding two keys whose chains start at the same slot,
/// `first` (value 1) in it and `second` (value 2) after it.
fn two_colliding() -> (Arc<Vec<AtomicU64>>, String, String) {
    let mem = table(2);
    let t = ValueTable::attach(&mem).unwrap();
    let (first, second) = colliding_keys();
    t.set(&first, &value(1), 1).unwrap();
    t.set(&second, &value(2), 1).unwrap();
    (mem, first, second)
}

/// Runs `during` here while another thread deletes `first` (which moves
/// the key after it back into its slot).
fn while_deleting(mem: &Arc<Vec<AtomicU64>>, first: String, during: impl FnOnce()) {
    let m2 = mem.clone();
    let deleter = thread::spawn(move || {
        assert!(ValueTable::attach(&m2).unwrap().delete(&first, 2).unwrap());
    });
    during();
    deleter.join().unwrap();
}

/// Once the threads are done: the table reads whole, holds `keys` keys,
/// and after a sweep its arena holds exactly their blocks.
fn settled(t: &ValueTable<'_>, keys: usize) {
    t.sweep(1);
    let stats = t.check(1).unwrap();
    assert_eq!(t.live_keys(), keys);
    assert_eq!(t.keys_claimed(), keys);
    assert_eq!(stats.live_blocks, keys, "{stats:?}");
    assert_eq!(stats.pages_used, stats.pages_live, "{stats:?}");
    assert_eq!(stats.pages_miscounted, 0, "{stats:?}");
}

#[test]
fn a_reader_sees_a_whole_old_or_new_value_while_blocks_are_reused() {
    model(|| {
        let mem = table(1);
        ValueTable::attach(&mem)
            .unwrap()
            .set("k", &value(1), 1)
            .unwrap();
        let m2 = mem.clone();
        let writer = thread::spawn(move || {
            let t = ValueTable::attach(&m2).unwrap();
            t.set("k", &value(2), 2).unwrap(); // frees value 1's block
            t.set("k", &value(3), 2).unwrap(); // may reuse it
        });
        let t = ValueTable::attach(&mem).unwrap();
        let id = get(&t, "k", 1).expect("the key is always there");
        assert!((1..=3).contains(&id));
        writer.join().unwrap();
        assert_eq!(get(&t, "k", 1), Some(3));
        settled(&t, 1);
    });
}

#[test]
fn concurrent_updates_lose_nothing() {
    model(|| {
        let mem = table(1);
        let t = ValueTable::attach(&mem).unwrap();
        t.set("n", &[0], 1).unwrap();
        let bump = |t: &ValueTable<'_>, pid| {
            t.update("n", pid, |old| Ok::<_, ()>(Some(vec![old.unwrap()[0] + 1])))
                .unwrap()
                .unwrap();
        };
        let m2 = mem.clone();
        let other = thread::spawn(move || bump(&ValueTable::attach(&m2).unwrap(), 2));
        bump(&t, 1);
        other.join().unwrap();
        let mut out = Vec::new();
        assert!(t.get_into("n", &mut out, 1).unwrap());
        assert_eq!(out, [2]);
    });
}

#[test]
fn delete_and_set_race_to_a_whole_state() {
    model(|| {
        let mem = table(1);
        let t = ValueTable::attach(&mem).unwrap();
        t.set("k", &value(1), 1).unwrap();
        let m2 = mem.clone();
        let other = thread::spawn(move || {
            ValueTable::attach(&m2).unwrap().delete("k", 2).unwrap();
        });
        t.set("k", &value(2), 1).unwrap();
        other.join().unwrap();
        let present = get(&t, "k", 1);
        assert!(matches!(present, None | Some(2)));
        settled(&t, usize::from(present.is_some()));
    });
}

#[test]
fn a_delete_moves_the_next_key_back_and_a_reader_still_finds_it() {
    model(|| {
        let (mem, first, second) = two_colliding();
        let t = ValueTable::attach(&mem).unwrap();
        while_deleting(&mem, first, || {
            assert_eq!(get(&t, &second, 1), Some(2), "a delete hid a key");
        });
        settled(&t, 1);
    });
}

#[test]
fn a_write_racing_a_move_is_neither_lost_nor_doubled() {
    model(|| {
        let (mem, first, second) = two_colliding();
        let t = ValueTable::attach(&mem).unwrap();
        while_deleting(&mem, first, || {
            t.set(&second, &value(3), 1).map(drop).unwrap()
        });
        assert_eq!(get(&t, &second, 1), Some(3));
        settled(&t, 1);
    });
}

#[test]
fn a_block_taken_while_its_page_closes_is_counted_or_given_back() {
    model(|| {
        let mem = table(2);
        let t = ValueTable::attach(&mem).unwrap();
        // An empty page of the class, still its class's current page.
        t.set("k", &value(1), 1).unwrap();
        assert!(t.delete("k", 1).unwrap());
        let m2 = mem.clone();
        // A sweep closes every class page, the empty one to FREE.
        let sweeper = thread::spawn(move || {
            ValueTable::attach(&m2).unwrap().sweep(2);
        });
        t.set("j", &value(2), 1).unwrap();
        sweeper.join().unwrap();
        assert_eq!(get(&t, "j", 1), Some(2));
        settled(&t, 1);
    });
}

#[test]
fn a_move_left_half_done_by_a_killed_delete_is_finished_by_the_next_writer() {
    model(|| {
        let (mem, first, second) = two_colliding();
        let t = ValueTable::attach(&mem).unwrap();
        // What a delete of `first` killed in the middle of moving `second`
        // back leaves: the entry marked in both slots, the move recorded,
        // `moves` odd, the key lock naming the dead process.
        let mask = 3;
        let layout = Layout::new(2, 4 * layout::PAGE_BYTES).unwrap();
        let home = layout.home(block::key_hash(first.as_bytes()));
        let (i, j) = (home, (home + 1) & mask);
        let slot = |n: usize| &mem[layout.slots + n];
        let moved = slot(j).load(Ordering::Relaxed);
        assert!(moved != 0 && moved != TOMB);
        let h = TableHeader::of(&mem);
        h.key_lock.store(LOOM_DEAD_PIDS + 1, Ordering::Relaxed);
        h.live.fetch_sub(1, Ordering::Relaxed);
        h.move_from.store(j as u64, Ordering::Relaxed);
        h.move_to.store(i as u64, Ordering::Relaxed);
        h.moves.fetch_add(1, Ordering::Relaxed);
        slot(j).store(moved | MOVING, Ordering::Relaxed);
        slot(i).store(moved | MOVING, Ordering::Relaxed);
        let (m2, moving) = (mem.clone(), second.clone());
        let reader = thread::spawn(move || {
            let t = ValueTable::attach(&m2).unwrap();
            assert_eq!(get(&t, &moving, 2), Some(2), "the moving key is readable");
            assert_eq!(get(&t, &first, 2), None);
        });
        t.set(&second, &value(3), 1).unwrap();
        reader.join().unwrap();
        assert_eq!(get(&t, &second, 1), Some(3));
        // The deleted key's block was never freed by its killed deleter:
        // the sweep frees it.
        settled(&t, 1);
    });
}

#[test]
fn a_sweep_while_a_delete_moves_an_entry_frees_nothing_live() {
    model(|| {
        let (mem, first, second) = two_colliding();
        let t = ValueTable::attach(&mem).unwrap();
        while_deleting(&mem, first, || drop(t.sweep(1)));
        assert_eq!(get(&t, &second, 1), Some(2), "the sweep freed a live entry");
        settled(&t, 1);
    });
}

#[test]
fn a_reader_never_misses_a_key_that_two_deletes_move_back_twice() {
    model(|| {
        // Three keys whose chains start at one slot of an 8-slot table: the
        // third moves back once per delete of the two before it.
        let mem = table(3);
        let t = ValueTable::attach(&mem).unwrap();
        let layout = Layout::new(3, 4 * layout::PAGE_BYTES).unwrap();
        let home = |k: &String| layout.home(block::key_hash(k.as_bytes()));
        let keys: Vec<String> = (0..256).map(|i| format!("k{i}")).collect();
        let chain: Vec<String> = keys
            .iter()
            .filter(|k| home(k) == home(&keys[0]))
            .take(3)
            .cloned()
            .collect();
        for (i, k) in chain.iter().enumerate() {
            t.set(k, &value(i as u8 + 1), 1).unwrap();
        }
        let (m2, gone) = (mem.clone(), chain[..2].to_vec());
        let deleter = thread::spawn(move || {
            let t = ValueTable::attach(&m2).unwrap();
            for k in &gone {
                assert!(t.delete(k, 2).unwrap());
            }
        });
        assert_eq!(get(&t, &chain[2], 1), Some(3), "two deletes hid a key");
        deleter.join().unwrap();
        settled(&t, 1);
    });
}
