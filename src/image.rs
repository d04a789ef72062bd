//! The microVM guest image: where its pieces are cached, the initramfs
//! writer (newc cpio, written here in Rust: the one source of truth for the
//! archive format), and what is present or missing.
//!
//! The image is a kernel (`vmlinux`, uncompressed, booted by QEMU through its
//! PVH entry) plus an initramfs holding the static `ukload-guest` as `/init`
//! and the virtio / vsock modules of that same kernel (Debian's 6.1 kernels
//! build them as modules; drivers a kernel has built in need none).
//! `scripts/setup-microvm.sh` fetches the kernel and modules into the cache and
//! slims the kernel ([`slim_kernel`]); `scripts/build-guest-image.sh` builds the
//! guest and the initramfs.
//!
//! The initramfs is not compressed: the kernel accepts a plain cpio, and
//! under TCG inflating it costs more boot time than copying the extra bytes
//! (measured in docs/microvm.md).

use std::fmt;
use std::fs;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::elf::{ProgramHeader, ELF_MAGIC, PT_LOAD};
use crate::vmabi::{builtin_list_has, MODULES, MODULES_BUILTIN_FILE, MODULES_DIR, MODULE_EXT};

/// Overrides the cache directory.
pub const ENV_CACHE_DIR: &str = "UKLOAD_CACHE_DIR";
/// Name of the cache directory under `$XDG_CACHE_HOME` or `~/.cache`.
const CACHE_SUBDIR: &str = "ukload";

/// The uncompressed kernel in the cache.
pub const KERNEL_FILE: &str = "vmlinux";
/// The initramfs in the cache.
pub const INITRAMFS_FILE: &str = "initramfs.cpio";
/// Directory of the (uncompressed, flat) kernel modules in the cache.
pub const MODULES_SUBDIR: &str = "modules";
/// The static guest binary in the cache (what becomes `/init`).
pub const GUEST_BIN_FILE: &str = "ukload-guest";
/// Version of the kernel the cache was built from (written by the setup script).
pub const KERNEL_VERSION_FILE: &str = "kernel-version";

/// Command that fetches the kernel and its modules.
pub const SETUP_COMMAND: &str = "scripts/setup-microvm.sh";
/// Command that builds the static guest and the initramfs.
pub const BUILD_IMAGE_COMMAND: &str = "scripts/build-guest-image.sh";

/// The VMM binary.
pub const QEMU_BIN: &str = "qemu-system-x86_64";
/// The vhost-user vsock device (rust-vmm).
pub const VHOST_VSOCK_BIN: &str = "vhost-device-vsock";

/// Cache directory: `$UKLOAD_CACHE_DIR`, else `$XDG_CACHE_HOME/ukload`, else
/// `~/.cache/ukload` (the same rule as the setup script).
pub fn cache_dir() -> PathBuf {
    cache_dir_from(|name| std::env::var_os(name))
}

/// [`cache_dir`] with the environment given as a lookup (testable without
/// changing the process's environment under tests running in parallel).
pub fn cache_dir_from(env: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    let var = |name: &str| env(name).filter(|v| !v.is_empty());
    if let Some(d) = var(ENV_CACHE_DIR) {
        return PathBuf::from(d);
    }
    if let Some(d) = var("XDG_CACHE_HOME") {
        return PathBuf::from(d).join(CACHE_SUBDIR);
    }
    let home = var("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"));
    home.join(".cache").join(CACHE_SUBDIR)
}

/// Where the image's pieces live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePaths {
    /// Uncompressed kernel (`vmlinux`).
    pub kernel: PathBuf,
    /// Initramfs (newc cpio).
    pub initramfs: PathBuf,
    /// Flat directory of `<module>.ko` files.
    pub modules_dir: PathBuf,
    /// Static guest binary copied into the cache (becomes `/init`).
    pub guest_bin: PathBuf,
}

impl ImagePaths {
    /// The pieces inside cache directory `dir`.
    pub fn in_dir(dir: &Path) -> ImagePaths {
        ImagePaths {
            kernel: dir.join(KERNEL_FILE),
            initramfs: dir.join(INITRAMFS_FILE),
            modules_dir: dir.join(MODULES_SUBDIR),
            guest_bin: dir.join(GUEST_BIN_FILE),
        }
    }

    /// The pieces inside [`cache_dir`].
    pub fn cached() -> ImagePaths {
        ImagePaths::in_dir(&cache_dir())
    }
}

