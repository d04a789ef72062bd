//! Read-only root filesystems for stdio MCP servers in microVMs.
//!
//! [`build`] turns a server command (`node /srv/echo_server.js`) into an
//! uncompressed erofs image holding exactly what that command needs: the
//! program (found on PATH), the interpreter of a `#!` script, the dynamic
//! loader and the whole shared-library closure read from the ELF files
//! themselves ([`elf`]), Python's standard library for a `python3.X`, every
//! `--include`d file or tree, files named by the command's arguments, the
//! empty mount points `/dev /proc /sys /tmp`, and the manifest
//! [`MANIFEST_PATH`] whose `command` the guest runs by default.
//!
//! Everything is decided first, as a [`Plan`] (guest path → directory, file
//! with its content hash, or symlink), so that a missing piece is an error
//! naming it before anything is written or any VM starts. The image is keyed
//! by SHA-256 over the plan's canonical description (mkfs version and flags,
//! each path, mode, content hash and symlink target, the manifest): the same
//! inputs give the same key, and a key already in the cache
//! (`<cache_dir>/rootfs/<key>.erofs` + `<key>.json`) is used as it is, with
//! no staging and no mkfs. Otherwise the plan is staged into a temporary
//! directory and `mkfs.erofs` makes the image with fixed timestamps, owners
//! and UUID, without xattrs, so the same inputs give the same bytes; both
//! files are written to temporary names and renamed into place.

use crate::elf;
use crate::fsafe::lexical_normal;
use crate::subprocess;
use crate::vmabi::hex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Where the manifest sits in the image; the guest reads its `command`.
pub const MANIFEST_PATH: &str = crate::vmabi::ROOTFS_MANIFEST;
/// Subdirectory of the cache directory holding the images.
pub const ROOTFS_SUBDIR: &str = "rootfs";
/// Extension of a cached image.
pub const IMAGE_EXT: &str = "erofs";
/// Extension of a cached image's manifest.
pub const MANIFEST_EXT: &str = "json";
/// The program that makes the image (Debian package erofs-utils).
pub const MKFS_BIN: &str = "mkfs.erofs";
/// How to get [`MKFS_BIN`].
pub const MKFS_INSTALL: &str = "apt-get install erofs-utils (or scripts/setup-microvm.sh)";
/// Flags that make mkfs.erofs's output depend only on the staged tree:
/// every timestamp 0, every owner root, no xattrs (the staging filesystem's
/// security labels would otherwise leak in). The UUID comes from the key.
pub const MKFS_FLAGS: &[&str] = &["--quiet", "-x-1", "-T0", "--all-root"];
/// Empty directories every image has: the guest mounts over them, and a
/// read-only image cannot create them at boot.
pub const MOUNT_POINTS: &[&str] = &["/dev", "/proc", "/sys", "/tmp"];
/// Where the dynamic loader looks when nothing else says (Debian x86_64,
/// multiarch first).
pub const LOADER_DEFAULT_DIRS: &[&str] = &[
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
    "/lib64",
    "/lib",
    "/usr/lib",
];
/// Where a library found only through /etc/ld.so.conf is also linked from in
/// the image: the image has no ld.so.cache, so the guest's loader searches
/// only its default directories (and RUNPATHs).
pub const GUEST_LIB_DIR: &str = "/usr/lib/x86_64-linux-gnu";
/// The loader's configuration (plain directories and `include` globs).
pub const LD_SO_CONF: &str = "/etc/ld.so.conf";
/// Top-level entries of Python's standard library left out of images: its
/// tests, the IDE, Tk (no display in a microVM), pip's bootstrapper, and the
/// static library and build files used only to compile extensions.
pub const PYTHON_SKIP: &[&str] = &["test", "idlelib", "tkinter", "ensurepip", "config-3."];
/// Interpreters refused as the program (or its `#!`): a shell script runs
/// programs the builder cannot see (a pyenv shim runs `pyenv exec`), so its
/// image would start and then fail inside the VM.
pub const SHELLS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "busybox", "fish", "csh", "tcsh",
];
/// Deadline for `mkfs.erofs` (a 100 MB image takes a few seconds).
pub const MKFS_TIMEOUT: Duration = Duration::from_secs(600);
/// Deadline for asking a tool its version or Python its prefix.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Interpreter nesting the kernel allows for `#!` (BINPRM's limit is 4).
const MAX_SCRIPT_DEPTH: usize = 4;
/// Bytes of a script's first line the kernel reads (BINPRM_BUF_SIZE).
const SHEBANG_MAX: usize = 256;
/// Nesting of `include` lines in ld.so.conf followed.
const MAX_LD_CONF_DEPTH: usize = 8;
/// Depth of directories (and of followed symlinks) in an included tree.
const MAX_TREE_DEPTH: usize = 64;
/// ELF machine of the guests (x86_64).
const EM_X86_64: u16 = 62;
/// Version of the description format: bump when the image's layout rules change.
const DESCRIPTION_VERSION: &str = "ukload-rootfs 1";
/// Mode of directories the plan creates as parents.
const DIR_MODE: u32 = 0o755;
/// Mode of the manifest file.
const MANIFEST_MODE: u32 = 0o644;
/// Permission bits kept from host files.
const MODE_BITS: u32 = 0o7777;

/// Why a root filesystem could not be built.
#[derive(Debug)]
pub enum RootfsError {
    /// A bad command line or `--include` value.
    Usage(String),
    /// The command's program is not on PATH (or not at the path given).
    ProgramNotFound { program: String, searched: String },
    /// The program (or a `#!` interpreter) is a shell script.
    ShellScript {
        script: PathBuf,
        interpreter: String,
    },
    /// A file is neither ELF nor a `#!` script.
    NotExecutable { path: PathBuf },
    /// A `DT_NEEDED` library was not found.
    LibraryNotFound {
        library: String,
        needed_by: PathBuf,
        searched: Vec<PathBuf>,
    },
    /// An `--include` host path (or a symlink in it) does not exist.
    IncludeMissing { host: PathBuf },
    /// An ELF file could not be read.
    Elf(elf::ElfError),
    /// Two things want the same guest path.
    Conflict {
        guest: PathBuf,
        first: String,
        second: String,
    },
    /// Python's standard library was not found.
    Python { program: PathBuf, why: String },
    /// mkfs.erofs is not installed.
    MkfsMissing,
    /// mkfs.erofs failed or took too long.
    Mkfs(String),
    /// A host file changed between hashing and staging.
    Changed { path: PathBuf },
    /// Reading or writing a file failed.
    Io { path: PathBuf, err: io::Error },
}

impl RootfsError {
    /// The exit code of `ukload image rootfs` failing with this error: 64
    /// for what the user asked for, 69 without mkfs.erofs, 74 for a file
    /// that could not be read or written, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        use crate::exit::{EXIT_FAIL, EXIT_IOERR, EXIT_UNAVAILABLE, EXIT_USAGE};
        match self {
            e if e.is_input() => EXIT_USAGE,
            RootfsError::MkfsMissing => EXIT_UNAVAILABLE,
            RootfsError::Io { .. } => EXIT_IOERR,
            _ => EXIT_FAIL,
        }
    }

    /// True for errors in what the user asked for (exit code: usage).
    pub fn is_input(&self) -> bool {
        !matches!(
            self,
            RootfsError::MkfsMissing
                | RootfsError::Mkfs(_)
                | RootfsError::Io { .. }
                | RootfsError::Changed { .. }
        )
    }

    fn io(path: &Path) -> impl FnOnce(io::Error) -> RootfsError + '_ {
        move |err| RootfsError::Io {
            path: path.to_path_buf(),
            err,
        }
    }
}

