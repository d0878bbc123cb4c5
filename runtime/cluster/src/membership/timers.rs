//! The core's one ordered timer queue: foca's timers and the core's own housekeeping tick.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::time::Instant;

use super::Identity;

/// Something the core must do at a given time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Timer {
    /// A timer foca asked for.
    Foca(foca::Timer<Identity>),
    /// The core's periodic housekeeping (suspicion sweep, load broadcasts, rejoins).
    Tick,
}

impl Timer {
    /// Among timers due at the same instant: foca's in foca's order (an indirect probe before
    /// the next probe), then the tick.
    fn rank(&self) -> u8 {
        match self {
            Timer::Foca(foca::Timer::SendIndirectProbe { .. }) => 0,
            Timer::Foca(foca::Timer::ProbeRandomMember(_)) => 1,
            Timer::Foca(foca::Timer::ChangeSuspectToDown { .. }) => 2,
            Timer::Foca(foca::Timer::PeriodicAnnounce(_)) => 3,
            Timer::Foca(foca::Timer::PeriodicGossip(_)) => 4,
            Timer::Foca(foca::Timer::RemoveDown(_)) => 5,
            Timer::Foca(foca::Timer::PeriodicAnnounceDown(_)) => 6,
            Timer::Tick => 7,
        }
    }
}

#[derive(Debug)]
struct Entry {
    at: Instant,
    rank: u8,
    /// Insertion order, the last tie-breaker: the queue is deterministic.
    seq: u64,
    timer: Timer,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.rank, self.seq).cmp(&(other.at, other.rank, other.seq))
    }
}

/// A min-queue of timers by deadline.
///
/// Its size is bounded by what foca schedules, which is bounded by the member count: one
/// probe and one indirect-probe timer, three periodic ones, one suspicion timer per suspect
/// and one removal timer per down member; plus the core's single tick.
#[derive(Debug, Default)]
pub(crate) struct TimerQueue {
    heap: BinaryHeap<Reverse<Entry>>,
    next_seq: u64,
}

impl TimerQueue {
    /// Schedules `timer` at `at`.
    pub fn push(&mut self, at: Instant, timer: Timer) {
        let rank = timer.rank();
        self.heap.push(Reverse(Entry { at, rank, seq: self.next_seq, timer }));
        self.next_seq += 1;
    }

    /// The earliest deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(e)| e.at)
    }

    /// The earliest timer if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, Timer)> {
        if self.next_deadline()? <= now { self.heap.pop().map(|Reverse(e)| (e.at, e.timer)) } else { None }
    }

    /// Forgets every timer.
    pub fn clear(&mut self) {
        self.heap.clear();
    }

    /// How many timers are pending.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn pops_by_deadline_then_foca_order_then_insertion() {
        let t0 = Instant::now();
        let mut q = TimerQueue::default();
        q.push(t0 + Duration::from_millis(5), Timer::Tick);
        q.push(t0 + Duration::from_millis(1), Timer::Foca(foca::Timer::ProbeRandomMember(0)));
        q.push(t0 + Duration::from_millis(1), Timer::Tick);
        q.push(t0 + Duration::from_millis(1), Timer::Foca(foca::Timer::PeriodicGossip(0)));
        assert_eq!(q.next_deadline(), Some(t0 + Duration::from_millis(1)));
        assert!(q.pop_due(t0).is_none());
        let now = t0 + Duration::from_millis(3);
        let order: Vec<_> = std::iter::from_fn(|| q.pop_due(now)).map(|(_, t)| t).collect();
        assert_eq!(
            order,
            [Timer::Foca(foca::Timer::ProbeRandomMember(0)), Timer::Foca(foca::Timer::PeriodicGossip(0)), Timer::Tick]
        );
        assert_eq!(q.len(), 1);
    }
}
