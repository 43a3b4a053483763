//! Subscription secrets encrypted at rest (`[secrets] key_file`), on both backends: no secret
//! in the data files (or the PostgreSQL table and cluster files) of a daemon keyed from the
//! start, while its deliveries still verify with the current and the retired secret; plaintext
//! secrets sealed at the first start with a key; a start refused without the key or with
//! another one, naming the key expected; `rotate-master-key`, re-runnable, after which the new
//! key starts and the old one is refused; `migrate-storage` carrying sealed secrets from sled
//! into PostgreSQL; and the key file's and the commands' bad inputs.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use atender_webhooks::secrets::MasterKey;
use atender_webhooks::{Config, Daemon};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::json;
use sha2::Sha256;

use crate::process::run_binary;
use crate::support::*;

const LONG: Duration = Duration::from_secs(20);

/// A test's files: key files and config files, beside (not in) the daemon's data dir.
struct Files(tempfile::TempDir);

impl Files {
    fn new() -> Files {
        Files(tempfile::tempdir().unwrap())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    /// A new key file as `master-keygen` writes it (64 hex characters, mode 0600); its id.
    fn hex_key(&self, name: &str) -> (PathBuf, String) {
        let path = self.path(name);
        let key = MasterKey::create_file(&path).unwrap();
        (path, key.id().to_owned())
    }

    /// A key file of 32 raw bytes (`head -c 32 /dev/urandom > FILE`); its id.
    fn raw_key(&self, name: &str) -> (PathBuf, String) {
        let path = self.path(name);
        std::fs::write(&path, atender_webhooks::model::random_bytes::<32>()).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let id = MasterKey::load(&path).unwrap().id().to_owned();
        (path, id)
    }
}

/// The test default with `[secrets] key_file` set (or not).
fn keyed(key_file: Option<&Path>) -> Setup {
    let extra =
        key_file.map(|path| format!("[secrets]\nkey_file = \"{}\"\n", path.display())).unwrap_or_default();
    Setup { extra, ..Setup::default() }
}

/// A daemon's config text with another `[secrets]`: same data, same database.
fn config_text(daemon: &TestDaemon, key_file: Option<&Path>) -> String {
    Setup { storage: daemon.setup.storage.clone(), ..keyed(key_file) }
        .config_text(&daemon.data_dir, "127.0.0.1:0")
}

/// The error of a daemon that does not start on `text` (sled's lock of a daemon that just
/// stopped is waited out).
fn refused_start(text: &str) -> String {
    let config = Config::parse(text).expect("test config is valid");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match runtime.block_on(Daemon::start(config.clone())) {
            Ok(daemon) => {
                let _ = runtime.block_on(daemon.shutdown(Duration::from_secs(5)));
                panic!("the daemon started");
            }
            Err(err) if Instant::now() < deadline && format!("{err:#}").contains("lock") => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(err) => return format!("{err:#}"),
        }
    }
}

/// Runs the binary with `args` once sled's lock of a daemon that just stopped is released (its
/// last threads let go of the database asynchronously).
fn run_when_unlocked(args: &[&str]) -> crate::process::Finished {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = run_binary(args);
        if out.stderr.contains("could not acquire lock") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        return out;
    }
}

fn subscribe(daemon: &TestDaemon, url: String) -> (String, String) {
    let created = daemon.create_subscription(
        ACME_KEY,
        json!({ "name": "listener", "url": url, "events": ["message.received"] }),
    );
    (created["id"].as_str().unwrap().to_owned(), created["secret"].as_str().unwrap().to_owned())
}

/// The guide's recipe, written independently of the daemon's signer.
fn atender_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Publishes one event and checks the delivery at `path`: `X-Atender-Signature` by `current`,
/// and the Standard Webhooks signature by `current` and by every `retired` secret.
fn delivery_verifies(daemon: &TestDaemon, receiver: &Receiver, path: &str, current: &str, retired: &[&str]) {
    let before = receiver.received().iter().filter(|received| received.path == path).count();
    let published = daemon.publish(ACME_KEY, "message.received", json!({ "n": before }));
    let event_id = published["id"].as_str().unwrap().to_owned();
    let mut delivery = None;
    wait_until("the delivery arrives", LONG, || {
        delivery = receiver
            .received()
            .into_iter()
            .find(|received| received.path == path && received.json()["id"] == event_id.as_str());
        delivery.is_some()
    });
    let delivery = delivery.unwrap();
    assert_eq!(
        delivery.header("X-Atender-Signature"),
        Some(atender_signature(current, &delivery.body).as_str())
    );
    assert!(standard_webhooks_verifies(current, &delivery), "current secret");
    for secret in retired {
        assert!(standard_webhooks_verifies(secret, &delivery), "retired secret");
    }
}

