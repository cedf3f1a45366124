//! SIGHUP (`systemctl reload`): re-read what can change while running, keep every session.
//!
//! The TLS certificate is read again. The configuration is loaded again from the same
//! sources (file, environment, flags): one with an error is refused, each error logged with
//! its key and location, and the running configuration stays. Otherwise every changed key
//! is logged, and these take effect at once:
//! - the peer policy (`turn.allow_peers`, `turn.deny_peers`): live permissions and
//!   channels are judged again at their next packet;
//! - `auth.secrets` (new values; switching between secrets in the file and secrets in the
//!   store waits for a restart, since admin's rotation depends on it) and
//!   `auth.static_users`: new credentials verify at once, and users removed or given a
//!   new password lose their allocations;
//! - `general.log_level` (unless `CALLBOX_LOG` is set, which wins).
//!
//! Every other key waits for the next restart.

use std::net::SocketAddr;

use callbox_core::Config;
use callbox_core::config::ConfigError;

use crate::settings::Loaded;
use crate::supervisor;
use crate::tls::Tls;

/// Loads the configuration again from the sources the process started with.
pub type LoadConfig = Box<dyn Fn() -> Result<Loaded, Vec<ConfigError>> + Send + Sync>;

/// Keys that take effect without a restart (`auth.secrets` with the exception above).
pub const LIVE_KEYS: &[&str] = &[
    "turn.allow_peers",
    "turn.deny_peers",
    "auth.secrets",
    "auth.static_users",
    "general.log_level",
];

/// What a reload needs: how to load, what runs, and the configuration in force.
pub struct Reloader {
    pub load: LoadConfig,
    /// The configuration as loaded from its sources (what a reload is compared with), with
    /// the live keys as last applied: keys waiting for a restart are named at every reload.
    pub as_loaded: Config,
    /// The configuration in force: as loaded, after start-up adjusted it (caps fitted to
    /// the open-files limit, `external_ip = "auto"` resolved).
    pub running: Config,
    pub tls: Option<Tls>,
    /// The access loop, which puts new secrets and static users in force.
    pub access: tokio::sync::mpsc::Sender<crate::access::FromConfig>,
    pub turn: Option<callbox_turn::TurnControl>,
    /// Every listener address of this process (the relay's peer policy refuses them).
    pub turn_listeners: Vec<SocketAddr>,
}

impl Reloader {
    /// Handles SIGHUP until the process ends.
    pub fn spawn(mut self) {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("no SIGHUP handler: certificates reload on their timer only");
            return;
        };
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                supervisor::reloading();
                self.reload();
                supervisor::reloaded();
            }
        });
    }

    fn reload(&mut self) {
        match &self.tls {
            Some(tls) => {
                tracing::info!("SIGHUP: reloading the TLS certificate and the configuration");
                let _ = tls.certs.reload();
            }
            None => tracing::info!("SIGHUP: reloading the configuration"),
        }
        let next = match (self.load)() {
            Ok(loaded) => loaded.config,
            Err(errors) => {
                for e in &errors {
                    tracing::error!("configuration not reloaded: {e}");
                }
                tracing::error!(errors = errors.len(), "the running configuration stays");
                return;
            }
        };
        let changed = changed_keys(&self.as_loaded, &next);
        if changed.is_empty() {
            tracing::info!("configuration reloaded: nothing changed");
            return;
        }
        // Secrets moving between the file and the store change who manages them.
        let secrets_move = self.running.auth.secrets.is_empty() != next.auth.secrets.is_empty();
        // `CALLBOX_LOG` decides the level when it is set: then the key waits like any other.
        let level_reloadable = crate::logging::level_reloadable();
        if !level_reloadable && changed.iter().any(|k| k == "general.log_level") {
            tracing::warn!("general.log_level changed, but CALLBOX_LOG is set and decides the level");
        }
        let (mut live, later): (Vec<&String>, Vec<&String>) = changed.iter().partition(|k| {
            LIVE_KEYS.contains(&k.as_str())
                && !(k.as_str() == "auth.secrets" && secrets_move)
                && (k.as_str() != "general.log_level" || level_reloadable)
        });
        let has = |key: &str| live.iter().any(|k| k.as_str() == key);
        if has("turn.allow_peers") || has("turn.deny_peers") {
            for c in [&mut self.as_loaded, &mut self.running] {
                c.turn.allow_peers = next.turn.allow_peers.clone();
                c.turn.deny_peers = next.turn.deny_peers.clone();
            }
            if let Some(turn) = &self.turn {
                turn.set_policy(callbox_turn::peer_policy_for(&self.running, &self.turn_listeners));
            }
        }
        if has("auth.secrets") || has("auth.static_users") {
            for c in [&mut self.as_loaded, &mut self.running] {
                if has("auth.secrets") {
                    c.auth.secrets = next.auth.secrets.clone();
                }
                c.auth.static_users = next.auth.static_users.clone();
            }
            if self
                .access
                .try_send(crate::access::FromConfig::of(&self.running))
                .is_err()
            {
                tracing::error!("the access loop did not take the reloaded auth keys");
            }
        }
        if has("general.log_level") {
            match crate::logging::set_level(&next.general.log_level) {
                Ok(()) => {
                    for c in [&mut self.as_loaded, &mut self.running] {
                        c.general.log_level = next.general.log_level.clone();
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "general.log_level not applied; the level in force stays");
                    live.retain(|k| k.as_str() != "general.log_level");
                }
            }
        }
        tracing::info!(
            applied = %join(&live),
            at_next_restart = %join(&later),
            "configuration reloaded"
        );
    }
}

