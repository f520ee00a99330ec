//! Optional error reporting to Sentry (`SENTRY_DSN`; cargo feature `sentry`, on by default).
//!
//! Error-level log events become Sentry events, with the warnings and information logged before
//! them as breadcrumbs; panics are reported too. Nothing personal is sent (`send_default_pii` is
//! off): the log events carry ids, never tokens or audio. Without a DSN nothing is set up.

use secrecy::ExposeSecret;

use crate::config::Config;

/// Keeps the reporting client alive; dropping it sends what is queued (waiting at most 2 s).
pub struct Reporting {
    #[cfg(feature = "sentry")]
    guard: Option<sentry::ClientInitGuard>,
}

/// Starts the Sentry client when a DSN is configured. Call before the log subscriber is
/// installed, and keep the result until the program ends.
pub fn init(config: &Config) -> anyhow::Result<Reporting> {
    let Some(dsn) = &config.sentry_dsn else {
        return Ok(Reporting {
            #[cfg(feature = "sentry")]
            guard: None,
        });
    };
    #[cfg(feature = "sentry")]
    {
        let dsn: sentry::types::Dsn = dsn
            .expose_secret()
            .parse()
            .map_err(|e| anyhow::anyhow!("SENTRY_DSN is not a valid Sentry DSN: {e}"))?;
        let guard = sentry::init(sentry::ClientOptions {
            dsn: Some(dsn),
            release: Some(concat!("teachback@", env!("CARGO_PKG_VERSION")).into()),
            environment: config.sentry_environment.clone().map(Into::into),
            send_default_pii: false,
            attach_stacktrace: true,
            shutdown_timeout: std::time::Duration::from_secs(2),
            ..Default::default()
        });
        Ok(Reporting { guard: Some(guard) })
    }
    #[cfg(not(feature = "sentry"))]
    {
        let _ = dsn.expose_secret();
        anyhow::bail!(
            "SENTRY_DSN is set, but this build of teachback has no Sentry support \
             (build it with the `sentry` feature, which is on by default)"
        )
    }
}

/// The layer that turns log events into Sentry events and breadcrumbs; `None` when reporting is
/// off.
#[cfg(feature = "sentry")]
pub fn layer<S>(reporting: &Reporting) -> Option<impl tracing_subscriber::Layer<S>>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    reporting
        .guard
        .as_ref()
        .map(|_| sentry::integrations::tracing::layer())
}

/// Sends one test event and waits (at most `timeout`) for it to be delivered: a way to check
/// the configuration. Returns the event's id.
#[cfg(feature = "sentry")]
pub fn send_test_event(timeout: std::time::Duration) -> anyhow::Result<String> {
    let client = sentry::Hub::current()
        .client()
        .filter(|c| c.is_enabled())
        .ok_or_else(|| anyhow::anyhow!("SENTRY_DSN is not set: there is nowhere to report to"))?;
    let id = sentry::capture_message(
        "TeachBack test event: error reporting works",
        sentry::Level::Info,
    );
    if !client.flush(Some(timeout)) {
        anyhow::bail!("the test event was not delivered within {timeout:?}");
    }
    Ok(id.to_string())
}

#[cfg(not(feature = "sentry"))]
pub fn send_test_event(_timeout: std::time::Duration) -> anyhow::Result<String> {
    anyhow::bail!("this build of teachback has no Sentry support (the `sentry` feature)")
}
