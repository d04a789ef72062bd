//! The `qemu` launcher: a real microVM per instance (FIELD-NOTES section 2).
//!
//! - Kernel: Debian's uncompressed `vmlinux` (PVH direct boot); initramfs with
//!   a static `ukload-guest` as `/init` (see [`crate::image`]).
//! - `-M microvm` by default (`--machine pc` as an option).
//! - Acceleration: KVM only where it really boots a guest (probed once per
//!   host and cached), else TCG with a bounded translation cache,
//!   `tsc_early_khz` (TSC calibration hung about 1 boot in 10 without it) and
//!   [`TCG_KERNEL_ARGS`] (no APIC-timer calibration, no rodata protection, a
//!   trusted TSC: docs/microvm.md, "Boot time and memory under TCG").
//! - `-M microvm,acpi=off` for a kernel known to find its devices without
//!   ACPI (the minimal kernel: [`kernel_boots_without_acpi`]); ACPI otherwise.
//! - vsock: `vhost-user` (one `vhost-device-vsock` per instance, in the
//!   instance's process group, exposing the guest as a hybrid Unix socket in
//!   the run directory) or kernel `vhost` (`guest-cid=CID`, host `AF_VSOCK`).
//!   Either way the guest's CID is the one the registry allocated.
//! - Readiness: the guest's console marker, then a `ping` over vsock. Sending
//!   `CONNECT` before the guest listens stalled the vsock path for good in
//!   about 1 boot in 10 with 3 concurrent VMs (docs/microvm.md); after the
//!   marker it never did.

use super::{InstanceCtx, LaunchError, Plan, PreStep, Readiness, UnknownChoice};
use crate::image::{self, ImagePaths};
use crate::supervisor::{Command, Supervisor};
use crate::vsock::Endpoint;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Default guest memory, MiB: Debian's cloud kernel (the setup default)
/// boots from 72 MiB and has 14–24 MB free at 80; the generic kernel needs 96
/// (its image reaches 74 MiB of physical memory). Untouched guest pages cost
/// nothing, so a little headroom is free (docs/microvm.md).
pub const DEFAULT_QEMU_MEMORY_MB: u64 = 80;
/// Smallest `--memory` the qemu launcher accepts, MiB. Below the guest's
/// floor QEMU says nothing at all: the kernel image (physical 16–25 MiB for
/// the minimal kernel) or the initramfs does not fit, the guest resets or
/// panics, and with `-no-reboot` QEMU exits 0 with an empty console.
/// Measured with the minimal kernel and the project's 2 MB initramfs under
/// TCG: 20–26 MiB exit 0 with no output, 28 panics ("Initramfs unpacking
/// failed ... No working init found") and exits 0, 29 boots and runs a tool
/// call. 32 leaves room for a somewhat larger initramfs. Debian's kernels
/// need more (cloud 72, generic 96: docs/microvm.md), which only a boot shows.
pub const MIN_QEMU_MEMORY_MB: u64 = 32;
/// TCG translation cache, MiB. With the minimal guest kernel (the setup
/// default) 8 costs no boot time and brings even a lone VM under 80 MB PSS;
/// Debian's much larger kernels boot slower at 8 (10 concurrent cloud-kernel
/// boots: 20 s at 16, 26 s at 8), so use `--tb-size-mb 16` with those
/// (docs/microvm.md).
pub const DEFAULT_TB_SIZE_MB: u64 = 8;
/// Kernel command-line words for guests under TCG, where every kernel
/// instruction is emulated (one boot of the minimal kernel, docs/microvm.md):
/// - `noapictimer`: the kernel otherwise calibrates the local APIC timer
///   against the PIT for 100 ms of emulated ticks (about 100 ms of every
///   boot); without it the PIT drives the (tickless) clock events, which a
///   single-vCPU guest does not miss.
/// - `rodata=off`: no write-protecting of kernel text and rodata and no
///   freeing of the alignment gaps around them: page-attribute changes are
///   slow under TCG, and freeing poisons 3.6 MB of the minimal kernel's
///   gaps, guest RAM that would otherwise stay untouched (QEMU PSS −3.7 MB
///   per VM). The guest is a disposable load-test target.
/// - `tsc=reliable`: under TCG the guest's TSC is the host's, which is
///   stable; the kernel's watchdog compares it with jiffies, which lag when
///   the emulated vCPU is starved. With 10 VMs on 2 cores (and without
///   ACPI's PM timer as a better watchdog) every guest marked its TSC
///   unstable and fell back to jiffies: 10 ms clock resolution, and
///   `probe_overhead_ms` / `guest_kernel_ms` measured on a clock that loses
///   time.
pub const TCG_KERNEL_ARGS: [&str; 3] = ["noapictimer", "rodata=off", "tsc=reliable"];
/// The kernel configuration the minimal-kernel build leaves beside its
/// `vmlinux` in the cache (scripts/build-minimal-kernel.sh); Debian flavors
/// have none (scripts/setup-microvm.sh removes it).
pub const KERNEL_CONFIG_FILE: &str = "kernel-config";
/// Kernel options that let a guest find its virtio-mmio device and its
/// interrupts without ACPI: QEMU's `-M microvm,acpi=off` names the device on
/// the kernel command line and describes interrupts with an MP table.
/// Debian's kernels lack the first, so they keep ACPI.
pub const NO_ACPI_NEEDS: [&str; 2] = [
    "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y",
    "CONFIG_X86_MPPARSE=y",
];
/// How long the KVM probe may take before KVM counts as unusable.
pub const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(20);
/// What the KVM probe waits for on the console: the guest's init ran.
const KVM_PROBE_MARKER: &str = "ukload-guest";
/// Cache file holding the KVM probe's answer.
const KVM_PROBE_FILE: &str = "kvm-probe";
/// How often the KVM probe reads the console.
const KVM_PROBE_POLL: Duration = Duration::from_millis(20);
/// Where kernel vhost-vsock lives.
pub const VHOST_VSOCK_DEV: &str = "/dev/vhost-vsock";
/// Where KVM lives.
pub const KVM_DEV: &str = "/dev/kvm";

