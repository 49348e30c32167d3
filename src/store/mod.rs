mod memory;
#[cfg(all(feature = "sqlite", not(target_arch = "wasm32")))]
mod sqlite;
mod table;

pub use memory::{MemoryStore, PullOutcome, PushOutcome, StoreConfig};
#[cfg(all(feature = "sqlite", not(target_arch = "wasm32")))]
pub use sqlite::{SqliteConfig, SqliteError, SqliteReader, SqliteStore};
