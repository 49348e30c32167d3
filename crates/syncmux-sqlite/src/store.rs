//! [`SqliteStore`]: the durable embedded change log.

use core::fmt;
use core::time::Duration;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};

use crate::LWW;
use syncmux::payload::{ChangeRecord, Cursor, Hlc};
use syncmux::{PullAnswer, PushAnswer};

/// `PRAGMA application_id` of a syncmux database ("SYNC"): a SQLite file made by anything
/// else is refused instead of being taken for an empty history.
const APPLICATION_ID: i64 = 0x5359_4e43;

/// The schema version this build writes and reads (in the `meta` row).
const SCHEMA_VERSION: i64 = 1;

/// How long a connection waits for another one's lock before failing (a reader during a
/// checkpoint, a second writer).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The schema. `changes` is the log by position (its rowid is the seq, so a read by position
/// is a B-tree range); `changes_by_seq` and `changes_by_hlc` are the per-table "cursor" and
/// "since" indexes, so a pull reads O(log n + k) rows; `winners` keeps the `lww` winner of each
/// register and `ops` the identities of operation records, so the merge survives restarts;
/// `tables` the newest HLC accepted and the newest evicted per table; `meta` one row: the
/// schema version, the epoch (set once, at creation), the head, the oldest retained seq, and
/// the eviction horizon of the tables forgotten, and the writer that opened it last.
const SCHEMA: &str = "
CREATE TABLE meta (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    schema INTEGER NOT NULL,
    epoch TEXT NOT NULL,
    head INTEGER NOT NULL,
    first INTEGER NOT NULL,
    forgotten BLOB,
    owner TEXT
);
CREATE TABLE changes (
    seq INTEGER PRIMARY KEY,
    tbl TEXT NOT NULL,
    pk TEXT NOT NULL,
    field TEXT NOT NULL,
    lww INTEGER NOT NULL,
    hlc BLOB NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX changes_by_seq ON changes (tbl, seq);
CREATE INDEX changes_by_hlc ON changes (tbl, hlc, seq);
CREATE TABLE winners (
    tbl TEXT NOT NULL, pk TEXT NOT NULL, field TEXT NOT NULL,
    hlc BLOB NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (tbl, pk, field)
) WITHOUT ROWID;
CREATE TABLE ops (
    tbl TEXT NOT NULL, pk TEXT NOT NULL, field TEXT NOT NULL, hlc BLOB NOT NULL,
    PRIMARY KEY (tbl, pk, field, hlc)
) WITHOUT ROWID;
CREATE TABLE tables (
    tbl TEXT PRIMARY KEY, latest BLOB NOT NULL, evicted BLOB
) WITHOUT ROWID;
";

/// Configuration of a [`SqliteStore`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteConfig {
    /// The epoch of a history this open **creates** (a new, empty database); the epoch of an
    /// existing database is kept for ever. It must differ from every earlier history's that
    /// clients may hold cursors of (for example the wall clock in milliseconds). Default: 0.
    pub epoch: u64,
    /// The maximum number of changes kept; the oldest positions are evicted first.
    /// Default: 0, unbounded.
    pub retention: usize,
    /// Whether opening runs SQLite's `PRAGMA quick_check` over the whole file (reads every
    /// page: about a second per million changes), so that a damaged database is refused at
    /// start-up rather than when a pull reaches the damage. Default: `true`.
    pub verify: bool,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        SqliteConfig {
            epoch: 0,
            retention: 0,
            verify: true,
        }
    }
}

/// Why a [`SqliteStore`] could not open or answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqliteError {
    /// The file is not a syncmux database: another program's SQLite file, or one written by
    /// a newer schema. It is left untouched.
    #[error("{path}: not a syncmux database ({why})")]
    Foreign {
        /// The database file.
        path: PathBuf,
        /// What gave it away.
        why: String,
    },
    /// The file is damaged (torn, truncated, overwritten, or not SQLite at all). It is left
    /// untouched: restore it from a backup or move it away; a new history is never started
    /// over it.
    #[error("{path}: the database is corrupt ({why})")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// SQLite's diagnosis.
        why: String,
    },
    /// Another [`SqliteStore`] (another server on the same file, or another handle in this
    /// process) opened the database after this one: only the newest opener writes, so that
    /// two servers never both serve one log as if each were its only writer (each would
    /// route only its own pushes live). Nothing was written.
    #[error("{path}: another writer opened this database since; this one no longer writes")]
    Displaced {
        /// The database file.
        path: PathBuf,
    },
    /// SQLite failed (disk full, permissions, I/O error, a lock held too long).
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The backend's threads could not be started.
    #[error("cannot start the store's threads: {0}")]
    Thread(std::io::Error),
}

