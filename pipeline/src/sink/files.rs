//! The file sink: the five derived streams as NDJSON files in one directory, one file per stream
//! (`aggregates.ndjson`, ...), each line a record as `fleetpulse tail` prints it
//! (`{"key": ..., "record": {...}}`, without the partition and offset a file does not have). A
//! backfill, or the analysis of an archived day, on a machine without Kafka.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::{OutputSink, SinkError, Written};
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
        })
    }

    fn append(&self, stream: Stream, chunk: &mut Vec<u8>) -> Result<(), SinkError> {
        if chunk.is_empty() {
            return Ok(());
        }
        let path = self.path(stream);
        let Ok(mut file) = self.files[stream as usize].lock() else {
            return Err(at(&path)(std::io::Error::other("a writer panicked")));
        };
        file.write_all(chunk).map_err(at(&path))?;
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
}

impl OutputSink for FileSink {
    fn write(&mut self, record: &Output) -> Result<(), SinkError> {
        let stream = record.stream();
        let chunk = &mut self.chunks[stream as usize];
        match record {
            Output::Aggregate(r) => line(chunk, r)?,
            Output::Anomaly(r) => line(chunk, r)?,
            Output::Status(r) => line(chunk, r)?,
            Output::DeadLetter(r) => line(chunk, r)?,
            Output::LastSeen(r) => line(chunk, r)?,
        }
        self.shared.written.count(stream);
        if chunk.len() >= CHUNK {
            self.shared.append(stream, chunk)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), SinkError> {
        for (stream, chunk) in Stream::ALL.into_iter().zip(&mut self.chunks) {
            self.shared.append(stream, chunk)?;
        }
        Ok(())
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
