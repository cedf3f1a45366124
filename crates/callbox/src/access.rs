//! Keeps the running roles in step with the store: TURN secrets, static users, API keys
//! and bans are read into an immutable snapshot, and a changed snapshot is pushed to the
//! relay (an `ArcSwap` its workers load between batches, never a lock on the packet path)
//! and to signaling.
//!
//! Changes arrive two ways: the admin handlers notify [`Access::changed`] after a write
//! (applied in milliseconds), and the store is polled every [`POLL`] so changes made by
//! another process on the same database (`callbox admin` run locally, a second callbox)
//! and time-based ones (a secret's overlap ending, a ban expiring) apply within a second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use callbox_core::credentials::{LongTermKey, SecretSet};
use callbox_core::time::{UnixSecs, unix_now};
use callbox_core::{Cidr, Secret};
use callbox_store::{Health, Store, UserKey};
use callbox_turn::Credentials;
use callbox_turn::TurnControl;

/// How often the store is read for changes made elsewhere.
pub const POLL: Duration = Duration::from_millis(250);
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// What the roles need from the store, read in one go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Active secrets, the signing one first.
    pub secrets: Vec<String>,
    pub users: Vec<UserKey>,
    /// (SHA-256 of the key, name), sorted so two reads of the same keys compare equal.
    pub api_keys: Vec<([u8; 32], String)>,
    /// (ban id, network), by id.
    pub bans: Vec<(i64, Cidr)>,
}

impl Snapshot {
    pub fn read(store: &Store, realm: &str, now: UnixSecs) -> callbox_store::Result<Snapshot> {
        let mut api_keys: Vec<_> = store
            .api_key_digests()?
            .into_iter()
            .map(|k| (k.sha256, k.name))
            .collect();
        api_keys.sort();
        Ok(Snapshot {
            secrets: store.active_secrets(now)?.into_iter().map(|s| s.secret).collect(),
            users: store.users(realm)?,
            api_keys,
            bans: store
                .active_bans(now)?
                .into_iter()
                .map(|b| (b.id, b.network))
                .collect(),
        })
    }
}

impl Snapshot {
    /// As the cluster carries it.
    pub fn to_wire(&self) -> callbox_cluster::AccessWire {
        callbox_cluster::AccessWire {
            secrets: self.secrets.clone(),
            users: self
                .users
                .iter()
                .map(|u| (u.name.clone(), hex(&u.long_term_key)))
                .collect(),
            api_keys: self
                .api_keys
                .iter()
                .map(|(digest, name)| (hex(digest), name.clone()))
                .collect(),
            bans: self.bans.iter().map(|(id, n)| (*id, n.to_string())).collect(),
        }
    }

