//! `vmpulse validate MANIFEST.yaml`: check a KubeVirt `VirtualMachine` manifest and report
//! every problem.

use std::path::PathBuf;
use std::process::ExitCode;

use vmpulse_manifest::validate_str;

/// Arguments of `vmpulse validate`.
#[derive(clap::Args, Debug)]
pub struct ValidateArgs {
    /// The VirtualMachine manifest (YAML).
    pub file: PathBuf,
}

/// Entry point of `vmpulse validate`: `FILE: ok` and the ignored fields and
/// warnings on stdout (exit 0), or each problem as `path: message` on stderr
/// (exit 2).
pub fn validate_command(args: ValidateArgs) -> ExitCode {
    let file = args.file.display().to_string();
    let text = match std::fs::read(&args.file) {
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(_) => {
                eprintln!("{file}: cannot read: not UTF-8 text");
                return ExitCode::from(2);
            }
        },
        Err(e) => {
            eprintln!("{file}: cannot read: {e}");
            return ExitCode::from(2);
        }
    };
    let v = validate_str(&text);
    if v.spec.is_some() {
        println!("{file}: ok");
        for p in &v.ignored {
            println!("  ignored by the built-in test guest: {p}");
        }
        for w in &v.warnings {
            println!("  warning: {w}");
        }
        ExitCode::SUCCESS
    } else {
        for p in &v.problems {
            eprintln!("{p}");
        }
        for w in &v.warnings {
            eprintln!("warning: {w}");
        }
        eprintln!("{file}: {} problem(s)", v.problems.len());
        ExitCode::from(2)
    }
}
