//! The control socket: a Unix socket in the data dir (`<data_dir>/control.sock`, mode 0600)
//! through which local commands ask the running daemon for what only the process holding
//! sled's lock can do — today one thing, a backup. Its file permissions are the
//! authentication, as for `docker.sock`: whoever may connect may read the data dir anyway.
//!
//! The protocol, versioned by its first word so a later daemon can refuse an older client
//! clearly (and the reverse):
//!
//! ```text
//! client: "ATENDER-CONTROL/1 backup\n"
//! daemon: "ATENDER-CONTROL/1 ok\n", then chunks: u32 BE length > 0 and that many bytes of the
//!         backup file; ended by u32 0 (complete) or by u32 0xFFFFFFFF, u32 length and a UTF-8
//!         message (the backup failed: why)
//!     or: "ATENDER-CONTROL/1 error <message>\n" (unknown version or command)
//! ```
//!
//! The server is one thread with a heartbeat ([`crate::health::BeatGuard`], `control`) that
//! serves one client at a time, stops at the daemon's shutdown and passes bytes only: the
//! backup itself is `store::Backups`. The client half is [`request_backup`].

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::health::{BeatGuard, Health};
use crate::store::Backups;

/// The socket's file name in the data dir.
pub const SOCKET_NAME: &str = "control.sock";

/// The protocol's name and version, the first word of every request and answer line.
pub const PROTOCOL: &str = "ATENDER-CONTROL/1";

/// How long the server waits for a request line, and for a client to take the next chunk
/// (a client that stops reading must not hold the thread: the backup is abandoned).
const SERVER_IO_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a client waits for the daemon's next bytes.
const CLIENT_READ_TIMEOUT: Duration = Duration::from_secs(120);

/// How often the idle server looks at the shutdown signal between connections.
const ACCEPT_POLL: Duration = Duration::from_millis(100);

/// Longest the server may go without progress on one client before `/healthz` calls it stuck
/// (every chunk sent is progress, so a long backup is fine).
const PROGRESS_LIMIT: Duration = Duration::from_secs(60);

/// Chunk length that ends a stream with an error message instead of the rest of the backup.
const FAILED: u32 = u32::MAX;

/// Longest request or answer line, and longest error message.
const MAX_LINE: u64 = 4096;

/// The socket path of the daemon on `data_dir`.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

/// The running control socket. Dropping it removes the socket file; the thread stops at the
/// daemon's shutdown signal.
pub struct ControlServer {
    path: PathBuf,
}

impl ControlServer {
    /// Listens on `<data_dir>/control.sock` (mode 0600) and serves backups of `store` on a
    /// thread of its own. A socket file left by a daemon that died is replaced: the caller
    /// holds the data dir's lock, so no other daemon can be serving it. A file of that name
    /// that is not a socket is an error, never removed.
    pub fn start(
        data_dir: &Path,
        store: Arc<dyn Backups>,
        health: &Arc<Health>,
    ) -> std::io::Result<ControlServer> {
        let path = socket_path(data_dir);
        match std::fs::symlink_metadata(&path) {
            Ok(found) if found.file_type().is_socket() => std::fs::remove_file(&path)?,
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("{} exists and is not a socket", path.display()),
                ))
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(err),
        }
        let listener = UnixListener::bind(&path).map_err(|err| {
            std::io::Error::new(err.kind(), format!("cannot listen on {}: {err}", path.display()))
        })?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        let health = health.clone();
        // Registered by the thread itself: a thread that never started is no dead thread.
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || serve(listener, store, health.register("control", PROGRESS_LIMIT)))?;
        Ok(ControlServer { path })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        // Gone first, so a command run during shutdown does not wait on a daemon that is leaving.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The server thread: one client at a time until the shutdown signal.
