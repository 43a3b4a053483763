//! Real child processes for the CLI, packaging and docs tests: the built binary or an example
//! program, with its output lines collected as they arrive, signals sent with kill(1), and the
//! child killed if a test fails before stopping it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

use crate::support::{call_json, wait_until, Reply, Setup, Storage};

/// How long a child gets to start or stop.
const LONG: Duration = Duration::from_secs(20);

/// The binary under test, built by cargo for this test run.
pub const BIN: &str = env!("CARGO_BIN_EXE_atender-webhooks");

/// The repository root, for the files the tests check (unit, config example, docs).
pub fn repo_path(relative: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// A command for the binary with a predictable environment: plain info-level logs, and no
/// systemd notification socket inherited from whatever runs the tests.
pub fn binary() -> Command {
    let mut command = Command::new(BIN);
    command.env("ATENDER_LOG", "info").env_remove("NOTIFY_SOCKET");
    command
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Panics with everything the command printed unless it exited 0.
    pub fn assert_success(&self) -> &Finished {
        assert!(self.status.success(), "expected success, got {self:#?}");
        self
    }

    /// Panics unless the command exited with `code`.
    pub fn assert_code(&self, code: i32) -> &Finished {
        assert_eq!(self.code(), Some(code), "unexpected exit code: {self:#?}");
        self
    }
}

/// Runs `command` to completion with `stdin` as its standard input.
pub fn run(mut command: Command, stdin: &[u8]) -> Finished {
    let program = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot run {program}: {err}"));
    // Written from a thread so a child that prints a lot before reading cannot deadlock us.
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    Finished {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs the binary with `args` and no input.
pub fn run_binary(args: &[&str]) -> Finished {
    let mut command = binary();
    command.args(args);
    run(command, b"")
}

/// A long-running child whose stdout and stderr lines are collected in the background.
pub struct Running {
    child: Child,
    name: String,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    /// The threads reading stdout and stderr; joined once the child exits, so that every line
    /// it printed has been collected before a test looks at them.
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

fn collect(stream: impl Read + Send + 'static, lines: Arc<Mutex<Vec<String>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            lines.lock().unwrap().push(line);
        }
    })
}

impl Running {
    /// Starts `command` with piped output and no input.
    pub fn start(mut command: Command) -> Running {
        let name = format!("{command:?}");
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {name}: {err}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().unwrap(), stdout.clone()),
            collect(child.stderr.take().unwrap(), stderr.clone()),
        ];
        Running { child, name, stdout, stderr, readers, status: None }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Everything printed so far, for assertion messages.
    pub fn transcript(&self) -> String {
        format!(
            "{}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.name,
            self.stdout_lines().join("\n"),
            self.stderr_lines().join("\n")
        )
    }

    /// How many stderr lines contain `needle`.
    pub fn stderr_count(&self, needle: &str) -> usize {
        self.stderr.lock().unwrap().iter().filter(|line| line.contains(needle)).count()
    }

    /// How many stdout lines contain `needle`.
    pub fn stdout_count(&self, needle: &str) -> usize {
        self.stdout.lock().unwrap().iter().filter(|line| line.contains(needle)).count()
    }

    /// Whether the child has exited (remembering its status); once it has, all its output is in.
    pub fn has_exited(&mut self) -> bool {
        if self.status.is_none() {
            self.status = self.child.try_wait().unwrap();
        }
        if self.status.is_some() {
            for reader in self.readers.drain(..) {
                let _ = reader.join();
            }
        }
        self.status.is_some()
    }

    /// Waits until some line of `stream` satisfies `found` and returns the first such line;
    /// panics with the transcript when the child exits first or `timeout` passes.
    fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        stream: fn(&Running) -> &Arc<Mutex<Vec<String>>>,
        found: impl Fn(&str) -> bool,
    ) -> String {
        let mut hit = None;
        let mut exited = false;
        wait_until(what, timeout, || {
            // Checked before and after: the lines are complete once the child has exited.
            exited = self.has_exited();
            hit = stream(self).lock().unwrap().iter().find(|line| found(line)).cloned();
            hit.is_some() || exited
        });
        match hit {
            Some(line) => line,
            None => panic!("exited before printing {what}: {:?}\n{}", self.status, self.transcript()),
        }
    }

    /// Waits for a stderr line containing `needle`.
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) -> String {
        self.wait_for(&format!("{needle:?} on stderr"), timeout, |r| &r.stderr, |line| line.contains(needle))
    }

    /// Waits for a stdout line containing `needle`.
    pub fn wait_for_stdout(&mut self, needle: &str, timeout: Duration) -> String {
        self.wait_for(&format!("{needle:?} on stdout"), timeout, |r| &r.stdout, |line| line.contains(needle))
    }

    /// Waits until the stderr lines containing `needle` number at least `count`.
    pub fn wait_for_stderr_count(&mut self, needle: &str, count: usize, timeout: Duration) {
        let what = format!("{count} stderr lines containing {needle:?}");
        let mut exited = false;
        let mut enough = false;
        wait_until(&what, timeout, || {
            exited = self.has_exited();
            enough = self.stderr_count(needle) >= count;
            enough || exited
        });
        assert!(enough, "exited before printing {what}\n{}", self.transcript());
    }

    /// Sends a signal by name (`HUP`, `TERM`, `INT`) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill(1) runs");
        assert!(status.success(), "kill -{name} {} failed", self.pid());
    }

    /// Waits for the child to exit and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let what = format!("{} to exit", self.name);
        wait_until(&what, timeout, || self.has_exited());
        self.status.unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.has_exited() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The address in a `listening` log line, human (`local_addr=…`) or JSON (`"local_addr":"…"`).