impl fmt::Display for RootfsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootfsError::Usage(m) => f.write_str(m),
            RootfsError::ProgramNotFound { program, searched } => write!(
                f,
                "program `{program}` not found (searched {searched}): install it, or name it by its absolute path"
            ),
            RootfsError::ShellScript { script, interpreter } => write!(
                f,
                "{} is a shell script (#!{interpreter}; a pyenv shim is one): the image would need every program \
                 the script runs, which cannot be known; name the real program instead (e.g. /usr/bin/python3, \
                 or what `pyenv which python3` prints)",
                script.display()
            ),
            RootfsError::NotExecutable { path } => write!(
                f,
                "{} is neither an ELF program nor a #! script",
                path.display()
            ),
            RootfsError::LibraryNotFound {
                library,
                needed_by,
                searched,
            } => {
                let dirs: Vec<String> = searched.iter().map(|d| d.display().to_string()).collect();
                write!(
                    f,
                    "{library} needed by {} not found in {}: install the package that ships it",
                    needed_by.display(),
                    dirs.join(":")
                )
            }
            RootfsError::IncludeMissing { host } => write!(
                f,
                "include {} does not exist (--include HOST[:GUEST] copies HOST into the image)",
                host.display()
            ),
            RootfsError::Elf(e) => write!(f, "{e}"),
            RootfsError::Conflict {
                guest,
                first,
                second,
            } => write!(
                f,
                "two different things for {} in the image: {first} and {second}; give one of them another GUEST path",
                guest.display()
            ),
            RootfsError::Python { program, why } => write!(
                f,
                "cannot find the standard library of {}: {why}",
                program.display()
            ),
            RootfsError::MkfsMissing => {
                write!(f, "{MKFS_BIN} is not installed: {MKFS_INSTALL}")
            }
            RootfsError::Mkfs(m) => write!(f, "{MKFS_BIN} failed: {m}"),
            RootfsError::Changed { path } => write!(
                f,
                "{} changed while the image was being built: build again",
                path.display()
            ),
            RootfsError::Io { path, err } => write!(f, "{}: {err}", path.display()),
        }
    }
}

impl std::error::Error for RootfsError {}

impl From<elf::ElfError> for RootfsError {
    fn from(e: elf::ElfError) -> Self {
        RootfsError::Elf(e)
    }
}

/// One `--include HOST[:GUEST]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    /// Absolute host path (file or directory).
    pub host: PathBuf,
    /// Absolute path in the image.
    pub guest: PathBuf,
}

impl Include {
    /// Parses `HOST[:GUEST]` (split at the first ':'). A relative HOST is
    /// made absolute against the current directory; GUEST defaults to that
    /// absolute HOST and must be absolute, without `..`. Existence is
    /// checked by [`build`].
    pub fn parse(s: &str) -> Result<Include, RootfsError> {
        let usage = |why: &str| RootfsError::Usage(format!("--include {s:?}: {why}"));
        let (host, guest) = match s.split_once(':') {
            Some((h, g)) => (h, Some(g)),
            None => (s, None),
        };
        if host.is_empty() {
            return Err(usage("HOST is empty (expected HOST[:GUEST])"));
        }
        let host = absolute(Path::new(host)).map_err(|e| usage(&e.to_string()))?;
        let guest = match guest {
            None => host.clone(),
            Some("") => return Err(usage("GUEST after ':' is empty (expected HOST[:GUEST])")),
            Some(g) => PathBuf::from(g),
        };
        check_guest_path(&guest).map_err(|why| usage(&why))?;
        Ok(Include {
            host,
            guest: lexical_normal(&guest),
        })
    }
}

/// Whether `guest` can be written into: absolute, no `..`, not under a mount
/// point nor the manifest.
fn check_guest_path(guest: &Path) -> Result<(), String> {
    if !guest.is_absolute() {
        return Err(format!("GUEST {} must be absolute", guest.display()));
    }
    if guest.components().any(|c| c == Component::ParentDir) {
        return Err(format!("GUEST {} must not contain '..'", guest.display()));
    }
    let g = lexical_normal(guest);
    for m in MOUNT_POINTS.iter().filter(|m| **m != "/tmp") {
        if g.starts_with(m) {
            return Err(format!(
                "GUEST {} is under {m}, which the guest mounts over",
                g.display()
            ));
        }
    }
    if g == Path::new(MANIFEST_PATH) {
        return Err(format!("GUEST {MANIFEST_PATH} is the image's manifest"));
    }
    Ok(())
}

/// What to put in an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsSpec {
    /// The server command, as run on the host (argv).
    pub command: Vec<String>,
    /// Extra files and trees.
    pub includes: Vec<Include>,
}

impl RootfsSpec {
    /// A spec from a command line string (split shell-style, without a
    /// shell) and `--include` values.
    pub fn parse(command: &str, includes: &[String]) -> Result<RootfsSpec, RootfsError> {
        let command = crate::mcp::split_command(command)
            .map_err(|e| RootfsError::Usage(format!("--command: {e}")))?;
        if command.is_empty() {
            return Err(RootfsError::Usage("--command is empty".into()));
        }
        let includes = includes
            .iter()
            .map(|s| Include::parse(s))
            .collect::<Result<_, _>>()?;
        Ok(RootfsSpec { command, includes })
    }

    /// The argv as it must run in the guest: the program by the absolute
    /// path it has in the image (a bare name is resolved on PATH), and every
    /// argument naming an existing host file by its absolute path (those
    /// files are put in the image at that path).
    pub fn guest_command(&self) -> Vec<String> {
        let program = self.command.first().and_then(|p| resolve_program(p).ok());
        self.guest_argv(program.as_deref(), &self.argument_files())
    }

    /// [`RootfsSpec::guest_command`] from what was already looked up: the
    /// program's absolute path (`None`: keep it as given) and the
    /// [`RootfsSpec::argument_files`].
    fn guest_argv(&self, program: Option<&Path>, files: &[(usize, PathBuf)]) -> Vec<String> {
        let mut argv = self.command.clone();
        if let (Some(first), Some(p)) = (argv.first_mut(), program) {
            *first = p.to_string_lossy().into_owned();
        }
        for (i, abs) in files {
            argv[*i] = abs.to_string_lossy().into_owned();
        }
        argv
    }

    /// Arguments (after the program) that name existing host files: index
    /// and absolute path. Options (`-x`, `--x`) never count.
    pub fn argument_files(&self) -> Vec<(usize, PathBuf)> {
        self.command
            .iter()
            .enumerate()
            .skip(1)
            .filter(|(_, a)| !a.starts_with('-') && Path::new(a).is_file())
            .filter_map(|(i, a)| absolute(Path::new(a)).ok().map(|p| (i, p)))
            .collect()
    }
}

/// The manifest at [`MANIFEST_PATH`] (and `<key>.json` in the cache).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The guest's default server command (argv).
    pub command: Vec<String>,
    /// Regular files in the image (the manifest included).
    pub files: u64,
    /// Bytes of those files.
    pub bytes: u64,
    /// Guest paths of the loader and the shared libraries.
    pub libraries: Vec<String>,
    /// Guest paths of the included files and trees (argument files too).
    pub includes: Vec<String>,
}

/// One thing at a guest path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory.
    Dir { mode: u32 },
    /// A regular file: content from `source` (on the host), or the manifest
    /// (`source` None, content in `Plan::manifest_bytes`).
    File {
        source: Option<PathBuf>,
        mode: u32,
        size: u64,
        sha256: String,
    },
    /// A symbolic link.
    Symlink { target: PathBuf },
}

