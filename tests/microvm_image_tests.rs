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

use ukload::image::{
    self, build_initramfs, info_in, CpioWriter, ImageError, NEWC_HEADER_LEN, NEWC_TRAILER,
};
use ukload::vmabi::MODULES;

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
    // p_offset and p_filesz: the segment is the payload after this header.
    let at = 64 + u64::from(ELF64_PHDR_LEN);
    ph[8..16].copy_from_slice(&at.to_le_bytes());
    ph[32..40].copy_from_slice(&(payload.len() as u64).to_le_bytes());
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
    assert_eq!(modes["rootfs"], 0o040755);
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
        ("rootfs", "drwxr-xr-x"),
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
        fake_elf(PT_INTERP, b"/lib64/ld-linux-x86-64.so.2\0"),
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
    // A lookup, not the process's environment: other tests of this binary
    // read the real cache directory meanwhile.
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| std::ffi::OsString::from(v))
        }
    };
    let from = |pairs| image::cache_dir_from(env(pairs));
    assert_eq!(
        from(&[
            (image::ENV_CACHE_DIR, "/c"),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h")
        ]),
        Path::new("/c")
    );
    assert_eq!(
        from(&[
            (image::ENV_CACHE_DIR, ""),
            ("XDG_CACHE_HOME", "/x"),
            ("HOME", "/h")
        ]),
        Path::new("/x/ukload")
    );
    assert_eq!(from(&[("HOME", "/h")]), Path::new("/h/.cache/ukload"));
}

// --- built-in drivers ----------------------------------------------------------

#[test]
fn a_driver_built_into_the_kernel_needs_no_ko_and_is_listed_for_pid1() {
    let s = Scratch::new("builtin");
    let inputs = make_inputs(&s.0);
    // A kernel flavor with virtio built in: no virtio.ko, and the package's
    // modules.builtin says so (among drivers the guest does not use).
    fs::remove_file(inputs.modules.join("virtio.ko")).unwrap();
    fs::write(
        inputs.modules.join("modules.builtin"),
        "kernel/drivers/virtio/virtio_anchor.ko\nkernel/drivers/virtio/virtio.ko\nkernel/fs/ext4/ext4.ko\n",
    )
    .unwrap();
    let out = s.0.join("initramfs.cpio");
    build_initramfs(&inputs.guest, &inputs.modules, &out).expect("build with a built-in driver");
    let entries = read_newc(&fs::read(&out).unwrap());
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert!(!names.contains(&"lib/modules/virtio.ko"), "{names:?}");
    assert!(names.contains(&"lib/modules/vsock.ko"), "{names:?}");
    let list = entries
        .iter()
        .find(|e| e.name == "lib/modules/modules.builtin")
        .expect("the image lists the built-in drivers for PID 1");
    // Only the drivers the guest needs, in the package's own format.
    assert_eq!(list.data, b"kernel/drivers/virtio/virtio.ko\n");
    assert!(ukload::vmabi::builtin_list_has(
        std::str::from_utf8(&list.data).unwrap(),
        "virtio"
    ));

    // `info` counts it as present and says why.
    let cache = Scratch::new("builtin-info");
    let paths = image::ImagePaths::in_dir(&cache.0);
    fs::create_dir_all(&paths.modules_dir).unwrap();
    for m in MODULES.iter().filter(|m| **m != "virtio") {
        fs::write(paths.modules_dir.join(format!("{m}.ko")), b"\x7fELF").unwrap();
    }
    fs::write(
        paths.modules_dir.join("modules.builtin"),
        "kernel/drivers/virtio/virtio.ko\n",
    )
    .unwrap();
    let info = info_in(&cache.0);
    let virtio = info
        .pieces
        .iter()
        .find(|p| p.name.starts_with("module virtio ") || p.name == "module virtio")
        .expect("a piece for virtio");
    assert!(
        virtio.present && virtio.name.contains("built in"),
        "{virtio:?}"
    );
}