fn serve(listener: UnixListener, store: Arc<dyn Backups>, beat: BeatGuard) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                beat.busy();
                if let Err(err) = answer(stream, &*store, &beat) {
                    beat.error();
                    tracing::warn!(error = %err, "a control-socket client went away");
                }
                beat.idle();
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(err) => {
                beat.error();
                tracing::warn!(error = %err, "the control socket cannot accept a connection");
            }
        }
        if !beat.rest(ACCEPT_POLL) {
            return;
        }
    }
}

/// Serves one client: reads its request line and answers it.
fn answer(stream: UnixStream, store: &dyn Backups, beat: &BeatGuard) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(SERVER_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(SERVER_IO_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new((&stream).take(MAX_LINE)).read_line(&mut line)?;
    let mut writer = &stream;
    let mut words = line.trim_end().splitn(2, ' ');
    let (version, command) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    if version != PROTOCOL {
        let refusal = format!("{PROTOCOL} error this daemon speaks {PROTOCOL}, not {version:?}\n");
        return writer.write_all(refusal.as_bytes());
    }
    if command != "backup" {
        let refusal = format!("{PROTOCOL} error unknown command {command:?} (known: backup)\n");
        return writer.write_all(refusal.as_bytes());
    }
    writer.write_all(format!("{PROTOCOL} ok\n").as_bytes())?;
    tracing::info!("backup requested on the control socket");
    let mut chunks = Chunks { stream: &stream, beat };
    match store.backup(&mut chunks) {
        Ok(summary) => {
            writer.write_all(&0u32.to_be_bytes())?;
            tracing::info!(
                subscriptions = summary.subscriptions,
                events = summary.events,
                deliveries = summary.deliveries,
                idempotency_ids = summary.idempotency_ids,
                bytes = summary.bytes,
                "backup sent"
            );
            Ok(())
        }
        Err(err) => {
            tracing::warn!(error = %err, "backup failed");
            let message = err.to_string();
            let message = &message.as_bytes()[..message.len().min(MAX_LINE as usize)];
            writer.write_all(&FAILED.to_be_bytes())?;
            writer.write_all(&(message.len() as u32).to_be_bytes())?;
            writer.write_all(message)
        }
    }
}

/// The backup's bytes as chunks on the socket; each chunk sent is the thread's progress. Stops
/// the backup when the daemon shuts down.
struct Chunks<'a> {
    stream: &'a UnixStream,
    beat: &'a BeatGuard,
}

impl Write for Chunks<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.beat.stopping() {
            return Err(std::io::Error::other("the daemon is shutting down"));
        }
        let len = bytes.len().min(16 * 1024 * 1024);
        if len == 0 {
            return Ok(0);
        }
        self.stream.write_all(&(len as u32).to_be_bytes())?;
        self.stream.write_all(&bytes[..len])?;
        self.beat.busy();
        Ok(len)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Why a backup through the control socket did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket exists but cannot be connected to (permissions: run as the daemon's user).
    #[error("cannot connect to {path}: {error}")]
    Connect { path: String, error: std::io::Error },
    /// The daemon answered with a refusal line.
    #[error("the daemon refused: {0}")]
    Refused(String),
    /// The daemon began and then reported a failure.
    #[error("the daemon could not complete the backup: {0}")]
    Failed(String),
    /// The stream stopped before its end mark (the daemon stopped or crashed).
    #[error("the daemon's backup stream ended early (did the daemon stop? its log says why)")]
    Ended,
    /// The daemon answered something that is not this protocol.
    #[error("the daemon answered {0:?}, not {PROTOCOL} (a different version of atender-webhooks?)")]
    Protocol(String),
    /// Reading from the daemon failed.
    #[error("reading from the daemon failed: {0}")]
    Read(std::io::Error),
    /// `out` refused the bytes (a full disk).
    #[error("cannot write the backup: {0}")]
    Write(std::io::Error),
}

