//! A real haproxy from Debian's packages: round-robin over the given gateways on a free
//! loopback port, in the foreground, stopped when dropped. The balancer of the tests where
//! several gateways must behave as one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Haproxy {
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

/// The haproxy binary, or `None` after printing why the test skips. Under `CI=true` a
/// missing haproxy fails the test instead.
pub fn binary() -> Option<PathBuf> {
    let found = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "haproxy is required under CI=true (Debian package haproxy; ./scripts/test installs it)"
        );
        eprintln!("skipping: haproxy not found (install Debian's haproxy, or run ./scripts/test)");
    }
    found
}

impl Haproxy {
    /// Round-robin over `servers`, one request at a time per connection (`http-server-close`
    /// on the client side would still pin a keep-alive browser; `httpclose` makes every
    /// request its own pick, as a balancer in front of many clients spreads them).
    pub async fn round_robin(binary: &std::path::Path, servers: &[SocketAddr]) -> Haproxy {
        let dir = tempfile::tempdir().unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], super::redis_server::free_port()));
        let backends: String = servers
            .iter()
            .enumerate()
            .map(|(i, s)| format!("  server gw{i} {s}\n"))
            .collect();
        let config = format!(
            "global\n  maxconn 2000\n\
             defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n  option httpclose\n\
             frontend front\n  bind {addr}\n  default_backend gateways\n\
             backend gateways\n  balance roundrobin\n{backends}"
        );
        let file = dir.path().join("haproxy.cfg");
        std::fs::write(&file, config).unwrap();
        let mut child = Command::new(binary)
            .args(["-db", "-f"])
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy starts");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Haproxy {
                    addr,
                    child,
                    _dir: dir,
                };
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("haproxy did not listen on {addr}");
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