#[test]
fn an_image_without_built_in_drivers_has_no_builtin_list() {
    let s = Scratch::new("no-builtin");
    let inputs = make_inputs(&s.0);
    // The package's list names only drivers the guest does not need.
    fs::write(
        inputs.modules.join("modules.builtin"),
        "kernel/drivers/virtio/virtio_anchor.ko\n",
    )
    .unwrap();
    let out = s.0.join("initramfs.cpio");
    build_initramfs(&inputs.guest, &inputs.modules, &out).unwrap();
    let entries = read_newc(&fs::read(&out).unwrap());
    assert!(entries.iter().all(|e| !e.name.ends_with("modules.builtin")));
    // Every driver still comes from its .ko.
    for m in MODULES {
        let name = format!("lib/modules/{m}.ko");
        assert!(entries.iter().any(|e| e.name == name), "{name}");
    }
}

// --- slim kernel -----------------------------------------------------------------

const PT_NOTE: u32 = 4;

/// One program header for `kernel_elf`.
struct Seg {
    p_type: u32,
    paddr: u64,
    data: Vec<u8>,
    memsz: u64,
}

/// An ELF64 "kernel": header, program headers, then each segment's data at a
/// page-aligned offset, then a fake section header table (which the slim form
/// drops).
fn kernel_elf(segs: &[Seg]) -> Vec<u8> {
    const PAGE: usize = 4096;
    let phnum = segs.len();
    let mut offsets = Vec::new();
    let mut at = (64 + 56 * phnum).div_ceil(PAGE) * PAGE;
    for s in segs {
        offsets.push(at);
        at = (at + s.data.len()).div_ceil(PAGE) * PAGE;
    }
    let shoff = at;
    let mut e = vec![0u8; 64];
    e[..4].copy_from_slice(b"\x7fELF");
    e[4] = 2; // ELFCLASS64
    e[5] = 1; // little endian
    e[0x18..0x20].copy_from_slice(&0x100_0000u64.to_le_bytes()); // e_entry
    e[0x20..0x28].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    e[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes()); // e_shoff
    e[0x36..0x38].copy_from_slice(&ELF64_PHDR_LEN.to_le_bytes());
    e[0x38..0x3a].copy_from_slice(&(phnum as u16).to_le_bytes());
    e[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
    e[0x3c..0x3e].copy_from_slice(&1u16.to_le_bytes()); // e_shnum
    for (s, off) in segs.iter().zip(&offsets) {
        let mut ph = Vec::new();
        ph.extend_from_slice(&s.p_type.to_le_bytes());
        ph.extend_from_slice(&7u32.to_le_bytes()); // RWX
        for v in [
            *off as u64,
            0xffff_ffff_0000_0000 + s.paddr,
            s.paddr,
            s.data.len() as u64,
            s.memsz,
            0x20_0000,
        ] {
            ph.extend_from_slice(&v.to_le_bytes());
        }
        e.extend_from_slice(&ph);
    }
    for (s, off) in segs.iter().zip(&offsets) {
        e.resize(*off, 0);
        e.extend_from_slice(&s.data);
    }
    e.resize(shoff + 64, 0xee); // the "section header table"
    e
}

/// A parsed program header: (type, offset, paddr, filesz, memsz).
fn phdrs_of(elf: &[u8]) -> Vec<(u32, u64, u64, u64, u64)> {
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap());
    let phoff = u64_at(0x20) as usize;
    let phnum = u16::from_le_bytes([elf[0x38], elf[0x39]]) as usize;
    (0..phnum)
        .map(|i| {
            let at = phoff + i * 56;
            (
                u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()),
                u64_at(at + 8),
                u64_at(at + 24),
                u64_at(at + 32),
                u64_at(at + 40),
            )
        })
        .collect()
}

/// What a loader such as QEMU's puts in guest RAM: for each PT_LOAD, the
/// file bytes, then zeros up to memsz, over the span the segments cover
/// (start address, bytes). Segments must not overlap.
fn memory_image(elf: &[u8]) -> (u64, Vec<u8>) {
    let loads: Vec<_> = phdrs_of(elf)
        .into_iter()
        .filter(|p| p.0 == PT_LOAD)
        .collect();
    let lo = loads.iter().map(|p| p.2).min().expect("a PT_LOAD");
    let hi = loads.iter().map(|p| p.2 + p.4).max().unwrap();
    let mut mem = vec![0u8; (hi - lo) as usize];
    let mut covered = vec![false; mem.len()];
    for (_, off, paddr, filesz, memsz) in loads {
        assert!(filesz <= memsz);
        let at = (paddr - lo) as usize;
        assert!(
            covered[at..at + memsz as usize].iter().all(|c| !c),
            "segments overlap at {paddr:#x}"
        );
        covered[at..at + memsz as usize].fill(true);
        mem[at..at + filesz as usize].copy_from_slice(&elf[off as usize..(off + filesz) as usize]);
    }
    (lo, mem)
}

