//! Logs go to journald when systemd started us (JOURNAL_STREAM is set), else to stdout.

use callbox_core::config::{General, LogFormat};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

pub fn init(general: &General) -> anyhow::Result<()> {
    let filter =
        EnvFilter::try_from_env("CALLBOX_LOG").or_else(|_| EnvFilter::try_new(&general.log_level))?;
    let use_journald = match general.log_format {
        LogFormat::Journald => true,
        LogFormat::Auto => std::env::var_os("JOURNAL_STREAM").is_some(),
        LogFormat::Stdout | LogFormat::Json => false,
    };
    let registry = tracing_subscriber::registry().with(filter);
    if use_journald {
        match tracing_journald::layer() {
            Ok(layer) => {
                registry
                    .with(layer.with_syslog_identifier("callbox".into()))
                    .init();
                return Ok(());
            }
            Err(e) if general.log_format == LogFormat::Journald => {
                anyhow::bail!("journald is not reachable: {e}")
            }
            Err(_) => {}
        }
        let registry = tracing_subscriber::registry().with(EnvFilter::try_new(&general.log_level)?);
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout())),
            )
            .init();
        return Ok(());
    }
    if general.log_format == LogFormat::Json {
        registry.with(tracing_subscriber::fmt::layer().json()).init();
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout())),
            )
            .init();
    }
    Ok(())
}
