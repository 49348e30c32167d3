//! The sync server on the embedded `MemoryStore`, ready to deploy.
//!
//! ```text
//! cargo run --release -p syncmux-server -- [--listen 127.0.0.1:8787]
//!     [--token T] [--rate-limit N/SECS|0] [--max-frame BYTES] [--max-outbound BYTES]
//!     [--ping-interval MS] [--ot-broadcast-delay MS] [--idle-timeout MS]
//!     [--presence-ttl MS] [--room-max N] [--allowed-origins ORIGINS]
//!     [--handshake-timeout MS] [--max-connections N] [--tls-cert PEM --tls-key PEM]
//!     [--static DIR] [--metrics ADDR] [--log-format human|json] [--shutdown-timeout MS]
//!     [--data PATH] [--retention N]
//!     [--redis URL [--redis-prefix P] [--redis-retention N] [--redis-min-replicas N]]
//! ```
//!
//! Every flag can also come from an environment variable (`SYNCMUX_LISTEN`,
//! `SYNCMUX_TOKEN`, ...; `--help` names each); a flag wins over its variable. An invalid value
//! is refused with a message and exit code 2.
//!
//! `--redis URL` (built with `--features redis`) keeps the change log in Redis instead
//! of memory, so that several servers on one Redis behave as one (see
//! the crate `syncmux-redis`): start each with the same `--redis` and `--redis-prefix`. A
//! Redis that cannot be reached at start-up is an error (exit 1); one lost later fails
//! requests with `UNAVAILABLE` until it is back. The `/ot` documents then live in the same
//! Redis too (`syncmux_redis::RedisOt`; keys `{PREFIX}:doc:ID:metadata`, `:data`,
//! `:history`, channel `{PREFIX}:doc:ID`), and clients of every server converge.
//!
//! `--data PATH` (built with `--features sqlite`) keeps the changes in the SQLite
//! database at PATH (created if missing; see the crate `syncmux-sqlite`): a push is answered
//! once it is on disk, and after a restart, `kill -9` included, every answered change is
//! there at the same cursor, so clients resume with `recovered: true`. A damaged or foreign
//! file stops the start-up (exit 1). Without `--data` or `--redis` the changes are kept in
//! memory only, and the server says so at start-up. `--retention N` keeps at most the N newest
//! changes (0, the default: all), in memory or on disk.
//!
//! Serves `ws://ADDR/sync/ws` (`wss://` with a certificate) and prints
//! `listening on URL` once ready (with the real port when given port 0); with `--metrics`,
//! then `metrics on http://ADDR/metrics`; then `ot on ws://ADDR/ot`: the OT profile
//! (`syncmux::ot`) for the npm `@open-ot/transport-websocket` client, on
//! `/ot` and every path under it, with the same `--token` (`?token=`), `--rate-limit` (N
//! messages per SECS window, answered `Rate limit exceeded`), `--ping-interval`,
//! `--max-frame`, `--max-outbound`, `--max-connections` (counted apart from the sync
//! endpoint's) and TLS; `--ot-broadcast-delay` is its own (see
//! `syncmux::ot::OtServerConfig::broadcast_delay`). Logs go to stderr through `tracing` (`RUST_LOG`
//! filters), as text or as JSON lines (`--log-format json`).
//!
//! On SIGINT or SIGTERM it stops accepting, closes every session with 1001, waits for each
//! session's close to go out (at most `--shutdown-timeout`) and exits 0. The in-memory store
//! answers every request inside the input that brought it (the driver is synchronous), so
//! whatever it accepted was answered before the shutdown took the lock. With Redis, a push
//! still on its way may be merged without its answer going out: the client re-sends it after
//! reconnecting, and merging is idempotent.
//!
//! `--static DIR` serves DIR's files (tower-http's `ServeDir` on hyper) on the WebSocket's
//! own listener, `index.html` at `/`, so `--static examples/browser` serves the browser
//! demo; the upgrade on `/sync/ws` still goes through the adapter's own `accept` (see
//! [`static_files`]). `--metrics ADDR` serves Prometheus metrics at `/metrics` and a
//! liveness check at `/health` on a second listener (see `syncmux_runtime::metrics`).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, ValueEnum};
use syncmux::ot::{OtServer, OtServerConfig};
use syncmux::{AuthDecision, AuthRequest, ConfigError, Driver, MemoryStore, StoreConfig};
use syncmux::{Server, ServerConfig};
#[cfg(feature = "redis")]
use syncmux_redis::{RedisBackend, RedisConfig, RedisOt, RedisOtConfig};
use syncmux_runtime::{self as adapters, Clock, OtServerHandle, ServerOptions, SyncServer};

/// Where the WebSocket is served.
const WS_PATH: &str = "/sync/ws";

mod http;
mod ot_http;
mod presence;
mod sse;
/// Where the OT profile is served (and every path under it: `/ot/...`).
const OT_PATH: &str = "/ot";