/// Bytes of one PT_NOTE's data.
fn notes_of(elf: &[u8]) -> Vec<Vec<u8>> {
    phdrs_of(elf)
        .into_iter()
        .filter(|p| p.0 == PT_NOTE)
        .map(|(_, off, _, filesz, _)| elf[off as usize..(off + filesz) as usize].to_vec())
        .collect()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) | 1)
        .collect()
}

/// text: 8 KiB data, 128 KiB zeros, 4 KiB data, 8 KiB zeros (short: kept),
/// 4 KiB data; data: 4 KiB data then a 100 KiB tail (memsz > filesz) that is
/// zero in the file too; and a note.
fn sample_kernel() -> Vec<u8> {
    let mut text = pattern(8 * 1024, 1);
    text.extend(vec![0u8; 128 * 1024]);
    text.extend(pattern(4 * 1024, 2));
    text.extend(vec![0u8; 8 * 1024]);
    text.extend(pattern(4 * 1024, 3));
    let text_len = text.len() as u64;
    let mut data = pattern(4 * 1024, 4);
    data.extend(vec![0u8; 64 * 1024]);
    kernel_elf(&[
        Seg {
            p_type: PT_LOAD,
            paddr: 0x100_0000,
            data: text,
            memsz: text_len,
        },
        Seg {
            p_type: PT_LOAD,
            paddr: 0x200_0000,
            data,
            memsz: (4 + 64 + 100) * 1024,
        },
        Seg {
            p_type: PT_NOTE,
            paddr: 0x100_1000,
            data: b"\x04\0\0\0\x08\0\0\0\x12\0\0\0Xen\0PVH-entry".to_vec(),
            memsz: 28,
        },
    ])
}

#[test]
fn the_slim_kernel_loads_the_same_memory_from_fewer_file_bytes() {
    let elf = sample_kernel();
    let (slim, stats) = image::slim_kernel_elf(&elf).expect("slim");
    assert_eq!(
        memory_image(&slim),
        memory_image(&elf),
        "memory image changed"
    );
    assert_eq!(notes_of(&slim), notes_of(&elf), "notes changed");
    // Same loaded span, segment by segment.
    let span = |e: &[u8]| {
        let loads: Vec<_> = phdrs_of(e).into_iter().filter(|p| p.0 == PT_LOAD).collect();
        let lo = loads.iter().map(|p| p.2).min().unwrap();
        let hi = loads.iter().map(|p| p.2 + p.4).max().unwrap();
        (lo, hi, loads.iter().map(|p| p.4).sum::<u64>())
    };
    assert_eq!(span(&slim), span(&elf));

    let loads: Vec<_> = phdrs_of(&slim)
        .into_iter()
        .filter(|p| p.0 == PT_LOAD)
        .collect();
    // text: data 8K | zero 128K | data 4K+8K+4K (the 8K zero run is too short
    // to split); data: data 4K | zero 64K+100K.
    let shape: Vec<(u64, u64, u64)> = loads.iter().map(|p| (p.2, p.3, p.4)).collect();
    assert_eq!(
        shape,
        vec![
            (0x100_0000, 8 * 1024, 8 * 1024),
            (0x100_2000, 0, 128 * 1024),
            (0x102_2000, 16 * 1024, 16 * 1024),
            (0x200_0000, 4 * 1024, 4 * 1024),
            (0x200_1000, 0, 164 * 1024),
        ]
    );
    for (_, off, paddr, filesz, _) in &loads {
        if *filesz > 0 {
            assert_eq!(
                off % 4096,
                paddr % 4096,
                "offset not congruent to the address"
            );
        }
    }
    assert_eq!(stats.load_segments_in, 2);
    assert_eq!(stats.load_segments_out, 5);
    assert_eq!(stats.load_bytes_in, (152 + 68) * 1024);
    assert_eq!(stats.load_bytes_out, (8 + 16 + 4) * 1024);
    assert!(
        slim.len() < elf.len() / 3,
        "{} vs {}",
        slim.len(),
        elf.len()
    );
    assert_eq!(stats.file_size_out, slim.len() as u64);
    // Section headers are gone (nothing needs them, and they pointed into the old layout).
    assert_eq!(&slim[0x28..0x30], &[0u8; 8]);
    assert_eq!(&slim[0x3c..0x3e], &[0u8; 2]);
    // The entry point is untouched.
    assert_eq!(&slim[0x18..0x20], &elf[0x18..0x20]);
}

