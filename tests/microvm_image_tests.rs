//! The microVM guest image: the initramfs writer produces an archive that GNU
//! cpio (an independent reader) lists with the right names and modes and whose
//! files round-trip byte for byte; bad inputs are refused with errors that say
//! what to do; `info` reports what a cache lacks and how to make it.
//! (Booting the image is tested with the qemu launcher.)

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use ukload::guest::pid1::MODULES;
use ukload::image::{
    self, build_initramfs, info_in, CpioWriter, ImageError, NEWC_HEADER_LEN, NEWC_TRAILER,
};

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "ukload-image-test-{}-{}-{tag}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

const PT_LOAD: u32 = 1;
const PT_INTERP: u32 = 3;
const ELF64_PHDR_LEN: u16 = 56;

/// A minimal ELF64 file with one program header of type `p_type`, then a payload.
fn fake_elf(p_type: u32, payload: &[u8]) -> Vec<u8> {
    let mut e = vec![0u8; 64];
    e[..4].copy_from_slice(b"\x7fELF");
    e[4] = 2; // ELFCLASS64
    e[5] = 1; // little endian
    e[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    e[0x36..0x38].copy_from_slice(&ELF64_PHDR_LEN.to_le_bytes());
    e[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
    let mut ph = vec![0u8; ELF64_PHDR_LEN as usize];
    ph[..4].copy_from_slice(&p_type.to_le_bytes());
    e.extend_from_slice(&ph);
    e.extend_from_slice(payload);
    e
}

/// Inputs for `build_initramfs`: a static fake guest and one fake module per
/// needed module, each with distinct contents (and odd lengths, to exercise padding).
struct Inputs {
    guest: PathBuf,
    modules: PathBuf,
    expected: BTreeMap<String, Vec<u8>>,
}

fn make_inputs(dir: &Path) -> Inputs {
    let guest = dir.join("guest");
    let guest_data = fake_elf(PT_LOAD, b"the guest agent, pretending");
    fs::write(&guest, &guest_data).unwrap();
    let modules = dir.join("modules");
    fs::create_dir_all(&modules).unwrap();
    let mut expected = BTreeMap::new();
    expected.insert("init".to_string(), guest_data);
    for (i, m) in MODULES.iter().enumerate() {
        let mut data = b"\x7fELF module ".to_vec();
        data.extend_from_slice(m.as_bytes());
        data.extend(std::iter::repeat_n(b'x', i)); // lengths vary mod 4
        fs::write(modules.join(format!("{m}.ko")), &data).unwrap();
        expected.insert(format!("lib/modules/{m}.ko"), data);
    }
    // A module the guest does not load must not end up in the image.
    fs::write(modules.join("vsock_loopback.ko"), b"\x7fELF unused").unwrap();
    Inputs {
        guest,
        modules,
        expected,
    }
}

/// One entry as read back by this test's own newc reader.
#[derive(Debug)]
struct Entry {
    name: String,
    mode: u32,
    rdev: (u32, u32),
    data: Vec<u8>,
}

fn hex_field(h: &[u8], i: usize) -> u32 {
    let at = 6 + 8 * i;
    u32::from_str_radix(std::str::from_utf8(&h[at..at + 8]).unwrap(), 16).unwrap()
}

/// Reads a newc archive, asserting the format's alignment rules on the way.
fn read_newc(bytes: &[u8]) -> Vec<Entry> {
    let align = |n: usize| n.div_ceil(4) * 4;
    let mut at = 0;
    let mut out = Vec::new();
    loop {
        assert_eq!(at % 4, 0, "entry at {at} is not 4-byte aligned");
        let h = &bytes[at..at + NEWC_HEADER_LEN];
        assert_eq!(&h[..6], b"070701", "bad magic at {at}");
        let mode = hex_field(h, 1);
        let size = hex_field(h, 6) as usize;
        let rdev = (hex_field(h, 9), hex_field(h, 10));
        let name_size = hex_field(h, 11) as usize;
        let name_at = at + NEWC_HEADER_LEN;
        assert_eq!(bytes[name_at + name_size - 1], 0, "name not NUL-terminated");
        let name = String::from_utf8(bytes[name_at..name_at + name_size - 1].to_vec()).unwrap();
        let data_at = align(name_at + name_size);
        let data = bytes[data_at..data_at + size].to_vec();
        at = align(data_at + size);
        if name == NEWC_TRAILER {
            assert_eq!(at, bytes.len(), "bytes after the trailer");
            return out;
        }
        out.push(Entry {
            name,
            mode,
            rdev,
            data,
        });
    }
}

fn cpio_available() -> bool {
    Command::new("cpio")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn build(dir: &Path) -> (Inputs, PathBuf) {
    let inputs = make_inputs(dir);
    let out = dir.join("initramfs.cpio");
    build_initramfs(&inputs.guest, &inputs.modules, &out).expect("build_initramfs");
    (inputs, out)
}

#[test]
fn initramfs_entries_have_the_right_names_types_and_modes_in_parent_first_order() {
    let s = Scratch::new("modes");
    let (_, out) = build(&s.0);
    let entries = read_newc(&fs::read(&out).unwrap());
    let modes: BTreeMap<&str, u32> = entries.iter().map(|e| (e.name.as_str(), e.mode)).collect();
    assert_eq!(modes["init"], 0o100755);
    assert_eq!(modes["dev"], 0o040755);
    assert_eq!(modes["dev/console"], 0o020600);
    assert_eq!(modes["proc"], 0o040755);
    assert_eq!(modes["sys"], 0o040755);
    assert_eq!(modes["tmp"], 0o041777);
    assert_eq!(modes["lib/modules"], 0o040755);
    for m in MODULES {
        assert_eq!(
            modes[format!("lib/modules/{m}.ko").as_str()],
            0o100644,
            "{m}"
        );
    }
    assert!(
        !modes.contains_key("lib/modules/vsock_loopback.ko"),
        "unneeded module packed"
    );
    let console = entries.iter().find(|e| e.name == "dev/console").unwrap();
    assert_eq!(console.rdev, (5, 1));
    // Parents precede children: the kernel creates entries in archive order.
    for (i, e) in entries.iter().enumerate() {
        if let Some((parent, _)) = e.name.rsplit_once('/') {
            let p = entries.iter().position(|x| x.name == parent);
            assert!(
                p.is_some_and(|p| p < i),
                "{} comes before its parent {parent}",
                e.name
            );
        }
    }
}

#[test]
fn initramfs_file_contents_round_trip() {
    let s = Scratch::new("contents");
    let (inputs, out) = build(&s.0);
    let files: BTreeMap<String, Vec<u8>> = read_newc(&fs::read(&out).unwrap())
        .into_iter()
        .filter(|e| e.mode & 0o170000 == 0o100000)
        .map(|e| (e.name, e.data))
        .collect();
    assert_eq!(files, inputs.expected);
}

#[test]
fn gnu_cpio_lists_the_initramfs_with_the_right_names_and_modes() {
    if !cpio_available() {
        eprintln!(
            "SKIPPED: cpio is not installed (apt-get install cpio, or scripts/setup-microvm.sh)"
        );
        return;
    }
    let s = Scratch::new("cpio-list");
    let (_, out) = build(&s.0);
    let listing = Command::new("cpio")
        .args(["-itv", "--quiet", "-F"])
        .arg(&out)
        .output()
        .expect("run cpio -itv");
    assert!(
        listing.status.success(),
        "cpio -itv: {}",
        String::from_utf8_lossy(&listing.stderr)
    );
    let listed: BTreeMap<String, String> = String::from_utf8(listing.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[f.len() - 1].to_string(), f[0].to_string())
        })
        .collect();
    let mut want: BTreeMap<String, String> = [
        ("dev", "drwxr-xr-x"),
        ("dev/console", "crw-------"),
        ("proc", "drwxr-xr-x"),
        ("sys", "drwxr-xr-x"),
        ("tmp", "drwxrwxrwt"),
        ("lib", "drwxr-xr-x"),
        ("lib/modules", "drwxr-xr-x"),
        ("init", "-rwxr-xr-x"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    for m in MODULES {
        want.insert(format!("lib/modules/{m}.ko"), "-rw-r--r--".into());
    }
    assert_eq!(listed, want);
}

#[test]
fn gnu_cpio_extracts_the_same_bytes_we_packed() {
    if !cpio_available() {
        eprintln!(
            "SKIPPED: cpio is not installed (apt-get install cpio, or scripts/setup-microvm.sh)"
        );
        return;
    }
    let s = Scratch::new("cpio-extract");
    let (inputs, out) = build(&s.0);
    let root = s.0.join("root");
    fs::create_dir_all(&root).unwrap();
    // Only regular files: creating dev/console would need CAP_MKNOD.
    let st = Command::new("cpio")
        .args(["-id", "--quiet", "--no-absolute-filenames", "-F"])
        .arg(&out)
        .args(["init", "lib/modules/*"])
        .current_dir(&root)
        .status()
        .expect("run cpio -id");
    assert!(st.success());
    for (name, data) in &inputs.expected {
        assert_eq!(&fs::read(root.join(name)).unwrap(), data, "{name}");
    }
}

#[test]
fn a_missing_module_is_an_error_naming_it_and_leaves_no_file() {
    let s = Scratch::new("missing");
    let inputs = make_inputs(&s.0);
    fs::remove_file(inputs.modules.join("vsock.ko")).unwrap();
    let out = s.0.join("initramfs.cpio");
    let err = build_initramfs(&inputs.guest, &inputs.modules, &out).unwrap_err();
    assert!(
        matches!(
            err,
            ImageError::MissingModule {
                module: "vsock",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("setup-microvm.sh"), "{err}");
    assert!(!out.exists());
    assert!(!s.0.join("initramfs.cpio.tmp").exists());
}

#[test]
fn a_dynamically_linked_guest_is_refused_with_the_static_build_hint() {
    let s = Scratch::new("dynamic");
    let inputs = make_inputs(&s.0);
    fs::write(
        &inputs.guest,
        fake_elf(PT_INTERP, b"/lib64/ld-linux-x86-64.so.2"),
    )
    .unwrap();
    let out = s.0.join("initramfs.cpio");
    let err = build_initramfs(&inputs.guest, &inputs.modules, &out).unwrap_err();
    assert!(matches!(err, ImageError::BadInput { .. }), "{err}");
    assert!(err.to_string().contains("crt-static"), "{err}");
    assert!(!out.exists());
}

#[test]
fn a_compressed_module_is_refused() {
    let s = Scratch::new("xz");
    let inputs = make_inputs(&s.0);
    fs::write(inputs.modules.join("virtio.ko"), b"\xfd7zXZ\x00 compressed").unwrap();
    let err = build_initramfs(&inputs.guest, &inputs.modules, &s.0.join("i.cpio")).unwrap_err();
    assert!(err.to_string().contains("compressed"), "{err}");
}

#[test]
fn the_writer_refuses_absolute_names_and_the_trailer_name() {
    let mut w = CpioWriter::new(Vec::new());
    assert!(w.file("/init", 0o755, b"").is_err());
    assert!(w.dir(NEWC_TRAILER, 0o755).is_err());
    assert!(w.dir("", 0o755).is_err());
    w.dir("ok", 0o755).unwrap();
    let bytes = w.finish().unwrap();
    let entries = read_newc(&bytes);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].name, "ok");
}

#[test]
fn info_on_an_empty_cache_reports_every_cached_piece_missing_with_its_command() {
    let s = Scratch::new("info-empty");
    let info = info_in(&s.0);
    assert!(!info.is_complete());
    assert_eq!(info.kernel_version, None);
    let missing: BTreeMap<&str, &str> = info.missing().map(|p| (p.name.as_str(), p.how)).collect();
    assert_eq!(missing["kernel (vmlinux)"], image::SETUP_COMMAND);
    assert_eq!(missing["initramfs"], image::BUILD_IMAGE_COMMAND);
    assert_eq!(
        missing["guest binary (static ukload-guest)"],
        image::BUILD_IMAGE_COMMAND
    );
    for m in MODULES {
        assert_eq!(
            missing[format!("module {m}").as_str()],
            image::SETUP_COMMAND,
            "{m}"
        );
    }
    let text = info.to_string();
    assert!(text.contains("MISSING"), "{text}");
    assert!(text.contains(image::SETUP_COMMAND), "{text}");
}

#[test]
fn info_sees_the_pieces_once_they_are_in_the_cache() {
    let s = Scratch::new("info-full");
    let paths = image::ImagePaths::in_dir(&s.0);
    fs::create_dir_all(&paths.modules_dir).unwrap();
    for m in MODULES {
        fs::write(paths.modules_dir.join(format!("{m}.ko")), b"\x7fELF").unwrap();
    }
    for p in [&paths.kernel, &paths.initramfs, &paths.guest_bin] {
        fs::write(p, b"x").unwrap();
    }
    fs::write(s.0.join(image::KERNEL_VERSION_FILE), "6.1.0-test\n").unwrap();
    let info = info_in(&s.0);
    assert_eq!(info.kernel_version.as_deref(), Some("6.1.0-test"));
    // Only host tools (qemu, vhost-device-vsock) may still be missing.
    let cached_missing: Vec<&str> = info
        .missing()
        .filter(|p| p.name != image::QEMU_BIN && p.name != image::VHOST_VSOCK_BIN)
        .map(|p| p.name.as_str())
        .collect();
    assert!(cached_missing.is_empty(), "{cached_missing:?}");
}

#[test]
fn cache_dir_honours_the_override_variable() {
    let s = Scratch::new("env");
    std::env::set_var(image::ENV_CACHE_DIR, &s.0);
    assert_eq!(image::cache_dir(), s.0);
    assert_eq!(image::ImagePaths::cached().kernel, s.0.join("vmlinux"));
    std::env::remove_var(image::ENV_CACHE_DIR);
    assert_ne!(image::cache_dir(), s.0);
}