/// The syncmux sync server on an in-memory store.
///
/// Every flag can also be set by the environment variable named in its help; a flag given on
/// the command line wins. 0 disables a limit or timer.
// (Not in `--help`:) the variables are named by one rule, in `Cli::with_env`: `SYNCMUX_` and
// the flag's long name in capitals (`--tls-cert`: `SYNCMUX_TLS_CERT`).
#[derive(Parser, Debug)]
#[command(name = "server", version)]
struct Cli {
    /// Address to listen on; port 0 picks a free port (the real address is printed).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8787")]
    listen: String,
    /// Require this token from every client (`Authorization: Bearer`, `?access_token=` or
    /// `?token=`), on `/ot` too; others get HTTP 401.
    #[arg(long, value_name = "T", hide_env_values = true)]
    token: Option<String>,
    /// Per-session rate limit: a burst of N messages, refilled N per SECS seconds (on `/ot`: N
    /// messages per SECS-second window, as the seed counts); 0 disables it [default: 100/60].
    #[arg(long, value_name = "N/SECS|0", value_parser = rate_limit)]
    rate_limit: Option<RateLimit>,
    /// Longest frame in bytes, the WebSocket layer's included [default: 1048576].
    #[arg(long, value_name = "BYTES")]
    max_frame: Option<usize>,
    /// Bytes queued for one session before it is closed as a slow consumer (4503)
    /// [default: 8388608].
    #[arg(long, value_name = "BYTES")]
    max_outbound: Option<usize>,
    /// Ping a session silent this long, in milliseconds (on `/ot`: ping every connection this
    /// often, and drop one that did not answer the previous ping) [default: 30000].
    #[arg(long, value_name = "MS", value_parser = millis)]
    ping_interval: Option<Duration>,
    /// On `/ot`: longest time an op sent on to a connection may wait to leave in one write
    /// with what that connection gets next (its own ack at once, or the other ops of the
    /// delay), in milliseconds; 0 sends every op on at once [default: 1].
    #[arg(long, value_name = "MS", value_parser = millis)]
    ot_broadcast_delay: Option<Duration>,
    /// Close a session silent this long (4408), in milliseconds [default: 90000].
    #[arg(long, value_name = "MS", value_parser = millis)]
    idle_timeout: Option<Duration>,
    /// A session leaves its presence topics after this long without a frame, in milliseconds
    /// [default: 60000].
    #[arg(long, value_name = "MS", value_parser = millis)]
    presence_ttl: Option<Duration>,
    /// The only origins (`https://app.example.com`, comma-separated) whose pages may connect:
    /// a WebSocket upgrade, SSE stream or HTTP request from another origin gets 403, and these
    /// get CORS answers (preflights included); `*` lets every origin in, with CORS answers.
    /// Without it any origin may open a WebSocket, and the HTTP routes give no CORS answers
    /// (a browser lets only same-origin pages read them).
    #[arg(long, value_name = "ORIGINS", value_delimiter = ',')]
    allowed_origins: Vec<String>,
    /// The reverse proxies (addresses or networks, `10.0.0.0/8`, comma-separated) whose
    /// `X-Forwarded-For` names the client: the HTTP requests' rate limit then counts the
    /// address they forward for rather than their own. Without it the header is ignored.
    #[arg(long, value_name = "NETS", value_delimiter = ',', value_parser = net)]
    trusted_proxies: Vec<ipnet::IpNet>,
    /// Most members of one room [default: 1000].
    #[arg(long, value_name = "N")]
    room_max: Option<usize>,
    /// Deadline of a connection's whole handshake, TLS included, in milliseconds
    /// [default: 10000].
    #[arg(long, value_name = "MS", value_parser = millis)]
    handshake_timeout: Option<Duration>,
    /// Most sessions at once; beyond it an upgrade gets HTTP 503 [default: 100000].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Certificate chain (PEM) to serve `wss://`; goes with --tls-key.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve DIR's files over HTTP on the same listener (`index.html` at `/`).
    #[arg(long = "static", value_name = "DIR")]
    static_dir: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (and `/health`) on a second listener;
    /// port 0 picks a free port (the real address is printed).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// Log format on stderr (`RUST_LOG` filters either).
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    /// On SIGINT or SIGTERM, wait at most this long for the sessions' closes to go out, in
    /// milliseconds.
    #[arg(
        long,
        value_name = "MS",
        value_parser = millis,
        default_value = "5000"
    )]
    shutdown_timeout: Duration,
    /// Keep the change log in the Redis at URL (`redis://HOST:PORT`, `rediss://` for TLS, which
    /// trusts the system's roots or those of `SSL_CERT_FILE`; a Sentinel deployment as
    /// `redis+sentinel://HOST:PORT,HOST:PORT/MASTER`, followed through failovers; a Redis
    /// Cluster as `redis+cluster://HOST:PORT,HOST:PORT`, its seed nodes), shared with every
    /// server started with the same URL and prefix, instead of in memory. Needs a build with
    /// `--features redis`.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// With --redis: the keys' prefix (`{PREFIX}:...`); servers sharing a log use the same.
    #[arg(long, value_name = "PREFIX", default_value = "syncmux")]
    redis_prefix: String,
    /// With --redis: the most changes the log keeps, the oldest going first; 0 keeps all.
    #[arg(long, value_name = "N", default_value_t = 0)]
    redis_retention: usize,
    /// With --redis: replicas that must hold a push or an OT op before it is acknowledged
    /// (Redis's WAIT, 1 s); a push they do not confirm answers UNAVAILABLE, an op an error
    /// (it stands; the client fetches the document). 0 acknowledges once the primary has it.
    #[arg(long, value_name = "N", default_value_t = 0)]
    redis_min_replicas: usize,
    /// Keep the changes in the SQLite database at PATH (created if missing), so that they
    /// survive restarts and crashes. Needs a build with `--features sqlite`.
    #[arg(long, value_name = "PATH", conflicts_with = "redis")]
    data: Option<PathBuf>,
    /// The most changes kept (in memory, or in --data), the oldest going first; 0 keeps all.
    /// With --redis, --redis-retention wins when set.
    #[arg(long, value_name = "N", default_value_t = 0)]
    retention: usize,
}

impl Cli {
    /// The command line, each flag also read from its variable: `SYNCMUX_` and its long name
    /// in capitals, `-` as `_`.
    fn with_env() -> clap::Command {
        Cli::command().mut_args(|arg| match arg.get_long() {
            Some(long) => {
                let env = format!("SYNCMUX_{}", long.replace('-', "_").to_uppercase());
                arg.env(env)
            }
            None => arg,
        })
    }

    /// Parses `args` (the program's name first) and the variables, as `Parser::try_parse_from`
    /// does.
    fn try_parse_with_env<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut command = Cli::with_env();
        let mut matches = command.try_get_matches_from_mut(args)?;
        Cli::from_arg_matches_mut(&mut matches).map_err(|e| e.format(&mut command))
    }
}

/// `--redis` and its options.
struct Redis {
    url: String,
    prefix: String,
    retention: usize,
    min_replicas: usize,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// `--rate-limit`: a token bucket, or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RateLimit {
    Off,
    Bucket { burst: u32, window: Duration },
}

/// An address (`10.0.0.1`, a network of one) or a network (`10.0.0.0/8`).
fn net(value: &str) -> Result<ipnet::IpNet, String> {
    let value = value.trim();
    match value.parse::<std::net::IpAddr>() {
        Ok(address) => Ok(ipnet::IpNet::from(address)),
        Err(_) => value
            .parse()
            .map_err(|_| format!("{value:?} is not an address or a network (10.0.0.0/8)")),
    }
}

fn rate_limit(value: &str) -> Result<RateLimit, String> {
    if value == "0" {
        return Ok(RateLimit::Off);
    }
    let bad = || format!("{value:?} is not N/SECS (for example 100/60) or 0");
    let (n, secs) = value.split_once('/').ok_or_else(bad)?;
    let burst: u32 = n.parse().map_err(|_| bad())?;
    let secs: u64 = secs.parse().map_err(|_| bad())?;
    if burst == 0 || secs == 0 {
        return Err(format!(
            "{value:?}: N and SECS must be at least 1 (0 alone disables the rate limit)"
        ));
    }
    Ok(RateLimit::Bucket {
        burst,
        window: Duration::from_secs(secs),
    })
}

fn millis(value: &str) -> Result<Duration, String> {
    value
        .parse()
        .map(Duration::from_millis)
        .map_err(|_| format!("{value:?} is not a whole number of milliseconds"))
}

/// Whether `given` is the server's `token`, in time independent of where they differ, so that
/// the time a refusal takes tells a client nothing about how much of its guess was right.
fn token_matches(given: &str, token: &str) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(given.as_bytes().ct_eq(token.as_bytes()))
}

/// `HOST:PORT`, as `--listen` and `--metrics` take it; binding it may still fail (a port in
/// use, a host that does not resolve), which is an error of the run, not of the value.
fn check_listen(flag: &str, value: &str) -> Result<(), String> {
    let bad = || format!("{flag} {value:?} is not HOST:PORT (for example 127.0.0.1:8787)");
    let (host, port) = value.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok(())
}

/// `--static DIR` must be a directory: a server that starts on a missing one serves nothing
/// but 404s, and says nothing about why.
fn check_dir(dir: &std::path::Path) -> Result<(), String> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(format!("--static {}: not a directory", dir.display())),
        Err(e) => Err(format!("--static {}: {e}", dir.display())),
    }
}

/// `--tls-cert` and `--tls-key` read and made a TLS configuration; each file that cannot serve
/// is named with what is wrong with it (swapped files are a common slip).
fn tls(cert: &std::path::Path, key: &std::path::Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let read = |flag: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| format!("{flag} {}: {e}", path.display()))
    };
    let (cert_pem, key_pem) = (read("--tls-cert", cert)?, read("--tls-key", key)?);
    let holds = |pem: &[u8], label: &str| String::from_utf8_lossy(pem).contains(label);
    if !holds(&cert_pem, "-----BEGIN CERTIFICATE-----") {
        let hint = if holds(&cert_pem, "PRIVATE KEY-----") {
            " (it holds a private key: are --tls-cert and --tls-key swapped?)"
        } else {
            ""
        };
        return Err(format!(
            "--tls-cert {}: no PEM certificate in it{hint}",
            cert.display()
        ));
    }
    if !holds(&key_pem, "PRIVATE KEY-----") {
        let hint = if holds(&key_pem, "-----BEGIN CERTIFICATE-----") {
            " (it holds a certificate: are --tls-cert and --tls-key swapped?)"
        } else {
            ""
        };
        return Err(format!(
            "--tls-key {}: no PEM private key in it{hint}",
            key.display()
        ));
    }
    adapters::server_tls(&cert_pem, &key_pem).map_err(|e| {
        format!(
            "--tls-cert {} with --tls-key {}: {e}",
            cert.display(),
            key.display()
        )
    })
}

