//! `ukload-guest` as PID 1 inside a microVM: mounts, module loading with
//! `finit_module(2)`, zombie reaping, power-off.
//!
//! Why the agent is its own init: the guest image is an initramfs holding one
//! static binary and a few kernel modules, nothing else (no busybox, no
//! modprobe). So PID 1 does the three jobs an init must do before the agent can
//! listen on vsock: mount the kernel's pseudo file systems, load the virtio and
//! vsock drivers (Debian's 6.1 kernels build them as modules; built-in ones are
//! recognised and skipped), and reap orphans for the
//! whole life of the VM. Every failing step prints one console line
//! (`ukload-guest: init: ...`) so a host reading the serial log sees why a
//! guest never came up.
//!
//! Pid 1 alone does not make a VM's init: pid 1 of a PID namespace or a
//! container shares (or sees) a host's mounts, and mounting proc over a
//! host's `/proc` hides every process from everyone. [`decide_role`] asks for
//! evidence (an initramfs root, nothing on `/proc` yet) or `--init`, and every
//! mount is checked right before it is made ([`mount_action`]).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fs::File;
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::mount::MsFlags;
use nix::sys::signal::{SigSet, Signal};

use crate::vmabi::{
    builtin_list_has, decode_server_command, module_path, CMDLINE_PORT_PARAM, CMDLINE_ROOTFS_PARAM,
    CMDLINE_SERVER_PARAM, CMDLINE_SERVER_TIMEOUT_PARAM, MODULES, MODULES_BUILTIN_FILE, MODULES_DIR,
    MODULE_EXT, ROOTFS_DIR, ROOTFS_FSTYPE, ROOTFS_MANIFEST,
};

/// Where the kernel lists its modules, loaded and built in (the latter only
/// when they have parameters or a version, so absence proves nothing).
const SYS_MODULE_DIR: &str = "/sys/module";

/// Where the kernel command line is read from (after `/proc` is mounted).
const PROC_CMDLINE: &str = "/proc/cmdline";

/// The console device the kernel gives init (c 5 1).
const CONSOLE: &str = "/dev/console";

/// `VMADDR_PORT_ANY`: not a port a listener can be reached on.
const VSOCK_PORT_ANY: u32 = u32::MAX;

/// Longest the reaper sleeps between sweeps when no SIGCHLD reaches it (for
/// instance because another thread had SIGCHLD unblocked and took it).
const REAP_INTERVAL: Duration = Duration::from_millis(500);

/// How many exit statuses the reaper keeps for [`wait_child`]; oldest dropped.
const REAPED_STATUS_CAPACITY: usize = 1024;

/// Prefix of every console line PID 1 prints, after the logger's
/// `ukload-guest: ` (the kernel gives PID 1 `/dev/console` as
/// stdin/stdout/stderr, and the logger writes to stderr: the serial console).
const LOG_PREFIX: &str = "init:";

/// What PID 1 learnt while setting up the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pid1Config {
    /// vsock port to listen on: `ukload.port=N` from the kernel command line,
    /// else [`crate::DEFAULT_PORT`].
    pub port: u32,
    /// The MCP server to bridge to, from `ukload.rootfs=` (and
    /// `ukload.server=`, `ukload.server_timeout_ms=`); `None`: the built-in tools.
    pub server: Option<ServerSpec>,
}

/// A failed PID 1 step, with the path / module / syscall it concerns.
#[derive(Debug)]
pub enum Pid1Error {
    /// `init_as_pid1` was called by a process that is not PID 1 (it would
    /// mount over the host's `/dev`).
    NotPid1 { pid: i32 },
    /// Creating a mount point failed.
    Mkdir {
        path: &'static str,
        err: std::io::Error,
    },
    /// Something other than the file system PID 1 wants is already mounted
    /// at `target`: PID 1 never mounts over an existing mount.
    AlreadyMounted {
        fstype: &'static str,
        target: &'static str,
        found: String,
    },
    /// `statfs(2)`/`stat(2)` of a mount point failed, so PID 1 cannot tell
    /// whether something is mounted there.
    MountCheck {
        target: &'static str,
        err: std::io::Error,
    },
    /// `mount(2)` failed (EBUSY, already mounted, is not an error).
    Mount {
        fstype: &'static str,
        target: &'static str,
        err: std::io::Error,
    },
    /// The driver is neither in the image (`.ko`) nor built into the kernel
    /// (not in `/sys/module`, not in [`MODULES_BUILTIN_FILE`]).
    ModuleMissing { module: &'static str, path: String },
    /// The module file could not be opened.
    ModuleOpen {
        module: &'static str,
        path: String,
        err: std::io::Error,
    },
    /// `finit_module(2)` refused the module (EEXIST, built in, is not an error).
    /// ENOSYS means a kernel without a module loader (the minimal kernel of
    /// scripts/build-minimal-kernel.sh): every driver must be built in there.
    ModuleLoad {
        module: &'static str,
        err: std::io::Error,
    },
    /// `/proc/cmdline` could not be read.
    Cmdline { err: std::io::Error },
    /// `ukload.port=` holds something that is not a usable vsock port.
    BadPort { value: String },
    /// `ukload.server=` or `ukload.server_timeout_ms=` could not be decoded.
    BadServer { param: &'static str, why: String },
    /// Blocking SIGCHLD or starting the reaper thread failed.
    Reaper {
        what: &'static str,
        err: std::io::Error,
    },
}

impl fmt::Display for Pid1Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pid1Error::NotPid1 { pid } => {
                write!(
                    f,
                    "refusing to act as init: this process is pid {pid}, not 1"
                )
            }
            Pid1Error::Mkdir { path, err } => write!(f, "creating {path} failed: {err}"),
            Pid1Error::AlreadyMounted {
                fstype,
                target,
                found,
            } => write!(
                f,
                "refusing to mount {fstype} on {target}: {found} is already mounted there \
                 (PID 1 never mounts over an existing mount; is this really a VM's init?)"
            ),
            Pid1Error::MountCheck { target, err } => write!(
                f,
                "checking whether something is mounted on {target} failed: {err}; \
                 refusing to mount there"
            ),
            Pid1Error::Mount {
                fstype,
                target,
                err,
            } => write!(f, "mounting {fstype} on {target} failed: mount: {err}"),
            Pid1Error::ModuleMissing { module, path } => write!(
                f,
                "loading {module}.{MODULE_EXT} failed: {path} is not in the image and this \
                 kernel does not have {module} built in (not in {SYS_MODULE_DIR}, not in \
                 {MODULES_DIR}/{MODULES_BUILTIN_FILE}); rebuild the image from the same \
                 kernel's modules (scripts/build-guest-image.sh)"
            ),
            Pid1Error::ModuleOpen { module, path, err } => {
                write!(
                    f,
                    "loading {module}.{MODULE_EXT} failed: open {path}: {err}"
                )
            }
            Pid1Error::ModuleLoad { module, err } if err.raw_os_error() == Some(libc::ENOSYS) => {
                write!(
                    f,
                    "loading {module}.{MODULE_EXT} failed: finit_module: {err}: this kernel \
                     has no module loader (CONFIG_MODULES off), so {module} must be built in, \
                     and it is not listed in {MODULES_DIR}/{MODULES_BUILTIN_FILE}; rebuild the \
                     image from the same kernel (scripts/build-guest-image.sh)"
                )
            }
            Pid1Error::ModuleLoad { module, err } => {
                write!(
                    f,
                    "loading {module}.{MODULE_EXT} failed: finit_module: {err}"
                )
            }
            Pid1Error::Cmdline { err } => write!(f, "reading {PROC_CMDLINE} failed: {err}"),
            Pid1Error::BadPort { value } => write!(
                f,
                "bad {CMDLINE_PORT_PARAM}={value} on the kernel command line: \
                 expected a vsock port 0..{VSOCK_PORT_ANY} (exclusive)"
            ),
            Pid1Error::BadServer { param, why } => {
                write!(f, "bad {param}= on the kernel command line: {why}")
            }
            Pid1Error::Reaper { what, err } => {
                write!(f, "starting the zombie reaper failed: {what}: {err}")
            }
        }
    }
}

