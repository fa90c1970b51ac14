//! A vector in fixed-size chunks, for the engine's devices: growing it never moves what is in it.
//!
//! A `Vec` of a million devices (some 250 bytes each) that grows moves every device into a fresh
//! allocation each time, and the kernel zeroes the new pages first: grown a quarter at a time (to
//! keep unused capacity small) that was a sixth of a restart's time at a million devices
//! (`perf` of the restart in docs/benchmarks.md). Chunks of [`CHUNK`] are allocated once each and
//! never copied; unused capacity is at most one chunk. Written here rather than taken from a crate
//! because the engine needs only these few operations, `swap_remove` among them.

use std::ops::{Index, IndexMut};

use serde::ser::{Serialize, SerializeSeq, Serializer};

/// Elements per chunk.
const CHUNK: usize = 4_096;

/// A vector in chunks of [`CHUNK`] elements.
#[derive(Debug)]
pub struct Chunked<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Chunked {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Chunked<T> {
    /// Elements held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `value`.
    pub fn push(&mut self, value: T) {
        match self.chunks.last_mut() {
            Some(last) if last.len() < CHUNK => last.push(value),
            _ => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(value);
                self.chunks.push(chunk);
            }
        }
        self.len += 1;
    }

    /// Removes the last element.
    pub fn pop(&mut self) -> Option<T> {
        let last = self.chunks.last_mut()?;
        let value = last.pop();
        if last.is_empty() {
            self.chunks.pop();
        }
        if value.is_some() {
            self.len -= 1;
        }
        value
    }

    /// The element at `i`.
    pub fn get(&self, i: usize) -> Option<&T> {
        self.chunks.get(i / CHUNK)?.get(i % CHUNK)
    }

    /// The element at `i`.
    pub fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.chunks.get_mut(i / CHUNK)?.get_mut(i % CHUNK)
    }

    /// Removes the element at `i`, putting the last one in its place.
    pub fn swap_remove(&mut self, i: usize) -> Option<T> {
        if i >= self.len {
            return None;
        }
        let last = self.pop()?;
        match self.get_mut(i) {
            Some(slot) => Some(std::mem::replace(slot, last)),
            // `i` was the last.
            None => Some(last),
        }
    }

    /// The elements in order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }
}

impl<T> Index<usize> for Chunked<T> {
    type Output = T;

    fn index(&self, i: usize) -> &T {
        &self.chunks[i / CHUNK][i % CHUNK]
    }
}

impl<T> IndexMut<usize> for Chunked<T> {
    fn index_mut(&mut self, i: usize) -> &mut T {
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }
}

/// As a sequence, the way a `Vec` of the same elements is written.
impl<T: Serialize> Serialize for Chunked<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.len))?;
        for element in self.iter() {
            seq.serialize_element(element)?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Pushes and swap-removes do to it what they do to a `Vec`.
        #[test]
        fn it_behaves_as_a_vec(ops in prop::collection::vec((any::<bool>(), 0usize..20_000), 0..400)) {
            let mut chunked = Chunked::default();
            let mut vec = Vec::new();
            let mut next = 0u32;
            for (push, at) in ops {
                if push || vec.is_empty() {
                    // Runs of pushes, so chunks fill and new ones start.
                    for _ in 0..at % 97 {
                        chunked.push(next);
                        vec.push(next);
                        next += 1;
                    }
                } else {
                    let i = at % (vec.len() + 1);
                    let expected = (i < vec.len()).then(|| vec.swap_remove(i));
                    prop_assert_eq!(chunked.swap_remove(i), expected);
                }
                prop_assert_eq!(chunked.len(), vec.len());
            }
            prop_assert!(chunked.iter().eq(vec.iter()));
            prop_assert_eq!(
                bincode::serialize(&chunked).ok(),
                bincode::serialize(&vec).ok(),
                "written as the Vec is"
            );
        }
    }

    #[test]
    fn chunks_fill_before_a_new_one_starts_and_go_when_empty() {
        let mut chunked = Chunked::default();
        for i in 0..CHUNK + 1 {
            chunked.push(i);
        }
        assert_eq!((chunked.chunks.len(), chunked[CHUNK]), (2, CHUNK));
        assert_eq!(chunked.swap_remove(0), Some(0));
        assert_eq!((chunked.chunks.len(), chunked[0]), (1, CHUNK));
        assert_eq!(chunked.get(CHUNK), None);
        assert!(!chunked.is_empty());
    }
}