/// A failure building the image, with the path concerned and what to do.
#[derive(Debug)]
pub enum ImageError {
    /// Reading an input or writing the archive failed.
    Io { path: PathBuf, err: io::Error },
    /// A module [`crate::vmabi::MODULES`] needs is not in the modules dir.
    MissingModule { module: &'static str, path: PathBuf },
    /// A file is not what it must be (not ELF, compressed module, dynamic guest).
    BadInput { path: PathBuf, why: String },
    /// A name or size does not fit the newc format.
    Format { name: String, why: &'static str },
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageError::Io { path, err } => write!(f, "{}: {err}", path.display()),
            ImageError::MissingModule { module, path } => write!(
                f,
                "kernel module {module} missing: {} does not exist (run {SETUP_COMMAND})",
                path.display()
            ),
            ImageError::BadInput { path, why } => write!(f, "{}: {why}", path.display()),
            ImageError::Format { name, why } => write!(f, "cpio entry {name:?}: {why}"),
        }
    }
}

impl std::error::Error for ImageError {}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ImageError + '_ {
    move |err| ImageError::Io {
        path: path.to_path_buf(),
        err,
    }
}

// --- newc cpio -------------------------------------------------------------

/// Magic of a newc ("new ASCII") cpio header, the format the kernel unpacks.
const NEWC_MAGIC: &[u8; 6] = b"070701";
/// Length of a newc header: the magic and 13 eight-digit hex fields.
pub const NEWC_HEADER_LEN: usize = 110;
/// Header + name, and file data, are each padded to this alignment.
const NEWC_ALIGN: usize = 4;
/// Name of the entry that ends the archive.
pub const NEWC_TRAILER: &str = "TRAILER!!!";

/// File type bits of `st_mode` (octal, as in `<sys/stat.h>`).
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

/// Permission bits of the entries [`build_initramfs`] writes.
const MODE_DIR: u32 = 0o755;
const MODE_TMP: u32 = 0o1777;
const MODE_INIT: u32 = 0o755;
const MODE_MODULE: u32 = 0o644;
const MODE_CONSOLE: u32 = 0o600;
/// `/dev/console` is char device 5:1; the kernel opens it for init's stdio
/// before `/init` runs, i.e. before devtmpfs is mounted.
const CONSOLE_MAJOR: u32 = 5;
const CONSOLE_MINOR: u32 = 1;

/// Writes a newc cpio archive entry by entry. Parents must be written before
/// their children (the kernel creates entries in archive order). Owners are
/// root and mtimes 0, so the same inputs give the same bytes.
pub struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
    written: usize,
}

/// One newc header's variable fields.
struct NewcEntry<'a> {
    name: &'a str,
    mode: u32,
    nlink: u32,
    size: usize,
    rdev: (u32, u32),
}

impl<W: Write> CpioWriter<W> {
    /// A writer appending to `out`.
    pub fn new(out: W) -> CpioWriter<W> {
        CpioWriter {
            out,
            next_ino: 1,
            written: 0,
        }
    }

    /// A directory (`perm`: permission bits, e.g. 0o755).
    pub fn dir(&mut self, name: &str, perm: u32) -> io::Result<()> {
        self.entry(
            NewcEntry {
                name,
                mode: S_IFDIR | perm,
                nlink: 2,
                size: 0,
                rdev: (0, 0),
            },
            &[],
        )
    }

