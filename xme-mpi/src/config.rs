//! What a run is made of: set on [`Mpi`](crate::Mpi), read by both backends.

use crate::unit::Registry;

/// A run's settings and units.
pub(crate) struct RunConfig {
    pub(crate) pnum: usize,
    pub(crate) buffer_size: usize,
    pub(crate) channel_bytes: usize,
    pub(crate) bind_to_cores: bool,
    pub(crate) registry: Registry,
}
