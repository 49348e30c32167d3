//! A real `redis-server` for the Redis backend's tests: started on a free port with no
//! persistence (`--save "" --appendonly no`) in a temporary directory, stopped when dropped.
//!
//! Without `redis-server` on the PATH the tests are skipped, loudly; under `CI` they fail
//! instead (`.ci/run` installs the Debian package).
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// How long a `redis-server` may take to say it is ready.
const READY: Duration = Duration::from_secs(20);

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    /// Serves TLS only (`rediss://`), with the certificate and key in `dir`.
    tls: bool,
    /// The port of the primary this server replicates.
    replica_of: Option<u16>,
}

/// Whether `redis-server` can be run; panics under `CI` when it cannot.
pub fn available() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "redis-server is not installed (apt-get install -y redis-server); CI requires it"
        );
        eprintln!("SKIPPED: redis-server is not installed (apt-get install -y redis-server)");
    }
    found
}

impl RedisServer {
    /// A fresh `redis-server`, or `None` (the test is skipped) when there is none to run.
    pub fn start() -> Option<RedisServer> {
        RedisServer::start_with(None, None)
    }

    /// A fresh `redis-server` replicating `primary` (once it reports the link up: see
    /// [`replicas`](Self::replicas)).
    pub fn start_replica_of(primary: &RedisServer) -> Option<RedisServer> {
        RedisServer::start_with(None, Some(primary.port))
    }

    /// The replicas connected to this server and in sync, as its `INFO replication` says.
    pub fn replicas(&self) -> usize {
        let info = self.command(&["INFO", "replication"]);
        info.lines()
            .filter(|l| l.starts_with("slave") && l.contains("state=online"))
            .count()
    }

    /// A fresh `redis-server` that speaks only TLS, with this PEM certificate (its own CA)
    /// and key; `None` as [`start`](Self::start).
    pub fn start_tls(cert: &str, key: &str) -> Option<RedisServer> {
        RedisServer::start_with(Some((cert, key)), None)
    }

    fn start_with(tls: Option<(&str, &str)>, replica_of: Option<u16>) -> Option<RedisServer> {
        if !available() {
            return None;
        }
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "syncmux-redis-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        if let Some((cert, key)) = tls {
            std::fs::write(dir.join("cert.pem"), cert).unwrap();
            std::fs::write(dir.join("key.pem"), key).unwrap();
        }
        for _ in 0..10 {
            let port = free_port();
            let mut server = RedisServer {
                child: None,
                port,
                dir: dir.clone(),
                tls: tls.is_some(),
                replica_of,
            };
            if server.spawn() {
                return Some(server);
            }
        }
        panic!("could not start redis-server on a free port");
    }

    /// `redis://127.0.0.1:PORT` (`rediss://` over TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Kills the server: Redis is lost, with its data (there is no persistence).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends the server a signal by name (`STOP` pauses it, `CONT` resumes it).
    pub fn signal(&self, name: &str) {
        let pid = self.child.as_ref().expect("a running server").id();
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} {pid}");
    }

    /// Starts it again on the same port, empty.
    pub fn restart_empty(&mut self) {
        self.kill();
        for _ in 0..50 {
            if self.spawn() {
                return;
            }
            // The port is held by a socket of the old process a little longer.
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("could not restart redis-server on port {}", self.port);
    }

    /// Runs `redis-cli`-like commands through a plain TCP connection (RESP), for tests that
    /// poke at Redis directly: returns the raw reply.
    pub fn command(&self, args: &[&str]) -> String {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        tcp.write_all(out.as_bytes()).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 4096];
        let n = tcp.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// Starts `redis-server` on `self.port`; `false` if it exited (the port was taken).
    fn spawn(&mut self) -> bool {
        let mut command = Command::new("redis-server");
        if self.tls {
            // TLS only: the plain port is off, clients need no certificate of their own.
            let file = |name: &str| self.dir.join(name).to_string_lossy().into_owned();
            command
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .args(["--tls-cert-file", &file("cert.pem")])
                .args(["--tls-key-file", &file("key.pem")])
                .args(["--tls-ca-cert-file", &file("cert.pem")])
                .args(["--tls-auth-clients", "no"]);
        } else {
            command.args(["--port", &self.port.to_string()]);
        }
        if let Some(primary) = self.replica_of {
            command.args(["--replicaof", "127.0.0.1", &primary.to_string()]);
        }
        let mut child = command
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--logfile", "", "--daemonize", "no"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("Ready to accept connections") {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
                // Keep reading so the server never blocks on a full pipe.
            }
        });
        match ready_rx.recv_timeout(READY) {
            Ok(()) => {
                self.child = Some(child);
                true
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                false
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}
