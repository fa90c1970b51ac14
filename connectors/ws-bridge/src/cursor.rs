//! Cursors: where in the derived topics a client is. A cursor is the feed's read position right
//! after an event (for each topic and partition, the next offset), so it means the same thing on
//! every bridge: all of them read the same partitions, and only the interleaving of partitions
//! differs between them. A client that resumes from a cursor is owed exactly the records at or
//! after those offsets.
//!
//! On the wire it is `1.` and the position as varints (per topic: the partition count, then each
//! partition's offset) in unpadded URL-safe base64: about five characters per partition.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The topics a position covers, in cursor order.
pub const TOPICS: usize = 3;

/// For each derived topic (status, anomalies, aggregates) and partition, the next offset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    offsets: [Vec<i64>; TOPICS],
}

/// A record's place: topic index (as in [`TOPICS`]), partition, offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source {
    /// 0 status, 1 anomalies, 2 aggregates.
    pub topic: u8,
    /// The partition.
    pub partition: i32,
    /// The record's offset.
    pub offset: i64,
}

impl Position {
    /// The next offset of a partition; 0 for one the position has not heard of.
    pub fn next(&self, topic: u8, partition: i32) -> i64 {
        usize::try_from(partition)
            .ok()
            .and_then(|p| self.offsets.get(usize::from(topic))?.get(p).copied())
            .unwrap_or(0)
    }

    /// Sets the next offset of a partition.
    pub fn set(&mut self, topic: u8, partition: i32, next: i64) {
        let (Some(offsets), Ok(p)) = (
            self.offsets.get_mut(usize::from(topic)),
            usize::try_from(partition),
        ) else {
            return;
        };
        if offsets.len() <= p {
            offsets.resize(p + 1, 0);
        }
        offsets[p] = next;
    }

    /// Every partition the position knows: topic, partition, next offset.
    pub fn partitions(&self) -> impl Iterator<Item = (u8, i32, i64)> + '_ {
        (0u8..).zip(&self.offsets).flat_map(|(topic, offsets)| {
            (0i32..)
                .zip(offsets)
                .map(move |(partition, next)| (topic, partition, *next))
        })
    }

    /// Whether `source` is at or after this position (a client at this position has not seen it).
    pub fn owes(&self, source: Source) -> bool {
        source.offset >= self.next(source.topic, source.partition)
    }

    /// The cursor text.
    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(8 * self.offsets.iter().map(Vec::len).sum::<usize>());
        for offsets in &self.offsets {
            varint(&mut bytes, offsets.len() as u64);
            for o in offsets {
                varint(&mut bytes, u64::try_from(*o).unwrap_or(0));
            }
        }
        format!("1.{}", URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Reads a cursor; `None` if it is not one.
    pub fn decode(text: &str) -> Option<Position> {
        let bytes = URL_SAFE_NO_PAD.decode(text.strip_prefix("1.")?).ok()?;
        let mut input = bytes.as_slice();
        let mut position = Position::default();
        for offsets in &mut position.offsets {
            let n = read_varint(&mut input)?;
            // A partition count beyond what the bytes can hold is junk, not an allocation.
            if n > input.len() as u64 {
                return None;
            }
            for _ in 0..n {
                offsets.push(i64::try_from(read_varint(&mut input)?).ok()?);
            }
        }
        input.is_empty().then_some(position)
    }
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn read_varint(input: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = input.split_first()?;
        *input = rest;
        v |= u64::from(b & 0x7f).checked_shl(shift)?;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn cursors_read_back(offsets in proptest::collection::vec((0u8..3, 0i32..40, 0i64..i64::MAX), 0..60)) {
            let mut p = Position::default();
            for (t, part, o) in offsets {
                p.set(t, part, o);
            }
            prop_assert_eq!(Position::decode(&p.encode()), Some(p));
        }

        #[test]
        fn junk_is_not_a_cursor(text in ".{0,40}") {
            // Whatever it is, reading it must not panic; and what it reads must print back.
            if let Some(p) = Position::decode(&text) {
                prop_assert_eq!(Position::decode(&p.encode()), Some(p));
            }
        }
    }

    #[test]
    fn what_a_position_owes() {
        let mut p = Position::default();
        p.set(2, 1, 10);
        let at = |offset| Source {
            topic: 2,
            partition: 1,
            offset,
        };
        assert!(!p.owes(at(9)));
        assert!(p.owes(at(10)));
        assert!(p.owes(Source {
            topic: 0,
            partition: 3,
            offset: 0
        }));
        assert_eq!(Position::decode("2.AAAA"), None);
        assert_eq!(Position::decode("1.AAAAAA"), None, "trailing bytes");
    }
}
