//! `cargo xtask`: aesthete's own tooling.
use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("xtask: no tasks yet");
    ExitCode::FAILURE
}