pub fn listening_addr(line: &str) -> SocketAddr {
    let after = &line[line.find("local_addr").unwrap_or_else(|| panic!("no local_addr in {line}"))..];
    let start = after.find(|c: char| c.is_ascii_digit()).unwrap();
    let text: String =
        after[start..].chars().take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':').collect();
    text.parse().unwrap_or_else(|err| panic!("{text:?} in {line}: {err}"))
}

/// `serve --config FILE` as a child process, its file in its own temporary directory.
pub struct Served {
    pub process: Running,
    pub addr: SocketAddr,
    pub config_path: PathBuf,
    pub dir: tempfile::TempDir,
    /// The storage the daemon was started with (resolved), kept by [`Served::write_config`].
    pub storage: Storage,
    /// Its own PostgreSQL cluster, under `ATENDER_TEST_STORAGE=postgres`.
    pub pg: Option<Arc<crate::pg::PgCluster>>,
}

impl Served {
    /// Serves the test setup's config (tenants acme, globex, frozen, tiny) on a free port.
    pub fn start(setup: &Setup, args: &[&str]) -> Served {
        let (setup, pg) = setup.resolved();
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, setup.config_text(&dir.path().join("data"), "127.0.0.1:0")).unwrap();
        let mut served = Served::start_with_file(dir, config_path, args);
        served.storage = setup.storage;
        served.pg = pg;
        served
    }

    /// Serves a config file written by the caller (its storage is whatever the file says).
    pub fn start_with_file(dir: tempfile::TempDir, config_path: PathBuf, args: &[&str]) -> Served {
        let mut command = binary();
        command.arg("serve").arg("--config").arg(&config_path).args(args).current_dir(dir.path());
        let mut process = Running::start(command);
        let line = process.wait_for_stderr("listening", LONG);
        Served { addr: listening_addr(&line), process, config_path, dir, storage: Storage::Sled, pg: None }
    }

    /// Starts again on the same file and data dir (and database), once stopped.
    pub fn restart(mut self, args: &[&str]) -> Served {
        assert!(self.process.has_exited(), "stop the daemon before restarting it");
        let Served { dir, config_path, storage, pg, .. } = self;
        let mut served = Served::start_with_file(dir, config_path, args);
        served.storage = storage;
        served.pg = pg;
        served
    }

    /// Rewrites the config file from `setup`, keeping the storage the daemon runs on.
    pub fn write_config(&self, setup: &Setup) {
        let setup = Setup { storage: self.storage.clone(), ..setup.clone() };
        let text = setup.config_text(&self.dir.path().join("data"), "127.0.0.1:0");
        std::fs::write(&self.config_path, text).unwrap();
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn call(&self, method: &str, path: &str, key: &str, body: Option<Value>) -> Reply {
        call_json(method, &self.url(path), key, body)
    }

    /// Sends `signal` and expects a clean exit (code 0) within the drain grace.
    pub fn stop(&mut self, signal: &str) -> ExitStatus {
        self.process.signal(signal);
        let status = self.process.wait_exit(Duration::from_secs(40));
        assert_eq!(status.code(), Some(0), "SIG{signal} should exit 0\n{}", self.process.transcript());
        status
    }
}

/// Every event id in a subscription's delivery log on `served`, all pages.
pub fn logged_event_ids(served: &Served, subscription_id: &str) -> std::collections::HashSet<String> {
    let mut ids = std::collections::HashSet::new();
    let mut cursor = String::new();
    loop {
        let path = format!("/v1/webhooks/{subscription_id}/deliveries?limit=100{cursor}");
        let page = served.call("GET", &path, crate::support::ACME_KEY, None);
        assert_eq!(page.status, 200, "{}", page.text);
        let page = page.json();
        for delivery in page["data"].as_array().unwrap() {
            ids.insert(delivery["eventId"].as_str().unwrap().to_owned());
        }
        match page["nextCursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return ids,
        }
    }
}
