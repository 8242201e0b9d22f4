//! The aesthete command line.
use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!("aesthete: the filter pipeline is not built yet");
    ExitCode::FAILURE
}
