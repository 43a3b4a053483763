//! `backup` and `restore` with the real binary: a backup taken from a running daemon under
//! load (publishers and deliveries in full flow) restored into a fresh data dir, where a new
//! daemon serves every event acknowledged before the backup began; a backup with no daemon
//! running; and the refusals (a used target dir, a truncated or damaged file, a data dir held
//! by a process without a control socket, a PostgreSQL config).
//!
//! Backups copy the embedded sled store, so every test here runs on sled whatever the suite
//! runs against (`Storage::Sled`); the PostgreSQL refusal needs no server.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::process::{logged_event_ids, run_binary, Served};
use crate::support::*;

fn sled() -> Setup {
    Setup { storage: Storage::Sled, ..Setup::default() }
}

fn subscribe(served: &Served, url: &str) -> String {
    let body = json!({ "name": url, "url": url, "events": ["message.received"] });
    let reply = served.call("POST", "/v1/webhooks", ACME_KEY, Some(body));
    assert_eq!(reply.status, 201, "{}", reply.text);
    reply.json()["id"].as_str().unwrap().to_owned()
}

fn path_text(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A config file for a daemon on `data_dir` (sled), in `dir`.
fn config_for(dir: &Path, data_dir: &Path) -> std::path::PathBuf {
    let config = dir.join("restored.toml");
    std::fs::write(&config, sled().config_text(data_dir, "127.0.0.1:0")).unwrap();
    config
}

#[test]
fn a_backup_under_load_restores_every_event_acknowledged_before_it_began() {
    // A receiver a little slower than the publishers: a backlog is queued and attempts are
    // under way while the backup runs.
    let receiver = Receiver::answering(Answer::status(200).after(Duration::from_millis(10)));
    let mut daemon = Served::start(&sled(), &[]);
    let paths = ["/a", "/b"];
    let subscriptions: Vec<String> =
        paths.iter().map(|path| subscribe(&daemon, &receiver.url(path))).collect();

    let acknowledged = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = (0..4)
        .map(|_| {
            let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
            let url = daemon.url("/v1/events");
            std::thread::spawn(move || {
                let agent = client();
                // Bounded, whatever happens to the test.
                for _ in 0..5_000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let mut response = agent
                        .post(&url)
                        .header("Authorization", &format!("Bearer {ACME_KEY}"))
                        .header("Content-Type", "application/json")
                        .send(json!({ "event": "message.received", "data": { "n": 1 } }).to_string())
                        .expect("the daemon answers while it is backed up");
                    assert_eq!(response.status(), 202);
                    let body: serde_json::Value =
                        serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
                    acknowledged.lock().unwrap().push(body["id"].as_str().unwrap().to_owned());
                }
            })
        })
        .collect();

    wait_until("publishing in flow", Duration::from_secs(60), || acknowledged.lock().unwrap().len() >= 300);
    // Every event answered 202 before the backup command starts must be in the backup.
    let before: HashSet<String> = acknowledged.lock().unwrap().iter().cloned().collect();
    let file = daemon.dir.path().join("backup.atwb");
    let config = daemon.config_path.clone();
    let backup = run_binary(&["backup", "--to", path_text(&file), "--config", path_text(&config)]);
    let during = acknowledged.lock().unwrap().len() - before.len();
    stop.store(true, Ordering::SeqCst);
    for publisher in publishers {
        publisher.join().unwrap();
    }
    backup.assert_success();
    assert!(backup.stdout.contains("from the running daemon"), "{backup:#?}");
    assert!(temporary_files(&file).is_empty(), "no temporary file left");
    eprintln!(
        "{} events acknowledged before the backup, {during} while it ran: {}",
        before.len(),
        backup.stdout
    );
    daemon.process.wait_for_stderr("backup sent", Duration::from_secs(5));
    daemon.stop("TERM");
    assert!(!daemon.dir.path().join("data/control.sock").exists(), "the socket is removed at shutdown");

    let target = tempfile::tempdir().unwrap();
    let data = target.path().join("data");
    let restore = run_binary(&["restore", "--from", path_text(&file), "--data-dir", path_text(&data)]);
    restore.assert_success();
    assert!(restore.stdout.starts_with("restored 2 subscriptions, "), "{restore:#?}");

    let restored = Served::start_with_file(target, config_for(target_dir(&data), &data), &[]);
    for (path, subscription) in paths.iter().zip(&subscriptions) {
        let logged = logged_event_ids(&restored, subscription);
        let missing: Vec<_> = before.difference(&logged).take(5).collect();
        assert!(
            missing.is_empty(),
            "events acknowledged before the backup missing from {path}'s log: {missing:?}"
        );
        // And each of them reaches the receiver: before the backup, or from the restored daemon.
        wait_until(
            &format!("every event acknowledged before the backup at {path}"),
            Duration::from_secs(120),
            || {
                let arrived: HashSet<String> = receiver
                    .received()
                    .iter()
                    .filter(|r| r.path == *path)
                    .map(|r| r.json()["id"].as_str().unwrap().to_owned())
                    .collect();
                before.is_subset(&arrived)
            },
        );
    }
}