    /// A regular file with contents `data`.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(
            NewcEntry {
                name,
                mode: S_IFREG | perm,
                nlink: 1,
                size: data.len(),
                rdev: (0, 0),
            },
            data,
        )
    }

    /// A character device node `major:minor`.
    pub fn char_device(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(
            NewcEntry {
                name,
                mode: S_IFCHR | perm,
                nlink: 1,
                size: 0,
                rdev: (major, minor),
            },
            &[],
        )
    }

    /// Writes the trailer and returns the underlying writer (flushed).
    pub fn finish(mut self) -> io::Result<W> {
        self.raw_entry(
            &NewcEntry {
                name: NEWC_TRAILER,
                mode: 0,
                nlink: 1,
                size: 0,
                rdev: (0, 0),
            },
            0,
            &[],
        )?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(&mut self, e: NewcEntry<'_>, data: &[u8]) -> io::Result<()> {
        let invalid = |why: &str| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cpio entry {:?}: {why}", e.name),
            )
        };
        if e.name.is_empty()
            || e.name.starts_with('/')
            || e.name.contains('\0')
            || e.name == NEWC_TRAILER
        {
            return Err(invalid(
                "names are relative, non-empty, without NUL, not the trailer",
            ));
        }
        if u32::try_from(e.size).is_err() {
            return Err(invalid("newc cannot hold a file of 4 GiB or more"));
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.raw_entry(&e, ino, data)
    }

    fn raw_entry(&mut self, e: &NewcEntry<'_>, ino: u32, data: &[u8]) -> io::Result<()> {
        let name_size = e.name.len() + 1; // with its NUL
        let mut header = Vec::with_capacity(NEWC_HEADER_LEN + name_size + NEWC_ALIGN);
        header.extend_from_slice(NEWC_MAGIC);
        let fields: [u32; 13] = [
            ino,
            e.mode,
            0, // uid
            0, // gid
            e.nlink,
            0, // mtime
            e.size as u32,
            0, // devmajor
            0, // devminor
            e.rdev.0,
            e.rdev.1,
            name_size as u32,
            0, // check (only for the "070702" crc format)
        ];
        for v in fields {
            header.extend_from_slice(format!("{v:08X}").as_bytes());
        }
        header.extend_from_slice(e.name.as_bytes());
        header.push(0);
        header.resize(align_up(header.len()), 0);
        self.out.write_all(&header)?;
        self.out.write_all(data)?;
        let pad = align_up(data.len()) - data.len();
        self.out.write_all(&[0u8; NEWC_ALIGN][..pad])?;
        self.written += header.len() + data.len() + pad;
        Ok(())
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> usize {
        self.written
    }
}

fn align_up(n: usize) -> usize {
    n.div_ceil(NEWC_ALIGN) * NEWC_ALIGN
}

// --- checks on the inputs ----------------------------------------------------

const XZ_MAGIC: &[u8; 6] = b"\xfd7zXZ\x00";
const ZSTD_MAGIC: &[u8; 4] = b"\x28\xb5\x2f\xfd";
const GZIP_MAGIC: &[u8; 2] = b"\x1f\x8b";

fn read_input(path: &Path) -> Result<Vec<u8>, ImageError> {
    let mut data = Vec::new();
    fs::File::open(path)
        .and_then(|mut f| f.read_to_end(&mut data))
        .map_err(io_err(path))?;
    Ok(data)
}

/// A module must be a plain ELF object: the guest has no decompressor.
fn check_module(path: &Path, data: &[u8]) -> Result<(), ImageError> {
    let bad = |why: String| ImageError::BadInput {
        path: path.to_path_buf(),
        why,
    };
    if data.starts_with(XZ_MAGIC) || data.starts_with(ZSTD_MAGIC) || data.starts_with(GZIP_MAGIC) {
        return Err(bad(format!(
            "module is compressed; the guest loads plain .{MODULE_EXT} files (rerun {SETUP_COMMAND}, which decompresses them)"
        )));
    }
    if !data.starts_with(ELF_MAGIC) {
        return Err(bad("not an ELF kernel module".into()));
    }
    Ok(())
}

/// The guest must be a static ELF64 executable: the initramfs has no dynamic
/// loader or libc, and a dynamic `/init` fails with a bare ENOENT panic.
fn check_static_guest(path: &Path) -> Result<(), ImageError> {
    let bad = |why: String| ImageError::BadInput {
        path: path.to_path_buf(),
        why,
    };
    match crate::elf::read(path) {
        Ok(info) if info.interp.is_none() => Ok(()),
        Ok(_) => Err(bad(
            "the guest binary is dynamically linked (has PT_INTERP); build it with \
             RUSTFLAGS='-C target-feature=+crt-static' --target x86_64-unknown-linux-gnu \
             (scripts/build-guest-image.sh does)"
                .into(),
        )),
        Err(e) => Err(bad(format!(
            "the guest binary is not an ELF64 executable: {e}"
        ))),
    }
}

/// Path of the archive entry for a module: `lib/modules/<name>.ko`, i.e.
/// [`crate::vmabi::module_path`] without the leading slash.
fn module_entry(module: &str) -> String {
    crate::vmabi::module_path(module)
        .trim_start_matches('/')
        .to_string()
}