/// Asks the daemon running on `data_dir` for a backup and writes it to `out`. `Ok(None)` when
/// no daemon runs there (no socket, or nobody listening on it: a daemon that died); then
/// nothing was written. `Ok(Some(bytes))` once the whole stream arrived.
pub fn request_backup(data_dir: &Path, out: &mut dyn Write) -> Result<Option<u64>, ControlError> {
    let path = socket_path(data_dir);
    let stream = match UnixStream::connect(&path) {
        Ok(stream) => stream,
        Err(err)
            if matches!(err.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) =>
        {
            return Ok(None)
        }
        Err(error) => return Err(ControlError::Connect { path: path.display().to_string(), error }),
    };
    stream.set_read_timeout(Some(CLIENT_READ_TIMEOUT)).map_err(ControlError::Read)?;
    (&stream).write_all(format!("{PROTOCOL} backup\n").as_bytes()).map_err(ControlError::Read)?;
    let mut input = BufReader::with_capacity(64 * 1024, &stream);
    let mut line = String::new();
    (&mut input).take(MAX_LINE).read_line(&mut line).map_err(ControlError::Read)?;
    let line = line.trim_end();
    match line.strip_prefix(PROTOCOL).map(str::trim_start) {
        Some("ok") => {}
        Some(refusal) if refusal.starts_with("error ") => {
            return Err(ControlError::Refused(refusal["error ".len()..].to_owned()))
        }
        _ => return Err(ControlError::Protocol(line.chars().take(200).collect())),
    }
    let mut total = 0u64;
    let mut buffer = Vec::new();
    loop {
        let len = read_u32(&mut input)?;
        match len {
            0 => return Ok(Some(total)),
            FAILED => {
                let len = read_u32(&mut input)?.min(MAX_LINE as u32);
                let mut message = vec![0; len as usize];
                input.read_exact(&mut message).map_err(ended)?;
                return Err(ControlError::Failed(String::from_utf8_lossy(&message).into_owned()));
            }
            len => {
                buffer.clear();
                (&mut input).take(u64::from(len)).read_to_end(&mut buffer).map_err(ControlError::Read)?;
                if buffer.len() != len as usize {
                    return Err(ControlError::Ended);
                }
                out.write_all(&buffer).map_err(ControlError::Write)?;
                total += u64::from(len);
            }
        }
    }
}

fn read_u32(input: &mut impl Read) -> Result<u32, ControlError> {
    let mut bytes = [0; 4];
    input.read_exact(&mut bytes).map_err(ended)?;
    Ok(u32::from_be_bytes(bytes))
}

