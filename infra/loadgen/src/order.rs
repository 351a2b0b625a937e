//! Per-connection delivery checks: eventIds strictly increasing, no duplicates, no gaps,
//! and loss = expected − received.

/// What one observed eventId means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The next eventId (or the first one seen without a baseline).
    InOrder,
    /// Higher than expected: `missing` eventIds were skipped.
    Gap { missing: u64 },
    /// Equal to the last one seen.
    Duplicate,
    /// Lower than the last one seen.
    OutOfOrder,
}

/// Tracks the eventIds one connection receives for one conversation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sequence {
    last: Option<u64>,
    pub received: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub gaps: u64,
    pub skipped: u64,
}

impl Sequence {
    /// Starts after `baseline` (the `lastEventId` of `subscribed`), so the first event must be
    /// `baseline + 1`.
    pub fn after(baseline: u64) -> Self {
        Sequence {
            last: Some(baseline),
            ..Default::default()
        }
    }

    pub fn observe(&mut self, event_id: u64) -> Verdict {
        self.received += 1;
        let verdict = match self.last {
            None => Verdict::InOrder,
            Some(last) if event_id == last + 1 => Verdict::InOrder,
            Some(last) if event_id > last => Verdict::Gap {
                missing: event_id - last - 1,
            },
            Some(last) if event_id == last => Verdict::Duplicate,
            Some(_) => Verdict::OutOfOrder,
        };
        match verdict {
            Verdict::InOrder => self.last = Some(event_id),
            Verdict::Gap { missing } => {
                self.gaps += 1;
                self.skipped += missing;
                self.last = Some(event_id);
            }
            Verdict::Duplicate => self.duplicates += 1,
            Verdict::OutOfOrder => self.out_of_order += 1,
        }
        verdict
    }

    /// Events received, not counting exact repeats of the last one.
    pub fn unique(&self) -> u64 {
        self.received - self.duplicates
    }

    /// True when every eventId seen was the next one.
    pub fn clean(&self) -> bool {
        self.duplicates == 0 && self.out_of_order == 0 && self.gaps == 0
    }
}

/// Delivery totals over all connections.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub expected: u64,
    pub received: u64,
    /// Σ max(expected − received, 0) per connection: deliveries that never arrived.
    pub lost: u64,
    /// Σ max(unique − expected, 0) per connection: more than expected (strays).
    pub extra: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub gaps: u64,
    /// Connections with at least one ordering problem or loss.
    pub bad_connections: u64,
}

impl Tally {
    /// Adds one connection that should have received `expected` events.
    pub fn add(&mut self, expected: u64, seq: &Sequence) {
        self.expected += expected;
        self.received += seq.received;
        let lost = expected.saturating_sub(seq.unique());
        self.lost += lost;
        self.extra += seq.unique().saturating_sub(expected);
        self.duplicates += seq.duplicates;
        self.out_of_order += seq.out_of_order;
        self.gaps += seq.gaps;
        if lost > 0 || !seq.clean() {
            self.bad_connections += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_stream_is_clean() {
        let mut s = Sequence::after(7);
        for id in 8..=20 {
            assert_eq!(s.observe(id), Verdict::InOrder);
        }
        assert!(s.clean());
        assert_eq!(s.received, 13);
        assert_eq!(s.last, Some(20));
    }

    #[test]
    fn first_event_must_follow_the_baseline() {
        let mut s = Sequence::after(0);
        assert_eq!(s.observe(3), Verdict::Gap { missing: 2 });
        assert_eq!((s.gaps, s.skipped), (1, 2));
        // Without a baseline the first id is accepted as is.
        let mut free = Sequence::default();
        assert_eq!(free.observe(3), Verdict::InOrder);
        assert_eq!(free.observe(4), Verdict::InOrder);
    }

    #[test]
    fn duplicates_and_regressions_are_counted_not_accepted() {
        let mut s = Sequence::after(0);
        s.observe(1);
        s.observe(2);
        assert_eq!(s.observe(2), Verdict::Duplicate);
        assert_eq!(s.observe(1), Verdict::OutOfOrder);
        // The baseline stays at 2: 3 is still in order.
        assert_eq!(s.observe(3), Verdict::InOrder);
        assert_eq!((s.duplicates, s.out_of_order), (1, 1));
        assert!(!s.clean());
        assert_eq!(s.received, 5);
    }

    #[test]
    fn tally_reports_loss_per_connection() {
        let mut t = Tally::default();
        let mut full = Sequence::after(0);
        (1..=10).for_each(|i| {
            full.observe(i);
        });
        t.add(10, &full);
        let mut short = Sequence::after(0);
        for i in [1, 2, 3, 5, 6] {
            short.observe(i);
        }
        t.add(10, &short);
        let mut dup = Sequence::after(0);
        for i in [1, 1, 2] {
            dup.observe(i);
        }
        t.add(2, &dup);
        let mut stray = Sequence::after(0);
        for i in [1, 2, 3] {
            stray.observe(i);
        }
        t.add(2, &stray);
        assert_eq!(t.expected, 24);
        assert_eq!(t.received, 21);
        // Loss is per connection: the duplicate on the third does not hide the second's loss.
        assert_eq!(t.lost, 5);
        assert_eq!(t.extra, 1);
        assert_eq!((t.gaps, t.duplicates, t.out_of_order), (1, 1, 0));
        assert_eq!(t.bad_connections, 2);
    }
}
