//! Login: the browser's trip to WeChat's authorize page and back.
//! This part holds the pure building blocks — return-URL validation, the encrypted
//! pending-login cookie, the authorize scopes and client classification.

pub mod apps;
pub mod cookies;
pub mod flight;
pub mod flow;
pub mod ledger;
pub mod refresh;
pub mod replay;
pub mod return_url;
pub mod scope;
pub mod state;
pub mod throttle;
pub mod visitor;

pub use cookies::CookieSpec;
pub use return_url::{RedirectError, ReturnUrl};
pub use scope::AuthScope;
pub use state::{Pending, PendingLogins, StateError, StateKey, is_well_formed_state};
pub use visitor::{Browser, BrowserPolicy, Visitor, VisitorKind};
