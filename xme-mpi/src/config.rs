//! What a run is made of: set on [`Mpi`](crate::Mpi), read by both backends.

use std::time::Duration;

use crate::unit::Registry;
use crate::watch::WatchPlan;

/// A run's settings and units.
pub(crate) struct RunConfig {
    pub(crate) pnum: usize,
    pub(crate) buffer_size: usize,
    pub(crate) channel_bytes: usize,
    pub(crate) bind_to_cores: bool,
    pub(crate) registry: Registry,
    /// How long a call may run before its process is ended; `None`: no limit.
    pub(crate) call_timeout: Option<Duration>,
    /// How soon a process that died or stopped answering is noticed.
    pub(crate) failure_detection: Duration,
}

impl RunConfig {
    pub(crate) fn watch_plan(&self) -> WatchPlan {
        WatchPlan {
            detection: self.failure_detection,
            deadline: self.call_timeout,
        }
    }
}
