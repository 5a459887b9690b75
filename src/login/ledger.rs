//! What logins remember across requests and reloads: the single flights and used states of
//! callbacks, the per-client count of refused callbacks, and each appid's WeChat API budget.
//! Built once per gateway (by `app::Lasting`); a reload hands the same ledger to the logins of
//! the new configuration, so limits do not reset and used states are not forgotten.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::config::LimitsConfig;
use crate::login::flight::Flights;
use crate::login::throttle::{Budget, Throttle};

pub struct LoginLedger {
    /// Refused callbacks per client (`server.limits.login_rate`, `login_burst`).
    pub refusals: Option<Throttle>,
    /// Calls to WeChat's API per minute and appid (`server.limits.wechat_rate`).
    wechat_rate: u32,
    budgets: Mutex<HashMap<String, Arc<Budget>>>,
    pub flights: Flights,
}

impl LoginLedger {
    /// From `server.limits`, which a reload cannot change.
    pub fn new(limits: &LimitsConfig) -> Self {
        LoginLedger {
            refusals: Throttle::new(limits.login_rate, limits.login_burst),
            wechat_rate: limits.wechat_rate,
            budgets: Mutex::new(HashMap::new()),
            flights: Flights::default(),
        }
    }

    /// The WeChat API budget of `appid`, shared by every login of that appid; `None` when
    /// the limit is off.
    pub fn wechat_budget(&self, appid: &str) -> Option<Arc<Budget>> {
        let mut budgets = self
            .budgets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(budget) = budgets.get(appid) {
            return Some(budget.clone());
        }
        let budget = Arc::new(Budget::per_minute(self.wechat_rate)?);
        budgets.insert(appid.to_owned(), budget.clone());
        Some(budget)
    }
}
