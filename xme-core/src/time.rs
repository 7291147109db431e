/// Nanoseconds on `CLOCK_MONOTONIC`, comparable between processes of one machine.
///
/// Used for deadlines written to shared memory by one process and read by another.
pub fn monotonic_ns() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available on Linux");
    (ts.tv_sec() as u64) * 1_000_000_000 + ts.tv_nsec() as u64
}
