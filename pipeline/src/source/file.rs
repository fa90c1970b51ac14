//! File replay: NDJSON (one telemetry object per line) or Avro object container files, read as
//! one partition (partition 0, offset = record number) by worker 0, for backfills and benchmarks.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use schemas::{DeadLetterReason, Record, Telemetry};

use super::{Input, Payload, RawRecord, SourceError};
use crate::clock::RecordTime;

enum Reader {
    Ndjson(BufReader<File>),
    Avro(Box<apache_avro::Reader<'static, BufReader<File>>>),
}

/// A file read by one worker.
pub struct FileInput {
    name: String,
    path: PathBuf,
    reader: Option<Reader>,
    partitions: Vec<i32>,
    offset: i64,
    /// Records to pass over first: the part a checkpoint says was read.
    skip: i64,
    /// The line being read, its buffer kept from line to line.
    line: Vec<u8>,
    finished: Vec<i32>,
}

fn file_error(path: &Path, e: impl ToString) -> SourceError {
    SourceError::File {
        path: path.display().to_string(),
        detail: e.to_string(),
    }
}

impl FileInput {
    /// Opens `path` for worker `index`: worker 0 reads it, the others own nothing. The format
    /// follows the extension: `.avro` is an object container file, anything else NDJSON.
    pub fn open(path: &Path, index: usize, skip: i64) -> Result<FileInput, SourceError> {
        let name = path.display().to_string();
        if index != 0 {
            return Ok(FileInput {
                name,
                path: path.to_path_buf(),
                reader: None,
                partitions: Vec::new(),
                offset: 0,
                skip,
                line: Vec::new(),
                finished: Vec::new(),
            });
        }
        let file = File::open(path).map_err(|e| file_error(path, e))?;
        let buffered = BufReader::with_capacity(1 << 20, file);
        let reader = if path.extension().is_some_and(|e| e == "avro") {
            let r = apache_avro::Reader::new(buffered).map_err(|e| file_error(path, e))?;
            Reader::Avro(Box::new(r))
        } else {
            Reader::Ndjson(buffered)
        };
        Ok(FileInput {
            name,
            path: path.to_path_buf(),
            reader: Some(reader),
            partitions: vec![0],
            offset: 0,
            skip,
            line: Vec::new(),
            finished: Vec::new(),
        })
    }
}

/// An Avro container's record as a reading (or why it is unusable) and its JSON for the DLQ.
fn parse_avro(
    value: apache_avro::types::Value,
) -> (Result<Telemetry, (DeadLetterReason, String)>, Vec<u8>) {
    let raw = serde_json::to_vec(&apache_avro::from_value::<serde_json::Value>(&value).ok())
        .unwrap_or_default();
    let result = apache_avro::from_value::<Telemetry>(&value)
        .map_err(|e| (DeadLetterReason::Schema, e.to_string()))
        .and_then(|t| match t.validate() {
            Ok(()) => Ok(t),
            Err(e) => Err((DeadLetterReason::InvalidField, e.to_string())),
        });
    (result, raw)
}

impl Input for FileInput {
    fn topic(&self) -> &str {
        &self.name
    }

    fn partitions(&self) -> &[i32] {
        &self.partitions
    }

    fn bounded(&self) -> bool {
        true
    }

    fn poll(
        &mut self,
        max: usize,
        each: &mut dyn FnMut(RawRecord<'_>),
    ) -> Result<usize, SourceError> {
        let Some(reader) = self.reader.as_mut() else {
            return Ok(0);
        };
        let mut taken = 0;
        let mut ended = false;
        while taken < max {
            let skip = self.offset < self.skip;
            let record = |payload| RawRecord {
                partition: 0,
                offset: self.offset,
                record_time: RecordTime::None,
                key: None,
                stamp: Default::default(),
                payload,
            };
            match reader {
                Reader::Ndjson(lines) => {
                    self.line.clear();
                    let n = lines
                        .read_until(b'\n', &mut self.line)
                        .map_err(|e| file_error(&self.path, e))?;
                    if n == 0 {
                        ended = true;
                        break;
                    }
                    if self.line.last() == Some(&b'\n') {
                        self.line.pop();
                    }
                    if self.line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    if !skip {
                        each(record(Payload::Wire(&self.line)));
                    }
                }
                Reader::Avro(values) => match values.next() {
                    // The reader stops for good after an error: the rest of the file is lost to
                    // it, so the job fails rather than end as if the file were complete.
                    Some(Err(e)) => return Err(file_error(&self.path, e)),
                    Some(Ok(v)) if !skip => {
                        let (result, raw) = parse_avro(v);
                        each(record(Payload::Parsed { result, raw: &raw }));
                    }
                    Some(Ok(_)) => {}
                    None => {
                        ended = true;
                        break;
                    }
                },
            }
            if !skip {
                taken += 1;
            }
            self.offset += 1;
        }
        if ended {
            self.reader = None;
            self.finished.push(0);
        }
        Ok(taken)
    }

    fn take_finished(&mut self) -> Vec<i32> {
        std::mem::take(&mut self.finished)
    }

    fn positions(&self) -> Vec<(i32, i64)> {
        self.partitions.iter().map(|p| (*p, self.offset)).collect()
    }
}
