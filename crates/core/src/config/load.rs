//! Loading: a TOML file, then environment and flag overrides in order, each error with the
//! key it is about and where that key came from (file line and column, variable, flag).

use std::fmt;

use super::{Config, ENV_PREFIX};

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File {
        path: String,
        line: usize,
        column: usize,
    },
    Env(String),
    Flag(String),
    /// A rule that spans keys in a file without a single place to point at.
    Config(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, line, column } => write!(f, "{path}:{line}:{column}"),
            Origin::Env(var) => write!(f, "environment variable {var}"),
            Origin::Flag(arg) => write!(f, "flag --set {arg}"),
            Origin::Config(path) => write!(f, "{path}"),
        }
    }
}

/// One configuration error: where, which key, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub origin: Origin,
    /// The dotted key, e.g. `turn.user_quota`, when one could be named.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(k) => write!(f, "{}: key `{}`: {}", self.origin, k, self.message),
            None => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The configuration text of a file.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    /// Shown in errors.
    pub path: String,
    pub text: String,
}

/// One `key=value` override from the environment or a flag.
#[derive(Debug, Clone)]
pub struct Override {
    pub key: String,
    pub value: String,
    pub origin: Origin,
}

impl Override {
    /// Config overrides among environment variables (`CALLBOX_SECTION__KEY=value`).
    pub fn from_env(vars: impl IntoIterator<Item = (String, String)>) -> Vec<Override> {
        let mut out: Vec<Override> = vars
            .into_iter()
            .filter_map(|(name, value)| {
                let rest = name.strip_prefix(ENV_PREFIX)?;
                rest.contains("__").then(|| Override {
                    key: rest.to_ascii_lowercase().replace("__", "."),
                    value,
                    origin: Origin::Env(name.clone()),
                })
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// A `--set key=value` flag.
    pub fn from_flag(arg: &str) -> Result<Override, ConfigError> {
        let (key, value) = arg.split_once('=').ok_or_else(|| ConfigError {
            origin: Origin::Flag(arg.to_string()),
            key: None,
            message: "expected KEY=VALUE, e.g. turn.realm=example.com".into(),
        })?;
        Ok(Override {
            key: key.trim().to_string(),
            value: value.to_string(),
            origin: Origin::Flag(arg.to_string()),
        })
    }

    /// The value as TOML (`5`, `true`, `["a", "b"]`), or as a plain string when it is not
    /// valid TOML (so `CALLBOX_TURN__REALM=example.com` needs no quotes).
    fn toml_value(&self) -> toml::Value {
        toml::from_str::<toml::Table>(&format!("v = {}", self.value))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(self.value.clone()))
    }
}

impl Config {
    /// Loads a file (if any), then applies overrides in order and validates the result.
    /// Returns every error found, each with its origin.
    pub fn load(file: Option<&ConfigFile>, overrides: &[Override]) -> Result<Config, Vec<ConfigError>> {
        let mut table = toml::Table::new();
        if let Some(file) = file {
            // Deserializing from text keeps spans, so the first error has a line and column.
            if let Err(e) = toml::from_str::<Config>(&file.text) {
                return Err(vec![file_error(file, &e)]);
            }
            table = toml::from_str(&file.text).expect("parsed above");
        }
        for o in overrides {
            set_path(&mut table, &o.key, o.toml_value()).map_err(|message| {
                vec![ConfigError {
                    origin: o.origin.clone(),
                    key: Some(o.key.clone()),
                    message,
                }]
            })?;
            if let Err(e) = toml::Value::Table(table.clone()).try_into::<Config>() {
                return Err(vec![ConfigError {
                    origin: o.origin.clone(),
                    key: Some(o.key.clone()),
                    message: e.message().to_string(),
                }]);
            }
        }
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| {
                vec![ConfigError {
                    origin: Origin::Config("configuration".into()),
                    key: None,
                    message: e.message().to_string(),
                }]
            })?;
        let problems = config.validate();
        if problems.is_empty() {
            return Ok(config);
        }
        Err(problems
            .into_iter()
            .map(|(key, message)| {
                let origin = overrides
                    .iter()
                    .rev()
                    .find(|o| key.starts_with(&o.key) || o.key.starts_with(&key))
                    .map(|o| o.origin.clone())
                    .or_else(|| file.and_then(|f| locate_key(f, &key)))
                    .unwrap_or_else(|| Origin::Config(file.map_or("defaults".into(), |f| f.path.clone())));
                ConfigError {
                    origin,
                    key: Some(key),
                    message,
                }
            })
            .collect())
    }
}

fn set_path(table: &mut toml::Table, key: &str, value: toml::Value) -> Result<(), String> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err("is not a dotted key such as turn.realm".into());
    }
    let (last, parents) = parts.split_last().expect("split yields one part");
    let mut cur = table;
    for p in parents {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{p}` is not a table"))?;
    }
    cur.insert(last.to_string(), value);
    Ok(())
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

fn file_error(file: &ConfigFile, e: &toml::de::Error) -> ConfigError {
    let span = e.span();
    let (line, column) = span.as_ref().map_or((1, 1), |s| line_col(&file.text, s.start));
    let key = span.and_then(|s| key_at(&file.text, s.start));
    ConfigError {
        origin: Origin::File {
            path: file.path.clone(),
            line,
            column,
        },
        key,
        message: e.message().trim().to_string(),
    }
}

/// The dotted key whose key or value covers `offset` in `text`.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let doc = toml_edit::Document::parse(text).ok()?;
    let mut path = Vec::new();
    fn walk(t: &dyn toml_edit::TableLike, offset: usize, path: &mut Vec<String>) -> bool {
        for (k, item) in t.iter() {
            let key_span = t.key(k).and_then(|k| k.span());
            let item_span = item.span();
            let hit = |s: Option<std::ops::Range<usize>>| s.is_some_and(|s| s.contains(&offset));
            if hit(key_span.clone()) || hit(item_span.clone()) {
                path.push(k.to_string());
                if let Some(inner) = item.as_table_like() {
                    walk(inner, offset, path);
                }
                return true;
            }
            if let Some(inner) = item.as_table_like() {
                path.push(k.to_string());
                if walk(inner, offset, path) {
                    return true;
                }
                path.pop();
            }
            if let Some(arr) = item.as_array_of_tables() {
                for (i, inner) in arr.iter().enumerate() {
                    path.push(format!("{k}.{i}"));
                    if walk(inner, offset, path) {
                        return true;
                    }
                    path.pop();
                }
            }
        }
        false
    }
    walk(doc.as_table(), offset, &mut path).then(|| path.join("."))
}

/// Where `key` (dotted) is written in the file, if it is.
fn locate_key(file: &ConfigFile, key: &str) -> Option<Origin> {
    let doc = toml_edit::Document::parse(file.text.as_str()).ok()?;
    let mut table: &dyn toml_edit::TableLike = doc.as_table();
    let parts: Vec<&str> = key.split('.').collect();
    let mut span = None;
    let mut i = 0;
    while i < parts.len() {
        let part = parts[i];
        let (k, item) = table.get_key_value(part)?;
        span = k.span().or(span);
        if let Some(arr) = item.as_array_of_tables() {
            let idx: usize = parts.get(i + 1)?.parse().ok()?;
            table = arr.get(idx)?;
            i += 2;
            continue;
        }
        match item.as_table_like() {
            Some(t) => table = t,
            None => break,
        }
        i += 1;
    }
    let (line, column) = line_col(&file.text, span?.start);
    Some(Origin::File {
        path: file.path.clone(),
        line,
        column,
    })
}