impl std::error::Error for Pid1Error {}

/// Sets the guest up as its init: mounts `/proc`, `/sys`, `/dev`, loads
/// [`MODULES`] in order, reads the port from the kernel command line and
/// starts the zombie reaper. Each failing step prints a console line; the
/// caller should [`poweroff`] on `Err`.
///
/// Call it first thing in `main`, before starting other threads: it blocks
/// SIGCHLD in the calling thread so that threads created later inherit the
/// mask and SIGCHLD wakes the reaper (see [`wait_child`] for what that means
/// for the agent's own children).
pub fn init_as_pid1() -> Result<Pid1Config, String> {
    init_steps().map_err(|e| {
        log::error!("{LOG_PREFIX} {e}");
        e.to_string()
    })
}

fn init_steps() -> Result<Pid1Config, Pid1Error> {
    let pid = nix::unistd::getpid().as_raw();
    if pid != 1 {
        return Err(Pid1Error::NotPid1 { pid });
    }
    mount_pseudo_filesystems()?;
    ensure_console();
    let builtin = std::fs::read_to_string(format!("{MODULES_DIR}/{MODULES_BUILTIN_FILE}"))
        .unwrap_or_default();
    for module in MODULES {
        let found = ModuleFound {
            ko_in_image: std::path::Path::new(&module_path(module)).exists(),
            in_sys_module: std::path::Path::new(&format!("{SYS_MODULE_DIR}/{module}")).exists(),
            in_builtin_list: builtin_list_has(&builtin, module),
        };
        match module_action(found) {
            ModuleAction::Load => load_module(module)?,
            ModuleAction::BuiltIn => {}
            ModuleAction::Missing => {
                return Err(Pid1Error::ModuleMissing {
                    module,
                    path: module_path(module),
                })
            }
        }
    }
    let cmdline =
        std::fs::read_to_string(PROC_CMDLINE).map_err(|err| Pid1Error::Cmdline { err })?;
    let port = port_from_cmdline(&cmdline)?;
    let server = server_from_cmdline(&cmdline)?;
    start_reaper()?;
    INIT_DONE.store(true, std::sync::atomic::Ordering::SeqCst);
    Ok(Pid1Config { port, server })
}

/// Set once [`init_as_pid1`] succeeded: [`mount_rootfs`] refuses to run before.
static INIT_DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

// --- the MCP server's root filesystem ------------------------------------------

/// `f_type` of erofs (`EROFS_SUPER_MAGIC_V1`).
const EROFS_MAGIC: u64 = 0xe0f5_e1e2;
/// How long PID 1 waits for the block device node to appear.
const DEVICE_WAIT: Duration = Duration::from_secs(5);
/// Size limit of the server's writable `/tmp` (tmpfs: pages are only used
/// when written).
const ROOTFS_TMP_OPTIONS: &str = "mode=1777,size=16m";

/// Which server to run, from the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// Block device of the root filesystem image (`/dev/vda`).
    pub device: String,
    /// The server's argv; `None`: the manifest's `command`.
    pub command: Option<Vec<String>>,
    /// `ukload.server_timeout_ms`, if given.
    pub start_timeout: Option<Duration>,
}

/// The server to run, from a kernel command line (the last occurrence of
/// each parameter wins); `None` without [`CMDLINE_ROOTFS_PARAM`].
pub fn server_from_cmdline(cmdline: &str) -> Result<Option<ServerSpec>, Pid1Error> {
    let last = |param: &str| last_param(cmdline, param).map(str::to_string);
    let Some(device) = last(CMDLINE_ROOTFS_PARAM) else {
        return Ok(None);
    };
    if !device.starts_with("/dev/") {
        return Err(Pid1Error::BadServer {
            param: CMDLINE_ROOTFS_PARAM,
            why: format!("{device:?} is not a device under /dev"),
        });
    }
    let command = last(CMDLINE_SERVER_PARAM)
        .map(|hex| decode_server_command(&hex))
        .transpose()
        .map_err(|why| Pid1Error::BadServer {
            param: CMDLINE_SERVER_PARAM,
            why,
        })?;
    let start_timeout = match last(CMDLINE_SERVER_TIMEOUT_PARAM) {
        None => None,
        Some(v) => match v.parse::<u64>() {
            Ok(ms) if ms > 0 => Some(Duration::from_millis(ms)),
            _ => {
                return Err(Pid1Error::BadServer {
                    param: CMDLINE_SERVER_TIMEOUT_PARAM,
                    why: format!("{v:?} is not a positive number of milliseconds"),
                })
            }
        },
    };
    Ok(Some(ServerSpec {
        device,
        command,
        start_timeout,
    }))
}

/// The `command` of a root filesystem manifest.
pub fn manifest_command(text: &str) -> Result<Vec<String>, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let argv: Vec<String> = v
        .get("command")
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| format!("\"command\" is not a list of strings: {e}"))?
        .ok_or("it has no \"command\"")?;
    if argv.is_empty() || argv[0].is_empty() {
        return Err("its \"command\" is empty".into());
    }
    Ok(argv)
}

/// Mounts the server's root filesystem for a VM's init: the erofs image on
/// `spec.device` read-only at [`ROOTFS_DIR`], then proc, devtmpfs and a
/// writable tmpfs on its `/proc`, `/dev` and `/tmp` (and sysfs on `/sys` if
/// the image has that directory). Returns the server's argv (`spec.command`,
/// else the manifest's) for running chrooted in [`ROOTFS_DIR`].
///
/// Refuses unless [`init_as_pid1`] succeeded in this process (PID 1 of a VM):
/// it must never mount anything on a host. Every mount point is checked
/// right before its mount: nothing is ever mounted over an existing mount.
pub fn mount_rootfs(spec: &ServerSpec) -> Result<Vec<String>, String> {
    mount_rootfs_steps(spec).map_err(|e| {
        let e = format!("root filesystem: {e}");
        log::error!("{LOG_PREFIX} {e}");
        e
    })
}

fn mount_rootfs_steps(spec: &ServerSpec) -> Result<Vec<String>, String> {
    refuse_unless_vm_init()?;
    wait_for_device(&spec.device)?;
    mount_image(&spec.device)?;
    for m in ROOTFS_MOUNTS {
        mount_inner(m)?;
    }
    server_argv(spec)
}

