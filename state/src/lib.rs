//! ctrflow's durable state.
//!
//! For now this crate holds the [`snapshot`] file format: a framed, versioned, checksummed
//! binary container that the model (and later other state) is saved in, written atomically
//! so a crash mid-write never leaves a half-written file under the final name. RocksDB-backed
//! keyed tables and epoch checkpoints come next.
//!
//! ```
//! use ctrflow_state::snapshot::{read_snapshot, write_snapshot};
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("model.snap");
//! write_snapshot(&path, *b"DEMO", 3, b"payload bytes")?;
//! let (version, payload) = read_snapshot(&path, *b"DEMO")?;
//! assert_eq!((version, payload.as_slice()), (3, &b"payload bytes"[..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![warn(missing_docs)]

pub mod snapshot;
