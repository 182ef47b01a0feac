//! ctrflow: a stream processor that learns click-through rates online.
//!
//! Events (impressions and their feedback) are decoded ([`event`]), turned into hashed
//! feature vectors, scored by the freshest model before their label is known, joined with
//! their feedback under an attribution window, and learned from with the very features
//! they were scored with. See `../shared/DESIGN.md` for the contract.
#![warn(missing_docs)]

pub mod event;
pub mod r#gen;
