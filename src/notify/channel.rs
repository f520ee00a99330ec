//! Delivery channels. The built-in one is a generic webhook; a push (FCM-style HTTP) or SMS
//! provider is another implementation of [`Channel`], registered under its own name.

use std::time::Duration;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha2::Sha256;
use uuid::Uuid;

/// One nudge on its way out.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outgoing {
    pub id: Uuid,
    /// The idempotency key (`{user}:{kind}:{period}`): a receiver that already accepted it should
    /// answer 2xx again and do nothing.
    pub key: String,
    pub user_id: Uuid,
    pub kind: String,
    /// 1 for the first try.
    pub attempt: u32,
    pub language: String,
    pub title: String,
    pub body: String,
    /// The tracked deep link into the web client (`{public URL}/n/{id}`).
    pub link: String,
}

/// Why a delivery failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct DeliveryError {
    /// `timeout`, `connect`, `http_5xx`, `http_4xx`, `http_429`, `io`.
    pub code: String,
    pub message: String,
    /// Whether trying again may help (a 4xx other than 401, 403, 404, 408 and 429 will not).
    pub retryable: bool,
}

/// A way of reaching learners.
#[async_trait]
pub trait Channel: Send + Sync + 'static {
    /// The name preferences select it by (`webhook`).
    fn name(&self) -> &'static str;
    /// Hands the nudge over. `Ok(status)`: the channel accepted it.
    async fn send(&self, nudge: &Outgoing) -> Result<u16, DeliveryError>;
}

/// Header carrying the signature: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`.
pub const SIGNATURE_HEADER: &str = "x-teachback-signature";
/// Header carrying the idempotency key.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// POSTs each nudge as JSON to one URL, signed with a shared secret.
pub struct Webhook {
    url: String,
    secret: SecretString,
    http: reqwest::Client,
}

impl Webhook {
    pub fn new(url: String, secret: SecretString, timeout: Duration) -> anyhow::Result<Webhook> {
        anyhow::ensure!(
            url.starts_with("http://") || url.starts_with("https://"),
            "TEACHBACK_NOTIFY_WEBHOOK_URL must be an http:// or https:// URL"
        );
        anyhow::ensure!(
            secret.expose_secret().len() >= 32,
            "TEACHBACK_NOTIFY_WEBHOOK_SECRET must have at least 32 characters"
        );
        let http = reqwest::Client::builder()
            // A redirect would turn the POST into a GET and carry the signature elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5).min(timeout))
            .timeout(timeout)
            .build()?;
        Ok(Webhook { url, secret, http })
    }
}

/// The signature header's value for `body` sent at `unix_seconds`.
pub fn sign(secret: &[u8], unix_seconds: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(unix_seconds.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={unix_seconds},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

#[async_trait]
impl Channel for Webhook {
    fn name(&self) -> &'static str {
        "webhook"
    }

    async fn send(&self, nudge: &Outgoing) -> Result<u16, DeliveryError> {
        let body = serde_json::to_vec(nudge).expect("a nudge serialises");
        let signature = sign(
            self.secret.expose_secret().as_bytes(),
            jiff::Timestamp::now().as_second(),
            &body,
        );
        let response = self
            .http
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .header(IDEMPOTENCY_HEADER, &nudge.key)
            .header("x-teachback-notification", nudge.id.to_string())
            .body(body)
            .send()
            .await
            .map_err(|e| {
                let code = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connect"
                } else {
                    "io"
                };
                DeliveryError {
                    code: code.into(),
                    // Without the URL: it may carry a token of the receiver's.
                    message: format!("{}", e.without_url()),
                    retryable: true,
                }
            })?;
        let status = response.status();
        if status.is_success() {
            return Ok(status.as_u16());
        }
        // 401, 403 and 404 are more often a gateway misconfigured for a while than a nudge
        // that can never be delivered: retried like 408, 429 and 5xx, so that fixing the
        // gateway does not leave a parked backlog. Other 4xx (400, 410, 422, …) are final.
        let retryable =
            status.is_server_error() || matches!(status.as_u16(), 401 | 403 | 404 | 408 | 429);
        Err(DeliveryError {
            code: match status.as_u16() {
                429 => "http_429".into(),
                s if s >= 500 => "http_5xx".into(),
                _ => "http_4xx".into(),
            },
            message: format!("the receiver answered {status}"),
            retryable,
        })
    }
}