/// Writes a line of the start-up protocol on stdout. A reader that went away (`| head -1`, a
/// supervisor's broken pipe) must not take the server down: the line is dropped.
fn say(line: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout();
    let _ = stdout
        .write_fmt(line)
        .and_then(|()| stdout.write_all(b"\n"));
    let _ = stdout.flush();
}

/// What the flags configure.
struct Args {
    listen: String,
    config: ServerConfig,
    /// The OT endpoint's, from the same flags.
    ot: OtServerConfig,
    options: ServerOptions,
    /// `--tls-cert` and `--tls-key`, read and checked.
    tls: Option<Arc<rustls::ServerConfig>>,
    static_dir: Option<PathBuf>,
    metrics: Option<String>,
    log_format: LogFormat,
    shutdown_timeout: Duration,
    redis: Option<Redis>,
    data: Option<PathBuf>,
    retention: usize,
    /// `--allowed-origins`, as given (`*` included), for the HTTP routes' CORS answers.
    origins: Option<Vec<String>>,
    /// `--trusted-proxies`.
    proxies: Vec<ipnet::IpNet>,
}

impl Cli {
    /// The configuration the flags describe; an error when the server would refuse it.
    fn into_args(self) -> Result<Args, String> {
        check_listen("--listen", &self.listen)?;
        if let Some(metrics) = &self.metrics {
            check_listen("--metrics", metrics)?;
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(tls(cert, key)?),
            _ => None,
        };
        if let Some(dir) = &self.static_dir {
            check_dir(dir)?;
        }
        let mut config = ServerConfig::default();
        let mut ot = OtServerConfig::default();
        config.path = Some(WS_PATH.to_owned());
        if let Some(token) = self.token {
            let auth = Arc::new(move |req: &AuthRequest<'_>| {
                if req.token.is_some_and(|given| token_matches(given, &token)) {
                    AuthDecision::allow(None)
                } else {
                    AuthDecision::deny(401, "missing or wrong token")
                }
            });
            config.auth = Some(auth.clone());
            ot.auth = Some(auth);
        }
        match self.rate_limit {
            Some(RateLimit::Off) => {
                config.rate_limit_burst = 0;
                ot.rate_limit_messages = 0;
            }
            Some(RateLimit::Bucket { burst, window }) => {
                config.rate_limit_burst = burst;
                config.rate_limit_window = window;
                // The seed's fixed window: N messages per window.
                ot.rate_limit_messages = burst;
                ot.rate_limit_window = window;
            }
            None => {}
        }
        let set = |field: &mut usize, value: Option<usize>| *field = value.unwrap_or(*field);
        set(&mut ot.max_frame_len, self.max_frame);
        set(&mut ot.max_outbound_bytes, self.max_outbound);
        set(&mut ot.max_sessions, self.max_connections);
        let set = |field: &mut Duration, value: Option<Duration>| *field = value.unwrap_or(*field);
        set(&mut ot.ping_interval, self.ping_interval);
        set(&mut ot.broadcast_delay, self.ot_broadcast_delay);
        let set = |field: &mut usize, value: Option<usize>| *field = value.unwrap_or(*field);
        set(&mut config.max_frame_len, self.max_frame);
        set(&mut config.max_outbound_bytes, self.max_outbound);
        set(&mut config.max_room_size, self.room_max);
        set(&mut config.max_sessions, self.max_connections);
        let set = |field: &mut Duration, value: Option<Duration>| *field = value.unwrap_or(*field);
        set(&mut config.ping_interval, self.ping_interval);
        set(&mut config.idle_timeout, self.idle_timeout);
        set(&mut config.presence_ttl, self.presence_ttl);
        // `*` lets every origin in: the WebSocket checks none, the HTTP routes answer each.
        let origins = (!self.allowed_origins.is_empty()).then_some(self.allowed_origins);
        let any = origins
            .as_ref()
            .is_some_and(|list| list.iter().any(|o| o == "*"));
        config.allowed_origins = origins.clone().filter(|_| !any);
        ot.allowed_origins = config.allowed_origins.clone();
        let mut options = ServerOptions::default();
        set(&mut options.handshake_timeout, self.handshake_timeout);
        // The server validates its own configuration; refuse here what it would refuse, in
        // the words of the flags.
        config.validate().map_err(|e| match e {
            ConfigError::RateLimitWindow => {
                "--rate-limit: the window SECS must be at least 1".to_owned()
            }
            ConfigError::PingAfterIdle { ping, idle } => format!(
                "--ping-interval {} must be shorter than --idle-timeout {} (or either 0)",
                ping.as_millis(),
                idle.as_millis()
            ),
            other => other.to_string(),
        })?;
        ot.validate()
            .map_err(|e| format!("the /ot endpoint: {e}"))?;
        Ok(Args {
            listen: self.listen,
            config,
            ot,
            options,
            tls,
            static_dir: self.static_dir,
            metrics: self.metrics,
            log_format: self.log_format,
            shutdown_timeout: self.shutdown_timeout,
            redis: self.redis.map(|url| Redis {
                url,
                prefix: self.redis_prefix,
                retention: match self.redis_retention {
                    0 => self.retention,
                    n => n,
                },
                min_replicas: self.redis_min_replicas,
            }),
            data: self.data,
            retention: self.retention,
            origins,
            proxies: self.trusted_proxies,
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::try_parse_with_env(std::env::args_os()).unwrap_or_else(|e| e.exit());
    let args = match cli.into_args() {
        Ok(args) => args,
        // Exit code 2 and the usage, like every error clap reports itself.
        Err(why) => Cli::with_env()
            .error(clap::error::ErrorKind::ValueValidation, why)
            .exit(),
    };
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    // A log line that cannot be written is dropped: tracing-subscriber's default is to report
    // it with `eprintln!`, which panics when stderr itself is the broken pipe. Colours only
    // for a terminal, not for a file or a log collector.
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .log_internal_errors(false);
    match args.log_format {
        LogFormat::Human => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(args));
    // Blocking file reads of the static server, if any, are not waited for.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            let _ = writeln!(std::io::stderr(), "error: {why}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let tls = args.tls;
    let in_memory = args.redis.is_none() && args.data.is_none();
    // Before anything is printed: a signal sent as soon as the address is read is ours.
    let mut signals = Signals::new()?;
    let exporter = match &args.metrics {
        Some(addr) => Some(metrics_http::Exporter::new(addr).await?),
        None => None,
    };
    let mut config = args.config;
    let clock = Clock::new();
    config.seed = clock.seed();
    let server = Server::new(config).map_err(|e| e.to_string())?;
    // The OT documents live in the same Redis, under the same prefix.
    let ot_redis = args
        .redis
        .as_ref()
        .map(|r| (r.url.clone(), r.prefix.clone(), r.min_replicas));
    let server = match (args.redis, args.data) {
        (Some(redis), _) => start_on_redis(server, redis, args.options.clone()).await?,
        (None, Some(data)) => {
            let epoch = clock.unix_millis();
            start_on_sqlite(server, data, epoch, args.retention, args.options.clone()).await?
        }
        (None, None) => {
            // A fresh epoch per start: cursors of an earlier run are then recognised as stale.
            let mut store = StoreConfig::default();
            store.epoch = clock.now().as_millis();
            store.retention = args.retention;
            adapters::Tokio::start(
                Driver::new(server, MemoryStore::new(store)),
                args.options.clone(),
            )
        }
    };
    let mut ot = args.ot;
    ot.seed = clock.seed();
    ot.shared_history = ot_redis.is_some();
    let ot = OtServer::new(ot).map_err(|e| e.to_string())?;
    let ot_thread = OtThread::start()?;
    let ot = {
        // Its timer task runs on its thread too.
        let _on = ot_thread.runtime.enter();
        adapters::Tokio::start_ot(ot, args.options)
    };
    let (burst, window) = server.with_driver(|d, _| {
        let config = d.server().config();
        (config.rate_limit_burst, config.rate_limit_window)
    });
    let routes = http::Routes::new(ot.clone())
        .allowing(args.origins)
        .limiting(burst, window)
        .trusting(args.proxies);
    if let Some((url, prefix, min_replicas)) = ot_redis {
        // A `POST /sync/send` for another server's SSE session goes to it through Redis.
        relay_on_redis(&routes.streams, &routes.ot_streams, &url, &prefix).await?;
        ot_on_redis(ot.clone(), url, prefix, min_replicas).await?;
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    if in_memory {
        // Said once the server is sure to start, so it is never the last word of one that
        // did not.
        if cfg!(feature = "sqlite") {
            tracing::warn!(
                "no --data: changes are kept in memory only, and nothing survives a restart"
            );
        } else {
            tracing::warn!("changes are kept in memory only, and nothing survives a restart");
        }
    }
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    say(format_args!("listening on {scheme}://{addr}{WS_PATH}"));
    let metrics = exporter.map(|exporter| {
        say(format_args!("metrics on http://{}/metrics", exporter.addr));
        tokio::spawn(exporter.serve(server.clone()))
    });
    say(format_args!("ot on {scheme}://{addr}{OT_PATH}"));
    // Every connection's request head is read first, to route `/ot` (and the files).
    let files = args
        .static_dir
        .map(|dir| static_files::Files::new(dir, WS_PATH));
    let serving = tokio::spawn(static_files::serve(
        server.clone(),
        routes,
        ot_thread.runtime.clone(),
        listener,
        tls,
        files,
    ));
    let signal = signals.next().await;
    tracing::info!(signal, "shutting down: closing every session with 1001");
    ot.shutdown();
    shutdown(&server, serving, args.shutdown_timeout).await;
    if tokio::time::timeout(args.shutdown_timeout, ot.drained())
        .await
        .is_err()
    {
        let left = ot.running_sessions();
        tracing::warn!(left, "OT sessions still closing at the deadline");
    }
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    Ok(())
}

/// The `/ot` endpoint's own thread: a current-thread runtime that runs its timer and its
/// plain-TCP connections. Its state machine is one lock, so its connections gain nothing
/// from being spread over the workers but contention and cross-thread wake-ups: on one
/// thread the hub writes the frames of the ops read together in one write per socket, and
/// no lock is ever contended (`cargo bench --bench ot_e2e`: ~23 µs of server CPU per acked
/// op over the two workers of a 2-core machine, ~16 µs on one thread). TLS and
/// static-files connections to `/ot` stay on the workers.
struct OtThread {
    runtime: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OtThread {
    fn start() -> Result<OtThread, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the OT runtime: {e}"))?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("ot".to_owned())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                runtime.shutdown_timeout(Duration::from_millis(100));
            })
            .map_err(|e| format!("cannot start the OT thread: {e}"))?;
        Ok(OtThread {
            runtime: handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for OtThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The server on the Redis backend; an error when Redis cannot be reached.
#[cfg(feature = "redis")]
async fn start_on_redis(
    server: Server,
    redis: Redis,
    options: ServerOptions,
) -> Result<SyncServer, String> {
    let mut config = RedisConfig::new(redis.url);
    config.prefix = redis.prefix;
    config.retention = redis.retention;
    config.min_replicas = redis.min_replicas;
    let backend = RedisBackend::connect(config)
        .await
        .map_err(|e| e.to_string())?;
    Ok(adapters::Tokio::start_with_backend(
        server,
        Arc::new(backend),
        options,
    ))
}

/// The OT documents in Redis (`syncmux_redis::RedisOt`): keys `{PREFIX}:doc:ID:...`,
/// channels `{PREFIX}:doc:ID`.
/// Relays the frames of `POST /sync/send` between the servers sharing the Redis at `url`,
/// so that a client's POSTs may reach any of them (no sticky sessions).
#[cfg(feature = "redis")]
async fn relay_on_redis(
    streams: &sse::Streams,
    ot_streams: &ot_http::OtStreams,
    url: &str,
    prefix: &str,
) -> Result<(), String> {
    let (delivering, ot_delivering) = (streams.clone(), ot_streams.clone());
    let deliver: syncmux_redis::Deliver = Arc::new(move |session, text| {
        let (streams, ot_streams) = (delivering.clone(), ot_delivering.clone());
        Box::pin(async move {
            if ot_streams.holds(&session) {
                return ot_streams.hand_forwarded(&session, text).await;
            }
            let delivered = streams.deliver_forwarded(&session, text).await;
            delivered.then(|| -> syncmux_redis::Answering { Box::pin(async { String::new() }) })
        })
    });
    let relay = syncmux_redis::Relay::connect(url, prefix, deliver)
        .await
        .map_err(|e| e.to_string())?;
    let node = relay.node().to_owned();
    let forward: sse::Forward = Arc::new(move |node, session, text| {
        let relay = relay.clone();
        Box::pin(async move {
            let forwarded = relay.forward(&node, &session, &text).await;
            forwarded.map_err(|e| e.to_string())
        })
    });
    streams.relay_through(node.clone(), forward.clone());
    ot_streams.relay_through(node, forward);
    Ok(())
}

#[cfg(not(feature = "redis"))]
async fn relay_on_redis(
    _: &sse::Streams,
    _: &ot_http::OtStreams,
    _: &str,
    _: &str,
) -> Result<(), String> {
    Ok(())
}

#[cfg(feature = "redis")]
async fn ot_on_redis(
    ot: OtServerHandle,
    url: String,
    prefix: String,
    min_replicas: usize,
) -> Result<(), String> {
    let mut config = RedisOtConfig::new(url);
    config.prefix = format!("{{{prefix}}}:");
    config.min_replicas = min_replicas;
    let redis = RedisOt::connect(config).await.map_err(|e| e.to_string())?;
    tokio::spawn(redis.run(ot));
    Ok(())
}

/// Without the `redis` feature, `--redis` was refused already.
#[cfg(not(feature = "redis"))]
async fn ot_on_redis(_: OtServerHandle, _: String, _: String, _: usize) -> Result<(), String> {
    Ok(())
}

/// Without the `redis` feature, `--redis` is refused.
#[cfg(not(feature = "redis"))]
async fn start_on_redis(_: Server, redis: Redis, _: ServerOptions) -> Result<SyncServer, String> {
    let _ = (redis.prefix, redis.retention, redis.min_replicas);
    Err(format!(
        "--redis {}: this server was built without Redis; build it with --features redis",
        redis.url
    ))
}

/// The server on the durable store at `path`; an error when the database cannot be opened
/// (damaged, foreign, not writable). `epoch` is used only if the database is new.
#[cfg(feature = "sqlite")]
async fn start_on_sqlite(
    server: Server,
    path: PathBuf,
    epoch: u64,
    retention: usize,
    options: ServerOptions,
) -> Result<SyncServer, String> {
    use syncmux_sqlite::{SqliteBackend, SqliteBackendConfig};
    let mut store = syncmux_sqlite::SqliteConfig::default();
    store.epoch = epoch;
    store.retention = retention;
    // Opening checks the whole file: off the runtime's threads.
    let opening = path.clone();
    let backend = tokio::task::spawn_blocking(move || {
        SqliteBackend::open(opening, store, SqliteBackendConfig::default())
    })
    .await
    .map_err(|e| format!("--data: {e}"))?
    .map_err(|e| format!("--data: {e}"))?;
    tracing::info!(path = %path.display(), epoch = backend.epoch(), "changes are kept on disk");
    Ok(adapters::Tokio::start_with_backend(
        server,
        Arc::new(backend),
        options,
    ))
}

/// Without the `sqlite` feature, `--data` is refused.
#[cfg(not(feature = "sqlite"))]
async fn start_on_sqlite(
    _: Server,
    path: PathBuf,
    _: u64,
    _: usize,
    _: ServerOptions,
) -> Result<SyncServer, String> {
    Err(format!(
        "--data {}: this server was built without SQLite; build it with --features sqlite",
        path.display()
    ))
}

/// Stops accepting, closes every session with 1001 and waits (at most `deadline`) until
/// every session's task has sent its close and ended.
async fn shutdown(server: &SyncServer, serving: tokio::task::JoinHandle<()>, deadline: Duration) {
    server.shutdown();
    // `Tokio::serve` returns on shutdown; the static loop is stopped here.
    // Connections already accepted go on: their sessions are closing.
    serving.abort();
    let _ = serving.await;
    if tokio::time::timeout(deadline, server.drained())
        .await
        .is_err()
    {
        let left = server.running_sessions();
        tracing::warn!(left, ?deadline, "sessions still closing at the deadline");
    }
}

/// SIGINT (Ctrl-C) and, on Unix, SIGTERM, registered before the server says it is ready.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals, String> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let register = |kind| signal(kind).map_err(|e| format!("cannot handle signals: {e}"));
            Ok(Signals {
                interrupt: register(SignalKind::interrupt())?,
                terminate: register(SignalKind::terminate())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// The name of the first signal received.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.interrupt.recv() => "SIGINT",
                _ = self.terminate.recv() => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}

/// `--metrics ADDR`: the Prometheus text format at `/metrics`, `ok` at `/health`, on a
/// listener of its own (so it can stay private while the sync port is public).
///
/// `metrics-exporter-prometheus` is the recorder; its handle renders each scrape, after
/// [`SyncServer::publish_metrics`] copied the state machine's counters into it. Served with
/// hyper rather than the exporter's own listener, so the scrape can publish first.
mod metrics_http {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::body::Incoming;
    use hyper::header::CONTENT_TYPE;
    use hyper::{Method, Request, Response, StatusCode};
    use hyper_util::rt::TokioIo;
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
    use syncmux_runtime::metrics as names;
    use syncmux_runtime::SyncServer;

    /// Histogram data is drained into the handle this often (and on every scrape).
    const UPKEEP: Duration = Duration::from_secs(5);

    /// The installed recorder and its bound listener.
    pub(crate) struct Exporter {
        pub(crate) addr: SocketAddr,
        listener: tokio::net::TcpListener,
        handle: PrometheusHandle,
    }

    impl Exporter {
        /// Installs the global recorder and binds `addr`.
        pub(crate) async fn new(addr: &str) -> Result<Exporter, String> {
            let buckets = |builder: PrometheusBuilder, name: &str, buckets: &[f64]| {
                builder
                    .set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets)
                    .map_err(|e| e.to_string())
            };
            let mut builder = PrometheusBuilder::new();
            for (name, suggested) in names::histograms() {
                builder = buckets(builder, name, suggested)?;
            }
            let handle = builder.install_recorder().map_err(|e| e.to_string())?;
            names::describe();
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr} for metrics: {e}"))?;
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            Ok(Exporter {
                addr,
                listener,
                handle,
            })
        }

        /// Serves scrapes until aborted.
        pub(crate) async fn serve(self, server: SyncServer) {
            let upkeep = self.handle.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(UPKEEP);
                loop {
                    every.tick().await;
                    upkeep.run_upkeep();
                }
            });
            loop {
                let tcp = match self.listener.accept().await {
                    Ok((tcp, _)) => tcp,
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics accept failed");
                        tokio::task::yield_now().await;
                        continue;
                    }
                };
                let (server, handle) = (server.clone(), self.handle.clone());
                let service = hyper::service::service_fn(move |req| {
                    let answer = respond(&req, &server, &handle);
                    async move { Ok::<_, Infallible>(answer) }
                });
                tokio::spawn(async move {
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service);
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "metrics connection ended");
                    }
                });
            }
        }
    }

    fn respond(
        req: &Request<Incoming>,
        server: &SyncServer,
        handle: &PrometheusHandle,
    ) -> Response<Full<Bytes>> {
        let (status, kind, body) = match (req.method(), req.uri().path()) {
            (&Method::GET, "/metrics") => {
                server.publish_metrics();
                handle.run_upkeep();
                let text = handle.render();
                (StatusCode::OK, "text/plain; version=0.0.4", text)
            }
            (&Method::GET, "/health") => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
            _ => (
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found\n".to_owned(),
            ),
        };
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static(kind));
        response
    }
}

