//! `cargo run --example slim_vmlinux -- IN [OUT]`: rewrites an uncompressed
//! kernel so QEMU maps and copies only its non-zero pages
//! (`ukload::image::slim_kernel`; why in docs/microvm.md). OUT defaults to IN
//! (rewritten in place, atomically). Run by scripts/setup-microvm.sh.
//! OWNER: microVM helper.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let (input, output) = match args.as_slice() {
        [input] => (input, input),
        [input, output] => (input, output),
        _ => {
            eprintln!("usage: slim_vmlinux IN [OUT]");
            return ExitCode::from(2);
        }
    };
    match ukload::image::slim_kernel(input, output) {
        Ok(stats) => {
            println!("slim kernel {}: {stats}", output.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("slim_vmlinux: {e}");
            ExitCode::FAILURE
        }
    }
}
