//! A real `redis-server` for the Redis backend's tests: started on a free port with no
//! persistence (`--save "" --appendonly no`) in a temporary directory, stopped when dropped.
//! Also two high-availability deployments of real processes on 127.0.0.1: [`Sentinels`] (a
//! primary, its replica and three `redis-sentinel`s that fail over from one to the other) and
//! [`Cluster`] (three cluster primaries that share the slots).
//!
//! Without `redis-server` on the PATH the tests are skipped, loudly; under `CI` they fail
//! instead (`.ci/run` installs the Debian package). The deployments also need `redis-cli`
//! (and [`Sentinels`] `redis-sentinel`): see [`available_ha`].
#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// How long a `redis-server` may take to say it is ready.
const READY: Duration = Duration::from_secs(20);

/// How long a deployment may take to settle: to start, or to fail over.
const SETTLE: Duration = Duration::from_secs(30);

/// How many of a process's last lines [`spawn_ready`] keeps, for the messages of a failure.
const LOG_LINES: usize = 200;

/// The master name the [`Sentinels`] monitor.
pub const MASTER_NAME: &str = "mymaster";

/// A `redis-server` process (a primary, a replica or a cluster node) on 127.0.0.1, in its own
/// temporary directory; killed, and the directory removed, when dropped.
pub struct RedisServer {
    /// The process; `None` once [`kill`](Self::kill)ed.
    child: Option<Child>,
    /// Its port on 127.0.0.1 (kept across [`restart_empty`](Self::restart_empty)).
    pub port: u16,
    /// Its temporary directory (`--dir`).
    dir: PathBuf,
    /// Serves TLS only (`rediss://`), with the certificate and key in `dir`.
    tls: bool,
    /// The port of the primary this server replicates.
    replica_of: Option<u16>,
    /// A cluster node (`--cluster-enabled yes`), its nodes file in `dir`: see [`Cluster`].
    cluster: bool,
}

/// Whether `redis-server` can be run; panics under `CI` when it cannot.
pub fn available() -> bool {
    tools_available(&[("redis-server", "redis-server")])
}

/// Whether the high-availability deployments can run: `redis-server`, `redis-sentinel` and
/// `redis-cli`; panics under `CI` when they cannot, as [`available`].
pub fn available_ha() -> bool {
    tools_available(&[
        ("redis-server", "redis-server"),
        ("redis-sentinel", "redis-sentinel"),
        ("redis-cli", "redis-tools"),
    ])
}

/// Whether every one of these `(program, Debian package)` answers `--version`; panics under
/// `CI` when one does not, else says which is missing (the test is skipped).
fn tools_available(tools: &[(&str, &str)]) -> bool {
    for (program, package) in tools {
        let found = Command::new(program)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            assert!(
                std::env::var_os("CI").is_none(),
                "{program} is not installed (apt-get install -y {package}); CI requires it"
            );
            eprintln!("SKIPPED: {program} is not installed (apt-get install -y {package})");
            return false;
        }
    }
    true
}

impl RedisServer {
    /// A fresh `redis-server`, or `None` (the test is skipped) when there is none to run.
    pub fn start() -> Option<RedisServer> {
        RedisServer::start_with(None, None, false)
    }

    /// A fresh `redis-server` replicating `primary` (once it reports the link up: see
    /// [`replicas`](Self::replicas)).
    pub fn start_replica_of(primary: &RedisServer) -> Option<RedisServer> {
        RedisServer::start_with(None, Some(primary.port), false)
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
        RedisServer::start_with(Some((cert, key)), None, false)
    }

