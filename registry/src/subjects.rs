//! The registry as data: schemas by global id, subjects as lists of ids (version n is the n-th),
//! the BACKWARD compatibility rule, and an optional state file that keeps what clients registered
//! across restarts.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use apache_avro::Schema;
use apache_avro::schema_compatibility::SchemaCompatibility;
use serde::{Deserialize, Serialize};

use crate::error::RegistryError;

/// The compatibility rule a subject enforces on new versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Compatibility {
    /// A new version must read data written with the latest one (Confluent's default).
    Backward,
}

/// A schema as registered under a subject.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Registered {
    /// The subject.
    pub subject: String,
    /// Global schema id.
    pub id: u32,
    /// Version under the subject, from 1.
    pub version: u32,
    /// The schema text as registered.
    pub schema: String,
}

struct StoredSchema {
    text: String,
    canonical: String,
    parsed: Schema,
}

/// What the state file holds.
#[derive(Default, Serialize, Deserialize)]
struct State {
    schemas: BTreeMap<u32, String>,
    subjects: BTreeMap<String, Vec<u32>>,
}

/// The most a registry holds: a stranger with the write token, or a runaway client, cannot
/// grow its memory and state file without end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Subjects (the built-in ones count).
    pub subjects: usize,
    /// Versions under one subject.
    pub versions: usize,
    /// Bytes of one schema's text.
    pub schema_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            subjects: 1_000,
            versions: 100,
            schema_bytes: 64 * 1024,
        }
    }
}

/// Schemas and subjects, seeded with fleetpulse's built-in schemas. Cloned for each
/// registration ([`crate::server`]): readers keep the state they took while one is written.
#[derive(Clone)]
pub struct Subjects {
    /// Shared between copies: a registration copies pointers, not schemas.
    schemas: BTreeMap<u32, Arc<StoredSchema>>,
    subjects: BTreeMap<String, Vec<u32>>,
    state_file: Option<PathBuf>,
    limits: Limits,
}

fn parse(text: &str) -> Result<StoredSchema, RegistryError> {
    let parsed =
        Schema::parse_str(text).map_err(|e| RegistryError::InvalidSchema(e.to_string()))?;
    Ok(StoredSchema {
        text: text.to_string(),
        canonical: parsed.canonical_form(),
        parsed,
    })
}

fn state_error(path: &Path, detail: impl ToString) -> RegistryError {
    RegistryError::StateFile {
        path: path.to_path_buf(),
        detail: detail.to_string(),
    }
}

impl Subjects {
    /// The built-in schemas under their default subjects (`<topic>-value`).
    #[allow(clippy::expect_used)] // compiled-in constants, parsed by the schemas crate's tests
    pub fn builtin() -> Subjects {
        let mut state = State::default();
        for b in schemas::builtin_schemas() {
            state.schemas.insert(b.id, b.json.to_string());
            state
                .subjects
                .entry(b.kind.default_subject())
                .or_default()
                .push(b.id);
        }
        Subjects::from_state(state).expect("built-in schemas parse")
    }

    fn from_state(state: State) -> Result<Subjects, RegistryError> {
        let schemas = state
            .schemas
            .into_iter()
            .map(|(id, text)| parse(&text).map(|s| (id, Arc::new(s))))
            .collect::<Result<_, _>>()?;
        Ok(Subjects {
            schemas,
            subjects: state.subjects,
            state_file: None,
            limits: Limits::default(),
        })
    }

    /// The bounds it holds registrations to.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The same registry held to `limits` from now on (what it holds already stays).
    pub fn with_limits(self, limits: Limits) -> Subjects {
        Subjects { limits, ..self }
    }

