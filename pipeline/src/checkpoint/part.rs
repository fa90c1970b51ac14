//! One worker's part of a checkpoint as a file, and the thread that writes it.
//!
//! A part is [`MAGIC`], the devices, the rest of the part (positions, clocks, tenants, ...), and a
//! 24-byte trailer: the two sections' lengths and an XXH3 checksum of everything before the
//! trailer. Both sections are bincode with variable-length integers ([`encoding`]).
//!
//! Why a thread of its own: at a million devices a part is some 300 MB. Encoded into one buffer
//! and written by the worker, each checkpoint stopped the job for seconds, half of it the kernel
//! zeroing the buffer's fresh pages and half copying it into the page cache (a `perf` profile of
//! `bench pipeline --devices 1000000`: 26 % and 25 % of the worker's time; docs/benchmarks.md).
//! Here the worker encodes the devices into 1 MiB chunks that the part's thread hashes, writes
//! and hands back for reuse, while the worker runs on; the rest and the trailer follow once the
//! outputs before the cut are acknowledged ([`PartWriter::finish`]), then the file is fsynced and
//! renamed into place. A bounded queue of chunks keeps the memory this takes small and makes the
//! worker wait if the disk is slower than the encoding.

use std::fs::{self, File};
use std::hash::Hasher;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread::JoinHandle;

use bincode::Options;
use twox_hash::XxHash3_64;

use super::{CheckpointError, Store, Unreadable, WorkerPart, io};

/// The format's mark; 04 held the last-seen announcements and what each device told, 05 the
/// same state with variable-length integers, in sections with a trailer, 06 devices known by
/// their XXH3 key where 05 had an FNV hash (announcements, pending readings).
const MAGIC: &[u8; 8] = b"FPCKPT07";
const TRAILER: usize = 24;
/// Bytes of devices handed to the part's thread at a time.
const CHUNK: usize = 1 << 20;
/// Chunks queued for the thread before the worker waits.
const QUEUED: usize = 8;

/// How parts are encoded: bincode with variable-length integers (lengths, counts and small
/// numbers take a byte instead of eight), little-endian, no size limit.
pub fn encoding() -> impl Options {
    bincode::DefaultOptions::new()
}

/// Writes `value` into `to` the way parts are encoded ([`encoding`]).
pub fn encode_into(to: impl Write, value: &impl serde::Serialize) -> Result<(), bincode::Error> {
    encoding().serialize_into(to, value)
}

/// What the worker tells the part's thread.
enum Message {
    /// More of the devices.
    Chunk(Vec<u8>),
    /// The rest of the part: write it and the trailer, make the file durable and put it in
    /// place, then prune the store's old generations if asked.
    Finish { rest: Vec<u8>, prune: Option<u64> },
}

/// Where a part goes.
struct Target {
    store: Store,
    generation: u64,
    dir: PathBuf,
    name: String,
}

/// A part being written: `Write` takes the devices' encoding; [`PartWriter::finish`] the rest.
/// Dropped unfinished, the part's thread removes what it wrote.
pub struct PartWriter {
    chunk: Vec<u8>,
    to_thread: Option<SyncSender<Message>>,
    spare: Receiver<Vec<u8>>,
    thread: Option<JoinHandle<Result<(), CheckpointError>>>,
    generation: u64,
}

impl std::fmt::Debug for PartWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartWriter")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// A part handed to its thread whole: [`Written::wait`] says whether it is on disk.
#[derive(Debug)]
pub struct Written {
    thread: Option<JoinHandle<Result<(), CheckpointError>>>,
}

impl Written {
    /// Whether the thread is done (waiting would not block).
    pub fn is_done(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Waits for the part to be durable and in place.
    pub fn wait(mut self) -> Result<(), CheckpointError> {
        join(self.thread.take())
    }
}

fn join(thread: Option<JoinHandle<Result<(), CheckpointError>>>) -> Result<(), CheckpointError> {
    match thread.map(JoinHandle::join) {
        None | Some(Ok(Ok(()))) => Ok(()),
        Some(Ok(Err(e))) => Err(e),
        Some(Err(_)) => Err(CheckpointError::Writer("panicked")),
    }
}

impl PartWriter {
    /// Starts worker `worker`'s part of `generation` in `store` on a thread of its own.
    pub(super) fn start(
        store: &Store,
        generation: u64,
        worker: usize,
        workers: usize,
    ) -> Result<PartWriter, CheckpointError> {
        let (to_thread, from_worker) = mpsc::sync_channel(QUEUED);
        let (give_back, spare) = mpsc::channel();
        let target = Target {
            store: store.clone(),
            generation,
            dir: store.generation_dir(generation),
            name: format!("part-{worker}-of-{workers}.bin"),
        };
        let thread = std::thread::Builder::new()
            .name(format!("checkpoint-{generation}"))
            .spawn(move || write(&target, &from_worker, &give_back))
            .map_err(io(&store.dir))?;
        Ok(PartWriter {
            chunk: Vec::with_capacity(CHUNK),
            to_thread: Some(to_thread),
            spare,
            thread: Some(thread),
            generation,
        })
    }

