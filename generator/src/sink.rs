//! Where the fleet's messages go: a topic, or a file for backfills and benchmarks.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use schemas::{Codec, RecordKind, SchemaStore, Telemetry};

use crate::config::MessageFormat;
use crate::encode::encode;
use crate::error::GeneratorError;
use crate::fleet::{Body, Event, Malformation};

/// A destination for messages.
pub trait Sink {
    /// Sends one message; returns the bytes written.
    fn send(&mut self, event: &Event) -> Result<usize, GeneratorError>;

    /// Waits until everything sent is stored (acknowledged, flushed).
    fn finish(&mut self) -> Result<(), GeneratorError>;
}

enum FileFormat {
    /// One JSON value per line, malformed ones included as they would be on a topic.
    Ndjson(BufWriter<File>),
    /// An Avro object container file of readings. A container holds only well-formed records,
    /// so every malformed message is written as its reading with a value out of range.
    Avro(Box<apache_avro::Writer<'static, BufWriter<File>>>),
}

/// An NDJSON (`.ndjson`, `.jsonl`) or Avro object container (`.avro`) file of readings.
pub struct FileSink {
    path: PathBuf,
    format: FileFormat,
    codec: Codec,
    buf: Vec<u8>,
}

fn file_error(path: &Path, e: impl ToString) -> GeneratorError {
    GeneratorError::File {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

impl FileSink {
    /// A file sink, its format chosen by the file's extension.
    pub fn create(path: &Path) -> Result<FileSink, GeneratorError> {
        let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let file = || {
            File::create(path)
                .map(BufWriter::new)
                .map_err(|e| file_error(path, e))
        };
        let format = match extension {
            "ndjson" | "jsonl" => FileFormat::Ndjson(file()?),
            "avro" => {
                let schema = SchemaStore::current_schema(RecordKind::Telemetry);
                let writer =
                    apache_avro::Writer::new(schema, file()?).map_err(|e| file_error(path, e))?;
                FileFormat::Avro(Box::new(writer))
            }
            _ => {
                return Err(file_error(
                    path,
                    "unknown file type: name it .ndjson, .jsonl or .avro",
                ));
            }
        };
        Ok(FileSink {
            path: path.to_path_buf(),
            format,
            codec: Codec::builtin(),
            buf: Vec::with_capacity(512),
        })
    }
}

fn as_reading(body: &Body) -> Telemetry {
    match body {
        Body::Reading(t) | Body::Malformed(Malformation::InvalidField(t)) => t.clone(),
        Body::Malformed(
            Malformation::BadFraming(t) | Malformation::Truncated(t) | Malformation::WrongSchema(t),
        ) => Telemetry {
            battery_pct: Some(-1.0),
            ..t.clone()
        },
        Body::Malformed(Malformation::Garbage(_)) => Telemetry {
            device_id: String::new(),
            ..Telemetry::example()
        },
    }
}

impl Sink for FileSink {
    fn send(&mut self, event: &Event) -> Result<usize, GeneratorError> {
        match &mut self.format {
            FileFormat::Ndjson(out) => {
                self.buf.clear();
                encode(event, MessageFormat::Json, &self.codec, &mut self.buf)?;
                self.buf.push(b'\n');
                out.write_all(&self.buf)
                    .map_err(|e| file_error(&self.path, e))?;
                Ok(self.buf.len())
            }
            FileFormat::Avro(writer) => writer
                .append_ser(as_reading(&event.body))
                .map_err(|e| file_error(&self.path, e)),
        }
    }

    fn finish(&mut self) -> Result<(), GeneratorError> {
        let flushed = match &mut self.format {
            FileFormat::Ndjson(out) => out.flush().map_err(|e| e.to_string()),
            FileFormat::Avro(writer) => writer
                .flush()
                .map(|_| ())
                .map_err(|e| e.to_string())
                .and_then(|()| writer.get_mut().flush().map_err(|e| e.to_string())),
        };
        flushed.map_err(|e| file_error(&self.path, e))
    }
}