    /// Starts a server as [`spawn`](Self::spawn) describes, on the first free port that works.
    fn start_with(
        tls: Option<(&str, &str)>,
        replica_of: Option<u16>,
        cluster: bool,
    ) -> Option<RedisServer> {
        if !available() {
            return None;
        }
        let dir = fresh_dir();
        if let Some((cert, key)) = tls {
            std::fs::write(dir.join("cert.pem"), cert).unwrap();
            std::fs::write(dir.join("key.pem"), key).unwrap();
        }
        for _ in 0..10 {
            let port = if cluster {
                free_cluster_port()
            } else {
                free_port()
            };
            let mut server = RedisServer {
                child: None,
                port,
                dir: dir.clone(),
                tls: tls.is_some(),
                replica_of,
                cluster,
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

    /// Whether the server runs (it was not [`kill`](Self::kill)ed).
    pub fn running(&self) -> bool {
        self.child.is_some()
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
    /// poke at Redis directly: returns the raw reply (see [`command_at`]).
    pub fn command(&self, args: &[&str]) -> String {
        command_at(self.port, args)
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
        if self.cluster {
            // The cluster bus listens on port + 10000 (`free_cluster_port` checked it).
            let nodes = self.dir.join(format!("nodes-{}.conf", self.port));
            command
                .args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(nodes)
                .args(["--cluster-node-timeout", "2000"]);
        }
        command
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            // A replica's first sync starts at once, not after 5 s of waiting for others.
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--logfile", "", "--daemonize", "no"]);
        match spawn_ready(&mut command, "Ready to accept connections") {
            Some((child, _log)) => {
                self.child = Some(child);
                true
            }
            None => false,
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The last [`LOG_LINES`] lines a process printed, kept for the message of a failure.
type Log = Arc<Mutex<VecDeque<String>>>;

/// Spawns `command` (a Redis process logging to its stdout) and waits up to [`READY`] for a
/// line containing `ready`: the child and its log, or `None` (the child killed and waited)
/// when it exited first (its port was taken) or stayed silent.
fn spawn_ready(command: &mut Command, ready: &str) -> Option<(Child, Log)> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let log = Log::default();
    let lines = Arc::clone(&log);
    let ready = ready.to_owned();
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut ready_tx = Some(ready_tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains(&ready) {
                if let Some(tx) = ready_tx.take() {
                    let _ = tx.send(());
                }
            }
            // Keep reading so the process never blocks on a full pipe.
            let mut lines = lines.lock().unwrap();
            if lines.len() == LOG_LINES {
                lines.pop_front();
            }
            lines.push_back(line);
        }
    });
    match ready_rx.recv_timeout(READY) {
        Ok(()) => Some((child, log)),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    }
}

/// A fresh temporary directory of this process's (`syncmux-redis-PID-N`).
fn fresh_dir() -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "syncmux-redis-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A free port for a cluster node: at most 55535, with its bus port (10000 higher) free too.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port <= 55535 && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok() {
            return port;
        }
    }
}

/// Polls `check` every 50 ms until it says `Ok`, for at most [`SETTLE`]; then panics,
/// saying what it waited for and the last `Err` (with `context()`, e.g. logs).
#[allow(clippy::disallowed_methods)] // A test harness waits on the wall clock.
fn settle<T>(
    what: &str,
    mut check: impl FnMut() -> Result<T, String>,
    context: impl FnOnce() -> String,
) -> T {
    let deadline = std::time::Instant::now() + SETTLE;
    loop {
        match check() {
            Ok(value) => return value,
            Err(last) if std::time::Instant::now() >= deadline => {
                panic!("waited {SETTLE:?} for {what}; last: {last}\n{}", context())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// Runs `redis-cli`-like commands on 127.0.0.1:`port` through a plain TCP connection (RESP),
/// for tests that poke at Redis directly: returns the raw reply (`+OK\r\n`), all of it,
/// or what came before the server closed the connection (nothing after `SHUTDOWN`).
/// Panics when the server cannot be reached or stays silent for 5 s.
pub fn command_at(port: u16, args: &[&str]) -> String {
    let reply = request(port, args).unwrap_or_else(|e| panic!("{args:?} on 127.0.0.1:{port}: {e}"));
    String::from_utf8_lossy(&reply).into_owned()
}

/// [`command_at`]'s reply, parsed; an `Err` (no panic) when the server cannot be reached,
/// stays silent or says nothing whole.
pub fn query_at(port: u16, args: &[&str]) -> Result<Reply, String> {
    let reply = request(port, args).map_err(|e| format!("{args:?} on 127.0.0.1:{port}: {e}"))?;
    parse_reply(&reply).map(|(reply, _)| reply).ok_or_else(|| {
        format!(
            "{args:?} on 127.0.0.1:{port}: incomplete reply {:?}",
            String::from_utf8_lossy(&reply)
        )
    })
}

/// Sends `args` as one RESP command and reads until a whole reply or the end of the stream.
fn request(port: u16, args: &[&str]) -> std::io::Result<Vec<u8>> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port))?;
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    tcp.write_all(out.as_bytes())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while parse_reply(&reply).is_none() {
        let n = tcp.read(&mut buf)?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
    }
    Ok(reply)
}

/// One RESP2 reply, as [`query_at`] returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`: a status.
    Status(String),
    /// `-ERR …`: an error.
    Error(String),
    /// `:1`: an integer.
    Int(i64),
    /// `$3 foo`: a bulk string (`$-1`: nil).
    Bulk(Option<String>),
    /// `*2 …`: an array (`*-1`: nil).
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The text of a status or a bulk string.
    pub fn text(&self) -> Option<&str> {
        match self {
            Reply::Status(s) | Reply::Bulk(Some(s)) => Some(s),
            _ => None,
        }
    }

    /// An integer, or a string of one (Sentinel answers ports and counts as strings).
    pub fn int(&self) -> Option<i64> {
        match self {
            Reply::Int(n) => Some(*n),
            _ => self.text()?.parse().ok(),
        }
    }

    /// The elements of an array (none for anything else).
    pub fn items(&self) -> &[Reply] {
        match self {
            Reply::Array(Some(items)) => items,
            _ => &[],
        }
    }

    /// The value after `name` in a flat array of names and values (`SENTINEL MASTER`).
    pub fn field(&self, name: &str) -> Option<&str> {
        self.items()
            .chunks(2)
            .find(|pair| pair[0].text() == Some(name))
            .and_then(|pair| pair.get(1)?.text())
    }
}

/// The first whole reply in `buf` and its length in bytes; `None` while it is incomplete (or
/// is not RESP).
fn parse_reply(buf: &[u8]) -> Option<(Reply, usize)> {
    let end = buf.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(buf.get(1..end)?).ok()?;
    let after = end + 2;
    match buf[0] {
        b'+' => Some((Reply::Status(line.to_owned()), after)),
        b'-' => Some((Reply::Error(line.to_owned()), after)),
        b':' => Some((Reply::Int(line.parse().ok()?), after)),
        b'$' => {
            let Ok(len) = usize::try_from(line.parse::<i64>().ok()?) else {
                return Some((Reply::Bulk(None), after));
            };
            let data = buf.get(after..after + len)?;
            buf.get(after + len..after + len + 2)?;
            let text = String::from_utf8_lossy(data).into_owned();
            Some((Reply::Bulk(Some(text)), after + len + 2))
        }
        b'*' => {
            let Ok(len) = usize::try_from(line.parse::<i64>().ok()?) else {
                return Some((Reply::Array(None), after));
            };
            let mut items = Vec::with_capacity(len.min(1024));
            let mut at = after;
            for _ in 0..len {
                let (item, used) = parse_reply(&buf[at..])?;
                items.push(item);
                at += used;
            }
            Some((Reply::Array(Some(items)), at))
        }
        _ => None,
    }
}

/// A primary, its replica and three `redis-sentinel`s monitoring them as [`MASTER_NAME`]
/// (quorum 2, down after 1 s, failover timeout 3 s): [`kill_primary`](Self::kill_primary)
/// and [`wait_failover`](Self::wait_failover) make the replica the primary. Every process is
/// killed, and the sentinels' directory removed, when dropped.
pub struct Sentinels {
    /// The `redis-server`s: the first started as the primary, the second as its replica, then
    /// those [`add_replica`](Self::add_replica) started; killed ones stay (not running).
    servers: Vec<RedisServer>,
    /// The `redis-sentinel` processes.
    sentinels: Vec<Sentinel>,
    /// The sentinels' configuration files, which they rewrite.
    dir: PathBuf,
}

/// One `redis-sentinel` process of [`Sentinels`].
struct Sentinel {
    /// Its port on 127.0.0.1.
    port: u16,
    /// The process.
    child: Child,
    /// What it printed last.
    log: Log,
}

impl Sentinels {
    /// A primary with its replica online and three sentinels that each see the primary, the
    /// replica and the two other sentinels; `None` (the test is skipped) without the
    /// programs (see [`available_ha`]). Panics when it does not settle within 30 s.
    pub fn start() -> Option<Sentinels> {
        if !available_ha() {
            return None;
        }
        let primary = RedisServer::start()?;
        let replica = RedisServer::start_replica_of(&primary)?;
        // Built now, so that a panic below still stops every process.
        let mut deployment = Sentinels {
            servers: vec![primary, replica],
            sentinels: Vec::new(),
            dir: fresh_dir(),
        };
        let primary = &deployment.servers[0];
        settle(
            "the replica to be online on the primary",
            || match primary.replicas() {
                0 => Err(primary.command(&["INFO", "replication"])),
                _ => Ok(()),
            },
            String::new,
        );
        let primary_port = primary.port;
        for _ in 0..3 {
            let sentinel = deployment.spawn_sentinel(primary_port);
            deployment.sentinels.push(sentinel);
        }
        let ports = deployment.sentinel_ports();
        settle(
            "every sentinel to see the primary, its replica and 2 other sentinels",
            || ports.iter().try_for_each(|&port| sentinel_settled(port)),
            || deployment.logs(),
        );
        Some(deployment)
    }

