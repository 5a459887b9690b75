//! wxgate: a reverse-proxy authentication gateway for WeChat web authorization.
#![forbid(unsafe_code)]

pub mod mock;
pub mod wechat;
