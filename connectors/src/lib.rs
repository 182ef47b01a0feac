//! ctrflow's connectors: where raw payloads come from and where outputs go.
//!
//! A source yields raw payloads with their position in the source (decoding is not a
//! connector's job); a sink takes encoded records. One module per external system.
#![warn(missing_docs)]

pub mod error;
pub mod file;
pub mod kafka;
pub mod webhook;

pub use error::ConnectorError;
