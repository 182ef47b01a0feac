//! The webhook sink: a delivery thread fed through a bounded queue.
//!
//! `send` never blocks: it hands the alert to the delivery thread's bounded queue, or,
//! when that is full (the endpoint is down and alerts pile up), keeps it in a backlog on
//! the caller's side that later calls move on; every such alert is counted. The thread
//! POSTs alerts one at a time, in order, retrying each with exponential backoff until it
//! is delivered, so an endpoint that comes back receives everything it missed. At
//! shutdown ([`WebhookSink::close`]) undelivered alerts get `flush_timeout_ms` more and
//! are then counted and logged as lost — never dropped silently.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::config::{WebhookConfig, WebhookFormat};

/// One alert, in both forms a webhook may want.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebhookMessage {
    /// The alert's JSON.
    pub json: String,
    /// One line for people (the Slack format's `text`).
    pub text: String,
}

/// What a webhook did so far.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Alerts accepted by the endpoint (2xx).
    pub delivered: AtomicU64,
    /// Attempts that failed (connection refused, timeout, non-2xx) and were retried.
    pub failed_attempts: AtomicU64,
    /// Alerts that found the queue full and waited in the backlog.
    pub backlogged: AtomicU64,
    /// Alerts given up at shutdown.
    pub undelivered: AtomicU64,
}

/// A snapshot of [`WebhookStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WebhookTotals {
    /// Alerts accepted by the endpoint.
    pub delivered: u64,
    /// Failed attempts, retried.
    pub failed_attempts: u64,
    /// Alerts that waited in the backlog.
    pub backlogged: u64,
    /// Alerts given up at shutdown.
    pub undelivered: u64,
}

impl WebhookStats {
    /// The counts now.
    pub fn totals(&self) -> WebhookTotals {
        WebhookTotals {
            delivered: self.delivered.load(Ordering::Relaxed),
            failed_attempts: self.failed_attempts.load(Ordering::Relaxed),
            backlogged: self.backlogged.load(Ordering::Relaxed),
            undelivered: self.undelivered.load(Ordering::Relaxed),
        }
    }
}

/// The HTTP client for `config`: its timeout, and its `ca_file` as the trusted roots.
fn agent(config: &WebhookConfig) -> ureq::Agent {
    let mut builder = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_millis(config.timeout_ms)))
        .http_status_as_error(false);
    match config.root_certs() {
        Ok(Some(certs)) => {
            let roots = ureq::tls::RootCerts::Specific(Arc::new(certs));
            builder = builder.tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build());
        }
        Ok(None) => {}
        // Validation reads the file first; if it went away since, deliveries fail and
        // are retried and counted like any other failure.
        Err(problem) => tracing::error!(url = %config.url, %problem, "Webhook CA file unusable."),
    }
    builder.build().into()
}

/// A running webhook; see the module docs.
#[derive(Debug)]
pub struct WebhookSink {
    url: String,
    sender: Option<SyncSender<WebhookMessage>>,
    backlog: Mutex<VecDeque<WebhookMessage>>,
    stats: Arc<WebhookStats>,
    closing: Arc<AtomicBool>,
    deadline_ms: Arc<AtomicU64>,
    flush_timeout: Duration,
    thread: Option<JoinHandle<()>>,
}

impl WebhookSink {
    /// Starts the delivery thread for `config` (validated).
    pub fn start(config: &WebhookConfig) -> Self {
        let (sender, receiver) = sync_channel(config.queue.max(1));
        let stats = Arc::new(WebhookStats::default());
        let closing = Arc::new(AtomicBool::new(false));
        let deadline_ms = Arc::new(AtomicU64::new(u64::MAX));
        let delivery = Delivery {
            config: config.clone(),
            header: config.header_value(),
            agent: agent(config),
            stats: Arc::clone(&stats),
            closing: Arc::clone(&closing),
            deadline_ms: Arc::clone(&deadline_ms),
        };
        let thread = std::thread::Builder::new()
            .name("webhook".into())
            .spawn(move || delivery.run(receiver))
            .ok();
        Self {
            url: config.url.clone(),
            sender: Some(sender),
            backlog: Mutex::new(VecDeque::new()),
            stats,
            closing,
            deadline_ms,
            flush_timeout: Duration::from_millis(config.flush_timeout_ms),
            thread,
        }
    }

