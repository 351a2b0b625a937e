//! Partitions: how commands, completion jobs and the cleanup index are spread over
//! `STREAM_PARTITIONS` streams, and over the primaries of a Redis Cluster.
//!
//! ## Which partition
//! A conversation's commands always go to the same partition: [`Partitions::of_conversation`]
//! hashes its id (FNV-1a 64) and maps the hash with jump consistent hashing (Lamping & Veach),
//! so the mapping is stable across processes and versions, and changing the partition count
//! moves only the share of conversations that must move. A command without a conversation
//! goes by its user ([`Partitions::of_user`]).
//!
//! ## Which slot
//! Every key of partition `i` shares the hash tag [`Partitions::tag`]`(i)`, so one script can
//! touch a partition's stream, lease, jobs and cleanup index atomically. Naive tags (`{p0}` …
//! `{p15}`) land on CRC16 slots that bunch up on a few primaries. Instead the tag of partition
//! `i` is chosen (a deterministic search) so that its slot is exactly the centre of the `i`-th
//! of `P` equal slices of the 16384 slots: evenly spaced points. Any cluster whose primaries
//! hold contiguous, nearly equal slot ranges — what `redis-cli --cluster create` assigns, and
//! what operators and charts do — then gets ⌊P/N⌋ or ⌈P/N⌉ partitions per primary.
//! [`redis_cli_slot_ranges`] reproduces redis-cli's assignment; the tests check the spread
//! for 3 to 8 primaries.

/// Number of Redis Cluster hash slots.
pub const SLOTS: u16 = 16384;

/// The most partitions a deployment may configure (the tag search stays instant).
pub const MAX_PARTITIONS: u32 = 1024;

/// The partition layout every process computes identically from `STREAM_PARTITIONS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partitions {
    tags: Vec<String>,
}

impl Partitions {
    /// `count` partitions (1..=[`MAX_PARTITIONS`]; the config validates the range).
    pub fn new(count: u32) -> Self {
        let count = count.clamp(1, MAX_PARTITIONS);
        let tags = (0..count).map(|i| find_tag(i, count)).collect();
        Self { tags }
    }

    pub fn count(&self) -> u32 {
        // At most MAX_PARTITIONS entries.
        self.tags.len() as u32
    }

    /// Partition indices, `0..count`.
    pub fn all(&self) -> std::ops::Range<u32> {
        0..self.count()
    }

    /// The hash tag (without braces) shared by every key of partition `p`.
    pub fn tag(&self, p: u32) -> &str {
        self.tags
            .get(p as usize)
            .map(String::as_str)
            .unwrap_or_default()
    }

    /// The partition of a conversation's commands.
    pub fn of_conversation(&self, id: &uuid::Uuid) -> u32 {
        let mut buf = uuid::Uuid::encode_buffer();
        self.of_key(id.hyphenated().encode_lower(&mut buf))
    }

    /// The partition of a command that concerns a user rather than a conversation.
    pub fn of_user(&self, username: &str) -> u32 {
        self.of_key(username)
    }

    fn of_key(&self, key: &str) -> u32 {
        jump_hash(fnv1a(key.as_bytes()), self.count())
    }
}

/// FNV-1a, 64 bit.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Jump consistent hash (Lamping & Veach, 2014): `key` → bucket in `0..buckets`.
pub fn jump_hash(mut key: u64, buckets: u32) -> u32 {
    let buckets = i64::from(buckets.max(1));
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < buckets {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        let r = ((key >> 33) + 1) as f64;
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / r)) as i64;
    }
    // 0 <= b < buckets <= u32::MAX
    b as u32
}

/// CRC16/XMODEM, the checksum Redis Cluster uses for key slots.
pub fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The Redis Cluster slot of `key`, honouring `{hash tags}`.
pub fn key_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = match bytes.iter().position(|&c| c == b'{') {
        Some(open) => match bytes[open + 1..].iter().position(|&c| c == b'}') {
            Some(len) if len > 0 => &bytes[open + 1..open + 1 + len],
            _ => bytes,
        },
        None => bytes,
    };
    crc16(hashed) % SLOTS
}

/// The slot partition `i` of `count` should live on: the centre of its slice.
fn target_slot(i: u32, count: u32) -> u16 {
    let centre = (2 * u64::from(i) + 1) * u64::from(SLOTS) / (2 * u64::from(count));
    // < SLOTS
    centre as u16
}

/// The first tag `p<i>-<n>` (n = 0, 1, …) whose slot is partition `i`'s target slot.
fn find_tag(i: u32, count: u32) -> String {
    let target = target_slot(i, count);
    let mut n: u32 = 0;
    loop {
        let tag = format!("p{i}-{n}");
        if crc16(tag.as_bytes()) % SLOTS == target {
            return tag;
        }
        n += 1;
    }
}

