//! Every integration test of wxgate, in one test binary (`cargo test --test it`): one link
//! of the crate instead of one per file. Each module was a test binary of its own before
//! (`tests/login.rs` is now `tests/it/login.rs`, its tests `login::…`), and keeps its name so
//! that a filter picks it: `cargo test --test it -- security::` runs the attack tables.
//!
//! The shared world (gateway, mock WeChat, recording upstreams, real nginx, Redis and
//! HAProxy) and the login dance live in `support`; the data the tests read in `tests/data/`.

mod support;

// The login: WeChat's authorization end to end, its harder days, several accounts, the
// WeChat API client and the JS-SDK, the demo over HTTP and in a real browser.
mod apps;
mod browser;
mod demo;
mod jssdk;
mod login;
mod login_lifecycle;
mod wechat_client;

// Nobody gets around it: the attack tables, and forward-auth behind a real nginx.
mod forward_auth;
mod security;

// A transparent, sturdy reverse proxy: what passes untouched, what fails and how, the
// gateway's own HTTP/1.1, keep-alive on both sides, correctness under load.
mod failures;
mod http1;
mod keepalive;
mod load;
mod transparency;
mod upstream_pool;

// Sessions that last and scale: redb, Redis, Redis Cluster, Sentinel, several gateways.
mod sessions;

// Operating it: the binary's commands, reloads, metrics, doctor, the deployment files, the
// README's reference and the upstream snippets of docs/upstream/.
mod deploy;
mod doctor;
mod metrics;
mod operations;
mod readme;
mod reload;
mod upstream_snippets;
