//! One basic access_token and one jsapi_ticket per account, shared by every gateway over the
//! session store (WeChat's "中控" server): kept with their expiry, refreshed ahead of it by a
//! single flight — one task per gateway, one gateway per store through a lease — and fetched
//! again once when WeChat calls the token stale (40001/42001). The token never leaves here.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::Secret;
use crate::session::{Clock, SessionStore, StoreError};
use crate::wechat::{Errcode, ErrorKind, WeChatClient, WeChatError};

/// A token or ticket is refreshed once it has less than this left (or a quarter of its life,
/// for short-lived ones); it stays in use meanwhile.
const REFRESH_AHEAD: Duration = Duration::from_secs(10 * 60);
/// Treated as expired this long (at most a tenth of its life) before WeChat's stated end:
/// clocks and transit differ.
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);
/// The store keeps a credential this long past its end, so every gateway still sees which
/// generation is being replaced (the refresh lease is named after it).
const KEPT_AFTER_END: Duration = Duration::from_secs(3600);
/// How often a gateway waiting on another's refresh looks at the store.
const POLL: Duration = Duration::from_millis(50);

/// Why no ticket could be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CredentialError {
    #[error("WeChat refused the {what}: {cause}")]
    WeChat { what: Fetched, cause: Cause },
    #[error("shared store: {0}")]
    Store(#[from] StoreError),
    /// Another gateway holds the refresh lease and did not finish within its time.
    #[error("another gateway's refresh of the jsapi_ticket did not finish in time")]
    Busy,
}

/// What went wrong at WeChat, as every gateway sharing the store learns it: a failed refresh
/// is remembered for the lease's time, so no gateway asks WeChat again meanwhile (40164 or a
/// spent quota would only be made worse by asking on every page view).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cause {
    /// 40164: the gateway's egress address is not in the IP whitelist.
    IpNotWhitelisted,
    /// 89503: a call from outside the whitelist awaits the administrator's confirmation.
    IpAwaitsConfirmation,
    /// 40125 (or 40001 from stable_token): the AppSecret is wrong or was reset.
    InvalidAppsecret,
    /// 40013: the appid is wrong.
    InvalidAppid,
    /// 45009: the daily quota of the API is spent.
    DailyQuota,
    /// 45011: the per-minute quota is spent.
    MinuteQuota,
    /// -1 or an HTTP 5xx: WeChat is busy.
    SystemBusy,
    /// No answer within `wechat.timeout`.
    Timeout,
    /// Not reachable, or an answer that is not WeChat's.
    Unreachable,
    /// Any other errcode.
    Errcode(i64),
}

impl Cause {
    fn of(what: Fetched, error: &WeChatError) -> Self {
        match error.errcode() {
            Some(Errcode::IpNotWhitelisted) => Cause::IpNotWhitelisted,
            Some(Errcode::IpAwaitsConfirmation) => Cause::IpAwaitsConfirmation,
            Some(Errcode::InvalidAppsecret) => Cause::InvalidAppsecret,
            // stable_token answers a wrong secret with 40001 ("invalid credential").
            Some(Errcode::InvalidCredential) if what == Fetched::Token => Cause::InvalidAppsecret,
            Some(Errcode::InvalidAppid) => Cause::InvalidAppid,
            Some(Errcode::DailyQuota) => Cause::DailyQuota,
            Some(Errcode::MinuteQuota) => Cause::MinuteQuota,
            Some(Errcode::SystemBusy) => Cause::SystemBusy,
            Some(other) => Cause::Errcode(other.code()),
            None => match error.kind() {
                ErrorKind::Timeout => Cause::Timeout,
                ErrorKind::Unavailable => Cause::SystemBusy,
                _ => Cause::Unreachable,
            },
        }
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::IpNotWhitelisted => {
                f.write_str("errcode 40164, address not in the IP whitelist")
            }
            Cause::IpAwaitsConfirmation => {
                f.write_str("errcode 89503, call awaits the administrator's confirmation")
            }
            Cause::InvalidAppsecret => f.write_str("errcode 40125, invalid AppSecret"),
            Cause::InvalidAppid => f.write_str("errcode 40013, invalid appid"),
            Cause::DailyQuota => f.write_str("errcode 45009, daily quota reached"),
            Cause::MinuteQuota => f.write_str("errcode 45011, minute quota reached"),
            Cause::SystemBusy => f.write_str("WeChat busy (errcode -1 or HTTP 5xx)"),
            Cause::Timeout => f.write_str("no answer in time"),
            Cause::Unreachable => f.write_str("WeChat unreachable or its answer malformed"),
            Cause::Errcode(code) => write!(f, "errcode {code}"),
        }
    }
}

/// Which credential a fetch was for, for metrics and messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fetched {
    Token,
    Ticket,
}

impl Fetched {
    pub fn label(self) -> &'static str {
        match self {
            Fetched::Token => "token",
            Fetched::Ticket => "ticket",
        }
    }
}