/// Machine type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Machine {
    Microvm,
    Pc,
}

/// Acceleration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Auto,
    Kvm,
    Tcg,
}

/// vsock backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VsockBackend {
    Auto,
    /// `vhost-device-vsock` per instance, hybrid socket on the host.
    VhostUser,
    /// Kernel vhost-vsock, host `AF_VSOCK`.
    Vhost,
}

impl std::str::FromStr for Machine {
    type Err = UnknownChoice;
    fn from_str(s: &str) -> Result<Self, UnknownChoice> {
        match s {
            "microvm" => Ok(Machine::Microvm),
            "pc" => Ok(Machine::Pc),
            _ => Err(UnknownChoice::new("machine", s, "microvm or pc")),
        }
    }
}

impl std::str::FromStr for Accel {
    type Err = UnknownChoice;
    fn from_str(s: &str) -> Result<Self, UnknownChoice> {
        match s {
            "auto" => Ok(Accel::Auto),
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            _ => Err(UnknownChoice::new("accelerator", s, "auto, kvm or tcg")),
        }
    }
}

impl std::str::FromStr for VsockBackend {
    type Err = UnknownChoice;
    fn from_str(s: &str) -> Result<Self, UnknownChoice> {
        match s {
            "auto" => Ok(VsockBackend::Auto),
            "vhost-user" => Ok(VsockBackend::VhostUser),
            "vhost" => Ok(VsockBackend::Vhost),
            _ => Err(UnknownChoice::new(
                "vsock backend",
                s,
                "auto, vhost-user or vhost",
            )),
        }
    }
}

/// `qemu` launcher settings.
#[derive(Clone, Debug)]
pub struct QemuConfig {
    pub qemu_bin: String,
    pub vhost_user_bin: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub machine: Machine,
    pub accel: Accel,
    pub backend: VsockBackend,
    pub tb_size_mb: u64,
    /// Extra kernel command-line words.
    pub append: Vec<String>,
    /// A root filesystem image (erofs) holding an MCP server: attached
    /// read-only to every instance (the same file, never copied) as the
    /// guest's `/dev/vda`; the guest's init then bridges every connection to
    /// the server (docs/microvm.md, "MCP servers in the VM").
    pub rootfs: Option<PathBuf>,
    /// The server's argv inside the image (`None`: the image's manifest names it).
    pub server: Option<Vec<String>>,
    /// How long the guest lets a started server stay silent after its first
    /// request before it reports it as never answering.
    pub server_timeout: Option<Duration>,
    /// Build (or take from the cache) the root filesystem image for this
    /// server in [`QemuConfig::preflight`], when `rootfs` is not given.
    pub build_rootfs: Option<crate::rootfs::RootfsSpec>,
}

