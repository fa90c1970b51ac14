//! The files an inventory is kept in: YAML (a list of devices, nested labels and poll targets)
//! and CSV (one device per row, a column per label and per poll field, as a spreadsheet or a
//! CMDB export has it). Both read into the same [`Desired`] state, every entry checked as the
//! topic's readers check it, so a mistake is reported by the file's line or entry, never written.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use schemas::{InvalidField, PollTarget, Record, Registration};
use serde::Deserialize;

use crate::DeviceId;

/// The file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.yaml` or `.yml`.
    Yaml,
    /// `.csv`.
    Csv,
}

impl Format {
    /// The format a file's extension names.
    pub fn of_path(path: &Path) -> Option<Format> {
        let extension = path.extension()?.to_str()?.to_ascii_lowercase();
        match extension.as_str() {
            "yaml" | "yml" => Some(Format::Yaml),
            "csv" => Some(Format::Csv),
            _ => None,
        }
    }
}

/// What a file says the inventory of its tenants is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    /// Every device the file lists.
    pub devices: BTreeMap<DeviceId, Registration>,
    /// The tenants the file speaks for: those of its devices, and those a YAML file lists under
    /// `tenants:` (a tenant whose every device is gone).
    pub tenants: BTreeSet<String>,
}

/// Why a file cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The text is not YAML of an inventory's shape.
    #[error("not an inventory in YAML: {0}")]
    Yaml(String),
    /// A CSV row or header that cannot be read.
    #[error("CSV line {line}: {reason}")]
    Csv {
        /// 1-based line of the file.
        line: u64,
        /// What is wrong.
        reason: String,
    },
    /// An entry whose values a registration cannot have.
    #[error("{entry}: {source}")]
    Invalid {
        /// Which entry: its line or position, tenant and device.
        entry: String,
        /// The field and why.
        source: InvalidField,
    },
    /// One device listed twice.
    #[error("{entry}: device listed twice (also {first})")]
    Duplicate {
        /// The second entry.
        entry: String,
        /// The first.
        first: String,
    },
}

/// Reads `text` in `format`.
pub fn parse(text: &str, format: Format) -> Result<Desired, FileError> {
    let (entries, tenants) = match format {
        Format::Yaml => yaml(text)?,
        Format::Csv => (csv(text)?, BTreeSet::new()),
    };
    let mut desired = Desired {
        tenants,
        ..Desired::default()
    };
    let mut first: BTreeMap<DeviceId, String> = BTreeMap::new();
    for (entry, registration) in entries {
        let entry = format!(
            "{entry} ({})",
            crate::plan::name(&registration.tenant_id, &registration.device_id)
        );
        registration
            .validate()
            .map_err(|source| FileError::Invalid {
                entry: entry.clone(),
                source,
            })?;
        let id = (
            registration.tenant_id.clone(),
            registration.device_id.clone(),
        );
        if let Some(first) = first.get(&id) {
            return Err(FileError::Duplicate {
                entry,
                first: first.clone(),
            });
        }
        first.insert(id.clone(), entry);
        desired.tenants.insert(id.0.clone());
        desired.devices.insert(id, registration);
    }
    Ok(desired)
}