    /// The endpoint.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Counters.
    pub fn stats(&self) -> &WebhookStats {
        &self.stats
    }

    /// Queues `message` for delivery; never blocks.
    pub fn send(&self, message: WebhookMessage) {
        let Ok(mut backlog) = self.backlog.lock() else {
            return;
        };
        backlog.push_back(message);
        self.drain(&mut backlog);
    }

    /// Moves what the backlog holds into the queue, as far as it has room.
    fn drain(&self, backlog: &mut VecDeque<WebhookMessage>) {
        let Some(sender) = &self.sender else { return };
        while let Some(m) = backlog.pop_front() {
            match sender.try_send(m) {
                Ok(()) => {}
                Err(TrySendError::Full(m)) => {
                    backlog.push_front(m);
                    self.stats.backlogged.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(url = %self.url, backlog = backlog.len(), "Webhook queue full; the alert waits in the backlog.");
                    return;
                }
                Err(TrySendError::Disconnected(_)) => {
                    backlog.clear();
                    return;
                }
            }
        }
    }

    /// Gives undelivered alerts `flush_timeout_ms` more, then stops the thread; alerts
    /// still undelivered are counted and logged. Returns the final counts.
    pub fn close(mut self) -> WebhookTotals {
        let started = Instant::now();
        // Push the backlog in as room frees up, within the timeout.
        loop {
            let empty = match self.backlog.lock() {
                Ok(mut backlog) => {
                    self.drain(&mut backlog);
                    backlog.is_empty()
                }
                Err(_) => true,
            };
            if empty || started.elapsed() >= self.flush_timeout {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let left = self.backlog.lock().map_or(0, |b| b.len()) as u64;
        self.stats.undelivered.fetch_add(left, Ordering::Relaxed);
        let remaining = self.flush_timeout.saturating_sub(started.elapsed());
        self.deadline_ms
            .store(remaining.as_millis() as u64, Ordering::SeqCst);
        self.closing.store(true, Ordering::SeqCst);
        self.sender = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let lost = self.stats.undelivered.load(Ordering::Relaxed);
        if lost > 0 {
            tracing::error!(url = %self.url, lost, "Webhook alerts not delivered before shutdown.");
        }
        self.stats.totals()
    }
}

impl Drop for WebhookSink {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::SeqCst);
        self.deadline_ms.store(0, Ordering::SeqCst);
    }
}

/// The delivery thread's state.
struct Delivery {
    config: WebhookConfig,
    header: Option<(String, String)>,
    agent: ureq::Agent,
    stats: Arc<WebhookStats>,
    closing: Arc<AtomicBool>,
    /// Once closing: how long from `close` the thread may still try, in ms.
    deadline_ms: Arc<AtomicU64>,
}

