//! The client for WeChat's web-authorization API (api.weixin.qq.com `/sns/*`): code
//! exchange, refresh, userinfo and token check; and the two basic-support calls the JS-SDK
//! needs (`/cgi-bin/stable_token`, `/cgi-bin/ticket/getticket`). It owns the tolerant wire format, the
//! errcode table and the retry policy; no secret, code, token or URL ever reaches an error or a log.

mod client;
mod error;
mod model;
pub(crate) mod parse;

pub use client::{CallObserver, ClientSettings, WeChatClient};
pub use error::{Endpoint, Errcode, ErrorKind, Malformed, WeChatError};
pub use model::{AppToken, JsapiTicket, TokenGrant, UserInfo};
