//! Logs go to journald when systemd started us (JOURNAL_STREAM is set), else to stdout.

use callbox_core::config::{General, LogFormat};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

pub fn init(general: &General) -> anyhow::Result<()> {
    let filter =
        EnvFilter::try_from_env("CALLBOX_LOG").or_else(|_| EnvFilter::try_new(&general.log_level))?;
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
