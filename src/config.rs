//! The pipeline configuration: one TOML file whose sections belong to the components that
//! use them.
//!
//! Every section has defaults, so an empty file (or none) is a valid configuration. Unknown
//! keys are errors, so that a typo never falls back to a default silently, and
//! [`PipelineConfig::validate`] reports every problem at once, each naming its key.
//!
//! # Environment overrides
//!
//! Environment variables named `CTRFLOW__<SECTION>__<KEY>` (double underscores between
//! path segments, any case; segments are lowercased) override keys of the file:
//! `CTRFLOW__MODEL__L1=0.5` sets `model.l1`, `CTRFLOW__KAFKA__CONSUMER__POLL_BATCH=1024`
//! sets `kafka.consumer.poll_batch`. Values are read as TOML values (`0.5`, `true`,
//! `[["user","item"]]`, `"text"`); anything that is not one is taken as a string, so
//! `CTRFLOW__KAFKA__BROKERS=host:9092` needs no quotes. An override naming a key the
//! schema does not have is an error, like an unknown key in the file.

use std::path::Path;

use ctrflow_connectors::file::FileSourceConfig;
use ctrflow_connectors::kafka::KafkaConfig;
use ctrflow_dataflows::operators::{AggregatesConfig, LabelConfig, Watermark};
use ctrflow_state::StateConfig;
use serde::{Deserialize, Serialize};

use crate::cluster::ClusterConfig;
use crate::drift::DriftConfig;
use crate::features::FeatureConfig;
use crate::model::ModelConfig;
use crate::telemetry::TelemetryConfig;

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
    /// Global aggregates over a sliding window (per-category CTR, top items by clicks).
    #[serde(default)]
    pub aggregates: AggregatesConfig,
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
    /// Metrics and health endpoints (`run`).
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// Cluster mode (`run --processes P`): how processes exchange model deltas.
    #[serde(default)]
    pub cluster: ClusterConfig,
}

/// The prefix of environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "CTRFLOW__";

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
        Self::load_with_env(Some(path), std::iter::empty::<(String, String)>())
    }

    /// Loads a TOML file (or the defaults when `path` is `None`), applies the overrides
    /// among `env` (variables named `CTRFLOW__...`, see the module doc; others are
    /// ignored) and validates the result.
    pub fn load_with_env<K: AsRef<str>, V: AsRef<str>>(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, ConfigError> {
        let (name, text) = match path {
            Some(path) => {
                let name = path.display().to_string();
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: name.clone(),
                    source,
                })?;
                (name, text)
            }
            None => ("(defaults)".to_owned(), String::new()),
        };
        Self::parse_with_env(&text, &name, env)
    }

    /// [`load_with_env`](Self::load_with_env) with the process's environment.
    pub fn load_with_process_env(path: Option<&Path>) -> Result<Self, ConfigError> {
        let env = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
        Self::load_with_env(path, env)
    }

    /// Parses TOML text, applies the `CTRFLOW__...` overrides among `env` and validates.
    pub fn parse_with_env<K: AsRef<str>, V: AsRef<str>>(
        text: &str,
        name: &str,
        env: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, ConfigError> {
        let mut overrides: Vec<(String, Vec<String>, toml::Value)> = env
            .into_iter()
            .filter_map(|(k, v)| {
                let var = k.as_ref();
                let path = var.strip_prefix(ENV_PREFIX)?;
                let keys = path.split("__").map(str::to_lowercase).collect();
                Some((var.to_owned(), keys, env_value(v.as_ref())))
            })
            .collect();
        overrides.sort_by(|a, b| a.0.cmp(&b.0));
        if overrides.is_empty() {
            return Self::parse(text, name);
        }
        let parse_error = |message: String| ConfigError::Parse {
            path: name.to_owned(),
            message,
        };
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| parse_error(e.to_string()))?;
        let defaults =
            toml::Table::try_from(Self::default()).map_err(|e| parse_error(e.to_string()))?;
        let mut problems = Vec::new();
        // Whether the file alone fits the schema: if not, its own error is reported below.
        let file_ok = toml::from_str::<Self>(text).is_ok();
        for (var, keys, value) in &overrides {
            if let Err(problem) = check_override_path(&defaults, keys) {
                problems.push(format!("{var}: {problem}"));
                continue;
            }
            // Each override alone must give a valid schema, so that a wrong type names
            // its variable rather than a line of a generated file.
            let mut alone = table.clone();
            if let Err(problem) = set_path(&mut alone, keys, value.clone()) {
                problems.push(format!("{var}: {problem}"));
                continue;
            }
            let text = toml::to_string(&alone).map_err(|e| parse_error(e.to_string()))?;
            if let Err(e) = toml::from_str::<Self>(&text)
                && file_ok
            {
                problems.push(format!(
                    "{var} (sets {} = {value}): {}",
                    keys.join("."),
                    e.message()
                ));
                continue;
            }
            table = alone;
        }
        let merged = toml::to_string(&table).map_err(|e| parse_error(e.to_string()))?;
        let vars: Vec<&str> = overrides.iter().map(|(v, _, _)| v.as_str()).collect();
        let name = format!("{name} with {}", vars.join(", "));
        if problems.is_empty() {
            return Self::parse(&merged, &name);
        }
        // Report the rest too: what validation says of the overrides that did apply.
        match Self::parse(&merged, &name) {
            Ok(_) => {}
            Err(ConfigError::Invalid { problems: more, .. }) => problems.extend(more),
            Err(other) => problems.push(other.to_string()),
        }
        Err(ConfigError::Invalid {
            path: name,
            problems,
        })
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
        problems.extend(self.aggregates.validate());
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
        problems.extend(
            self.drift
                .response
                .validate_with(self.drift.enabled && self.drift.concept.enabled),
        );
        self.telemetry.validate(&mut problems);
        problems.extend(self.cluster.validate());
        problems
    }
}

