//! Where alerts go: the log, always, and every configured webhook
//! (`ctrflow_connectors::webhook`), each on its own delivery thread.

use ctrflow_connectors::webhook::{WebhookMessage, WebhookSink};
use ctrflow_dataflows::{Alert, AlertState, Severity};

use super::DriftConfig;

/// The alert sinks of a run; shared by the workers (only the detecting one sends).
#[derive(Debug, Default)]
pub struct AlertSinks {
    webhooks: Vec<WebhookSink>,
}

/// What the webhooks did, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SinkReport {
    /// Alerts accepted by an endpoint.
    pub delivered: u64,
    /// Failed attempts, retried.
    pub failed_attempts: u64,
    /// Alerts given up at shutdown.
    pub undelivered: u64,
}

impl AlertSinks {
    /// Starts a delivery thread per webhook of `config` (validated).
    pub fn start(config: &DriftConfig) -> Self {
        Self {
            webhooks: config.webhooks.iter().map(WebhookSink::start).collect(),
        }
    }

    /// Logs `alert` and queues it for every webhook; never blocks.
    pub fn send(&self, alert: &Alert) {
        log(alert);
        if self.webhooks.is_empty() {
            return;
        }
        let message = WebhookMessage {
            json: serde_json::to_string(alert).unwrap_or_default(),
            text: text(alert),
        };
        for w in &self.webhooks {
            w.send(message.clone());
        }
    }

    /// Lets the webhooks deliver what they hold (each within its `flush_timeout_ms`),
    /// stops them and sums what they did.
    pub fn close(self) -> SinkReport {
        let mut report = SinkReport::default();
        for w in self.webhooks {
            let totals = w.close();
            report.delivered += totals.delivered;
            report.failed_attempts += totals.failed_attempts;
            report.undelivered += totals.undelivered;
        }
        report
    }
}

/// One line for people: what Slack shows.
pub fn text(alert: &Alert) -> String {
    let state = match alert.state {
        AlertState::Firing => "FIRING",
        AlertState::Resolved => "resolved",
    };
    let severity = match alert.severity {
        Severity::Warning => "warning",
        Severity::Critical => "critical",
    };
    let kind = kind_name(alert);
    format!(
        "ctrflow {kind} {state} ({severity}, {} on {}): {}",
        alert.detector, alert.metric, alert.message
    )
}

/// The alert's kind as the contract spells it (`concept_drift`, ...).
pub fn kind_name(alert: &Alert) -> String {
    serde_json::to_value(alert.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The log sink: a structured line per alert.
pub fn log(alert: &Alert) {
    let kind = serde_json::to_value(alert.kind).unwrap_or_default();
    match alert.state {
        AlertState::Firing => tracing::warn!(
            kind = %kind,
            severity = ?alert.severity,
            detector = %alert.detector,
            metric = %alert.metric,
            value = alert.value,
            threshold = alert.threshold,
            ts = alert.ts,
            "{}", alert.message
        ),
        AlertState::Resolved => tracing::info!(
            kind = %kind,
            detector = %alert.detector,
            metric = %alert.metric,
            value = alert.value,
            ts = alert.ts,
            "{}", alert.message
        ),
    }
}