/// The directory a data dir lives in (where the test keeps its config).
fn target_dir(data: &Path) -> &Path {
    data.parent().unwrap()
}

#[test]
fn a_backup_without_a_daemon_reads_the_data_dir_and_restore_refuses_what_it_cannot_trust() {
    let receiver = Receiver::start();
    let mut daemon = Served::start(&sled(), &[]);
    let subscription = subscribe(&daemon, &receiver.url("/a"));
    let published: Vec<String> = (0..5)
        .map(|n| {
            let reply = daemon.call(
                "POST",
                "/v1/events",
                ACME_KEY,
                Some(json!({ "event": "message.received", "id": format!("order-{n}"), "data": { "n": n } })),
            );
            assert_eq!(reply.status, 202, "{}", reply.text);
            reply.json()["id"].as_str().unwrap().to_owned()
        })
        .collect();
    receiver.wait_for(5, Duration::from_secs(20));
    daemon.stop("TERM");

    let file = daemon.dir.path().join("offline.atwb");
    let config = daemon.config_path.clone();
    let backup = run_binary(&["backup", "--to", path_text(&file), "--config", path_text(&config)]);
    backup.assert_success();
    assert!(backup.stdout.contains("no daemon was running"), "{backup:#?}");
    assert!(
        backup.stdout.contains("1 subscriptions, 5 events, 5 deliveries and 5 idempotency ids"),
        "{backup:#?}"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "a backup holds secrets: owner only");
    let bytes = std::fs::read(&file).unwrap();

    let scratch = tempfile::tempdir().unwrap();
    // A used target: refused, left alone.
    let used = scratch.path().join("used");
    std::fs::create_dir(&used).unwrap();
    std::fs::write(used.join("keep"), b"mine").unwrap();
    let refused = run_binary(&["restore", "--from", path_text(&file), "--data-dir", path_text(&used)]);
    refused.assert_code(1);
    assert!(refused.stderr.contains("is not empty"), "{refused:#?}");
    assert_eq!(std::fs::read(used.join("keep")).unwrap(), b"mine");

    // A truncated file and a file with one byte changed: refused before anything is written.
    let truncated = scratch.path().join("truncated.atwb");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    let mut damaged_bytes = bytes.clone();
    let middle = damaged_bytes.len() / 2;
    damaged_bytes[middle] ^= 0x01;
    let damaged = scratch.path().join("damaged.atwb");
    std::fs::write(&damaged, &damaged_bytes).unwrap();
    for (bad, why) in [(&truncated, "truncated"), (&damaged, "damaged")] {
        let data = scratch.path().join("never");
        let refused = run_binary(&["restore", "--from", path_text(bad), "--data-dir", path_text(&data)]);
        refused.assert_code(1);
        assert!(
            refused.stderr.contains("not a valid backup") && refused.stderr.contains(why),
            "{refused:#?}"
        );
        assert!(!data.exists(), "nothing written for a {why} file");
    }
    let missing = run_binary(&[
        "restore",
        "--from",
        "/nonexistent/backup",
        "--data-dir",
        path_text(&scratch.path().join("x")),
    ]);
    missing.assert_code(1);
    assert!(missing.stderr.contains("cannot read the backup"), "{missing:#?}");

    // The intact file restores (compressed, as an install turning `[storage] compression` on
    // does), and a daemon on it has everything.
    let data = scratch.path().join("data");
    run_binary(&["restore", "--from", path_text(&file), "--data-dir", path_text(&data), "--compression"])
        .assert_success();
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&data).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700, "the restored data dir is the owner's only");
    let conf = String::from_utf8_lossy(&std::fs::read(data.join("conf")).unwrap()).into_owned();
    assert!(conf.contains("use_compression: true"), "{conf}");
    // Its config leaves compression off: the data dir keeps what it was made with, and says so.
    let restored = Served::start_with_file(scratch, config_for(target_dir(&data), &data), &[]);
    assert!(
        restored.process.transcript().contains("applies to new data dirs only"),
        "{}",
        restored.process.transcript()
    );
    let logged = logged_event_ids(&restored, &subscription);
    assert_eq!(logged, published.iter().cloned().collect::<HashSet<_>>());
    let reply = restored.call("GET", &format!("/v1/webhooks/{subscription}"), ACME_KEY, None);
    assert_eq!(reply.status, 200, "{}", reply.text);
    // The idempotency ids came along: a retried publish answers the first event.
    let again = restored.call(
        "POST",
        "/v1/events",
        ACME_KEY,
        Some(json!({ "event": "message.received", "id": "order-0", "data": { "n": 0 } })),
    );
    assert_eq!(
        (again.status, again.json()["id"].as_str()),
        (202, Some(published[0].as_str())),
        "{}",
        again.text
    );
}