/// The modules directory's `modules.builtin` (copied there by the setup
/// script from the kernel package), or empty when there is none.
fn read_builtin_list(modules_dir: &Path) -> Result<String, ImageError> {
    let path = modules_dir.join(MODULES_BUILTIN_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => Ok(text),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(err) => Err(ImageError::Io { path, err }),
    }
}

/// How one driver of [`MODULES`] reaches the guest.
enum ModuleInput {
    /// A `.ko` to pack (archive entry name, contents).
    Ko(String, Vec<u8>),
    /// Built into the kernel: the line of `modules.builtin` that says so.
    BuiltIn(String),
}

/// The modules to pack: each driver's `.ko` from `modules_dir`, or, when the
/// kernel package ships no `.ko` because it has the driver built in (its
/// `modules.builtin` lists it), nothing but a line in the image's
/// `modules.builtin` so PID 1 knows it is fine.
fn module_inputs(modules_dir: &Path) -> Result<Vec<ModuleInput>, ImageError> {
    let builtin = read_builtin_list(modules_dir)?;
    let mut inputs = Vec::with_capacity(MODULES.len());
    for module in MODULES {
        let path = modules_dir.join(format!("{module}.{MODULE_EXT}"));
        if path.exists() {
            let data = read_input(&path)?;
            check_module(&path, &data)?;
            inputs.push(ModuleInput::Ko(module_entry(module), data));
        } else if builtin_list_has(&builtin, module) {
            let line = builtin
                .lines()
                .find(|l| builtin_list_has(l, module))
                .unwrap_or_default();
            inputs.push(ModuleInput::BuiltIn(line.trim().to_string()));
        } else {
            return Err(ImageError::MissingModule { module, path });
        }
    }
    Ok(inputs)
}

/// Writes the guest initramfs to `out` (atomically: a temporary file renamed
/// into place): `/init` = `guest_bin` (must be static), the modules
/// [`MODULES`] from `modules_dir/<name>.ko`, `/dev/console`, and the mount
/// points `/proc`, `/sys`, `/dev`, `/tmp`. Uncompressed (see the module doc).
///
/// A driver without a `.ko` is accepted when `modules_dir/modules.builtin`
/// (the kernel package's list) names it: the kernel has it built in. The
/// archive then holds `lib/modules/modules.builtin` with those drivers' lines
/// only, which PID 1 reads. Any other missing driver is an error.
pub fn build_initramfs(guest_bin: &Path, modules_dir: &Path, out: &Path) -> Result<(), ImageError> {
    let guest = read_input(guest_bin)?;
    check_static_guest(guest_bin)?;
    let inputs = module_inputs(modules_dir)?;
    let mut modules = Vec::with_capacity(inputs.len());
    let mut builtin_lines = String::new();
    for input in inputs {
        match input {
            ModuleInput::Ko(name, data) => modules.push((name, data)),
            ModuleInput::BuiltIn(line) => {
                builtin_lines.push_str(&line);
                builtin_lines.push('\n');
            }
        }
    }

    let mut tmp_name = out.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let file = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    let write = || -> io::Result<()> {
        let mut w = CpioWriter::new(BufWriter::new(file));
        w.dir("dev", MODE_DIR)?;
        w.char_device("dev/console", MODE_CONSOLE, CONSOLE_MAJOR, CONSOLE_MINOR)?;
        w.dir("proc", MODE_DIR)?;
        w.dir("sys", MODE_DIR)?;
        w.dir("tmp", MODE_TMP)?;
        // Mount point of an MCP server's root filesystem image (crate::vmabi::ROOTFS_DIR).
        w.dir(crate::vmabi::ROOTFS_DIR.trim_start_matches('/'), MODE_DIR)?;
        // Every ancestor of the modules directory, parents first.
        let mut prefix = String::new();
        for part in MODULES_DIR.trim_start_matches('/').split('/') {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            w.dir(&prefix, MODE_DIR)?;
        }
        for (name, data) in &modules {
            w.file(name, MODE_MODULE, data)?;
        }
        if !builtin_lines.is_empty() {
            let name = format!(
                "{}/{MODULES_BUILTIN_FILE}",
                MODULES_DIR.trim_start_matches('/')
            );
            w.file(&name, MODE_MODULE, builtin_lines.as_bytes())?;
        }
        w.file("init", MODE_INIT, &guest)?;
        w.finish()?
            .into_inner()
            .map_err(|e| e.into_error())?
            .sync_all()
    };
    if let Err(err) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(ImageError::Io { path: tmp, err });
    }
    fs::rename(&tmp, out).map_err(io_err(out))
}

