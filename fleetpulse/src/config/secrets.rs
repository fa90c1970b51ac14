//! The settings that name a file instead of holding their value (`*_file`, and
//! `kafka.property_files`): each read once at start-up, its line end trimmed, a file that cannot
//! be read an error naming the key.

use std::path::Path;

use super::{Config, ConfigError};

/// Reads the settings that name a file instead of holding their value.
pub(super) fn read_files(config: &mut Config) -> Result<(), ConfigError> {
    let failed =
        |key: &str, detail: String| ConfigError::Keys(vec![ConfigError::key(key, None, detail)]);
    for (property, path) in &config.kafka.property_files {
        let value = read_secret(path)
            .map_err(|d| failed(&format!("kafka.property_files.\"{property}\""), d))?;
        config.kafka.properties.insert(property.clone(), value);
    }
    let c = &mut config.clickhouse;
    if let Some(path) = &c.password_file {
        c.password = read_secret(path).map_err(|d| failed("clickhouse.password_file", d))?;
    }
    if let Some(c) = &mut config.schema_registry {
        if let Some(path) = &c.password_file {
            c.password =
                Some(read_secret(path).map_err(|d| failed("schema_registry.password_file", d))?);
        }
        if let Some(path) = &c.token_file {
            c.token = Some(read_secret(path).map_err(|d| failed("schema_registry.token_file", d))?);
        }
    }
    let r = &mut config.registry;
    if let Some(path) = &r.write_token_file {
        r.write_token =
            Some(read_secret(path).map_err(|d| failed("registry.write_token_file", d))?);
    }
    let b = &mut config.bridge;
    if let Some(path) = &b.jwt_secret_file {
        b.jwt_secret = read_secret(path).map_err(|d| failed("bridge.jwt_secret_file", d))?;
    }
    if let Some(path) = &b.redis_password_file {
        b.redis_password =
            read_secret(path).map_err(|d| failed("bridge.redis_password_file", d))?;
    }
    Ok(())
}

/// A secret from a file, without the line end an editor or `echo` leaves after it.
fn read_secret(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the file {}: {e}", path.display()))?;
    Ok(text.trim_end_matches(['\n', '\r']).to_string())
}
