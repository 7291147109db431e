//! How many calls go to a worker together.
//!
//! A chunk costs a frame, a wake-up and a delivery whatever its size, so
//! short calls go in large chunks; but a large chunk delays the first result
//! and can leave one worker busy while others wait. The automatic size aims
//! at chunks that run for about [`TARGET`] in the worker, measured from each
//! chunk's run time: it starts from the pool's measured call time (or from 1
//! when nothing was measured yet, so the first result comes at once), grows
//! at most fourfold per measurement, and shrinks at once when chunks run long.

use std::time::Duration;

/// The run time an automatic chunk aims at.
pub(crate) const TARGET: Duration = Duration::from_micros(500);

#[derive(Debug, Clone)]
pub(crate) struct Chunker {
    fixed: Option<usize>,
    size: usize,
    max: usize,
}

impl Chunker {
    /// `fixed` (the user's choice) or automatic sizes up to `max`, starting
    /// from `prior_ns` (the pool's measured time of one call) if known.
    pub fn new(fixed: Option<usize>, max: usize, prior_ns: Option<f64>) -> Chunker {
        let max = max.max(1);
        let size = match (fixed, prior_ns) {
            (Some(n), _) => n.max(1),
            (None, Some(ns)) if ns > 0.0 => ideal(ns).min(max),
            _ => 1,
        };
        Chunker { fixed, size, max }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// A chunk of `calls` calls ran for `elapsed_ns` in its worker.
    pub fn observe(&mut self, calls: usize, elapsed_ns: u64) {
        if self.fixed.is_some() || calls == 0 || elapsed_ns == 0 {
            return;
        }
        let per_call = elapsed_ns as f64 / calls as f64;
        let want = ideal(per_call).min(self.max);
        // Grow by at most 4x on one measurement (one fast chunk may be
        // luck); shrink at once (one slow chunk already cost its time).
        self.size = if want > self.size {
            want.min(self.size.saturating_mul(4))
        } else {
            want
        };
    }
}

fn ideal(per_call_ns: f64) -> usize {
    let n = TARGET.as_nanos() as f64 / per_call_ns.max(1.0);
    (n as usize).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_sizes_grow_by_at_most_four_and_shrink_at_once() {
        let mut c = Chunker::new(None, 10_000, None);
        assert_eq!(c.size(), 1);
        c.observe(1, 50); // 50 ns a call: ideal 10,000
        assert_eq!(c.size(), 4);
        c.observe(4, 200);
        assert_eq!(c.size(), 16);
        for _ in 0..10 {
            c.observe(16, 800);
        }
        assert_eq!(c.size(), 10_000, "capped at max");
        c.observe(10_000, 10_000 * 1_000_000); // 1 ms a call
        assert_eq!(c.size(), 1);
        let fixed = Chunker::new(Some(7), 3, Some(1.0));
        assert_eq!(fixed.size(), 7);
        assert_eq!(Chunker::new(None, 50, Some(100.0)).size(), 50);
    }
}
