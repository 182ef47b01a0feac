//! ctrflow: a stream processor that learns click-through rates online.
//!
//! Events (impressions and their feedback) are decoded ([`event`]), turned into hashed
//! feature vectors ([`features`]), scored by the freshest model ([`model`]) before their
//! label is known, joined with their feedback under an attribution window, and learned
//! from with the very features they were scored with (`ctrflow_dataflows`). Progressive
//! validation ([`progressive`]) measures the model on every example before it learns from
//! it, and drift detectors ([`drift`]) watch the loss, the calibration, the feedback rate
//! and the input distributions, raising one alert per episode. See `../shared/DESIGN.md` for the contract.
#![warn(missing_docs)]

pub mod baseline;
pub mod checkpoint;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod drift;
pub mod entity;
pub mod event;
pub mod features;
pub mod generator;
pub mod inspect;
pub mod model;
pub mod pending;
pub mod pipeline;
pub mod produce;
pub mod progressive;
pub mod replay;
pub mod report;
pub mod run;
pub mod telemetry;
pub mod timeline;
