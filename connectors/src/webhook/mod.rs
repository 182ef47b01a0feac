//! Webhooks: alerts POSTed as JSON (or a Slack-compatible `{"text": ...}`) to an HTTP(S)
//! endpoint, from a thread of their own, so that a slow or down endpoint never blocks the
//! dataflow.

mod config;
mod sink;

pub use config::{WebhookConfig, WebhookFormat};
pub use sink::{WebhookMessage, WebhookSink, WebhookStats, WebhookTotals};