/// Errs unless this process is PID 1 and [`init_as_pid1`] finished: nothing
/// is ever mounted on a host.
fn refuse_unless_vm_init() -> Result<(), String> {
    let pid = nix::unistd::getpid().as_raw();
    if pid != 1 || !INIT_DONE.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(format!(
            "refusing to mount: this process (pid {pid}) is not a VM's init that finished its setup"
        ));
    }
    Ok(())
}

/// Waits up to [`DEVICE_WAIT`] for the image's block device node to appear.
fn wait_for_device(device: &str) -> Result<(), String> {
    let deadline = Instant::now() + DEVICE_WAIT;
    while !std::path::Path::new(device).exists() {
        if Instant::now() >= deadline {
            return Err(format!(
                "{device} did not appear within {DEVICE_WAIT:?}: does the VM have the image attached \
                 (virtio-blk) and does its kernel have CONFIG_VIRTIO_BLK?"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Creates the directory `dir` unless it exists already.
fn create_dir_if_missing(dir: &str) -> Result<(), String> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("creating {dir}: {e}")),
    }
}

/// Mounts the erofs image on `device` read-only at [`ROOTFS_DIR`], creating
/// the directory if needed and refusing if something is mounted there already.
fn mount_image(device: &str) -> Result<(), String> {
    create_dir_if_missing(ROOTFS_DIR)?;
    match mount_state(ROOTFS_DIR) {
        Ok(MountState::NotMounted) => {}
        Ok(MountState::Mounted { magic }) => {
            return Err(format!(
                "{} is already mounted on {ROOTFS_DIR}; refusing to mount over it",
                fs_name(magic)
            ))
        }
        Ok(other) => return Err(format!("{ROOTFS_DIR}: unexpected state {other:?}")),
        Err(e) => return Err(format!("checking {ROOTFS_DIR}: {e}")),
    }
    do_mount(
        device,
        ROOTFS_DIR,
        ROOTFS_FSTYPE,
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
        None,
    )
    .map_err(|e| {
        format!(
            "mounting {device} ({ROOTFS_FSTYPE}, read-only) on {ROOTFS_DIR}: {e} \
             (is it an erofs image without compression, and does the kernel have CONFIG_EROFS_FS?)"
        )
    })
}

/// Mounts one file system on its directory inside the image, after
/// checking that the directory is still the image's own (nothing mounted
/// over it); skips one the image may lack ([`InImage::Optional`]) when its
/// directory is not there.
fn mount_inner(m: &FsMount) -> Result<(), String> {
    let FsMount {
        dir,
        fstype,
        flags,
        data,
        in_image,
        ..
    } = *m;
    let target = format!("{ROOTFS_DIR}{dir}");
    match fs_magic(&target) {
        Ok(EROFS_MAGIC) => {}
        Ok(magic) => {
            return Err(format!(
                "{} is already mounted on {target}; refusing to mount over it",
                fs_name(magic)
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && in_image == InImage::Optional => {
            return Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "the image has no {dir} directory (the mount point of its {fstype}); \
                 rebuild it with an empty {dir}"
            ))
        }
        Err(e) => return Err(format!("checking {target}: {e}")),
    }
    if in_image == InImage::RequiredKeepingContents {
        return mount_tmp_keeping_contents(&target, flags, data);
    }
    do_mount(fstype, &target, fstype, flags, data)
        .map_err(|e| format!("mounting {fstype} on {target}: {e}"))
}

/// The server's argv: `spec.command`, else the command in the image's manifest.
fn server_argv(spec: &ServerSpec) -> Result<Vec<String>, String> {
    if let Some(argv) = &spec.command {
        return Ok(argv.clone());
    }
    let manifest = format!("{ROOTFS_DIR}{ROOTFS_MANIFEST}");
    let text = std::fs::read_to_string(&manifest).map_err(|e| {
        format!(
            "no server command on the kernel command line ({CMDLINE_SERVER_PARAM}=) and \
             reading the image's manifest {ROOTFS_MANIFEST} failed: {e}"
        )
    })?;
    manifest_command(&text).map_err(|e| format!("the image's manifest {ROOTFS_MANIFEST}: {e}"))
}

/// Where the server's `/tmp` tmpfs is mounted first (in the initramfs), to be
/// filled with the image's `/tmp` and then moved onto it.
const TMP_STAGE_DIR: &str = "/.rootfs-tmp";
/// How deep the image's `/tmp` tree is copied.
const TMP_COPY_DEPTH: usize = 32;

/// Mounts the writable tmpfs on `target` (the image's `/tmp`) without hiding
/// what the image holds there (a server script built from a host path under
/// `/tmp` lands there): the tmpfs is mounted on [`TMP_STAGE_DIR`] first, the
/// image's `/tmp` tree is copied into it (it then costs guest RAM), and it
/// is moved onto `target`.
fn mount_tmp_keeping_contents(
    target: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    create_dir_if_missing(TMP_STAGE_DIR)?;
    match mount_state(TMP_STAGE_DIR) {
        Ok(MountState::NotMounted) => {}
        other => {
            return Err(format!(
                "{TMP_STAGE_DIR} is not a free directory ({other:?}); refusing to mount there"
            ))
        }
    }
    do_mount("tmpfs", TMP_STAGE_DIR, "tmpfs", flags, data)
        .map_err(|e| format!("mounting tmpfs on {TMP_STAGE_DIR}: {e}"))?;
    copy_tree(
        std::path::Path::new(target),
        std::path::Path::new(TMP_STAGE_DIR),
        TMP_COPY_DEPTH,
    )
    .map_err(|e| format!("copying the image's /tmp into its tmpfs: {e}"))?;
    do_mount(TMP_STAGE_DIR, target, "", MsFlags::MS_MOVE, None)
        .map_err(|e| format!("moving the tmpfs from {TMP_STAGE_DIR} onto {target}: {e}"))
}

/// Copies the tree under `from` into the existing directory `to`: files
/// (with their modes), directories and symlinks (as links), at most `depth`
/// levels deep.
fn copy_tree(from: &std::path::Path, to: &std::path::Path, depth: usize) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if depth == 0 {
        return Err(std::io::Error::other(format!(
            "{} is nested more than {TMP_COPY_DEPTH} levels deep",
            from.display()
        )));
    }
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let meta = std::fs::symlink_metadata(&src)?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else if ft.is_dir() {
            std::fs::create_dir(&dst)?;
            copy_tree(&src, &dst, depth - 1)?;
            let mode = meta.permissions().mode() & 0o7777;
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode))?;
        } else if ft.is_file() {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

/// `mount(2)` with string arguments (`data`: `None` passes a null pointer,
/// which these file systems accept).
fn do_mount(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> std::io::Result<()> {
    nix::mount::mount(Some(source), target, Some(fstype), flags, data).map_err(Into::into)
}

/// One file system PID 1 mounts: on the initramfs root ([`VM_MOUNTS`]) or
/// inside the server's root filesystem image ([`ROOTFS_MOUNTS`]). Its source
/// is its type's name.
struct FsMount {
    /// Mount point: absolute on the initramfs root, under [`ROOTFS_DIR`] in the image.
    dir: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    /// Mount options (`None` passes a null pointer).
    data: Option<&'static str>,
    /// `f_type` values of this file system once mounted.
    magics: &'static [u64],
    /// On the initramfs root: the kernel itself may have mounted it before
    /// init ran (devtmpfs with `CONFIG_DEVTMPFS_MOUNT`), and finding it there
    /// is fine. For the others an existing mount means this is not a fresh
    /// VM, and PID 1 stops.
    kernel_may_mount: bool,
    /// Inside the image: what its mount point there must be.
    in_image: InImage,
}

/// What a root filesystem image must have for one of [`ROOTFS_MOUNTS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InImage {
    /// The directory, empty (what is in it is hidden by the mount).
    Required,
    /// The directory, possibly with files the server needs (a script built
    /// from a host path under `/tmp` lands in `/tmp`): the new file system
    /// gets them before it covers the directory (see
    /// [`mount_tmp_keeping_contents`]).
    RequiredKeepingContents,
    /// Nothing: without the directory the file system is not mounted.
    Optional,
}

/// Mount flags of `/proc` and `/sys`.
const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// `/proc` without devices, setuid or exec.
const PROC_MOUNT: FsMount = FsMount {
    dir: "/proc",
    fstype: "proc",
    flags: NOSUID_NODEV_NOEXEC,
    data: None,
    magics: &[PROC_SUPER_MAGIC],
    kernel_may_mount: false,
    in_image: InImage::Required,
};
/// `/sys` without devices, setuid or exec (an image needs it only if its
/// server looks there).
const SYS_MOUNT: FsMount = FsMount {
    dir: "/sys",
    fstype: "sysfs",
    flags: NOSUID_NODEV_NOEXEC,
    data: None,
    magics: &[SYSFS_MAGIC],
    kernel_may_mount: false,
    in_image: InImage::Optional,
};
/// `/dev` as devtmpfs, so the kernel creates `/dev/vsock` and friends itself
/// (no udev in the guest).
const DEV_MOUNT: FsMount = FsMount {
    dir: "/dev",
    fstype: "devtmpfs",
    flags: MsFlags::MS_NOSUID,
    data: None,
    magics: DEVTMPFS_MAGICS,
    kernel_may_mount: true,
    in_image: InImage::Required,
};
/// The server's writable `/tmp` (the image is read-only), keeping what the
/// image holds there.
const TMP_MOUNT: FsMount = FsMount {
    dir: "/tmp",
    fstype: "tmpfs",
    flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
    data: Some(ROOTFS_TMP_OPTIONS),
    magics: &[TMPFS_MAGIC],
    kernel_may_mount: false,
    in_image: InImage::RequiredKeepingContents,
};

/// What PID 1 mounts on the initramfs root, in order.
const VM_MOUNTS: &[FsMount] = &[PROC_MOUNT, SYS_MOUNT, DEV_MOUNT];
/// What PID 1 mounts inside the server's root filesystem image, in order.
const ROOTFS_MOUNTS: &[FsMount] = &[PROC_MOUNT, DEV_MOUNT, TMP_MOUNT, SYS_MOUNT];

/// Mode of the mount points PID 1 creates when the image lacks them.
const MOUNT_POINT_MODE: u32 = 0o755;

fn mount_pseudo_filesystems() -> Result<(), Pid1Error> {
    for m in VM_MOUNTS {
        if let Err(err) = std::fs::create_dir(m.dir) {
            if err.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(Pid1Error::Mkdir { path: m.dir, err });
            }
        } else {
            use std::os::unix::fs::PermissionsExt;
            let _ =
                std::fs::set_permissions(m.dir, std::fs::Permissions::from_mode(MOUNT_POINT_MODE));
        }
        // Checked right before each mount: never stack a mount on an existing one.
        let state =
            mount_state(m.dir).map_err(|err| Pid1Error::MountCheck { target: m.dir, err })?;
        match mount_action(state, m.magics, m.kernel_may_mount) {
            MountAction::Mount => {}
            MountAction::AlreadyThere => {
                log::info!(
                    "{LOG_PREFIX} {} is already mounted on {}; leaving it",
                    m.fstype,
                    m.dir
                );
                continue;
            }
            MountAction::Refuse { found } => {
                return Err(Pid1Error::AlreadyMounted {
                    fstype: m.fstype,
                    target: m.dir,
                    found,
                })
            }
        }
        match do_mount(m.fstype, m.dir, m.fstype, m.flags, m.data) {
            Ok(()) => {}
            // EBUSY: already mounted (the kernel may automount devtmpfs).
            Err(err) if err.raw_os_error() == Some(libc::EBUSY) => {}
            Err(err) => {
                return Err(Pid1Error::Mount {
                    fstype: m.fstype,
                    target: m.dir,
                    err,
                })
            }
        }
    }
    Ok(())
}

// --- am I the VM's init? ---------------------------------------------------

/// `statfs(2)` `f_type` of ramfs (`RAMFS_MAGIC` in linux/magic.h; not in libc):
/// the initramfs root when the kernel has no tmpfs.
pub const RAMFS_MAGIC: u64 = 0x8584_58f6;
/// `f_type` of tmpfs: the initramfs root of kernels with tmpfs (Debian's),
/// and what devtmpfs reports there.
pub const TMPFS_MAGIC: u64 = 0x0102_1994;
/// `f_type` of proc.
pub const PROC_SUPER_MAGIC: u64 = 0x9fa0;
/// `f_type` of sysfs.
pub const SYSFS_MAGIC: u64 = 0x6265_6572;
/// What a devtmpfs reports as `f_type`: tmpfs's magic, or ramfs's on kernels
/// without tmpfs.
const DEVTMPFS_MAGICS: &[u64] = &[TMPFS_MAGIC, RAMFS_MAGIC];

/// Flag of `ukload-guest` that makes it act as the VM's init even when
/// [`decide_role`] finds no evidence for it (it still never mounts over an
/// existing mount).
pub const INIT_FLAG: &str = "--init";

/// What a process whose pid is 1 can observe about where it runs, before it
/// mounts anything. Gathered by [`InitEvidence::gather`]; fake it in tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitEvidence {
    /// `getpid()`.
    pub pid: i32,
    /// `statfs("/").f_type`, `None` when `statfs` failed.
    pub root_fs_magic: Option<u64>,
    /// What is at `/proc` right now.
    pub proc_state: MountState,
    /// `--init` was given.
    pub init_flag: bool,
}

