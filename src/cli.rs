//! The `teachback` command line. With no subcommand it serves.

use std::io::Write;
use std::pin::pin;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use futures::StreamExt;

use crate::app::{self, App};
use crate::config::{Config, LogFormat};
use crate::db::{ConnectOptions, Db};
use crate::store::{EventStore, SqlBackend, SubscriptionMessage};

#[derive(Parser, Debug)]
#[command(name = "teachback", version, about = "TeachBack: learn by teaching")]
pub struct Cli {
    #[command(flatten)]
    pub config: Config,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the API (the default).
    Serve,
    /// Read the event log.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// Load-test live lectures: N learners stream real-time audio; report ack latency and loss.
    Loadgen(crate::loadgen::LoadgenArgs),
}

#[derive(Subcommand, Debug)]
pub enum EventsCommand {
    /// Print events as JSON lines, in global order.
    Tail {
        /// Start at this position (inclusive). Default: the beginning of the log.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Keep printing new events as they are committed.
        #[arg(long)]
        follow: bool,
        /// Only events of streams whose name starts with this.
        #[arg(long)]
        stream_prefix: Option<String>,
    },
}

/// Runs the CLI: parses arguments, sets up logging, dispatches.
pub async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(&cli.config);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(&cli.config).await,
        Command::Events {
            command:
                EventsCommand::Tail {
                    from,
                    follow,
                    stream_prefix,
                },
        } => tail(&cli.config, from, follow, stream_prefix).await,
        Command::Loadgen(args) => crate::loadgen::run(args).await,
    }
}

async fn serve(config: &Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("binding {}", config.addr))?;
    App::build(config)
        .await?
        .run(listener, app::shutdown_signal())
        .await
}

async fn tail(
    config: &Config,
    from: u64,
    follow: bool,
    prefix: Option<String>,
) -> anyhow::Result<()> {
    // Read-only: no migrations. A database the server never opened has no log to show.
    let db = Db::connect(&config.database_url(), &ConnectOptions::default()).await?;
    db.ping_log()
        .await
        .context("no event log here: start the server once, or check TEACHBACK_DATABASE_URL")?;
    let store = EventStore::start(Arc::new(SqlBackend::new(db)), config.poll_interval()).await?;
    // `--from` is inclusive; subscriptions start *after* a position.
    let mut events = pin!(store.subscribe_all(from.saturating_sub(1), prefix));
    let stdout = std::io::stdout();
    while let Some(message) = events.next().await {
        match message? {
            SubscriptionMessage::Event(event) => {
                let mut out = stdout.lock();
                let line = serde_json::to_string(&event)?;
                if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
                    // A closed pipe (`| head`) is a normal way to stop.
                    if e.kind() == std::io::ErrorKind::BrokenPipe {
                        return Ok(());
                    }
                    return Err(e.into());
                }
            }
            SubscriptionMessage::CaughtUp { .. } if !follow => return Ok(()),
            SubscriptionMessage::CaughtUp { .. } => {}
        }
    }
    Ok(())
}

/// Logs go to stderr, so `events tail` output on stdout stays clean JSON lines.
fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match config.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