#[test]
fn a_backup_refuses_a_held_data_dir_a_missing_one_and_a_postgres_config() {
    let mut daemon = Served::start(&sled(), &[]);
    let file = daemon.dir.path().join("backup.atwb");
    let config = daemon.config_path.clone();

    // A file in the socket's place is never removed: the daemon starts without a socket and
    // says why; it holds sled's lock, so nothing can copy the data, and backup says so.
    daemon.stop("TERM");
    std::fs::write(daemon.dir.path().join("data/control.sock"), b"not a socket").unwrap();
    let mut daemon = daemon.restart(&[]);
    daemon.process.wait_for_stderr("no control socket", Duration::from_secs(5));
    let refused = run_binary(&["backup", "--to", path_text(&file), "--config", path_text(&config)]);
    refused.assert_code(1);
    assert!(
        refused.stderr.contains("is in use by another process")
            && refused.stderr.contains("its log says why"),
        "{refused:#?}"
    );
    assert!(!file.exists() && temporary_files(&file).is_empty(), "no file left behind");
    assert_eq!(std::fs::read(daemon.dir.path().join("data/control.sock")).unwrap(), b"not a socket");

    // A destination whose directory does not exist.
    let nowhere = daemon.dir.path().join("no/such/dir/backup.atwb");
    let refused = run_binary(&["backup", "--to", path_text(&nowhere), "--config", path_text(&config)]);
    refused.assert_code(1);
    assert!(refused.stderr.contains("cannot create"), "{refused:#?}");
    daemon.stop("TERM");

    // A data dir with no database in it.
    let empty = tempfile::tempdir().unwrap();
    let empty_config = config_for(empty.path(), &empty.path().join("data"));
    let refused = run_binary(&["backup", "--to", path_text(&file), "--config", path_text(&empty_config)]);
    refused.assert_code(1);
    assert!(refused.stderr.contains("holds no sled database"), "{refused:#?}");
    assert_eq!(refused.stderr.matches("holds no sled database").count(), 1, "said once: {refused:#?}");
    assert!(!empty.path().join("data").exists(), "a backup never creates a data dir");

    // PostgreSQL: its own tools. No server needed to say so.
    let pg = Setup {
        storage: Storage::Postgres("postgres://atender@127.0.0.1:1/atender".into()),
        ..Setup::default()
    };
    let pg_config = empty.path().join("pg.toml");
    std::fs::write(&pg_config, pg.config_text(&empty.path().join("data"), "127.0.0.1:0")).unwrap();
    let refused = run_binary(&["backup", "--to", path_text(&file), "--config", path_text(&pg_config)]);
    refused.assert_code(1);
    assert!(refused.stderr.contains("pg_dump") && refused.stderr.contains("pg_basebackup"), "{refused:#?}");
}