/// An environment variable's value as a TOML value; a string when it is not one.
fn env_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

/// Sections whose keys are free-form (pass-through properties, per-field transforms).
const FREE_FORM: &[&str] = &[
    "kafka.properties",
    "kafka.consumer.properties",
    "kafka.producer.properties",
    "features.numeric",
];

/// Whether `keys` names a key of the schema, judged against the defaults, where every key
/// of a section is present, and [`FREE_FORM`].
fn check_override_path(defaults: &toml::Table, keys: &[String]) -> Result<(), String> {
    let mut table = defaults;
    for (i, key) in keys.iter().enumerate() {
        if i > 0 && i + 1 == keys.len() && FREE_FORM.contains(&keys[..i].join(".").as_str()) {
            return Ok(());
        }
        match table.get(key.as_str()) {
            Some(toml::Value::Table(inner)) if i + 1 < keys.len() => table = inner,
            Some(toml::Value::Table(_)) => {
                return Err(format!(
                    "{} is a section; name one of its keys",
                    keys.join(".")
                ));
            }
            Some(_) if i + 1 == keys.len() => return Ok(()),
            _ => {
                let section = if i == 0 {
                    "the configuration".to_owned()
                } else {
                    format!("[{}]", keys[..i].join("."))
                };
                let known: Vec<&str> = table.keys().map(String::as_str).collect();
                return Err(format!(
                    "unknown key {} ({section} has {})",
                    keys.join("."),
                    known.join(", ")
                ));
            }
        }
    }
    Err("names no key: use CTRFLOW__<SECTION>__<KEY>".to_owned())
}

/// Sets `keys` in `table` to `value`, creating sections on the way.
fn set_path(table: &mut toml::Table, keys: &[String], value: toml::Value) -> Result<(), String> {
    let Some((last, sections)) = keys.split_last() else {
        return Err("names no key".to_owned());
    };
    let mut table = table;
    for key in sections {
        let entry = table
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| format!("{key} is not a section"))?;
    }
    table.insert(last.clone(), value);
    Ok(())
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
    fn env_overrides_set_keys_and_parse_toml_values() {
        let env = [
            ("CTRFLOW__MODEL__L1", "0.5"),
            ("CTRFLOW__KAFKA__BROKERS", "10.0.0.1:9092"),
            ("CTRFLOW__kafka__properties__security.protocol", "SSL"),
            ("PATH", "/bin"),
        ];
        let config = PipelineConfig::parse_with_env("[model]\nl1 = 2.0\n", "t", env).unwrap();
        assert_eq!(config.model.l1, 0.5);
        assert_eq!(config.kafka.brokers, "10.0.0.1:9092");
        assert_eq!(
            config
                .kafka
                .properties
                .get("security.protocol")
                .map(String::as_str),
            Some("SSL")
        );
    }

    #[test]
    fn bad_env_overrides_name_their_variable_and_key() {
        let env = [
            ("CTRFLOW__MODEL__L1", "abc"),
            ("CTRFLOW__MODEL__LL2", "1"),
            ("CTRFLOW__MODEL__ALPHA", "-1"),
        ];
        let err = PipelineConfig::parse_with_env("", "t", env).unwrap_err();
        let ConfigError::Invalid { problems, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("CTRFLOW__MODEL__L1") && problems[0].contains("model.l1"));
        assert!(problems[2].contains("model.alpha"), "{problems:?}");
        assert!(
            problems[1].contains("CTRFLOW__MODEL__LL2")
                && problems[1].contains("unknown key model.ll2")
        );
        // Once the names and types are right, validation names the value's key.
        let err =
            PipelineConfig::parse_with_env("", "t", [("CTRFLOW__MODEL__ALPHA", "-1")]).unwrap_err();
        assert!(err.to_string().contains("model.alpha"), "{err}");
        assert!(err.to_string().contains("CTRFLOW__MODEL__ALPHA"), "{err}");
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
