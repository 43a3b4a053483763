//! The command line: clap's raw form (`Cli`), and one function per command. `serve` wires the
//! daemon to the process: signals, systemd readiness, the embedded development default;
//! `backup` and `restore` write their files so that a half file never has the final name.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

use crate::config::{key_digest, Config, LogFormat, Scope, DEVELOPMENT_DEFAULT};
use crate::daemon::Daemon;
use crate::delivery::signer::{atender_signature, standard_webhooks_signature};

/// How long SIGTERM waits for requests and delivery attempts in flight.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

#[derive(Debug, Parser)]
#[command(
    name = "atender-webhooks",
    version,
    about = "Delivers Atender events to tenants' webhook endpoints: signed, retried, durable."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon. Without --config it runs on an embedded development default
    /// (127.0.0.1:8080, data in ./atender-data, a demo tenant whose key is printed once).
    Serve {
        /// The TOML configuration file (see config.example.toml).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Log as JSON lines instead of the human format (overrides log_format).
        #[arg(long)]
        json_logs: bool,
    },
    /// Validate a configuration file and exit: 0 when valid, 1 naming the bad key otherwise.
    CheckConfig {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Copy every subscription, event, delivery and idempotency id from the sled data dir of
    /// --config into the PostgreSQL database of the same file ([storage] backend = "postgres",
    /// url or ATENDER_STORAGE_URL, and data_dir still naming the sled data). Stop the daemon
    /// first; run again after an interruption (records already copied are kept).
    MigrateStorage {
        /// The backend to copy from (only `sled`).
        #[arg(long, value_parser = ["sled"])]
        from: String,
        /// The backend to copy to (only `postgres`).
        #[arg(long, value_parser = ["postgres"])]
        to: String,
        /// The configuration file the daemon will run on after the move.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Write a backup of the embedded store to FILE while the daemon runs (through its control
    /// socket, <data_dir>/control.sock), or from the data dir itself when no daemon runs there.
    /// Every event acknowledged before the backup began is in it. FILE appears only complete
    /// (written as FILE.<pid>.tmp, synced, then renamed). For [storage] backend = "postgres" use
    /// pg_dump or pg_basebackup instead.
    Backup {
        /// Where to write the backup (replaced if it exists).
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
        /// The daemon's configuration file (its data_dir); without it, the embedded development
        /// default (./atender-data).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Restore a backup into a new or empty data dir, then start a daemon on it (set data_dir
    /// in its configuration). The file is checked whole first: a truncated or damaged backup
    /// writes nothing.
    Restore {
        /// The backup file (made by `backup`).
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
        /// The data dir to create; must not exist or be empty.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Make the new data dir compressed (as `[storage] compression = true` would; sled fixes
        /// the choice when it creates a data dir, so this is how an existing install changes it).
        #[arg(long)]
        compression: bool,
    },
    /// Re-encrypt every stored subscription secret under a new master key. Stop the daemon
    /// first (every daemon, on PostgreSQL); then point [secrets] key_file at the new file and
    /// start. Run again after an interruption: values under the old or the new key both read.
    RotateMasterKey {
        /// The file holding the new key (32 raw bytes, 64 hex characters or base64 of 32 bytes).
        #[arg(long, value_name = "FILE")]
        new_key_file: PathBuf,
        /// The configuration file the daemon runs on; its [secrets] key_file is the current key.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Write a new random master key for [secrets] key_file: 64 hex characters, mode 0600,
    /// never over an existing file. Prints the key id, never the key.
    MasterKeygen {
        /// Where to write the key.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Generate a new API key: prints the key once and the TOML lines that store its digest.
    Keygen {
        /// The tenant id the key belongs to.
        #[arg(long)]
        tenant: String,
        /// A scope the key grants; repeat for several (webhooks:read, webhooks:write, events:write).
        #[arg(long = "scope", required = true, value_name = "SCOPE")]
        scopes: Vec<String>,
        /// A name for the key, shown in the config.
        #[arg(long, default_value = "key")]
        name: String,
    },
    /// Sign a body read from standard input, as a delivery would: prints X-Atender-Signature,
    /// and the Standard Webhooks signature when --id and --timestamp are given.
    Sign {
        /// The subscription secret (whsec_…).
        #[arg(long)]
        secret: String,
        /// The webhook-id header value (the delivery id).
        #[arg(long, requires = "timestamp")]
        id: Option<String>,
        /// The webhook-timestamp header value (unix seconds).
        #[arg(long, requires = "id")]
        timestamp: Option<i64>,
    },
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve { config, json_logs } => serve(config, json_logs),
        Command::MigrateStorage { from: _, to: _, config } => {
            let loaded =
                Config::load(&config).with_context(|| format!("{} is not valid", config.display()))?;
            let crate::config::StorageBackend::Postgres(target) = &loaded.storage else {
                anyhow::bail!(
                    "{} must say [storage] backend = \"postgres\" (with url or ATENDER_STORAGE_URL): the database to copy into",
                    config.display()
                );
            };
            let secrets = crate::secrets::configured_keys(loaded.secrets_key_file.as_deref())?;
            let report = crate::store::migrate_sled_to_postgres(&loaded.data_dir, target, secrets)
                .with_context(|| {
                    format!(
                        "cannot copy {} into {}",
                        loaded.data_dir.display(),
                        crate::config::redact_password(&target.url)
                    )
                })?;
            let copied = &report.copied;
            println!(
                "copied {} subscriptions, {} events, {} deliveries and {} idempotency ids from {} into {}{}",
                copied.subscriptions,
                copied.events,
                copied.deliveries,
                copied.idempotency_ids,
                loaded.data_dir.display(),
                crate::config::redact_password(&target.url),
                match report.already_there {
                    0 => String::new(),
                    kept =>
                        format!(" ({kept} records were there already, from an earlier run, and were kept)"),
                }
            );
            Ok(())
        }
        Command::CheckConfig { config } => {
            let loaded =
                Config::load(&config).with_context(|| format!("{} is not valid", config.display()))?;
            if let Some(key_file) = &loaded.secrets_key_file {
                let key = crate::secrets::MasterKey::load(key_file)
                    .with_context(|| format!("{}: secrets.key_file is not usable", config.display()))?;
                if let Some(warning) = crate::secrets::permission_warning(key_file) {
                    eprintln!("warning: {warning}");
                }
                println!("{}: secrets.key_file holds master key {}", config.display(), key.id());
            } else {
                println!(
                    "{}: no [secrets] key_file: subscription secrets are stored unencrypted",
                    config.display()
                );
            }
            println!("{}: ok", config.display());
            Ok(())
        }
        Command::Backup { to, config } => backup(&to, config.as_deref()),
        Command::Restore { from, data_dir, compression } => restore(&from, &data_dir, compression),
        Command::RotateMasterKey { new_key_file, config } => rotate_master_key(&new_key_file, &config),
        Command::MasterKeygen { out } => {
            let key = crate::secrets::MasterKey::create_file(&out)?;
            println!("wrote a new master key to {} (mode 0600), key id {}", out.display(), key.id());
            // Absolute, so the line works from any config file's directory.
            let absolute = std::fs::canonicalize(&out).unwrap_or_else(|_| out.clone());
            println!("set it in the config:\n\n[secrets]\nkey_file = {:?}", absolute.display().to_string());
            Ok(())
        }
        Command::Keygen { tenant, scopes, name } => keygen(&tenant, &scopes, &name),
        Command::Sign { secret, id, timestamp } => {
            let mut body = Vec::new();
            std::io::stdin().read_to_end(&mut body).context("cannot read the body from standard input")?;
            // Both signatures are computed before anything is printed, so an unusable secret
            // gives an error alone, never a half result that looks like a complete one.
            let standard = match (id, timestamp) {
                (Some(id), Some(timestamp)) => {
                    Some(standard_webhooks_signature(&secret, &id, timestamp, &body)?)
                }
                _ => None,
            };
            println!("X-Atender-Signature: {}", atender_signature(&secret, &body));
            if let Some(signature) = standard {
                println!("webhook-signature: {signature}");
            }
            Ok(())
        }
    }
}

/// `backup --to FILE [--config FILE]`: through the running daemon's control socket, or from
/// the data dir when no daemon runs on it; FILE only ever appears complete and checked.
fn backup(to: &Path, config_path: Option<&Path>) -> anyhow::Result<()> {
    let config = match config_path {
        Some(path) => Config::load(path).with_context(|| format!("{} is not valid", path.display()))?,
        None => development_config()?.0,
    };
    if let crate::config::StorageBackend::Postgres(_) = config.storage {
        bail!("{}", crate::store::POSTGRES_BACKUP_ADVICE);
    }
    let data_dir = &config.data_dir;
    let (summary, source) = write_atomically(to, |file| {
        if crate::control::request_backup(data_dir, file)?.is_some() {
            return Ok("the running daemon");
        }
        // No daemon: sled's lock guarantees nobody else has the data dir while we read it.
        match crate::store::backup_data_dir(data_dir, file) {
            Ok(_) => Ok("the data dir (no daemon was running)"),
            Err(crate::store::BackupError::Store(err)) if err.to_string().contains("lock") => bail!(
                "{} is in use by another process, but no daemon answers on {}: if it is the daemon, its log says why it has no control socket; otherwise stop that process",
                data_dir.display(),
                crate::control::socket_path(data_dir).display()
            ),
            Err(err) => Err(err).with_context(|| format!("cannot back up {}", data_dir.display())),
        }
    })?;
    println!(
        "backed up {} subscriptions, {} events, {} deliveries and {} idempotency ids ({} bytes) from {} of {} into {}",
        summary.subscriptions,
        summary.events,
        summary.deliveries,
        summary.idempotency_ids,
        summary.bytes,
        source,
        data_dir.display(),
        to.display()
    );
    Ok(())
}

/// `rotate-master-key`: re-seals every stored secret under the key of `new_key_file`, opening
/// values sealed under the config's current key or the new one (so a re-run finishes an
/// interrupted rotation).
fn rotate_master_key(new_key_file: &std::path::Path, config_path: &std::path::Path) -> anyhow::Result<()> {
    use std::sync::Arc;
    let config =
        Config::load(config_path).with_context(|| format!("{} is not valid", config_path.display()))?;
    let old = match &config.secrets_key_file {
        Some(path) => Some(Arc::new(crate::secrets::MasterKey::load(path).with_context(|| {
            format!("{}: the current secrets.key_file is not usable", config_path.display())
        })?)),
        None => None,
    };
    let new = Arc::new(crate::secrets::MasterKey::load(new_key_file).context("the new key is not usable")?);
    if let Some(warning) = crate::secrets::permission_warning(new_key_file) {
        eprintln!("warning: {warning}");
    }
    let options = crate::store::StoreOptions {
        min_free_bytes: 0,
        secrets: crate::secrets::SecretKeys::rotating(old.clone(), new.clone()),
        ..crate::store::StoreOptions::default()
    };
    let report =
        crate::store::rotate_master_key(&config.storage, &config.data_dir, &options).map_err(|err| {
            // sled's lock: the daemon (or another command) has the data dir.
            let locked = err.to_string().contains("lock");
            anyhow::Error::new(err).context(match &config.storage {
                crate::config::StorageBackend::Sled if locked => format!(
                    "cannot re-encrypt the secrets in {} (is the daemon still running? stop it first)",
                    config.data_dir.display()
                ),
                crate::config::StorageBackend::Sled => {
                    format!("cannot re-encrypt the secrets in {}", config.data_dir.display())
                }
                crate::config::StorageBackend::Postgres(pg) => {
                    format!("cannot re-encrypt the secrets in {}", crate::config::redact_password(&pg.url))
                }
            })
        })?;
    println!(
        "re-encrypted {} of {} subscriptions under master key {} (was {})",
        report.rewritten,
        report.subscriptions,
        report.key_id,
        old.as_ref().map_or("unencrypted".to_owned(), |old| format!("master key {}", old.id()))
    );
    println!(
        "now set [secrets] key_file = {:?} in {} (on every node) and start the daemon; keep the old key file until it starts",
        new_key_file.display().to_string(),
        config_path.display()
    );
    Ok(())
}

/// Writes `to` as `<to>.<pid>.tmp` (mode 0600: a backup holds secrets) through `write`, syncs it,
/// checks it whole ([`crate::store::verify_backup`]), renames it over `to` and syncs the
/// directory: `to` is never a partial file. On any failure the temporary file is removed.
fn write_atomically(
    to: &Path,
    write: impl FnOnce(&mut std::fs::File) -> anyhow::Result<&'static str>,
) -> anyhow::Result<(crate::store::BackupSummary, &'static str)> {
    if to.is_dir() {
        bail!("--to {} is a directory; name the backup file", to.display());
    }
    // Per process: two backups to one FILE at once (a timer and a manual run) never share it.
    let mut temp_name = to.as_os_str().to_owned();
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp = PathBuf::from(temp_name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&temp).with_context(|| format!("cannot create {}", temp.display()))?;
    let written = (|| {
        let source = write(&mut file)?;
        file.sync_all().with_context(|| format!("cannot write {}", temp.display()))?;
        drop(file);
        let mut check =
            std::fs::File::open(&temp).with_context(|| format!("cannot read {}", temp.display()))?;
        let summary = crate::store::verify_backup(&mut check)
            .with_context(|| format!("the backup written to {} does not read back", temp.display()))?;
        std::fs::rename(&temp, to)
            .with_context(|| format!("cannot rename {} to {}", temp.display(), to.display()))?;
        let parent = to.parent().filter(|parent| !parent.as_os_str().is_empty()).unwrap_or(Path::new("."));
        std::fs::File::open(parent)
            .and_then(|dir| dir.sync_all())
            .with_context(|| format!("cannot sync {}", parent.display()))?;
        Ok((summary, source))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

/// `restore --from FILE --data-dir DIR [--compression]`.
fn restore(from: &Path, data_dir: &Path, compression: bool) -> anyhow::Result<()> {
    let summary = crate::store::restore_backup(from, data_dir, compression)
        .with_context(|| format!("cannot restore {} into {}", from.display(), data_dir.display()))?;
    let began = std::time::UNIX_EPOCH + Duration::from_millis(summary.backup.began_at);
    let mut line = format!(
        "restored {} subscriptions, {} events, {} deliveries and {} idempotency ids from {} (backup begun at {}) into {}",
        summary.subscriptions,
        summary.events,
        summary.deliveries,
        summary.idempotency_ids,
        from.display(),
        humantime::format_rfc3339_seconds(began),
        data_dir.display()
    );
    if summary.skipped_deliveries + summary.skipped_events > 0 {
        line.push_str(&format!(
            "; left out {} deliveries and {} events the backup caught half made (acknowledged after it began, or of a subscription deleted meanwhile)",
            summary.skipped_deliveries, summary.skipped_events
        ));
    }
    println!("{line}");
    Ok(())
}

/// A new API key: `sa_live_` + 40 base62 characters from the OS CSPRNG.
pub fn new_api_key() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut key = String::from("sa_live_");
    while key.len() < 8 + 40 {
        for byte in crate::model::random_bytes::<64>() {
            // Rejection sampling keeps every character equally likely.
            if byte < 248 && key.len() < 48 {
                key.push(ALPHABET[(byte % 62) as usize] as char);
            }
        }
    }
    key
}

fn keygen(tenant: &str, scopes: &[String], name: &str) -> anyhow::Result<()> {
    if !crate::config::is_valid_tenant_id(tenant) {
        bail!("--tenant {tenant:?} must be 1-64 characters of a-z, 0-9, '_' or '-'");
    }
    for scope in scopes {
        if Scope::parse(scope).is_none() {
            bail!("--scope {scope:?} is not a scope (known: webhooks:read, webhooks:write, events:write)");
        }
    }
    let key = new_api_key();
    let scopes: Vec<String> = scopes.iter().map(|scope| format!("{scope:?}")).collect();
    println!("API key (shown once; store it now): {key}");
    println!();
    println!("# Add under the [[tenants]] block with id = {tenant:?}:");
    println!("[[tenants.api_keys]]");
    println!("name = {name:?}");
    println!("key_sha256 = \"{}\"", hex::encode(key_digest(&key)));
    println!("scopes = [{}]", scopes.join(", "));
    Ok(())
}

fn serve(config_path: Option<PathBuf>, json_logs: bool) -> anyhow::Result<()> {
    let (config, demo_key) = match &config_path {
        Some(path) => (Config::load(path).with_context(|| format!("{} is not valid", path.display()))?, None),
        None => development_config()?,
    };
    init_tracing(if json_logs { LogFormat::Json } else { config.log_format });
    match (&config_path, &demo_key) {
        (None, Some(key)) => {
            tracing::warn!("no --config given: running on the embedded DEVELOPMENT DEFAULT (loopback only, data in ./atender-data, http and private targets allowed)");
            tracing::warn!(tenant = "demo", "demo API key for this run (printed once, all scopes): {key}");
        }
        _ => {
            tracing::info!(config = %config_path.as_deref().unwrap_or("".as_ref()).display(), "configuration loaded")
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let served = runtime.block_on(serve_until_signalled(config, config_path));
    // A storage call stuck on a hung disk keeps its blocking thread; dropping the runtime would
    // wait for it forever, so exit without waiting for it.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    served
}

/// The embedded default with a fresh demo key granted every scope.
fn development_config() -> anyhow::Result<(Config, Option<String>)> {
    let key = new_api_key();
    let text = format!(
        "{DEVELOPMENT_DEFAULT}\n[[tenants.api_keys]]\nname = \"demo\"\nkey_sha256 = \"{}\"\nscopes = [\"webhooks:read\", \"webhooks:write\", \"events:write\"]\n",
        hex::encode(key_digest(&key))
    );
    Ok((Config::parse(&text)?, Some(key)))
}

async fn serve_until_signalled(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let daemon = Daemon::start(config).await?;
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    let watchdog = tokio::spawn(watchdog(daemon.health().clone()));
    let health = daemon.health().clone();
    loop {
        tokio::select! {
            _ = hangup.recv() => reload(&daemon, config_path.as_deref()),
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            reason = health.wait_fatal() => {
                // sled cannot go on after a failed write; a fresh process recovers everything
                // acknowledged from its log. One line, then out: the unit restarts us.
                tracing::error!(%reason, "storage failed and cannot recover in this process; exiting with status {STORAGE_FAILED_EXIT} so the service manager restarts the daemon");
                notify_systemd(&[sd_notify::NotifyState::Stopping]);
                std::process::exit(STORAGE_FAILED_EXIT);
            }
        }
    }
    watchdog.abort();
    tracing::info!("shutting down: no new requests, finishing attempts in flight");
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    let finished = daemon.shutdown(SHUTDOWN_GRACE).await?;
    if finished {
        tracing::info!("shut down cleanly");
    } else {
        tracing::warn!(
            "shut down after the grace period; unfinished attempts will be repeated at the next start"
        );
    }
    Ok(())
}

/// Exit status after a fatal storage fault (EX_TEMPFAIL, sysexits.h: "try again later").
pub const STORAGE_FAILED_EXIT: i32 = 75;

/// Sends `WATCHDOG=1` every half `WatchdogSec=` while every internal thread is alive and making
/// progress; stops sending once one is not, so systemd restarts the daemon. A no-op when the
/// unit sets no watchdog.
async fn watchdog(health: std::sync::Arc<crate::health::Health>) {
    let Some(timeout) = sd_notify::watchdog_enabled() else { return };
    let period = (timeout / 2).max(std::time::Duration::from_millis(100));
    let mut reported = false;
    loop {
        let problems = health.problems();
        if problems.is_empty() {
            notify_systemd(&[sd_notify::NotifyState::Watchdog]);
            reported = false;
        } else if !reported {
            tracing::error!(?problems, "not alive: the systemd watchdog is no longer fed");
            reported = true;
        }
        tokio::time::sleep(period).await;
    }
}

fn reload(daemon: &Daemon, config_path: Option<&std::path::Path>) {
    let Some(path) = config_path else {
        tracing::warn!("SIGHUP ignored: running on the embedded default, there is no file to reload");
        return;
    };
    notify_systemd(&[sd_notify::NotifyState::Reloading, monotonic_now()]);
    match Config::load(path) {
        Ok(config) => {
            let kept = daemon.reload(config);
            if kept.is_empty() {
                tracing::info!(config = %path.display(), "configuration reloaded");
            } else {
                tracing::warn!(config = %path.display(), needs_restart = ?kept, "configuration reloaded; some settings only change on restart and were kept");
            }
        }
        Err(err) => {
            let error = single_line(&err.to_string());
            tracing::error!(config = %path.display(), %error, "reload refused: the file is not valid; the running configuration is kept")
        }
    }
    notify_systemd(&[sd_notify::NotifyState::Ready]);
}

/// A log line must stay one line: journald makes each line its own entry, which would part the
/// "reload refused" line from the key it names. TOML syntax errors draw a multi-line excerpt of
/// the file (`1 | bogus = 1`, `|  ^^^^^`); that is dropped, keeping the location and the message.
fn single_line(message: &str) -> String {
    let is_excerpt = |line: &str| {
        line.starts_with('|')
            || line.split_once(" |").is_some_and(|(number, _)| number.bytes().all(|b| b.is_ascii_digit()))
    };
    let mut parts = message.lines().map(str::trim).filter(|line| !line.is_empty() && !is_excerpt(line));
    let first = parts.next().unwrap_or_default();
    let rest: Vec<&str> = parts.collect();
    if rest.is_empty() {
        first.to_owned()
    } else {
        format!("{first}: {}", rest.join("; "))
    }
}

fn monotonic_now() -> sd_notify::NotifyState<'static> {
    sd_notify::NotifyState::monotonic_usec_now().unwrap_or(sd_notify::NotifyState::Status("reloading"))
}

/// Tells systemd our state when run as a `Type=notify` service; a no-op otherwise.
fn notify_systemd(states: &[sd_notify::NotifyState]) {
    if let Err(err) = sd_notify::notify(states) {
        tracing::debug!(error = %err, "systemd notification not sent");
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ATENDER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal; journald and pipes get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_that_fails_or_does_not_read_back_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let to = dir.path().join("backup");
        let failed = write_atomically(&to, |file| {
            std::io::Write::write_all(file, b"half a backup")?;
            bail!("the daemon went away")
        });
        assert_eq!(failed.unwrap_err().to_string(), "the daemon went away");
        let garbage = write_atomically(&to, |file| {
            std::io::Write::write_all(file, b"not a backup at all, but long enough to read")?;
            Ok("test")
        });
        let message = format!("{:#}", garbage.unwrap_err());
        assert!(
            message.contains("does not read back") && message.contains("not a valid backup"),
            "{message}"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "neither the file nor its .tmp");
        assert!(write_atomically(dir.path(), |_| Ok("test"))
            .unwrap_err()
            .to_string()
            .contains("is a directory"));
    }

    #[test]
    fn single_line_keeps_the_location_and_message_of_a_toml_error() {
        let error = Config::parse("bogus = 1\n").unwrap_err().to_string();
        assert!(error.contains('\n'), "the raw error is multi-line: {error:?}");
        let line = single_line(&error);
        assert!(!line.contains('\n'), "{line:?}");
        assert!(line.starts_with("TOML parse error at line 1, column 1: unknown field `bogus`"), "{line:?}");
        assert!(!line.contains("^^^"), "the excerpt is dropped: {line:?}");
        let plain = "delivery.timeout: \"ten\" is not a duration";
        assert_eq!(single_line(plain), plain);
    }
}
