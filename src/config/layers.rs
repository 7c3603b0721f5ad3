//! The layers of the configuration: a file read as a TOML table, tables deep-merged, and one
//! `dotted.key` set from text (environment, flags), typed like its default.

use std::path::Path;

use toml::{Table, Value};

use super::ConfigError;

pub(super) fn read_table(path: &Path) -> Result<Table, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigError::new(path.display().to_string(), e.to_string()))?;
    text.parse::<Table>().map_err(|e| {
        let message = e.to_string().lines().next().unwrap_or_default().to_owned();
        ConfigError::new(path.display().to_string(), message)
    })
}

/// Deep-merges `over` into `base` (tables merge, everything else replaces).
pub(super) fn merge(base: &mut Table, over: Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(Value::Table(base_table)), Value::Table(over_table)) => merge(base_table, over_table),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// Sets `dotted.key` from text, typed like the key's default (the defaults file is the schema,
/// so an unknown key or a value of the wrong type is caught here with the key's name).
pub(super) fn set_key(
    merged: &mut Table,
    defaults: &Table,
    key: &str,
    text: &str,
    source: &str,
) -> Result<(), ConfigError> {
    let path: Vec<&str> = key.split('.').collect();
    let mut schema = defaults;
    for part in &path[..path.len() - 1] {
        schema = match schema.get(*part) {
            Some(Value::Table(t)) => t,
            _ => {
                return Err(ConfigError::new(key, format!("unknown setting (from {source})")));
            }
        };
    }
    let leaf = path[path.len() - 1];
    let typed = match schema.get(leaf) {
        Some(Value::String(_)) => Value::String(text.to_owned()),
        Some(Value::Integer(_)) => Value::Integer(
            text.trim()
                .parse()
                .map_err(|_| ConfigError::new(key, format!("`{text}` is not a whole number (from {source})")))?,
        ),
        Some(Value::Float(_)) => Value::Float(
            text.trim()
                .parse()
                .map_err(|_| ConfigError::new(key, format!("`{text}` is not a number (from {source})")))?,
        ),
        Some(Value::Array(_)) => Value::Array(
            text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| Value::String(s.to_owned())).collect(),
        ),
        Some(Value::Boolean(_)) => Value::Boolean(match text.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => {
                return Err(ConfigError::new(key, format!("`{text}` is not true or false (from {source})")));
            }
        }),
        _ => {
            return Err(ConfigError::new(key, format!("unknown setting (from {source})")));
        }
    };
    let mut table = merged;
    for part in &path[..path.len() - 1] {
        table = table
            .entry(part.to_string())
            .or_insert_with(|| Value::Table(Table::new()))
            .as_table_mut()
            .expect("schema checked above");
    }
    table.insert(leaf.to_owned(), typed);
    Ok(())
}
