//! packaging/: the systemd unit passes `systemd-analyze verify` and keeps its hardening (offline
//! `systemd-analyze security`), so do the backup service and timer, the maintainer scripts are valid shell with the token cargo-deb
//! fills in, and every file `[package.metadata.deb]` packages exists.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::process::{repo_path, run, Finished, BIN};

const UNIT: &str = "packaging/atender-webhooks.service";
const BACKUP_UNIT: &str = "packaging/atender-webhooks-backup.service";
const BACKUP_TIMER: &str = "packaging/atender-webhooks-backup.timer";
const PACKAGED_EXEC_START: &str =
    "ExecStart=/usr/bin/atender-webhooks serve --config /etc/atender-webhooks/config.toml";

/// Runs systemd-analyze, failing with the package to install when it is missing: a test that
/// silently passes without it would prove nothing.
fn systemd_analyze(args: &[&str]) -> Finished {
    if Command::new("systemd-analyze").arg("--version").output().is_err() {
        panic!(
            "systemd-analyze is not installed: install Debian's `systemd` package (apt-get install systemd)"
        );
    }
    let mut command = Command::new("systemd-analyze");
    command.args(args);
    run(command, b"")
}

/// The unit as packaged, but starting the binary this test run built: `verify` checks that the
/// ExecStart= program exists, and /usr/bin/atender-webhooks exists only once the .deb is installed.
fn unit_with_built_binary(dir: &Path) -> PathBuf {
    let unit = std::fs::read_to_string(repo_path(UNIT)).unwrap();
    assert!(
        unit.contains(PACKAGED_EXEC_START),
        "the unit must start the packaged binary with the packaged config"
    );
    let path = dir.join("atender-webhooks.service");
    std::fs::write(&path, unit.replace("ExecStart=/usr/bin/atender-webhooks ", &format!("ExecStart={BIN} ")))
        .unwrap();
    path
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let unit = unit_with_built_binary(dir.path());
    let out = systemd_analyze(&["verify", unit.to_str().unwrap()]);
    out.assert_success();
    // verify exits 0 on some problems (an unknown key, a bad value) and only prints them.
    assert!(out.stderr.trim().is_empty() && out.stdout.trim().is_empty(), "verify complained: {out:#?}");
}

/// The backup service and its timer, as packaged, verified together (the timer names the
/// service) with the service starting the binary this test run built.
#[test]
fn the_backup_units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().unwrap();
    let service = std::fs::read_to_string(repo_path(BACKUP_UNIT)).unwrap();
    let packaged =
        "ExecStart=/usr/bin/atender-webhooks backup --config /etc/atender-webhooks/config.toml --to ";
    assert!(service.contains(packaged), "the backup unit must back up the packaged config's data");
    let service_path = dir.path().join("atender-webhooks-backup.service");
    std::fs::write(
        &service_path,
        service.replace("ExecStart=/usr/bin/atender-webhooks ", &format!("ExecStart={BIN} ")),
    )
    .unwrap();
    let timer_path = dir.path().join("atender-webhooks-backup.timer");
    std::fs::copy(repo_path(BACKUP_TIMER), &timer_path).unwrap();
    let out = systemd_analyze(&["verify", service_path.to_str().unwrap(), timer_path.to_str().unwrap()]);
    out.assert_success();
    assert!(out.stderr.trim().is_empty() && out.stdout.trim().is_empty(), "verify complained: {out:#?}");
    // It runs as the daemon's user (the control socket is 0600) and without a network.
    for setting in ["User=atender-webhooks", "Type=oneshot", "PrivateNetwork=yes", "UMask=0077"] {
        assert!(service.lines().any(|line| line.trim() == setting), "{BACKUP_UNIT} lacks {setting}");
    }
}

