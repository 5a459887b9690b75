//! The login's gateway-wide part: what the logins of every Official Account share. The
//! sessions and the ledger outlive a reload (`app::Lasting` holds them); the keys, the
//! identity's envelope and the browser policy are derived from the configuration, built
//! once per configuration and handed to each account's [`Login`](super::Login).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderName, HeaderValue};

use crate::config::{Config, IdentityConfig};
use crate::identity::{Claims, IdentityError, KeySet, SNAPSHOT_HEADER, plain_headers};
use crate::login::decision::Identity;
use crate::login::flight::FlightKey;
use crate::login::ledger::LoginLedger;
use crate::login::{BrowserPolicy, StateKey};
use crate::metrics::LoginMetrics;
use crate::session::{CachedSession, Session, SessionCache};
use crate::wechat::WeChatError;

#[derive(Debug, thiserror::Error)]
pub enum LoginSetupError {
    #[error("session.secret: {0}")]
    State(#[from] crate::login::StateError),
    #[error("identity: {0}")]
    Identity(#[from] IdentityError),
    #[error("wechat: {0}")]
    WeChat(#[from] WeChatError),
    #[error("session store: {0}")]
    Store(#[from] crate::session::StoreOpenError),
    #[error(transparent)]
    Access(#[from] crate::access::AccessError),
}

/// What every account's login shares.
pub struct Shared {
    pub(super) sessions: Arc<SessionCache>,
    /// Single flights, used states and limits: the gateway's, outliving this configuration.
    pub(super) ledger: Arc<LoginLedger>,
    pub(super) metrics: LoginMetrics,
    /// Seals the pending-login cookie (from `session.secret`).
    pub(super) state_key: StateKey,
    /// Seals a callback's outcome for its second load (from `session.secret`).
    pub(super) flight_key: FlightKey,
    pub(super) issuer: Issuer,
    pub(super) browsers: BrowserPolicy,
    /// How old a profile may get before it is fetched again (`session.profile_refresh`).
    pub(super) profile_refresh: Duration,
}

impl Shared {
    pub fn new(
        config: &Config,
        sessions: Arc<SessionCache>,
        ledger: Arc<LoginLedger>,
        metrics: LoginMetrics,
    ) -> Result<Self, LoginSetupError> {
        let secret = config.session.secret.expose().as_bytes();
        Ok(Shared {
            sessions,
            ledger,
            metrics,
            state_key: StateKey::derive(secret)?,
            flight_key: FlightKey::derive(secret),
            issuer: Issuer::from_config(&config.identity)?,
            browsers: BrowserPolicy::from_config(&config.wechat.browsers),
            profile_refresh: config.session.profile_refresh,
        })
    }

    pub fn sessions(&self) -> &Arc<SessionCache> {
        &self.sessions
    }
}

/// The identity JWT's signer and envelope (`[identity]`), and the headers a grant carries.
pub(super) struct Issuer {
    keys: KeySet,
    header: HeaderName,
    issuer: String,
    audience: String,
    ttl: Duration,
    /// Names the signing key and claim settings, so tokens cached with sessions under
    /// another configuration are minted again after a reload.
    signer: u64,
    plain_headers: bool,
}

impl Issuer {
    fn from_config(identity: &IdentityConfig) -> Result<Self, IdentityError> {
        let (current, previous) = identity.key_sources();
        let keys = KeySet::load(&current, &previous)?;
        Ok(Issuer {
            signer: signer_of(identity, &keys),
            keys,
            header: HeaderName::from_bytes(identity.header.as_bytes())
                .unwrap_or_else(|_| HeaderName::from_static("x-wechat-identity")),
            issuer: identity.issuer.clone(),
            audience: identity.audience.clone(),
            ttl: identity.ttl,
            plain_headers: identity.plain_headers,
        })
    }

    /// The identity headers of a session: the JWT (minted once and cached with the
    /// session), and the plain headers or the snapshot marker.
    pub(super) fn headers(
        &self,
        cached: &CachedSession,
        now: SystemTime,
    ) -> Result<Identity, IdentityError> {
        let minted =
            cached.identity_or_mint(now, self.signer, |s| self.keys.mint(&self.claims(s, now)))?;
        let mut headers = vec![(self.header.clone(), minted.value().clone())];
        if self.plain_headers {
            headers.extend(plain_headers(&self.claims(&cached.session, now)));
        } else if cached.session.snapshot {
            headers.push((SNAPSHOT_HEADER, HeaderValue::from_static("1")));
        }
        Ok(headers)
    }

    pub(super) fn claims(&self, session: &Session, now: SystemTime) -> Claims {
        Claims::new(
            session.identity_facts(),
            &self.issuer,
            &self.audience,
            self.ttl,
            now,
        )
    }

    pub(super) fn jwks(&self) -> &Bytes {
        self.keys.jwks()
    }
}

/// A fingerprint of what a minted identity depends on: the signing key and the claims'
/// envelope. HS256 keys share a kid scheme with their secret, so the secret's hash counts too.
fn signer_of(identity: &IdentityConfig, keys: &KeySet) -> u64 {
    use sha2::Digest;
    let digest = sha2::Sha256::new()
        .chain_update(keys.signing_kid().as_bytes())
        .chain_update([0])
        .chain_update(identity.secret.expose().as_bytes())
        .chain_update([0])
        .chain_update(identity.issuer.as_bytes())
        .chain_update([0])
        .chain_update(identity.audience.as_bytes())
        .chain_update(identity.ttl.as_millis().to_le_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}