    /// From the cluster; an entry that does not decode is left out (and logged).
    pub fn from_wire(w: &callbox_cluster::AccessWire) -> Snapshot {
        let bad = |what: &str, name: &str| {
            tracing::warn!(what, name, "a cluster access entry does not decode; left out")
        };
        let mut users = Vec::new();
        for (name, key) in &w.users {
            match unhex::<16>(key) {
                Some(long_term_key) => users.push(UserKey {
                    name: name.clone(),
                    long_term_key,
                }),
                None => bad("user", name),
            }
        }
        let mut api_keys = Vec::new();
        for (digest, name) in &w.api_keys {
            match unhex::<32>(digest) {
                Some(d) => api_keys.push((d, name.clone())),
                None => bad("api key", name),
            }
        }
        let mut bans = Vec::new();
        for (id, net) in &w.bans {
            match net.parse::<Cidr>() {
                Ok(n) => bans.push((*id, n)),
                Err(_) => bad("ban", net),
            }
        }
        Snapshot {
            secrets: w.secrets.clone(),
            users,
            api_keys,
            bans,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// How this node takes part in the cluster's access snapshots.
#[derive(Debug, Clone)]
pub enum AccessLink {
    /// The admin node: what it reads from its store goes to the cluster.
    Publish(callbox_cluster::Cluster),
    /// Every other node: snapshots come from the cluster, not from a store.
    Subscribe(callbox_cluster::Cluster),
}

/// The access keys of the configuration (`auth.secrets`, `auth.static_users`), as a
/// reload replaces them.
#[derive(Debug, Clone)]
pub struct FromConfig {
    pub secrets: Option<SecretSet>,
    pub users: HashMap<String, LongTermKey>,
}

impl FromConfig {
    pub fn of(config: &callbox_core::Config) -> Self {
        let realm = &config.turn.realm;
        Self {
            secrets: SecretSet::new(config.auth.secrets.clone()),
            users: config
                .auth
                .static_users
                .iter()
                .map(|u| {
                    let key = callbox_core::credentials::long_term_key(&u.name, realm, u.password.expose());
                    (u.name.clone(), key)
                })
                .collect(),
        }
    }
}

/// Where snapshots come from and where they go.
pub struct Access {
    /// `None` when the store could not be opened: the roles run on their first snapshot.
    pub store: Option<Arc<Mutex<Store>>>,
    pub health: Arc<Health>,
    pub realm: String,
    /// `auth.secrets` from the configuration: when set, they are the secrets and the
    /// store's are ignored (the admin API refuses rotation).
    pub config_secrets: Option<SecretSet>,
    /// `auth.static_users` from the configuration, beside the store's.
    pub config_users: HashMap<String, LongTermKey>,
    pub retention_days: u64,
    pub changed: Arc<tokio::sync::Notify>,
    /// The cluster, when `cluster.redis_url` is set.
    pub cluster: Option<AccessLink>,
    /// Where a subscriber keeps the last snapshot it applied (for a start while Redis is
    /// away).
    pub cache_file: Option<std::path::PathBuf>,
    /// New configuration access keys from a reload.
    pub reloaded: Option<tokio::sync::mpsc::Receiver<FromConfig>>,
    pub turn: Option<TurnControl>,
    pub signal: Option<callbox_signal::SignalControl>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("realm", &self.realm)
            .finish_non_exhaustive()
    }
}

impl Access {
    /// The secrets to use: the configuration's, else the store's (signing first).
    pub fn secret_set(&self, snap: &Snapshot) -> Option<SecretSet> {
        if let Some(c) = &self.config_secrets {
            return Some(c.clone());
        }
        SecretSet::new(snap.secrets.iter().map(|s| Secret::new(s.clone())).collect())
    }

    /// The relay's credentials for a snapshot.
    pub fn credentials(&self, snap: &Snapshot, secrets: SecretSet) -> Credentials {
        let mut static_users = self.config_users.clone();
        for u in &snap.users {
            // A user in the configuration file wins over one of the same name in the store.
            static_users.entry(u.name.clone()).or_insert(u.long_term_key);
        }
        Credentials {
            secrets: Some(secrets),
            static_users,
            banned: snap.bans.iter().map(|(_, n)| *n).collect(),
        }
    }

    fn apply(&self, prev: &Snapshot, snap: &Snapshot) {
        let Some(secrets) = self.secret_set(snap) else {
            tracing::warn!("the store holds no active TURN secret; keeping the previous ones");
            return;
        };
        if let Some(signal) = &self.signal {
            // The signing secrets `/v1/ice-servers` and `welcome` mint with.
            signal.set_ice_secrets(secrets.clone());
        }
        let added: Vec<Cidr> = snap
            .bans
            .iter()
            .filter(|b| !prev.bans.contains(b))
            .map(|(_, n)| *n)
            .collect();
        let removed_users: Vec<&String> = prev
            .users
            .iter()
            .map(|u| &u.name)
            .filter(|name| {
                !snap.users.iter().any(|u| &u.name == *name) && !self.config_users.contains_key(*name)
            })
            .collect();
        if let Some(turn) = &self.turn {
            // Credentials (with the bans, without removed users) first, then the kicks: the
            // workers load the new credentials before handling a kick, so a banned client
            // or a removed user cannot allocate again in between.
            turn.set_credentials(self.credentials(snap, secrets));
            if !added.is_empty() {
                turn.kick_clients(added.clone());
            }
            for name in &removed_users {
                turn.kick_user(name);
            }
        }
        if let Some(signal) = &self.signal {
            if snap.api_keys != prev.api_keys {
                signal.set_api_keys(snap.api_keys.iter().cloned().collect());
            }
            // Installing bans sweeps every room for their addresses: only when they changed.
            if snap.bans != prev.bans {
                signal.set_bans(snap.bans.iter().map(|(_, n)| *n).collect());
            }
        }
        tracing::info!(
            secrets = snap.secrets.len(),
            users = snap.users.len(),
            api_keys = snap.api_keys.len(),
            bans = snap.bans.len(),
            new_bans = added.len(),
            removed_users = removed_users.len(),
            "access snapshot applied"
        );
    }

    /// Puts a reloaded configuration's secrets and static users in force. Users it
    /// removed, or whose password it changed, lose their allocations (unless the store
    /// still has the name).
    fn replace_from_config(&mut self, next: FromConfig, current: &Snapshot) {
        let in_store = |name: &String| current.users.iter().any(|u| &u.name == name);
        let dropped: Vec<String> = self
            .config_users
            .iter()
            .filter(|(name, key)| next.users.get(*name) != Some(key) && !in_store(name))
            .map(|(name, _)| name.clone())
            .collect();
        self.config_secrets = next.secrets;
        self.config_users = next.users;
        self.apply(current, current);
        if let Some(turn) = &self.turn {
            for name in &dropped {
                turn.kick_user(name);
            }
        }
        tracing::info!(
            static_users = self.config_users.len(),
            dropped = dropped.len(),
            "auth keys from the configuration applied"
        );
    }

    async fn read(&self) -> Option<Snapshot> {
        let store = Arc::clone(self.store.as_ref()?);
        let realm = self.realm.clone();
        let now = unix_now();
        let r = tokio::task::spawn_blocking(move || {
            let s = store.lock().unwrap_or_else(|e| e.into_inner());
            Snapshot::read(&s, &realm, now)
        })
        .await;
        match r {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                self.health.failed();
                tracing::warn!(error = %e, "reading the store failed; roles keep their last snapshot");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "store reader failed");
                None
            }
        }
    }

