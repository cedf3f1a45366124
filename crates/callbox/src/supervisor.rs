//! Talking to systemd (`Type=notify`): `READY=1` once every listener is bound and the store
//! is open, `RELOADING=1` around a SIGHUP reload, `STOPPING=1` at shutdown, and `WATCHDOG=1`
//! while the roles are healthy, so that a wedged data path stops the pings and systemd
//! restarts the service. Outside systemd (no `NOTIFY_SOCKET`) every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;

/// How recently every relay worker must have gone round its loop for the process to count
/// as healthy (a worker sleeps at most a quarter second between turns).
pub const WORKER_STALL: Duration = Duration::from_secs(5);

fn notify(states: &[NotifyState<'_>]) {
    // Not under systemd: nothing listens, nothing to do. A failed send is not worth more
    // than a debug line: systemd's own timeouts tell the operator.
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Every listener is bound and the store is open.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload (SIGHUP) starts; [`reloaded`] ends it.
pub fn reloading() {
    notify(&[NotifyState::Reloading]);
}

pub fn reloaded() {
    notify(&[NotifyState::Ready]);
}

/// The shutdown began.
pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

/// Pings systemd's watchdog at half its interval while `healthy()` says so. The pings come
/// from the tokio runtime, so a stuck runtime stops them too.
pub fn spawn_watchdog(healthy: impl Fn() -> bool + Send + 'static) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    tracing::info!(
        interval_ms = interval.as_millis() as u64,
        "systemd watchdog enabled"
    );
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval / 2);
        let mut warned = false;
        loop {
            tick.tick().await;
            if healthy() {
                notify(&[NotifyState::Watchdog]);
                warned = false;
            } else if !warned {
                warned = true;
                tracing::error!("a relay worker has stopped going round its loop: watchdog pings stop");
            }
        }
    });
}
