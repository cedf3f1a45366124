//! The process's file descriptor budget.
//!
//! A process started from a login shell or a plain unit gets a soft `RLIMIT_NOFILE` of
//! 1024: a thousand idle TCP connections would then leave the relay unable to bind a
//! socket (508) and the health endpoints unable to accept. At start the soft limit is
//! raised to the hard one, and the connection caps of the listeners are fitted under it
//! with `general.reserved_descriptors` left over, so that a full listener never takes the
//! descriptors the relay, the store and the other listeners need.

use callbox_core::Config;

use crate::role::Role;

/// Descriptors of the relay besides its allocations: listener sockets per worker, the
/// mio poll and waker, per worker.
fn relay_fixed(config: &Config, workers: usize) -> u64 {
    (config.turn.listen.len() as u64 + 2) * workers as u64
}

/// Lowers the cap `key` to `room` when it is above, with a note; returns the cap in force.
fn lower_to(key: &str, cap: &mut usize, room: u64, limit: u64, notes: &mut Vec<String>) -> u64 {
    let room = room as usize;
    if *cap > room {
        notes.push(format!(
            "{key} lowered from {cap} to {room} to fit the open-files limit ({limit})"
        ));
        *cap = room;
    }
    *cap as u64
}

/// Raises the soft open-files limit to the hard limit; returns (before, after).
pub fn raise_limit() -> std::io::Result<(u64, u64)> {
    let (before, _) = rlimit::Resource::NOFILE.get()?;
    let after = rlimit::increase_nofile_limit(u64::MAX)?;
    Ok((before, after))
}

/// What the listeners and the relay may hold under `limit`. Lowers
/// `turn.tcp_max_connections`, `tls.max_connections` and `signal.max_connections` when
/// the caps do not fit, and says so.
pub fn fit(config: &mut Config, limit: u64, roles: &[Role], workers: usize) -> Vec<String> {
    let has = |r: Role| roles.contains(&r);
    let mut notes = Vec::new();
    let mut fixed = config.general.reserved_descriptors;
    if has(Role::Turn) {
        fixed += relay_fixed(config, workers) + u64::from(config.turn.total_quota);
        if config.turn.http_listen.is_some() {
            fixed += config.turn.http_max_connections as u64;
        }
    }
    if has(Role::Admin) {
        fixed += config.admin.max_connections as u64;
    }
    if fixed >= limit {
        notes.push(format!(
            "the open-files limit ({limit}) does not cover turn.total_quota ({}), the listener caps and \
             general.reserved_descriptors ({}): raise LimitNOFILE (or ulimit -n) or lower them; \
             allocations past it will be refused with 508",
            config.turn.total_quota, config.general.reserved_descriptors
        ));
    }
    // TCP clients of the relay, the one TLS port and signaling share what is left: the
    // relay's TCP gets at most half, the TLS port half of the rest, signaling the remainder.
    if has(Role::Turn) && config.turn.tcp {
        let room = (limit.saturating_sub(fixed) / 2).max(16);
        fixed += lower_to(
            "turn.tcp_max_connections",
            &mut config.turn.tcp_max_connections,
            room,
            limit,
            &mut notes,
        );
    }
    if has(Role::Signal) && !config.tls.listen_addrs().is_empty() {
        let room = (limit.saturating_sub(fixed) / 2).max(16);
        fixed += lower_to(
            "tls.max_connections",
            &mut config.tls.max_connections,
            room,
            limit,
            &mut notes,
        );
    }
    if has(Role::Signal) {
        let room = limit.saturating_sub(fixed).max(64);
        lower_to(
            "signal.max_connections",
            &mut config.signal.max_connections,
            room,
            limit,
            &mut notes,
        );
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles() -> Vec<Role> {
        vec![Role::Signal, Role::Turn, Role::Admin]
    }

    #[test]
    fn caps_are_fitted_under_the_limit_with_the_reserve_left() {
        let mut c = Config::default();
        c.turn.total_quota = 400;
        let notes = fit(&mut c, 1024, &roles(), 2);
        assert_eq!(notes.len(), 2, "{notes:?}");
        // 1024 - 256 reserved - 400 relay - 8 relay fixed - 64 turn http - 128 admin = 168,
        // half of it for the relay's TCP clients, the rest for signaling.
        assert_eq!(c.turn.tcp_max_connections, 84);
        assert_eq!(c.signal.max_connections, 84);
        let mut c = Config::default();
        assert!(fit(&mut c, 1 << 20, &roles(), 2).is_empty());
        assert_eq!(c.signal.max_connections, 10_000);
    }

    #[test]
    fn a_limit_below_the_relay_quota_is_reported() {
        let mut c = Config::default();
        let notes = fit(&mut c, 1024, &roles(), 2);
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(notes[0].contains("turn.total_quota"));
        assert_eq!(
            c.turn.tcp_max_connections, 16,
            "a floor, so TCP clients still get in"
        );
        assert_eq!(c.signal.max_connections, 64, "a floor, so signaling still works");
    }

    #[test]
    fn the_one_tls_port_gets_its_share_when_it_runs() {
        let mut c = Config::default();
        c.turn.total_quota = 400;
        c.tls.cert_file = Some("cert.pem".into());
        c.tls.key_file = Some("key.pem".into());
        let notes = fit(&mut c, 1024, &roles(), 2);
        assert_eq!(notes.len(), 3, "{notes:?}");
        // 168 left as above: 84 for the relay's TCP clients, 42 for the TLS port, 42 signal.
        assert_eq!(c.turn.tcp_max_connections, 84);
        assert_eq!(c.tls.max_connections, 42);
        assert_eq!(c.signal.max_connections, 64, "the floor");
        c.tls.listen = Some(vec![]);
        c.tls.max_connections = 4096;
        fit(&mut c, 1024, &roles(), 2);
        assert_eq!(
            c.tls.max_connections, 4096,
            "untouched when the port does not run"
        );
    }
}
