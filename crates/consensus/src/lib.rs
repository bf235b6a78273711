//! # Consensus: the Raft log is the commit log
//!
//! AmberDB puts openraft (pinned `=0.9.25`, wrapped here so nothing above sees it)
//! between "this transaction may commit" and "this transaction is applied". The Raft log
//! is the database's write-ahead log: a commit is durable when its log entry is fsync'd
//! on a quorum (one node: its own disk), and the state machine that applies entries to
//! [`amberdb_mvcc::Mvcc`] needs no write-ahead log of its own.
//!
//! ```text
//!              ┌────────────── Node ───────────────┐
//!  commit ───▶ │ conflict window → queue → Batcher │
//!              │        │ one entry per batch      │
//!              │        ▼                          │
//!              │   openraft core ──▶ LogStore ─────┼──▶ raft/log/*.seg  (fsync, grouped)
//!              │        │           │ meanwhile:   │
//!              │        │           └─ write ahead ┼──▶ engine: data + heads at the
//!              │        │ committed    (invisible) │     entry's index, a record of it
//!              │        ▼                          │
//!              │   StateMachine ──▶ Mvcc ──────────┼──▶ engine (one batch per apply:
//!              └───────────────────────────────────┘     publish + applied log id)
//! ```
//!
//! While an entry's fsync runs, the log store writes its commits into the store
//! (`Mvcc::speculate`), above the applied version where no reader looks; the apply
//! that follows the fsync then only publishes them. What a crash or a log truncation
//! leaves written ahead of an entry that never committed is undone.
//!
//! Invariants:
//! 1. A commit is acknowledged only after the fsync covering its log entry.
//! 2. Versions are Raft log indexes: strictly increasing, identical on every replica.
//!    Transactions batched into one entry share its version.
//! 3. The applied log id is persisted in the same engine batch as the data it
//!    describes, so a restart neither loses nor double-applies an entry.
//! 4. The log is purged only up to a checkpoint, i.e. after the engine is fsync'd past
//!    the purged entries.
//! 5. A torn log tail (never acknowledged) is repaired with a warning; any other damage
//!    stops start-up with an error naming the file and offset.
//! 6. Nothing written ahead is visible before its entry is applied, and nothing written
//!    ahead survives (a restart, a truncation) its entry leaving the log uncommitted.
//!
//! Why openraft 0.9.25 and not 0.10: 0.10 is still alpha with a changing storage API.
//! 0.9.25 draws its election timeout once per process, so in a future multi-node
//! cluster two nodes can keep splitting votes; the cluster work must give each node a
//! distinct timeout range (e.g. derived from its id) or move to 0.10 once it is stable.

// openraft's storage traits return its (large) `StorageError` by value; we match them.
#![allow(clippy::result_large_err)]

mod log_store;
mod network;
mod node;
mod state_machine;
mod types;

pub use log_store::{FlushStats, LogStore, LogStoreHandle};
pub use node::{BulkLoadHandle, LogRecord, Node, NodeConfig, NodeStatus, DEFAULT_STAGE_BYTES, MAX_TXN_BYTES};
pub use state_machine::{AppliedRecord, StateMachine, META_RAFT_APPLIED};
pub use types::{Checkpoint, Request, Response, TypeConfig};
