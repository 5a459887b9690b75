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

/// The row a row is compared with: nginx as a plain proxy over the same protocol.
pub fn bar(rows: &[Row], row: &Row) -> Option<usize> {
    rows.iter()
        .position(|r| matches!(r.target, Target::NginxProxy) && r.protocol == row.protocol)
}

/// How a row's load reaches its proxy. Each row's ratio is against nginx over the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Plain HTTP/1.1 (wrk).
    Http1,
    /// HTTP/1.1 over TLS (wrk, https), the same certificate on both proxies.
    Tls,
    /// HTTP/2 over TLS (h2load from nghttp2-client, one stream per connection at a time).
    H2,
}

#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub name: &'static str,
    pub target: Target,
    /// Also measured at the fixed half-peak rate for the latency table.
    pub latency: bool,
    pub protocol: Protocol,
}

const fn gateway(store: Store, algorithm: &'static str, campaigns: usize) -> Variant {
    Variant {
        store,
        algorithm,
        campaigns,
        access_ids: 0,
        tls: false,
        fast_paths: true,
    }
}

/// The memory/HS256 gateway as the protocol rows run it.
const fn served(tls: bool, fast_paths: bool) -> Variant {
    Variant {
        tls,
        fast_paths,
        ..MEMORY_HS256
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
        protocol: Protocol::Http1,
    },
    Row {
        name: "nginx plain proxy",
        target: Target::NginxProxy,
        latency: true,
        protocol: Protocol::Http1,
    },
    Row {
        name: "wxgate public route",
        target: Target::Gateway {
            variant: MEMORY_HS256,
            path: PUBLIC_PATH,
            logged_in: false,
        },
        latency: true,
        protocol: Protocol::Http1,
    },
    Row {
        name: "wxgate logged-in, memory, HS256",
        target: logged_in(MEMORY_HS256, APP_PATH),
        latency: true,
        protocol: Protocol::Http1,
    },
    Row {
        name: "wxgate logged-in, memory, ES256",
        target: logged_in(gateway(Store::Memory, "ES256", 0), APP_PATH),
        latency: false,
        protocol: Protocol::Http1,
    },
    Row {
        name: "wxgate logged-in, memory, 1000 routes",
        target: logged_in(gateway(Store::Memory, "HS256", 1000), "/campaign/737/"),
        latency: false,
        protocol: Protocol::Http1,
    },
    Row {
        // The same route admitting only the openids of a 100 000-line list file: one hash
        // set lookup per request.
        name: "wxgate logged-in, memory, 100 000-id access list",
        target: logged_in(
            Variant {
                access_ids: 100_000,
                ..MEMORY_HS256
            },
            APP_PATH,
        ),
        latency: false,
        protocol: Protocol::Http1,
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
        protocol: Protocol::Http1,
    },
    Row {
        name: "wxgate logged-in, redb, HS256",
        target: logged_in(gateway(Store::Redb, "HS256", 0), APP_PATH),
        latency: false,
        protocol: Protocol::Http1,
    },
    Row {
        name: "wxgate logged-in, redis, HS256",
        target: logged_in(gateway(Store::Redis, "HS256", 0), APP_PATH),
        latency: false,
        protocol: Protocol::Http1,
    },
    // The gateway's own HTTP/1.1 (server.http1_fast_paths) on and off, over plain HTTP/1.1,
    // TLS and HTTP/2, each beside nginx doing the same. Off, hyper serves every request and
    // upstream connection. HTTP/2 is hyper's either way; off changes its upstream side.
    Row {
        name: "wxgate logged-in, fast paths off",
        target: logged_in(served(false, false), APP_PATH),
        latency: false,
        protocol: Protocol::Http1,
    },
    Row {
        name: "nginx plain proxy, TLS",
        target: Target::NginxProxy,
        latency: false,
        protocol: Protocol::Tls,
    },
    Row {
        name: "wxgate logged-in, TLS",
        target: logged_in(served(true, true), APP_PATH),
        latency: false,
        protocol: Protocol::Tls,
    },
    Row {
        name: "wxgate logged-in, TLS, fast paths off",
        target: logged_in(served(true, false), APP_PATH),
        latency: false,
        protocol: Protocol::Tls,
    },
    Row {
        name: "nginx plain proxy, HTTP/2",
        target: Target::NginxProxy,
        latency: false,
        protocol: Protocol::H2,
    },
    Row {
        name: "wxgate logged-in, HTTP/2",
        target: logged_in(served(true, true), APP_PATH),
        latency: false,
        protocol: Protocol::H2,
    },
    Row {
        name: "wxgate logged-in, HTTP/2, fast paths off",
        target: logged_in(served(true, false), APP_PATH),
        latency: false,
        protocol: Protocol::H2,
    },
];