/// Default deadline of a tool call (and of the session's start) when each VM
/// runs a real MCP server (`--mcp-server`): under TCG on a shared 2-core host
/// Node needs about 10 s to start in one VM and about 70 s when 10 VMs start
/// it at once (docs/microvm.md, "MCP servers in the VM"); the guest ends a
/// server silent for this long after its first request.
pub const DEFAULT_VM_SERVER_TOOL_TIMEOUT: Duration = Duration::from_secs(180);
/// Linux's x86 limit on the kernel command line (`COMMAND_LINE_SIZE`),
/// including the terminating NUL.
pub const KERNEL_CMDLINE_MAX: usize = 2048;
/// The guest's block device for the root filesystem image (the first
/// virtio-blk device).
pub const ROOTFS_GUEST_DEVICE: &str = "/dev/vda";

impl Default for QemuConfig {
    fn default() -> Self {
        let paths = ImagePaths::cached();
        QemuConfig {
            qemu_bin: image::QEMU_BIN.into(),
            vhost_user_bin: image::VHOST_VSOCK_BIN.into(),
            kernel: paths.kernel,
            initrd: paths.initramfs,
            machine: Machine::Microvm,
            accel: Accel::Auto,
            backend: VsockBackend::Auto,
            tb_size_mb: DEFAULT_TB_SIZE_MB,
            append: Vec::new(),
            rootfs: None,
            server: None,
            server_timeout: None,
            build_rootfs: None,
        }
    }
}

/// What preflight decided, used by every instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub kvm: bool,
    pub backend: VsockBackend,
    /// `tsc_early_khz` for TCG guests.
    pub tsc_khz: Option<u64>,
    /// Boot `-M microvm` with `acpi=off`: the kernel is known (from its
    /// build's `kernel-config`) to find its devices without ACPI. Saves
    /// 2.9 MB PSS per VM (docs/microvm.md); any other kernel keeps ACPI.
    pub acpi_off: bool,
}

/// Whether the kernel at `kernel` is known to boot under `-M microvm,acpi=off`
/// with its vsock device: the `kernel-config` beside it (written by the
/// minimal-kernel build) has every option of [`NO_ACPI_NEEDS`]. Without that
/// file nothing is known and ACPI stays on, which every kernel boots with.
pub fn kernel_boots_without_acpi(kernel: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(kernel.with_file_name(KERNEL_CONFIG_FILE)) else {
        return false;
    };
    NO_ACPI_NEEDS
        .iter()
        .all(|need| text.lines().any(|l| l.trim() == *need))
}

/// Finds `program` on PATH, or in `~/.cargo/bin` (where `cargo install` puts
/// vhost-device-vsock, often not on PATH for root shells).
pub fn find_program(program: &str) -> Option<PathBuf> {
    crate::supervisor::spawn::resolve_program(program.as_ref()).or_else(|| {
        let p = PathBuf::from(std::env::var_os("HOME")?)
            .join(".cargo/bin")
            .join(program);
        crate::supervisor::spawn::resolve_program(p.as_os_str())
    })
}

/// The host's TSC frequency in kHz, from `/proc/cpuinfo`'s first `cpu MHz`.
pub fn host_tsc_khz() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu MHz"))?;
    let mhz: f64 = line.split(':').nth(1)?.trim().parse().ok()?;
    Some((mhz * 1000.0).round() as u64)
}

/// What to run when the microVM pieces are missing.
const SETUP_HINT: &str = "Run `bash scripts/setup-microvm.sh` (as root: installs QEMU, the guest kernel and vhost-device-vsock)";

impl QemuConfig {
    /// Whether every VM runs a real MCP server (a root filesystem image is
    /// given or will be built).
    pub fn runs_server(&self) -> bool {
        self.rootfs.is_some() || self.build_rootfs.is_some()
    }

