//! The `teachback` command line. With no subcommand it serves.

use std::io::Write;
use std::pin::pin;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use futures::StreamExt;

use crate::app::{self, App};
use crate::config::{Config, LogFormat};
use crate::db::{ConnectOptions, Db};
use crate::live::hub::Hub;
use crate::live::protocol::ServerMessage;
use crate::pipeline::Pipeline;
use crate::provider::fake::{FakeOpenAi, FakeOptions};
use crate::store::{EventStore, SubscriptionMessage};

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
    /// Projection operations: rebuild from the log, show where each one is.
    Projections {
        #[command(subcommand)]
        command: ProjectionsCommand,
    },
    /// Write the event log as JSON Lines (the stored bytes; same ids, versions and positions),
    /// filtered by stream prefix, event type and time.
    Export {
        /// The file to write (default: standard output).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Only events of streams whose name starts with this (`user-`, `lecture-01…`).
        #[arg(long)]
        stream_prefix: Option<String>,
        /// Only events of this type (repeat for several: `--type LectureGraded --type …`).
        #[arg(long = "type")]
        types: Vec<String>,
        /// Only events recorded at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<jiff::Timestamp>,
        /// Only events recorded before this time (RFC 3339).
        #[arg(long)]
        until: Option<jiff::Timestamp>,
        /// Leave out the learners' keys (written after the events by default, so an import
        /// can read the personal fields; keep such a file as safe as the database).
        #[arg(long)]
        without_keys: bool,
        /// Print a JSON summary (and no progress bar).
        #[arg(long)]
        json: bool,
    },
    /// Read an export into an empty store (migrating a new database first), in one
    /// transaction. Moves a deployment between SQLite and PostgreSQL; the server rebuilds its
    /// read models from the imported log when it starts.
    Import {
        /// The JSON Lines file `teachback export` wrote (`-`: standard input).
        file: std::path::PathBuf,
        /// Print a JSON summary (and no progress bar).
        #[arg(long)]
        json: bool,
    },
    /// Audit tools over the log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Replay a lecture as it happened: its frames (segments, transcripts, feedback, the grade)
    /// with their original timing, printed or served to WebSocket observers as a live watch.
    Replay {
        /// The lecture's id.
        lecture: uuid::Uuid,
        /// Play this many times faster than it happened.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Do not wait between frames.
        #[arg(long)]
        instant: bool,
        /// Print each frame as JSON (`{"atMs": …, "frame": …}`), not as a line of text.
        #[arg(long)]
        json: bool,
        /// Serve the replay at `ws://ADDR/api/v1/lectures/<id>/watch` to every observer that
        /// connects (each from the start) until Ctrl-C, instead of printing it.
        #[arg(long)]
        serve: Option<std::net::SocketAddr>,
    },
    /// Learners' data: erasure.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Lecture audio: retention.
    Audio {
        #[command(subcommand)]
        command: AudioCommand,
    },
    /// Load-test live lectures: N learners stream real-time audio; report ack latency and loss.
    Loadgen(crate::loadgen::LoadgenArgs),
    /// Grade a finished lecture again with the current providers (the earlier grades stay in
    /// the log); prints the feedback as it streams.
    Regrade {
        /// The lecture's id.
        lecture: uuid::Uuid,
        /// Why (kept in the log).
        #[arg(long)]
        reason: Option<String>,
        /// Print every frame (grading, feedback deltas, the grade) as a JSON line instead.
        #[arg(long)]
        json: bool,
    },
    /// Speak a WAV file into a live lecture on a server; print the live transcript and grade.
    Speak(crate::speak::SpeakArgs),
    /// Send a test event to Sentry (`SENTRY_DSN`) and wait until it is delivered.
    SentryTest,
    /// Run the OpenAI-compatible fake provider (for trying TeachBack and for benchmarks).
    FakeOpenai {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9100")]
        listen: std::net::SocketAddr,
        /// Delay before every answer (a provider's own time), in ms.
        #[arg(long, default_value_t = 0)]
        first_byte_ms: u64,
        /// Delay between streamed chunks, in ms.
        #[arg(long, default_value_t = 10)]
        chunk_ms: u64,
        /// What the transcription endpoint answers.
        #[arg(long)]
        stt_text: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ProjectionsCommand {
    /// Rebuild projections from the whole log into fresh tables and swap them in. A running
    /// server keeps serving meanwhile and carries on from the rebuilt position.
    Rebuild {
        /// The projection's base name (`users`, `topics`, `lectures`, `learning`, `notifications`). Default: all.
        name: Option<String>,
        /// Rebuild even though the database holds another version (or time zone) of the
        /// projection, which a running server may be using: its tables are taken over.
        #[arg(long)]
        force: bool,
        /// Print a JSON report instead of a progress bar.
        #[arg(long)]
        json: bool,
    },
    /// Show each projection's position and how far it is behind the log.
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Everything a learner did and everything done to their data, in log order: their own
    /// events, events they acted in, events naming them, and their lectures' and nudges'
    /// events (by them, someone else, or the system).
    Trail {
        /// The learner's id.
        #[arg(long)]
        user: uuid::Uuid,
        /// One JSON object a line (and no progress bar).
        #[arg(long)]
        json: bool,
    },
    /// Check the hash chain over the stored log: recompute every event's hash from its stored
    /// columns and the event before it, and report the first link that does not hold. Exits 0
    /// when the chain is intact (printing its head, to record elsewhere), 1 when it is broken.
    Verify {
        /// Print one JSON object (and no progress bar).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum UsersCommand {
    /// Erase a learner: destroy their key (their nickname, transcripts and feedback in the log
    /// can no longer be read), delete their audio, append `UserErased`; the server's read models
    /// then drop their rows and the rankings are recomputed.
    Erase {
        /// The learner's id.
        user: uuid::Uuid,
        /// Print a JSON summary (and no progress bar).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum AudioCommand {
    /// Delete the audio of segments stored more than `--days` days ago (recorded as
    /// `AudioDeleted` per lecture; transcripts and grades stay).
    Expire {
        /// Keep audio this many days (default: `TEACHBACK_AUDIO_RETENTION_DAYS`).
        #[arg(long)]
        days: Option<u32>,
        /// Print a JSON summary (and no progress bar).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum EventsCommand {
    /// Print events as JSON lines, in global order.
    Tail {
        /// Start at this position (inclusive). Default: the beginning of the log. With KurrentDB,
        /// whose positions are byte offsets, it must be an event's position (or 0), and printing
        /// starts after that event.
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
    // Before anything sets up TLS (a no-op without the `kurrentdb` feature).
    crate::store::install_crypto_provider();
    let cli = Cli::parse();
    let reporting = crate::error_reporting::init(&cli.config)?;
    init_tracing(&cli.config, &reporting);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(&cli.config).await,
        Command::SentryTest => {
            let id = crate::error_reporting::send_test_event(std::time::Duration::from_secs(10))?;
            println!("sent test event {id}");
            Ok(())
        }
        Command::Events {
            command:
                EventsCommand::Tail {
                    from,
                    follow,
                    stream_prefix,
                },
        } => tail(&cli.config, from, follow, stream_prefix).await,
        Command::Projections { command } => projections(&cli.config, command).await,
        Command::Export {
            out,
            stream_prefix,
            types,
            since,
            until,
            without_keys,
            json,
        } => {
            let filter = crate::store::archive::Filter {
                stream_prefix,
                types,
                since,
                until,
                without_keys,
            };
            export(&cli.config, &filter, out, json).await
        }
        Command::Import { file, json } => import(&cli.config, &file, json).await,
        Command::Audit {
            command: AuditCommand::Trail { user, json },
        } => audit_trail(&cli.config, user, json).await,
        Command::Audit {
            command: AuditCommand::Verify { json },
        } => audit_verify(&cli.config, json).await,
        Command::Replay {
            lecture,
            speed,
            instant,
            json,
            serve,
        } => replay(&cli.config, lecture, speed, instant, json, serve).await,
        Command::Users {
            command: UsersCommand::Erase { user, json },
        } => erase_user(&cli.config, user, json).await,
        Command::Audio {
            command: AudioCommand::Expire { days, json },
        } => expire_audio(&cli.config, days, json).await,
        Command::Loadgen(args) => crate::loadgen::run(args).await,
        Command::Regrade {
            lecture,
            reason,
            json,
        } => regrade(&cli.config, lecture, reason, json).await,
        Command::Speak(args) => crate::speak::run(args).await,
        Command::FakeOpenai {
            listen,
            first_byte_ms,
            chunk_ms,
            stt_text,
        } => {
            let defaults = FakeOptions::default();
            let fake = FakeOpenAi::start_on(
                listen,
                FakeOptions {
                    first_byte_delay: std::time::Duration::from_millis(first_byte_ms),
                    chunk_delay: std::time::Duration::from_millis(chunk_ms),
                    stt_text: stt_text.unwrap_or(defaults.stt_text.clone()),
                    ..defaults
                },
            )
            .await
            .with_context(|| format!("binding {listen}"))?;
            eprintln!("fake OpenAI-compatible provider at {}", fake.base_url());
            fake.serve_forever().await;
            Ok(())
        }
    }
}

/// Opens the configured database and its event log, for commands run beside a server. No
/// migrations: the server migrates, and a command never changes a schema a server is using.
async fn open_log(config: &Config) -> anyhow::Result<(Db, EventStore)> {
    let db = Db::connect(&config.database_url(), &ConnectOptions::default()).await?;
    db.ping_log()
        .await
        .context("no event log here: start the server once, or check TEACHBACK_DATABASE_URL")?;
    let store = EventStore::start(app::event_backend(config, &db)?, config.poll_interval())
        .await
        .context("starting the event store")?;
    Ok((db, store))
}

async fn projections(config: &Config, command: ProjectionsCommand) -> anyhow::Result<()> {
    let (db, store) = open_log(config).await?;
    let all = app::projectors(&config.tz()?);
    match command {
        ProjectionsCommand::Status { json } => {
            let list: Vec<_> = all.iter().map(|p| &**p).collect();
            let (head, standings) = crate::projection::ops::status(&db, &store, &list).await?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "head": head, "projections": standings })
                );
            } else {
                println!("log head: {head}");
                println!(
                    "{:<28} {:>12} {:>10} {:>10}",
                    "projection", "position", "lag", "lag (s)"
                );
                for s in standings {
                    println!(
                        "{:<28} {:>12} {:>10} {:>10.1}",
                        s.name, s.position, s.lag, s.lag_seconds
                    );
                }
            }
        }
        ProjectionsCommand::Rebuild { name, json, force } => {
            let chosen: Vec<_> = all
                .iter()
                .filter(|p| {
                    name.as_deref()
                        .is_none_or(|n| crate::projection::base_name(p.name()) == n)
                })
                .collect();
            if chosen.is_empty() {
                let names: Vec<_> = all
                    .iter()
                    .map(|p| crate::projection::base_name(p.name()))
                    .collect();
                anyhow::bail!(
                    "no projection called `{}`; there are: {}",
                    name.unwrap_or_default(),
                    names.join(", ")
                );
            }
            for projector in &chosen {
                let others = crate::projection::ops::other_versions(&db, &***projector).await?;
                if !others.is_empty() && !force {
                    anyhow::bail!(
                        "the database holds {} while this command would rebuild {}: check \
                         TEACHBACK_TIME_ZONE and the server's version, or pass --force to take \
                         the tables over",
                        others.join(", "),
                        projector.name()
                    );
                }
            }
            let bar = if json {
                indicatif::ProgressBar::hidden()
            } else {
                indicatif::ProgressBar::new(0).with_style(
                    indicatif::ProgressStyle::with_template(
                        "{msg} [{bar:30}] {pos}/{len} ({per_sec}, {eta})",
                    )?
                    .progress_chars("=> "),
                )
            };
            let names: Vec<&str> = chosen.iter().map(|p| p.name()).collect();
            bar.set_message(names.join(", "));
            let list: Vec<&dyn crate::projection::Projector> =
                chosen.iter().map(|p| &***p).collect();
            let rebuilt = crate::projection::ops::rebuild_all(&db, &store, &list, &|p| {
                bar.set_length(p.head);
                bar.set_position(p.position);
            })
            .await?;
            bar.finish_and_clear();
            let mut reports = Vec::new();
            for report in rebuilt {
                let rate = report.events as f64 / report.elapsed.as_secs_f64().max(1e-9);
                if !json {
                    println!(
                        "{}: rebuilt from {} events up to position {} in {:.2} s ({:.0} events/s)",
                        report.name,
                        report.events,
                        report.position,
                        report.elapsed.as_secs_f64(),
                        rate
                    );
                }
                reports.push(serde_json::json!({
                    "name": report.name,
                    "events": report.events,
                    "position": report.position,
                    "seconds": report.elapsed.as_secs_f64(),
                    "eventsPerSecond": rate,
                }));
            }
            if json {
                println!("{}", serde_json::Value::Array(reports));
            }
        }
    }
    db.close().await;
    Ok(())
}

