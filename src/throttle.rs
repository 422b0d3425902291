//! Log lines that a lasting condition repeats on every request (a full disk, a free-space
//! check that cannot be made), let through at most once a minute with how many were held
//! back: one line a minute says as much as thousands, which would bury the log and fill
//! the disk it is on.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// One kind of log line's pace. A `static`, shared by every request.
#[derive(Default)]
pub struct Throttle {
    /// Milliseconds since [`epoch`] before which no line goes out.
    next_ms: AtomicU64,
    skipped: AtomicU64,
}

const INTERVAL_MS: u64 = 60_000;

/// The monotonic clock's origin for every throttle (a wall clock stepped back would
/// silence them).
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Throttle {
    pub const fn new() -> Throttle {
        Throttle { next_ms: AtomicU64::new(0), skipped: AtomicU64::new(0) }
    }

    /// Now: the number of lines held back since the last one if a line is due, or None
    /// (and one more held back).
    pub fn due(&self) -> Option<u64> {
        self.due_at(epoch().elapsed().as_millis() as u64)
    }

    fn due_at(&self, now_ms: u64) -> Option<u64> {
        let next = self.next_ms.load(Ordering::Relaxed);
        // Of several requests at the same moment, the one whose exchange wins logs.
        if now_ms < next
            || self.next_ms.compare_exchange(next, now_ms + INTERVAL_MS, Ordering::Relaxed, Ordering::Relaxed).is_err()
        {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.skipped.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_goes_out_once_a_minute_with_the_count_held_back() {
        let t = Throttle::new();
        assert_eq!(t.due_at(1_000), Some(0));
        assert_eq!(t.due_at(1_001), None);
        assert_eq!(t.due_at(60_999), None);
        assert_eq!(t.due_at(61_000), Some(2));
        assert_eq!(t.due_at(61_000), None);
        assert_eq!(t.due_at(200_000), Some(1));
        assert!(Throttle::new().due().is_some());
    }
}
