//! Shared by the tests that run the real `scalio-server` binary.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Starts the server binary with SSD files in `dir`, `config` (TOML) as its config file, and
/// `args` (besides `--listen 127.0.0.1:0 --config --ssd-dir`); returns it and its fabric address.
pub fn spawn_server(dir: &Path, config: &str, args: &[&str], log: &str) -> (Child, String) {
    let config_path = dir.join("server.toml");
    std::fs::write(&config_path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_scalio-server"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .arg("--config")
        .arg(&config_path)
        .arg("--ssd-dir")
        .arg(dir)
        .env("RUST_LOG", log)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start scalio-server");
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut line).expect("server output");
    // Keep draining the server's stdout so that it never writes to a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    let addr = line.trim().strip_prefix("scalio-server listening on ").unwrap_or_else(|| panic!("unexpected: {line}"));
    (child, addr.to_string())
}