    /// Builds the root filesystem image of [`QemuConfig::build_rootfs`] (or
    /// takes it from the image cache) and points `rootfs` and `server` at it.
    /// Does nothing when no image is to be built or it was done already.
    pub fn prepare_rootfs(&mut self) -> Result<(), LaunchError> {
        let Some(spec) = self.build_rootfs.take() else {
            return Ok(());
        };
        let img = crate::rootfs::build(&spec, &image::cache_dir()).map_err(|e| match e {
            crate::rootfs::RootfsError::MkfsMissing => LaunchError::NotInstalled {
                what: crate::rootfs::MKFS_BIN.into(),
                how: format!(
                    "It builds the root filesystem image for --mcp-server: {}.",
                    crate::rootfs::MKFS_INSTALL
                ),
            },
            e => LaunchError::Invalid(format!(
                "building the root filesystem image for --mcp-server {:?}: {e}",
                spec.command.join(" ")
            )),
        })?;
        // The plan's guest command (resolved once, when the image was planned).
        self.server = Some(img.manifest.command);
        self.rootfs = Some(img.path);
        Ok(())
    }

    /// Checks programs and image pieces; decides acceleration and backend.
    /// Builds the root filesystem image first if one is to be built
    /// ([`QemuConfig::prepare_rootfs`]).
    /// `sup` reaps the KVM probe's QEMU; without one KVM is not probed (TCG).
    pub fn preflight(
        &mut self,
        memory_mb: u64,
        sup: Option<&Supervisor>,
    ) -> Result<Resolved, LaunchError> {
        self.check_installed()?;
        self.prepare_rootfs()?;
        self.check_rootfs_path()?;
        // /proc/cpuinfo read once, for the length check and the result.
        let tsc_khz = host_tsc_khz();
        self.check_cmdline_length(tsc_khz)?;
        let backend = self.resolve_backend()?;
        let kvm = match self.accel {
            Accel::Tcg => false,
            Accel::Kvm => true,
            Accel::Auto => Path::new(KVM_DEV).exists() && self.kvm_works(memory_mb, sup),
        };
        Ok(Resolved {
            kvm,
            backend,
            tsc_khz: if kvm { None } else { tsc_khz },
            acpi_off: self.machine == Machine::Microvm && kernel_boots_without_acpi(&self.kernel),
        })
    }

    /// QEMU, the guest kernel and the initramfs are there.
    fn check_installed(&self) -> Result<(), LaunchError> {
        if find_program(&self.qemu_bin).is_none() {
            return Err(LaunchError::NotInstalled {
                what: format!("QEMU ({})", self.qemu_bin),
                how: format!("{SETUP_HINT}."),
            });
        }
        if !self.kernel.is_file() {
            return Err(LaunchError::NotInstalled {
                what: format!("guest kernel {}", self.kernel.display()),
                how: format!("{SETUP_HINT}, or name one with --kernel PATH."),
            });
        }
        if !self.initrd.is_file() {
            return Err(LaunchError::NotInstalled {
                what: format!("guest initramfs {}", self.initrd.display()),
                how: "Build it with `bash scripts/build-guest-image.sh` (or `ukload image build`), or name one with --initrd PATH.".into(),
            });
        }
        Ok(())
    }

    /// A `--rootfs` image exists and QEMU's `-drive` can name it.
    fn check_rootfs_path(&self) -> Result<(), LaunchError> {
        if let Some(img) = &self.rootfs {
            if !img.is_file() {
                return Err(LaunchError::Invalid(format!(
                    "--rootfs {}: no such file (give an erofs image, or leave --rootfs out to \
                     build one from --mcp-server)",
                    img.display()
                )));
            }
            if img.to_string_lossy().contains(',') {
                // QEMU's -drive option syntax would need the comma doubled.
                return Err(LaunchError::Invalid(format!(
                    "--rootfs {}: a path with a comma cannot be given to QEMU's -drive; \
                     move or link the image elsewhere",
                    img.display()
                )));
            }
        }
        Ok(())
    }

    /// The guest's kernel command line fits Linux's limit.
    /// `tsc_khz`: [`host_tsc_khz`], as TCG would pass it (the longest line).
    fn check_cmdline_length(&self, tsc_khz: Option<u64>) -> Result<(), LaunchError> {
        let cmdline = self.kernel_cmdline(
            &Resolved {
                kvm: false,
                backend: VsockBackend::Auto,
                tsc_khz,
                acpi_off: false,
            },
            u32::MAX,
        );
        if cmdline.len() + 1 > KERNEL_CMDLINE_MAX {
            return Err(LaunchError::Invalid(format!(
                "the guest's kernel command line would be {} bytes, over Linux's limit of {} \
                 (the MCP server's command is passed on it, hex-encoded: {} bytes); shorten \
                 the command, or put it in the root filesystem image's manifest and leave \
                 --mcp-server out",
                cmdline.len() + 1,
                KERNEL_CMDLINE_MAX,
                self.server
                    .as_ref()
                    .map_or(0, |a| crate::vmabi::encode_server_command(a).len())
            )));
        }
        Ok(())
    }

