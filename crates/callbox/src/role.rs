//! The roles `callbox serve` can run in one process.

/// One role of the appliance (`--roles signal,turn,admin`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Role {
    /// WebSocket rooms and the ICE endpoint.
    Signal,
    /// STUN/TURN over UDP, TCP and TLS.
    Turn,
    /// The admin API over the store.
    Admin,
}

impl Role {
    /// The role's name, as on the command line and in logs and `/admin/v1/status`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Signal => "signal",
            Role::Turn => "turn",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    #[test]
    fn names_parse_back() {
        for r in Role::value_variants() {
            assert_eq!(Role::from_str(r.as_str(), false), Ok(*r));
        }
        assert!(Role::from_str("relay", false).is_err());
    }
}
