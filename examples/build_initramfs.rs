//! Writes the guest initramfs with `ukload::image::build_initramfs` (the one
//! cpio writer). Used by scripts/build-guest-image.sh until `ukload image
//! build` exists.
//!
//! Usage: build_initramfs GUEST_BIN MODULES_DIR OUT

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [guest, modules, out] = args.as_slice() else {
        eprintln!("usage: build_initramfs GUEST_BIN MODULES_DIR OUT");
        return ExitCode::from(2);
    };
    match ukload::image::build_initramfs(Path::new(guest), Path::new(modules), Path::new(out)) {
        Ok(()) => {
            println!("wrote {out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("build_initramfs: {e}");
            ExitCode::FAILURE
        }
    }
}