    /// The registry kept in `path`: loaded if the file exists, otherwise the built-in schemas,
    /// written there. Every registration is saved before it is answered.
    pub fn open(path: &Path) -> Result<Subjects, RegistryError> {
        let mut subjects = match std::fs::read(path) {
            Ok(bytes) => {
                let state: State =
                    serde_json::from_slice(&bytes).map_err(|e| state_error(path, e))?;
                let mut loaded = Subjects::from_state(state)?;
                loaded.add_missing_builtins();
                loaded
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Subjects::builtin(),
            Err(e) => return Err(state_error(path, e)),
        };
        subjects.state_file = Some(path.to_path_buf());
        subjects.save()?;
        Ok(subjects)
    }

    /// A newer fleetpulse may ship schemas an older state file lacks; ids of built-ins are fixed.
    fn add_missing_builtins(&mut self) {
        let builtin = Subjects::builtin();
        for (id, schema) in builtin.schemas {
            self.schemas.entry(id).or_insert(schema);
        }
        for (subject, ids) in builtin.subjects {
            let versions = self.subjects.entry(subject).or_default();
            for id in ids {
                if !versions.contains(&id) {
                    versions.push(id);
                }
            }
        }
    }

    fn save(&self) -> Result<(), RegistryError> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        let state = State {
            schemas: self
                .schemas
                .iter()
                .map(|(id, s)| (*id, s.text.clone()))
                .collect(),
            subjects: self.subjects.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&state).map_err(|e| state_error(path, e))?;
        // Write beside, sync, then rename: a crash leaves the old file or the new one, never half.
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| state_error(path, e))
    }

    /// Number of distinct schemas.
    pub fn schema_count(&self) -> usize {
        self.schemas.len()
    }

    /// All subjects, sorted.
    pub fn subjects(&self) -> Vec<String> {
        self.subjects.keys().cloned().collect()
    }

    fn ids(&self, subject: &str) -> Result<&Vec<u32>, RegistryError> {
        self.subjects
            .get(subject)
            .filter(|ids| !ids.is_empty())
            .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_string()))
    }

    /// The versions of a subject.
    pub fn versions(&self, subject: &str) -> Result<Vec<u32>, RegistryError> {
        Ok((1..=self.ids(subject)?.len() as u32).collect())
    }

    /// The schema text with a global id.
    pub fn schema(&self, id: u32) -> Result<&str, RegistryError> {
        self.schemas
            .get(&id)
            .map(|s| s.text.as_str())
            .ok_or_else(|| RegistryError::SchemaNotFound(format!("id {id}")))
    }

    /// A version of a subject; `None` is the latest.
    pub fn version(
        &self,
        subject: &str,
        version: Option<u32>,
    ) -> Result<Registered, RegistryError> {
        let ids = self.ids(subject)?;
        let version = version.unwrap_or(ids.len() as u32);
        let id = version
            .checked_sub(1)
            .and_then(|i| ids.get(i as usize))
            .ok_or_else(|| RegistryError::VersionNotFound {
                subject: subject.to_string(),
                version: version.to_string(),
            })?;
        Ok(Registered {
            subject: subject.to_string(),
            id: *id,
            version,
            schema: self.schema(*id)?.to_string(),
        })
    }

    /// The version of a subject whose schema is the given one (compared in canonical form).
    pub fn lookup(&self, subject: &str, text: &str) -> Result<Registered, RegistryError> {
        let canonical = parse(text)?.canonical;
        let ids = self.ids(subject)?;
        let position = ids
            .iter()
            .position(|id| {
                self.schemas
                    .get(id)
                    .is_some_and(|s| s.canonical == canonical)
            })
            .ok_or_else(|| RegistryError::SchemaNotFound(format!("under subject {subject:?}")))?;
        self.version(subject, Some(position as u32 + 1))
    }

    /// Whether `text` may become the next version after `version` (`None`: the latest) under
    /// the subject's BACKWARD rule. `Err` says why not; a subject without versions accepts
    /// anything.
    pub fn check_compatible(
        &self,
        subject: &str,
        version: Option<u32>,
        text: &str,
    ) -> Result<(), RegistryError> {
        let candidate = parse(text)?;
        if self.subjects.get(subject).is_none_or(|ids| ids.is_empty()) && version.is_none() {
            return Ok(());
        }
        let existing = self.version(subject, version)?;
        let writer = &self.schemas[&existing.id].parsed;
        SchemaCompatibility::can_read(writer, &candidate.parsed)
            .map(|_| ())
            .map_err(|e| RegistryError::Incompatible {
                subject: subject.to_string(),
                detail: e.to_string(),
            })
    }

    /// Registers `text` under `subject` and returns its global id: the existing id when the
    /// subject already has it, the id of an identical schema under another subject, or a new one.
    pub fn register(&mut self, subject: &str, text: &str) -> Result<u32, RegistryError> {
        if let Ok(existing) = self.lookup(subject, text) {
            return Ok(existing.id);
        }
        if text.len() > self.limits.schema_bytes {
            return Err(RegistryError::Full(format!(
                "a schema of {} bytes; at most {} (registry.max_schema_bytes)",
                text.len(),
                self.limits.schema_bytes
            )));
        }
        match self.subjects.get(subject) {
            None if self.subjects.len() >= self.limits.subjects => {
                return Err(RegistryError::Full(format!(
                    "{} subjects (registry.max_subjects)",
                    self.limits.subjects
                )));
            }
            Some(ids) if ids.len() >= self.limits.versions => {
                return Err(RegistryError::Full(format!(
                    "{} versions of {subject:?} (registry.max_versions)",
                    self.limits.versions
                )));
            }
            _ => {}
        }
        self.check_compatible(subject, None, text)?;
        let stored = parse(text)?;
        let id = match self
            .schemas
            .iter()
            .find(|(_, s)| s.canonical == stored.canonical)
        {
            Some((id, _)) => *id,
            None => {
                let id = self.schemas.keys().next_back().map_or(1, |last| last + 1);
                self.schemas.insert(id, Arc::new(stored));
                id
            }
        };
        self.subjects
            .entry(subject.to_string())
            .or_default()
            .push(id);
        self.save()?;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::RecordKind;

    const OTHER_V1: &str =
        r#"{"type":"record","name":"Other","fields":[{"name":"a","type":"long"}]}"#;
    const OTHER_V2: &str = r#"{"type":"record","name":"Other","fields":[{"name":"a","type":"long"},
        {"name":"b","type":"string","default":""}]}"#;
    const OTHER_BAD: &str =
        r#"{"type":"record","name":"Other","fields":[{"name":"c","type":"string"}]}"#;

    #[test]
    fn built_in_subjects_have_their_fixed_ids() {
        let s = Subjects::builtin();
        let telemetry = RecordKind::Telemetry.default_subject();
        assert_eq!(s.versions(&telemetry).ok(), Some(vec![1, 2]));
        assert_eq!(s.version(&telemetry, None).map(|r| r.id).ok(), Some(2));
        assert_eq!(s.schema_count(), schemas::builtin_schemas().len());
    }

    /// The id the first schema registered beside the built-in ones gets.
    fn first_free_id() -> u32 {
        schemas::builtin_schemas().len() as u32 + 1
    }

    #[test]
    fn registering_is_idempotent_and_enforces_backward() {
        let mut s = Subjects::builtin();
        let first = s.register("other-value", OTHER_V1).ok();
        assert_eq!(first, Some(first_free_id()));
        assert_eq!(s.register("other-value", OTHER_V1).ok(), first);
        assert_eq!(s.register("copy-value", OTHER_V1).ok(), first);
        assert_eq!(
            s.register("other-value", OTHER_V2).ok(),
            Some(first_free_id() + 1)
        );
        assert!(matches!(
            s.register("other-value", OTHER_BAD),
            Err(RegistryError::Incompatible { .. })
        ));
        assert_eq!(s.versions("other-value").ok(), Some(vec![1, 2]));
        assert!(matches!(
            s.register("x", "{"),
            Err(RegistryError::InvalidSchema(_))
        ));
    }

    #[test]
    fn lookups_say_what_is_missing() {
        let s = Subjects::builtin();
        assert!(matches!(
            s.versions("nope"),
            Err(RegistryError::SubjectNotFound(_))
        ));
        assert!(matches!(
            s.version("telemetry-value", Some(3)),
            Err(RegistryError::VersionNotFound { .. })
        ));
        assert!(matches!(
            s.version("telemetry-value", Some(0)),
            Err(RegistryError::VersionNotFound { .. })
        ));
        assert!(matches!(
            s.schema(99),
            Err(RegistryError::SchemaNotFound(_))
        ));
        assert!(matches!(
            s.lookup("telemetry-value", OTHER_V1),
            Err(RegistryError::SchemaNotFound(_))
        ));
    }

    #[test]
    fn state_file_keeps_registrations() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("registry.json");
        let id = Subjects::open(&path).and_then(|mut s| s.register("other-value", OTHER_V1));
        assert_eq!(id.ok(), Some(first_free_id()));
        let reopened = Subjects::open(&path);
        assert_eq!(
            reopened
                .and_then(|s| s.lookup("other-value", OTHER_V1))
                .map(|r| r.id)
                .ok(),
            Some(first_free_id())
        );
    }

    #[test]
    fn registrations_past_the_bounds_are_refused_naming_the_key() {
        let mut s = Subjects::builtin().with_limits(Limits {
            subjects: Subjects::builtin().subjects().len() + 1,
            versions: 1,
            schema_bytes: 200,
        });
        assert!(s.register("other-value", OTHER_V1).is_ok());
        let full = |e: Result<u32, RegistryError>| match e {
            Err(RegistryError::Full(why)) => why,
            other => panic!("{other:?}"),
        };
        assert!(full(s.register("other-value", OTHER_V2)).contains("registry.max_versions"));
        assert!(full(s.register("third-value", OTHER_V1)).contains("registry.max_subjects"));
        let big = format!(
            r#"{{"type":"record","name":"Big","doc":"{}","fields":[]}}"#,
            "x".repeat(300)
        );
        assert!(full(s.register("other-value", &big)).contains("registry.max_schema_bytes"));
        // What is there already is still found.
        assert_eq!(
            s.register("other-value", OTHER_V1).ok(),
            s.lookup("other-value", OTHER_V1).ok().map(|r| r.id)
        );
    }
}