    /// The generation this part belongs to.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    fn send(&mut self, message: Message) -> Result<(), CheckpointError> {
        let sent = self.to_thread.as_ref().map(|to| to.send(message).is_ok());
        if sent == Some(true) {
            return Ok(());
        }
        // The thread stopped: its error says why.
        self.to_thread = None;
        join(self.thread.take())?;
        Err(CheckpointError::Writer("stopped"))
    }

    fn hand_over(&mut self) -> Result<(), CheckpointError> {
        let next = self
            .spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
        let full = std::mem::replace(&mut self.chunk, next);
        self.send(Message::Chunk(full))
    }

    /// Hands the rest of the part to its thread, which writes it after the devices, makes the
    /// file durable and puts it in place; `prune`: then removes generations the store no longer
    /// needs (one worker of the job does).
    pub fn finish(mut self, part: &WorkerPart, prune: bool) -> Result<Written, CheckpointError> {
        let rest = encoding()
            .serialize(part)
            .map_err(|e| CheckpointError::Encode(e.to_string()))?;
        if !self.chunk.is_empty() {
            self.hand_over()?;
        }
        let prune = prune.then_some(self.generation);
        self.send(Message::Finish { rest, prune })?;
        self.to_thread = None;
        Ok(Written {
            thread: self.thread.take(),
        })
    }
}

