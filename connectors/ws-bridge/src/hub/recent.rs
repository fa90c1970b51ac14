//! The ring of recent events a resuming client may be owed: sealed chunks shared with the
//! replays that scan them, bounded by count and bytes, and the floor below which a cursor can
//! no longer be served.

use super::*;

/// Recent events, oldest first, in chunks.
pub(super) type Chunk = Arc<[Arc<Event>]>;

/// The events a resuming client may be owed.
pub(super) struct Recent {
    /// The most events held.
    pub(super) capacity: usize,
    /// The most bytes they may take.
    pub(super) max_bytes: usize,
    /// Events per sealed chunk.
    pub(super) chunk: usize,
    pub(super) sealed: VecDeque<Chunk>,
    /// How many of the oldest sealed chunk's events were let go.
    pub(super) skip: usize,
    /// The newest events, sealed into a chunk once `chunk` of them are here.
    pub(super) open: Vec<Arc<Event>>,
    /// Events held, and their bytes.
    pub(super) held: usize,
    pub(super) bytes: usize,
    /// The same, as metrics (handles: a publish sets them without a registry lookup).
    pub(super) held_gauge: metrics::Gauge,
    pub(super) bytes_gauge: metrics::Gauge,
    /// Per partition, the offset from which the chunks hold every record: the feed's first
    /// offset, raised as chunks fall off the end.
    pub(super) floor: Position,
    /// The position after the last event published.
    pub(super) cursor: Arc<str>,
    /// Events published so far.
    pub(super) published: u64,
}

/// The events a resuming client is owed, still to be picked out of the chunks held when it
/// subscribed: a scan of up to `resume_events` events, done off the hub's locks.
pub struct Replay {
    /// Chunks, each with how many of its first events to pass over (let go since).
    pub(super) chunks: Vec<(Chunk, usize)>,
    pub(super) from: Position,
    /// The tenant it may see; `None` for an admin.
    pub(super) tenant: Option<String>,
    pub(super) topics: BTreeSet<Topic>,
    /// The topics it had before: their events were queued live.
    pub(super) old: BTreeSet<Topic>,
    /// The most events it may be owed: more than a client may have waiting would strike it
    /// off as it resumes.
    pub(super) limit: usize,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("chunks", &self.chunks.len())
            .finish_non_exhaustive()
    }
}

impl Replay {
    /// The events owed, oldest first, or why there are too many.
    pub fn scan(&self) -> Result<Vec<Arc<Event>>, &'static str> {
        let mut missed = Vec::new();
        let held = self
            .chunks
            .iter()
            .flat_map(|(c, skip)| c.iter().skip(*skip));
        for e in held.filter(|e| {
            e.source.is_some_and(|s| self.from.owes(s))
                && self.tenant.as_ref().is_none_or(|t| e.tenant == *t)
                && wants(&self.topics, e)
                && !wants(&self.old, e)
        }) {
            if missed.len() == self.limit {
                return Err("more events were missed than a client may have waiting");
            }
            missed.push(Arc::clone(e));
        }
        Ok(missed)
    }
}

/// What an event takes in the ring, bytes: its JSON, cursor and ids, and the event itself.
fn size(e: &Event) -> usize {
    std::mem::size_of::<Event>()
        + e.json.len()
        + e.cursor.len()
        + e.tenant.len()
        + e.device.len()
        + e.class.as_ref().map_or(0, String::len)
}

impl Recent {
    pub(super) fn push(&mut self, e: &Arc<Event>) {
        // Only events with a place in the topics are held; the feed publishes no other.
        if e.source.is_none() {
            return;
        }
        self.published += 1;
        self.cursor = Arc::clone(&e.cursor);
        self.open.push(Arc::clone(e));
        self.held += 1;
        self.bytes += size(e);
        if self.open.len() >= self.chunk {
            self.seal();
        }
        while self.held > self.capacity || self.bytes > self.max_bytes {
            if self.sealed.is_empty() {
                self.seal();
            }
            let Some(oldest) = self.sealed.front() else {
                break;
            };
            let Some(old) = oldest.get(self.skip).cloned() else {
                break;
            };
            self.skip += 1;
            if self.skip == oldest.len() {
                self.sealed.pop_front();
                self.skip = 0;
            }
            self.held -= 1;
            self.bytes -= size(&old);
            if let Some(s) = old.source {
                self.floor.set(s.topic, s.partition, s.offset + 1);
            }
        }
        self.held_gauge.set(self.held as f64);
        self.bytes_gauge.set(self.bytes as f64);
    }

    pub(super) fn seal(&mut self) {
        if !self.open.is_empty() {
            self.sealed
                .push_back(Arc::from(std::mem::take(&mut self.open)));
        }
    }

    /// The chunks that may hold events after `from`, if nothing after `from` has fallen off (or
    /// was never read): the sealed ones shared, the open one copied.
    pub(super) fn chunks_after(
        &self,
        from: &Position,
    ) -> Result<Vec<(Chunk, usize)>, &'static str> {
        if self
            .floor
            .partitions()
            .any(|(topic, partition, floor)| from.next(topic, partition) < floor)
        {
            return Err("the cursor is older than the events this bridge holds");
        }
        let mut chunks: Vec<(Chunk, usize)> =
            self.sealed.iter().map(|c| (Arc::clone(c), 0)).collect();
        if let Some(first) = chunks.first_mut() {
            first.1 = self.skip;
        }
        if !self.open.is_empty() {
            chunks.push((Arc::from(self.open.as_slice()), 0));
        }
        Ok(chunks)
    }
}