#[test]
fn slimming_a_slim_kernel_changes_nothing() {
    let (once, _) = image::slim_kernel_elf(&sample_kernel()).unwrap();
    let (twice, stats) = image::slim_kernel_elf(&once).unwrap();
    assert_eq!(twice, once);
    assert_eq!(stats.load_segments_in, stats.load_segments_out);
}

#[test]
fn slimming_refuses_what_is_not_a_sound_elf64_kernel() {
    let not_elf = image::slim_kernel_elf(b"\xfd7zXZ\0 compressed vmlinuz payload").unwrap_err();
    assert!(not_elf.contains("ELF64"), "{not_elf}");
    let mut outside = sample_kernel();
    outside[0x20..0x28].copy_from_slice(&(1u64 << 40).to_le_bytes()); // e_phoff far away
    let err = image::slim_kernel_elf(&outside).unwrap_err();
    assert!(err.contains("outside the file"), "{err}");
    let mut truncated = sample_kernel();
    truncated.truncate(8 * 1024);
    let err = image::slim_kernel_elf(&truncated).unwrap_err();
    assert!(err.contains("outside the file"), "{err}");
}

#[test]
fn slim_kernel_rewrites_a_file_in_place_atomically() {
    let s = Scratch::new("slim-file");
    let path = s.0.join("vmlinux");
    fs::write(&path, sample_kernel()).unwrap();
    let stats = image::slim_kernel(&path, &path).expect("slim in place");
    let slim = fs::read(&path).unwrap();
    assert_eq!(stats.file_size_out, slim.len() as u64);
    assert_eq!(memory_image(&slim), memory_image(&sample_kernel()));
    assert!(!s.0.join("vmlinux.tmp").exists());
    // A bad input leaves the output alone and names the input.
    let bad = s.0.join("not-a-kernel");
    fs::write(&bad, b"hello").unwrap();
    let err = image::slim_kernel(&bad, &path).unwrap_err();
    assert!(err.to_string().contains("not-a-kernel"), "{err}");
    assert_eq!(fs::read(&path).unwrap(), slim);
}

/// The real kernel in the image cache, when there is one: its slim form loads
/// exactly the same memory, and keeps its PVH note.
#[test]
fn the_cached_kernel_slims_to_the_same_memory_image() {
    let path = image::ImagePaths::cached().kernel;
    let Ok(elf) = fs::read(&path) else {
        eprintln!(
            "SKIPPED: no kernel at {} (scripts/setup-microvm.sh)",
            path.display()
        );
        return;
    };
    let (slim, stats) = image::slim_kernel_elf(&elf).expect("slim the cached kernel");
    assert_eq!(memory_image(&slim), memory_image(&elf));
    assert_eq!(notes_of(&slim), notes_of(&elf));
    assert!(stats.load_bytes_out <= stats.load_bytes_in);
    assert!(phdrs_of(&slim)
        .iter()
        .filter(|p| p.0 == PT_LOAD && p.3 == 0)
        .all(|p| p.4 >= image::SLIM_MIN_ZERO_RUN));
}

// --- minimal kernel (scripts/build-minimal-kernel.sh) ----------------------------

/// The configuration fragment of the minimal guest kernel.
fn fragment_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/guest-kernel.config")
}

