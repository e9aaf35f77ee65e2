//! `scalio-ycsb`: YCSB workloads against scalio (any design stage) and its baselines.

use clap::Parser;
use scalio_bench::harness::{self, options::Options, HarnessError};

fn main() -> std::process::ExitCode {
    tracing_subscriber_init();
    let opts = Options::parse();
    match harness::run(&opts) {
        Ok(report) => {
            print!("{}", report.table);
            if let Some(path) = &opts.json {
                let text = serde_json::to_string_pretty(&report.json).expect("JSON");
                if let Err(e) = std::fs::write(path, text + "\n") {
                    eprintln!("scalio-ycsb: cannot write {}: {e}", path.display());
                    return std::process::ExitCode::FAILURE;
                }
            }
            if report.errors > 0 {
                eprintln!("scalio-ycsb: {} operations failed", report.errors);
                return std::process::ExitCode::FAILURE;
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("scalio-ycsb: {e}");
            if matches!(e, HarnessError::Usage(_)) {
                std::process::ExitCode::from(2)
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}

/// Logs from the embedded server go to stderr, warnings only unless RUST_LOG says otherwise.
fn tracing_subscriber_init() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
}