/// Whether a file system is mounted at a directory of the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountState {
    /// No such directory (an image without it): nothing mounted.
    Missing,
    /// A plain directory of the root file system: nothing mounted.
    NotMounted,
    /// A mount point (another device than `/`, or `f_type` says so): the
    /// mounted file system's `f_type`.
    Mounted { magic: u64 },
    /// `stat`/`statfs` failed: treated as mounted (never mount blind).
    Unknown,
}

/// What `ukload-guest` is, given the [`InitEvidence`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The init of a microVM: mount `/proc`, `/sys`, `/dev`, load drivers,
    /// reap, power off at the end ([`init_as_pid1`]).
    VmInit,
    /// Pid 1 of a PID namespace or container: mount nothing, serve as an
    /// ordinary agent, but reap orphans (they re-parent to us) — `why` says
    /// which evidence was missing.
    NamespacePid1 { why: String },
    /// An ordinary process.
    Process,
}

impl InitEvidence {
    /// Looks at this process: its pid, `statfs("/")` and what is at `/proc`.
    pub fn gather(init_flag: bool) -> InitEvidence {
        let pid = nix::unistd::getpid().as_raw();
        InitEvidence {
            pid,
            root_fs_magic: fs_magic("/").ok(),
            proc_state: mount_state("/proc").unwrap_or(MountState::Unknown),
            init_flag,
        }
    }
}