/// A label's value as YAML writes it: `rack: 3` and `on_call: true` are labels too.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    fn text(self) -> String {
        match self {
            Scalar::Text(s) => s,
            Scalar::Integer(n) => n.to_string(),
            Scalar::Float(x) => x.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct YamlFile {
    #[serde(default)]
    tenants: Vec<String>,
    #[serde(default)]
    devices: Vec<YamlDevice>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct YamlDevice {
    tenant: String,
    device: String,
    #[serde(default)]
    class: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, Scalar>,
    #[serde(default)]
    expected_interval_ms: Option<i64>,
    #[serde(default)]
    monitoring_enabled: Option<bool>,
    #[serde(default)]
    poll: Option<YamlPoll>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct YamlPoll {
    url: String,
    #[serde(default)]
    fields: BTreeMap<String, String>,
}

type Entries = Vec<(String, Registration)>;

fn yaml(text: &str) -> Result<(Entries, BTreeSet<String>), FileError> {
    // An empty file is an empty inventory, not a missing document.
    if text.trim().is_empty() {
        return Ok((Vec::new(), BTreeSet::new()));
    }
    let file: YamlFile =
        serde_norway::from_str(text).map_err(|e| FileError::Yaml(e.to_string()))?;
    let entries = file
        .devices
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            let registration = Registration {
                tenant_id: d.tenant,
                device_id: d.device,
                device_class: d.class,
                labels: d.labels.into_iter().map(|(k, v)| (k, v.text())).collect(),
                expected_interval_ms: d.expected_interval_ms,
                monitoring_enabled: d.monitoring_enabled.unwrap_or(true),
                poll: d.poll.map(|p| PollTarget {
                    url: p.url,
                    fields: p.fields,
                }),
            };
            (format!("device {}", i + 1), registration)
        })
        .collect();
    Ok((entries, file.tenants.into_iter().collect()))
}

/// A CSV column: a field of the registration, a label, or a poll field.
#[derive(Debug, Clone, PartialEq)]
enum Column {
    Tenant,
    Device,
    Class,
    Interval,
    Monitoring,
    PollUrl,
    Label(String),
    PollField(String),
}

const LABEL: &str = "label.";
const POLL_FIELD: &str = "poll.";

impl Column {
    fn of(header: &str) -> Option<Column> {
        Some(match header {
            "tenant" => Column::Tenant,
            "device" => Column::Device,
            "class" => Column::Class,
            "expected_interval_ms" => Column::Interval,
            "monitoring_enabled" => Column::Monitoring,
            "poll_url" => Column::PollUrl,
            _ => {
                if let Some(name) = header.strip_prefix(LABEL).filter(|n| !n.is_empty()) {
                    Column::Label(name.to_string())
                } else if let Some(name) = header.strip_prefix(POLL_FIELD).filter(|n| !n.is_empty())
                {
                    Column::PollField(name.to_string())
                } else {
                    return None;
                }
            }
        })
    }
}

fn csv_error(line: u64, reason: impl Into<String>) -> FileError {
    FileError::Csv {
        line,
        reason: reason.into(),
    }
}

fn flag(line: u64, text: &str) -> Result<bool, FileError> {
    match text.to_ascii_lowercase().as_str() {
        "" | "true" | "yes" | "1" => Ok(true),
        "false" | "no" | "0" => Ok(false),
        other => Err(csv_error(
            line,
            format!("monitoring_enabled {other:?}: expected true or false"),
        )),
    }
}

fn csv(text: &str) -> Result<Entries, FileError> {
    let mut reader = ::csv::ReaderBuilder::new()
        .trim(::csv::Trim::All)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| csv_error(1, e.to_string()))?
        .clone();
    let columns = headers
        .iter()
        .map(|h| {
            Column::of(h).ok_or_else(|| {
                csv_error(
                    1,
                    format!(
                        "unknown column {h:?}: expected tenant, device, class, expected_interval_ms, monitoring_enabled, poll_url, {LABEL}<name> or {POLL_FIELD}<field>"
                    ),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    for needed in [Column::Tenant, Column::Device] {
        if !columns.contains(&needed) {
            return Err(csv_error(
                1,
                format!("no {needed:?} column").to_ascii_lowercase(),
            ));
        }
    }
    let mut entries = Vec::new();
    for row in reader.records() {
        let row = row
            .map_err(|e| csv_error(e.position().map_or(0, ::csv::Position::line), e.to_string()))?;
        let line = row.position().map_or(0, ::csv::Position::line);
        let mut registration = Registration::new("", "");
        let mut poll_url = None;
        let mut poll_fields = BTreeMap::new();
        for (column, cell) in columns.iter().zip(row.iter()) {
            let present = (!cell.is_empty()).then(|| cell.to_string());
            match column {
                Column::Tenant => registration.tenant_id = cell.to_string(),
                Column::Device => registration.device_id = cell.to_string(),
                Column::Class => registration.device_class = present,
                Column::Interval => {
                    registration.expected_interval_ms = present
                        .map(|ms| {
                            ms.parse::<i64>().map_err(|_| {
                                csv_error(
                                    line,
                                    format!("expected_interval_ms {ms:?}: expected milliseconds"),
                                )
                            })
                        })
                        .transpose()?;
                }
                Column::Monitoring => registration.monitoring_enabled = flag(line, cell)?,
                Column::PollUrl => poll_url = present,
                Column::Label(name) => {
                    if let Some(value) = present {
                        registration.labels.insert(name.clone(), value);
                    }
                }
                Column::PollField(name) => {
                    if let Some(pointer) = present {
                        poll_fields.insert(name.clone(), pointer);
                    }
                }
            }
        }
        registration.poll = match poll_url {
            Some(url) => Some(PollTarget {
                url,
                fields: poll_fields,
            }),
            None if poll_fields.is_empty() => None,
            None => {
                return Err(csv_error(line, "poll.<field> cells without a poll_url"));
            }
        };
        entries.push((format!("line {line}"), registration));
    }
    Ok(entries)
}

/// The registrations as CSV, in the columns [`parse`] reads: `inventory list --format csv`
/// gives a file that `inventory apply` takes back unchanged.
pub fn to_csv<'a>(registrations: impl IntoIterator<Item = &'a Registration> + Clone) -> String {
    let labels: BTreeSet<&str> = registrations
        .clone()
        .into_iter()
        .flat_map(|r| r.labels.keys().map(String::as_str))
        .collect();
    let fields: BTreeSet<&str> = registrations
        .clone()
        .into_iter()
        .flat_map(|r| r.poll.iter().flat_map(|p| p.fields.keys()))
        .map(String::as_str)
        .collect();
    let mut writer = ::csv::Writer::from_writer(Vec::new());
    let mut header: Vec<String> = [
        "tenant",
        "device",
        "class",
        "expected_interval_ms",
        "monitoring_enabled",
        "poll_url",
    ]
    .map(String::from)
    .to_vec();
    header.extend(labels.iter().map(|l| format!("{LABEL}{l}")));
    header.extend(fields.iter().map(|f| format!("{POLL_FIELD}{f}")));
    let mut rows = vec![header];
    for r in registrations {
        let mut row = vec![
            r.tenant_id.clone(),
            r.device_id.clone(),
            r.device_class.clone().unwrap_or_default(),
            r.expected_interval_ms
                .map(|ms| ms.to_string())
                .unwrap_or_default(),
            r.monitoring_enabled.to_string(),
            r.poll.as_ref().map(|p| p.url.clone()).unwrap_or_default(),
        ];
        row.extend(
            labels
                .iter()
                .map(|l| r.labels.get(*l).cloned().unwrap_or_default()),
        );
        row.extend(fields.iter().map(|f| {
            r.poll
                .as_ref()
                .and_then(|p| p.fields.get(*f))
                .cloned()
                .unwrap_or_default()
        }));
        rows.push(row);
    }
    for row in rows {
        // Writing to memory fails only on a row of another length, which these are not.
        let _ = writer.write_record(&row);
    }
    writer
        .into_inner()
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
