//! JSON Lines files: a replayable source, and sinks for scores, examples and dead letters.

mod sink;
mod source;

pub use sink::JsonlSink;
pub use source::{Block, BlockReader, FileSource, FileSourceConfig, FilledBlock, Poll};