/// The slot ranges `redis-cli --cluster create` gives `masters` primaries (its
/// `clusterManagerCommandCreate`): float slices of 16384 / masters, rounded.
pub fn redis_cli_slot_ranges(masters: u16) -> Vec<(u16, u16)> {
    let masters = masters.max(1);
    let per_node = f64::from(SLOTS) / f64::from(masters);
    let mut out = Vec::with_capacity(usize::from(masters));
    let mut first: i64 = 0;
    let mut cursor = 0.0f64;
    for i in 0..masters {
        let mut last = (cursor + per_node - 1.0).round() as i64;
        if last > i64::from(SLOTS) || i == masters - 1 {
            last = i64::from(SLOTS) - 1;
        }
        if last < first {
            last = first;
        }
        out.push((first as u16, last as u16));
        first = last + 1;
        cursor += per_node;
    }
    out
}

/// How many of `parts`'s partitions each primary holds under `ranges`.
pub fn spread(parts: &Partitions, ranges: &[(u16, u16)]) -> Vec<u32> {
    let mut counts = vec![0u32; ranges.len()];
    for p in parts.all() {
        let slot = crc16(parts.tag(p).as_bytes()) % SLOTS;
        if let Some(node) = ranges.iter().position(|(a, b)| (*a..=*b).contains(&slot)) {
            counts[node] += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_matches_redis() {
        // Values from the Redis Cluster specification and CLUSTER KEYSLOT.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(key_slot("foo"), 12182);
        assert_eq!(key_slot("{user1000}.following"), key_slot("user1000"));
        assert_eq!(key_slot("foo{}{bar}"), crc16(b"foo{}{bar}") % SLOTS);
    }

    #[test]
    fn every_primary_gets_its_even_share_for_3_to_8_primaries() {
        for count in [1u32, 2, 3, 4, 5, 6, 7, 8, 12, 16, 24, 32, 64, 100, 128] {
            let parts = Partitions::new(count);
            for masters in 3u16..=8 {
                let counts = spread(&parts, &redis_cli_slot_ranges(masters));
                let (lo, hi) = (
                    count / u32::from(masters),
                    count.div_ceil(u32::from(masters)),
                );
                assert!(
                    counts.iter().all(|c| (lo..=hi).contains(c)),
                    "{count} partitions over {masters} primaries: {counts:?}"
                );
                assert_eq!(counts.iter().sum::<u32>(), count);
            }
        }
    }

    #[test]
    fn naive_tags_would_be_uneven() {
        // Why the search exists: {p0}..{p15} bunch up (documented in the README).
        let naive: Vec<u16> = (0..16)
            .map(|i| crc16(format!("p{i}").as_bytes()) % SLOTS)
            .collect();
        let ranges = redis_cli_slot_ranges(3);
        let counts: Vec<usize> = ranges
            .iter()
            .map(|(a, b)| naive.iter().filter(|s| (*a..=*b).contains(*s)).count())
            .collect();
        assert_eq!(counts, vec![4, 5, 7]);
    }

    #[test]
    fn redis_cli_ranges_cover_every_slot_once() {
        for masters in 1u16..=16 {
            let r = redis_cli_slot_ranges(masters);
            assert_eq!(r.first().map(|x| x.0), Some(0));
            assert_eq!(r.last().map(|x| x.1), Some(SLOTS - 1));
            for w in r.windows(2) {
                assert_eq!(w[0].1 + 1, w[1].0);
            }
        }
        // What redis-cli prints for three masters.
        assert_eq!(
            redis_cli_slot_ranges(3),
            vec![(0, 5460), (5461, 10922), (10923, 16383)]
        );
    }

    #[test]
    fn layout_is_deterministic_and_tags_are_distinct() {
        let a = Partitions::new(16);
        let b = Partitions::new(16);
        assert_eq!(a, b);
        let tags: std::collections::HashSet<&str> = a.all().map(|p| a.tag(p)).collect();
        assert_eq!(tags.len(), 16);
        assert!(a.tag(3).starts_with("p3-"));
    }

    #[test]
    fn conversations_spread_over_partitions_and_stay_put() {
        let parts = Partitions::new(16);
        let mut counts = [0u32; 16];
        let ids: Vec<uuid::Uuid> = (0..16_000).map(|_| uuid::Uuid::new_v4()).collect();
        for id in &ids {
            counts[parts.of_conversation(id) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
        // Growing 16 → 17 partitions moves about 1/17 of conversations, never more than needed.
        let more = Partitions::new(17);
        let moved = ids
            .iter()
            .filter(|id| parts.of_conversation(id) != more.of_conversation(id))
            .count();
        assert!(moved < 16_000 / 17 * 2, "{moved}");
        // Pinned: a change here would move conversations between partitions on an upgrade.
        let fixed = uuid::Uuid::from_u128(0x1234_5678_9abc_def0_1234_5678_9abc_def0);
        assert_eq!(parts.of_conversation(&fixed), 11);
        assert_eq!(parts.of_user("alice"), 4);
        assert_eq!(parts.tag(0), "p0-10786");
        assert_eq!(parts.tag(15), "p15-18021");
    }

    #[test]
    fn jump_hash_is_in_range() {
        for k in 0..1000u64 {
            assert!(jump_hash(k.wrapping_mul(0x9E37_79B9_7F4A_7C15), 7) < 7);
        }
        assert_eq!(jump_hash(42, 1), 0);
    }
}