    /// The vsock backend to use (`auto`: vhost when the host has it), and
    /// what it needs is there.
    fn resolve_backend(&self) -> Result<VsockBackend, LaunchError> {
        let backend = match self.backend {
            VsockBackend::Auto if Path::new(VHOST_VSOCK_DEV).exists() => VsockBackend::Vhost,
            VsockBackend::Auto => VsockBackend::VhostUser,
            b => b,
        };
        if backend == VsockBackend::VhostUser && find_program(&self.vhost_user_bin).is_none() {
            return Err(LaunchError::NotInstalled {
                what: format!("{} (the vhost-user vsock backend)", self.vhost_user_bin),
                how: format!("{SETUP_HINT}, or `cargo install vhost-device-vsock`."),
            });
        }
        if backend == VsockBackend::Vhost && !Path::new(VHOST_VSOCK_DEV).exists() {
            return Err(LaunchError::NotInstalled {
                what: VHOST_VSOCK_DEV.into(),
                how: "Load it with `modprobe vhost_vsock`, or use --vsock-backend vhost-user."
                    .into(),
            });
        }
        Ok(backend)
    }

    /// Whether KVM really boots our guest here, asked once per host and
    /// kernel and cached (on nested-virtualization hosts `/dev/kvm` exists
    /// but QEMU aborts or hangs).
    /// Whether KVM really boots the guest here (probed once and cached, as
    /// [`QemuConfig::preflight`] does; `ukload doctor` asks the same). Needs
    /// the supervisor (the probe's QEMU is reaped by it).
    pub fn kvm_really_boots(&self, sup: &Supervisor) -> bool {
        self.kvm_works(DEFAULT_QEMU_MEMORY_MB, Some(sup))
    }

    fn kvm_works(&self, memory_mb: u64, sup: Option<&Supervisor>) -> bool {
        let key = format!(
            "{}:{}",
            self.kernel.display(),
            std::fs::metadata(&self.kernel)
                .map(|m| m.len())
                .unwrap_or(0)
        );
        let cache = image::cache_dir().join(KVM_PROBE_FILE);
        if let Ok(text) = std::fs::read_to_string(&cache) {
            if let Some((k, v)) = text.trim().rsplit_once('=') {
                if k == key {
                    return v == "works";
                }
            }
        }
        let Some(sup) = sup else {
            // Not probed, not cached: a later run with a supervisor probes.
            return false;
        };
        let works = probe_kvm(self, memory_mb, sup);
        let _ = std::fs::create_dir_all(image::cache_dir());
        let _ = std::fs::write(
            &cache,
            format!("{key}={}\n", if works { "works" } else { "broken" }),
        );
        works
    }

    /// The guest's kernel command line.
    fn kernel_cmdline(&self, r: &Resolved, port: u32) -> String {
        let mut append = vec![
            "console=ttyS0".to_string(),
            "panic=-1".into(),
            "quiet".into(),
        ];
        if let Some(k) = r.tsc_khz {
            append.push(format!("tsc_early_khz={k}"));
        }
        if !r.kvm {
            append.extend(TCG_KERNEL_ARGS.iter().map(|a| a.to_string()));
        }
        append.push(format!("{}={port}", crate::vmabi::CMDLINE_PORT_PARAM));
        if self.rootfs.is_some() {
            append.push(format!(
                "{}={ROOTFS_GUEST_DEVICE}",
                crate::vmabi::CMDLINE_ROOTFS_PARAM
            ));
            if let Some(argv) = &self.server {
                append.push(format!(
                    "{}={}",
                    crate::vmabi::CMDLINE_SERVER_PARAM,
                    crate::vmabi::encode_server_command(argv)
                ));
            }
            if let Some(t) = self.server_timeout {
                append.push(format!(
                    "{}={}",
                    crate::vmabi::CMDLINE_SERVER_TIMEOUT_PARAM,
                    t.as_millis().max(1)
                ));
            }
        }
        append.extend(self.append.iter().cloned());
        append.join(" ")
    }

