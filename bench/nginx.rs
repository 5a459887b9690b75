//! The two nginx instances of the comparison, from Debian's package: the origin every row
//! ends at, and nginx as a plain reverse proxy in front of it (the bar wxgate must reach).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::procs::{Proc, free_addr};

/// What the origin answers: about 100 bytes, like a small JSON API answer.
pub const ORIGIN_BODY: &str = "{\"ok\":true,\"activity\":\"spring-2024\",\"items\":[1,2,3,4,5,6,7,8],\"note\":\"wxgate bench origin\"}\n";

/// One worker, `return 200`: the cheapest origin nginx can be.
pub fn start_origin(dir: &Path) -> Result<(Proc, SocketAddr), String> {
    let addr = free_addr()?;
    let server = format!(
        "server {{ listen {addr} backlog=4096; location / {{ default_type application/json; return 200 '{}'; }} }}",
        ORIGIN_BODY.trim_end().replace('\'', "\\'")
    );
    start("origin", dir, "1", &server, addr).map(|p| (p, addr))
}

/// The proxy's two listeners: plain HTTP/1.1, and TLS with HTTP/2 and HTTP/1.1 by ALPN.
pub struct ProxyAddrs {
    pub plain: SocketAddr,
    pub tls: SocketAddr,
}

/// `worker_processes auto` with a keep-alive upstream pool, setting the same forwarded headers
/// wxgate sets, access log off like the gateways in the bench. The TLS listener uses the
/// gateways' certificate (`cert`, `key`), TLS 1.3 and 1.2 as rustls offers them.
pub fn start_proxy(
    dir: &Path,
    origin: SocketAddr,
    (cert, key): &(PathBuf, PathBuf),
) -> Result<(Proc, ProxyAddrs), String> {
    let addr = free_addr()?;
    let tls = free_addr()?;
    let server = format!(
        "upstream origin {{ server {origin}; keepalive 256; }}
  server {{
    listen {addr} backlog=4096;
    listen {tls} ssl http2 backlog=4096;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:SSL:10m;
    location / {{
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Host $host;
    }}
  }}",
        cert = cert.display(),
        key = key.display(),
    );
    start("nginx-proxy", dir, "auto", &server, addr).map(|p| (p, ProxyAddrs { plain: addr, tls }))
}

fn start(
    name: &str,
    dir: &Path,
    workers: &str,
    server: &str,
    listen: SocketAddr,
) -> Result<Proc, String> {
    let home = dir.join(name);
    std::fs::create_dir_all(home.join("tmp")).map_err(|e| e.to_string())?;
    let tmp = home.join("tmp");
    let tmp = tmp.display();
    let conf = format!(
        "daemon off;
worker_processes {workers};
worker_rlimit_nofile 40000;
pid {home}/nginx.pid;
error_log {home}/error.log warn;
events {{ worker_connections 20000; multi_accept on; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  {server}
}}
",
        home = home.display()
    );
    let conf_path = home.join("nginx.conf");
    std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
    let mut command = Command::new("nginx");
    command
        .arg("-p")
        .arg(&home)
        .arg("-e")
        .arg(home.join("error.log"))
        .arg("-c")
        .arg(&conf_path);
    let mut proc = Proc::spawn(name, command, dir)?;
    proc.wait_listening(listen, Duration::from_secs(10))?;
    Ok(proc)
}