// --- what is there ---------------------------------------------------------

/// One thing a microVM boot needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Piece {
    /// What it is ("kernel", "module vsock", "qemu-system-x86_64", ...).
    pub name: String,
    /// Where it is or is expected.
    pub path: PathBuf,
    /// Whether it is there.
    pub present: bool,
    /// Command that makes it.
    pub how: &'static str,
}

/// What the cache (and PATH) holds for microVM boots, and what is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// The cache directory inspected.
    pub cache_dir: PathBuf,
    /// Kernel version the cache was built from, if recorded.
    pub kernel_version: Option<String>,
    /// Every piece, present or not.
    pub pieces: Vec<Piece>,
    /// Root filesystems for MCP servers built into the cache
    /// (`ukload image rootfs`); optional, so not a piece.
    pub rootfs: Vec<crate::rootfs::RootfsImage>,
}

impl ImageInfo {
    /// The pieces that are missing.
    pub fn missing(&self) -> impl Iterator<Item = &Piece> {
        self.pieces.iter().filter(|p| !p.present)
    }

    /// True when everything a boot needs is there.
    pub fn is_complete(&self) -> bool {
        self.missing().next().is_none()
    }
}

impl fmt::Display for ImageInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "cache: {}", self.cache_dir.display())?;
        if let Some(v) = &self.kernel_version {
            writeln!(f, "kernel version: {v}")?;
        }
        for p in &self.pieces {
            let state = if p.present { "ok     " } else { "MISSING" };
            write!(f, "  {state} {:<40} {}", p.name, p.path.display())?;
            if !p.present {
                write!(f, "  (make it with: {})", p.how)?;
            }
            writeln!(f)?;
        }
        let missing: Vec<&str> = {
            let mut hows: Vec<&str> = self.missing().map(|p| p.how).collect();
            hows.dedup();
            hows
        };
        if missing.is_empty() {
            writeln!(f, "everything needed to boot a microVM is present")?;
        } else {
            writeln!(f, "to complete it, run: {}", missing.join(" ; "))?;
        }
        if self.rootfs.is_empty() {
            return writeln!(
                f,
                "root filesystems: none (build one with: ukload image rootfs --command CMD)"
            );
        }
        writeln!(f, "root filesystems: {}", self.rootfs.len())?;
        for r in &self.rootfs {
            writeln!(
                f,
                "  {}  {:.1} MB  {} files  command: {}",
                r.path.display(),
                r.size as f64 / 1e6,
                r.manifest.files,
                r.manifest.command.join(" ")
            )?;
        }
        Ok(())
    }
}

/// What [`cache_dir`] and PATH hold.
pub fn info() -> ImageInfo {
    info_in(&cache_dir())
}

/// What cache directory `dir` (and PATH) holds.
pub fn info_in(dir: &Path) -> ImageInfo {
    let kernel_version = fs::read_to_string(dir.join(KERNEL_VERSION_FILE))
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty());
    ImageInfo {
        cache_dir: dir.to_path_buf(),
        kernel_version,
        pieces: pieces_in(dir),
        rootfs: crate::rootfs::list(dir),
    }
}

/// Each piece a microVM needs (the tools on PATH, the kernel, its modules,
/// the guest binary, the initramfs in the cache), without [`info`]'s listing
/// of root filesystem images.
pub fn pieces() -> Vec<Piece> {
    pieces_in(&cache_dir())
}

