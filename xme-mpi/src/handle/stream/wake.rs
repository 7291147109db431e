//! Waking polled streams: a ring or an MPI channel has no waker to register,
//! so a stream that finds nothing ready asks to be polled again after a
//! short pause (50 µs, doubling to 1 ms while nothing comes). One thread of
//! the process sleeps until the earliest pause ends and wakes those due.

use std::sync::{Arc, Condvar, Mutex};
use std::task::Waker;
use std::time::{Duration, Instant};

/// The first pause after progress, and the longest.
pub(super) const FIRST_PAUSE: Duration = Duration::from_micros(50);
pub(super) const LONGEST_PAUSE: Duration = Duration::from_millis(1);

#[derive(Default)]
struct Timer {
    due: Mutex<Vec<(Instant, Waker)>>,
    changed: Condvar,
}

/// The timer of this process: started on first use, and again in a forked
/// child that uses one (threads do not survive `fork`).
static TIMER: Mutex<Option<(u32, Arc<Timer>)>> = Mutex::new(None);

/// Wakes `waker` once `pause` has passed.
pub(super) fn wake_after(waker: &Waker, pause: Duration) {
    let timer = {
        let mut slot = TIMER.lock().unwrap_or_else(|p| p.into_inner());
        let me = std::process::id();
        match slot.as_ref() {
            Some((pid, timer)) if *pid == me => timer.clone(),
            _ => {
                let timer = Arc::new(Timer::default());
                let run = timer.clone();
                let started = std::thread::Builder::new()
                    .name("xme-mpi-stream-timer".into())
                    .spawn(move || run.serve());
                if started.is_err() {
                    // No thread: ask to be polled again at once instead.
                    waker.wake_by_ref();
                    return;
                }
                *slot = Some((me, timer.clone()));
                timer
            }
        }
    };
    let mut due = timer.due.lock().unwrap_or_else(|p| p.into_inner());
    due.push((Instant::now() + pause, waker.clone()));
    timer.changed.notify_one();
}

impl Timer {
    /// Wakes each waker when its time comes; runs for the process's life.
    fn serve(&self) {
        let mut due = self.due.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let now = Instant::now();
            let mut ready = Vec::new();
            due.retain(|(at, waker)| {
                if *at <= now {
                    ready.push(waker.clone());
                    false
                } else {
                    true
                }
            });
            if !ready.is_empty() {
                drop(due);
                ready.into_iter().for_each(Waker::wake);
                due = self.due.lock().unwrap_or_else(|p| p.into_inner());
                continue;
            }
            let next = due.iter().map(|(at, _)| *at).min();
            due = match next {
                Some(at) => {
                    self.changed
                        .wait_timeout(due, at.saturating_duration_since(now))
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => self.changed.wait(due).unwrap_or_else(|p| p.into_inner()),
            };
        }
    }
}