/// Decides whether this process is a microVM's init.
///
/// Why not "pid is 1": `unshare --pid --fork ukload-guest ...` and every
/// container make the agent pid 1 while it shares (or sees) a host's mounts;
/// mounting proc over the host's `/proc` there hid every process from
/// everyone. A VM's init sees what a container cannot cheaply fake: the root
/// file system is the initramfs (ramfs or tmpfs) and `/proc` is not mounted
/// yet (the kernel mounts nothing for an initramfs init). Any host or
/// container has `/proc` mounted. `--init` overrides the evidence (for an
/// image whose root is not an initramfs); mounting still refuses to stack on
/// an existing mount.
pub fn decide_role(ev: &InitEvidence) -> Role {
    if ev.pid != 1 {
        return Role::Process;
    }
    if ev.init_flag {
        return Role::VmInit;
    }
    let root_is_initramfs = matches!(ev.root_fs_magic, Some(RAMFS_MAGIC | TMPFS_MAGIC));
    let proc_unmounted = matches!(ev.proc_state, MountState::Missing | MountState::NotMounted);
    match (root_is_initramfs, proc_unmounted) {
        (true, true) => Role::VmInit,
        (root, proc) => {
            let mut why = Vec::new();
            if !root {
                why.push(match ev.root_fs_magic {
                    Some(m) => format!("the root file system is not an initramfs (f_type {m:#x})"),
                    None => "statfs(\"/\") failed".to_string(),
                });
            }
            if !proc {
                why.push(match ev.proc_state {
                    MountState::Unknown => "/proc could not be checked".to_string(),
                    _ => "/proc is already mounted".to_string(),
                });
            }
            Role::NamespacePid1 {
                why: why.join(" and "),
            }
        }
    }
}

/// What PID 1 does at one mount point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountAction {
    /// Nothing is mounted there: mount.
    Mount,
    /// The kernel already mounted the wanted file system there: leave it.
    AlreadyThere,
    /// Something is mounted there: refuse to mount over it.
    Refuse { found: String },
}

/// Decides what to do at a mount point in `state` that should hold a file
/// system whose `f_type` is one of `wanted`. An existing mount is only
/// accepted when `kernel_may_mount` and it is the wanted file system; it is
/// never mounted over.
pub fn mount_action(state: MountState, wanted: &[u64], kernel_may_mount: bool) -> MountAction {
    match state {
        MountState::Missing | MountState::NotMounted => MountAction::Mount,
        MountState::Mounted { magic } if kernel_may_mount && wanted.contains(&magic) => {
            MountAction::AlreadyThere
        }
        MountState::Mounted { magic } => MountAction::Refuse {
            found: fs_name(magic),
        },
        MountState::Unknown => MountAction::Refuse {
            found: "something that could not be checked".to_string(),
        },
    }
}

/// A file system's name for messages, from its `f_type`.
fn fs_name(magic: u64) -> String {
    match magic {
        PROC_SUPER_MAGIC => "proc".to_string(),
        SYSFS_MAGIC => "sysfs".to_string(),
        TMPFS_MAGIC => "tmpfs (or devtmpfs)".to_string(),
        RAMFS_MAGIC => "ramfs".to_string(),
        other => format!("a file system with f_type {other:#x}"),
    }
}

/// `statfs(path).f_type`, as the 32-bit magic the kernel defines.
fn fs_magic(path: &str) -> std::io::Result<u64> {
    let st = nix::sys::statfs::statfs(path)?;
    Ok((st.filesystem_type().0 as u64) & 0xffff_ffff)
}

/// Whether something is mounted at `path` (a directory of `/`): it is a mount
/// point when its device differs from the root's, or when its `f_type` is
/// not the root's (a bind mount of the same device is not caught, and does
/// not matter here: PID 1 checks for pseudo file systems).
pub fn mount_state(path: &str) -> std::io::Result<MountState> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(MountState::Missing),
        Err(e) => return Err(e),
    };
    let root = std::fs::metadata("/")?;
    let magic = fs_magic(path)?;
    if meta.dev() != root.dev() || magic != fs_magic("/")? {
        Ok(MountState::Mounted { magic })
    } else {
        Ok(MountState::NotMounted)
    }
}

/// If the image had no `/dev/console`, the kernel started init without
/// stdio; now that devtmpfs is mounted, open the console onto fds 0-2 so the
/// console lines this module promises actually reach the serial port.
fn ensure_console() {
    use std::os::fd::AsFd;
    // F_GETFD on a closed fd only reports EBADF.
    let stderr_open = nix::fcntl::fcntl(std::io::stderr().as_fd(), nix::fcntl::F_GETFD).is_ok();
    if stderr_open {
        return;
    }
    let Ok(console) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(CONSOLE)
    else {
        return; // Nothing to print to; later steps still report through Err.
    };
    let _ = nix::unistd::dup2_stdin(&console);
    let _ = nix::unistd::dup2_stdout(&console);
    let _ = nix::unistd::dup2_stderr(&console);
}

/// What PID 1 found about one driver of [`MODULES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuleFound {
    /// `/lib/modules/<name>.ko` is in the image.
    pub ko_in_image: bool,
    /// `/sys/module/<name>` exists: the driver is built in (or already loaded).
    pub in_sys_module: bool,
    /// The image's [`MODULES_BUILTIN_FILE`] lists the driver as built in.
    pub in_builtin_list: bool,
}

/// What PID 1 does with one driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleAction {
    /// Load the `.ko` with `finit_module(2)` (EEXIST is still accepted).
    Load,
    /// Nothing to load: the kernel has the driver built in.
    BuiltIn,
    /// Neither a `.ko` nor built in: the guest cannot have vsock.
    Missing,
}

/// Decides what to do with one driver. Why built-in drivers are recognised
/// two ways: `/sys/module/<name>` appears for built-in code only when it has
/// parameters or a version, while the kernel package's `modules.builtin`
/// lists every built-in driver; a kernel flavor that builds virtio or vsock
/// in ships no `.ko` for it, and that is fine.
pub fn module_action(found: ModuleFound) -> ModuleAction {
    if found.in_sys_module || found.in_builtin_list {
        ModuleAction::BuiltIn
    } else if found.ko_in_image {
        ModuleAction::Load
    } else {
        ModuleAction::Missing
    }
}

