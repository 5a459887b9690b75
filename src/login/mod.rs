//! Login: the browser's trip to WeChat's authorize page and back, and who passes a
//! protected route.
//!
//! The login decides; it never builds a response. Its answers are [`Decision`]s and
//! [`Answer`]s that `pages` renders. It is cut by step: [`policy`] (who passes),
//! [`authorize`] (off to WeChat), [`callback`] (back from WeChat), [`endpoints`] (the rest
//! of `/_wxgate/`), [`cookies`]; [`account`] holds one Official Account's [`Login`] and
//! [`shared`] the part every account shares. The rest are building blocks: the visitor,
//! the sealed pending-login cookie, return URLs, the callback's single flight, limits.

pub mod account;
pub mod apps;
pub mod authorize;
pub mod callback;
pub mod cookies;
pub mod decision;
pub mod endpoints;
pub mod flight;
pub mod ledger;
pub mod policy;
pub mod refresh;
pub mod replay;
pub mod return_url;
pub mod scope;
pub mod shared;
pub mod state;
pub mod throttle;
pub mod visitor;

pub use account::Login;
pub use apps::Logins;
pub use cookies::CookieSpec;
pub use decision::{Answer, Decision, Identity, Refusal, Reply};
pub use return_url::{RedirectError, ReturnUrl};
pub use scope::AuthScope;
pub use shared::{LoginSetupError, Shared};
pub use state::{Pending, PendingLogins, StateError, StateKey, is_well_formed_state};
pub use visitor::{Browser, BrowserPolicy, Visitor};
