//! Settings of one webhook (`[[drift.webhooks]]`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use ureq::tls::{Certificate, PemItem, parse_pem};

/// What is POSTed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// The alert's JSON, as in the contract.
    #[default]
    Json,
    /// `{"text": "<one line for people>"}`: Slack's (and Mattermost's, Teams') incoming
    /// webhook format.
    Slack,
}

/// One webhook endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL to POST to.
    pub url: String,
    /// `json` (the alert) or `slack` (`{"text": ...}`).
    #[serde(default)]
    pub format: WebhookFormat,
    /// A request taking longer than this fails (and is retried).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// First wait before a retry; doubles each failed attempt...
    #[serde(default = "default_backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    /// ...up to this. An alert is retried until delivered or until shutdown gives up.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Alerts waiting for the delivery thread; more wait in a backlog on the caller's side.
    #[serde(default = "default_queue")]
    pub queue: usize,
    /// At shutdown, how long undelivered alerts may still be tried.
    #[serde(default = "default_flush_timeout_ms")]
    pub flush_timeout_ms: u64,
    /// A header to send with every request (e.g. `Authorization`), whose value is read
    /// from the environment variable `secret_env`; both or neither.
    #[serde(default)]
    pub header: Option<String>,
    /// The environment variable holding the header's value (never the value itself, so
    /// it stays out of config files).
    #[serde(default)]
    pub secret_env: Option<String>,
    /// A PEM file of CA certificates to trust for `https://`, instead of the built-in
    /// Mozilla roots: a private CA, or a self-signed endpoint.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

const fn default_timeout_ms() -> u64 {
    5000
}
const fn default_backoff_initial_ms() -> u64 {
    500
}
const fn default_backoff_max_ms() -> u64 {
    60_000
}
const fn default_queue() -> usize {
    1000
}
const fn default_flush_timeout_ms() -> u64 {
    10_000
}

impl WebhookConfig {
    /// A webhook to `url` with default settings.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            format: WebhookFormat::default(),
            timeout_ms: default_timeout_ms(),
            backoff_initial_ms: default_backoff_initial_ms(),
            backoff_max_ms: default_backoff_max_ms(),
            queue: default_queue(),
            flush_timeout_ms: default_flush_timeout_ms(),
            header: None,
            secret_env: None,
            ca_file: None,
        }
    }

    /// Every problem with these settings; `key` is where they live (`drift.webhooks[0]`).
    /// Reads the secret's environment variable, so a missing secret fails at start.
    pub fn validate(&self, key: &str, problems: &mut Vec<String>) {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            problems.push(format!(
                "{key}.url must start with http:// or https://, got {:?}",
                self.url
            ));
        }
        if self.timeout_ms == 0 {
            problems.push(format!("{key}.timeout_ms must be > 0, got 0"));
        }
        if self.backoff_initial_ms == 0 || self.backoff_max_ms < self.backoff_initial_ms {
            problems.push(format!(
                "{key}.backoff_initial_ms ({}) must be > 0 and at most {key}.backoff_max_ms ({})",
                self.backoff_initial_ms, self.backoff_max_ms
            ));
        }
        if self.queue == 0 {
            problems.push(format!("{key}.queue must be at least 1, got 0"));
        }
        match (&self.header, &self.secret_env) {
            (Some(_), None) | (None, Some(_)) => problems.push(format!(
                "{key}.header and {key}.secret_env go together: set both (the header's value is read from that environment variable) or neither"
            )),
            (Some(_), Some(var)) if std::env::var_os(var).is_none() => problems.push(format!(
                "{key}.secret_env names the environment variable {var}, which is not set: export it before starting"
            )),
            _ => {}
        }
        if let Err(problem) = self.root_certs() {
            problems.push(format!("{key}.ca_file: {problem}"));
        }
    }

    /// The certificates of `ca_file`, when set.
    pub fn root_certs(&self) -> Result<Option<Vec<Certificate<'static>>>, String> {
        let Some(path) = &self.ca_file else {
            return Ok(None);
        };
        let pem =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut certs = Vec::new();
        for item in parse_pem(&pem) {
            match item {
                Ok(PemItem::Certificate(cert)) => certs.push(cert),
                Ok(_) => {}
                Err(e) => return Err(format!("{} is not valid PEM: {e}", path.display())),
            }
        }
        if certs.is_empty() {
            return Err(format!(
                "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ));
        }
        Ok(Some(certs))
    }

    /// The header to send, with its value read from the environment.
    pub fn header_value(&self) -> Option<(String, String)> {
        let name = self.header.clone()?;
        let value = std::env::var(self.secret_env.as_ref()?).ok()?;
        Some((name, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_problems() {
        let mut p = Vec::new();
        WebhookConfig::new("https://hooks.example.com/x").validate("w", &mut p);
        assert!(p.is_empty(), "{p:?}");
        let bad = WebhookConfig {
            header: Some("Authorization".into()),
            secret_env: Some("CTRFLOW_TEST_SURELY_UNSET_VAR".into()),
            queue: 0,
            ..WebhookConfig::new("ftp://x")
        };
        bad.validate("drift.webhooks[0]", &mut p);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p.iter().any(|m| m.contains("drift.webhooks[0].url")));
        assert!(
            p.iter()
                .any(|m| m.contains("CTRFLOW_TEST_SURELY_UNSET_VAR"))
        );
        let toml_err = serde_json::from_str::<WebhookConfig>(r#"{"url":"http://x","retry":1}"#);
        assert!(toml_err.is_err(), "unknown keys are refused");
    }
}