/// Loads one module from [`MODULES_DIR`] with `finit_module(2)` (no userland
/// tool needed). EEXIST means the module is built into the kernel or already
/// loaded: fine.
fn load_module(module: &'static str) -> Result<(), Pid1Error> {
    let path = module_path(module);
    let file = File::open(&path).map_err(|err| Pid1Error::ModuleOpen {
        module,
        path: path.clone(),
        err,
    })?;
    let no_params = c"";
    match nix::kmod::finit_module(&file, no_params, nix::kmod::ModuleInitFlags::empty()) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
        Err(errno) => Err(Pid1Error::ModuleLoad {
            module,
            err: errno.into(),
        }),
    }
}

/// The value of the last `param=` word of a kernel command line (later
/// parameters override earlier ones, as the kernel does).
fn last_param<'a>(cmdline: &'a str, param: &str) -> Option<&'a str> {
    let prefix = format!("{param}=");
    cmdline
        .split_whitespace()
        .rev()
        .find_map(|word| word.strip_prefix(prefix.as_str()))
}

/// The vsock port from a kernel command line: the last `ukload.port=N`
/// (later parameters override earlier ones, as the kernel does), else
/// [`crate::DEFAULT_PORT`].
pub fn port_from_cmdline(cmdline: &str) -> Result<u32, Pid1Error> {
    let Some(value) = last_param(cmdline, CMDLINE_PORT_PARAM) else {
        return Ok(crate::DEFAULT_PORT);
    };
    match value.parse::<u32>() {
        Ok(port) if port != VSOCK_PORT_ANY => Ok(port),
        _ => Err(Pid1Error::BadPort {
            value: value.to_string(),
        }),
    }
}

/// Exit statuses collected by the reaper, for [`wait_child`].
struct Reaped {
    statuses: Mutex<ReapedStatuses>,
    changed: Condvar,
}

#[derive(Default)]
struct ReapedStatuses {
    by_pid: HashMap<i32, i32>,
    order: VecDeque<i32>,
}

impl ReapedStatuses {
    fn insert(&mut self, pid: i32, status: i32) {
        if self.by_pid.insert(pid, status).is_none() {
            self.order.push_back(pid);
        }
        while self.order.len() > REAPED_STATUS_CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.by_pid.remove(&old);
            }
        }
    }
}

static REAPED: OnceLock<Reaped> = OnceLock::new();

fn reaped() -> &'static Reaped {
    REAPED.get_or_init(|| Reaped {
        statuses: Mutex::new(ReapedStatuses::default()),
        changed: Condvar::new(),
    })
}

/// Blocks SIGCHLD in this thread (inherited by threads started afterwards)
/// and starts the reaper thread, which sleeps in `sigtimedwait(SIGCHLD)` for at
/// most [`REAP_INTERVAL`] and then reaps every exited child with
/// `waitpid(-1, WNOHANG)` — tini's loop. The timeout makes it sweep even if a
/// thread with SIGCHLD unblocked swallowed the signal.
fn start_reaper() -> Result<(), Pid1Error> {
    start_reaper_for(&[Signal::SIGCHLD], false)
}

/// The reaper for pid 1 of a PID namespace or container ([`Role::NamespacePid1`]):
/// the same loop as a VM's init, plus SIGTERM and SIGINT, which end the agent
/// with status 128 + signal as they would end it outside a namespace. Why:
/// the kernel drops signals without a handler sent to a namespace's pid 1,
/// so without this `kill -TERM` (ukload's teardown) would be ignored.
/// Call it before starting other threads, like [`init_as_pid1`].
pub fn start_namespace_reaper() -> Result<(), String> {
    start_reaper_for(&[Signal::SIGCHLD, Signal::SIGTERM, Signal::SIGINT], true)
        .map_err(|e| e.to_string())
}

fn start_reaper_for(signals: &[Signal], exit_on_term: bool) -> Result<(), Pid1Error> {
    let set: SigSet = signals.iter().copied().collect();
    set.thread_block().map_err(|errno| Pid1Error::Reaper {
        what: "pthread_sigmask(SIG_BLOCK)",
        err: errno.into(),
    })?;
    std::thread::Builder::new()
        .name("pid1-reaper".into())
        .spawn(move || loop {
            let sig = wait_signal(&set, REAP_INTERVAL);
            reap_all();
            if exit_on_term && (sig == libc::SIGTERM || sig == libc::SIGINT) {
                log::info!("signal {sig}: exiting");
                std::process::exit(SIGNAL_EXIT_BASE + sig);
            }
        })
        .map(|_| ())
        .map_err(|err| Pid1Error::Reaper {
            what: "spawning the reaper thread",
            err,
        })
}

/// Exit status of a process ended by signal N, as a shell reports it: 128 + N.
const SIGNAL_EXIT_BASE: i32 = 128;

/// Takes one pending signal of `set` (blocked in this thread), waiting at most
/// `timeout`: its number, or -1 on timeout (EAGAIN) or EINTR.
///
/// Raw libc because nix 0.32 has `SigSet::wait` (sigwait, no timeout) but no
/// `sigtimedwait`, and the timeout is what makes the reaper sweep even when
/// another thread took the SIGCHLD.
fn wait_signal(set: &SigSet, timeout: Duration) -> libc::c_int {
    let timeout = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `set` (an initialised sigset borrowed from a live SigSet) and
    // `timeout` are valid for the call; a null siginfo pointer is allowed.
    unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &timeout) }
}

/// Reaps every child that has exited, recording its status (the host
/// supervisor's loop: [`crate::supervisor::reap_exited`]).
fn reap_all() {
    crate::supervisor::reap_exited(|pid, status| {
        let r = reaped();
        r.statuses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pid, status);
        r.changed.notify_all();
    });
}