/// A durable embedded change store (native only): [`MemoryStore`]'s
/// operations and semantics, kept in a SQLite database in WAL mode.
///
/// Merge, positions, pulls, retention and the epoch follow [`MemoryStore`] exactly (its docs
/// are the specification, and `tests/store_props.rs` holds both to the same model). What
/// differs is what survives: every change, its position, the `lww` winners, the operation
/// identities and the epoch are on disk once [`push`](SqliteStore::push) returns
/// (`synchronous=FULL`: the write-ahead log is synced before the commit returns), so a
/// process killed at any moment restarts on the same history, and clients resume by cursor
/// with `recovered: true`.
///
/// [`push_many`](SqliteStore::push_many) merges several pushes in one transaction, with one
/// sync: group commit, which the `SqliteBackend` of the adapters (`syncmux_sqlite`) uses
/// for concurrent pushes.
///
/// A database that is damaged or not a syncmux database is an error at
/// [`open`](SqliteStore::open), never an empty history: the epoch is written once, when the
/// database is created, and never replaced.
///
/// ```
/// use syncmux::payload::{ChangeRecord, Cursor, Hlc};
/// use syncmux_sqlite::{SqliteConfig, SqliteStore};
///
/// let dir = std::env::temp_dir().join(format!("syncmux-doc-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("changes.db");
/// # let _ = std::fs::remove_file(&path);
/// let mut config = SqliteConfig::default();
/// config.epoch = 7;
/// let mut store = SqliteStore::open(&path, config.clone()).unwrap();
/// let change = ChangeRecord::new("docs", "1", "title", "lww", Hlc::new(10, 0, "n1"), "n1");
/// assert_eq!(store.push(vec![change]).unwrap().head, Cursor::new(7, 1));
/// drop(store);
///
/// // Reopened (the epoch of the config is only for a new database): the same history.
/// config.epoch = 8;
/// let store = SqliteStore::open(&path, config).unwrap();
/// let pulled = store.pull(&["docs".to_owned()], None, Some(&Cursor::new(7, 0))).unwrap();
/// assert!(pulled.complete);
/// assert_eq!(pulled.changes[0].0, Cursor::new(7, 1));
/// # drop(store);
/// # std::fs::remove_dir_all(&dir).unwrap();
/// ```
///
/// [`MemoryStore`]: syncmux::MemoryStore
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    epoch: u64,
    retention: usize,
    /// The meta row as of this handle's last open or commit.
    meta: Meta,
    /// This handle's name in the meta row while it is the database's writer.
    owner: String,
}

/// A read-only connection to a [`SqliteStore`]'s database, for pulls beside its writer (WAL:
/// readers never block the writer nor wait for it).
pub struct SqliteReader {
    conn: Connection,
}

/// The `meta` row.
#[derive(Clone, Debug)]
struct Meta {
    epoch: u64,
    head: u64,
    first: u64,
    forgotten: Option<Vec<u8>>,
    owner: Option<String>,
}

/// Distinguishes the handles one process opens.
static OPENED: AtomicU64 = AtomicU64::new(0);

