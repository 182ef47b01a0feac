//! ctrflow's integration tests: one binary, one module per area.

/// Fixtures: the binary, temp dirs, generated inputs.
mod util;

/// `ctrflow replay` end to end: learning, determinism, bad input, workers.
mod replay;

/// Drift alerts in `replay`: each generator drift kind raises its alert, a stationary
/// stream none; webhook delivery.
mod drift;

/// `replay --metrics-out` and `ctrflow report`, rendered by headless Chromium.
mod report;

/// Every file in `configs/` parses and validates.
mod configs;

/// Kafka fixtures shared by the broker tests.
#[cfg_attr(not(feature = "kafka-it"), allow(dead_code))]
mod kafka_util;

/// `ctrflow run` in-process against librdkafka's mock cluster, with injected faults.
mod kafka_mock;

/// Durable state: point-in-time entity features, kill -9 recovery.
mod state;
/// `ctrflow run`'s /metrics, /healthz and /readyz, in-process against the mock cluster.
mod telemetry;

/// `ctrflow run` against a real, separate broker (tests/run.sh starts it).
#[cfg(feature = "kafka-it")]
mod kafka;