/// The fragment as symbol -> value ("n" for `# CONFIG_X is not set`). Panics
/// on a line that is neither a comment, blank, nor a Kconfig assignment, and on
/// a symbol set twice (the later line would silently win).
fn parse_fragment(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let (sym, val) = if let Some(rest) = line.strip_prefix("# CONFIG_") {
            match rest.strip_suffix(" is not set") {
                Some(sym) => (format!("CONFIG_{sym}"), "n".to_string()),
                None => continue,
            }
        } else if line.starts_with('#') || line.trim().is_empty() {
            continue;
        } else {
            let (sym, val) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("line {}: not an assignment: {line:?}", n + 1));
            assert!(sym.starts_with("CONFIG_"), "line {}: {line:?}", n + 1);
            (sym.to_string(), val.to_string())
        };
        assert!(
            out.insert(sym.clone(), val).is_none(),
            "line {}: {sym} is set twice",
            n + 1
        );
    }
    out
}

/// The fragment symbol that brings each driver of pid1's MODULES into the
/// kernel (the other symbols they need are selected by these).
const DRIVER_SYMBOLS: &[(&str, &str)] = &[
    ("virtio_ring", "CONFIG_VIRTIO_MMIO"),
    ("virtio", "CONFIG_VIRTIO_MMIO"),
    ("virtio_pci_modern_dev", "CONFIG_VIRTIO_PCI"),
    ("virtio_pci_legacy_dev", "CONFIG_VIRTIO_PCI_LEGACY"),
    ("virtio_pci", "CONFIG_VIRTIO_PCI"),
    ("virtio_mmio", "CONFIG_VIRTIO_MMIO"),
    ("vsock", "CONFIG_VSOCKETS"),
    (
        "vmw_vsock_virtio_transport_common",
        "CONFIG_VIRTIO_VSOCKETS",
    ),
    ("vmw_vsock_virtio_transport", "CONFIG_VIRTIO_VSOCKETS"),
];

#[test]
fn the_minimal_kernel_fragment_builds_every_guest_driver_in_and_has_no_modules() {
    let text = fs::read_to_string(fragment_path()).expect("scripts/guest-kernel.config");
    let frag = parse_fragment(&text);
    assert_eq!(
        frag.get("CONFIG_MODULES").map(String::as_str),
        Some("n"),
        "no module loader: every driver is built in"
    );
    assert!(
        frag.values().all(|v| v != "m"),
        "nothing may be a module: {frag:?}"
    );
    let listed: Vec<&str> = DRIVER_SYMBOLS.iter().map(|(m, _)| *m).collect();
    assert_eq!(listed, MODULES, "DRIVER_SYMBOLS follows pid1::MODULES");
    for (module, sym) in DRIVER_SYMBOLS {
        assert_eq!(
            frag.get(*sym).map(String::as_str),
            Some("y"),
            "{module} needs {sym}=y"
        );
    }
    // What the boot itself needs: QEMU's PVH entry, ACPI for microvm's device
    // description, the serial console (with its ACPI/PNP driver), the initramfs.
    for sym in [
        "CONFIG_64BIT",
        "CONFIG_PVH",
        "CONFIG_ACPI",
        "CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES",
        "CONFIG_SERIAL_8250_CONSOLE",
        "CONFIG_SERIAL_8250_PNP",
        "CONFIG_BLK_DEV_INITRD",
        "CONFIG_BINFMT_ELF",
        "CONFIG_DEVTMPFS",
        "CONFIG_PROC_FS",
        "CONFIG_SYSFS",
        "CONFIG_FUTEX",
        "CONFIG_UNIX",
    ] {
        assert_eq!(frag.get(sym).map(String::as_str), Some("y"), "{sym}");
    }
}

#[test]
fn a_fragment_that_sets_a_symbol_twice_is_refused() {
    let r = std::panic::catch_unwind(|| parse_fragment("CONFIG_A=y\n# CONFIG_A is not set\n"));
    assert!(r.is_err());
    let ok = parse_fragment("# comment\n\nCONFIG_A=y\n# CONFIG_B is not set\n");
    assert_eq!(ok.get("CONFIG_A").map(String::as_str), Some("y"));
    assert_eq!(ok.get("CONFIG_B").map(String::as_str), Some("n"));
}

