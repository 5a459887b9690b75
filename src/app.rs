//! What the gateway keeps for as long as it runs, whatever the configuration becomes: metrics,
//! the session store and its cache, and the logins' ledger (single flights, used states, rate
//! limits). A reload builds a new gate from the new configuration over the same `Lasting`; it
//! swaps only what the configuration derives (routes, upstreams, keys, pages).

use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::login::flow::{LoginSetupError, open_sessions};
use crate::login::ledger::LoginLedger;
use crate::metrics::Metrics;
use crate::session::SessionCache;

pub struct Lasting {
    pub metrics: Arc<Metrics>,
    pub ledger: Arc<LoginLedger>,
    /// Opened when a configuration first needs a login; kept from then on (`session.*` needs
    /// a restart to change).
    sessions: Mutex<Option<Arc<SessionCache>>>,
}

impl Lasting {
    /// For the configuration the gateway starts with.
    pub fn new(config: &Config) -> Arc<Self> {
        Arc::new(Lasting {
            metrics: Metrics::new(),
            ledger: Arc::new(LoginLedger::new(&config.server.limits)),
            sessions: Mutex::new(None),
        })
    }

    /// The sessions, opened from `config` the first time they are asked for.
    pub fn sessions(&self, config: &Config) -> Result<Arc<SessionCache>, LoginSetupError> {
        let mut sessions = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(open) = sessions.as_ref() {
            return Ok(open.clone());
        }
        let opened = open_sessions(config, &self.metrics)?;
        *sessions = Some(opened.clone());
        Ok(opened)
    }
}
