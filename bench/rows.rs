//! The rows of the throughput table. Adding a row is one entry here: a gateway row names the
//! configuration variant it needs and the path it loads; the harness starts each variant once.

use crate::gateway::{APP_PATH, PUBLIC_PATH, Store, Variant};

/// What a row sends its load to.
#[derive(Debug, Clone, Copy)]
pub enum Target {
    /// The origin nginx itself: the floor every other row adds to.
    Origin,
    /// nginx as a plain reverse proxy: the bar.
    NginxProxy,
    /// wxgate with `variant`; `logged_in` rows send a session cookie from a real login.
    Gateway {
        variant: Variant,
        path: &'static str,
        logged_in: bool,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub name: &'static str,
    pub target: Target,
    /// Also measured at the fixed half-peak rate for the latency table.
    pub latency: bool,
}

const fn gateway(store: Store, algorithm: &'static str, campaigns: usize) -> Variant {
    Variant {
        store,
        algorithm,
        campaigns,
    }
}

const MEMORY_HS256: Variant = gateway(Store::Memory, "HS256", 0);

const fn logged_in(variant: Variant, path: &'static str) -> Target {
    Target::Gateway {
        variant,
        path,
        logged_in: true,
    }
}

pub const ROWS: &[Row] = &[
    Row {
        name: "direct origin",
        target: Target::Origin,
        latency: true,
    },
    Row {
        name: "nginx plain proxy",
        target: Target::NginxProxy,
        latency: true,
    },
    Row {
        name: "wxgate public route",
        target: Target::Gateway {
            variant: MEMORY_HS256,
            path: PUBLIC_PATH,
            logged_in: false,
        },
        latency: true,
    },
    Row {
        name: "wxgate logged-in, memory, HS256",
        target: logged_in(MEMORY_HS256, APP_PATH),
        latency: true,
    },
    Row {
        name: "wxgate logged-in, memory, ES256",
        target: logged_in(gateway(Store::Memory, "ES256", 0), APP_PATH),
        latency: false,
    },
    Row {
        name: "wxgate logged-in, memory, 1000 routes",
        target: logged_in(gateway(Store::Memory, "HS256", 1000), "/campaign/737/"),
        latency: false,
    },
    Row {
        // A wx.config signature with the ticket warm: URL check, SHA-1, JSON; no store or
        // WeChat call (the first request of the run fetched the token and ticket).
        name: "wxgate JS-SDK signature, warm ticket",
        target: Target::Gateway {
            variant: MEMORY_HS256,
            path: "/_wxgate/jssdk?url=https%3A%2F%2Fm.example.com%2Fshare%2F%3Fid%3D42%26from%3Dsinglemessage",
            logged_in: false,
        },
        latency: false,
    },
    Row {
        name: "wxgate logged-in, redb, HS256",
        target: logged_in(gateway(Store::Redb, "HS256", 0), APP_PATH),
        latency: false,
    },
    Row {
        name: "wxgate logged-in, redis, HS256",
        target: logged_in(gateway(Store::Redis, "HS256", 0), APP_PATH),
        latency: false,
    },
];