/// The image cache, when it holds the minimal kernel (kernel-stamp says so).
fn cached_minimal_kernel() -> Option<image::ImagePaths> {
    let paths = image::ImagePaths::cached();
    let dir = paths.kernel.parent()?.to_path_buf();
    let stamp = fs::read_to_string(dir.join("kernel-stamp")).ok()?;
    if stamp.split_whitespace().nth(1) == Some("minimal") {
        Some(paths)
    } else {
        eprintln!("SKIPPED: the image cache holds no minimal kernel (stamp {stamp:?})");
        None
    }
}

#[test]
fn a_cached_minimal_kernel_has_every_guest_driver_built_in_and_an_image_without_modules() {
    let Some(paths) = cached_minimal_kernel() else {
        return;
    };
    let list = fs::read_to_string(paths.modules_dir.join("modules.builtin")).unwrap();
    for m in MODULES {
        assert!(
            ukload::vmabi::builtin_list_has(&list, m),
            "{m} not built in: {list}"
        );
    }
    let kos: Vec<_> = fs::read_dir(&paths.modules_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".ko"))
        .map(|e| e.file_name())
        .collect();
    assert!(
        kos.is_empty(),
        "a kernel without modules has no .ko: {kos:?}"
    );
    let dir = paths.kernel.parent().unwrap();
    let config = fs::read_to_string(dir.join("kernel-config")).unwrap();
    assert!(config.lines().any(|l| l == "# CONFIG_MODULES is not set"));
    // Every line of the fragment made it into the kernel's .config.
    for (sym, val) in parse_fragment(&fs::read_to_string(fragment_path()).unwrap()) {
        let want = if val == "n" {
            format!("# {sym} is not set")
        } else {
            format!("{sym}={val}")
        };
        assert!(
            config.lines().any(|l| l == want),
            "{want} not in kernel-config"
        );
    }

    // The image built from this cache: no module files, all nine drivers
    // listed for PID 1 as built in.
    let s = Scratch::new("minimal-image");
    let out = s.0.join("initramfs.cpio");
    let guest = s.0.join("guest");
    fs::write(&guest, fake_elf(PT_LOAD, b"static guest")).unwrap();
    build_initramfs(&guest, &paths.modules_dir, &out).expect("image from the minimal kernel");
    let entries = read_newc(&fs::read(&out).unwrap());
    assert!(entries.iter().all(|e| !e.name.ends_with(".ko")));
    let listed = entries
        .iter()
        .find(|e| e.name == "lib/modules/modules.builtin")
        .expect("the builtin list for PID 1");
    let listed = std::str::from_utf8(&listed.data).unwrap();
    assert_eq!(listed.lines().count(), MODULES.len(), "{listed}");
}

/// `build-minimal-kernel.sh --check` against a copy of the cache: current as it
/// is (and then it touches nothing), stale once the stamp differs.
#[test]
fn the_minimal_kernel_build_is_skipped_while_the_cache_is_current() {
    let Some(paths) = cached_minimal_kernel() else {
        return;
    };
    let src = paths.kernel.parent().unwrap();
    let s = Scratch::new("minimal-check");
    fs::create_dir_all(s.0.join("modules")).unwrap();
    for f in ["vmlinux", "kernel-version", "kernel-stamp", "kernel-config"] {
        fs::copy(src.join(f), s.0.join(f)).unwrap();
    }
    fs::copy(
        paths.modules_dir.join("modules.builtin"),
        s.0.join("modules/modules.builtin"),
    )
    .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-minimal-kernel.sh");
    let check = |args: &[&str]| {
        Command::new("bash")
            .arg(&script)
            .args(args)
            .env("UKLOAD_CACHE_DIR", &s.0)
            .output()
            .expect("run build-minimal-kernel.sh")
    };
    let before = fs::metadata(s.0.join("vmlinux"))
        .unwrap()
        .modified()
        .unwrap();
    // Without --check too: a current cache is a no-op (no build, no apt).
    for args in [&["--check"][..], &[][..]] {
        let out = check(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {err}");
        assert!(err.contains("already cached"), "{err}");
    }
    let after = fs::metadata(s.0.join("vmlinux"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after, "a current cache is left alone");

    let stamp = fs::read_to_string(s.0.join("kernel-stamp")).unwrap();
    fs::write(
        s.0.join("kernel-stamp"),
        stamp.replace(" minimal ", " other "),
    )
    .unwrap();
    let out = check(&["--check"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "a different stamp needs a build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
