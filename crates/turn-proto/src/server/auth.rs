//! Long-term credential checks (RFC 8489 section 9.2) against REST secrets, static users
//! and the allocation a 5-tuple already has.

use std::sync::Arc;

use callbox_core::credentials::{LongTermKey, RestUsername};

use super::message::{Refusal, TurnError};
use super::types::AuthFailure;
use super::{Request, Server};
use crate::nonce::NonceCheck;

/// Who a request authenticated as.
pub(crate) struct Authenticated {
    pub username: String,
    /// The quota key: the REST user id part, or the static user's name.
    pub user: String,
    pub key: LongTermKey,
}

/// Whether a REST credential's expiry is checked: at Allocate, not at later requests of
/// the allocation (refreshes keep working after a REST credential expires).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    Checked,
    Ignored,
}

impl Server {
    /// A 401 or 438 with a fresh NONCE, counted under `why`.
    fn challenge(&mut self, req: &Request<'_>, stale: bool, why: AuthFailure) -> Refusal {
        self.stats.auth_failures[why as usize] += 1;
        let nonce = self.nonces.issue(&req.from, self.nonce_secs(req.now));
        Refusal::unsigned(if stale {
            TurnError::StaleNonce { nonce }
        } else {
            TurnError::Unauthorized { nonce }
        })
    }

    /// Checks the request's long-term credential. The allocation of this 5-tuple, if
    /// any, decides the key, used as is.
    pub(crate) fn authenticate(
        &mut self,
        req: &Request<'_>,
        expiry: Expiry,
    ) -> Result<Authenticated, Refusal> {
        let msg = req.msg;
        if !msg.has_integrity() {
            return Err(self.challenge(req, false, AuthFailure::Challenge));
        }
        let (Ok(Some(username)), Ok(Some(realm)), Ok(Some(nonce))) =
            (msg.username(), msg.realm(), msg.nonce())
        else {
            self.stats.auth_failures[AuthFailure::BadRequest as usize] += 1;
            return Err(Refusal::unsigned(TurnError::MissingCredentials));
        };
        match self.nonces.check(
            nonce,
            &req.from,
            self.nonce_secs(req.now),
            self.cfg.nonce_lifetime.as_secs(),
        ) {
            NonceCheck::Valid => {}
            NonceCheck::Stale | NonceCheck::Invalid => {
                return Err(self.challenge(req, true, AuthFailure::Stale));
            }
        }
        if realm != self.cfg.realm {
            return Err(self.challenge(req, false, AuthFailure::BadIntegrity));
        }
        if let Some(a) = self
            .by_client
            .get(&(req.from, req.transport))
            .and_then(|id| self.allocations.get(id))
        {
            if a.username != username {
                self.stats.auth_failures[AuthFailure::WrongCredentials as usize] += 1;
                return Err(Refusal::unsigned(TurnError::WrongCredentials));
            }
            if !msg.verify_integrity(&a.key) {
                return Err(self.challenge(req, false, AuthFailure::BadIntegrity));
            }
            return Ok(Authenticated {
                username: a.username.clone(),
                user: a.user.clone(),
                key: a.key,
            });
        }
        let creds = Arc::clone(&self.creds);
        if let Some(rest) = RestUsername::parse(username) {
            let Some(secrets) = &creds.secrets else {
                return Err(self.challenge(req, false, AuthFailure::UnknownUser));
            };
            // Every secret is tried, so the time taken does not tell which one matched.
            let mut found = None;
            for key in secrets.rest_keys(username, &self.cfg.realm) {
                if msg.verify_integrity(&key) && found.is_none() {
                    found = Some(key);
                }
            }
            let Some(key) = found else {
                return Err(self.challenge(req, false, AuthFailure::BadIntegrity));
            };
            if expiry == Expiry::Checked {
                if rest.expiry < req.unix_now {
                    return Err(self.challenge(req, false, AuthFailure::Expired));
                }
                if rest.expiry
                    > req
                        .unix_now
                        .saturating_add(self.cfg.max_credential_expiry.as_secs())
                {
                    return Err(self.challenge(req, false, AuthFailure::ExpiryTooFar));
                }
            }
            let user = if rest.user.is_empty() { username } else { rest.user };
            return Ok(Authenticated {
                username: username.to_string(),
                user: user.to_string(),
                key,
            });
        }
        match creds.static_users.get(username) {
            Some(key) if msg.verify_integrity(key) => Ok(Authenticated {
                username: username.to_string(),
                user: username.to_string(),
                key: *key,
            }),
            Some(_) => Err(self.challenge(req, false, AuthFailure::BadIntegrity)),
            None => Err(self.challenge(req, false, AuthFailure::UnknownUser)),
        }
    }
}