/// The listener's router, and `--static DIR`: DIR's files over plain HTTP on the WebSocket's
/// own listener.
///
/// Each connection's request head is read first; a request for `/ot` or a path under it is
/// replayed, unchanged, into [`adapters::Tokio::accept`] (the OT profile); without
/// `--static`, anything else goes to [`adapters::Tokio::accept`] (whose state machine
/// answers a wrong path with 404). With `--static`, a request for the sync path is replayed
/// into [`adapters::Tokio::accept`] (the state machine decides the upgrade), and anything
/// else is handed, with the bytes already read replayed in front, to hyper serving
/// tower-http's [`ServeDir`](tower_http::services::ServeDir): content types by extension,
/// `..` and other escapes refused, `HEAD`, ranges and conditional requests. One request per
/// connection (no keep-alive), so a browser never sends an upgrade on a connection that was
/// handed to hyper.
mod static_files {
    use std::io::Cursor;
    use std::net::IpAddr;
    use std::path::PathBuf;
    use std::sync::Arc;

    use super::http::Routes;
    use super::ot_http;
    use hyper::header::{HeaderValue, CACHE_CONTROL};
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;
    use syncmux_runtime::TokioIo as Io;
    use syncmux_runtime::{self as adapters, SyncServer};
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
    use tokio::sync::Semaphore;
    use tower_http::services::ServeDir;
    use tower_http::set_header::SetResponseHeader;