impl std::fmt::Display for Fetched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Fetched::Token => "basic access_token (/cgi-bin/stable_token)",
            Fetched::Ticket => "jsapi_ticket (/cgi-bin/ticket/getticket)",
        })
    }
}

/// Told of every fetch from WeChat: which credential, and `Ok` or the error.
pub type FetchObserver = Arc<dyn Fn(Fetched, Result<(), &WeChatError>) + Send + Sync>;

/// A credential as the store keeps it (sealed by persistent backends).
#[derive(Clone, Serialize, Deserialize)]
struct Stored {
    value: String,
    /// Unix ms at which WeChat's stated lifetime, less the margin, ends.
    expires_at: u64,
    /// How long before `expires_at` a refresh is due, in ms.
    ahead_ms: u64,
}

impl Stored {
    fn new(value: &Secret, expires_in: Duration, now: SystemTime) -> Self {
        let life = expires_in.saturating_sub(EXPIRY_MARGIN.min(expires_in / 10));
        Stored {
            value: value.expose().to_owned(),
            expires_at: unix_ms(now + life),
            ahead_ms: unix_ms(UNIX_EPOCH + REFRESH_AHEAD.min(expires_in / 4)),
        }
    }

    fn expires_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.expires_at)
    }

    fn live(&self, now: SystemTime) -> bool {
        self.expires_at() > now
    }

    fn due(&self, now: SystemTime) -> bool {
        self.expires_at() <= now + Duration::from_millis(self.ahead_ms)
    }
}

impl std::fmt::Debug for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stored")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A failed refresh, as the store remembers it for the other gateways.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Failed {
    what: Fetched,
    cause: Cause,
}

/// The shared token and ticket of one account.
pub struct Credentials {
    wechat: WeChatClient,
    store: Arc<dyn SessionStore>,
    clock: Clock,
    observer: Option<FetchObserver>,
    /// This gateway's copy of the ticket: signatures need no store round trip while it is fresh.
    local: Mutex<Option<Stored>>,
    /// One refresh at a time in this gateway; the store's lease makes it one across gateways.
    flight: tokio::sync::Mutex<()>,
    /// A background refresh is under way in this gateway.
    refreshing: AtomicBool,
    /// How long a refresh may take (WeChat's timeout for each of up to four calls, plus
    /// slack), and how long a failure is remembered.
    lease: Duration,
    token_name: String,
    ticket_name: String,
    failed_name: String,
    lease_prefix: String,
}

impl Credentials {
    pub fn new(
        wechat: WeChatClient,
        store: Arc<dyn SessionStore>,
        clock: Clock,
        wechat_timeout: Duration,
        observer: Option<FetchObserver>,
    ) -> Arc<Self> {
        let appid = wechat.appid().to_owned();
        Arc::new(Credentials {
            wechat,
            store,
            clock,
            observer,
            local: Mutex::new(None),
            flight: tokio::sync::Mutex::new(()),
            refreshing: AtomicBool::new(false),
            lease: wechat_timeout * 4 + Duration::from_secs(1),
            token_name: format!("jssdk:{appid}:token"),
            ticket_name: format!("jssdk:{appid}:ticket"),
            failed_name: format!("jssdk:{appid}:failed"),
            lease_prefix: format!("jssdk:{appid}:refresh:"),
        })
    }

    /// The jsapi_ticket to sign with now. A ticket due for refresh is still served while one
    /// task refreshes it in the background; only a missing or expired one is waited for.
    pub async fn ticket(self: &Arc<Self>) -> Result<Secret, CredentialError> {
        let now = self.clock.now();
        if let Some(local) = self.local_ticket() {
            if !local.due(now) {
                return Ok(Secret::new(local.value));
            }
        }
        if let Some(stored) = self.stored(&self.ticket_name).await? {
            if stored.live(now) {
                self.keep_local(&stored);
                if stored.due(now) {
                    self.refresh_in_background();
                }
                return Ok(Secret::new(stored.value));
            }
        }
        self.refresh().await.map(|stored| Secret::new(stored.value))
    }

    /// `wxgate jssdk refresh --force`: a new token from stable_token's force_refresh mode
    /// (it voids the old token for every caller of the account and WeChat allows few a day),
    /// then a new ticket for it; both replace the shared ones.
    pub async fn force_refresh(self: &Arc<Self>) -> Result<(), CredentialError> {
        let _flight = self.flight.lock().await;
        let token = self.fetch_token(true).await?;
        self.fetch_ticket(&token).await.map(|_| ())
    }

