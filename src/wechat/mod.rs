//! The client for WeChat's web-authorization API (api.weixin.qq.com `/sns/*`): code
//! exchange, refresh, userinfo and token check. It owns the tolerant wire format, the
//! errcode table and the retry policy; no secret, code, token or URL ever reaches an error or a log.

mod client;
mod error;
mod model;
pub(crate) mod parse;

pub use crate::secret::Secret;
pub use client::{CallObserver, ClientSettings, WeChatClient};
pub use error::{Endpoint, Errcode, ErrorKind, Malformed, WeChatError};
pub use model::{TokenGrant, UserInfo};
