//! A real nginx from Debian's packages, started by a test on a free loopback port with a
//! configuration of the test's, and stopped when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Nginx {
    pub addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

/// The nginx binary, or `None` after printing why the test skips. Under `CI=true` a missing
/// nginx fails the test instead: CI must run it.
pub fn binary() -> Option<PathBuf> {
    let found = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "nginx is required under CI=true (Debian package nginx; ./scripts/test installs it)"
        );
        eprintln!("skipping: nginx not found (install Debian's nginx, or run ./scripts/test)");
    }
    found
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

impl Nginx {
    /// Starts nginx with `http_block` (the inside of `http { }`) listening on `addr`,
    /// which the block must use. `files` (name, contents) are written to nginx's own
    /// directory first; the block names that directory as `{dir}`.
    pub async fn start(
        binary: &Path,
        addr: SocketAddr,
        http_block: &str,
        files: &[(&str, &str)],
    ) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().display().to_string();
        for (name, contents) in files {
            std::fs::write(dir.path().join(name), contents).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
        let user = if running_as_root() { "user root;" } else { "" };
        let conf = format!(
            "{user}\nworker_processes 1;\ndaemon off;\npid {root}/nginx.pid;\n\
             error_log {root}/error.log warn;\nevents {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {root}/tmp/body;\n\
             proxy_temp_path {root}/tmp/proxy;\n  fastcgi_temp_path {root}/tmp/fastcgi;\n\
             uwsgi_temp_path {root}/tmp/uwsgi;\n  scgi_temp_path {root}/tmp/scgi;\n\
             {}\n}}\n",
            http_block.replace("{dir}", &root)
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("nginx starts");
        let nginx = Nginx { addr, child, dir };
        nginx.wait_until_listening().await;
        nginx
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn wait_until_listening(&self) {
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default();
        panic!("nginx did not listen on {}: {log}", self.addr);
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: the master then stops its workers, which a killed master
        // would leave running.
        let stopped = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if !stopped {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
