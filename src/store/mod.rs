mod memory;
mod table;

pub use memory::{MemoryStore, PullOutcome, PushOutcome, StoreConfig};