    /// A request head longer than this is refused (`431`).
    const MAX_HEAD: usize = 8 * 1024;

    type Service = SetResponseHeader<ServeDir, HeaderValue>;

    /// The directory served and the path left to the WebSocket.
    pub(crate) struct Files {
        service: Service,
        ws_path: &'static str,
    }

    impl Files {
        pub(crate) fn new(root: PathBuf, ws_path: &'static str) -> Arc<Files> {
            // A demo is edited and reloaded: revalidate rather than cache.
            let no_cache = HeaderValue::from_static("no-cache");
            let service =
                SetResponseHeader::overriding(ServeDir::new(root), CACHE_CONTROL, no_cache);
            Arc::new(Files { service, ws_path })
        }
    }

    /// [`adapters::Tokio::serve`] with the OT endpoint and the static files (if any) beside
    /// it; runs until aborted.
    ///
    /// The server's handshake limits hold here too: TLS and the request head must arrive
    /// within its `handshake_timeout` (the upgrade then has its own, in `accept`), and at
    /// most `max_handshakes` connections are before their request head at once.
    pub(crate) async fn serve(
        server: SyncServer,
        routes: Routes,
        ot_runtime: tokio::runtime::Handle,
        listener: tokio::net::TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
        files: Option<Arc<Files>>,
    ) {
        let tls = tls.map(tokio_rustls::TlsAcceptor::from);
        let max = server.options().max_handshakes;
        let heads = Arc::new(Semaphore::new(if max == 0 {
            Semaphore::MAX_PERMITS
        } else {
            max
        }));
        loop {
            let Ok(permit) = heads.clone().acquire_owned().await else {
                return; // never closed
            };
            let (tcp, peer) = match listener.accept().await {
                Ok((tcp, peer)) => (tcp, Some(peer.ip())),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::task::yield_now().await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (server, routes, tls, files) =
                (server.clone(), routes.clone(), tls.clone(), files.clone());
            if tls.is_none() && files.is_none() {
                // Plain TCP: the adapter's fast write path, in a task of its own size (not
                // that of the TLS and static-files path below).
                let ot_runtime = ot_runtime.clone();
                tokio::spawn(async move {
                    plain(&server, &routes, ot_runtime, tcp, peer, permit).await
                });
                continue;
            }
            tokio::spawn(async move {
                let head = async {
                    let io: Box<dyn Io> = match tls {
                        Some(tls) => match tls.accept(tcp).await {
                            Ok(stream) => Box::new(stream),
                            Err(e) => {
                                // Under `tls`, not this module's name: it is not about files.
                                tracing::info!(target: "syncmux_server::tls", error = %e, "TLS handshake failed");
                                return None;
                            }
                        },
                        None => Box::new(tcp),
                    };
                    Some(read_head(io, peer).await)
                };
                // Timed out: dropped, like a connection `accept` gives up on.
                let head = within(&server, head).await.flatten();
                drop(permit);
                let routed = match head {
                    Some(Ok(head)) => route(&server, &routes, head, files.as_deref()).await,
                    Some(Err(e)) => Err(e),
                    None => Ok(()),
                };
                if let Err(e) = routed {
                    tracing::debug!(error = %e, "HTTP connection ended");
                }
            });
        }
    }

    /// A plain TCP connection without static files: its head is read off the socket itself,
    /// so a sync upgrade gets [`adapters::Tokio::accept_tcp`] and an `/ot` one
    /// [`adapters::Tokio::accept_tcp`] (the hub writes their frames straight to the
    /// socket). An `/ot` connection moves to `ot_runtime`, the OT endpoint's own thread.
    async fn plain(
        server: &SyncServer,
        routes: &Routes,
        ot_runtime: tokio::runtime::Handle,
        mut tcp: tokio::net::TcpStream,
        peer: Option<IpAddr>,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let mut buf = Vec::with_capacity(1024);
        let head = async {
            while !complete(&buf) {
                if buf.len() >= MAX_HEAD || tcp.read_buf(&mut buf).await? == 0 {
                    break;
                }
            }
            Ok::<_, std::io::Error>(())
        };
        let read = within(server, head).await;
        drop(permit);
        match read {
            Some(Ok(())) => {}
            Some(Err(e)) => return tracing::debug!(error = %e, "HTTP connection ended"),
            None => return,
        }
        let line = buf.split(|&b| b == b'\r').next().unwrap_or_default();
        let target = line.split(|&b| b == b' ').nth(1).unwrap_or_default();
        let path = target.split(|&b| b == b'?').next().unwrap_or_default();
        let to_ot = path
            .strip_prefix(super::OT_PATH.as_bytes())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(b"/"));
        if complete(&buf) {
            if path == ot_http::EVENTS_PATH.as_bytes() && !is_upgrade(&buf) {
                let routes = routes.clone();
                return on_ot_thread(&ot_runtime, tcp, move |tcp| async move {
                    let tcp = super::sse::Connection::<tokio::net::TcpStream>::Tcp(tcp);
                    if let Err(e) = ot_http::serve_events(&routes, &buf, tcp).await {
                        tracing::debug!(error = %e, "OT stream ended");
                    }
                });
            }
            let sse = super::sse::dialect(path, routes);
            if let Some(dialect) = sse.filter(|_| !is_upgrade(&buf)) {
                let tcp = super::sse::Connection::<tokio::net::TcpStream>::Tcp(tcp);
                if let Err(e) = super::sse::serve(server, &routes.origins, dialect, &buf, tcp).await
                {
                    tracing::debug!(error = %e, "SSE stream ended");
                }
                return;
            }
            if super::http::handles(path) && !is_upgrade(&buf) {
                let (reader, writer) = tcp.into_split();
                let io = tokio::io::join(Cursor::new(buf).chain(reader), writer);
                return grove_http(server, routes, io, peer).await;
            }
            if let Some(answer) = plain_answer(&buf, path, to_ot) {
                if let Err(e) = tcp.write_all(answer).await {
                    tracing::debug!(error = %e, "HTTP connection ended");
                }
                return;
            }
            buf.shrink_to_fit();
            if to_ot {
                let ot = routes.ot.clone();
                return on_ot_thread(&ot_runtime, tcp, move |tcp| async move {
                    adapters::Tokio::accept_tcp(&ot, tcp, buf).await
                });
            }
            return adapters::Tokio::accept_tcp(server, tcp, buf).await;
        }
        let io: Box<dyn Io> = Box::new(tcp);
        let (reader, writer) = tokio::io::split(io);
        let head = Head {
            reader,
            writer,
            buf,
            peer,
        };
        let routed = boxed_route(server, routes, head).await;
        if let Err(e) = routed {
            tracing::debug!(error = %e, "HTTP connection ended");
        }
    }

