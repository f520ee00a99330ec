//! The `teachback` binary: serves by default; see `teachback --help` for the other commands.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    teachback::cli::main().await
}
