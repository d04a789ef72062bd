//! What the host and the guest's PID 1 agree on: the initramfs layout (the
//! driver modules and where they live), the kernel command-line parameters
//! the launcher passes, and the root filesystem image's mount point and
//! manifest. The image builder, the QEMU launcher and PID 1 all read them
//! from here, so none of them depends on another.

/// Kernel modules the guest loads, in dependency order (FIELD-NOTES section 2):
/// the virtio core and transports (PCI for `-M pc`, MMIO for `-M microvm`),
/// then the vsock core and its virtio transport. The image builder
/// ([`crate::image`]) puts exactly these files into the initramfs.
pub const MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_mmio",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
];

/// Directory of the modules inside the guest (flat: `<name>.ko`).
pub const MODULES_DIR: &str = "/lib/modules";

/// File extension of an (uncompressed) kernel module.
pub const MODULE_EXT: &str = "ko";

/// File (in [`MODULES_DIR`], same name as in the kernel package) listing the
/// drivers of [`MODULES`] that this kernel has built in, one path a line
/// (`kernel/drivers/virtio/virtio.ko`). The image builder packs it, filtered
/// to [`MODULES`], when the kernel package's `modules.builtin` names any.
pub const MODULES_BUILTIN_FILE: &str = "modules.builtin";

/// Kernel command-line parameter that sets the agent's vsock port.
pub const CMDLINE_PORT_PARAM: &str = "ukload.port";

/// Kernel command-line parameter naming the block device holding the
/// server's root filesystem (an erofs image; the launcher passes `/dev/vda`).
pub const CMDLINE_ROOTFS_PARAM: &str = "ukload.rootfs";
/// Kernel command-line parameter with the server's argv: the hex digits of
/// its JSON array (no quoting problems, no spaces). Absent: the image's
/// manifest names the command.
pub const CMDLINE_SERVER_PARAM: &str = "ukload.server";
/// Kernel command-line parameter: how long, in ms, a started server may
/// stay silent after its first request before it counts as never answering.
pub const CMDLINE_SERVER_TIMEOUT_PARAM: &str = "ukload.server_timeout_ms";
/// Where PID 1 mounts the root filesystem image (read-only); the server runs
/// chrooted there.
pub const ROOTFS_DIR: &str = "/rootfs";
/// The image's manifest (inside the image): `{"command": [argv...], ...}`,
/// written by the image builder ([`crate::rootfs`]) and read by PID 1.
pub const ROOTFS_MANIFEST: &str = "/etc/ukload-rootfs.json";
/// File system type of the image.
pub const ROOTFS_FSTYPE: &str = "erofs";

/// `argv` as the value of [`CMDLINE_SERVER_PARAM`]: lower-case hex of its JSON array.
pub fn encode_server_command(argv: &[String]) -> String {
    hex(&serde_json::to_vec(argv).expect("a list of strings serializes"))
}

/// `bytes` as lower-case hex, two digits a byte (the encoding of
/// [`CMDLINE_SERVER_PARAM`]; the image builder names content hashes with it).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The inverse of [`encode_server_command`].
pub fn decode_server_command(hex: &str) -> Result<Vec<String>, String> {
    if !hex.len().is_multiple_of(2) || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("expected an even number of hex digits".into());
    }
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("checked hex digits"))
        .collect();
    let argv: Vec<String> =
        serde_json::from_slice(&bytes).map_err(|e| format!("not a JSON array of strings: {e}"))?;
    if argv.is_empty() || argv[0].is_empty() {
        return Err("the command is empty".into());
    }
    Ok(argv)
}

/// Path of a module inside the guest: `/lib/modules/<name>.ko`.
pub fn module_path(module: &str) -> String {
    format!("{MODULES_DIR}/{module}.{MODULE_EXT}")
}

/// Whether a `modules.builtin` text lists `module` (lines are paths such as
/// `kernel/net/vmw_vsock/vsock.ko`; `-` and `_` are the same in module names).
pub fn builtin_list_has(list: &str, module: &str) -> bool {
    let want = module.replace('-', "_");
    list.lines().any(|line| {
        let file = line.trim().rsplit('/').next().unwrap_or("");
        file.strip_suffix(&format!(".{MODULE_EXT}"))
            .is_some_and(|name| name.replace('-', "_") == want)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_two_lower_case_digits_a_byte_and_the_command_round_trips() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(hex(&[]), "");
        let argv = vec!["node".to_string(), "/srv/a b.js".to_string()];
        let enc = encode_server_command(&argv);
        assert_eq!(enc, hex(br#"["node","/srv/a b.js"]"#));
        assert_eq!(decode_server_command(&enc).unwrap(), argv);
        assert!(decode_server_command(&enc.to_uppercase()).is_ok());
        assert!(decode_server_command("abc").is_err());
    }
}
