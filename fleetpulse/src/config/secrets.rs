//! The settings that name a file instead of holding their value (`*_file`, and
//! `kafka.property_files`): each read once at start-up, its line end trimmed, a file that cannot
//! be read an error naming the key.

use std::path::Path;

use super::{Config, ConfigError};

/// Reads the settings that name a file instead of holding their value.
pub(super) fn read_files(config: &mut Config) -> Result<(), ConfigError> {
    let failed = |key: &str, e: Unreadable| {
        ConfigError::Keys(vec![ConfigError::key(key, None, e.to_string())])
    };
    for (property, path) in &config.kafka.property_files {
        let value = read_secret(path)
            .map_err(|e| failed(&format!("kafka.property_files.\"{property}\""), e))?;
        config.kafka.properties.insert(property.clone(), value);
    }
    let c = &mut config.clickhouse;
    if let Some(path) = &c.password_file {
        c.password = read_secret(path).map_err(|e| failed("clickhouse.password_file", e))?;
    }
    if let Some(c) = &mut config.schema_registry {
        if let Some(path) = &c.password_file {
            c.password =
                Some(read_secret(path).map_err(|e| failed("schema_registry.password_file", e))?);
        }
        if let Some(path) = &c.token_file {
            c.token = Some(read_secret(path).map_err(|e| failed("schema_registry.token_file", e))?);
        }
    }
    let r = &mut config.registry;
    if let Some(path) = &r.write_token_file {
        r.write_token =
            Some(read_secret(path).map_err(|e| failed("registry.write_token_file", e))?);
    }
    let b = &mut config.bridge;
    if let Some(path) = &b.jwt_secret_file {
        b.jwt_secret = read_secret(path).map_err(|e| failed("bridge.jwt_secret_file", e))?;
    }
    if let Some(path) = &b.redis_password_file {
        b.redis_password =
            read_secret(path).map_err(|e| failed("bridge.redis_password_file", e))?;
    }
    Ok(())
}

/// A secret file that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the file {}: {source}", path.display())]
struct Unreadable {
    path: std::path::PathBuf,
    source: std::io::Error,
}

/// A secret from a file, without the line end an editor or `echo` leaves after it.
fn read_secret(path: &Path) -> Result<String, Unreadable> {
    let text = std::fs::read_to_string(path).map_err(|source| Unreadable {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}