    /// A `redis-sentinel` monitoring 127.0.0.1:`primary`, with its own configuration file in
    /// `self.dir`, on the first free port that works.
    fn spawn_sentinel(&self, primary: u16) -> Sentinel {
        for _ in 0..10 {
            let port = free_port();
            let config = self.dir.join(format!("sentinel-{port}.conf"));
            let text = format!(
                "port {port}\n\
                 bind 127.0.0.1\n\
                 daemonize no\n\
                 logfile \"\"\n\
                 dir \"{dir}\"\n\
                 sentinel resolve-hostnames no\n\
                 sentinel monitor {MASTER_NAME} 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                 sentinel failover-timeout {MASTER_NAME} 3000\n\
                 sentinel parallel-syncs {MASTER_NAME} 1\n",
                dir = self.dir.display(),
            );
            std::fs::write(&config, text).unwrap();
            let mut command = Command::new("redis-sentinel");
            command.arg(&config);
            if let Some((child, log)) = spawn_ready(&mut command, "Sentinel ID is") {
                return Sentinel { port, child, log };
            }
        }
        panic!("could not start redis-sentinel on a free port");
    }

    /// `redis+sentinel://127.0.0.1:S1,127.0.0.1:S2,127.0.0.1:S3/mymaster`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        format!("redis+sentinel://{}/{MASTER_NAME}", hosts.join(","))
    }