fn pieces_in(dir: &Path) -> Vec<Piece> {
    let paths = ImagePaths::in_dir(dir);
    let file = |name: String, path: PathBuf, how| Piece {
        present: path.is_file(),
        name,
        path,
        how,
    };
    let tool = |name: &str, how| {
        let found = crate::paths::find_on_path(name);
        Piece {
            name: name.to_string(),
            present: found.is_some(),
            path: found.unwrap_or_else(|| PathBuf::from(name)),
            how,
        }
    };
    let mut pieces = vec![
        tool(QEMU_BIN, "apt-get install qemu-system-x86 (or scripts/setup-microvm.sh)"),
        tool(
            VHOST_VSOCK_BIN,
            "cargo install vhost-device-vsock --locked (or scripts/setup-microvm.sh), and put ~/.cargo/bin on PATH",
        ),
        file("kernel (vmlinux)".into(), paths.kernel.clone(), SETUP_COMMAND),
    ];
    let builtin = read_builtin_list(&paths.modules_dir).unwrap_or_default();
    for module in MODULES {
        let path = paths.modules_dir.join(format!("{module}.{MODULE_EXT}"));
        if !path.is_file() && builtin_list_has(&builtin, module) {
            pieces.push(Piece {
                name: format!("module {module} (built into the kernel)"),
                path: paths.modules_dir.join(MODULES_BUILTIN_FILE),
                present: true,
                how: SETUP_COMMAND,
            });
        } else {
            pieces.push(file(format!("module {module}"), path, SETUP_COMMAND));
        }
    }
    pieces.push(file(
        "guest binary (static ukload-guest)".into(),
        paths.guest_bin.clone(),
        BUILD_IMAGE_COMMAND,
    ));
    pieces.push(file(
        "initramfs".into(),
        paths.initramfs.clone(),
        BUILD_IMAGE_COMMAND,
    ));
    pieces
}

// --- slim kernel -------------------------------------------------------------
//
// Why: QEMU loads an ELF kernel as one "ROM blob" per PT_LOAD segment. It keeps
// the file mapped, copies each segment's file bytes into guest RAM, and
// zero-fills the rest of the segment (memsz - filesz), at every reset. Every
// page it copies stays resident in each QEMU's mapping of the file, and every
// page it copies or zero-fills is touched guest RAM. Debian's vmlinux stores
// 15 MiB of zero pages inside its segments (alignment padding, .bss, .brk,
// .init.scratch), which QEMU copies for nothing. A segment with filesz 0 has
// no data, and QEMU 7.2 skips such a blob entirely (guest RAM is zero from the
// start, and the kernel clears its own .bss). So the slim kernel splits each
// segment into data runs (filesz = memsz) and runs of zero pages (filesz 0),
// and writes only the data runs to the file: same memory image, fewer bytes
// mapped and copied (docs/microvm.md has the figures).

/// Zero runs shorter than this stay inside their data segment: splitting
/// them would add program headers for little gain. Debian's cloud kernel
/// (6.1.0-56-cloud-amd64): at 64 KiB its 4 `PT_LOAD` segments become 18 (19
/// program headers with the note) and its 44.1 MiB of segment data 29.1 MiB;
/// at 4 KiB, 79 `PT_LOAD` segments keep 28.7 MiB.
pub const SLIM_MIN_ZERO_RUN: u64 = 64 * 1024;
/// Granularity of zero runs and alignment of data in the slim file.
const SLIM_PAGE: u64 = 4096;
/// Alignment of non-LOAD segments (notes) copied into the slim file.
const NOTE_ALIGN: u64 = 8;

/// What [`slim_kernel_elf`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlimStats {
    /// PT_LOAD segments before and after.
    pub load_segments_in: usize,
    pub load_segments_out: usize,
    /// Bytes of PT_LOAD file data (what QEMU maps and copies) before and after.
    pub load_bytes_in: u64,
    pub load_bytes_out: u64,
    /// Size of the slim file.
    pub file_size_out: u64,
}

impl fmt::Display for SlimStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MIB: f64 = 1024.0 * 1024.0;
        write!(
            f,
            "{} -> {} load segments, {:.1} -> {:.1} MiB of segment data, file {:.1} MiB",
            self.load_segments_in,
            self.load_segments_out,
            self.load_bytes_in as f64 / MIB,
            self.load_bytes_out as f64 / MIB,
            self.file_size_out as f64 / MIB
        )
    }
}

/// A piece of a PT_LOAD segment: `len` bytes at `start` (relative to the
/// segment), all zero or not.
#[derive(Debug, Clone, Copy)]
struct Run {
    zero: bool,
    start: u64,
    len: u64,
}

/// Splits a segment into data runs and zero runs of at least
/// [`SLIM_MIN_ZERO_RUN`]; the part past its file data (memsz - filesz) is zero.
fn segment_runs(data: &[u8], memsz: u64) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    let push = |runs: &mut Vec<Run>, zero: bool, start: u64, len: u64| match runs.last_mut() {
        Some(last) if last.zero == zero => last.len += len,
        _ => runs.push(Run { zero, start, len }),
    };
    let mut pos = 0u64;
    for chunk in data.chunks(SLIM_PAGE as usize) {
        let zero = chunk.iter().all(|&b| b == 0);
        push(&mut runs, zero, pos, chunk.len() as u64);
        pos += chunk.len() as u64;
    }
    // Short zero runs go back into the data around them.
    let mut merged: Vec<Run> = Vec::new();
    for r in runs {
        let zero = r.zero && r.len >= SLIM_MIN_ZERO_RUN;
        push(&mut merged, zero, r.start, r.len);
    }
    if memsz > pos {
        push(&mut merged, true, pos, memsz - pos);
    }
    merged
}