    /// The QEMU command line (without vsock) shared by instances and the probe.
    fn base_args(&self, r: &Resolved, memory_mb: u64, port: u32) -> Vec<String> {
        let kvm = r.kvm;
        let accel = if kvm {
            "kvm".to_string()
        } else {
            format!("tcg,tb-size={}", self.tb_size_mb)
        };
        let machine = match self.machine {
            Machine::Microvm if r.acpi_off => "microvm,x-option-roms=off,isa-serial=on,acpi=off",
            Machine::Microvm => "microvm,x-option-roms=off,isa-serial=on",
            Machine::Pc => "pc",
        };
        let append = self.kernel_cmdline(r, port);
        let mem = format!("{memory_mb}M");
        let mut v: Vec<String> = vec!["-accel".into(), accel, "-M".into(), machine.into()];
        v.extend(
            [
                "-object",
                &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
                "-numa",
                "node,memdev=mem",
                "-m",
                &mem,
                "-nographic",
                "-no-reboot",
                "-nodefaults",
                "-serial",
                "stdio",
                "-kernel",
                &self.kernel.to_string_lossy(),
                "-initrd",
                &self.initrd.to_string_lossy(),
                "-append",
                &append,
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        v
    }

    /// The plan for one instance.
    pub fn plan(&self, r: &Resolved, ctx: &InstanceCtx, ready: &regex_lite::Regex) -> Plan {
        let mut args = self.base_args(r, ctx.memory_mb, ctx.port);
        let pci = self.machine == Machine::Pc;
        let mut pre = Vec::new();
        let endpoint = match r.backend {
            VsockBackend::Vhost | VsockBackend::Auto => {
                let dev = if pci {
                    "vhost-vsock-pci"
                } else {
                    "vhost-vsock-device"
                };
                args.extend(["-device".into(), format!("{dev},guest-cid={}", ctx.cid)]);
                Endpoint::Vsock {
                    cid: ctx.cid,
                    port: ctx.port,
                }
            }
            VsockBackend::VhostUser => {
                let vhost_sock = ctx.uds.with_extension("vhost");
                let bin = find_program(&self.vhost_user_bin)
                    .unwrap_or_else(|| PathBuf::from(&self.vhost_user_bin));
                pre.push(PreStep {
                    command: Command::new(bin).arg("--vm").arg(format!(
                        "guest-cid={},socket={},uds-path={}",
                        ctx.cid,
                        vhost_sock.display(),
                        ctx.uds.display()
                    )),
                    ready_path: vhost_sock.clone(),
                });
                let dev = if pci {
                    "vhost-user-vsock-pci"
                } else {
                    "vhost-user-vsock-device"
                };
                args.extend([
                    "-device".into(),
                    format!("{dev},chardev=c0"),
                    "-chardev".into(),
                    format!("socket,id=c0,path={}", vhost_sock.display()),
                ]);
                Endpoint::Hybrid {
                    path: ctx.uds.clone(),
                    port: ctx.port,
                }
            }
        };
        if let Some(img) = &self.rootfs {
            // One file shared read-only by every instance; QEMU never writes it.
            args.extend([
                "-drive".into(),
                format!(
                    "file={},if=none,id=rootfs,format=raw,readonly=on",
                    img.display()
                ),
                "-device".into(),
                if pci {
                    "virtio-blk-pci,drive=rootfs".into()
                } else {
                    "virtio-blk-device,drive=rootfs".into()
                },
            ]);
        }
        let qemu = find_program(&self.qemu_bin).unwrap_or_else(|| PathBuf::from(&self.qemu_bin));
        Plan {
            pre,
            command: Command::new(qemu).args(args),
            readiness: Readiness::ConsoleThenProbe(ready.clone(), endpoint),
            // QEMU runs in the foreground: its exit is the VM's end.
            may_daemonize: false,
        }
    }
}

/// Boots the guest once with `-accel kvm` and no vsock device: KVM works if
/// the guest's init prints within [`KVM_PROBE_TIMEOUT`].
fn probe_kvm(cfg: &QemuConfig, memory_mb: u64, sup: &Supervisor) -> bool {
    let Some(qemu) = find_program(&cfg.qemu_bin) else {
        return false;
    };
    let log = std::env::temp_dir().join(format!("ukload-kvm-probe-{}.log", std::process::id()));
    let Ok(out) = std::fs::File::create(&log) else {
        return false;
    };
    let Ok(err) = out.try_clone() else {
        return false;
    };
    let cmd = Command::new(qemu)
        .args(cfg.base_args(
            &Resolved {
                kvm: true,
                backend: VsockBackend::Auto,
                tsc_khz: None,
                acpi_off: cfg.machine == Machine::Microvm && kernel_boots_without_acpi(&cfg.kernel),
            },
            memory_mb,
            crate::DEFAULT_PORT,
        ))
        .stdout(crate::supervisor::Redirect::File(out))
        .stderr(crate::supervisor::Redirect::File(err));
    let Ok(child) = sup.spawn(cmd) else {
        let _ = std::fs::remove_file(&log);
        return false;
    };
    let end = Instant::now() + KVM_PROBE_TIMEOUT;
    let mut works = false;
    while Instant::now() < end && sup.try_status(child.pid).is_none() {
        if std::fs::read_to_string(&log).is_ok_and(|t| t.contains(KVM_PROBE_MARKER)) {
            works = true;
            break;
        }
        std::thread::sleep(KVM_PROBE_POLL);
    }
    let _ = crate::supervisor::kill_group(child.pgid, libc::SIGKILL);
    let _ = sup.wait_timeout(child.pid, Duration::from_secs(5));
    let _ = std::fs::remove_file(&log);
    works
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_command_gives_the_guest_its_cid_and_port() {
        let cfg = QemuConfig {
            kernel: "/k/vmlinux".into(),
            initrd: "/k/initrd".into(),
            ..Default::default()
        };
        let r = Resolved {
            kvm: false,
            backend: VsockBackend::VhostUser,
            tsc_khz: Some(2_500_000),
            acpi_off: false,
        };
        let ctx = InstanceCtx {
            index: 2,
            cid: 207,
            port: 6000,
            uds: "/run/x/i2.vsock".into(),
            memory_mb: 80,
            log: "/tmp/l".into(),
        };
        let plan = cfg.plan(&r, &ctx, &regex_lite::Regex::new("ready").unwrap());
        let shown = plan.command.display();
        assert!(shown.contains("-accel tcg,tb-size=8"), "{shown}");
        assert!(shown.contains("ukload.port=6000"), "{shown}");
        assert!(shown.contains("tsc_early_khz=2500000"), "{shown}");
        assert!(
            shown.contains("noapictimer rodata=off tsc=reliable"),
            "{shown}"
        );
        assert!(
            shown.contains("vhost-user-vsock-device,chardev=c0"),
            "{shown}"
        );
        assert!(
            shown.contains("size=80M") && shown.contains("-m 80M"),
            "{shown}"
        );
        assert_eq!(plan.pre.len(), 1);
        let helper = plan.pre[0].command.display();
        assert!(
            helper.contains("guest-cid=207,socket=/run/x/i2.vhost,uds-path=/run/x/i2.vsock"),
            "{helper}"
        );
        match plan.readiness {
            Readiness::ConsoleThenProbe(_, Endpoint::Hybrid { path, port }) => {
                assert_eq!(path, PathBuf::from("/run/x/i2.vsock"));
                assert_eq!(port, 6000);
            }
            _ => panic!("readiness should be console then hybrid probe"),
        }
        let kernel = Resolved {
            kvm: true,
            backend: VsockBackend::Vhost,
            tsc_khz: None,
            acpi_off: false,
        };
        let plan = cfg.plan(&kernel, &ctx, &regex_lite::Regex::new("ready").unwrap());
        let shown = plan.command.display();
        assert!(
            shown.contains("vhost-vsock-device,guest-cid=207") && shown.contains("-accel kvm"),
            "{shown}"
        );
        assert!(!shown.contains("noapictimer"), "{shown}");
        assert!(plan.pre.is_empty());
    }

    #[test]
    fn acpi_is_turned_off_only_for_a_kernel_known_to_boot_without_it() {
        let dir = std::env::temp_dir().join(format!("ukload-acpi-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kernel = dir.join("vmlinux");
        // No kernel-config (a Debian kernel, or one copied elsewhere): ACPI on.
        assert!(!kernel_boots_without_acpi(&kernel));
        let config = dir.join(KERNEL_CONFIG_FILE);
        std::fs::write(&config, "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y\n").unwrap();
        assert!(
            !kernel_boots_without_acpi(&kernel),
            "MP table support missing"
        );
        std::fs::write(
            &config,
            "CONFIG_ACPI=y\nCONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y\nCONFIG_X86_MPPARSE=y\n",
        )
        .unwrap();
        assert!(kernel_boots_without_acpi(&kernel));

        let cfg = QemuConfig {
            kernel: kernel.clone(),
            initrd: dir.join("initrd"),
            ..Default::default()
        };
        let ctx = InstanceCtx {
            index: 0,
            cid: 3,
            port: 5252,
            uds: dir.join("i0.vsock"),
            memory_mb: 80,
            log: dir.join("log"),
        };
        let ready = regex_lite::Regex::new("ready").unwrap();
        let mut r = Resolved {
            kvm: false,
            backend: VsockBackend::VhostUser,
            tsc_khz: None,
            acpi_off: true,
        };
        let shown = cfg.plan(&r, &ctx, &ready).command.display();
        assert!(shown.contains("isa-serial=on,acpi=off"), "{shown}");
        r.acpi_off = false;
        let shown = cfg.plan(&r, &ctx, &ready).command.display();
        assert!(!shown.contains("acpi=off"), "{shown}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_rootfs_image_is_attached_read_only_and_the_server_passed_on_the_cmdline() {
        let argv = vec!["node".to_string(), "/srv/echo server.js".into()];
        let mut cfg = QemuConfig {
            kernel: "/k/vmlinux".into(),
            initrd: "/k/initrd".into(),
            rootfs: Some("/img/node.erofs".into()),
            server: Some(argv.clone()),
            server_timeout: Some(Duration::from_secs(7)),
            ..Default::default()
        };
        let r = Resolved {
            kvm: false,
            backend: VsockBackend::VhostUser,
            tsc_khz: None,
            acpi_off: true,
        };
        let ctx = InstanceCtx {
            index: 0,
            cid: 3,
            port: 5252,
            uds: "/run/x/i0.vsock".into(),
            memory_mb: 160,
            log: "/tmp/l".into(),
        };
        let ready = regex_lite::Regex::new("ready").unwrap();
        let shown = cfg.plan(&r, &ctx, &ready).command.display();
        assert!(
            shown.contains(
                "-drive file=/img/node.erofs,if=none,id=rootfs,format=raw,readonly=on \
                 -device virtio-blk-device,drive=rootfs"
            ),
            "{shown}"
        );
        let hex = crate::vmabi::encode_server_command(&argv);
        assert!(
            shown.contains(&format!(
                "ukload.rootfs=/dev/vda ukload.server={hex} ukload.server_timeout_ms=7000"
            )),
            "{shown}"
        );
        cfg.machine = Machine::Pc;
        let shown = cfg.plan(&r, &ctx, &ready).command.display();
        assert!(
            shown.contains("-device virtio-blk-pci,drive=rootfs"),
            "{shown}"
        );
        // Without a rootfs: no drive, no server.
        cfg.rootfs = None;
        let shown = cfg.plan(&r, &ctx, &ready).command.display();
        assert!(
            !shown.contains("-drive") && !shown.contains("ukload.server"),
            "{shown}"
        );
    }

    #[test]
    fn a_server_command_too_long_for_the_kernel_cmdline_is_refused_by_name() {
        let dir = std::env::temp_dir().join(format!("ukload-cmdline-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["vmlinux", "initrd", "img"] {
            std::fs::write(dir.join(f), b"x").unwrap();
        }
        let mut cfg = QemuConfig {
            qemu_bin: "sh".into(),
            kernel: dir.join("vmlinux"),
            initrd: dir.join("initrd"),
            accel: Accel::Tcg,
            backend: VsockBackend::Vhost,
            rootfs: Some(dir.join("img")),
            server: Some(vec!["node".into(), "x".repeat(1200)]),
            ..Default::default()
        };
        let err = cfg.preflight(80, None).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            err.contains("kernel command line") && err.contains("2048"),
            "{err}"
        );
    }

    #[test]
    fn tsc_frequency_is_read_from_cpuinfo() {
        // Every x86 Linux host has a "cpu MHz" line.
        if cfg!(target_arch = "x86_64") {
            assert!(host_tsc_khz().is_some_and(|k| k > 100_000));
        }
    }
}