async fn audit_trail(config: &Config, user: uuid::Uuid, json: bool) -> anyhow::Result<()> {
    let (db, store) = open_log(config).await?;
    let bar = progress_bar(json, "reading the log", 0)?;
    let entries = crate::audit::trail(&store, user, &|at, head| {
        bar.set_length(head);
        bar.set_position(at);
    })
    .await?;
    bar.finish_and_clear();
    db.close().await;
    let mut out = std::io::stdout().lock();
    for entry in &entries {
        if json {
            writeln!(out, "{}", serde_json::to_string(entry)?)?;
        } else {
            writeln!(
                out,
                "{:>10}  {}  {:<30} {:<12} {}",
                entry.position, entry.recorded_at, entry.event_type, entry.by, entry.stream
            )?;
        }
    }
    if !json {
        eprintln!("{} events concern learner {user}", entries.len());
    }
    Ok(())
}

async fn audit_verify(config: &Config, json: bool) -> anyhow::Result<()> {
    // Read-only and without a writer: a store would hash a tail it found without hashes, and
    // this command must report what is stored, not repair it.
    let db = Db::connect(&config.database_url(), &ConnectOptions::default()).await?;
    db.ping_log()
        .await
        .context("no event log here: check TEACHBACK_DATABASE_URL or TEACHBACK_DATA_DIR")?;
    let bar = progress_bar(json, "verifying the hash chain", 0)?;
    let report = crate::audit::verify(&db, &|at, head| {
        bar.set_length(head);
        bar.set_position(at);
    })
    .await;
    bar.finish_and_clear();
    db.close().await;
    let report = report.context("reading the event log")?;
    if json {
        println!("{}", report.to_json());
    }
    match &report.outcome {
        crate::audit::Verdict::Intact { head } => {
            if !json {
                match head {
                    Some(head) => println!(
                        "the hash chain is intact: {} events, head at position {} with hash {}",
                        report.events, head.position, head.hash
                    ),
                    None => println!("the event log is empty"),
                }
            }
            Ok(())
        }
        // An error: its message goes to stderr and the exit code is 1.
        crate::audit::Verdict::Broken(broken) => Err(anyhow::anyhow!(
            "{broken} ({} events before it verified)",
            report.events
        )),
    }
}

