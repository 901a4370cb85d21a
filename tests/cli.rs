//! The `chatmq` binary: `token`, `check-config`, and `serve` with a graceful SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_chatmq");

fn config(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("broker.toml");
    let text = format!(
        "[mqtt]\nlisten = \"127.0.0.1:0\"\n[http]\nlisten = \"127.0.0.1:0\"\n[auth]\nsecret = \"cli-test-secret-0123456789abcdef\"\n[store]\nbackend = \"sqlite\"\npath = \"{}\"\n",
        dir.join("data/chatmq.db").display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

#[test]
fn token_prints_a_verifiable_jwt() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config(dir.path());
    let out = Command::new(BIN)
        .args(["token", "alice", "--ttl", "60", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).expect("utf8");
    let loaded = chatmq::config::Config::load(&cfg).expect("config");
    let auth = chatmq::auth::Authenticator::new(&loaded.auth).expect("auth");
    assert_eq!(
        auth.verify("alice", token.trim()).map(|i| i.user),
        Ok("alice".to_string())
    );
    let bad = Command::new(BIN)
        .args(["token", "not/valid", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    assert!(!bad.status.success());
}

#[test]
fn check_config_names_the_bad_key() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config(dir.path());
    let ok = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    assert!(ok.status.success());
    let bad = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&cfg)
        .env("CHATMQ_CHAT__MAX_TEXT", "0")
        .output()
        .expect("run");
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("chat.max_text"), "{err}");
}

#[test]
fn check_config_warns_about_settings_that_can_lose_acknowledged_messages() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config(dir.path());
    let quiet = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    assert!(quiet.status.success());
    let quiet = String::from_utf8_lossy(&quiet.stderr);
    assert!(!quiet.contains("warning"), "{quiet}");
    let weak = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&cfg)
        .env("CHATMQ_STORE__SYNCHRONOUS", "normal")
        .output()
        .expect("run");
    assert!(weak.status.success(), "a warning, not an error");
    let err = String::from_utf8_lossy(&weak.stderr);
    assert!(
        err.contains("warning: store.synchronous = \"normal\"") && err.contains("power loss"),
        "{err}"
    );
}

#[test]
fn serve_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config(dir.path());
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    // Wait for the ready line (logs go to stdout).
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut ready, mut durability) = (false, false);
    while Instant::now() < deadline {
        match lines.next() {
            Some(Ok(line)) if line.contains("chatmq ready") => {
                ready = true;
                break;
            }
            Some(Ok(line)) => {
                // The effective durability settings, as SQLite took them.
                durability |= line.contains("sqlite store")
                    && line.contains("synchronous")
                    && line.contains("FULL")
                    && line.contains("wal");
            }
            _ => break,
        }
    }
    assert!(ready, "broker did not report ready");
    assert!(
        durability,
        "no startup line with the effective durability settings"
    );
    let pid = child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "broker did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        dir.path().join("data/chatmq.db").exists(),
        "the store was created where configured"
    );
}