fn align_up_u64(n: u64, align: u64) -> u64 {
    n.div_ceil(align) * align
}

/// The slim form of an uncompressed kernel (see the section comment above):
/// the same memory image, with zero runs as data-less segments and no section
/// headers (QEMU needs none; Debian's vmlinux has no symbols). Pure: bytes in,
/// bytes out. Idempotent: a slim kernel comes back unchanged in content.
pub fn slim_kernel_elf(elf: &[u8]) -> Result<(Vec<u8>, SlimStats), String> {
    let phdrs = crate::elf::program_header_table(elf)?;
    // New program headers: each PT_LOAD split into runs, others kept.
    // Offsets are assigned once the header table's size is known.
    let mut planned: Vec<(ProgramHeader, Option<std::ops::Range<usize>>)> = Vec::new();
    let mut stats = SlimStats {
        load_segments_in: 0,
        load_segments_out: 0,
        load_bytes_in: 0,
        load_bytes_out: 0,
        file_size_out: 0,
    };
    for p in &phdrs {
        let file = p.p_offset as usize..(p.p_offset + p.p_filesz) as usize;
        if p.p_type != PT_LOAD {
            planned.push((*p, Some(file)));
            continue;
        }
        stats.load_segments_in += 1;
        stats.load_bytes_in += p.p_filesz;
        for r in segment_runs(&elf[file.clone()], p.p_memsz) {
            let piece = ProgramHeader {
                p_offset: 0,
                p_vaddr: p.p_vaddr + r.start,
                p_paddr: p.p_paddr + r.start,
                p_filesz: if r.zero { 0 } else { r.len },
                p_memsz: r.len,
                p_align: SLIM_PAGE,
                ..*p
            };
            let data = (!r.zero)
                .then(|| file.start + r.start as usize..file.start + (r.start + r.len) as usize);
            stats.load_segments_out += 1;
            stats.load_bytes_out += piece.p_filesz;
            planned.push((piece, data));
        }
    }

    let mut cursor = crate::elf::headers_end(planned.len());
    let mut placed = Vec::with_capacity(planned.len());
    for (mut p, data) in planned {
        if let Some(range) = &data {
            cursor = if p.p_type == PT_LOAD {
                // Keep p_offset congruent to p_vaddr modulo the page, as ELF asks.
                align_up_u64(cursor, SLIM_PAGE) + p.p_vaddr % SLIM_PAGE
            } else {
                align_up_u64(cursor, NOTE_ALIGN.max(p.p_align.min(SLIM_PAGE)))
            };
            p.p_offset = cursor;
            cursor += range.len() as u64;
        }
        placed.push((p, data));
    }
    let headers: Vec<ProgramHeader> = placed.iter().map(|(p, _)| *p).collect();
    let mut out = crate::elf::write_headers(elf, &headers)?;
    out.reserve((cursor as usize).saturating_sub(out.len()));
    for (p, data) in &placed {
        if let Some(range) = data {
            out.resize(p.p_offset as usize, 0);
            out.extend_from_slice(&elf[range.clone()]);
        }
    }
    stats.file_size_out = out.len() as u64;
    Ok((out, stats))
}

/// Writes the slim form of kernel `input` to `output` (atomically; `output`
/// may be `input`). See [`slim_kernel_elf`].
pub fn slim_kernel(input: &Path, output: &Path) -> Result<SlimStats, ImageError> {
    let elf = read_input(input)?;
    let (slim, stats) = slim_kernel_elf(&elf).map_err(|why| ImageError::BadInput {
        path: input.to_path_buf(),
        why,
    })?;
    let mut tmp_name = output.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let write = || -> io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&slim)?;
        f.sync_all()
    };
    if let Err(err) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(ImageError::Io { path: tmp, err });
    }
    fs::rename(&tmp, output).map_err(io_err(output))?;
    Ok(stats)
}