impl Write for PartWriter {
    /// Takes what fits in the chunk (a chunk never grows past [`CHUNK`], so it is never copied
    /// into a larger allocation); `write_all` comes back for the rest.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(CHUNK - self.chunk.len());
        self.chunk.extend_from_slice(&buf[..n]);
        if self.chunk.len() == CHUNK {
            self.hand_over().map_err(io::Error::other)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The part's thread: writes what the worker sends to a temporary file, and on
/// [`Message::Finish`] completes it; if the worker goes away first, removes it.
fn write(
    target: &Target,
    from_worker: &Receiver<Message>,
    give_back: &Sender<Vec<u8>>,
) -> Result<(), CheckpointError> {
    let dir = &target.dir;
    fs::create_dir_all(dir).map_err(io(dir))?;
    let temp = dir.join(format!(".{}.tmp", target.name));
    let mut file = File::create(&temp).map_err(io(&temp))?;
    let mut hash = XxHash3_64::default();
    hash.write(MAGIC);
    file.write_all(MAGIC).map_err(io(&temp))?;
    let mut devices = 0u64;
    loop {
        match from_worker.recv() {
            Ok(Message::Chunk(mut chunk)) => {
                hash.write(&chunk);
                file.write_all(&chunk).map_err(io(&temp))?;
                devices += chunk.len() as u64;
                chunk.clear();
                // The worker may have finished or given up; the chunk is then just freed.
                let _ = give_back.send(chunk);
            }
            Ok(Message::Finish { rest, prune }) => {
                hash.write(&rest);
                let mut trailer = [0u8; TRAILER];
                trailer[..8].copy_from_slice(&devices.to_le_bytes());
                trailer[8..16].copy_from_slice(&(rest.len() as u64).to_le_bytes());
                trailer[16..].copy_from_slice(&hash.finish().to_le_bytes());
                file.write_all(&rest).map_err(io(&temp))?;
                file.write_all(&trailer).map_err(io(&temp))?;
                file.sync_all().map_err(io(&temp))?;
                let path = dir.join(&target.name);
                fs::rename(&temp, &path).map_err(io(&path))?;
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io(dir))?;
                if let Some(newest) = prune {
                    target.store.prune(newest);
                }
                return Ok(());
            }
            Err(mpsc::RecvError) => {
                drop(file);
                let _ = fs::remove_file(&temp);
                tracing::debug!(
                    generation = target.generation,
                    "an unfinished checkpoint part was given up"
                );
                return Ok(());
            }
        }
    }
}

/// Reads a part back, or says what is wrong with it.
pub fn read(path: &Path) -> Result<WorkerPart, Unreadable> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut magic = [0u8; 8];
    if len < (MAGIC.len() + TRAILER) as u64 || file.read_exact(&mut magic).is_err() {
        return Err(Unreadable::NotAPart);
    }
    if &magic != MAGIC {
        return Err(match magic.strip_prefix(b"FPCKPT") {
            Some(version) => Unreadable::OtherFormat(String::from_utf8_lossy(version).into()),
            None => Unreadable::NotAPart,
        });
    }
    let mut trailer = [0u8; TRAILER];
    file.seek(SeekFrom::Start(len - TRAILER as u64))
        .and_then(|_| file.read_exact(&mut trailer))?;
    let field = |i: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&trailer[i * 8..i * 8 + 8]);
        u64::from_le_bytes(bytes)
    };
    let (devices_len, rest_len, sum) = (field(0), field(1), field(2));
    let expected = devices_len
        .checked_add(rest_len)
        .and_then(|n| n.checked_add((MAGIC.len() + TRAILER) as u64));
    if expected != Some(len) {
        return Err(Unreadable::CutShort);
    }
    let section = |file: &mut File, n: u64| -> Result<Vec<u8>, Unreadable> {
        let mut bytes = Vec::with_capacity(usize::try_from(n).map_err(|_| Unreadable::CutShort)?);
        file.take(n).read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    file.seek(SeekFrom::Start(MAGIC.len() as u64))?;
    let devices = section(&mut file, devices_len)?;
    let rest = section(&mut file, rest_len)?;
    let mut hash = XxHash3_64::default();
    hash.write(MAGIC);
    hash.write(&devices);
    hash.write(&rest);
    if hash.finish() != sum {
        return Err(Unreadable::Checksum);
    }
    let mut part: WorkerPart = encoding().deserialize(&rest)?;
    part.engine = devices;
    Ok(part)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_reads_back_as_written_across_chunks() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = Store::new(dir.path());
        let mut writer = PartWriter::start(&store, 7, 1, 2).expect("started");
        // Three and a half chunks of devices: two and a bit in one write (as a stop's part
        // writes them), the rest in writes of odd sizes.
        let devices: Vec<u8> = (0..CHUNK * 7 / 2).map(|i| (i % 251) as u8).collect();
        let (whole, pieces) = devices.split_at(CHUNK * 2 + 5);
        writer.write_all(whole).expect("taken");
        for piece in pieces.chunks(4_093) {
            writer.write_all(piece).expect("taken");
        }
        let part = WorkerPart {
            cut: Some(42),
            positions: vec![(3, 99)],
            ..WorkerPart::default()
        };
        writer
            .finish(&part, false)
            .and_then(Written::wait)
            .expect("written");
        let back = read(&dir.path().join("gen-000000000007/part-1-of-2.bin")).expect("read");
        assert_eq!(
            (back.cut, back.positions, back.engine == devices),
            (Some(42), vec![(3, 99)], true)
        );
        assert!(
            !dir.path()
                .join("gen-000000000007/.part-1-of-2.bin.tmp")
                .exists(),
            "renamed into place"
        );
    }

    #[test]
    fn a_part_given_up_leaves_nothing() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = Store::new(dir.path());
        let mut writer = PartWriter::start(&store, 3, 0, 1).expect("started");
        writer.write_all(&vec![1u8; CHUNK + 1]).expect("taken");
        let gen_dir = dir.path().join("gen-000000000003");
        drop(writer);
        // The thread removes its temporary file once it sees the worker gone.
        for _ in 0..200 {
            let left = fs::read_dir(&gen_dir).map_or(0, |d| d.count());
            if left == 0 {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the given-up part's temporary file is still there");
    }

    #[test]
    fn a_store_that_cannot_be_written_fails_the_part_naming_the_path() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        // The store's directory is a file: no generation directory can be made under it.
        let blocked = dir.path().join("not-a-directory");
        fs::write(&blocked, b"x").expect("writable");
        let store = Store::new(&blocked);
        let mut writer = PartWriter::start(&store, 1, 0, 1).expect("started");
        // Enough chunks that the queue fills if the thread is not there to take them.
        let devices = vec![7u8; CHUNK * (QUEUED + 2)];
        let error = match writer.write_all(&devices) {
            Err(e) => e.to_string(),
            Ok(()) => match writer.finish(&WorkerPart::default(), false) {
                Ok(written) => written
                    .wait()
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default(),
                Err(e) => e.to_string(),
            },
        };
        assert!(
            error.contains("not-a-directory"),
            "the error names where: {error}"
        );
        assert!(read(&blocked.join("gen-000000000001/part-0-of-1.bin")).is_err());
    }

    #[test]
    fn damage_is_named() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = Store::new(dir.path());
        let part = WorkerPart {
            engine: vec![5; 1_000],
            ..WorkerPart::default()
        };
        store.write_part(1, 0, 1, &part, false).expect("written");
        let path = dir.path().join("gen-000000000001/part-0-of-1.bin");
        let bytes = fs::read(&path).expect("readable");
        let mut flipped = bytes.clone();
        flipped[100] ^= 1;
        fs::write(&path, &flipped).expect("writable");
        assert!(matches!(read(&path), Err(Unreadable::Checksum)));
        fs::write(&path, &bytes[..bytes.len() - 1]).expect("writable");
        assert!(matches!(read(&path), Err(Unreadable::CutShort)));
        let mut old = bytes;
        old[..8].copy_from_slice(b"FPCKPT04");
        fs::write(&path, &old).expect("writable");
        assert!(read(&path).is_err_and(|e| e.to_string().contains("another format (04)")));
    }
}
