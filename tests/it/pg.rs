//! A PostgreSQL cluster of its own for a test: Debian's `postgresql` binaries, a data dir in a
//! temp dir (copied from one `initdb` per test process), a free loopback port, no pre-existing
//! server. The cluster runs as the `postgres` system user (PostgreSQL refuses to run as root).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Which storage the integration suite runs against: `ATENDER_TEST_STORAGE=postgres` runs every
/// test that is not about the data dir on a PostgreSQL cluster of its own; unset or `sled`, on
/// sled.
pub fn suite_uses_postgres() -> bool {
    match std::env::var("ATENDER_TEST_STORAGE").as_deref() {
        Ok("postgres") => true,
        Ok("sled") | Ok("") | Err(_) => false,
        Ok(other) => panic!("ATENDER_TEST_STORAGE must be sled or postgres, not {other:?}"),
    }
}

/// How many daemons each test daemon is under `ATENDER_TEST_STORAGE=postgres`:
/// `ATENDER_TEST_NODES=2` starts a second one on the same database and sends every other request
/// to it (a load balancer's view); unset, one.
pub fn suite_nodes() -> usize {
    match std::env::var("ATENDER_TEST_NODES").as_deref() {
        Ok("2") => 2,
        Ok("1") | Ok("") | Err(_) => 1,
        Ok(other) => panic!("ATENDER_TEST_NODES must be 1 or 2, not {other:?}"),
    }
}

/// A running cluster; stopped (immediately) when dropped.
pub struct PgCluster {
    dir: tempfile::TempDir,
    port: u16,
    /// Whether the server syncs its WAL to disk (benchmarks); tests run without.
    fsync: bool,
}

/// The newest PostgreSQL's `bin` directory of Debian's packages.
fn bin_dir() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, entry.path().join("bin"))))
            .filter(|(_, bin)| bin.join("pg_ctl").exists())
            .collect();
        versions.sort();
        versions.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
            panic!("PostgreSQL is not installed: `apt-get install postgresql` (.ci/run installs it when missing)")
        })
    })
}

/// Runs a PostgreSQL program as the `postgres` user; panics with its output when it fails.
fn as_postgres(program: &str, args: &[&str]) {
    let output = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin_dir().join(program))
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run {program}: {err}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn chown_postgres(path: &Path) {
    let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(path).status().unwrap();
    assert!(status.success(), "cannot chown {}", path.display());
}

/// One `initdb` per test process; every cluster starts from a copy of it.
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<tempfile::TempDir> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let dir = tempfile::Builder::new().prefix("atender-pg-template").tempdir().unwrap();
            chown_postgres(dir.path());
            let data = dir.path().join("data");
            let data_text = data.to_str().unwrap();
            as_postgres(
                "initdb",
                &["-D", data_text, "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"],
            );
            dir
        })
        .path()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl PgCluster {
    /// Starts a fresh cluster on a free loopback port, without fsync (tests never crash the
    /// server's host, and it keeps the suite fast).
    pub fn start() -> PgCluster {
        PgCluster::start_with(false)
    }

    /// Starts a fresh cluster that syncs its WAL like a production server (`fsync = on`,
    /// `synchronous_commit = on`), for benchmarks.
    pub fn start_durable() -> PgCluster {
        PgCluster::start_with(true)
    }

    fn start_with(fsync: bool) -> PgCluster {
        let cluster = PgCluster::copy_template(fsync);
        cluster.start_server();
        cluster
    }

    fn copy_template(fsync: bool) -> PgCluster {
        let dir = tempfile::Builder::new().prefix("atender-pg").tempdir().unwrap();
        let status =
            Command::new("cp").arg("-a").arg(template().join("data")).arg(dir.path()).status().unwrap();
        assert!(status.success(), "cannot copy the template cluster");
        chown_postgres(dir.path());
        PgCluster { dir, port: free_port(), fsync }
    }

    /// Starts a fresh cluster that accepts TLS connections only (`hostssl` in `pg_hba.conf`),
    /// with a server certificate for 127.0.0.1 signed by a CA of its own; returns the CA
    /// certificate's PEM file. Needs the `openssl` command (`.ci/run` installs it).
    pub fn start_tls() -> (PgCluster, PathBuf) {
        let cluster = PgCluster::copy_template(false);
        let dir = cluster.dir.path();
        let openssl = |args: &[&str]| {
            let output = Command::new("openssl").args(args).current_dir(dir).output().unwrap_or_else(|err| {
                panic!("openssl is needed for the TLS test ({err}); .ci/run installs it (Debian: openssl)")
            });
            assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        openssl(
            &[
                &["req", "-x509"],
                &ec[..],
                &["-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=atender test CA", "-days", "2"],
            ]
            .concat(),
        );
        openssl(
            &[&["req"], &ec[..], &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]]
                .concat(),
        );
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ]);
        chown_postgres(dir);
        std::fs::set_permissions(dir.join("server.key"), std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let data = cluster.data();
        let mut conf = std::fs::OpenOptions::new().append(true).open(data.join("postgresql.conf")).unwrap();
        std::io::Write::write_all(
            &mut conf,
            format!(
                "\nssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\n",
                dir.join("server.crt").display(),
                dir.join("server.key").display()
            )
            .as_bytes(),
        )
        .unwrap();
        std::fs::write(data.join("pg_hba.conf"), "local all all trust\nhostssl all all 127.0.0.1/32 trust\n")
            .unwrap();
        cluster.start_server();
        let ca = dir.join("ca.crt");
        (cluster, ca)
    }

    /// The cluster's data directory (tables, WAL).
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn start_server(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync={} -c max_connections=300",
            self.port,
            self.dir.path().display(),
            if self.fsync { "on" } else { "off" }
        );
        let log = self.dir.path().join("server.log");
        // A port taken meanwhile by someone else makes the start fail: try a few.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let output = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(bin_dir().join("pg_ctl"))
                .args(["-D", self.data().to_str().unwrap(), "-o", &options, "-l", log.to_str().unwrap()])
                .args(["-w", "-t", "30", "start"])
                .output()
                .unwrap();
            if output.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "PostgreSQL does not start: {}\n{}",
                String::from_utf8_lossy(&output.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (fast shutdown: connections are cut, nothing committed is lost).
    pub fn stop(&self) {
        as_postgres("pg_ctl", &["-D", self.data().to_str().unwrap(), "-m", "fast", "-w", "stop"]);
    }

    /// Starts the stopped server again on the same port.
    pub fn resume(&self) {
        self.start_server();
    }

    /// Runs SQL with psql and returns its unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        let output = Command::new(bin_dir().join("psql"))
            .args([
                "-X",
                "-A",
                "-t",
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(output.status.success(), "psql {sql:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(bin_dir().join("pg_ctl"))
            .args(["-D", self.data().to_str().unwrap(), "-m", "immediate", "-w", "stop"])
            .output();
    }
}