impl Entry {
    fn describe(&self) -> String {
        match self {
            Entry::Dir { .. } => "a directory".into(),
            Entry::File {
                source: Some(s), ..
            } => format!("file {}", s.display()),
            Entry::File { source: None, .. } => "the manifest".into(),
            Entry::Symlink { target } => format!("a symlink to {}", target.display()),
        }
    }
}

/// Everything an image will hold, decided before anything is written.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Guest path → entry (parents before children).
    pub entries: BTreeMap<PathBuf, Entry>,
    /// The manifest.
    pub manifest: Manifest,
    /// Its bytes (pretty JSON).
    pub manifest_bytes: Vec<u8>,
    /// Things left out, with why (e.g. a Python extension module whose
    /// library the host lacks: the host cannot import it either).
    pub warnings: Vec<String>,
    /// The mkfs.erofs version line the key was computed with.
    pub mkfs_version: String,
}

impl Plan {
    /// The canonical description hashed into the key.
    pub fn description(&self) -> String {
        let mut d = format!(
            "{DESCRIPTION_VERSION}\nmkfs {} {}\n",
            self.mkfs_version,
            MKFS_FLAGS.join(" ")
        );
        // Paths in Debug form: quoted and escaped, so no name can forge a line.
        for (p, e) in &self.entries {
            match e {
                Entry::Dir { mode } => d += &format!("D {p:?} {mode:o}\n"),
                Entry::File {
                    mode, size, sha256, ..
                } => d += &format!("F {p:?} {mode:o} {size} {sha256}\n"),
                Entry::Symlink { target } => d += &format!("L {p:?} {target:?}\n"),
            }
        }
        d
    }

    /// SHA-256 of [`Plan::description`], hex.
    pub fn key(&self) -> String {
        hex(&Sha256::digest(self.description().as_bytes()))
    }
}

/// A built (or cached) image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsImage {
    /// `<cache_dir>/rootfs/<key>.erofs`.
    pub path: PathBuf,
    /// The content key.
    pub key: String,
    /// What it holds.
    pub manifest: Manifest,
    /// True when the cache already had it (no mkfs ran).
    pub cached: bool,
    /// Size of the image file, bytes.
    pub size: u64,
    /// What was left out and why.
    pub warnings: Vec<String>,
}

/// Where images are kept in `cache_dir`.
pub fn rootfs_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join(ROOTFS_SUBDIR)
}

/// Builds the image for `spec` in `cache_dir` (or finds it there).
pub fn build(spec: &RootfsSpec, cache_dir: &Path) -> Result<RootfsImage, RootfsError> {
    // Input errors (a missing program, library or include) come first.
    let mut plan = plan(spec, "")?;
    plan.mkfs_version = mkfs_version()?;
    let key = plan.key();
    let dir = rootfs_dir(cache_dir);
    let image = dir.join(format!("{key}.{IMAGE_EXT}"));
    let manifest_file = dir.join(format!("{key}.{MANIFEST_EXT}"));
    let done = |cached| -> Result<RootfsImage, RootfsError> {
        Ok(RootfsImage {
            size: fs::metadata(&image).map_err(RootfsError::io(&image))?.len(),
            path: image.clone(),
            key: key.clone(),
            manifest: plan.manifest.clone(),
            cached,
            warnings: plan.warnings.clone(),
        })
    };
    if image.is_file() && manifest_file.is_file() {
        return done(true);
    }
    fs::create_dir_all(&dir).map_err(RootfsError::io(&dir))?;
    let tag = unique_tag();
    let stage = TempPath(dir.join(format!(".stage-{}-{tag}", &key[..12])));
    stage_plan(&plan, &stage.0)?;
    let tmp_image = TempPath(dir.join(format!(".{key}.{IMAGE_EXT}.{tag}")));
    run_mkfs(&tmp_image.0, &stage.0, &uuid_of(&key))?;
    drop(stage);
    fs::rename(&tmp_image.0, &image).map_err(RootfsError::io(&image))?;
    let tmp_manifest = TempPath(dir.join(format!(".{key}.{MANIFEST_EXT}.{tag}")));
    fs::write(&tmp_manifest.0, &plan.manifest_bytes).map_err(RootfsError::io(&tmp_manifest.0))?;
    fs::rename(&tmp_manifest.0, &manifest_file).map_err(RootfsError::io(&manifest_file))?;
    done(false)
}