impl SqliteStore {
    /// Opens the database at `path`, creating it (with `config.epoch`) when the file does not
    /// exist or is empty. A damaged file is [`SqliteError::Corrupt`], another program's or a
    /// newer schema's [`SqliteError::Foreign`].
    pub fn open(path: impl AsRef<Path>, config: SqliteConfig) -> Result<SqliteStore, SqliteError> {
        let path = path.as_ref().to_path_buf();
        let conn = Connection::open(&path)?;
        let mut meta = prepare(&conn, &path, config.verify, Some(config.epoch))?;
        // Claim the database: an older handle's next write finds it is no longer the writer.
        let owner = format!(
            "{}.{}",
            std::process::id(),
            OPENED.fetch_add(1, Ordering::Relaxed)
        );
        conn.execute("UPDATE meta SET owner = ?1 WHERE id = 0", [&owner])?;
        meta.owner = Some(owner.clone());
        Ok(SqliteStore {
            conn,
            path,
            epoch: meta.epoch,
            retention: config.retention,
            meta,
            owner,
        })
    }

    /// A read-only connection to the same database.
    pub fn reader(&self) -> Result<SqliteReader, SqliteError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&self.path, flags)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        Ok(SqliteReader { conn })
    }

    /// The epoch of this database's history, fixed when it was created.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The position of the newest accepted change; `Cursor::new(epoch, 0)` before the first.
    pub fn head(&self) -> Cursor {
        Cursor::new(self.epoch, self.meta.head)
    }

    /// The number of changes retained.
    pub fn len(&self) -> usize {
        usize::try_from(self.meta.head + 1 - self.meta.first).unwrap_or(usize::MAX)
    }

    /// Whether no change is retained.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Merges `changes` as [`MemoryStore::push`](syncmux::MemoryStore::push) does, durably:
    /// when it returns `Ok`, the changes are on disk.
    pub fn push(&mut self, changes: Vec<ChangeRecord>) -> Result<PushAnswer, SqliteError> {
        let mut out = self.push_many(vec![changes])?;
        Ok(out.pop().expect("invariant: one outcome per push"))
    }

    /// Merges several pushes, one after the other, in one transaction with one sync (group
    /// commit): the outcomes are exactly those of pushing them one by one. On an error none
    /// of them is kept.
    pub fn push_many(
        &mut self,
        pushes: Vec<Vec<ChangeRecord>>,
    ) -> Result<Vec<PushAnswer>, SqliteError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Read again inside the write lock: the row is the truth, not this handle's copy.
        let mut meta = read_meta(&tx, &self.path)?;
        if meta.owner.as_deref() != Some(self.owner.as_str()) {
            return Err(SqliteError::Displaced {
                path: self.path.clone(),
            });
        }
        let mut outcomes = Vec::with_capacity(pushes.len());
        for changes in pushes {
            outcomes.push(merge(&tx, &mut meta, self.retention, changes)?);
        }
        tx.prepare_cached("UPDATE meta SET head = ?1, first = ?2, forgotten = ?3 WHERE id = 0")?
            .execute(params![
                sql_int(meta.head),
                sql_int(meta.first),
                meta.forgotten
            ])?;
        tx.commit()?;
        self.meta = meta;
        Ok(outcomes)
    }

    /// The changes of `tables` after `cursor`, or else after `since`, or else all of them, as
    /// [`MemoryStore::pull`](syncmux::MemoryStore::pull) answers, in O(log n + k) row reads
    /// per table.
    pub fn pull(
        &self,
        tables: &[String],
        since: Option<&Hlc>,
        cursor: Option<&Cursor>,
    ) -> Result<PullAnswer, SqliteError> {
        pull(&self.conn, &self.path, tables, since, cursor)
    }
}

/// The durable log behind a [`Driver`](syncmux::Driver): each push is one synced transaction.
impl syncmux::Store for SqliteStore {
    type Error = SqliteError;
    type Record<'a> = ChangeRecord;

    fn push(&mut self, changes: Vec<ChangeRecord>) -> Result<PushAnswer, SqliteError> {
        SqliteStore::push(self, changes)
    }

    fn pull(
        &self,
        tables: &[String],
        since: Option<&Hlc>,
        cursor: Option<&Cursor>,
    ) -> Result<PullAnswer, SqliteError> {
        SqliteStore::pull(self, tables, since, cursor)
    }

    fn head(&self) -> Cursor {
        SqliteStore::head(self)
    }
}

impl SqliteReader {
    /// [`SqliteStore::pull`] on this connection, from one consistent snapshot.
    pub fn pull(
        &self,
        tables: &[String],
        since: Option<&Hlc>,
        cursor: Option<&Cursor>,
    ) -> Result<PullAnswer, SqliteError> {
        let path = self.path();
        pull(&self.conn, &path, tables, since, cursor)
    }