fn join(keys: &[&String]) -> String {
    if keys.is_empty() {
        "-".into()
    } else {
        keys.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(",")
    }
}

/// The dotted keys whose values differ. Secrets are compared as they are, not as the
/// redacted text the configuration prints.
pub fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let flat = |c: &Config| -> Vec<(String, String)> {
        let value: toml::Value = toml::from_str(&c.to_redacted_toml()).unwrap_or(toml::Value::Integer(0));
        let mut out = Vec::new();
        if let toml::Value::Table(sections) = value {
            for (section, keys) in sections {
                if let toml::Value::Table(keys) = keys {
                    for (key, v) in keys {
                        out.push((format!("{section}.{key}"), v.to_string()));
                    }
                }
            }
        }
        out
    };
    let (a, b) = (flat(old), flat(new));
    let mut keys: Vec<String> = a
        .iter()
        .filter(|(k, v)| b.iter().find(|(k2, _)| k2 == k).is_none_or(|(_, v2)| v2 != v))
        .map(|(k, _)| k.clone())
        .chain(
            b.iter()
                .filter(|(k, _)| !a.iter().any(|(k2, _)| k2 == k))
                .map(|(k, _)| k.clone()),
        )
        .collect();
    // Redacted in the text above; compared here.
    if old.auth.secrets != new.auth.secrets {
        keys.push("auth.secrets".into());
    }
    if old.auth.static_users != new.auth.static_users {
        keys.push("auth.static_users".into());
    }
    if old.signal.jwt_secret != new.signal.jwt_secret {
        keys.push("signal.jwt_secret".into());
    }
    if old.signal.api_keys != new.signal.api_keys {
        keys.push("signal.api_keys".into());
    }
    keys.sort();
    keys.dedup();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        let file = callbox_core::config::ConfigFile {
            path: "t.toml".into(),
            text: text.into(),
        };
        Config::load(Some(&file), &[]).unwrap()
    }

    #[test]
    fn changed_keys_name_every_difference_secrets_included() {
        let a = config("[turn]\nallow_peers = []\n[auth]\nsecrets = [\"one-secret-that-is-long\"]\n");
        let b = config(
            "[turn]\nallow_peers = [\"10.0.0.0/8\"]\n[signal]\nroom_capacity = 4\n[auth]\nsecrets = [\"two-secret-that-is-long\"]\n",
        );
        assert_eq!(
            changed_keys(&a, &b),
            ["auth.secrets", "signal.room_capacity", "turn.allow_peers"]
        );
        assert!(changed_keys(&a, &a).is_empty());
    }
}