fn ended(err: std::io::Error) -> ControlError {
    match err.kind() {
        std::io::ErrorKind::UnexpectedEof => ControlError::Ended,
        _ => ControlError::Read(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{BackupError, BackupSummary};

    /// A store whose backup is `bytes`, then `outcome`.
    struct Fake {
        bytes: Vec<u8>,
        fail: Option<&'static str>,
    }

    impl Backups for Fake {
        fn backup(&self, out: &mut dyn Write) -> Result<BackupSummary, BackupError> {
            // Written in small pieces: several chunks.
            for piece in self.bytes.chunks(3) {
                out.write_all(piece).map_err(BackupError::Write)?;
            }
            match self.fail {
                Some(why) => Err(BackupError::Invalid(why.into())),
                None => Ok(BackupSummary { bytes: self.bytes.len() as u64, ..BackupSummary::default() }),
            }
        }
    }

    fn serving(fail: Option<&'static str>) -> (tempfile::TempDir, Arc<Health>, ControlServer) {
        let dir = tempfile::tempdir().unwrap();
        let health = Arc::new(Health::default());
        let store = Arc::new(Fake { bytes: b"the backup bytes".to_vec(), fail });
        let server = ControlServer::start(dir.path(), store, &health).unwrap();
        (dir, health, server)
    }

    #[test]
    fn a_backup_streams_through_the_socket_and_the_socket_is_private() {
        let (dir, health, server) = serving(None);
        let mode = std::fs::metadata(server.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let mut out = Vec::new();
        assert_eq!(request_backup(dir.path(), &mut out).unwrap(), Some(16));
        assert_eq!(out, b"the backup bytes");
        health.begin_shutdown();
        drop(server);
        assert!(!socket_path(dir.path()).exists(), "removed at shutdown");
        assert!(request_backup(dir.path(), &mut Vec::new()).unwrap().is_none(), "no daemon: none");
    }

    #[test]
    fn a_failed_backup_reaches_the_client_with_its_reason() {
        let (dir, _health, _server) = serving(Some("boom"));
        let err = request_backup(dir.path(), &mut Vec::new()).unwrap_err();
        assert_eq!(err.to_string(), "the daemon could not complete the backup: not a valid backup: boom");
    }

    #[test]
    fn another_protocol_version_or_command_is_refused_by_name() {
        let (dir, _health, _server) = serving(None);
        for (request, expected) in [
            (
                "ATENDER-CONTROL/2 backup\n",
                "error this daemon speaks ATENDER-CONTROL/1, not \"ATENDER-CONTROL/2\"",
            ),
            ("ATENDER-CONTROL/1 restore\n", "error unknown command \"restore\" (known: backup)"),
        ] {
            let mut stream = UnixStream::connect(socket_path(dir.path())).unwrap();
            stream.write_all(request.as_bytes()).unwrap();
            let mut answer = String::new();
            stream.read_to_string(&mut answer).unwrap();
            assert_eq!(answer, format!("ATENDER-CONTROL/1 {expected}\n"));
        }
    }

    /// A store whose backup sends one piece, says so, and goes on once the daemon is
    /// stopping (or after a deadline, so a broken test cannot hang).
    struct Slow(crossbeam_channel::Sender<()>, Arc<Health>);

    impl Backups for Slow {
        fn backup(&self, out: &mut dyn Write) -> Result<BackupSummary, BackupError> {
            out.write_all(b"first").map_err(BackupError::Write)?;
            let _ = self.0.send(());
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !self.1.shutting_down() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            out.write_all(b"second").map_err(BackupError::Write)?;
            Ok(BackupSummary::default())
        }
    }

    #[test]
    fn a_shutdown_abandons_a_backup_under_way_and_tells_the_client() {
        let dir = tempfile::tempdir().unwrap();
        let health = Arc::new(Health::default());
        let (started, first_sent) = crossbeam_channel::bounded(1);
        let server =
            ControlServer::start(dir.path(), Arc::new(Slow(started, health.clone())), &health).unwrap();
        let data_dir = dir.path().to_owned();
        let client = std::thread::spawn(move || {
            let mut out = Vec::new();
            (request_backup(&data_dir, &mut out), out)
        });
        first_sent.recv_timeout(Duration::from_secs(10)).unwrap();
        health.begin_shutdown();
        let (result, out) = client.join().unwrap();
        assert_eq!(out, b"first");
        let err = result.unwrap_err().to_string();
        assert!(err.ends_with("cannot write the backup: the daemon is shutting down"), "{err}");
        drop(server);
    }

    #[test]
    fn a_stale_socket_is_replaced_and_a_stranger_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let health = Arc::new(Health::default());
        let stale = UnixListener::bind(socket_path(dir.path())).unwrap();
        drop(stale);
        assert!(request_backup(dir.path(), &mut Vec::new()).unwrap().is_none(), "refused: no daemon");
        let store = Arc::new(Fake { bytes: b"x".to_vec(), fail: None });
        let server = ControlServer::start(dir.path(), store.clone(), &health).unwrap();
        assert_eq!(request_backup(dir.path(), &mut Vec::new()).unwrap(), Some(1));
        health.begin_shutdown();
        drop(server);
        std::fs::write(socket_path(dir.path()), b"mine").unwrap();
        assert!(ControlServer::start(dir.path(), store, &health).is_err());
        assert_eq!(std::fs::read(socket_path(dir.path())).unwrap(), b"mine");
    }
}
