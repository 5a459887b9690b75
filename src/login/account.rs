//! The login of one Official Account (`[wechat]`, or an `[[apps]]` entry): its appid and
//! WeChat client, its callback and its cookies, over the gateway-wide [`Shared`] part.
//! What it does is cut by step: `policy` decides protected requests, `authorize` sends
//! visitors to WeChat, `callback` brings them back, `endpoints` answers `/_wxgate/…`.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;

use crate::access::{AccessRule, RuleLoader};
use crate::config::Config;
use crate::login::refresh::ProfileRefresher;
use crate::login::shared::{LoginSetupError, Shared};
use crate::login::{CookieSpec, cookies};
use crate::metrics::WeChatMetrics;
use crate::wechat::WeChatClient;

/// The pending-login cookie's name before its `__Host-`/`__Secure-` prefix.
const STATE_COOKIE: &str = "wxgate_state";

pub struct Login {
    pub(super) shared: Arc<Shared>,
    pub(super) appid: String,
    pub(super) authorize_url: url::Url,
    pub(super) redirect_uri: String,
    /// The origin the visitor sees: return URLs must stay on it.
    pub(super) public_origin: url::Url,
    pub(super) session_cookie: CookieSpec,
    pub(super) state_cookie: CookieSpec,
    /// How long a second load of a callback waits for the first's exchange.
    pub(super) flight_patience: Duration,
    pub(super) wechat: WeChatClient,
    pub(super) refresher: ProfileRefresher,
    /// The `[[apps]]` entry served, if not `[wechat]`.
    pub(super) app: Option<String>,
    /// Who may pass forward-auth: the app's `access` list; `None`: everyone.
    pub(super) access: Option<Arc<AccessRule>>,
}

impl Login {
    /// The login of `[[apps]]` entry `app` (`None`: `[wechat]`), whose settings `config`
    /// carries in `[wechat]` (see `Config::for_app`). An app has its own callback
    /// (`/_wxgate/callback/<name>`) and cookies (`<cookie_name>_<name>`), so a visitor may be
    /// logged in to several Official Accounts at once.
    pub fn for_app(
        config: &Config,
        shared: Arc<Shared>,
        wechat_metrics: &WeChatMetrics,
        app: Option<&str>,
    ) -> Result<Self, LoginSetupError> {
        let suffix = app.map(|name| format!("_{name}")).unwrap_or_default();
        let public_origin = config
            .server
            .public_url
            .clone()
            .unwrap_or_else(|| config.wechat.api_base.clone());
        let redirect_uri = format!(
            "{}/_wxgate/callback{}",
            public_origin.as_str().trim_end_matches('/'),
            app.map(|name| format!("/{name}")).unwrap_or_default()
        );
        let wechat = WeChatClient::observed(
            config.wechat.client_settings(),
            Some(wechat_metrics.observer()),
        )?;
        let s = &config.session;
        let cookie = |base: &str| {
            CookieSpec::new(
                &format!("{base}{suffix}"),
                s.cookie_secure,
                s.cookie_domain.as_deref(),
            )
        };
        let access = match &config.wechat.access {
            Some(list) => {
                let key = app.map_or_else(
                    || "wechat.access".to_owned(),
                    |n| format!("apps[{n}].access"),
                );
                Some(Arc::new(RuleLoader::default().load(&key, list)?))
            }
            None => None,
        };
        Ok(Self {
            appid: config.wechat.appid.clone(),
            authorize_url: config.wechat.authorize_url.clone(),
            redirect_uri,
            public_origin,
            session_cookie: cookie(&s.cookie_name),
            state_cookie: cookie(STATE_COOKIE),
            // The exchange, the profile and the store write, each bounded by its timeout.
            flight_patience: config.wechat.timeout * 2 + s.store_timeout + Duration::from_secs(1),
            refresher: ProfileRefresher::new(
                wechat.clone(),
                shared.sessions.clone(),
                shared.metrics.clone(),
            ),
            wechat,
            app: app.map(str::to_owned),
            access,
            shared,
        })
    }

    /// The `[[apps]]` name this login serves; `None` for `[wechat]`.
    pub fn app(&self) -> Option<&str> {
        self.app.as_deref()
    }

    /// Takes the gateway's own cookies (session and pending logins) out of a request bound
    /// upstream: the identity header is what upstreams get, never the session id.
    pub fn remove_own_cookies(&self, headers: &mut HeaderMap) {
        cookies::remove(
            headers,
            [self.session_cookie.name(), self.state_cookie.name()],
        );
    }

    /// Drops upstream `Set-Cookie`s for the gateway's own cookie names: an application
    /// must not be able to replace or clear the visitor's session or pending logins.
    pub fn strip_own_cookies(&self, headers: &mut HeaderMap) {
        cookies::strip_set_cookies(
            headers,
            [self.session_cookie.name(), self.state_cookie.name()],
        );
    }

    /// `&app=<name>` for an `[[apps]]` login, so endpoints reached from its pages find it.
    pub(super) fn app_param(&self) -> String {
        self.app
            .as_ref()
            .map(|name| format!("&app={name}"))
            .unwrap_or_default()
    }
}
