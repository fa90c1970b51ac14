//! The file sink: the five derived streams as NDJSON files in one directory, one file per stream
//! (`aggregates.ndjson`, ...), each line a record as `fleetpulse tail` prints it
//! (`{"key": ..., "record": {...}}`, without the partition and offset a file does not have). A
//! backfill, or the analysis of an archived day, on a machine without Kafka.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::{OutputSink, RecordsOut, SinkError, Written};
use crate::output::{Output, Stream};

/// How much of a stream a worker gathers before it appends to the shared file.
const CHUNK: usize = 1 << 20;

/// The directory's files, shared by a process's workers.
pub struct FileOutput {
    dir: PathBuf,
    files: Vec<Mutex<File>>,
    /// What was written.
    pub written: Written,
}

fn at(path: &Path) -> impl FnOnce(std::io::Error) -> SinkError + '_ {
    move |source| SinkError::File {
        path: path.display().to_string(),
        source,
    }
}

impl FileOutput {
    /// Creates `dir` if needed and empties (or creates) its five files.
    pub fn create(dir: &Path) -> Result<Arc<FileOutput>, SinkError> {
        std::fs::create_dir_all(dir).map_err(at(dir))?;
        let mut files = Vec::with_capacity(Stream::ALL.len());
        for stream in Stream::ALL {
            let path = path(dir, stream);
            files.push(Mutex::new(File::create(&path).map_err(at(&path))?));
        }
        Ok(Arc::new(FileOutput {
            dir: dir.to_path_buf(),
            files,
            written: Written::default(),
        }))
    }

    /// The file of `stream`.
    pub fn path(&self, stream: Stream) -> PathBuf {
        path(&self.dir, stream)
    }

    /// A sink for one worker.
    pub fn sink(self: &Arc<Self>) -> Box<dyn OutputSink> {
        Box::new(FileSink {
            shared: Arc::clone(self),
            chunks: Stream::ALL.map(|_| Vec::with_capacity(CHUNK)),
            counters: RecordsOut::default(),
        })
    }

    /// Appends `chunk` to the stream's file and empties it. What a failed write had already
    /// written leaves the chunk, so a retry writes each byte once.
    fn append(&self, stream: Stream, chunk: &mut Vec<u8>) -> Result<(), SinkError> {
        let path = self.path(stream);
        let Ok(mut file) = self.files[stream as usize].lock() else {
            return Err(at(&path)(std::io::Error::other("a writer panicked")));
        };
        let mut written = 0;
        while written < chunk.len() {
            match file.write(&chunk[written..]) {
                Ok(0) => {
                    chunk.drain(..written);
                    return Err(at(&path)(std::io::ErrorKind::WriteZero.into()));
                }
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    chunk.drain(..written);
                    return Err(at(&path)(e));
                }
            }
        }
        chunk.clear();
        Ok(())
    }
}

fn path(dir: &Path, stream: Stream) -> PathBuf {
    dir.join(format!("{}.ndjson", stream.name()))
}

/// One line: the record's key and the record.
#[derive(Serialize)]
struct Line<'a, R> {
    key: &'a str,
    record: &'a R,
}

fn line<R: schemas::Record>(buf: &mut Vec<u8>, record: &R) -> Result<(), SinkError> {
    let line = Line {
        key: &record.key(),
        record,
    };
    serde_json::to_writer(&mut *buf, &line).map_err(|e| {
        SinkError::Encode(schemas::EncodeError {
            kind: R::KIND.full_name(),
            detail: e.to_string(),
        })
    })?;
    buf.push(b'\n');
    Ok(())
}

struct FileSink {
    shared: Arc<FileOutput>,
    chunks: [Vec<u8>; Stream::ALL.len()],
    counters: RecordsOut,
}

impl OutputSink for FileSink {
    // A full chunk goes to its file before the record joins it: a failed write then leaves the
    // record out, and the caller's retry adds it exactly once.
    fn write(&mut self, record: &Output) -> Result<(), SinkError> {
        let stream = record.stream();
        let chunk = &mut self.chunks[stream as usize];
        if chunk.len() >= CHUNK {
            self.shared.append(stream, chunk)?;
        }
        let before = chunk.len();
        let added = match record {
            Output::Aggregate(r) => line(chunk, r),
            Output::Anomaly(r) => line(chunk, r),
            Output::Status(r) => line(chunk, r),
            Output::DeadLetter(r) => line(chunk, r),
            Output::LastSeen(r) => line(chunk, r),
        };
        if let Err(e) = added {
            chunk.truncate(before);
            return Err(e);
        }
        self.shared.written.count(stream);
        let shared = &self.shared;
        self.counters
            .count(stream, || shared.path(stream).display().to_string());
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        for (stream, chunk) in Stream::ALL.into_iter().zip(&mut self.chunks) {
            self.shared.append(stream, chunk)?;
        }
        Ok(())
    }
}

impl Drop for FileSink {
    /// The job flushes every sink on its way out; this catches a way out that did not.
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::error!(error = %e, "derived records not written to their file");
        }
    }
}

#[cfg(test)]
mod tests {
    use schemas::LastSeen;

    use super::*;

    #[test]
    fn writes_a_line_per_record_into_the_stream_file_on_flush() {
        let dir = tempfile::tempdir().unwrap();
        let out = FileOutput::create(dir.path()).unwrap();
        let mut sink = out.sink();
        let seen = LastSeen {
            tenant_id: "acme".into(),
            device_id: "d/1".into(),
            device_class: None,
            last_seen: 7,
            event_id: "e".into(),
        };
        sink.write(&Output::LastSeen(seen.clone())).unwrap();
        let file = out.path(Stream::LastSeen);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "");
        sink.flush().unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["key"], r#"["acme","d/1"]"#);
        let back: LastSeen = serde_json::from_value(lines[0]["record"].clone()).unwrap();
        assert_eq!(back, seen);
        assert_eq!(
            std::fs::read_to_string(out.path(Stream::Aggregates)).unwrap(),
            ""
        );
    }

    #[test]
    fn a_failed_write_is_retried_without_losing_or_repeating_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let out = FileOutput::create(dir.path()).unwrap();
        let good = std::mem::replace(
            &mut *out.files[Stream::LastSeen as usize].lock().unwrap(),
            File::options().write(true).open("/dev/full").unwrap(),
        );
        let mut sink = out.sink();
        let seen = |t: i64| {
            Output::LastSeen(LastSeen {
                tenant_id: "acme".into(),
                device_id: "d".into(),
                device_class: None,
                last_seen: t,
                event_id: format!("e{t}"),
            })
        };
        sink.write(&seen(1)).unwrap();
        let e = sink.flush().unwrap_err();
        assert!(e.to_string().contains("lastseen.ndjson"), "{e}");
        assert!(sink.flush().is_err(), "the disk is still full");
        *out.files[Stream::LastSeen as usize].lock().unwrap() = good;
        sink.write(&seen(2)).unwrap();
        sink.flush().unwrap();
        let text = std::fs::read_to_string(out.path(Stream::LastSeen)).unwrap();
        let times: Vec<i64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["record"]["last_seen"]
                    .as_i64()
                    .unwrap()
            })
            .collect();
        assert_eq!(times, [1, 2]);
        assert_eq!(
            out.written
                .last_seen
                .load(std::sync::atomic::Ordering::Relaxed),
            2
        );
    }

    #[test]
    fn a_directory_that_cannot_be_made_names_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "").unwrap();
        let Err(e) = FileOutput::create(&blocker.join("out")) else {
            panic!("created a directory under a file");
        };
        assert!(e.to_string().contains("file/out"), "{e}");
    }
}