#[test]
fn backup_and_restore_are_listed_with_their_flags() {
    let out = run_binary(&["--help"]);
    out.assert_success();
    for command in ["backup", "restore"] {
        assert!(out.stdout.lines().any(|line| line.trim_start().starts_with(command)), "{}", out.stdout);
    }
    for (command, flags) in [("backup", ["--to", "--config"]), ("restore", ["--from", "--data-dir"])] {
        let out = run_binary(&[command, "--help"]);
        out.assert_success();
        for flag in flags {
            assert!(out.stdout.contains(flag), "{command} --help does not mention {flag}:\n{}", out.stdout);
        }
    }
    // Both flags of restore are required: a usage error (2) names what is missing.
    let usage = run_binary(&["restore", "--from", "x"]);
    usage.assert_code(2);
    assert!(usage.stderr.contains("--data-dir"), "{usage:#?}");
}

/// A tmpfs of `size` mounted at `path` for one test (needs root, as the fault tests do),
/// unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", path_text(path)])
            .status()
            .unwrap();
        assert!(status.success(), "mount a tmpfs (the test needs root)");
        Tmpfs(path.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_backup_onto_a_full_disk_fails_leaving_no_file_and_the_daemon_unharmed() {
    let receiver = Receiver::start();
    let mut daemon = Served::start(&sled(), &[]);
    subscribe(&daemon, &receiver.url("/a"));
    let blob = "x".repeat(4096);
    for n in 0..200 {
        let body = json!({ "event": "message.received", "data": { "n": n, "blob": blob } });
        let reply = daemon.call("POST", "/v1/events", ACME_KEY, Some(body));
        assert_eq!(reply.status, 202, "{}", reply.text);
    }
    let config = daemon.config_path.clone();

    // About 1 MB of backup onto 256 KiB.
    let full = Tmpfs::mount(&daemon.dir.path().join("full"), "256k");
    let file = full.0.join("backup.atwb");
    let refused = run_binary(&["backup", "--to", path_text(&file), "--config", path_text(&config)]);
    refused.assert_code(1);
    assert!(refused.stderr.contains("No space left on device"), "{refused:#?}");
    let left: Vec<_> = std::fs::read_dir(&full.0).unwrap().collect();
    assert!(left.is_empty(), "the temporary file is removed: {left:?}");

    // The daemon goes on, and the next backup elsewhere succeeds.
    let reply =
        daemon.call("POST", "/v1/events", ACME_KEY, Some(json!({ "event": "message.received", "data": {} })));
    assert_eq!(reply.status, 202, "{}", reply.text);
    let file = daemon.dir.path().join("backup.atwb");
    let backup = run_binary(&["backup", "--to", path_text(&file), "--config", path_text(&config)]);
    backup.assert_success();
    assert!(backup.stdout.contains("201 events"), "{backup:#?}");
    let health = daemon.call("GET", "/healthz", ACME_KEY, None);
    assert_eq!(health.status, 200, "{}", health.text);
    drop(full);
    daemon.stop("TERM");
}

/// The temporary files (`FILE.<pid>.tmp`) of backups to `file` left in its directory.
fn temporary_files(file: &Path) -> Vec<String> {
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::read_dir(file.parent().unwrap())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|entry| entry.starts_with(&format!("{name}.")) && entry.ends_with(".tmp"))
        .collect()
}

/// A backup timer and a manual run to the same file at once: each writes its own temporary
/// file, both succeed (the daemon serves them one after the other), and the file is a whole,
/// verified backup.
#[test]
fn two_backups_to_one_file_at_once_both_succeed() {
    let daemon = Served::start(&sled(), &[]);
    let receiver = Receiver::start();
    subscribe(&daemon, &receiver.url("/a"));
    for n in 0..20 {
        let reply = daemon.call(
            "POST",
            "/v1/events",
            ACME_KEY,
            Some(json!({ "event": "message.received", "data": { "n": n } })),
        );
        assert_eq!(reply.status, 202, "{}", reply.text);
    }
    let file = daemon.dir.path().join("same.atwb");
    let config = daemon.config_path.clone();
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let (file, config) = (file.clone(), config.clone());
            std::thread::spawn(move || {
                run_binary(&["backup", "--to", path_text(&file), "--config", path_text(&config)])
            })
        })
        .collect();
    for run in runs {
        run.join().unwrap().assert_success();
    }
    assert!(temporary_files(&file).is_empty(), "no temporary file left");
    let scratch = tempfile::tempdir().unwrap();
    let data = scratch.path().join("data");
    let restore = run_binary(&["restore", "--from", path_text(&file), "--data-dir", path_text(&data)]);
    restore.assert_success();
    assert!(restore.stdout.contains("20 events"), "{restore:#?}");
}