    /// The newest position, as of now.
    pub fn head(&self) -> Result<Cursor, SqliteError> {
        let meta = read_meta(&self.conn, &self.path())?;
        Ok(Cursor::new(meta.epoch, meta.head))
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(self.conn.path().unwrap_or_default())
    }
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("head", &self.head())
            .field("len", &self.len())
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for SqliteReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteReader")
            .field("path", &self.path())
            .finish_non_exhaustive()
    }
}

/// Sets the connection up (WAL, full sync), checks the file, and creates the schema when the
/// database is new (`create` gives its epoch). The meta row.
fn prepare(
    conn: &Connection,
    path: &Path,
    verify: bool,
    create: Option<u64>,
) -> Result<Meta, SqliteError> {
    let opened = (|| -> Result<Meta, SqliteError> {
        conn.busy_timeout(BUSY_TIMEOUT)?;
        // The first read of the file: a file that is not SQLite fails here.
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(foreign(path, format!("journal mode {mode}, not WAL")));
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        if verify {
            let verdict: String = conn.query_row("PRAGMA quick_check(1)", [], |row| row.get(0))?;
            if verdict != "ok" {
                return Err(SqliteError::Corrupt {
                    path: path.to_path_buf(),
                    why: verdict,
                });
            }
        }
        let id: i64 = conn.query_row("PRAGMA application_id", [], |row| row.get(0))?;
        let objects: i64 =
            conn.query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0))?;
        if id == 0 && objects == 0 {
            if let Some(epoch) = create {
                create_schema(conn, epoch)?;
            }
        } else if id != APPLICATION_ID {
            return Err(foreign(path, format!("application id {id:#x}")));
        }
        read_meta(conn, path)
    })();
    opened.map_err(|e| classify(e, path))
}

/// Creates the schema and the meta row with `epoch`, in one transaction, unless another
/// process did meanwhile.
fn create_schema(conn: &Connection, epoch: u64) -> Result<(), SqliteError> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let created = (|| -> Result<(), SqliteError> {
        let objects: i64 =
            conn.query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0))?;
        if objects == 0 {
            conn.execute_batch(SCHEMA)?;
            conn.execute(
                "INSERT INTO meta (id, schema, epoch, head, first, forgotten) \
                 VALUES (0, ?1, ?2, 0, 1, NULL)",
                params![SCHEMA_VERSION, epoch.to_string()],
            )?;
            conn.pragma_update(None, "application_id", APPLICATION_ID)?;
        }
        Ok(())
    })();
    match created {
        Ok(()) => Ok(conn.execute_batch("COMMIT")?),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// Damage reported by SQLite becomes [`SqliteError::Corrupt`].
fn classify(e: SqliteError, path: &Path) -> SqliteError {
    match e {
        SqliteError::Sqlite(rusqlite::Error::SqliteFailure(code, message))
            if matches!(
                code.code,
                rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt
            ) =>
        {
            SqliteError::Corrupt {
                path: path.to_path_buf(),
                why: message.unwrap_or_else(|| code.to_string()),
            }
        }
        other => other,
    }
}

fn foreign(path: &Path, why: String) -> SqliteError {
    SqliteError::Foreign {
        path: path.to_path_buf(),
        why,
    }
}

fn corrupt(path: &Path, why: &str) -> SqliteError {
    SqliteError::Corrupt {
        path: path.to_path_buf(),
        why: why.to_owned(),
    }
}

fn read_meta(conn: &Connection, path: &Path) -> Result<Meta, SqliteError> {
    let row = conn
        .prepare_cached(
            "SELECT schema, epoch, head, first, forgotten, owner FROM meta WHERE id = 0",
        )
        .and_then(|mut stmt| {
            stmt.query_row([], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, Option<Vec<u8>>>(4)?,
                    row.get::<_, Option<String>>(5)?,
                ))
            })
            .optional()
        });
    let (schema, epoch, head, first, forgotten, owner) = match row {
        Ok(Some(row)) => row,
        Ok(None) => return Err(foreign(path, "no meta row".to_owned())),
        Err(rusqlite::Error::SqliteFailure(_, Some(message))) if message.contains("no such") => {
            return Err(foreign(path, message));
        }
        Err(e) => return Err(e.into()),
    };
    if schema != SCHEMA_VERSION {
        return Err(foreign(
            path,
            format!("schema version {schema}, this build reads {SCHEMA_VERSION}"),
        ));
    }
    let epoch = epoch.parse().map_err(|_| corrupt(path, "epoch"))?;
    let (Ok(head), Ok(first)) = (u64::try_from(head), u64::try_from(first)) else {
        return Err(corrupt(path, "head"));
    };
    if first == 0 || first > head + 1 {
        return Err(corrupt(path, "head and oldest position"));
    }
    Ok(Meta {
        epoch,
        head,
        first,
        forgotten,
        owner,
    })
}