/// The images in `cache_dir` (those with both the image and its manifest),
/// ordered by key.
pub fn list(cache_dir: &Path) -> Vec<RootfsImage> {
    let dir = rootfs_dir(cache_dir);
    let Ok(rd) = fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<RootfsImage> = rd
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let key = name.strip_suffix(&format!(".{MANIFEST_EXT}"))?;
            if key.starts_with('.') {
                return None;
            }
            let path = dir.join(format!("{key}.{IMAGE_EXT}"));
            let size = fs::metadata(&path).ok().filter(|m| m.is_file())?.len();
            let text = fs::read(e.path()).ok()?;
            let manifest = serde_json::from_slice(&text).ok()?;
            Some(RootfsImage {
                path,
                key: key.to_string(),
                manifest,
                cached: true,
                size,
                warnings: Vec::new(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

/// Copies a built image to `out` (temporary name beside it, then rename).
pub fn copy_image(image: &Path, out: &Path) -> Result<(), RootfsError> {
    let name = out
        .file_name()
        .ok_or_else(|| RootfsError::Usage(format!("--out {}: not a file path", out.display())))?;
    let tmp = TempPath(out.with_file_name(format!(".{}.{}", name.to_string_lossy(), unique_tag())));
    // The error names `out`, what the user gave, not the temporary name.
    fs::copy(image, &tmp.0).map_err(RootfsError::io(out))?;
    fs::rename(&tmp.0, out).map_err(RootfsError::io(out))
}

// --- the plan ----------------------------------------------------------------

/// Decides everything `spec` needs (no writes). `mkfs_version` goes into the
/// description (and so the key).
pub fn plan(spec: &RootfsSpec, mkfs_version: &str) -> Result<Plan, RootfsError> {
    let Some(program) = spec.command.first() else {
        return Err(RootfsError::Usage("--command is empty".into()));
    };
    let mut p = Planner::new();
    let named = resolve_program(program)?;
    p.add_program(&named, 0)?;
    let mut includes = BTreeSet::new();
    let argument_files = spec.argument_files();
    for (_, abs) in &argument_files {
        p.add_tree(abs, abs, &TreeRoot::same(abs), 0, Strictness::Strict)?;
        includes.insert(abs.to_string_lossy().into_owned());
    }
    for inc in &spec.includes {
        // A missing include is reported by add_tree (IncludeMissing).
        let root = TreeRoot {
            host: inc.host.clone(),
            guest: lexical_normal(&inc.guest),
        };
        p.add_tree(&inc.host, &inc.guest, &root, 0, Strictness::Strict)?;
        includes.insert(inc.guest.to_string_lossy().into_owned());
    }
    for m in MOUNT_POINTS {
        p.put(Path::new(m), Entry::Dir { mode: DIR_MODE }, "a mount point")?;
    }
    p.add_parents()?;
    let (mut files, mut bytes) = (1u64, 0u64);
    for e in p.entries.values() {
        if let Entry::File { size, .. } = e {
            files += 1;
            bytes += size;
        }
    }
    let mut manifest = Manifest {
        command: spec.guest_argv(Some(&named), &argument_files),
        files,
        bytes,
        libraries: p
            .libraries
            .iter()
            .map(|l| l.to_string_lossy().into_owned())
            .collect(),
        includes: includes.into_iter().collect(),
    };
    // The manifest counts itself: its size depends on the count's digits,
    // so settle it in two rounds.
    for _ in 0..2 {
        manifest.bytes = bytes + manifest_json(&manifest).len() as u64;
    }
    let manifest_bytes = manifest_json(&manifest);
    p.put(
        Path::new(MANIFEST_PATH),
        Entry::File {
            source: None,
            mode: MANIFEST_MODE,
            size: manifest_bytes.len() as u64,
            sha256: hex(&Sha256::digest(&manifest_bytes)),
        },
        "the manifest",
    )?;
    p.add_parents()?;
    Ok(Plan {
        entries: p.entries,
        manifest,
        manifest_bytes,
        warnings: p.warnings,
        mkfs_version: mkfs_version.to_string(),
    })
}

fn manifest_json(m: &Manifest) -> Vec<u8> {
    let mut v = serde_json::to_vec_pretty(m).expect("manifest serializes");
    v.push(b'\n');
    v
}

/// What a missing library of an ELF file in a tree means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Strictness {
    /// An error (the program, includes).
    Strict,
    /// Leave the file out with a warning (Python's extension modules: the
    /// host cannot import one whose library is missing either).
    DropFile,
}

/// An included tree: where it is on the host and where it goes.
struct TreeRoot {
    host: PathBuf,
    guest: PathBuf,
}

impl TreeRoot {
    fn same(p: &Path) -> TreeRoot {
        TreeRoot {
            host: p.to_path_buf(),
            guest: p.to_path_buf(),
        }
    }
}

struct Planner {
    entries: BTreeMap<PathBuf, Entry>,
    libraries: BTreeSet<PathBuf>,
    warnings: Vec<String>,
    /// Content hashes by real host path.
    hashes: HashMap<PathBuf, (u64, String)>,
    /// Parsed ELF files by host path (None: not ELF).
    elves: HashMap<PathBuf, Option<elf::ElfInfo>>,
    /// Directories from ld.so.conf, in order.
    conf_dirs: Vec<PathBuf>,
    /// The main program's DT_RPATH (searched for every object without
    /// RUNPATH, as the loader does).
    exe_rpath: Vec<PathBuf>,
    machine: u16,
}

impl Planner {
    fn new() -> Planner {
        let mut conf_dirs = Vec::new();
        read_ld_conf(Path::new(LD_SO_CONF), 0, &mut conf_dirs);
        Planner {
            entries: BTreeMap::new(),
            libraries: BTreeSet::new(),
            warnings: Vec::new(),
            hashes: HashMap::new(),
            elves: HashMap::new(),
            conf_dirs,
            exe_rpath: Vec::new(),
            machine: EM_X86_64,
        }
    }

    /// Puts `entry` at `guest`; the same thing twice is fine, two different
    /// things are a conflict.
    fn put(&mut self, guest: &Path, entry: Entry, what: &str) -> Result<(), RootfsError> {
        let guest = lexical_normal(guest);
        if let Some(old) = self.entries.get(&guest) {
            let same = match (old, &entry) {
                (Entry::Dir { .. }, Entry::Dir { .. }) => true,
                (
                    Entry::File {
                        sha256: a,
                        mode: ma,
                        ..
                    },
                    Entry::File {
                        sha256: b,
                        mode: mb,
                        ..
                    },
                ) => a == b && ma == mb,
                (a, b) => a == b,
            };
            if same {
                return Ok(());
            }
            return Err(RootfsError::Conflict {
                guest,
                first: old.describe(),
                second: format!("{what} ({})", entry.describe()),
            });
        }
        self.entries.insert(guest, entry);
        Ok(())
    }

    /// A regular file at `guest` with the content of `host` (symlinks
    /// followed) and `host`'s permission bits.
    fn put_file(&mut self, guest: &Path, host: &Path) -> Result<(), RootfsError> {
        let real = fs::canonicalize(host).map_err(RootfsError::io(host))?;
        let meta = fs::metadata(&real).map_err(RootfsError::io(&real))?;
        let (size, sha256) = match self.hashes.get(&real) {
            Some(h) => h.clone(),
            None => {
                let h = hash_file(&real)?;
                self.hashes.insert(real.clone(), h.clone());
                h
            }
        };
        let entry = Entry::File {
            source: Some(real),
            mode: meta.permissions().mode() & MODE_BITS,
            size,
            sha256,
        };
        self.put(guest, entry, &format!("file {}", host.display()))
    }

    fn elf_info(&mut self, path: &Path) -> Result<Option<elf::ElfInfo>, RootfsError> {
        if let Some(i) = self.elves.get(path) {
            return Ok(i.clone());
        }
        let info = match elf::read(path) {
            Ok(i) => Some(i),
            Err(elf::ElfError::NotElf(_)) => None,
            Err(e) => return Err(e.into()),
        };
        self.elves.insert(path.to_path_buf(), info.clone());
        Ok(info)
    }

    /// The program at `named` (absolute), its real file if `named` is a
    /// symlink, its interpreter if it is a script, and its closure.
    fn add_program(&mut self, named: &Path, depth: usize) -> Result<(), RootfsError> {
        let real = fs::canonicalize(named).map_err(RootfsError::io(named))?;
        self.put_file(&real, &real)?;
        if real != named {
            self.put(
                named,
                Entry::Symlink {
                    target: real.clone(),
                },
                &format!("the program {}", named.display()),
            )?;
        }
        if let Some(info) = self.elf_info(&real)? {
            if depth == 0 {
                self.machine = info.machine;
                let origin = real.parent().unwrap_or(Path::new("/")).to_path_buf();
                self.exe_rpath = expand_dirs(&info.rpath, &origin);
            }
            let libs = self.closure(&real)?;
            self.commit_libraries(libs, None)?;
            if let Some(stdlib) = python_stdlib(&real)? {
                self.add_python_stdlib(&stdlib)?;
            }
            return Ok(());
        }
        let Some((interp, arg)) = shebang(&real)? else {
            return Err(RootfsError::NotExecutable { path: real });
        };
        if depth >= MAX_SCRIPT_DEPTH {
            return Err(RootfsError::Usage(format!(
                "{}: more than {MAX_SCRIPT_DEPTH} nested #! interpreters",
                real.display()
            )));
        }
        let is_shell = |p: &str| {
            let base = Path::new(p)
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or(p);
            SHELLS.contains(&base)
        };
        let shell_err = |interpreter: String| RootfsError::ShellScript {
            script: named.to_path_buf(),
            interpreter,
        };
        let line = match &arg {
            Some(a) => format!("{interp} {a}"),
            None => interp.clone(),
        };
        if is_shell(&interp) {
            return Err(shell_err(line));
        }
        let interp_path = PathBuf::from(&interp);
        if !interp_path.is_absolute() || !interp_path.exists() {
            return Err(RootfsError::ProgramNotFound {
                program: format!("{interp} (the #! interpreter of {})", real.display()),
                searched: "its absolute path".into(),
            });
        }
        self.add_program(&interp_path, depth + 1)?;
        // `#!/usr/bin/env prog`: env finds prog on PATH at run time.
        if interp_path.file_name().is_some_and(|n| n == "env") {
            let words: Vec<&str> = arg.as_deref().unwrap_or("").split_whitespace().collect();
            let prog = words.iter().find(|w| !w.starts_with('-')).copied();
            if let Some(prog) = prog {
                if is_shell(prog) {
                    return Err(shell_err(line));
                }
                let found = resolve_program(prog)?;
                self.add_program(&found, depth + 1)?;
            }
        }
        Ok(())
    }

    /// Every library `start` needs, transitively, with the loader: the
    /// paths where the loader finds them. Nothing is added to the plan.
    fn closure(&mut self, start: &Path) -> Result<Vec<PathBuf>, RootfsError> {
        let mut found: Vec<PathBuf> = Vec::new();
        let mut seen: BTreeSet<PathBuf> = BTreeSet::new();
        // (object as found, real file, its $ORIGIN)
        let origin_of_start = start.parent().unwrap_or(Path::new("/")).to_path_buf();
        let mut work = vec![(start.to_path_buf(), origin_of_start)];
        while let Some((obj, origin)) = work.pop() {
            let Some(info) = self.elf_info(&obj)? else {
                continue;
            };
            if let Some(interp) = &info.interp {
                if !interp.exists() {
                    return Err(RootfsError::LibraryNotFound {
                        library: interp.display().to_string(),
                        needed_by: obj.clone(),
                        searched: vec![interp.parent().unwrap_or(Path::new("/")).to_path_buf()],
                    });
                }
                if seen.insert(interp.clone()) {
                    found.push(interp.clone());
                }
            }
            for name in &info.needed {
                let (hit, searched) = self.find_library(name, &info, &origin);
                let Some(lib) = hit else {
                    return Err(RootfsError::LibraryNotFound {
                        library: name.clone(),
                        needed_by: obj.clone(),
                        searched,
                    });
                };
                if seen.insert(lib.clone()) {
                    let lib_origin = lib.parent().unwrap_or(Path::new("/")).to_path_buf();
                    found.push(lib.clone());
                    work.push((lib, lib_origin));
                }
            }
        }
        Ok(found)
    }

    /// Puts libraries in the plan where they were found; one inside an
    /// included tree goes where that tree goes (`$ORIGIN` paths then work in
    /// the guest as on the host).
    fn commit_libraries(
        &mut self,
        libs: Vec<PathBuf>,
        tree: Option<&TreeRoot>,
    ) -> Result<(), RootfsError> {
        for found in libs {
            let lib = match tree.map(|t| (t, found.strip_prefix(&t.host))) {
                Some((t, Ok(rest))) if t.host != t.guest => t.guest.join(rest),
                _ => found.clone(),
            };
            self.put_file(&lib, &found)?;
            let dir = lib.parent().unwrap_or(Path::new("/"));
            let default = LOADER_DEFAULT_DIRS.iter().any(|d| Path::new(d) == dir);
            if !default && self.conf_dirs.iter().any(|d| d == dir) {
                // Found through ld.so.conf, which the guest has no cache of.
                if let Some(name) = lib.file_name() {
                    let link = Path::new(GUEST_LIB_DIR).join(name);
                    self.put(
                        &link,
                        Entry::Symlink {
                            target: lib.clone(),
                        },
                        &format!("a link to {} (found through {LD_SO_CONF})", lib.display()),
                    )?;
                }
            }
            self.libraries.insert(lib);
        }
        Ok(())
    }

    /// Where the loader finds `name` for an object with `info` at `origin`,
    /// and the directories searched.
    fn find_library(
        &mut self,
        name: &str,
        info: &elf::ElfInfo,
        origin: &Path,
    ) -> (Option<PathBuf>, Vec<PathBuf>) {
        if name.contains('/') {
            let p = PathBuf::from(expand_origin(name, origin));
            let ok = p.is_file();
            return (ok.then_some(p.clone()), vec![p]);
        }
        let mut dirs: Vec<PathBuf> = Vec::new();
        if info.runpath.is_empty() {
            dirs.extend(expand_dirs(&info.rpath, origin));
            dirs.extend(self.exe_rpath.iter().cloned());
        }
        dirs.extend(expand_dirs(&info.runpath, origin));
        dirs.extend(self.conf_dirs.iter().cloned());
        dirs.extend(LOADER_DEFAULT_DIRS.iter().map(PathBuf::from));
        let mut uniq = Vec::new();
        for d in dirs {
            if !uniq.contains(&d) {
                uniq.push(d);
            }
        }
        for d in &uniq {
            let cand = d.join(name);
            if !cand.is_file() {
                continue;
            }
            // The loader skips libraries of another machine or class.
            if let Ok(Some(i)) = self.elf_info(&cand) {
                if i.machine == self.machine {
                    return (Some(cand), uniq);
                }
            }
        }
        (None, uniq)
    }

    /// A file or tree from `host` at `guest`. Symlinks inside `root` with a
    /// relative target that stays inside `root` stay symlinks; others are
    /// followed and their content copied. ELF files bring their closure.
    fn add_tree(
        &mut self,
        host: &Path,
        guest: &Path,
        root: &TreeRoot,
        depth: usize,
        strict: Strictness,
    ) -> Result<(), RootfsError> {
        if depth > MAX_TREE_DEPTH {
            return Err(RootfsError::Usage(format!(
                "{}: more than {MAX_TREE_DEPTH} levels of directories or symlinks",
                host.display()
            )));
        }
        let meta = fs::symlink_metadata(host).map_err(|_| RootfsError::IncludeMissing {
            host: host.to_path_buf(),
        })?;
        if meta.file_type().is_symlink() {
            return self.add_tree_symlink(host, guest, root, depth, strict);
        }
        if meta.is_dir() {
            return self.add_tree_dir(host, guest, &meta, root, depth, strict);
        }
        if !meta.is_file() {
            self.warnings.push(format!(
                "{} left out: not a regular file, directory or symlink",
                host.display()
            ));
            return Ok(());
        }
        self.add_tree_file(host, guest, root, strict)
    }

    /// The symlink `host` of a tree: kept as a link if its relative target
    /// stays inside `root`, else followed (refusing a loop).
    fn add_tree_symlink(
        &mut self,
        host: &Path,
        guest: &Path,
        root: &TreeRoot,
        depth: usize,
        strict: Strictness,
    ) -> Result<(), RootfsError> {
        let target = fs::read_link(host).map_err(RootfsError::io(host))?;
        let parent = host.parent().unwrap_or(Path::new("/"));
        let inside = target.is_relative()
            && host != root.host
            && lexical_normal(&parent.join(&target)).starts_with(&root.host);
        if inside {
            return self.put(
                guest,
                Entry::Symlink { target },
                &format!("link {}", host.display()),
            );
        }
        let real = fs::canonicalize(host).map_err(|_| RootfsError::IncludeMissing {
            host: host.to_path_buf(),
        })?;
        // A link to a directory the walk is inside would copy forever.
        let walking = fs::canonicalize(parent).unwrap_or_else(|_| parent.to_path_buf());
        if real.is_dir() && walking.starts_with(&real) {
            return Err(RootfsError::Usage(format!(
                "{} links to {}, which contains it: a loop (make the link relative or leave it out)",
                host.display(),
                real.display()
            )));
        }
        self.add_tree(&real, guest, root, depth + 1, strict)
    }

    /// The directory `host` of a tree with its mode, then its entries in
    /// name order.
    fn add_tree_dir(
        &mut self,
        host: &Path,
        guest: &Path,
        meta: &fs::Metadata,
        root: &TreeRoot,
        depth: usize,
        strict: Strictness,
    ) -> Result<(), RootfsError> {
        self.put_dir(guest, meta, &format!("directory {}", host.display()))?;
        self.add_dir_entries(host, guest, root, depth, strict, &|_| true)
    }

    /// A directory at `guest` with the permission bits of `meta`.
    fn put_dir(
        &mut self,
        guest: &Path,
        meta: &fs::Metadata,
        what: &str,
    ) -> Result<(), RootfsError> {
        let mode = meta.permissions().mode() & MODE_BITS;
        self.put(guest, Entry::Dir { mode }, what)
    }

    /// The entries of the tree directory `host` (at `depth`) that `keep`
    /// accepts, in name order, each at its name under `guest`.
    fn add_dir_entries(
        &mut self,
        host: &Path,
        guest: &Path,
        root: &TreeRoot,
        depth: usize,
        strict: Strictness,
        keep: &dyn Fn(&std::ffi::OsStr) -> bool,
    ) -> Result<(), RootfsError> {
        let mut names: Vec<_> = fs::read_dir(host)
            .map_err(RootfsError::io(host))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(RootfsError::io(host))?;
        names.retain(|n| keep(n));
        names.sort();
        for n in names {
            self.add_tree(&host.join(&n), &guest.join(&n), root, depth + 1, strict)?;
        }
        Ok(())
    }

    /// The regular file `host` of a tree; a loadable ELF file of this
    /// machine brings its libraries (or, under [`Strictness::DropFile`], is
    /// left out with a warning when one is missing).
    fn add_tree_file(
        &mut self,
        host: &Path,
        guest: &Path,
        root: &TreeRoot,
        strict: Strictness,
    ) -> Result<(), RootfsError> {
        let info = match self.elf_info(host) {
            Ok(i) => i,
            Err(e) => {
                // 32-bit or odd ELF files in a tree are data to us.
                self.warnings
                    .push(format!("{e}: copied without its libraries"));
                None
            }
        };
        if let Some(info) = info {
            let loadable = matches!(info.elf_type, elf::ET_DYN | elf::ET_EXEC);
            if loadable && info.machine == self.machine {
                match self.closure(host) {
                    Ok(libs) => self.commit_libraries(libs, Some(root))?,
                    Err(e @ RootfsError::LibraryNotFound { .. })
                        if strict == Strictness::DropFile =>
                    {
                        self.warnings
                            .push(format!("{} left out: {e}", host.display()));
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                }
            } else if loadable {
                self.warnings.push(format!(
                    "{} is an ELF file for another machine: copied without its libraries",
                    host.display()
                ));
            }
        }
        self.put_file(guest, host)
    }

    /// Python's standard library `dir` at the same path, as a tree without
    /// the top-level entries of [`PYTHON_SKIP`]; an extension module whose
    /// library is missing is left out ([`Strictness::DropFile`]).
    fn add_python_stdlib(&mut self, dir: &Path) -> Result<(), RootfsError> {
        let meta = fs::metadata(dir).map_err(RootfsError::io(dir))?;
        self.put_dir(dir, &meta, "Python's standard library")?;
        let keep = |name: &std::ffi::OsStr| {
            let s = name.to_string_lossy();
            !PYTHON_SKIP
                .iter()
                .any(|skip| s == *skip || (skip.ends_with('.') && s.starts_with(skip)))
        };
        self.add_dir_entries(
            dir,
            dir,
            &TreeRoot::same(dir),
            0,
            Strictness::DropFile,
            &keep,
        )
    }

    /// Every entry's parent directories, as directories.
    fn add_parents(&mut self) -> Result<(), RootfsError> {
        let paths: Vec<PathBuf> = self.entries.keys().cloned().collect();
        for p in paths {
            for anc in p.ancestors().skip(1) {
                match self.entries.get(anc) {
                    Some(Entry::Dir { .. }) => break,
                    Some(other) => {
                        return Err(RootfsError::Conflict {
                            guest: anc.to_path_buf(),
                            first: other.describe(),
                            second: format!("the directory holding {}", p.display()),
                        })
                    }
                    None => {
                        self.entries
                            .insert(anc.to_path_buf(), Entry::Dir { mode: DIR_MODE });
                    }
                }
            }
        }
        Ok(())
    }
}

/// `$ORIGIN`, `$LIB`, `$PLATFORM` expanded as Debian's x86_64 loader does.
fn expand_origin(s: &str, origin: &Path) -> String {
    let o = origin.to_string_lossy();
    s.replace("${ORIGIN}", &o)
        .replace("$ORIGIN", &o)
        .replace("${LIB}", "lib/x86_64-linux-gnu")
        .replace("$LIB", "lib/x86_64-linux-gnu")
        .replace("${PLATFORM}", "x86_64")
        .replace("$PLATFORM", "x86_64")
}

/// RPATH/RUNPATH entries as absolute directories (relative ones depend on
/// the current directory at run time: skipped).
fn expand_dirs(dirs: &[String], origin: &Path) -> Vec<PathBuf> {
    dirs.iter()
        .map(|d| PathBuf::from(expand_origin(d, origin)))
        .filter(|d| d.is_absolute())
        .map(|d| lexical_normal(&d))
        .collect()
}

/// Directories listed in an ld.so.conf file, following `include` globs.
fn read_ld_conf(path: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    if depth > MAX_LD_CONF_DEPTH {
        return;
    }
    let Ok(text) = fs::read_to_string(path) else {
        return;
    };
    let base = path.parent().unwrap_or(Path::new("/"));
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() || line.starts_with("hwcap ") {
            continue;
        }
        if let Some(pat) = line.strip_prefix("include") {
            for pat in pat.split_whitespace() {
                let pat = base.join(pat);
                for f in glob_last_component(&pat) {
                    read_ld_conf(&f, depth + 1, out);
                }
            }
            continue;
        }
        // Old syntax allows "dir=TYPE" and several dirs per line.
        for d in line.split([' ', '\t', ',', ':']).filter(|d| !d.is_empty()) {
            let d = PathBuf::from(d.split('=').next().unwrap_or(d));
            if d.is_absolute() && !out.contains(&d) {
                out.push(d);
            }
        }
    }
}

/// Files matching `pat`, whose wildcards (`*`, `?`) may only be in the last
/// component (what ld.so.conf's `include` uses), sorted.
fn glob_last_component(pat: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (pat.parent(), pat.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    if !name.contains(['*', '?']) {
        return if pat.is_file() {
            vec![pat.to_path_buf()]
        } else {
            Vec::new()
        };
    }
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = rd
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(|n| wildcard(name, n)))
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// Shell-style match of `*` and `?`.
fn wildcard(pat: &str, s: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (pat.chars().collect(), s.chars().collect());
    let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// A `#!` line: interpreter and its optional single argument (as the
/// kernel splits it). None when the file is no script.
fn shebang(path: &Path) -> Result<Option<(String, Option<String>)>, RootfsError> {
    let mut buf = Vec::with_capacity(SHEBANG_MAX);
    fs::File::open(path)
        .and_then(|f| f.take(SHEBANG_MAX as u64).read_to_end(&mut buf))
        .map_err(RootfsError::io(path))?;
    let Some(rest) = buf.strip_prefix(b"#!") else {
        return Ok(None);
    };
    let line = rest.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let line = String::from_utf8_lossy(line);
    let line = line.trim();
    let (interp, arg) = match line.split_once([' ', '\t']) {
        Some((i, a)) => (i, Some(a.trim().to_string()).filter(|a| !a.is_empty())),
        None => (line, None),
    };
    if interp.is_empty() {
        return Ok(None);
    }
    Ok(Some((interp.to_string(), arg)))
}

/// The program `name` as an absolute path: a name with '/' is taken
/// relative to the current directory, a bare name is looked up on PATH.
pub fn resolve_program(name: &str) -> Result<PathBuf, RootfsError> {
    if name.contains('/') {
        let p = absolute(Path::new(name)).map_err(|e| RootfsError::Usage(e.to_string()))?;
        return if p.is_file() {
            Ok(p)
        } else {
            Err(RootfsError::ProgramNotFound {
                program: name.to_string(),
                searched: p.display().to_string(),
            })
        };
    }
    crate::paths::find_on_path(name).ok_or_else(|| RootfsError::ProgramNotFound {
        program: name.to_string(),
        searched: format!("PATH={}", std::env::var("PATH").unwrap_or_default()),
    })
}

/// Python's standard library directory for the interpreter `real`, or None
/// when `real` is not a Python 3. By convention first (`<prefix>/bin/python3.X`
/// → `<prefix>/lib/python3.X`), else by asking the interpreter (with a
/// deadline).
fn python_stdlib(real: &Path) -> Result<Option<PathBuf>, RootfsError> {
    let Some(name) = real.file_name().and_then(|n| n.to_str()) else {
        return Ok(None);
    };
    if name != "python3" && !name.starts_with("python3.") {
        return Ok(None);
    }
    let landmark = |dir: &Path| dir.join("os.py").is_file();
    let version = name.strip_prefix("python");
    let prefix = real.parent().and_then(Path::parent);
    if let (Some(v), Some(prefix)) = (version, prefix) {
        let dir = prefix.join("lib").join(format!("python{v}"));
        if v.contains('.') && landmark(&dir) {
            return Ok(Some(dir));
        }
    }
    let out = output_within(
        Command::new(real).args([
            "-c",
            "import sys;print(sys.base_prefix);print('%d.%d' % sys.version_info[:2])",
        ]),
        QUERY_TIMEOUT,
    )
    .map_err(|why| RootfsError::Python {
        program: real.to_path_buf(),
        why,
    })?;
    let mut lines = out.lines();
    let (Some(prefix), Some(v)) = (lines.next(), lines.next()) else {
        return Err(RootfsError::Python {
            program: real.to_path_buf(),
            why: format!("unexpected answer {out:?} to sys.base_prefix, sys.version_info"),
        });
    };
    let dir = Path::new(prefix.trim())
        .join("lib")
        .join(format!("python{}", v.trim()));
    if landmark(&dir) {
        Ok(Some(dir))
    } else {
        Err(RootfsError::Python {
            program: real.to_path_buf(),
            why: format!("{} has no os.py", dir.display()),
        })
    }
}

/// stdout of `cmd` if it exits 0 within `limit`.
fn output_within(cmd: &mut Command, limit: Duration) -> Result<String, String> {
    subprocess::run_within(cmd, limit)
        .map_err(|e| format!("running {cmd:?}: {e}"))?
        .ok(cmd)
}

/// mkfs.erofs's version line ("mkfs.erofs 1.5"), which goes into the key.
pub fn mkfs_version() -> Result<String, RootfsError> {
    if crate::paths::find_on_path(MKFS_BIN).is_none() {
        return Err(RootfsError::MkfsMissing);
    }
    // With no arguments it prints its version on stdout, usage on stderr,
    // and exits non-zero.
    let done =
        subprocess::run_within(&mut Command::new(MKFS_BIN), QUERY_TIMEOUT).map_err(|e| match e
            .kind()
        {
            io::ErrorKind::NotFound => RootfsError::MkfsMissing,
            _ => RootfsError::Mkfs(e.to_string()),
        })?;
    done.stdout
        .lines()
        .find(|l| l.starts_with(MKFS_BIN))
        .map(|l| l.trim().to_string())
        .ok_or_else(|| RootfsError::Mkfs(format!("no version line in {:?}", done.stdout)))
}

fn run_mkfs(image: &Path, stage: &Path, uuid: &str) -> Result<(), RootfsError> {
    let mut cmd = Command::new(MKFS_BIN);
    cmd.args(MKFS_FLAGS)
        .arg(format!("-U{uuid}"))
        .arg(image)
        .arg(stage);
    output_within(&mut cmd, MKFS_TIMEOUT)
        .map(|_| ())
        .map_err(RootfsError::Mkfs)
}

/// Writes the plan's tree under `stage`.
fn stage_plan(plan: &Plan, stage: &Path) -> Result<(), RootfsError> {
    fs::create_dir(stage).map_err(RootfsError::io(stage))?;
    let at = |g: &Path| stage.join(g.strip_prefix("/").unwrap_or(g));
    for (guest, e) in &plan.entries {
        let dst = at(guest);
        match e {
            Entry::Dir { .. } => {
                if dst != stage {
                    fs::create_dir(&dst).map_err(RootfsError::io(&dst))?;
                }
            }
            Entry::Symlink { target } => {
                std::os::unix::fs::symlink(target, &dst).map_err(RootfsError::io(&dst))?
            }
            Entry::File {
                source,
                mode,
                sha256,
                ..
            } => {
                match source {
                    Some(src) => copy_checked(src, &dst, sha256)?,
                    None => fs::write(&dst, &plan.manifest_bytes).map_err(RootfsError::io(&dst))?,
                }
                fs::set_permissions(&dst, fs::Permissions::from_mode(*mode))
                    .map_err(RootfsError::io(&dst))?;
            }
        }
    }
    // Directory modes last, deepest first: a read-only directory must still
    // take its children.
    for (guest, e) in plan.entries.iter().rev() {
        if let Entry::Dir { mode } = e {
            let dst = at(guest);
            fs::set_permissions(&dst, fs::Permissions::from_mode(*mode))
                .map_err(RootfsError::io(&dst))?;
        }
    }
    Ok(())
}

/// Copies `src` to `dst`, hashing on the way: a file that changed since the
/// plan was made would give an image that does not match its key.
fn copy_checked(src: &Path, dst: &Path, sha256: &str) -> Result<(), RootfsError> {
    let mut input = fs::File::open(src).map_err(RootfsError::io(src))?;
    let mut output = fs::File::create(dst).map_err(RootfsError::io(dst))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input.read(&mut buf).map_err(RootfsError::io(src))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        output.write_all(&buf[..n]).map_err(RootfsError::io(dst))?;
    }
    if hex(&h.finalize()) != sha256 {
        return Err(RootfsError::Changed {
            path: src.to_path_buf(),
        });
    }
    Ok(())
}

/// Size and SHA-256 (hex) of a file.
fn hash_file(path: &Path) -> Result<(u64, String), RootfsError> {
    let mut f = fs::File::open(path).map_err(RootfsError::io(path))?;
    let mut h = Sha256::new();
    let n = io::copy(&mut f, &mut h).map_err(RootfsError::io(path))?;
    Ok((n, hex(&h.finalize())))
}

/// The image's filesystem UUID: the key's first 16 bytes (fixed for the
/// same content, different between images).
fn uuid_of(key: &str) -> String {
    format!(
        "{}-{}-{}-{}-{}",
        &key[0..8],
        &key[8..12],
        &key[12..16],
        &key[16..20],
        &key[20..32]
    )
}

/// `p` absolute (against the current directory; an empty path is an
/// error), with `.` removed and `..` applied lexically.
fn absolute(p: &Path) -> io::Result<PathBuf> {
    std::path::absolute(p).map(|p| lexical_normal(&p))
}

fn unique_tag() -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{n}", std::process::id())
}

/// A path removed (file or tree) when dropped.
struct TempPath(PathBuf);

impl Drop for TempPath {
    fn drop(&mut self) {
        match fs::symlink_metadata(&self.0) {
            Ok(m) if m.is_dir() => {
                // Read-only directories (mode 0555) must be made writable to empty.
                make_writable(&self.0);
                let _ = fs::remove_dir_all(&self.0);
            }
            Ok(_) => {
                let _ = fs::remove_file(&self.0);
            }
            Err(_) => {}
        }
    }
}

fn make_writable(dir: &Path) {
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o755));
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                make_writable(&e.path());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_parsing() {
        let i = Include::parse("/etc/hostname:/srv/name").unwrap();
        assert_eq!(i.host, PathBuf::from("/etc/hostname"));
        assert_eq!(i.guest, PathBuf::from("/srv/name"));
        let i = Include::parse("/srv/./x").unwrap();
        assert_eq!(i.guest, PathBuf::from("/srv/x"));
        let rel = Include::parse("examples").unwrap();
        assert!(rel.host.is_absolute() && rel.host.ends_with("examples"));
        assert_eq!(rel.host, rel.guest);
        for bad in [
            "",
            ":/x",
            "/a:",
            "/a:rel/path",
            "/a:/x/../y",
            "/a:/proc/x",
            "/a:/etc/ukload-rootfs.json",
        ] {
            let e = Include::parse(bad).unwrap_err();
            assert!(matches!(e, RootfsError::Usage(_)), "{bad}: {e}");
            assert!(e.to_string().contains("--include"), "{e}");
        }
    }

    #[test]
    fn shebang_lines_split_as_the_kernel_does() {
        let dir = std::env::temp_dir().join(format!("ukload-shebang-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let f = dir.join("s");
        fs::write(&f, "#!/usr/bin/env  node --flag\nx").unwrap();
        assert_eq!(
            shebang(&f).unwrap(),
            Some(("/usr/bin/env".into(), Some("node --flag".into())))
        );
        fs::write(&f, "#! /bin/sh\n").unwrap();
        assert_eq!(shebang(&f).unwrap(), Some(("/bin/sh".into(), None)));
        fs::write(&f, "plain").unwrap();
        assert_eq!(shebang(&f).unwrap(), None);
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn wildcards_and_origin() {
        assert!(wildcard("*.conf", "libc.conf"));
        assert!(!wildcard("*.conf", "libc.conf~"));
        assert!(wildcard("a?c*", "abcdef"));
        assert_eq!(
            expand_origin("$ORIGIN/../lib:${ORIGIN}/x/$LIB", Path::new("/opt/app/bin")),
            "/opt/app/bin/../lib:/opt/app/bin/x/lib/x86_64-linux-gnu"
        );
        assert_eq!(
            expand_dirs(
                &["$ORIGIN/../lib".into(), "rel".into()],
                Path::new("/opt/app/bin")
            ),
            vec![PathBuf::from("/opt/app/lib")]
        );
    }

    #[test]
    fn ld_so_conf_is_read_with_its_includes() {
        let dir = std::env::temp_dir().join(format!("ukload-ldconf-{}", std::process::id()));
        fs::create_dir_all(dir.join("conf.d")).unwrap();
        fs::write(
            dir.join("ld.so.conf"),
            "# c\n/opt/a\ninclude conf.d/*.conf\n",
        )
        .unwrap();
        fs::write(dir.join("conf.d/b.conf"), "/opt/b # x\n").unwrap();
        fs::write(dir.join("conf.d/a.conf"), "/opt/c\n").unwrap();
        fs::write(dir.join("conf.d/skip.txt"), "/opt/no\n").unwrap();
        let mut out = Vec::new();
        read_ld_conf(&dir.join("ld.so.conf"), 0, &mut out);
        assert_eq!(out, ["/opt/a", "/opt/c", "/opt/b"].map(PathBuf::from));
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn a_library_found_through_ld_so_conf_is_linked_where_the_guest_loader_looks() {
        let dir = std::env::temp_dir().join(format!("ukload-confdir-{}", std::process::id()));
        let libdir = dir.join("opt-lib");
        fs::create_dir_all(&libdir).unwrap();
        // A program needing libq.so.6, which only the ld.so.conf directory has.
        let mut prog = fs::read("/bin/true").unwrap();
        let off = elf::needed_string_offset(Path::new("/bin/true"), "libc.so.6")
            .unwrap()
            .unwrap() as usize;
        prog[off..off + 9].copy_from_slice(b"libq.so.6");
        let prog_path = dir.join("prog");
        fs::write(&prog_path, &prog).unwrap();
        fs::copy("/lib/x86_64-linux-gnu/libc.so.6", libdir.join("libq.so.6")).unwrap();
        let mut p = Planner::new();
        let libs = p.closure(&prog_path).unwrap_err();
        assert!(
            matches!(libs, RootfsError::LibraryNotFound { .. }),
            "{libs}"
        );
        p.conf_dirs.push(libdir.clone());
        let libs = p.closure(&prog_path).unwrap();
        assert!(libs.contains(&libdir.join("libq.so.6")), "{libs:?}");
        p.commit_libraries(libs, None).unwrap();
        assert!(matches!(
            p.entries.get(&libdir.join("libq.so.6")),
            Some(Entry::File { .. })
        ));
        assert_eq!(
            p.entries.get(&Path::new(GUEST_LIB_DIR).join("libq.so.6")),
            Some(&Entry::Symlink {
                target: libdir.join("libq.so.6")
            })
        );
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn two_different_things_at_one_guest_path_are_a_conflict_naming_both() {
        let spec =
            RootfsSpec::parse("/usr/bin/true", &["/etc/passwd:/usr/bin/true".to_string()]).unwrap();
        let err = plan(&spec, "t").unwrap_err();
        assert!(matches!(err, RootfsError::Conflict { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains("/usr/bin/true") && msg.contains("/etc/passwd"),
            "{msg}"
        );
        // The same file twice is fine.
        let spec = RootfsSpec::parse("/usr/bin/true", &["/usr/bin/true".to_string()]).unwrap();
        assert!(plan(&spec, "t").is_ok());
    }

    #[test]
    fn plan_of_bin_true_has_loader_libc_and_mount_points() {
        let spec = RootfsSpec::parse("/bin/true --x", &[]).unwrap();
        let plan = plan(&spec, "mkfs.erofs test").unwrap();
        let has = |p: &str| plan.entries.contains_key(Path::new(p));
        assert!(
            has("/lib64/ld-linux-x86-64.so.2"),
            "{:?}",
            plan.entries.keys()
        );
        assert!(plan
            .manifest
            .libraries
            .iter()
            .any(|l| l.ends_with("/libc.so.6")));
        for m in MOUNT_POINTS {
            assert_eq!(
                plan.entries.get(Path::new(m)),
                Some(&Entry::Dir { mode: DIR_MODE })
            );
        }
        assert!(has(MANIFEST_PATH));
        assert_eq!(plan.manifest.command, vec!["/bin/true", "--x"]);
        // The manifest's byte count includes itself.
        let Some(Entry::File { size, .. }) = plan.entries.get(Path::new(MANIFEST_PATH)) else {
            panic!("no manifest");
        };
        assert_eq!(*size, plan.manifest_bytes.len() as u64);
        let sum: u64 = plan
            .entries
            .values()
            .filter_map(|e| match e {
                Entry::File { size, .. } => Some(*size),
                _ => None,
            })
            .sum();
        assert_eq!(sum, plan.manifest.bytes);
        // Same inputs, same key; another mkfs version, another key.
        assert_eq!(
            plan.key(),
            super::plan(&spec, "mkfs.erofs test").unwrap().key()
        );
        assert_ne!(
            plan.key(),
            super::plan(&spec, "mkfs.erofs other").unwrap().key()
        );
    }
}
