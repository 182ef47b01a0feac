//! The pipeline configuration: one TOML file whose sections belong to the components that
//! use them.
//!
//! Every section has defaults, so an empty file (or none) is a valid configuration. Unknown
//! keys are errors, so that a typo never falls back to a default silently, and
//! [`PipelineConfig::validate`] reports every problem at once, each naming its key.

use std::path::Path;

use ctrflow_connectors::file::FileSourceConfig;
use ctrflow_connectors::kafka::KafkaConfig;
use ctrflow_dataflows::operators::{LabelConfig, Watermark};
use ctrflow_state::StateConfig;
use serde::{Deserialize, Serialize};

use crate::drift::DriftConfig;
use crate::features::FeatureConfig;
use crate::model::ModelConfig;

/// The whole pipeline configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Reading and decoding input, and event time.
    #[serde(default)]
    pub input: InputConfig,
    /// The label join (`window_ms`, `fast_skip_ms`).
    #[serde(default)]
    pub label: LabelConfig,
    /// Feature extraction and hashing.
    #[serde(default)]
    pub features: FeatureConfig,
    /// The online model.
    #[serde(default)]
    pub model: ModelConfig,
    /// Progressive validation.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Kafka topics and clients (`run`, `demo`, `gen --out kafka://`).
    #[serde(default)]
    pub kafka: KafkaConfig,
    /// Durable state and checkpoints (`run`).
    #[serde(default)]
    pub state: StateConfig,
    /// Drift detection and alerts.
    #[serde(default)]
    pub drift: DriftConfig,
}

/// Reading and decoding input, and event time (`[input]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// Events larger than this many bytes are rejected unparsed.
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: usize,
    /// How far behind the newest event time the watermark trails: events older than the
    /// watermark are late (processed at once, possibly after their window closed).
    #[serde(default = "default_allowed_lateness_ms")]
    pub allowed_lateness_ms: u64,
    /// The watermark moves in steps of this many milliseconds.
    #[serde(default = "default_watermark_step_ms")]
    pub watermark_step_ms: u64,
    /// How files are read (`replay`).
    #[serde(default)]
    pub file: FileSourceConfig,
}

const fn default_max_event_bytes() -> usize {
    crate::event::DEFAULT_MAX_EVENT_BYTES
}

const fn default_allowed_lateness_ms() -> u64 {
    2000
}

const fn default_watermark_step_ms() -> u64 {
    100
}

impl Default for InputConfig {
    fn default() -> Self {
        Self {
            max_event_bytes: default_max_event_bytes(),
            allowed_lateness_ms: default_allowed_lateness_ms(),
            watermark_step_ms: default_watermark_step_ms(),
            file: FileSourceConfig::default(),
        }
    }
}

impl InputConfig {
    /// The watermark after seeing events up to `max_ts`.
    pub fn watermark(&self, max_ts: i64) -> Watermark {
        let behind = max_ts
            .saturating_sub(self.allowed_lateness_ms as i64)
            .max(0) as u64;
        let step = self.watermark_step_ms.max(1);
        behind / step * step
    }

    fn validate(&self, problems: &mut Vec<String>) {
        if self.max_event_bytes < 64 {
            problems.push(format!(
                "input.max_event_bytes must be at least 64, got {}",
                self.max_event_bytes
            ));
        }
        if self.watermark_step_ms == 0 {
            problems.push("input.watermark_step_ms must be > 0, got 0".to_owned());
        }
        if self.file.block_bytes == 0 {
            problems.push("input.file.block_bytes must be > 0, got 0".to_owned());
        }
    }
}

/// Progressive validation (`[metrics]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Examples in the sliding window of recent metrics.
    #[serde(default = "default_window")]
    pub window: usize,
    /// The window slides in this many steps (memory grows with it).
    #[serde(default = "default_window_slices")]
    pub window_slices: usize,
}

const fn default_window_slices() -> usize {
    10
}

const fn default_window() -> usize {
    100_000
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            window: default_window(),
            window_slices: default_window_slices(),
        }
    }
}

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown key, wrong type, ...).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What the parser said, with the key and line.
        message: String,
    },
    /// Values parsed but are not allowed; every problem is listed.
    #[error("{path}: invalid configuration:\n  - {}", problems.join("\n  - "))]
    Invalid {
        /// The file.
        path: String,
        /// One line per problem, each naming its key.
        problems: Vec<String>,
    },
}

impl PipelineConfig {
    /// Loads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: name.clone(),
            source,
        })?;
        Self::parse(&text, &name)
    }

    /// Parses and validates TOML text; `name` is used in messages.
    pub fn parse(text: &str, name: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: name.to_owned(),
            message: e.to_string(),
        })?;
        let problems = config.validate();
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: name.to_owned(),
                problems,
            })
        }
    }

    /// Every problem with this configuration, each naming its key, value and what is allowed.
    pub fn validate(&self) -> Vec<String> {
        let mut problems = Vec::new();
        self.input.validate(&mut problems);
        problems.extend(self.label.validate());
        problems.extend(self.features.validate());
        problems.extend(self.model.validate());
        if self.model.bits < self.features.bits {
            problems.push(format!(
                "model.bits ({}) must be at least features.bits ({}), or hashed features would share coordinates",
                self.model.bits, self.features.bits
            ));
        }
        if self.metrics.window == 0 {
            problems.push("metrics.window must be > 0, got 0".to_owned());
        }
        if !(1..=1000).contains(&self.metrics.window_slices)
            || self.metrics.window_slices > self.metrics.window.max(1)
        {
            problems.push(format!(
                "metrics.window_slices must be in 1..=1000 and at most metrics.window, got {}",
                self.metrics.window_slices
            ));
        }
        self.kafka.validate(&mut problems);
        problems.extend(self.state.validate());
        problems.extend(self.drift.validate());
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(
            PipelineConfig::parse("", "t").unwrap(),
            PipelineConfig::default()
        );
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key() {
        let err = PipelineConfig::parse("[label]\nwindow_msec = 5\n", "t.toml").unwrap_err();
        assert!(err.to_string().contains("window_msec"), "{err}");
    }

    #[test]
    fn every_problem_is_reported() {
        let text =
            "[model]\nalpha = -0.1\n[input]\nwatermark_step_ms = 0\n[metrics]\nwindow_slices = 0\n";
        let ConfigError::Invalid { problems, .. } = PipelineConfig::parse(text, "t").unwrap_err()
        else {
            panic!()
        };
        assert_eq!(problems.len(), 3, "{problems:?}");
        for key in [
            "model.alpha",
            "input.watermark_step_ms",
            "metrics.window_slices",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(key)),
                "{key} in {problems:?}"
            );
        }
    }

    #[test]
    fn watermark_trails_and_steps() {
        let input = InputConfig {
            allowed_lateness_ms: 2000,
            watermark_step_ms: 100,
            ..InputConfig::default()
        };
        assert_eq!(input.watermark(10_550), 8500);
        assert_eq!(input.watermark(i64::MIN), 0);
    }
}
