//! Several Official Accounts in one gateway: the login of `[wechat]` and one per `[[apps]]`
//! entry, all over one session store. A route names its app; an endpoint request names it
//! by its callback path (`/_wxgate/callback/<name>`) or an `app` query parameter.

use std::sync::Arc;

use crate::app::Lasting;
use crate::config::Config;
use crate::login::{Login, LoginSetupError, Shared};
use crate::route::Route;

/// Every login the configuration asks for.
pub struct Logins {
    default: Option<Login>,
    apps: Vec<Login>,
}

impl Logins {
    /// `None` when no route needs a login and no app is configured. Every login shares one
    /// [`Shared`] over the gateway's lasting sessions and ledger.
    pub fn build(config: &Config, lasting: &Lasting) -> Result<Option<Self>, LoginSetupError> {
        if !config.needs_login() {
            return Ok(None);
        }
        let metrics = &lasting.metrics;
        let shared = Arc::new(Shared::new(
            config,
            lasting.sessions(config)?,
            lasting.ledger.clone(),
            metrics.login.clone(),
        )?);
        let default = if config.default_app_needed() {
            Some(Login::for_app(
                config,
                shared.clone(),
                &metrics.wechat,
                None,
            )?)
        } else {
            None
        };
        let mut apps = Vec::new();
        for app in &config.apps {
            let Some(app_config) = config.for_app(&app.name) else {
                continue;
            };
            apps.push(Login::for_app(
                &app_config,
                shared.clone(),
                &metrics.wechat,
                Some(&app.name),
            )?);
        }
        Ok(Some(Logins { default, apps }))
    }

    fn named(&self, name: &str) -> Option<&Login> {
        self.apps.iter().find(|login| login.app() == Some(name))
    }

    /// The login of a protected route.
    pub fn for_route(&self, route: &Route) -> Option<&Login> {
        match &route.app {
            Some(name) => self.named(name),
            None => self.default.as_ref(),
        }
    }

    /// The login an endpoint request is for: its callback's app, its `app` parameter, or
    /// `[wechat]` (the first app when `[wechat]` has none).
    pub fn for_endpoint(&self, path: &str, query: Option<&str>) -> Option<&Login> {
        if let Some(name) = path.strip_prefix("/_wxgate/callback/") {
            return self.named(name);
        }
        let asked = url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .find(|(key, _)| key == "app")
            .map(|(_, value)| value.into_owned());
        match asked {
            Some(name) => self.named(&name),
            None => self.default.as_ref().or(self.apps.first()),
        }
    }

    /// Every login, `[wechat]`'s first.
    pub fn all(&self) -> impl Iterator<Item = &Login> {
        self.default.iter().chain(&self.apps)
    }
}
