//! `vmpulse validate MANIFEST.yaml`: check a KubeVirt `VirtualMachine` manifest and report
//! every problem.
//!
//! It checks everything `vmpulse run` checks before it starts: the manifest itself (at most
//! 1 MiB, nested at most 128 deep, at most 50,000 entries), the `vmpulse.io/*` annotations and the guest memory
//! (see [`crate::cli::prepare`]), so a manifest that validates does not fail `run` on a
//! manifest problem.

use std::path::PathBuf;
use std::process::ExitCode;

use vmpulse_manifest::validate_str;

use crate::cli::{memory_note, prepare, RunArgs};

/// Arguments of `vmpulse validate`.
#[derive(clap::Args, Debug)]
pub struct ValidateArgs {
    /// The VirtualMachine manifest (YAML).
    pub file: PathBuf,
}

/// Entry point of `vmpulse validate`: `FILE: ok` and the ignored fields, warnings and notes
/// on stdout (exit 0), or each problem as `path: message` on stderr (exit 2).
pub fn validate_command(args: ValidateArgs) -> ExitCode {
    let file = args.file.display().to_string();
    let text = match vmpulse_manifest::read(&args.file) {
        Ok(t) => t,
        Err(p) => {
            eprintln!("{p}");
            return ExitCode::from(2);
        }
    };
    let v = validate_str(&text);
    let Some(spec) = &v.spec else {
        for p in &v.problems {
            eprintln!("{p}");
        }
        for w in &v.warnings {
            eprintln!("warning: {w}");
        }
        eprintln!("{file}: {} problem(s)", v.problems.len());
        return ExitCode::from(2);
    };
    let (settings, memory) = match prepare(&RunArgs::without_flags(args.file.clone()), spec) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            eprintln!("{file}: 1 problem(s)");
            return ExitCode::from(2);
        }
    };
    println!("{file}: ok");
    for p in &v.ignored {
        println!("  ignored by the built-in test guest: {p}");
    }
    for w in &v.warnings {
        println!("  warning: {w}");
    }
    for n in &settings.notes {
        println!("  warning: {n}");
    }
    if spec.memory_bytes.is_some() {
        if let Some(n) = memory_note(spec.memory_bytes, memory) {
            println!("  note: {n}");
        }
    }
    ExitCode::SUCCESS
}