/// What must not appear at rest for `secret`: the whole string, its base64 body, and the 32
/// bytes it encodes.
fn needles(secret: &str) -> Vec<Vec<u8>> {
    let body = secret.strip_prefix("whsec_").expect("a whsec_ secret");
    let raw = base64::engine::general_purpose::STANDARD.decode(body).unwrap();
    vec![secret.as_bytes().to_vec(), body.as_bytes().to_vec(), raw]
}

/// Every file under `dir` (recursively) that holds one of `secrets` in any of its forms, with
/// the form found. Reads every byte of every file.
fn files_holding(dir: &Path, secrets: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    let mut files = 0;
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            if !path.is_file() {
                // The daemon's control socket (backups) holds no data.
                continue;
            }
            files += 1;
            let bytes = std::fs::read(&path).unwrap();
            for secret in secrets {
                for needle in needles(secret) {
                    if bytes.windows(needle.len()).any(|window| window == needle.as_slice()) {
                        found.push(format!("{} holds {}", path.display(), String::from_utf8_lossy(&needle)));
                    }
                }
            }
        }
    }
    assert!(files > 0, "no files under {}", dir.display());
    found
}

/// Every stored secret value (current and retired) of the PostgreSQL table.
fn stored_values(cluster: &crate::pg::PgCluster) -> Vec<String> {
    cluster
        .psql("SELECT secret FROM subscriptions UNION ALL SELECT retired_secret FROM subscriptions WHERE retired_secret IS NOT NULL")
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn no_secret_is_in_the_data_files_of_a_keyed_daemon_and_deliveries_still_verify() {
    let files = Files::new();
    let (key_file, key_id) = files.hex_key("master.key");
    let receiver = Receiver::start();
    let mut daemon = TestDaemon::with(keyed(Some(&key_file)));
    let (rotated, first) = subscribe(&daemon, receiver.url("/rotated"));
    let (_, other) = subscribe(&daemon, receiver.url("/other"));
    let second = daemon.rotate_with_grace(&rotated);
    let third = daemon.rotate_with_grace(&rotated);

    delivery_verifies(&daemon, &receiver, "/rotated", &third, &[&second]);
    delivery_verifies(&daemon, &receiver, "/other", &other, &[]);
    // The API reads secrets back as they were (a rotation answers the new one only).
    let stored = daemon.stored("acme", &rotated).expect("stored");
    assert_eq!(stored.secret.expose(), third);
    assert_eq!(stored.retired_secret.as_ref().unwrap().secret.expose(), second);

    assert!(daemon.stop());
    let secrets = [first.as_str(), second.as_str(), third.as_str(), other.as_str()];
    if daemon.pg.is_none() {
        let found = files_holding(&daemon.data_dir, &secrets);
        assert!(found.is_empty(), "secrets at rest in the data dir: {found:#?}");
    }
    if let Some(cluster) = &daemon.pg {
        let values = stored_values(cluster);
        assert_eq!(values.len(), 3, "{values:?}");
        for value in &values {
            assert!(value.starts_with(&format!("enc:v1:{key_id}:")), "{value}");
        }
        cluster.psql("CHECKPOINT");
        let found = files_holding(&cluster.data(), &secrets);
        assert!(found.is_empty(), "secrets at rest in the PostgreSQL cluster: {found:#?}");
    }
}

#[test]
fn plaintext_secrets_are_sealed_at_the_first_start_with_a_key() {
    let files = Files::new();
    let receiver = Receiver::start();
    let mut daemon = TestDaemon::with(keyed(None));
    let (id, first) = subscribe(&daemon, receiver.url("/hook"));
    let second = daemon.rotate_with_grace(&id);
    // Without a key the secrets are stored as they are: what the checks below would find.
    match &daemon.pg {
        Some(cluster) => {
            assert_eq!(stored_values(cluster), vec![second.clone(), first.clone()], "plaintext before a key")
        }
        None => {
            // Creating and rotating are durable before their answers: on disk already.
            assert!(
                !files_holding(&daemon.data_dir, &[&first, &second]).is_empty(),
                "plaintext before a key"
            );
        }
    }

    let (key_file, key_id) = files.raw_key("master.key");
    daemon = daemon.restart_with(keyed(Some(&key_file)));
    delivery_verifies(&daemon, &receiver, "/hook", &second, &[&first]);
    // A second start with the key finds nothing left to seal and reads the same secrets.
    daemon = daemon.restart_with(keyed(Some(&key_file)));
    delivery_verifies(&daemon, &receiver, "/hook", &second, &[&first]);
    assert!(daemon.stop());

    match &daemon.pg {
        Some(cluster) => {
            for value in stored_values(cluster) {
                assert!(value.starts_with(&format!("enc:v1:{key_id}:")), "{value}");
            }
        }
        None => {
            // The current record is sealed: without the key, the store refuses to read it.
            let deadline = Instant::now() + Duration::from_secs(10);
            let store = loop {
                match atender_webhooks::store::SledStore::open(&daemon.data_dir) {
                    Ok(store) => break store,
                    Err(err) if Instant::now() < deadline && err.to_string().contains("lock") => {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(err) => panic!("{err}"),
                }
            };
            let id = atender_webhooks::model::SubscriptionId::parse(&id).unwrap();
            let err = store.subscription_by_id(&id).unwrap_err().to_string();
            assert!(err.contains(&key_id), "{err}");
        }
    }
}

#[test]
fn a_start_without_the_key_or_with_another_is_refused_naming_the_key_expected() {
    let files = Files::new();
    let (key_file, key_id) = files.hex_key("master.key");
    let (other_file, other_id) = files.hex_key("other.key");
    let receiver = Receiver::start();
    let mut daemon = TestDaemon::with(keyed(Some(&key_file)));
    let (_, secret) = subscribe(&daemon, receiver.url("/hook"));
    assert!(daemon.stop());

    let without = refused_start(&config_text(&daemon, None));
    assert!(without.contains(&format!("sealed under master key {key_id}")), "{without}");
    assert!(without.contains("no [secrets] key_file is configured"), "{without}");
    let other = refused_start(&config_text(&daemon, Some(&other_file)));
    assert!(other.contains(&format!("sealed under master key {key_id}")), "{other}");
    assert!(other.contains(&format!("holds master key {other_id}")), "{other}");

    // A key file that is not a key, or not there: the start is refused naming the file.
    let short = files.path("short.key");
    std::fs::write(&short, "0123456789abcdef\n").unwrap();
    let bad = refused_start(&config_text(&daemon, Some(&short)));
    assert!(
        bad.contains(&format!("the master key file {} must hold a 32-byte key", short.display())),
        "{bad}"
    );
    assert!(bad.contains("it holds 17 bytes"), "{bad}");
    assert!(!bad.contains("0123456789abcdef"), "the content is never shown: {bad}");
    let missing = refused_start(&config_text(&daemon, Some(&files.path("absent.key"))));
    assert!(
        missing.contains("cannot read the master key file") && missing.contains("absent.key"),
        "{missing}"
    );

    // Nothing was changed by the refusals: the right key still starts and signs.
    daemon = daemon.restart_with(keyed(Some(&key_file)));
    delivery_verifies(&daemon, &receiver, "/hook", &secret, &[]);
}

#[test]
fn rotate_master_key_re_encrypts_everything_then_only_the_new_key_starts() {
    let files = Files::new();
    let (old_file, old_id) = files.hex_key("old.key");
    let (new_file, new_id) = files.raw_key("new.key");
    let receiver = Receiver::start();
    let mut daemon = TestDaemon::with(keyed(Some(&old_file)));
    let (id, first) = subscribe(&daemon, receiver.url("/hook"));
    let second = daemon.rotate_with_grace(&id);
    let (_, other) = subscribe(&daemon, receiver.url("/other"));
    let config = files.path("config.toml");
    std::fs::write(&config, config_text(&daemon, Some(&old_file))).unwrap();
    let rotate = [
        "rotate-master-key",
        "--new-key-file",
        new_file.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ];

    if daemon.pg.is_none() {
        // sled's lock: no rotation under a running daemon.
        let busy = run_binary(&rotate);
        busy.assert_code(1);
        assert!(busy.stderr.contains("is the daemon still running? stop it first"), "{}", busy.stderr);
    }
    assert!(daemon.stop());

    let rotated = run_when_unlocked(&rotate);
    rotated.assert_success();
    assert!(
        rotated.stdout.contains(&format!(
            "re-encrypted 2 of 2 subscriptions under master key {new_id} (was master key {old_id})"
        )),
        "{}",
        rotated.stdout
    );
    // Run again (after an interruption, say): everything is under the new key already.
    let again = run_binary(&rotate);
    again.assert_success();
    assert!(again.stdout.contains("re-encrypted 0 of 2 subscriptions"), "{}", again.stdout);
    if let Some(cluster) = &daemon.pg {
        for value in stored_values(cluster) {
            assert!(value.starts_with(&format!("enc:v1:{new_id}:")), "{value}");
        }
    }

    let old = refused_start(&config_text(&daemon, Some(&old_file)));
    assert!(old.contains(&format!("sealed under master key {new_id}")), "{old}");
    assert!(old.contains(&format!("holds master key {old_id}")), "{old}");

    daemon = daemon.restart_with(keyed(Some(&new_file)));
    delivery_verifies(&daemon, &receiver, "/hook", &second, &[&first]);
    delivery_verifies(&daemon, &receiver, "/other", &other, &[]);
}

#[test]
fn rotate_master_key_refuses_bad_input_and_changes_nothing() {
    let files = Files::new();
    let (key_file, key_id) = files.hex_key("master.key");
    let (stranger_file, _) = files.hex_key("stranger.key");
    let receiver = Receiver::start();
    let mut daemon = TestDaemon::with(keyed(Some(&key_file)));
    let (_, secret) = subscribe(&daemon, receiver.url("/hook"));
    assert!(daemon.stop());
    let run = |config_key: Option<&Path>, new_key: &Path| {
        let config = files.path("config.toml");
        std::fs::write(&config, config_text(&daemon, config_key)).unwrap();
        run_when_unlocked(&[
            "rotate-master-key",
            "--new-key-file",
            new_key.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ])
    };

    // A new key file that is not a key.
    let bad = files.path("bad.key");
    std::fs::write(&bad, "whsec_not_a_key").unwrap();
    let out = run(Some(&key_file), &bad);
    out.assert_code(1);
    assert!(
        out.stderr.contains("the new key is not usable") && out.stderr.contains("must hold a 32-byte key"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("whsec_not_a_key"), "{}", out.stderr);
    // A current key that is not the one the secrets are sealed under: refused, naming it.
    let out = run(Some(&stranger_file), &files.hex_key("new.key").0);
    out.assert_code(1);
    assert!(out.stderr.contains(&format!("sealed under master key {key_id}")), "{}", out.stderr);
    // No current key at all.
    let out = run(None, &files.hex_key("newer.key").0);
    out.assert_code(1);
    assert!(out.stderr.contains(&format!("sealed under master key {key_id}")), "{}", out.stderr);
    assert!(out.stderr.contains("nor --new-key-file holds it"), "{}", out.stderr);

    daemon = daemon.restart_with(keyed(Some(&key_file)));
    delivery_verifies(&daemon, &receiver, "/hook", &secret, &[]);
}

#[test]
fn check_config_validates_the_key_file_and_master_keygen_writes_a_private_one() {
    use std::os::unix::fs::PermissionsExt as _;
    let files = Files::new();
    let key_file = files.path("master.key");
    let made = run_binary(&["master-keygen", "--out", key_file.to_str().unwrap()]);
    made.assert_success();
    let key_id = MasterKey::load(&key_file).unwrap().id().to_owned();
    assert!(made.stdout.contains(&format!("key id {key_id}")), "{}", made.stdout);
    assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
    let content = std::fs::read_to_string(&key_file).unwrap();
    assert!(!made.stdout.contains(content.trim()), "the key is never printed");
    // Never over an existing file.
    let again = run_binary(&["master-keygen", "--out", key_file.to_str().unwrap()]);
    again.assert_code(1);
    assert!(again.stderr.contains("cannot write the master key file"), "{}", again.stderr);
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), content);

    let data = files.path("data");
    let check = |extra: &str| {
        let config = files.path("config.toml");
        std::fs::write(
            &config,
            Setup { extra: extra.to_owned(), ..Setup::default() }.config_text(&data, "127.0.0.1:0"),
        )
        .unwrap();
        run_binary(&["check-config", "--config", config.to_str().unwrap()])
    };
    let ok = check(&format!("[secrets]\nkey_file = \"{}\"\n", key_file.display()));
    ok.assert_success();
    assert!(ok.stdout.contains(&format!("secrets.key_file holds master key {key_id}")), "{}", ok.stdout);
    assert!(!ok.stderr.contains("warning"), "{}", ok.stderr);

    // Readable by others: valid, with a warning.
    std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let open = check(&format!("[secrets]\nkey_file = \"{}\"\n", key_file.display()));
    open.assert_success();
    assert!(open.stderr.contains("may be read by its group or others (mode 0644)"), "{}", open.stderr);

    // No key: valid, and it says secrets are stored unencrypted.
    let none = check("");
    none.assert_success();
    assert!(none.stdout.contains("subscription secrets are stored unencrypted"), "{}", none.stdout);

    // Bad inputs, each naming what is wrong.
    let short = files.path("short.key");
    std::fs::write(&short, [7u8; 31]).unwrap();
    for (extra, expected) in [
        (format!("[secrets]\nkey_file = \"{}\"\n", short.display()), "it holds 31 bytes".to_owned()),
        (
            format!("[secrets]\nkey_file = \"{}\"\n", files.path("absent").display()),
            "cannot read the master key file".to_owned(),
        ),
        ("[secrets]\nkey_file = \"\"\n".to_owned(), "secrets.key_file: must not be empty".to_owned()),
        ("[secrets]\nkeyfile = \"/x\"\n".to_owned(), "unknown field `keyfile`".to_owned()),
        ("[secrets]\nkey_file = 5\n".to_owned(), "invalid type".to_owned()),
    ] {
        let out = check(&extra);
        out.assert_code(1);
        assert!(out.stderr.contains(&expected), "{extra}: {}", out.stderr);
    }
}

#[test]
fn migrate_storage_carries_sealed_secrets_from_sled_into_postgres() {
    let files = Files::new();
    let (key_file, key_id) = files.hex_key("master.key");
    let receiver = Receiver::start();
    let mut daemon = TestDaemon::with(Setup { storage: Storage::Sled, ..keyed(Some(&key_file)) });
    let (id, first) = subscribe(&daemon, receiver.url("/hook"));
    let second = daemon.rotate_with_grace(&id);
    assert!(daemon.stop());

    let cluster = crate::pg::PgCluster::start();
    let config = files.path("config.toml");
    let migrate =
        ["migrate-storage", "--from", "sled", "--to", "postgres", "--config", config.to_str().unwrap()];
    let on_postgres =
        |key_file: Option<&Path>| Setup { storage: Storage::Postgres(cluster.url()), ..keyed(key_file) };
    // Without the key the sled data does not read: refused, naming the key.
    std::fs::write(&config, on_postgres(None).config_text(&daemon.data_dir, "127.0.0.1:0")).unwrap();
    let refused = run_when_unlocked(&migrate);
    refused.assert_code(1);
    assert!(refused.stderr.contains(&format!("sealed under master key {key_id}")), "{}", refused.stderr);

    std::fs::write(&config, on_postgres(Some(&key_file)).config_text(&daemon.data_dir, "127.0.0.1:0"))
        .unwrap();
    let copied = run_when_unlocked(&migrate);
    copied.assert_success();
    assert!(copied.stdout.contains("copied 1 subscriptions"), "{}", copied.stdout);
    let values = stored_values(&cluster);
    assert_eq!(values.len(), 2, "{values:?}");
    for value in values {
        assert!(value.starts_with(&format!("enc:v1:{key_id}:")), "{value}");
    }
    let moved = TestDaemon::with(on_postgres(Some(&key_file)));
    delivery_verifies(&moved, &receiver, "/hook", &second, &[&first]);
}