#[test]
fn the_unit_keeps_its_hardening() {
    let unit = std::fs::read_to_string(repo_path(UNIT)).unwrap();
    let settings: Vec<&str> = unit.lines().map(str::trim).filter(|line| !line.starts_with('#')).collect();
    let required = [
        "Type=notify",
        PACKAGED_EXEC_START,
        "ExecReload=/bin/kill -HUP $MAINPID",
        "User=atender-webhooks",
        "Group=atender-webhooks",
        "StateDirectory=atender-webhooks",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "SystemCallFilter=~@privileged @resources",
        "SystemCallArchitectures=native",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "RestrictNamespaces=yes",
        "LockPersonality=yes",
        "MemoryDenyWriteExecute=yes",
        "RestrictRealtime=yes",
        "RestrictSUIDSGID=yes",
        "Restart=on-failure",
        "LimitNOFILE=65536",
        "UMask=0077",
    ];
    for setting in required {
        assert!(settings.contains(&setting), "{UNIT} lacks {setting}");
    }
    // The stop timeout must exceed the daemon's 20 s drain grace, or systemd SIGKILLs a drain.
    let stop =
        settings.iter().find_map(|line| line.strip_prefix("TimeoutStopSec=")).expect("TimeoutStopSec=");
    let stop = humantime::parse_duration(stop).unwrap();
    assert!(
        stop > std::time::Duration::from_secs(25),
        "TimeoutStopSec={stop:?} leaves no room after the 20 s drain"
    );

    // systemd's own score: 0 is locked down, 10 is unprotected; this unit scores about 1.1.
    // --threshold is in tenths, so anything above 1.5 fails and prints which settings regressed.
    let dir = tempfile::tempdir().unwrap();
    let copy = unit_with_built_binary(dir.path());
    let out = systemd_analyze(&["security", "--offline=true", "--threshold=15", copy.to_str().unwrap()]);
    assert!(out.status.success(), "the unit's exposure rose above 1.5:\n{}", out.stdout);
}

#[test]
fn the_maintainer_scripts_are_valid_shell_with_the_debhelper_token() {
    for script in ["packaging/postinst", "packaging/postrm"] {
        let path = repo_path(script);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("#!/bin/sh\n"), "{script} must be a /bin/sh script");
        assert!(text.contains("\n#DEBHELPER#\n"), "{script} needs the #DEBHELPER# token for cargo-deb");
        let mut command = Command::new("sh");
        command.arg("-n").arg(&path);
        run(command, b"").assert_success();
    }
    let postinst = std::fs::read_to_string(repo_path("packaging/postinst")).unwrap();
    // The user must exist before the DEBHELPER fragment starts the unit that runs as it.
    let creates_user = postinst.find("adduser --system").expect("postinst creates the system user");
    assert!(creates_user < postinst.find("#DEBHELPER#").unwrap());
}

#[test]
fn every_packaged_file_exists() {
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string(repo_path("Cargo.toml")).unwrap()).unwrap();
    let deb = &manifest["package"]["metadata"]["deb"];
    let assets = deb["assets"].as_array().expect("[package.metadata.deb] assets");
    let mut destinations = Vec::new();
    for asset in assets {
        let [source, dest, _mode] = asset.as_array().unwrap().as_slice() else { panic!("{asset}") };
        let (source, dest) = (source.as_str().unwrap(), dest.as_str().unwrap());
        destinations.push(dest.to_owned());
        // target/release/ is cargo-deb's placeholder for the binary it builds.
        if !source.starts_with("target/release/") {
            assert!(repo_path(source).is_file(), "the package includes {source}, which does not exist");
        }
    }
    assert!(destinations.contains(&"usr/bin/".to_owned()));
    assert!(destinations.contains(&"etc/atender-webhooks/config.toml".to_owned()));
    let conf_files = deb["conf-files"].as_array().unwrap();
    assert!(conf_files.iter().any(|file| file.as_str() == Some("/etc/atender-webhooks/config.toml")));
    assert_eq!(deb["maintainer-scripts"].as_str(), Some("packaging/"));
    assert!(repo_path(UNIT).is_file(), "cargo-deb takes <package>.service from maintainer-scripts");
}