async fn replay(
    config: &Config,
    lecture: uuid::Uuid,
    speed: f64,
    instant: bool,
    json: bool,
    serve: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    use crate::replay::{self, Pace};
    if !(speed.is_finite() && speed > 0.0) {
        anyhow::bail!("--speed must be a positive number, not {speed}");
    }
    let (db, store) = open_log(config).await?;
    let events = store
        .read_stream_all(&teachback_events::streams::lecture(lecture))
        .await?;
    db.close().await;
    if events.is_empty() {
        anyhow::bail!("no lecture {lecture} in this log");
    }
    let frames = replay::timeline(&events);
    let pace = if instant {
        Pace::Instant
    } else {
        Pace::Speed(speed)
    };
    if let Some(addr) = serve {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let addr = listener.local_addr()?;
        eprintln!(
            "serving {} frames of lecture {lecture} at {} (Ctrl-C to stop)",
            frames.len(),
            replay::watch_url(addr, lecture)
        );
        return replay::serve(listener, lecture, frames, pace, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    }
    let mut out = std::io::stdout().lock();
    replay::play(&frames, pace, async |frame: &replay::Frame| {
        let line = if json {
            format!(
                "{{\"atMs\":{},\"frame\":{}}}",
                frame.at.as_millis(),
                frame.message.to_json()
            )
        } else {
            replay::describe(frame)
        };
        writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
    })
    .await;
    Ok(())
}

/// A progress bar on stderr, or none for `--json`.
async fn erase_user(config: &Config, user: uuid::Uuid, json: bool) -> anyhow::Result<()> {
    let (db, store) = open_log(config).await?;
    let blobs = crate::blob::open(&config.blob_url())?;
    let bar = progress_bar(json, "deleting audio", 0)?;
    let metadata = teachback_events::Metadata::default();
    let erased = crate::erasure::erase(
        &store,
        &blobs,
        user,
        teachback_events::ErasureRequester::Staff,
        metadata,
        &|done, total| {
            bar.set_length(total);
            bar.set_position(done);
        },
    )
    .await?;
    bar.finish_and_clear();
    store.flush().await;
    // The server's projections drop the rows; wait for them so the file can be compacted.
    let caught_up =
        projections_reach(config, &db, erased.position, Duration::from_secs(30)).await?;
    let compacted = caught_up && crate::erasure::compact(&db).await?;
    db.close().await;
    if json {
        let mut out = serde_json::to_value(&erased)?;
        out["readModelsDropped"] = caught_up.into();
        out["compacted"] = compacted.into();
        println!("{out}");
    } else {
        eprintln!(
            "erased learner {user}: {} lectures, {} audio blobs deleted, key destroyed",
            erased.lectures, erased.blobs_deleted
        );
        if !caught_up {
            eprintln!(
                "the read models have not dropped the learner's rows yet: they will when the \
                 server runs (start it, or run this command again beside it)"
            );
        }
    }
    Ok(())
}

/// Waits until every projection's checkpoint is at `position` or beyond.
async fn projections_reach(
    config: &Config,
    db: &Db,
    position: u64,
    timeout: Duration,
) -> anyhow::Result<bool> {
    let names: Vec<String> = crate::app::projectors(&config.tz()?)
        .iter()
        .map(|p| p.name().to_owned())
        .collect();
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let mut behind = false;
        for name in &names {
            let at: Option<i64> = crate::with_pool!(db, pool => {
                sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE name = $1")
                    .bind(name)
                    .fetch_optional(pool)
                    .await?
            });
            behind |= at.is_none_or(|p| (p as u64) < position);
        }
        if !behind {
            return Ok(true);
        }
        if std::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn expire_audio(config: &Config, days: Option<u32>, json: bool) -> anyhow::Result<()> {
    let Some(days) = days.or(config.audio_retention_days) else {
        anyhow::bail!(
            "how many days of audio to keep? pass --days N or set TEACHBACK_AUDIO_RETENTION_DAYS"
        );
    };
    anyhow::ensure!(days >= 1, "--days must be at least 1");
    let (db, store) = open_log(config).await?;
    let blobs = crate::blob::open(&config.blob_url())?;
    let bar = progress_bar(json, "deleting audio", 0)?;
    let cutoff = crate::erasure::cutoff(jiff::Timestamp::now(), days);
    let done = crate::erasure::expire_audio(&store, &blobs, cutoff, days, &|n, total| {
        bar.set_length(total);
        bar.set_position(n);
    })
    .await?;
    bar.finish_and_clear();
    store.flush().await;
    db.close().await;
    if json {
        println!("{}", serde_json::to_string(&done)?);
    } else {
        eprintln!(
            "audio older than {days} days: {} blobs deleted in {} lectures ({} already gone)",
            done.blobs_deleted, done.lectures, done.already_gone
        );
    }
    Ok(())
}

fn progress_bar(json: bool, message: &str, length: u64) -> anyhow::Result<indicatif::ProgressBar> {
    if json {
        return Ok(indicatif::ProgressBar::hidden());
    }
    let bar = indicatif::ProgressBar::new(length).with_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({per_sec}, {eta})")?
            .progress_chars("=> "),
    );
    bar.set_message(message.to_owned());
    Ok(bar)
}

async fn export(
    config: &Config,
    filter: &crate::store::archive::Filter,
    out: Option<std::path::PathBuf>,
    json: bool,
) -> anyhow::Result<()> {
    sql_log_only(config, "export")?;
    let db = Db::connect(&config.database_url(), &ConnectOptions::default()).await?;
    db.ping_log()
        .await
        .context("no event log here: check TEACHBACK_DATABASE_URL or TEACHBACK_DATA_DIR")?;
    let total = crate::store::archive::count(&db, filter).await?;
    let bar = progress_bar(json || out.is_none(), "exporting", total)?;
    let mut writer: Box<dyn Write> = match &out {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let summary =
        crate::store::archive::export(&db, filter, &mut writer, &|n| bar.set_position(n)).await?;
    drop(writer);
    bar.finish_and_clear();
    db.close().await;
    if json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        eprintln!("exported {} events", summary.events);
    }
    Ok(())
}

/// `export` and `import` read and write the SQL `events` table directly (one transaction, the
/// stored bytes); a KurrentDB log is backed up and moved with KurrentDB's own tools.
fn sql_log_only(config: &Config, command: &str) -> anyhow::Result<()> {
    if config.event_store != crate::config::EventStoreKind::Sql {
        anyhow::bail!(
            "`teachback {command}` works on the SQL event log; with \
             TEACHBACK_EVENT_STORE=kurrentdb back up and restore KurrentDB with its own tools"
        );
    }
    Ok(())
}

async fn import(config: &Config, file: &std::path::Path, json: bool) -> anyhow::Result<()> {
    sql_log_only(config, "import")?;
    if config.database_url.is_none() {
        crate::app::create_data_dir(&config.data_dir)?;
    }
    let db = Db::connect(&config.database_url(), &ConnectOptions::default()).await?;
    db.migrate().await?;
    let mut input: Box<dyn std::io::BufRead> = if file.as_os_str() == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin().lock()))
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?,
        ))
    };
    let bar = progress_bar(json, "importing", 0)?;
    bar.set_style(indicatif::ProgressStyle::with_template(
        "{msg} {pos} events ({per_sec})",
    )?);
    let imported = crate::store::archive::import(&db, &mut input, &|n| bar.set_position(n)).await;
    bar.finish_and_clear();
    db.close().await;
    let summary = imported.map_err(|e| anyhow::anyhow!("import refused, nothing written: {e}"))?;
    if json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        eprintln!(
            "imported {} events; start the server to build the read models from them",
            summary.events
        );
    }
    Ok(())
}