/// A position as SQLite's integer (positions stay far below 2^63).
fn sql_int(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// One push, inside the caller's transaction: [`MemoryStore::push`](syncmux::MemoryStore::push)
/// record by record.
fn merge(
    tx: &Connection,
    meta: &mut Meta,
    retention: usize,
    changes: Vec<ChangeRecord>,
) -> Result<PushAnswer, SqliteError> {
    let epoch = meta.epoch;
    let mut accepted = Vec::new();
    let mut pushed_tables: Vec<String> = Vec::new();
    let floor = hlc_key(&Hlc::default());
    for record in changes {
        if pushed_tables.last() != Some(&record.table) {
            pushed_tables.push(record.table.clone());
        }
        let seq = meta.head + 1;
        let hlc = hlc_key(&record.hlc);
        let lww = record.crdt_type == LWW;
        let (tbl, pk, field) = (&record.table, &record.pk, &record.field);
        let new = if lww {
            let winner: Option<Vec<u8>> = tx
                .prepare_cached(
                    "SELECT hlc FROM winners WHERE tbl = ?1 AND pk = ?2 AND field = ?3",
                )?
                .query_row(params![tbl, pk, field], |row| row.get(0))
                .optional()?;
            if winner.is_some_and(|w| w >= hlc) {
                false
            } else {
                tx.prepare_cached(
                    "INSERT INTO winners VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT \
                     DO UPDATE SET hlc = excluded.hlc, seq = excluded.seq",
                )?
                .execute(params![tbl, pk, field, hlc, sql_int(seq)])?;
                true
            }
        } else {
            tx.prepare_cached("INSERT OR IGNORE INTO ops VALUES (?1, ?2, ?3, ?4)")?
                .execute(params![tbl, pk, field, hlc])?
                == 1
        };
        if !new {
            continue;
        }
        let latest = if hlc > floor { &hlc } else { &floor };
        tx.prepare_cached(
            "INSERT INTO tables (tbl, latest, evicted) VALUES (?1, ?2, ?3) \
             ON CONFLICT (tbl) DO UPDATE SET latest = max(latest, excluded.latest)",
        )?
        .execute(params![tbl, latest, meta.forgotten])?;
        let json = serde_json::to_string(&record).expect("invariant: change records serialise");
        tx.prepare_cached("INSERT INTO changes VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")?
            .execute(params![sql_int(seq), tbl, pk, field, lww, hlc, json])?;
        meta.head = seq;
        accepted.push((Cursor::new(epoch, seq), record));
        evict(tx, meta, retention)?;
    }
    pushed_tables.sort_unstable();
    pushed_tables.dedup();
    let mut latest: Option<Vec<u8>> = None;
    for name in &pushed_tables {
        let held: Option<Vec<u8>> = tx
            .prepare_cached("SELECT latest FROM tables WHERE tbl = ?1")?
            .query_row([name], |row| row.get(0))
            .optional()?;
        latest = latest.max(held);
    }
    Ok(PushAnswer {
        accepted,
        latest_hlc: latest.as_deref().and_then(hlc_of).unwrap_or_default(),
        head: Cursor::new(epoch, meta.head),
    })
}

/// Evicts the oldest positions until the retention holds, as the `MemoryStore` does: every
/// index forgets them, a table left empty is dropped and its eviction horizon kept.
fn evict(tx: &Connection, meta: &mut Meta, retention: usize) -> Result<(), SqliteError> {
    while retention != 0 && meta.head + 1 - meta.first > retention as u64 {
        let seq = sql_int(meta.first);
        let (tbl, pk, field, lww, hlc): (String, String, String, bool, Vec<u8>) = tx
            .prepare_cached("SELECT tbl, pk, field, lww, hlc FROM changes WHERE seq = ?1")?
            .query_row([seq], |row| {
                Ok((
                    row.get(0)?,
                    row.get(1)?,
                    row.get(2)?,
                    row.get(3)?,
                    row.get(4)?,
                ))
            })?;
        if lww {
            // A superseded change is not the winner; only the winner's own eviction ends it.
            tx.prepare_cached(
                "DELETE FROM winners WHERE tbl = ?1 AND pk = ?2 AND field = ?3 AND seq = ?4",
            )?
            .execute(params![tbl, pk, field, seq])?;
        } else {
            tx.prepare_cached(
                "DELETE FROM ops WHERE tbl = ?1 AND pk = ?2 AND field = ?3 AND hlc = ?4",
            )?
            .execute(params![tbl, pk, field, hlc])?;
        }
        tx.prepare_cached("DELETE FROM changes WHERE seq = ?1")?
            .execute([seq])?;
        meta.first += 1;
        tx.prepare_cached(
            "UPDATE tables SET evicted = CASE WHEN evicted IS NULL OR evicted < ?2 \
             THEN ?2 ELSE evicted END WHERE tbl = ?1",
        )?
        .execute(params![tbl, hlc])?;
        let left: Option<i64> = tx
            .prepare_cached("SELECT seq FROM changes WHERE tbl = ?1 LIMIT 1")?
            .query_row([&tbl], |row| row.get(0))
            .optional()?;
        if left.is_none() {
            let evicted: Option<Vec<u8>> = tx
                .prepare_cached("DELETE FROM tables WHERE tbl = ?1 RETURNING evicted")?
                .query_row([&tbl], |row| row.get(0))?;
            meta.forgotten = meta.forgotten.take().max(evicted);
        }
    }
    Ok(())
}

/// A pull from one snapshot of the database (module docs of the `MemoryStore`, "Pull").
fn pull(
    conn: &Connection,
    path: &Path,
    tables: &[String],
    since: Option<&Hlc>,
    cursor: Option<&Cursor>,
) -> Result<PullAnswer, SqliteError> {
    // One read transaction: the meta row and every table's rows from the same snapshot.
    let tx = conn.unchecked_transaction()?;
    let meta = read_meta(&tx, path)?;
    let mut names: Vec<&String> = tables.iter().collect();
    names.sort_unstable();
    names.dedup();
    let since_key = since.map(hlc_key);
    let mut held: Vec<&String> = Vec::new();
    let mut latest: Option<Vec<u8>> = None;
    let mut evicted_after_since = false;
    for name in names {
        let row: Option<(Vec<u8>, Option<Vec<u8>>)> = tx
            .prepare_cached("SELECT latest, evicted FROM tables WHERE tbl = ?1")?
            .query_row([name], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        let evicted = match row {
            Some((newest, evicted)) => {
                held.push(name);
                latest = latest.max(Some(newest));
                evicted
            }
            None => meta.forgotten.clone(),
        };
        evicted_after_since |=
            evicted.is_some_and(|e| since_key.as_ref().is_none_or(|since| e > *since));
    }
    let latest_hlc = match latest {
        Some(key) => hlc_of(&key).ok_or_else(|| corrupt(path, "an HLC"))?,
        None => since.cloned().unwrap_or_default(),
    };
    let head = Cursor::new(meta.epoch, meta.head);
    let served =
        cursor.filter(|c| c.epoch == meta.epoch && c.seq <= meta.head && c.seq >= meta.first - 1);
    let mut rows: Vec<(Vec<u8>, u64, String)> = Vec::new();
    if let Some(after) = served {
        for name in &held {
            let mut stmt = tx.prepare_cached(
                "SELECT seq, record FROM changes WHERE tbl = ?1 AND seq > ?2 ORDER BY seq",
            )?;
            let found = stmt.query_map(params![name, sql_int(after.seq)], |row| {
                Ok((Vec::new(), row.get::<_, i64>(0)? as u64, row.get(1)?))
            })?;
            for row in found {
                rows.push(row?);
            }
        }
        rows.sort_unstable_by_key(|(_, seq, _)| *seq);
    } else {
        let lower = since_key.unwrap_or_default();
        for name in &held {
            let mut stmt = tx.prepare_cached(
                "SELECT hlc, seq, record FROM changes WHERE tbl = ?1 AND hlc > ?2 \
                 ORDER BY hlc, seq",
            )?;
            let found = stmt.query_map(params![name, lower], |row| {
                Ok((row.get(0)?, row.get::<_, i64>(1)? as u64, row.get(2)?))
            })?;
            for row in found {
                rows.push(row?);
            }
        }
        rows.sort_unstable_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    }
    let mut changes = Vec::with_capacity(rows.len());
    for (_, seq, json) in rows {
        let record: ChangeRecord =
            serde_json::from_str(&json).map_err(|_| corrupt(path, "a change record"))?;
        changes.push((Cursor::new(meta.epoch, seq), record));
    }
    Ok(PullAnswer {
        changes,
        latest_hlc,
        head,
        complete: served.is_some() || (cursor.is_none() && !evicted_after_since),
    })
}

/// An HLC as bytes whose order (SQLite compares blobs with `memcmp`) is the HLC's: `ts` with
/// its sign bit flipped, then `c`, both big-endian, then the node's UTF-8.
fn hlc_key(hlc: &Hlc) -> Vec<u8> {
    let mut key = Vec::with_capacity(12 + hlc.node.len());
    key.extend_from_slice(&((hlc.ts as u64) ^ (1 << 63)).to_be_bytes());
    key.extend_from_slice(&hlc.c.to_be_bytes());
    key.extend_from_slice(hlc.node.as_bytes());
    key
}

/// The HLC of a key from [`hlc_key`].
fn hlc_of(key: &[u8]) -> Option<Hlc> {
    let ts = u64::from_be_bytes(key.get(..8)?.try_into().ok()?) ^ (1 << 63);
    let c = u32::from_be_bytes(key.get(8..12)?.try_into().ok()?);
    let node = core::str::from_utf8(key.get(12..)?).ok()?;
    Some(Hlc::new(ts as i64, c, node))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The writer's connection is in WAL mode and syncs the log at every commit
    /// (`synchronous=FULL`: 2), so a commit that returned survives a power loss too.
    #[test]
    fn commits_are_synced_in_wal_mode() {
        let dir = std::env::temp_dir().join(format!("syncmux-sync-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("changes.db");
        let _ = std::fs::remove_file(&path);
        let store = SqliteStore::open(&path, SqliteConfig::default()).unwrap();
        let mode: String = store
            .conn
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))
            .unwrap();
        let sync: i64 = store
            .conn
            .query_row("PRAGMA synchronous", [], |row| row.get(0))
            .unwrap();
        assert_eq!((mode.as_str(), sync), ("wal", 2));
        drop(store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Byte order of the keys is HLC order, negative times and shared node prefixes included,
    /// and every key decodes back.
    #[test]
    fn hlc_keys_sort_as_hlcs() {
        let hlcs = [
            Hlc::new(i64::MIN, 0, ""),
            Hlc::new(-1, 5, "b"),
            Hlc::new(0, 0, ""),
            Hlc::new(0, 0, "a"),
            Hlc::new(0, 0, "ab"),
            Hlc::new(0, 1, ""),
            Hlc::new(1, 0, "a"),
            Hlc::new(i64::MAX, u32::MAX, "z"),
        ];
        for pair in hlcs.windows(2) {
            assert!(pair[0] < pair[1]);
            assert!(hlc_key(&pair[0]) < hlc_key(&pair[1]), "{pair:?}");
        }
        for hlc in &hlcs {
            assert_eq!(hlc_of(&hlc_key(hlc)).as_ref(), Some(hlc));
        }
    }
}