    /// Runs `serve` on `tcp` on the OT endpoint's thread (taken off this runtime's reactor,
    /// onto that thread's): its hub writes the connection there.
    fn on_ot_thread<F, S>(ot_runtime: &tokio::runtime::Handle, tcp: tokio::net::TcpStream, serve: S)
    where
        S: FnOnce(tokio::net::TcpStream) -> F + Send + 'static,
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let tcp = match tcp.into_std() {
            Ok(tcp) => tcp,
            Err(e) => return tracing::debug!(error = %e, "OT connection lost"),
        };
        ot_runtime.spawn(async move {
            match tokio::net::TcpStream::from_std(tcp) {
                Ok(tcp) => serve(tcp).await,
                Err(e) => tracing::debug!(error = %e, "OT connection lost"),
            }
        });
    }

    /// `future`, or `None` once the server's handshake deadline passed (zero: no deadline).
    async fn within<F: std::future::Future>(server: &SyncServer, future: F) -> Option<F::Output> {
        let deadline = server.options().handshake_timeout;
        if deadline.is_zero() {
            return Some(future.await);
        }
        tokio::time::timeout(deadline, future).await.ok()
    }

    /// Grove's HTTP pull or push on `io` (its head replayed in front), within the handshake
    /// deadline: a request whose head, body or answer takes longer is dropped.
    async fn grove_http<S>(server: &SyncServer, routes: &Routes, io: S, peer: Option<IpAddr>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let served = super::http::serve(server.clone(), routes.clone(), io, peer);
        match within(server, served).await {
            Some(Err(e)) => tracing::debug!(error = %e, "HTTP connection ended"),
            None => tracing::debug!("HTTP request timed out"),
            Some(Ok(())) => {}
        }
    }

    /// [`route`] on the heap, made outside any `async fn`: a sync session's task then keeps
    /// none of its size (hyper's connection, kilobytes).
    fn boxed_route<'a>(
        server: &'a SyncServer,
        routes: &'a Routes,
        head: Head<Box<dyn Io>>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send + 'a>> {
        Box::pin(route(server, routes, head, None))
    }

    /// A connection and what it sent up to the end of its request head (or until it closed,
    /// or sent more than [`MAX_HEAD`] without ending it).
    struct Head<S> {
        reader: ReadHalf<S>,
        writer: WriteHalf<S>,
        buf: Vec<u8>,
        /// The client's address (for the HTTP routes' rate limit).
        peer: Option<IpAddr>,
    }

    fn complete(buf: &[u8]) -> bool {
        buf.windows(4).any(|w| w == b"\r\n\r\n")
    }

    /// Whether a request head asks for a WebSocket (`Upgrade: websocket`).
    fn is_upgrade(head: &[u8]) -> bool {
        head.split(|&b| b == b'\n').skip(1).any(|line| {
            let line = String::from_utf8_lossy(line);
            line.split_once(':').is_some_and(|(name, value)| {
                name.trim().eq_ignore_ascii_case("upgrade")
                    && value.to_ascii_lowercase().contains("websocket")
            })
        })
    }

    /// The answer to a plain HTTP request (no upgrade) that no file serves: the WebSocket
    /// endpoints say what they are (`426`), anything else is not found. The upgrade path
    /// would drop such a request without a word, which a newcomer with a browser or `curl`
    /// cannot tell from a dead server. `None` for an upgrade, which goes on to its endpoint.
    fn plain_answer(head: &[u8], path: &[u8], to_ot: bool) -> Option<&'static [u8]> {
        if is_upgrade(head) {
            return None;
        }
        Some(if to_ot || path == super::WS_PATH.as_bytes() {
            b"HTTP/1.1 426 Upgrade Required\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\n\
              Content-Type: text/plain; charset=utf-8\r\nContent-Length: 72\r\n\r\n\
              This is a syncmux WebSocket endpoint: connect with a WebSocket client.\r\n"
        } else {
            b"HTTP/1.1 404 Not Found\r\nConnection: close\r\n\
              Content-Type: text/plain; charset=utf-8\r\nContent-Length: 11\r\n\r\n\
              not found\r\n"
        })
    }

    async fn read_head<S: AsyncRead + AsyncWrite>(
        io: S,
        peer: Option<IpAddr>,
    ) -> std::io::Result<Head<S>> {
        let (mut reader, writer) = tokio::io::split(io);
        let mut buf = Vec::with_capacity(1024);
        while !complete(&buf) {
            if buf.len() >= MAX_HEAD || reader.read_buf(&mut buf).await? == 0 {
                break;
            }
        }
        Ok(Head {
            reader,
            writer,
            buf,
            peer,
        })
    }

    /// Sends a connection whose head was read where it belongs.
    async fn route<S>(
        server: &SyncServer,
        routes: &Routes,
        request: Head<S>,
        files: Option<&Files>,
    ) -> std::io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let Head {
            reader,
            mut writer,
            buf,
            peer,
        } = request;
        if !complete(&buf) {
            if buf.len() >= MAX_HEAD {
                let answer = "HTTP/1.1 431 Request Header Fields Too Large\r\n\
                              Content-Length: 0\r\nConnection: close\r\n\r\n";
                return writer.write_all(answer.as_bytes()).await;
            }
            // Closed before a whole head: nothing to answer.
            return Ok(());
        }
        let line = buf.split(|&b| b == b'\r').next().unwrap_or_default();
        let target = line.split(|&b| b == b' ').nth(1).unwrap_or_default();
        let path = target.split(|&b| b == b'?').next().unwrap_or_default();
        let ot_path = super::OT_PATH.as_bytes();
        let to_ot = path
            .strip_prefix(ot_path)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(b"/"));
        if path == ot_http::EVENTS_PATH.as_bytes() && !is_upgrade(&buf) {
            let io = super::sse::Connection::Io(tokio::io::join(reader, writer));
            return ot_http::serve_events(routes, &buf, io).await;
        }
        let sse = super::sse::dialect(path, routes);
        if let Some(dialect) = sse.filter(|_| !is_upgrade(&buf)) {
            let io = super::sse::Connection::Io(tokio::io::join(reader, writer));
            return super::sse::serve(server, &routes.origins, dialect, &buf, io).await;
        }
        if super::http::handles(path) && !is_upgrade(&buf) {
            let io = tokio::io::join(Cursor::new(buf).chain(reader), writer);
            grove_http(server, routes, io, peer).await;
            return Ok(());
        }
        let files = files.filter(|files| path != files.ws_path.as_bytes());
        if to_ot || files.is_none() {
            if let Some(answer) = plain_answer(&buf, path, to_ot) {
                return writer.write_all(answer).await;
            }
        }
        // Every byte read so far goes first, so the next reader sees the whole request.
        let io = tokio::io::join(Cursor::new(buf).chain(reader), writer);
        if to_ot {
            adapters::Tokio::accept(&routes.ot, Box::new(io)).await;
            return Ok(());
        }
        let Some(files) = files else {
            adapters::Tokio::accept(server, Box::new(io)).await;
            return Ok(());
        };
        let service = TowerToHyperService::new(files.service.clone());
        hyper::server::conn::http1::Builder::new()
            .keep_alive(false)
            .serve_connection(TokioIo::new(io), service)
            .await
            .map_err(std::io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::static_files::{self, Files};
    use super::*;
    use std::net::SocketAddr;
    use syncmux_runtime::OtServerHandle;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn args(flags: &[&str]) -> Result<Args, String> {
        let cli = Cli::try_parse_with_env(std::iter::once("server").chain(flags.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.into_args()
    }

    #[test]
    fn the_token_matches_exactly() {
        assert!(token_matches("s3cret", "s3cret"));
        for wrong in ["", "s", "s3cre", "s3cret!", "S3cret", "x3cret"] {
            assert!(!token_matches(wrong, "s3cret"), "{wrong:?}");
        }
        // Through the flag, on the sync endpoint and on /ot alike.
        let parsed = args(&["--token", "s3cret"]).unwrap();
        let handshake = syncmux::Handshake::new("/sync/ws", "");
        for auth in [parsed.config.auth.unwrap(), parsed.ot.auth.unwrap()] {
            let decide = |token| {
                auth(&AuthRequest {
                    token,
                    node_id: None,
                    handshake: &handshake,
                })
            };
            assert!(matches!(decide(Some("s3cret")), AuthDecision::Allow { .. }));
            assert!(matches!(
                decide(Some("s3cre")),
                AuthDecision::Deny { status: 401, .. }
            ));
            assert!(matches!(
                decide(None),
                AuthDecision::Deny { status: 401, .. }
            ));
        }
    }

    #[test]
    fn the_flag_definitions_are_consistent() {
        Cli::with_env().debug_assert();
    }

    #[test]
    fn zero_disables_the_rate_limit() {
        let parsed = args(&["--rate-limit", "0"]).unwrap();
        assert_eq!(parsed.config.rate_limit_burst, 0);
        assert!(Server::new(parsed.config).is_ok());
        let parsed = args(&["--rate-limit", "10/5"]).unwrap();
        assert_eq!(parsed.config.rate_limit_burst, 10);
        assert_eq!(parsed.config.rate_limit_window, Duration::from_secs(5));
        let refused = args(&["--rate-limit", "10"]).err().unwrap();
        assert!(refused.contains("is not N/SECS"), "{refused}");
    }

    #[test]
    fn handshake_and_connection_flags() {
        let parsed = args(&[]).unwrap();
        assert_eq!(parsed.options.handshake_timeout, Duration::from_secs(10));
        assert_eq!(parsed.listen, "127.0.0.1:8787");
        assert_eq!(parsed.log_format, LogFormat::Human);
        assert_eq!(parsed.shutdown_timeout, Duration::from_secs(5));
        let parsed = args(&[
            "--handshake-timeout",
            "250",
            "--max-connections",
            "2",
            "--max-frame",
            "33554432",
            "--max-outbound",
            "4096",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(parsed.options.handshake_timeout, Duration::from_millis(250));
        assert_eq!(parsed.config.max_sessions, 2);
        assert_eq!(parsed.config.max_frame_len, 32 << 20);
        assert_eq!(parsed.config.max_outbound_bytes, 4096);
        assert_eq!(parsed.log_format, LogFormat::Json);
        let parsed = args(&["--handshake-timeout", "0", "--max-connections", "0"]).unwrap();
        assert!(parsed.options.handshake_timeout.is_zero());
        assert_eq!(parsed.config.max_sessions, 0);
        let refused = args(&["--tls-cert", "c.pem"]).err().unwrap();
        assert!(refused.contains("--tls-key"), "{refused}");
    }

    #[test]
    fn the_ot_endpoint_takes_the_same_flags() {
        let parsed = args(&[]).unwrap();
        assert!(parsed.ot.auth.is_none());
        assert_eq!(parsed.ot.rate_limit_messages, 100);
        assert_eq!(parsed.ot.broadcast_delay, Duration::from_millis(1));
        let parsed = args(&["--ot-broadcast-delay", "0"]).unwrap();
        assert!(parsed.ot.broadcast_delay.is_zero());
        let parsed = args(&["--ot-broadcast-delay", "20"]).unwrap();
        assert_eq!(parsed.ot.broadcast_delay, Duration::from_millis(20));
        let parsed = args(&[
            "--token",
            "t",
            "--rate-limit",
            "7/3",
            "--ping-interval",
            "250",
            "--max-frame",
            "4096",
            "--max-outbound",
            "8192",
            "--max-connections",
            "9",
        ])
        .unwrap();
        let ot = &parsed.ot;
        let auth = ot.auth.as_ref().unwrap();
        let handshake = syncmux::Handshake::new("/ot", "token=t");
        let decide = |token| {
            auth(&AuthRequest {
                token: Some(token),
                node_id: None,
                handshake: &handshake,
            })
        };
        assert!(matches!(decide("t"), AuthDecision::Allow { .. }));
        assert!(matches!(
            decide("x"),
            AuthDecision::Deny { status: 401, .. }
        ));
        assert_eq!(ot.rate_limit_messages, 7);
        assert_eq!(ot.rate_limit_window, Duration::from_secs(3));
        assert_eq!(ot.ping_interval, Duration::from_millis(250));
        assert_eq!(ot.max_frame_len, 4096);
        assert_eq!(ot.max_outbound_bytes, 8192);
        assert_eq!(ot.max_sessions, 9);
        assert_eq!(
            args(&["--rate-limit", "0"]).unwrap().ot.rate_limit_messages,
            0
        );
    }

    fn ot_server() -> OtServerHandle {
        let ot = OtServer::new(OtServerConfig::default()).unwrap();
        adapters::Tokio::start_ot(ot, ServerOptions::default())
    }

    /// One HTTP/1.1 exchange on a fresh connection: (status line, content type, body).
    async fn get(addr: SocketAddr, request: &str) -> (String, String, Vec<u8>) {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await.unwrap();
        let split = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8(answer[..split].to_vec()).unwrap();
        let status = head.lines().next().unwrap().to_owned();
        let kind = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(": ")?;
                name.eq_ignore_ascii_case("content-type")
                    .then(|| value.to_owned())
            })
            .unwrap_or_default();
        (status, kind, answer[split + 4..].to_vec())
    }

    #[tokio::test]
    async fn files_and_the_websocket_share_one_listener() {
        let base = std::env::temp_dir().join(format!("syncmux-static-{}", std::process::id()));
        let dir = base.join("www");
        std::fs::create_dir_all(dir.join("pkg")).unwrap();
        std::fs::write(dir.join("index.html"), "<h1>hi</h1>").unwrap();
        std::fs::write(dir.join("pkg/app.wasm"), b"\0asm").unwrap();
        std::fs::write(dir.join("app.js"), "export {}").unwrap();
        std::fs::write(base.join("secret.txt"), "top secret").unwrap();

        let mut config = ServerConfig::default();
        config.path = Some("/sync/ws".to_owned());
        let driver = Driver::new(
            Server::new(config).unwrap(),
            MemoryStore::new(StoreConfig::default()),
        );
        let server = adapters::Tokio::start(driver, ServerOptions::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let files = Files::new(dir.clone(), "/sync/ws");
        let ot = ot_server();
        let serving = tokio::spawn(static_files::serve(
            server.clone(),
            http::Routes::new(ot.clone()),
            tokio::runtime::Handle::current(),
            listener,
            None,
            Some(files),
        ));

        let (status, kind, body) = get(addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(kind.starts_with("text/html"), "{kind}");
        assert_eq!(body, b"<h1>hi</h1>");
        let (status, kind, body) = get(addr, "GET /pkg/app.wasm HTTP/1.1\r\n\r\n").await;
        assert_eq!(
            (status.as_str(), kind.as_str()),
            ("HTTP/1.1 200 OK", "application/wasm")
        );
        assert_eq!(body, b"\0asm");
        let (_, kind, _) = get(addr, "GET /app.js?v=1 HTTP/1.1\r\n\r\n").await;
        assert!(kind.starts_with("text/javascript"), "{kind}");
        let (status, _, body) = get(addr, "HEAD / HTTP/1.1\r\n\r\n").await;
        assert_eq!((status.as_str(), body.len()), ("HTTP/1.1 200 OK", 0));
        for outside in [
            "/../secret.txt",
            "/%2e%2e/secret.txt",
            "/..%2fsecret.txt",
            "/pkg/../../secret.txt",
            "//etc/passwd",
            "/nope.html",
        ] {
            let (status, _, body) = get(addr, &format!("GET {outside} HTTP/1.1\r\n\r\n")).await;
            assert!(
                status.starts_with("HTTP/1.1 4"),
                "{outside}: {status} {:?}",
                String::from_utf8_lossy(&body)
            );
            assert!(!String::from_utf8_lossy(&body).contains("top secret"));
        }
        let (status, _, _) = get(addr, "POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
        assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
        // A head that never ends within 8 KiB (exactly 8 KiB sent, so that all of it is read).
        let endless = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(8192 - 19));
        let (status, _, _) = get(addr, &endless).await;
        assert_eq!(status, "HTTP/1.1 431 Request Header Fields Too Large");

        // The upgrade goes through the state machine: it selects the subprotocol and the
        // session answers a ping.
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};
        let mut request = format!("ws://{addr}/sync/ws?node_id=n1")
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", "syncmux.v1".parse().unwrap());
        let (mut ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
        assert_eq!(response.headers()["Sec-WebSocket-Protocol"], "syncmux.v1");
        ws.send(Message::text(r#"{"type":"ping","id":"p1"}"#))
            .await
            .unwrap();
        let pong = loop {
            match ws.next().await.unwrap().unwrap() {
                Message::Text(text) => break text.to_string(),
                _ => continue,
            }
        };
        assert!(
            pong.contains(r#""type":"pong""#) && pong.contains(r#""id":"p1""#),
            "{pong}"
        );

        // `/ot` and the paths under it are the OT profile's, beside the files; `/otx` is not.
        for path in ["/ot", "/ot/doc-7"] {
            let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}{path}"))
                .await
                .unwrap();
            ws.send(Message::text(r#"{"type":"snapshot"}"#))
                .await
                .unwrap();
            let answer = loop {
                match ws.next().await.unwrap().unwrap() {
                    Message::Text(text) => break text.to_string(),
                    _ => continue,
                }
            };
            assert!(
                answer.starts_with(r#"{"type":"snapshot","#),
                "{path}: {answer}"
            );
        }
        let (status, _, _) = get(addr, "GET /otx HTTP/1.1\r\n\r\n").await;
        assert_eq!(status, "HTTP/1.1 404 Not Found");

        serving.abort();
        server.shutdown();
        std::fs::remove_dir_all(base).unwrap();
    }

    /// With `--static`, a connection that never sends its request head is dropped after the
    /// handshake deadline too (it used to get a fixed 10 s).
    #[tokio::test]
    async fn the_static_path_drops_a_silent_connection_at_the_handshake_deadline() {
        let driver = Driver::new(
            Server::new(ServerConfig::default()).unwrap(),
            MemoryStore::new(StoreConfig::default()),
        );
        let mut options = ServerOptions::default();
        options.handshake_timeout = Duration::from_millis(200);
        let server = adapters::Tokio::start(driver, options);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let files = Files::new(std::env::temp_dir(), "/sync/ws");
        let serving = tokio::spawn(static_files::serve(
            server.clone(),
            http::Routes::new(ot_server()),
            tokio::runtime::Handle::current(),
            listener,
            None,
            Some(files),
        ));
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        silent.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        // Generous next to the 200 ms deadline, well under the old fixed 10 s.
        let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "still open or answered: {read:?}"
        );
        serving.abort();
    }
}
