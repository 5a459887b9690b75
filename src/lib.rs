//! wxgate: a reverse-proxy authentication gateway for WeChat web authorization (网页授权).
//!
//! A request's whole life is in `gate`; every other module owns one concept of the domain.
#![forbid(unsafe_code)]
// Outside tests nothing may panic on a value: input and I/O errors are typed and answered.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod access;
pub mod app;
pub mod body;
pub mod cli;
pub mod config;
#[cfg(feature = "dev-tools")]
pub mod demo;
pub mod doctor;
pub mod failure;
#[cfg(feature = "dev-tools")]
#[doc(hidden)]
pub mod fuzzing;
pub mod gate;
pub(crate) mod http1;
pub mod identity;
pub mod jssdk;
pub mod login;
pub mod metrics;
#[cfg(feature = "dev-tools")]
pub mod mock;
pub mod pages;
pub mod proxy;
pub mod route;
mod secret;
/// Every secret in the configuration, redacted in `Debug` and logs: one type, one path.
pub use secret::Secret;
pub mod server;
pub mod session;
pub mod telemetry;
pub mod wechat;