/// Re-grades a lecture in this process, against the configured database and providers.
async fn regrade(
    config: &Config,
    lecture: uuid::Uuid,
    reason: Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    let (db, store) = open_log(config).await?;
    let hub = Hub::new();
    // Audio is sealed with its learner's key: read it through the keyring, as the server does.
    let blobs = crate::blob::open(&config.blob_url())?;
    let blobs = match store.vault() {
        Some(vault) => crate::vault::SealedBlobs::wrap(blobs, vault.clone()),
        None => blobs,
    };
    let pipeline = Pipeline::new(
        db.clone(),
        store.clone(),
        blobs,
        hub.clone(),
        app::providers(config)?,
        app::pipeline_settings(config)?,
    );
    let mut frames = hub.subscribe(lecture);
    let attempt = pipeline
        .regrade(lecture, "cli", reason, Default::default())
        .await
        .map_err(|e| anyhow::anyhow!("{} ({})", e, e.code()))?;
    eprintln!(
        "re-grading lecture {lecture} (attempt {attempt}) with the {} grader",
        pipeline.grader()
    );
    let printer = async {
        let mut stdout = std::io::stdout();
        while let Ok(frame) = frames.recv().await {
            if json {
                println!("{}", frame.to_json());
            }
            match &*frame {
                ServerMessage::FeedbackDelta { .. } if json => {}
                ServerMessage::FeedbackDelta { text, .. } => {
                    print!("{text}");
                    let _ = stdout.flush();
                }
                ServerMessage::Grading {
                    grader,
                    fallback_reason,
                    ..
                } => {
                    eprintln!(
                        "grading by the {} grader{}",
                        grader.as_str(),
                        fallback_reason
                            .as_deref()
                            .map(|r| format!(" (fallback: {r})"))
                            .unwrap_or_default()
                    );
                }
                ServerMessage::Graded { .. } if json => return Ok(()),
                ServerMessage::Graded { score, .. } => {
                    println!("\nscore: {score} / 100");
                    return Ok(());
                }
                ServerMessage::GradingFailed { code, message, .. } => {
                    anyhow::bail!("failed: {message} ({code})");
                }
                _ => {}
            }
        }
        Ok(())
    };
    let worked = async {
        pipeline.process(lecture).await;
        // Let the last frames through.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    let printed = tokio::select! {
        printed = printer => printed,
        () = worked => Err(anyhow::anyhow!(
            "processing stopped before a grade (is speech-to-text configured for an audio lecture \
             whose transcript is not complete?)"
        )),
    };
    store.flush().await;
    printed
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
    // Read-only. A database the server never opened has no log to show.
    let (_, store) = open_log(config).await?;
    // `--from` is inclusive; subscriptions start *after* a position. KurrentDB reads only from
    // an event's own position (`POS - 1` is the middle of a record there), so it starts after.
    let after = if store.dense_positions() {
        from.saturating_sub(1)
    } else {
        from
    };
    let mut events = pin!(store.subscribe_all(after, prefix));
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

/// Logs go to stderr, so `events tail` output on stdout stays clean JSON lines. With Sentry
/// configured, error-level events are reported there too.
fn init_tracing(config: &Config, reporting: &crate::error_reporting::Reporting) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let fmt = match config.log_format {
        LogFormat::Json => fmt.json().boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    let registry = tracing_subscriber::registry().with(filter).with(fmt);
    #[cfg(feature = "sentry")]
    let registry = registry.with(crate::error_reporting::layer(reporting));
    #[cfg(not(feature = "sentry"))]
    let _ = reporting;
    let _ = registry.try_init();
}
