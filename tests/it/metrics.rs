//! The Prometheus metrics an operator watches move through a real login: logins started,
//! completed and failed, WeChat calls by endpoint and errcode, session store calls.

use crate::support;

use support::wechat::{Login, WECHAT_UA, World, browser, log_in, world_with};

async fn scrape(w: &World) -> String {
    let admin = w.gw.admin_addr;
    reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of the series `name{labels}` exactly as exposed, 0 when absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn a_login_moves_the_login_wechat_and_store_metrics() {
    let w = world_with(|mock, _| {
        // One busy answer first: the retry shows as a second call with its errcode.
        mock.faults.fail_next = 1;
        mock.faults.fail_errcode = -1;
    })
    .await;
    let before = scrape(&w).await;
    for family in [
        "# HELP wxgate_logins_started",
        "# HELP wxgate_logins_completed",
        "# HELP wxgate_logins_failed",
        "# HELP wxgate_wechat_calls",
        "# HELP wxgate_wechat_call_duration_seconds",
        "# HELP wxgate_profile_refreshes",
        "# HELP wxgate_sessions_active",
        "# HELP wxgate_session_store_errors",
        "# HELP wxgate_session_store_duration_seconds",
        "# HELP wxgate_rate_limited",
        "# HELP wxgate_config_reloads",
    ] {
        assert!(before.contains(family), "{family} missing:\n{before}");
    }

    let Login {
        browser: b,
        landing: last,
        ..
    } = log_in(&w.origin, "/vip/page").await;
    assert_eq!(last.status(), 200);
    let forged = b
        .get(format!("{}/_wxgate/callback?code=x&state=forged", w.origin))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 400);

    let after = scrape(&w).await;
    let moved = |series: &str| value(&after, series) - value(&before, series);
    assert_eq!(
        moved(r#"wxgate_logins_started_total{scope="snsapi_userinfo"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"wxgate_logins_completed_total{scope="snsapi_userinfo"}"#),
        1.0
    );
    assert_eq!(moved(r#"wxgate_logins_failed_total{reason="state"}"#), 1.0);
    assert_eq!(
        moved(r#"wxgate_wechat_calls_total{endpoint="/sns/oauth2/access_token",errcode="-1"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"wxgate_wechat_calls_total{endpoint="/sns/oauth2/access_token",errcode="0"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"wxgate_wechat_calls_total{endpoint="/sns/userinfo",errcode="0"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"wxgate_wechat_call_duration_seconds_count{endpoint="/sns/userinfo"}"#),
        1.0
    );
    assert!(moved(r#"wxgate_session_store_duration_seconds_count{op="put"}"#) >= 1.0);
    assert!(moved(r#"wxgate_http_requests_total{route="_wxgate",status="4xx"}"#) >= 1.0);
    assert!(
        !after.contains("secret") && !after.contains("93_"),
        "no secret or token in a metric"
    );
    w.gw.shutdown().await;
}

#[tokio::test]
async fn callbacks_turned_away_count_as_rate_limited() {
    let w = world_with(|_, config| {
        config.server.limits.login_rate = 6;
        config.server.limits.login_burst = 2;
    })
    .await;
    let b = browser(WECHAT_UA);
    let mut refused = 0;
    for _ in 0..4 {
        let r = b
            .get(format!(
                "{}/_wxgate/callback?code=x&state=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                w.origin
            ))
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            refused += 1;
        }
    }
    assert_eq!(refused, 2, "two forged callbacks spend the burst of 2");
    let after = scrape(&w).await;
    assert_eq!(
        value(&after, r#"wxgate_rate_limited_total{what="callback"}"#),
        f64::from(refused)
    );
    w.gw.shutdown().await;
}
