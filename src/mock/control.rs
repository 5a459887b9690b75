//! The mock's own control surface under `/_mock/`: read and change faults, reset, read
//! call counters, move the clock, list the users (with their openids), create users and serve
//! avatars.

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::api::Params;
use super::faults::Faults;
use super::html;
use super::store::Store;
use super::users::{CreatedUser, MockUser};
use super::wire::{self, Body};
use super::{Shared, lock};

const MAX_CONTROL_BODY: usize = 64 * 1024;

pub async fn handle(
    shared: &Shared,
    method: &Method,
    path: &str,
    query: &str,
    body: Incoming,
) -> Response<Body> {
    match (method, path) {
        (&Method::GET, "/_mock/faults") => faults_json(&lock(&shared.faults)),
        (&Method::POST, "/_mock/faults") => match read_json(body).await {
            Ok(patch) => set_faults(shared, patch),
            Err(message) => bad_request(&message),
        },
        (&Method::POST, "/_mock/reset") => {
            reset(shared);
            wire::json(StatusCode::OK, &serde_json::json!({"reset": true}))
        }
        (&Method::GET, "/_mock/stats") => wire::json(StatusCode::OK, &shared.stats.to_json()),
        (&Method::GET, "/_mock/clock") => clock_json(shared),
        (&Method::POST, "/_mock/clock") => match read_json(body).await {
            Ok(patch) => advance_clock(shared, &patch),
            Err(message) => bad_request(&message),
        },
        (&Method::GET, "/_mock/users") => users_json(shared),
        (&Method::GET, "/_mock/secrets") => {
            let issued = lock(&shared.store).issued();
            wire::json(StatusCode::OK, &issued)
        }
        (&Method::POST, "/_mock/users") => match read_json(body).await {
            Ok(fields) => create_user(shared, &fields),
            Err(message) => bad_request(&message),
        },
        (&Method::GET, "/_mock/avatar") => avatar(shared, query),
        _ => wire::plain(StatusCode::NOT_FOUND, "not found\n"),
    }
}

async fn read_json(body: Incoming) -> Result<serde_json::Value, String> {
    let collected = Limited::new(body, MAX_CONTROL_BODY)
        .collect()
        .await
        .map_err(|error| format!("could not read the body: {error}"))?;
    let bytes: Bytes = collected.to_bytes();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::json!({}));
    }
    serde_json::from_slice(&bytes).map_err(|error| format!("invalid JSON: {error}"))
}

fn faults_json(faults: &Faults) -> Response<Body> {
    match serde_json::to_value(faults) {
        Ok(value) => wire::json(StatusCode::OK, &value),
        Err(_) => wire::plain(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode faults\n"),
    }
}

fn set_faults(shared: &Shared, patch: serde_json::Value) -> Response<Body> {
    let mut faults = lock(&shared.faults);
    match faults.merged(patch) {
        Ok(merged) => {
            *faults = merged;
            faults_json(&faults)
        }
        Err(message) => bad_request(&message),
    }
}

/// Back to the configured behaviour, zero counters, no codes or tokens, real time.
pub fn reset(shared: &Shared) {
    *lock(&shared.faults) = shared.config.faults.clone();
    *lock(&shared.store) = Store::default();
    *lock(&shared.basic) = super::cgi::Basic::default();
    shared.users.clear();
    shared.stats.reset();
    shared.clock.reset();
}

fn clock_json(shared: &Shared) -> Response<Body> {
    let value =
        serde_json::json!({"now": shared.clock.now(), "offset_secs": shared.clock.offset()});
    wire::json(StatusCode::OK, &value)
}

fn advance_clock(shared: &Shared, patch: &serde_json::Value) -> Response<Body> {
    let Some(secs) = patch
        .get("advance_secs")
        .and_then(serde_json::Value::as_i64)
    else {
        return bad_request("expected {\"advance_secs\": N}");
    };
    shared.clock.advance(secs);
    clock_json(shared)
}

fn users_json(shared: &Shared) -> Response<Body> {
    let list: Vec<serde_json::Value> = shared
        .users
        .all()
        .iter()
        .map(|user| user_json(shared, user))
        .collect();
    wire::json(StatusCode::OK, &serde_json::Value::Array(list))
}

fn user_json(shared: &Shared, user: &MockUser) -> serde_json::Value {
    let config = &shared.config;
    let platform = config.open_platform_id.as_deref();
    serde_json::json!({
        "id": user.id(),
        "nickname": user.nickname(),
        "note": user.note(),
        "openid": user.openid(&config.appid, false),
        "unionid": platform.and_then(|p| user.unionid(p, false)),
        "snapshot_openid": user.openid(&config.appid, true),
        "snapshot_unionid": platform.and_then(|p| user.unionid(p, true)),
        "always_snapshot": user.always_snapshot(),
        "default": user.id() == config.default_user,
    })
}

/// `POST /_mock/users {"id": "load-17", "nickname": "…", "unionid": true}`: a new user a
/// browser picks with `mock_user=load-17`, answered with its identifiers.
fn create_user(shared: &Shared, fields: &serde_json::Value) -> Response<Body> {
    let text = |key: &str| fields.get(key).and_then(serde_json::Value::as_str);
    let Some(id) = text("id") else {
        return bad_request("expected {\"id\": \"…\", \"nickname\": \"…\", \"unionid\": true}");
    };
    let has_unionid = fields
        .get("unionid")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(true);
    match CreatedUser::new(id, text("nickname"), has_unionid) {
        Ok(user) => {
            let user = shared.users.create(user);
            wire::json(StatusCode::OK, &user_json(shared, &user))
        }
        Err(message) => bad_request(&message),
    }
}

fn avatar(shared: &Shared, query: &str) -> Response<Body> {
    let params = Params::parse(query);
    match params.get("user").and_then(|id| shared.users.find(id)) {
        Some(user) => wire::respond(
            StatusCode::OK,
            "image/svg+xml",
            Bytes::from(html::avatar_svg(&user)),
        ),
        None => wire::plain(StatusCode::NOT_FOUND, "no such user\n"),
    }
}

fn bad_request(message: &str) -> Response<Body> {
    wire::json(
        StatusCode::BAD_REQUEST,
        &serde_json::json!({"error": message}),
    )
}