    fn local_ticket(&self) -> Option<Stored> {
        self.local
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn keep_local(&self, stored: &Stored) {
        *self.local.lock().unwrap_or_else(PoisonError::into_inner) = Some(stored.clone());
    }

    /// The credential under `name`, live or recently ended.
    async fn stored(&self, name: &str) -> Result<Option<Stored>, StoreError> {
        let Some(bytes) = self.store.get_value(name).await? else {
            return Ok(None);
        };
        Ok(serde_json::from_slice(&bytes).ok())
    }

    fn refresh_in_background(self: &Arc<Self>) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            // A failure is logged and counted where it happens; the current ticket still serves.
            let _ = this.refresh().await;
            this.refreshing.store(false, Ordering::Release);
        });
    }

    /// Brings a fresh ticket into the store, or waits for the gateway that is doing so.
    async fn refresh(&self) -> Result<Stored, CredentialError> {
        let _flight = self.flight.lock().await;
        let deadline = tokio::time::Instant::now() + self.lease;
        loop {
            let current = self.stored(&self.ticket_name).await?;
            let now = self.clock.now();
            // Someone (this gateway's previous flight, another gateway) may have just done it.
            if let Some(stored) = current.as_ref().filter(|s| !s.due(now)) {
                self.keep_local(stored);
                return Ok(stored.clone());
            }
            if let Some(failed) = self.recent_failure().await? {
                return Err(CredentialError::WeChat {
                    what: failed.what,
                    cause: failed.cause,
                });
            }
            // Named after the generation it replaces: once a new ticket is in, the next
            // refresh takes a new lease, and a failed one is retried after `lease`.
            let generation = current.as_ref().map_or(0, |s| s.expires_at);
            let lease = format!("{}{generation}", self.lease_prefix);
            if self.store.claim_lease(&lease, self.lease).await? {
                return self.refresh_holding_lease().await;
            }
            // Another gateway refreshes. A due-but-live ticket serves meanwhile.
            if let Some(stored) = current.filter(|s| s.live(now)) {
                self.keep_local(&stored);
                return Ok(stored);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(CredentialError::Busy);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn recent_failure(&self) -> Result<Option<Failed>, StoreError> {
        let Some(bytes) = self.store.get_value(&self.failed_name).await? else {
            return Ok(None);
        };
        Ok(serde_json::from_slice(&bytes).ok())
    }

    async fn refresh_holding_lease(&self) -> Result<Stored, CredentialError> {
        let result = self.refresh_now().await;
        if let Err(CredentialError::WeChat { what, cause }) = &result {
            // Logged here, once per failed fetch: the requests answered from the remembered
            // failure meanwhile log nothing more. Never the token, ticket or secret.
            tracing::warn!(
                appid = self.wechat.appid(),
                fetching = what.label(),
                cause = %cause,
                fix = cause.explained().2,
                "JS-SDK: WeChat refused the credential; signature requests fail until it is fixed"
            );
            let failed = Failed {
                what: *what,
                cause: *cause,
            };
            if let Ok(bytes) = serde_json::to_vec(&failed) {
                // Best effort: without it the next request simply asks WeChat again.
                let until = self.clock.now() + self.lease;
                let _ = self.store.put_value(&self.failed_name, &bytes, until).await;
            }
        }
        result
    }

    /// The shared token (fetched when missing or due), then a ticket; a token WeChat calls
    /// stale (40001/42001: forced elsewhere, or expired early) is fetched again once.
    async fn refresh_now(&self) -> Result<Stored, CredentialError> {
        let now = self.clock.now();
        let token = match self.stored(&self.token_name).await? {
            Some(token) if !token.due(now) => token,
            _ => self.fetch_token(false).await?,
        };
        match self.fetch_ticket(&token).await {
            Err(CredentialError::WeChat {
                what: Fetched::Ticket,
                cause: Cause::Errcode(40001 | 42001),
            }) => {
                let token = self.fetch_token(false).await?;
                self.fetch_ticket(&token).await
            }
            other => other,
        }
    }

    async fn fetch_token(&self, force: bool) -> Result<Stored, CredentialError> {
        let result = self.wechat.stable_token(force).await;
        let grant = self.observed(Fetched::Token, result)?;
        let stored = Stored::new(&grant.access_token, grant.expires_in, self.clock.now());
        self.put(&self.token_name, &stored).await?;
        Ok(stored)
    }

    async fn fetch_ticket(&self, token: &Stored) -> Result<Stored, CredentialError> {
        let result = self.wechat.jsapi_ticket(&token.value).await;
        let ticket = self.observed(Fetched::Ticket, result)?;
        // A ticket outliving its token is fine: WeChat checks the signature, not the token.
        let stored = Stored::new(&ticket.ticket, ticket.expires_in, self.clock.now());
        self.put(&self.ticket_name, &stored).await?;
        self.keep_local(&stored);
        Ok(stored)
    }

    /// Tells the observer of a fetch and turns its error into a cause.
    fn observed<T>(
        &self,
        what: Fetched,
        result: Result<T, WeChatError>,
    ) -> Result<T, CredentialError> {
        if let Some(observe) = &self.observer {
            observe(what, result.as_ref().map(|_| ()));
        }
        result.map_err(|error| CredentialError::WeChat {
            what,
            cause: Cause::of(what, &error),
        })
    }

    async fn put(&self, name: &str, stored: &Stored) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(stored)
            .map_err(|e| StoreError::Corrupt(format!("credential does not encode: {e}")))?;
        self.store
            .put_value(name, &bytes, stored.expires_at() + KEPT_AFTER_END)
            .await
    }
}