impl Delivery {
    fn run(self, receiver: Receiver<WebhookMessage>) {
        let mut closed_at = None;
        loop {
            let message = match receiver.recv_timeout(Duration::from_millis(100)) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut backoff = Duration::from_millis(self.config.backoff_initial_ms);
            loop {
                match self.post(&message) {
                    Ok(()) => {
                        self.stats.delivered.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Err(error) => {
                        self.stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(url = %self.config.url, %error, retry_in_ms = backoff.as_millis() as u64, "Webhook delivery failed; retrying.");
                    }
                }
                if self.closing.load(Ordering::SeqCst) {
                    let at = *closed_at.get_or_insert_with(Instant::now);
                    let allowed = Duration::from_millis(self.deadline_ms.load(Ordering::SeqCst));
                    if at.elapsed() + backoff > allowed {
                        // Give up: this one and everything queued behind it.
                        let queued = receiver.try_iter().count() as u64;
                        self.stats
                            .undelivered
                            .fetch_add(1 + queued, Ordering::Relaxed);
                        return;
                    }
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_millis(self.config.backoff_max_ms));
            }
        }
    }

    fn post(&self, message: &WebhookMessage) -> Result<(), String> {
        let body = match self.config.format {
            WebhookFormat::Json => message.json.clone(),
            WebhookFormat::Slack => serde_json::json!({ "text": message.text }).to_string(),
        };
        let mut request = self
            .agent
            .post(&self.config.url)
            .header("Content-Type", "application/json")
            .header("User-Agent", "ctrflow");
        if let Some((name, value)) = &self.header {
            request = request.header(name.as_str(), value.as_str());
        }
        match request.send(body.as_bytes()) {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(format!("HTTP status {}", response.status())),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;

    /// One received request: its headers (lowercased names) and body.
    type Received = (Vec<(String, String)>, String);

    /// Answers every POST on `listener` with 200 and reports it.
    fn serve(listener: TcpListener, seen: mpsc::Sender<Received>) {
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut headers = Vec::new();
                let mut line = String::new();
                let _ = reader.read_line(&mut line);
                loop {
                    line.clear();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.trim_end().split_once(':') {
                        headers.push((k.to_lowercase(), v.trim().to_owned()));
                    }
                }
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k == "content-length")
                    .map_or(0, |(_, v)| v.parse().unwrap());
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                let _ = seen.send((headers, String::from_utf8(body).unwrap()));
            }
        });
    }

    fn message(n: u32) -> WebhookMessage {
        WebhookMessage {
            json: format!("{{\"n\":{n}}}"),
            text: format!("alert {n}"),
        }
    }

    #[test]
    fn posts_json_with_the_secret_header_in_order() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::channel();
        serve(listener, tx);
        // SAFETY: set before any thread of this test reads it; the name is unique to it.
        unsafe { std::env::set_var("CTRFLOW_TEST_WEBHOOK_SECRET", "Bearer s3cret") };
        let config = WebhookConfig {
            header: Some("Authorization".into()),
            secret_env: Some("CTRFLOW_TEST_WEBHOOK_SECRET".into()),
            ..WebhookConfig::new(url)
        };
        let sink = WebhookSink::start(&config);
        for n in 0..3 {
            sink.send(message(n));
        }
        for n in 0..3 {
            let (headers, body) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
            assert_eq!(body, format!("{{\"n\":{n}}}"));
            assert!(
                headers
                    .iter()
                    .any(|(k, v)| k == "authorization" && v == "Bearer s3cret"),
                "{headers:?}"
            );
        }
        let totals = sink.close();
        assert_eq!(totals.delivered, 3);
        assert_eq!(totals.undelivered, 0);
    }

    /// Reads one HTTP request off `stream`: its body; `None` if the stream fails first
    /// (a TLS handshake the client refused).
    fn read_request(stream: impl Read) -> Option<String> {
        let mut reader = BufReader::new(stream);
        let mut len = 0;
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return None;
        }
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body).ok()?;
        String::from_utf8(body).ok()
    }

    #[test]
    fn posts_over_https_to_an_endpoint_trusted_through_ca_file() {
        use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
        // A self-signed certificate for 127.0.0.1: its own CA.
        let certified =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, certified.cert.pem()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    vec![CertificateDer::from(certified.cert.der().to_vec())],
                    PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()).into(),
                )
                .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://{}/hook", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                let Ok(tcp) = tcp else { return };
                let conn = rustls::ServerConnection::new(Arc::clone(&server)).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, tcp);
                // A handshake the client refused ends here (the untrusted case).
                let Some(body) = read_request(&mut tls) else {
                    continue;
                };
                let _ = tls.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                tls.conn.send_close_notify();
                let _ = tls.flush();
                let _ = tx.send(body);
            }
        });
        // Without the CA file the self-signed endpoint is not trusted: nothing delivered.
        let untrusted = WebhookSink::start(&WebhookConfig {
            flush_timeout_ms: 300,
            ..WebhookConfig::new(url.clone())
        });
        untrusted.send(message(1));
        assert!(rx.recv_timeout(Duration::from_millis(1500)).is_err());
        let totals = untrusted.close();
        assert_eq!((totals.delivered, totals.undelivered), (0, 1));
        // With it: one alert delivered over TLS, received and parsed.
        let config = WebhookConfig {
            ca_file: Some(ca_file),
            ..WebhookConfig::new(url)
        };
        let mut problems = Vec::new();
        config.validate("w", &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let sink = WebhookSink::start(&config);
        sink.send(message(2));
        let body = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(parsed["n"], 2);
        let totals = sink.close();
        assert_eq!((totals.delivered, totals.undelivered), (1, 0));
    }

    #[test]
    fn a_ca_file_that_is_not_pem_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate").unwrap();
        for ca in [path, dir.path().join("missing.pem")] {
            let mut problems = Vec::new();
            WebhookConfig {
                ca_file: Some(ca),
                ..WebhookConfig::new("https://x")
            }
            .validate("drift.webhooks[0]", &mut problems);
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(
                problems[0].starts_with("drift.webhooks[0].ca_file"),
                "{problems:?}"
            );
        }
    }

    #[test]
    fn slack_format_posts_text() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::channel();
        serve(listener, tx);
        let config = WebhookConfig {
            format: WebhookFormat::Slack,
            ..WebhookConfig::new(url)
        };
        let sink = WebhookSink::start(&config);
        sink.send(message(7));
        let (_, body) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(body, r#"{"text":"alert 7"}"#);
        sink.close();
    }

    /// A free port, left closed: nothing listens on it (for now).
    fn closed_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn a_down_endpoint_gets_its_alerts_when_it_comes_up() {
        let port = closed_port();
        let config = WebhookConfig {
            backoff_initial_ms: 50,
            backoff_max_ms: 200,
            queue: 1,
            ..WebhookConfig::new(format!("http://127.0.0.1:{port}/hook"))
        };
        let sink = WebhookSink::start(&config);
        let started = Instant::now();
        for n in 0..4 {
            sink.send(message(n));
        }
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "send never blocks"
        );
        std::thread::sleep(Duration::from_millis(500));
        assert!(sink.stats().failed_attempts.load(Ordering::Relaxed) > 0);
        assert_eq!(sink.stats().delivered.load(Ordering::Relaxed), 0);
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let (tx, rx) = mpsc::channel();
        serve(listener, tx);
        // The first one is retried by the thread; the others wait in the queue and the
        // backlog, which `close` pushes on.
        let totals = sink.close();
        let bodies: Vec<String> = (0..4)
            .map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap().1)
            .collect();
        assert_eq!(
            bodies,
            (0..4).map(|n| format!("{{\"n\":{n}}}")).collect::<Vec<_>>()
        );
        assert_eq!(totals.delivered, 4);
        assert!(totals.backlogged > 0);
        assert_eq!(totals.undelivered, 0);
    }

    #[test]
    fn an_endpoint_that_never_comes_up_is_counted_at_shutdown() {
        let port = closed_port();
        let config = WebhookConfig {
            backoff_initial_ms: 20,
            backoff_max_ms: 50,
            flush_timeout_ms: 300,
            ..WebhookConfig::new(format!("http://127.0.0.1:{port}/hook"))
        };
        let sink = WebhookSink::start(&config);
        sink.send(message(1));
        sink.send(message(2));
        let totals = sink.close();
        assert_eq!(totals.delivered, 0);
        assert_eq!(totals.undelivered, 2);
    }
}
