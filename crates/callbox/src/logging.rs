//! Logs go to journald when systemd started us (JOURNAL_STREAM is set), else to stdout.
//! The level is `general.log_level` unless `CALLBOX_LOG` is set (non-empty), and a reload
//! can change it while running.

use std::sync::OnceLock;

use callbox_core::config::{General, LogFormat};
use tracing_subscriber::prelude::*;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// The filter in force, replaceable by [`set_level`]; unset when `CALLBOX_LOG` decides.
static LEVEL: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// `CALLBOX_LOG`, when set and not empty.
fn from_env() -> Option<String> {
    std::env::var("CALLBOX_LOG").ok().filter(|v| !v.trim().is_empty())
}

/// Whether `general.log_level` can change while running (`CALLBOX_LOG` is not set).
pub fn level_reloadable() -> bool {
    LEVEL.get().is_some()
}

/// Puts `level` (an `EnvFilter` directive, e.g. `info` or `info,callbox_turn=debug`) in
/// force for every later event.
pub fn set_level(level: &str) -> Result<(), String> {
    let handle = LEVEL.get().ok_or("CALLBOX_LOG decides the level")?;
    let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
    handle.reload(filter).map_err(|e| e.to_string())
}

pub fn init(general: &General) -> anyhow::Result<()> {
    let env = from_env();
    let filter = match &env {
        Some(v) => EnvFilter::try_new(v)?,
        None => EnvFilter::try_new(&general.log_level)?,
    };
    let (filter, handle) = reload::Layer::new(filter);
    if env.is_none() {
        let _ = LEVEL.set(handle);
    }
    let want_journald = match general.log_format {
        LogFormat::Journald => true,
        LogFormat::Auto => std::env::var_os("JOURNAL_STREAM").is_some(),
        LogFormat::Stdout | LogFormat::Json => false,
    };
    let journald = if want_journald {
        match tracing_journald::layer() {
            Ok(layer) => Some(layer.with_syslog_identifier("callbox".into())),
            Err(e) if general.log_format == LogFormat::Journald => {
                anyhow::bail!("journald is not reachable: {e}")
            }
            // `auto` falls back to stdout.
            Err(_) => None,
        }
    } else {
        None
    };
    let stdout = journald.is_none();
    let json =
        (stdout && general.log_format == LogFormat::Json).then(|| tracing_subscriber::fmt::layer().json());
    let text = (stdout && general.log_format != LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(journald)
        .with(json)
        .with(text)
        .init();
    Ok(())
}
