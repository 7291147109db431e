//! HeartJump (seed 2.5.1): a thread that tells the Guard its process lives.

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use xme_core::Operator;

use crate::calls::call::Call;
use crate::{Manager, ShmError};

/// A thread that appends a `"Status::update"` call for its operator every
/// `loop_time`, recorded in `__STATUS__` by the Guard. A Guard ends only after
/// `ExitTime` without any call, so while a HeartJump beats (keep `loop_time`
/// below the Guard's `ExitTime`) the Guard waits for its process; if the
/// process is killed, the beats stop and the Guard ends on its own.
///
/// ```
/// use std::time::Duration;
/// use xme_shm::{Guard, HeartJump, XmemBuilder};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let xmem = XmemBuilder::new().build()?;
/// let guard = Guard::new().exit_time(Duration::from_millis(300)).spawn(&xmem)?;
/// let op = xmem.alloc_operator();
/// let mut beat = HeartJump::new(op, &xmem, Duration::from_millis(50));
/// beat.start()?;
/// std::thread::sleep(Duration::from_millis(120));
/// beat.stop()?;
/// assert_eq!(xmem.statuses()?[&op].status, "stopped");
/// guard.stop(Duration::from_secs(5))?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
#[must_use = "dropping a HeartJump stops its heartbeats"]
pub struct HeartJump {
    operator: Operator,
    manager: Manager,
    loop_time: Duration,
    running: Option<(Sender<()>, JoinHandle<()>)>,
}

impl HeartJump {
    /// A HeartJump for `operator` on `manager`, beating every `loop_time`
    /// (the seed's default is 1 s).
    pub fn new(operator: Operator, manager: &Manager, loop_time: Duration) -> HeartJump {
        HeartJump {
            operator,
            manager: manager.clone(),
            loop_time: loop_time.max(Duration::from_millis(1)),
            running: None,
        }
    }

    /// Starts beating (a first beat at once). Starting twice is a no-op.
    pub fn start(&mut self) -> Result<(), ShmError> {
        if self.running.is_some() {
            return Ok(());
        }
        let beat = Call::status_update("alive")?;
        // Recorded directly: a new start replaces an earlier stop's last word,
        // which the buffered beats would leave alone.
        self.manager.status(self.operator, "alive")?;
        let (tx, rx) = mpsc::channel::<()>();
        let (m, op, every) = (self.manager.clone(), self.operator, self.loop_time);
        let handle = std::thread::Builder::new()
            .name("xme-heartjump".into())
            .spawn(move || {
                loop {
                    // A full buffer only delays a beat; never block the thread.
                    let _ = m.append_timeout(&beat, op, every);
                    match rx.recv_timeout(every) {
                        Err(RecvTimeoutError::Timeout) => continue,
                        _ => return,
                    }
                }
            })
            .map_err(|source| {
                ShmError::Region(xme_core::Error::Io {
                    doing: "starting the HeartJump thread",
                    source,
                })
            })?;
        self.running = Some((tx, handle));
        Ok(())
    }

    /// Stops beating, joins the thread, and records `"stopped"` for the
    /// operator as its last word: a beat still in the call buffer, run by the
    /// Guard later, does not replace it.
    pub fn stop(&mut self) -> Result<(), ShmError> {
        if let Some((tx, handle)) = self.running.take() {
            let _ = tx.send(());
            let _ = handle.join();
            let mut last = crate::ProcessStatus::now("stopped");
            last.last_word = true;
            self.manager.record_status(self.operator, last)?;
        }
        Ok(())
    }

    /// Whether the thread is beating.
    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }
}

impl Drop for HeartJump {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
