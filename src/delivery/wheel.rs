//! A hierarchical timing wheel: millisecond slots, six levels of 64 slots (about 795 days),
//! O(1) insert and amortised O(1) expiry. Pure: it never reads the clock; `poll` is told `now`.
//!
//! An entry lives at the level of the most significant 6-bit group in which its deadline
//! differs from the wheel's current time, so every entry of level k is later than every entry of
//! the levels below it. Polling finds the lowest non-empty level's next slot, expires it (level 0)
//! or cascades its entries down (higher levels).

const LEVELS: usize = 6;
const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
/// The farthest deadline the wheel can tell apart; later ones are clamped to it.
const HORIZON: u64 = (1 << (SLOT_BITS as usize * LEVELS)) - 1;

struct Level<T> {
    slots: Vec<Vec<(u64, T)>>,
    /// Bit i set when slot i is non-empty.
    occupied: u64,
}

/// Timers carrying a `T`, expiring at millisecond deadlines.
pub struct TimingWheel<T> {
    levels: Vec<Level<T>>,
    /// The wheel's current time; every entry's deadline is at or after it.
    elapsed: u64,
    len: usize,
}

impl<T> TimingWheel<T> {
    /// An empty wheel whose current time is `now`.
    pub fn new(now: u64) -> TimingWheel<T> {
        let levels = (0..LEVELS)
            .map(|_| Level { slots: (0..SLOTS).map(|_| Vec::new()).collect(), occupied: 0 })
            .collect();
        TimingWheel { levels, elapsed: now, len: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds `item` to expire at `deadline` (a past deadline expires at the next poll).
    pub fn insert(&mut self, deadline: u64, item: T) {
        let deadline = deadline.clamp(self.elapsed, self.elapsed.saturating_add(HORIZON));
        let (level, slot) = self.position(deadline);
        self.levels[level].slots[slot].push((deadline, item));
        self.levels[level].occupied |= 1 << slot;
        self.len += 1;
    }

    /// The earliest time at which `poll` could return something, if anything is waiting.
    pub fn next_deadline(&self) -> Option<u64> {
        self.next_slot().map(|(_, _, start)| start)
    }

    /// Moves the wheel to `now` and appends every item whose deadline is at or before it.
    pub fn poll(&mut self, now: u64, expired: &mut Vec<T>) {
        while let Some((level, slot, start)) = self.next_slot() {
            if start > now {
                break;
            }
            self.elapsed = self.elapsed.max(start);
            let entries = std::mem::take(&mut self.levels[level].slots[slot]);
            self.levels[level].occupied &= !(1 << slot);
            self.len -= entries.len();
            for (deadline, item) in entries {
                if deadline <= now {
                    expired.push(item);
                } else {
                    self.insert(deadline, item);
                }
            }
        }
        self.elapsed = self.elapsed.max(now);
    }

    fn position(&self, deadline: u64) -> (usize, usize) {
        let differing = (self.elapsed ^ deadline) | (SLOTS as u64 - 1);
        let significant_bit = 63 - differing.leading_zeros();
        let level = (significant_bit / SLOT_BITS) as usize;
        let slot = ((deadline >> (level as u32 * SLOT_BITS)) as usize) & (SLOTS - 1);
        (level, slot)
    }

    /// The lowest level's next occupied slot at or after the current position: (level, slot,
    /// the slot's start time).
    fn next_slot(&self) -> Option<(usize, usize, u64)> {
        for (level_index, level) in self.levels.iter().enumerate() {
            if level.occupied == 0 {
                continue;
            }
            let shift = level_index as u32 * SLOT_BITS;
            let position = ((self.elapsed >> shift) as usize) & (SLOTS - 1);
            let ahead = level.occupied >> position;
            // Entries of a level never lie behind the current position (see `position`).
            let slot = if ahead != 0 {
                position + ahead.trailing_zeros() as usize
            } else {
                level.occupied.trailing_zeros() as usize
            };
            let level_span = 1u64 << (shift + SLOT_BITS);
            let level_start = self.elapsed & !(level_span - 1);
            let start = level_start + ((slot as u64) << shift);
            return Some((level_index, slot, start.max(self.elapsed)));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(wheel: &mut TimingWheel<u64>, now: u64) -> Vec<u64> {
        let mut expired = Vec::new();
        wheel.poll(now, &mut expired);
        expired.sort_unstable();
        expired
    }

    #[test]
    fn items_expire_exactly_at_their_deadline_not_before() {
        let start = 1_700_000_000_123;
        let mut wheel = TimingWheel::new(start);
        let offsets = [0, 1, 63, 64, 65, 1_000, 4_095, 4_096, 262_143, 3_600_000, 86_400_000];
        for offset in offsets {
            wheel.insert(start + offset, start + offset);
        }
        assert_eq!(wheel.len(), offsets.len());
        let mut seen = Vec::new();
        for offset in offsets {
            let deadline = start + offset;
            if deadline > start {
                assert!(!drain(&mut wheel, deadline - 1).contains(&deadline), "{offset} fired early");
            }
            let fired = drain(&mut wheel, deadline);
            assert!(fired.contains(&deadline), "{offset} did not fire at its deadline");
            seen.extend(fired);
        }
        assert_eq!(seen.len(), offsets.len());
        assert!(wheel.is_empty());
    }

    #[test]
    fn a_long_jump_expires_everything_due_in_one_poll() {
        let mut wheel = TimingWheel::new(10);
        for deadline in (10..100_000).step_by(997) {
            wheel.insert(deadline, deadline);
        }
        let fired = drain(&mut wheel, 50_000);
        assert!(fired.iter().all(|&deadline| deadline <= 50_000));
        assert_eq!(fired.len(), (10..=50_000).step_by(997).count());
        assert_eq!(wheel.next_deadline().map(|next| next > 50_000), Some(true));
    }

    #[test]
    fn past_deadlines_fire_at_the_next_poll_and_next_deadline_is_exact_at_level_zero() {
        let mut wheel = TimingWheel::new(1_000);
        wheel.insert(5, 5);
        assert_eq!(drain(&mut wheel, 1_000), vec![5]);
        wheel.insert(1_010, 1_010);
        assert_eq!(wheel.next_deadline(), Some(1_010));
        assert!(drain(&mut wheel, 1_009).is_empty());
        assert_eq!(drain(&mut wheel, 1_010), vec![1_010]);
    }

    #[test]
    fn matches_a_sorted_reference_under_random_operations() {
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut now = 5_000u64;
        let mut wheel = TimingWheel::new(now);
        let mut reference: Vec<u64> = Vec::new();
        for _ in 0..5_000 {
            if next() % 3 == 0 {
                now += next() % 5_000;
                let mut fired = drain(&mut wheel, now);
                let mut expected: Vec<u64> = reference.iter().copied().filter(|&d| d <= now).collect();
                reference.retain(|&d| d > now);
                fired.sort_unstable();
                expected.sort_unstable();
                assert_eq!(fired, expected);
            } else {
                let deadline = now + next() % 200_000;
                wheel.insert(deadline, deadline);
                reference.push(deadline);
            }
        }
    }
}