    async fn prune(&self) {
        let Some(store) = self.store.as_ref().map(Arc::clone) else {
            return;
        };
        if self.retention_days == 0 {
            return;
        }
        let before = unix_now().saturating_sub(self.retention_days.saturating_mul(86_400));
        let r = tokio::task::spawn_blocking(move || {
            store
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .prune_history(before)
        })
        .await;
        match r {
            Ok(Ok(n)) if n > 0 => tracing::info!(rows = n, "history past its retention deleted"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                self.health.failed();
                tracing::warn!(error = %e, "pruning history failed");
            }
            Err(e) => tracing::warn!(error = %e, "history pruner failed"),
        }
    }

    /// A subscriber's next snapshot from the cluster, when its version is not `seen`.
    async fn read_cluster(
        &self,
        cluster: &callbox_cluster::Cluster,
        seen: &mut Option<String>,
    ) -> Option<Snapshot> {
        let version = cluster.access_version().await.ok()??;
        if seen.as_ref() == Some(&version) {
            return None;
        }
        let (version, wire) = match cluster.fetch_access().await {
            Ok(Some(v)) => v,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "the cluster's access snapshot does not read; keeping the last one");
                return None;
            }
        };
        *seen = Some(version);
        cluster.metrics().access_applied();
        if let Some(path) = &self.cache_file
            && let Ok(json) = serde_json::to_vec(&wire)
            && let Err(e) = crate::state::write_private(path, &json)
        {
            tracing::warn!(error = %e, "the cluster's access snapshot was not cached on disk");
        }
        Some(Snapshot::from_wire(&wire))
    }

    /// The admin node puts `current` in the cluster unless Redis already holds it (a
    /// Redis that restarted empty is refilled here).
    async fn publish(cluster: &callbox_cluster::Cluster, current: &Snapshot) {
        let wire = current.to_wire();
        let (_, version) = wire.encode();
        if cluster.access_version().await.ok().flatten().as_deref() == Some(version.as_str()) {
            return;
        }
        match cluster.publish_access(&wire).await {
            Ok(_) => tracing::info!(
                version = &version[..12],
                "access snapshot published to the cluster"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "access snapshot not published; retried at the next heartbeat")
            }
        }
    }

    /// Applies snapshots as they change, starting from the one the roles started with.
    pub async fn run(mut self, mut current: Snapshot) {
        let mut last_prune = None::<tokio::time::Instant>;
        let mut reloaded = self.reloaded.take();
        let mut seen = None::<String>;
        let mut last_cluster = None::<tokio::time::Instant>;
        loop {
            let reload = async {
                match reloaded.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = self.changed.notified() => {}
                () = tokio::time::sleep(POLL) => {}
                Some(next) = reload => self.replace_from_config(next, &current),
            }
            let next = match &self.cluster {
                Some(AccessLink::Subscribe(c)) => self.read_cluster(c, &mut seen).await,
                _ => self.read().await,
            };
            let changed = match next {
                Some(next) if next != current => {
                    self.apply(&current, &next);
                    current = next;
                    true
                }
                _ => false,
            };
            // The admin node publishes a change at once, and checks every heartbeat that
            // Redis still holds its snapshot.
            if let Some(AccessLink::Publish(c)) = &self.cluster
                && (changed || last_cluster.is_none_or(|t| t.elapsed() >= c.settings().heartbeat))
            {
                last_cluster = Some(tokio::time::Instant::now());
                Self::publish(c, &current).await;
            }
            if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                last_prune = Some(tokio::time::Instant::now());
                self.prune().await;
            }
        }
    }
}