    /// The sentinels' ports.
    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    /// The primary's port as the first sentinel that answers names it
    /// (`SENTINEL get-master-addr-by-name`).
    pub fn primary_port(&self) -> u16 {
        let mut errors = Vec::new();
        for sentinel in &self.sentinels {
            match named_primary(sentinel.port) {
                Ok(port) => return port,
                Err(e) => errors.push(e),
            }
        }
        panic!("no sentinel names the primary: {errors:?}");
    }

    /// The server the sentinels name the primary (it may have been killed since).
    pub fn primary(&self) -> &RedisServer {
        let port = self.primary_port();
        self.servers
            .iter()
            .find(|s| s.port == port)
            .unwrap_or_else(|| panic!("the sentinels name 127.0.0.1:{port}, none of ours"))
    }

    /// A replica of the primary: the newest server that runs and is not the primary (the one
    /// started as the replica, until [`add_replica`](Self::add_replica) starts another).
    pub fn replica(&self) -> &RedisServer {
        let port = self.primary_port();
        self.servers
            .iter()
            .rev()
            .find(|s| s.port != port && s.running())
            .unwrap_or_else(|| panic!("no replica of 127.0.0.1:{port} runs"))
    }

    /// Starts one more replica of the current primary (after a failover, the new primary has
    /// none) and waits, up to 30 s, until the primary has it online ([`replica`](Self::replica)
    /// is then this one). The sentinels find it on their next look at the primary's `INFO`
    /// (every 10 s).
    pub fn add_replica(&mut self) {
        let replica = RedisServer::start_replica_of(self.primary()).expect("redis-server runs");
        let port = replica.port;
        self.servers.push(replica);
        let primary = self.primary();
        let online = format!("port={port},state=online");
        settle(
            &format!("the new replica 127.0.0.1:{port} to be online on the primary"),
            || {
                let info = primary.command(&["INFO", "replication"]);
                match info.contains(&online) {
                    true => Ok(()),
                    false => Err(info),
                }
            },
            String::new,
        );
    }

    /// The replicas online on the primary, as its `INFO replication` says.
    pub fn replicas_online(&self) -> usize {
        self.primary().replicas()
    }