/// Waits until `deadline` for the exit of child `pid` and returns its raw
/// wait status (decode with `libc::WIFEXITED` etc.), or `None` on timeout.
///
/// Why this exists: as PID 1 the reaper collects *every* child with
/// `waitpid(-1)`, including children the agent spawned itself, so
/// `std::process::Child::wait` may fail with ECHILD. Code running under
/// `init_as_pid1` waits for its children here instead.
pub fn wait_child(pid: i32, deadline: Instant) -> Option<i32> {
    let r = reaped();
    let mut guard = r.statuses.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        if let Some(status) = guard.by_pid.remove(&pid) {
            guard.order.retain(|p| *p != pid);
            return Some(status);
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        guard = r
            .changed
            .wait_timeout(guard, left)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

/// Ends the VM: `sync`, then `reboot(RB_AUTOBOOT)`. A reset, not a
/// power-off: `-M microvm` has no ACPI power-off device, so `RB_POWER_OFF`
/// only halts the CPUs and leaves QEMU running, while with QEMU's
/// `-no-reboot` a reset makes QEMU exit (the launcher adds `reboot=t`, a
/// triple-fault reset that needs no device). If it is refused (not PID 1, no
/// CAP_SYS_BOOT) the process exits with status 1; as PID 1 that panics the
/// kernel, which with `panic=-1` also ends the VM.
pub fn poweroff() -> ! {
    nix::unistd::sync();
    let err = match nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT) {
        Err(errno) => std::io::Error::from(errno),
    };
    log::error!("{LOG_PREFIX} power-off failed: reboot(RB_AUTOBOOT): {err}; exiting");
    std::process::exit(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mount_point_in_the_image_is_one_the_image_builder_makes() {
        for m in ROOTFS_MOUNTS {
            assert!(
                crate::rootfs::MOUNT_POINTS.contains(&m.dir),
                "{} is mounted in the image but rootfs::MOUNT_POINTS lacks it",
                m.dir
            );
        }
        // Only the writable /tmp keeps what the image holds under it.
        let keeping: Vec<&str> = ROOTFS_MOUNTS
            .iter()
            .filter(|m| m.in_image == InImage::RequiredKeepingContents)
            .map(|m| m.fstype)
            .collect();
        assert_eq!(keeping, ["tmpfs"]);
    }
    use crate::vmabi::encode_server_command;

    #[test]
    fn port_defaults_when_the_cmdline_does_not_name_one() {
        let cmdline = "console=ttyS0 panic=-1 quiet tsc_early_khz=2400000\n";
        assert_eq!(port_from_cmdline(cmdline).unwrap(), crate::DEFAULT_PORT);
    }

    #[test]
    fn port_is_read_from_the_cmdline_and_the_last_one_wins() {
        assert_eq!(port_from_cmdline("quiet ukload.port=6000").unwrap(), 6000);
        assert_eq!(
            port_from_cmdline("ukload.port=1 console=ttyS0 ukload.port=7\n").unwrap(),
            7
        );
    }

    #[test]
    fn bad_port_values_are_errors_naming_the_value() {
        for bad in [
            "ukload.port=",
            "ukload.port=abc",
            "ukload.port=-1",
            "ukload.port=4294967295",
        ] {
            let err = port_from_cmdline(bad).unwrap_err();
            assert!(matches!(err, Pid1Error::BadPort { .. }), "{bad}: {err}");
            assert!(err.to_string().contains(CMDLINE_PORT_PARAM), "{err}");
        }
    }

    #[test]
    fn the_server_is_read_from_the_cmdline() {
        assert_eq!(
            server_from_cmdline("console=ttyS0 ukload.port=5").unwrap(),
            None
        );
        let argv = vec!["node".to_string(), "/srv/a b.js".into(), "--x='y'".into()];
        let hex = encode_server_command(&argv);
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()), "{hex}");
        let line = format!(
            "quiet ukload.rootfs=/dev/vda ukload.server={hex} ukload.server_timeout_ms=1500"
        );
        let spec = server_from_cmdline(&line).unwrap().unwrap();
        assert_eq!(spec.device, "/dev/vda");
        assert_eq!(spec.command, Some(argv));
        assert_eq!(spec.start_timeout, Some(Duration::from_millis(1500)));
        let spec = server_from_cmdline("ukload.rootfs=/dev/vdb")
            .unwrap()
            .unwrap();
        assert_eq!(spec.command, None, "the manifest names it");
        for bad in [
            "ukload.rootfs=vda",
            "ukload.rootfs=/dev/vda ukload.server=abc",
            "ukload.rootfs=/dev/vda ukload.server=zz",
            "ukload.rootfs=/dev/vda ukload.server=5b5d",
            "ukload.rootfs=/dev/vda ukload.server_timeout_ms=0",
        ] {
            let err = server_from_cmdline(bad).unwrap_err().to_string();
            assert!(err.starts_with("bad ukload."), "{bad}: {err}");
        }
    }

    #[test]
    fn the_manifest_names_the_command() {
        assert_eq!(
            manifest_command(r#"{"command":["/usr/bin/node","/srv/e.js"],"x":1}"#).unwrap(),
            vec!["/usr/bin/node", "/srv/e.js"]
        );
        for bad in ["{}", r#"{"command":[]}"#, r#"{"command":"node"}"#, "nope"] {
            assert!(manifest_command(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_tree_is_copied_with_files_modes_dirs_and_links() {
        use std::os::unix::fs::PermissionsExt;
        let base = std::env::temp_dir().join(format!("ukload-copy-tree-{}", std::process::id()));
        let (from, to) = (base.join("from"), base.join("to"));
        std::fs::create_dir_all(from.join("a/b")).unwrap();
        std::fs::create_dir_all(&to).unwrap();
        std::fs::write(from.join("a/b/s.js"), b"x").unwrap();
        std::fs::set_permissions(
            from.join("a/b/s.js"),
            std::fs::Permissions::from_mode(0o750),
        )
        .unwrap();
        std::os::unix::fs::symlink("b/s.js", from.join("a/l")).unwrap();
        copy_tree(&from, &to, TMP_COPY_DEPTH).unwrap();
        assert_eq!(std::fs::read(to.join("a/b/s.js")).unwrap(), b"x");
        assert_eq!(
            std::fs::metadata(to.join("a/b/s.js"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o750
        );
        assert_eq!(
            std::fs::read_link(to.join("a/l")).unwrap(),
            std::path::Path::new("b/s.js")
        );
        assert!(copy_tree(&from, &base.join("to2-missing"), TMP_COPY_DEPTH).is_err());
        let deep = base.join("deep");
        std::fs::create_dir_all(&deep).unwrap();
        assert!(copy_tree(&from, &deep, 2).is_err(), "a/b is 3 levels");
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn mounting_the_rootfs_is_refused_outside_a_vms_init() {
        let spec = ServerSpec {
            device: "/dev/null".into(),
            command: None,
            start_timeout: None,
        };
        let err = mount_rootfs(&spec).unwrap_err();
        assert!(err.contains("refusing to mount"), "{err}");
    }

    #[test]
    fn a_similar_parameter_is_not_taken_for_the_port() {
        assert_eq!(
            port_from_cmdline("xukload.port=9").unwrap(),
            crate::DEFAULT_PORT
        );
    }

    #[test]
    fn init_refuses_to_run_outside_pid_1() {
        let err = init_as_pid1().unwrap_err();
        assert!(err.contains("not 1"), "{err}");
    }

    fn evidence(pid: i32, root: Option<u64>, proc_state: MountState) -> InitEvidence {
        InitEvidence {
            pid,
            root_fs_magic: root,
            proc_state,
            init_flag: false,
        }
    }

    #[test]
    fn a_vm_init_is_pid_1_on_an_initramfs_root_with_proc_not_mounted() {
        for root in [RAMFS_MAGIC, TMPFS_MAGIC] {
            for proc_state in [MountState::NotMounted, MountState::Missing] {
                let ev = evidence(1, Some(root), proc_state);
                assert_eq!(decide_role(&ev), Role::VmInit, "{ev:?}");
            }
        }
    }

    #[test]
    fn pid_1_of_a_namespace_on_the_hosts_mounts_is_not_a_vm_init() {
        const EXT4_MAGIC: u64 = 0xef53;
        const OVERLAYFS_MAGIC: u64 = 0x794c_7630;
        let proc_mounted = MountState::Mounted {
            magic: PROC_SUPER_MAGIC,
        };
        // `unshare --pid --fork` on a host, a container on overlayfs.
        for root in [EXT4_MAGIC, OVERLAYFS_MAGIC] {
            let role = decide_role(&evidence(1, Some(root), proc_mounted));
            let Role::NamespacePid1 { why } = role else {
                panic!("{role:?}")
            };
            assert!(
                why.contains("not an initramfs") && why.contains("/proc"),
                "{why}"
            );
        }
        // A tmpfs root is cheap to fake; a host's /proc is still mounted.
        let role = decide_role(&evidence(1, Some(TMPFS_MAGIC), proc_mounted));
        assert!(
            matches!(&role, Role::NamespacePid1 { why } if why == "/proc is already mounted"),
            "{role:?}"
        );
        // Anything mounted on /proc, or /proc unreadable, or no statfs of /: not init.
        for ev in [
            evidence(
                1,
                Some(RAMFS_MAGIC),
                MountState::Mounted { magic: TMPFS_MAGIC },
            ),
            evidence(1, Some(RAMFS_MAGIC), MountState::Unknown),
            evidence(1, None, MountState::NotMounted),
        ] {
            assert!(
                matches!(decide_role(&ev), Role::NamespacePid1 { .. }),
                "{ev:?}"
            );
        }
    }

    #[test]
    fn init_flag_forces_the_init_role_only_for_pid_1() {
        let mut ev = evidence(
            1,
            Some(0xef53),
            MountState::Mounted {
                magic: PROC_SUPER_MAGIC,
            },
        );
        ev.init_flag = true;
        assert_eq!(decide_role(&ev), Role::VmInit);
        ev.pid = 4242;
        assert_eq!(decide_role(&ev), Role::Process);
        let vm_like = evidence(4242, Some(RAMFS_MAGIC), MountState::NotMounted);
        assert_eq!(decide_role(&vm_like), Role::Process);
    }

    #[test]
    fn existing_mounts_are_never_mounted_over() {
        let proc_mounted = MountState::Mounted {
            magic: PROC_SUPER_MAGIC,
        };
        assert_eq!(
            mount_action(MountState::NotMounted, &[PROC_SUPER_MAGIC], false),
            MountAction::Mount
        );
        assert_eq!(
            mount_action(MountState::Missing, &[SYSFS_MAGIC], false),
            MountAction::Mount
        );
        // A devtmpfs the kernel mounted is left as it is.
        assert_eq!(
            mount_action(
                MountState::Mounted { magic: TMPFS_MAGIC },
                DEVTMPFS_MAGICS,
                true
            ),
            MountAction::AlreadyThere
        );
        // A proc already on /proc is a host's or a container's: refuse.
        assert_eq!(
            mount_action(proc_mounted, &[PROC_SUPER_MAGIC], false),
            MountAction::Refuse {
                found: "proc".into()
            }
        );
        assert!(matches!(
            mount_action(
                MountState::Mounted { magic: SYSFS_MAGIC },
                DEVTMPFS_MAGICS,
                true
            ),
            MountAction::Refuse { .. }
        ));
        assert!(matches!(
            mount_action(MountState::Unknown, DEVTMPFS_MAGICS, true),
            MountAction::Refuse { .. }
        ));
        let err = Pid1Error::AlreadyMounted {
            fstype: "proc",
            target: "/proc",
            found: "proc".into(),
        };
        let s = err.to_string();
        assert!(
            s.starts_with("refusing to mount proc on /proc: proc is already mounted"),
            "{s}"
        );
    }

    #[test]
    fn this_test_process_sees_the_hosts_proc_mounted_and_is_not_init() {
        assert_eq!(
            mount_state("/proc").unwrap(),
            MountState::Mounted {
                magic: PROC_SUPER_MAGIC
            }
        );
        let ev = InitEvidence::gather(false);
        assert_eq!(decide_role(&ev), Role::Process, "{ev:?}");
    }

    #[test]
    fn module_paths_are_flat_under_lib_modules() {
        assert_eq!(module_path("vsock"), "/lib/modules/vsock.ko");
        assert_eq!(MODULES.first(), Some(&"virtio_ring"));
        assert_eq!(MODULES.last(), Some(&"vmw_vsock_virtio_transport"));
    }

    #[test]
    fn built_in_drivers_are_not_loaded_and_missing_ones_are_errors() {
        let f = |ko, sys, list| ModuleFound {
            ko_in_image: ko,
            in_sys_module: sys,
            in_builtin_list: list,
        };
        assert_eq!(module_action(f(true, false, false)), ModuleAction::Load);
        assert_eq!(module_action(f(false, true, false)), ModuleAction::BuiltIn);
        assert_eq!(module_action(f(false, false, true)), ModuleAction::BuiltIn);
        // Built in wins over a stray .ko: loading it would fail with EEXIST anyway.
        assert_eq!(module_action(f(true, true, false)), ModuleAction::BuiltIn);
        assert_eq!(module_action(f(false, false, false)), ModuleAction::Missing);
        let err = Pid1Error::ModuleMissing {
            module: "vsock",
            path: module_path("vsock"),
        };
        let s = err.to_string();
        assert!(s.starts_with("loading vsock.ko failed:"), "{s}");
        assert!(
            s.contains("not in the image") && s.contains("built in"),
            "{s}"
        );
    }

    #[test]
    fn builtin_list_matches_whole_module_names() {
        let list = "kernel/drivers/virtio/virtio.ko\nkernel/drivers/char/hw_random/virtio-rng.ko\n";
        assert!(builtin_list_has(list, "virtio"));
        assert!(builtin_list_has(list, "virtio_rng"));
        assert!(!builtin_list_has(list, "virtio_ring"));
        assert!(!builtin_list_has(list, "vsock"));
        assert!(!builtin_list_has("", "virtio"));
    }

    #[test]
    fn module_errors_name_the_module_and_the_syscall() {
        let err = Pid1Error::ModuleLoad {
            module: "vsock",
            err: std::io::Error::from_raw_os_error(libc::ENOEXEC),
        };
        let s = err.to_string();
        assert!(
            s.starts_with("loading vsock.ko failed: finit_module:"),
            "{s}"
        );
        assert!(!s.contains("module loader"), "{s}");
    }

    #[test]
    fn a_kernel_without_module_loader_is_named_in_the_error() {
        let err = Pid1Error::ModuleLoad {
            module: "vsock",
            err: std::io::Error::from_raw_os_error(libc::ENOSYS),
        };
        let s = err.to_string();
        assert!(
            s.starts_with("loading vsock.ko failed: finit_module:"),
            "{s}"
        );
        assert!(
            s.contains("no module loader") && s.contains("vsock must be built in"),
            "{s}"
        );
    }

    #[test]
    fn reaped_statuses_are_bounded_and_wait_child_times_out() {
        let mut s = ReapedStatuses::default();
        for pid in 0..(REAPED_STATUS_CAPACITY as i32 + 10) {
            s.insert(pid, 0);
        }
        assert_eq!(s.by_pid.len(), REAPED_STATUS_CAPACITY);
        assert!(!s.by_pid.contains_key(&0));
        let start = Instant::now();
        assert_eq!(wait_child(-12345, start + Duration::from_millis(20)), None);
        assert!(start.elapsed() >= Duration::from_millis(20));
    }
}
