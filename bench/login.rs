//! The WeChat login as a browser inside WeChat does it, against the mock WeChat: the gateway's
//! 302 to authorize, the mock's 302 back with a code, the callback that makes the session.
//! Cookies are carried by hand so one pooled client serves thousands of logins.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};

pub const WECHAT_UA: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 \
    (KHTML, like Gecko) Mobile/15E148 MicroMessenger/8.0.47(0x18002f2c) NetType/WIFI Language/zh_CN";

/// A client that follows nothing and keeps no cookies: each login carries its own.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(WECHAT_UA)
        .no_proxy()
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_default()
}

/// The same, trusting `pem` (the run's self-signed certificate) for the TLS gateways.
pub fn client_trusting(pem: &str) -> reqwest::Client {
    let builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(WECHAT_UA)
        .no_proxy()
        .pool_idle_timeout(Duration::from_secs(30));
    let builder = match reqwest::Certificate::from_pem(pem.as_bytes()) {
        Ok(cert) => builder.add_root_certificate(cert),
        Err(_) => builder,
    };
    builder.build().unwrap_or_default()
}

/// Logs in through `origin` + `path` as the mock's user `user`; returns the `Cookie` value
/// (`wxgate_session=…`) a browser would send afterwards.
pub async fn login(
    client: &reqwest::Client,
    origin: &str,
    path: &str,
    user: Option<&str>,
) -> Result<String, String> {
    let page = format!("{origin}{path}");
    let challenge = client.get(&page).send().await.map_err(|e| e.to_string())?;
    let state_cookie = cookie_pair(&challenge, "wxgate_state")?;
    let authorize = authorize_of(challenge).await?;
    // WeChat's `#wechat_redirect` is for the browser; the mock picks the user from the query.
    let mut authorize = authorize.split('#').next().unwrap_or_default().to_owned();
    if let Some(user) = user {
        authorize.push_str(&format!("&mock_user={user}"));
    }
    let consent = client
        .get(&authorize)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let callback = location(&consent, "the mock's authorize page")?;
    let finished = client
        .get(&callback)
        .header(COOKIE, state_cookie)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let back = location(&finished, "the callback")?;
    if !back.ends_with(path) {
        return Err(format!(
            "the callback sent the browser to {back}, not {path}"
        ));
    }
    cookie_pair(&finished, "wxgate_session")
}

/// Where the gateway sends a WeChat page load without a session: the hash hop page's
/// no-JavaScript refresh (a browser without JavaScript follows it), or a 302.
async fn authorize_of(response: reqwest::Response) -> Result<String, String> {
    if response.status() != reqwest::StatusCode::OK {
        return location(&response, "the protected page");
    }
    let html = response.text().await.map_err(|e| e.to_string())?;
    wxgate::pages::hop::refresh_target(&html)
        .ok_or_else(|| "the protected page answered 200 without the hop page".to_owned())
}

fn location(response: &reqwest::Response, what: &str) -> Result<String, String> {
    if response.status() != reqwest::StatusCode::FOUND {
        return Err(format!("{what} answered {}", response.status()));
    }
    response
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| format!("{what} redirected without a Location"))
}

/// `name=value` of the cookie `name` the response sets.
fn cookie_pair(response: &reqwest::Response, name: &str) -> Result<String, String> {
    response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .find(|pair| pair.starts_with(&format!("{name}=")) && pair.len() > name.len() + 1)
        .map(str::to_owned)
        .ok_or_else(|| format!("no {name} cookie was set"))
}

/// Logins completed and failed by `concurrency` browsers logging in over and over.
#[derive(Debug, Clone, Copy)]
pub struct LoginRate {
    pub concurrency: usize,
    pub done: u64,
    pub failed: u64,
    pub per_second: f64,
}

/// `concurrency` browsers, each logging in again as soon as its last login finished.
pub async fn rate(
    origin: &str,
    path: &str,
    concurrency: usize,
    duration: Duration,
    users: &[&'static str],
) -> LoginRate {
    let client = client();
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let (client, done, failed, first_error) = (
            client.clone(),
            done.clone(),
            failed.clone(),
            first_error.clone(),
        );
        let (origin, path) = (origin.to_owned(), path.to_owned());
        let user = users.get(i % users.len().max(1)).copied();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                match login(&client, &origin, &path, user).await {
                    Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        first_error
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .get_or_insert(e);
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(e) = first_error
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take()
    {
        eprintln!("  first login failure: {e}");
    }
    let done = done.load(Ordering::Relaxed);
    LoginRate {
        concurrency,
        done,
        failed: failed.load(Ordering::Relaxed),
        per_second: done as f64 / elapsed,
    }
}