    /// Cuts the primary off from its replica: connections from now on must authenticate,
    /// which the replica cannot, and the replicas' links are closed, so that what the primary
    /// takes from now on no replica gets. (Stopping the replica instead would not do: what the
    /// primary sent waits in the replica's socket.)
    pub fn cut_replica_off(&self) {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", self.primary_port())).unwrap();
        // One connection for both: it stays authenticated once the password is set.
        let commands = [
            ["CONFIG", "SET", "requirepass", "cut"],
            ["CLIENT", "KILL", "TYPE", "replica"],
        ];
        let mut out = String::new();
        for command in commands {
            out.push_str(&format!("*{}\r\n", command.len()));
            for arg in command {
                out.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
            }
        }
        tcp.write_all(out.as_bytes()).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut replies = String::new();
        let mut buf = [0; 256];
        while replies.lines().count() < 2 {
            let n = tcp.read(&mut buf).unwrap();
            assert!(n > 0, "the primary closed the connection: {replies:?}");
            replies.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        assert!(
            replies.starts_with("+OK\r\n:"),
            "cutting the replica off: {replies:?}"
        );
    }

    /// Kills (SIGKILL) the server the sentinels name the primary; returns its port.
    pub fn kill_primary(&mut self) -> u16 {
        let port = self.primary_port();
        let server = self.servers.iter_mut().find(|s| s.port == port).unwrap();
        assert!(
            server.running(),
            "the primary 127.0.0.1:{port} is already killed"
        );
        server.kill();
        port
    }

    /// Waits until every sentinel that answers names a primary other than `old_port`, the
    /// same, and that server answers `ROLE` as `master`; returns its port. Panics after 30 s.
    pub fn wait_failover(&self, old_port: u16) -> u16 {
        settle(
            &format!("the sentinels to fail over from 127.0.0.1:{old_port}"),
            || {
                let named: Vec<u16> = self
                    .sentinels
                    .iter()
                    .filter_map(|s| named_primary(s.port).ok())
                    .collect();
                let Some(&port) = named.first() else {
                    return Err("no sentinel answers".to_owned());
                };
                if port == old_port || named.iter().any(|&p| p != port) {
                    return Err(format!("the sentinels name {named:?}"));
                }
                let role = query_at(port, &["ROLE"])?;
                match role.items().first().and_then(Reply::text) {
                    Some("master") => Ok(port),
                    _ => Err(format!("127.0.0.1:{port} answers ROLE {role:?}")),
                }
            },
            || self.logs(),
        )
    }

    /// The sentinels' last log lines, for the message of a failure.
    fn logs(&self) -> String {
        let mut out = String::new();
        for sentinel in &self.sentinels {
            out.push_str(&format!("--- redis-sentinel on port {}\n", sentinel.port));
            for line in sentinel.log.lock().unwrap().iter() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        // The sentinels first, so that none reacts to the servers going (dropped after this).
        for sentinel in &mut self.sentinels {
            let _ = sentinel.child.kill();
            let _ = sentinel.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The primary's port as the sentinel on `port` names it.
fn named_primary(port: u16) -> Result<u16, String> {
    let reply = query_at(port, &["SENTINEL", "get-master-addr-by-name", MASTER_NAME])?;
    reply
        .items()
        .get(1)
        .and_then(Reply::int)
        .and_then(|p| u16::try_from(p).ok())
        .ok_or_else(|| format!("sentinel {port} names {reply:?}"))
}

/// `Ok` when the sentinel on `port` sees the primary up, with 2 other sentinels and 1
/// replica, that replica connected with its link to the primary up.
fn sentinel_settled(port: u16) -> Result<(), String> {
    let master = query_at(port, &["SENTINEL", "MASTER", MASTER_NAME])?;
    let flags = master.field("flags");
    let others = master.field("num-other-sentinels");
    let replicas = master.field("num-slaves");
    if flags != Some("master") || others != Some("2") || replicas != Some("1") {
        return Err(format!(
            "sentinel {port}: flags {flags:?}, num-other-sentinels {others:?}, \
             num-slaves {replicas:?}"
        ));
    }
    let replicas = query_at(port, &["SENTINEL", "REPLICAS", MASTER_NAME])?;
    let linked = replicas
        .items()
        .iter()
        .filter(|r| {
            r.field("flags") == Some("slave") && r.field("master-link-status") == Some("ok")
        })
        .count();
    if linked != 1 {
        return Err(format!("sentinel {port}: replicas {replicas:?}"));
    }
    Ok(())
}

/// Three `redis-server` cluster primaries (no replicas, node timeout 2 s) that share the
/// 16384 slots, joined by `redis-cli --cluster create`. Every node is killed when dropped.
pub struct Cluster {
    /// The nodes, in the order of [`ports`](Self::ports).
    nodes: [RedisServer; 3],
}

impl Cluster {
    /// A cluster whose three nodes each say `cluster_state:ok`; `None` (the test is skipped)
    /// without `redis-server` or `redis-cli`. Panics when it does not settle within 30 s.
    pub fn start() -> Option<Cluster> {
        if !tools_available(&[
            ("redis-server", "redis-server"),
            ("redis-cli", "redis-tools"),
        ]) {
            return None;
        }
        // Should one fail to start, the others (local so far) are dropped, so stopped.
        let a = RedisServer::start_with(None, None, true)?;
        let b = RedisServer::start_with(None, None, true)?;
        let c = RedisServer::start_with(None, None, true)?;
        let cluster = Cluster { nodes: [a, b, c] };
        let mut command = Command::new("redis-cli");
        command.arg("--cluster").arg("create");
        for port in cluster.ports() {
            command.arg(format!("127.0.0.1:{port}"));
        }
        command.args(["--cluster-replicas", "0", "--cluster-yes"]);
        let (ok, output) = run_for(&mut command, SETTLE);
        assert!(ok, "redis-cli --cluster create failed:\n{output}");
        let ports = cluster.ports();
        settle(
            "every cluster node to say cluster_state:ok",
            || {
                ports.iter().try_for_each(|&port| {
                    let info = query_at(port, &["CLUSTER", "INFO"])?;
                    match info.text() {
                        Some(text) if text.contains("cluster_state:ok") => Ok(()),
                        _ => Err(format!("127.0.0.1:{port}: {info:?}")),
                    }
                })
            },
            || format!("redis-cli --cluster create said:\n{output}"),
        );
        Some(cluster)
    }

    /// `redis+cluster://127.0.0.1:A,127.0.0.1:B,127.0.0.1:C`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .ports()
            .iter()
            .map(|port| format!("127.0.0.1:{port}"))
            .collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// The nodes' ports.
    pub fn ports(&self) -> [u16; 3] {
        [self.nodes[0].port, self.nodes[1].port, self.nodes[2].port]
    }

    /// The nodes, in the order of [`ports`](Self::ports).
    pub fn nodes(&self) -> &[RedisServer; 3] {
        &self.nodes
    }

    /// The port of the node that serves `key`'s slot (`CLUSTER KEYSLOT`, `CLUSTER SLOTS`).
    pub fn slot_owner(&self, key: &str) -> u16 {
        let port = self.nodes[0].port;
        let slot = query_at(port, &["CLUSTER", "KEYSLOT", key])
            .unwrap()
            .int()
            .unwrap();
        let slots = query_at(port, &["CLUSTER", "SLOTS"]).unwrap();
        slots
            .items()
            .iter()
            .find(|range| {
                let bound = |i: usize| range.items().get(i).and_then(Reply::int);
                bound(0).is_some_and(|start| start <= slot)
                    && bound(1).is_some_and(|end| slot <= end)
            })
            .and_then(|range| range.items().get(2)?.items().get(1)?.int())
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or_else(|| panic!("no node serves slot {slot} ({key}): {slots:?}"))
    }

    /// Runs `args` (about `key`) on the node that serves `key`'s slot: the raw reply, as
    /// [`command_at`].
    pub fn command_on_slot_owner(&self, key: &str, args: &[&str]) -> String {
        command_at(self.slot_owner(key), args)
    }
}

/// Runs `command` to its end, for at most `limit` (then kills it): whether it succeeded,
/// and its stdout and stderr together.
#[allow(clippy::disallowed_methods)] // A test harness waits on the wall clock.
fn run_for(command: &mut Command, limit: Duration) -> (bool, String) {
    let (mut reader, writer) = std::io::pipe().unwrap();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(writer.try_clone().unwrap())
        .stderr(writer)
        .spawn()
        .unwrap();
    // `command` holds the pipe's write ends until it is gone: replace them so output ends.
    command.stdout(Stdio::null()).stderr(Stdio::null());
    let output = std::thread::spawn(move || {
        let mut output = String::new();
        let _ = reader.read_to_string(&mut output);
        output
    });
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut output = output.join().unwrap();
    if status.is_none() {
        output.push_str(&format!("\n(killed after {limit:?})"));
    }
    (status.is_some_and(|s| s.success()), output)
}
