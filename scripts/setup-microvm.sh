#!/usr/bin/env bash
# One idempotent, unattended setup step for real microVMs on a fresh Debian 12
# machine (see docs/microvm.md and FIELD-NOTES sections 1-3).
#
# It installs / fetches, skipping whatever is already there:
#   1. qemu-system-x86 (and cpio, used by the image tests to check our archives)
#      with apt-get;
#   2. the kernel package that `linux-image-amd64` depends on, with
#      `apt-get download` (not installed), unpacked with `dpkg -x`; from it the
#      cache keeps `vmlinux` (uncompressed, PVH entry: QEMU boots it directly with
#      -kernel, no 3.9 s TCG decompression) and the virtio / vsock modules,
#      decompressed and flat, so the guest needs no decompressor;
#   3. vhost-device-vsock (rust-vmm) with `cargo install --locked`.
#
# Cache directory: $UKLOAD_CACHE_DIR, else ${XDG_CACHE_HOME:-$HOME/.cache}/ukload
# (the same rule as `ukload::image::cache_dir()`).
#
# Layout left in the cache:
#   vmlinux              uncompressed kernel
#   kernel-version       e.g. 6.1.0-56-amd64 (the package the cache was built from)
#   modules/*.ko         every module of drivers/virtio and net/vmw_vsock, uncompressed
#   debs/*.deb           the downloaded kernel package (kept so a rebuild is offline)
#
# Exit status: 0 when everything is in place, non-zero with a message naming the
# failed step otherwise.
set -euo pipefail

readonly QEMU_BIN=qemu-system-x86_64
readonly VHOST_BIN=vhost-device-vsock
# The XZ stream magic that starts the compressed payload inside Debian's vmlinuz.
readonly XZ_MAGIC='\xfd7zXZ\x00'
# Directories (relative to lib/modules/<version>/kernel) holding the modules the
# guest loads; the exact list and order live in src/guest/pid1.rs (MODULES).
readonly MODULE_DIRS=(drivers/virtio net/vmw_vsock)

CACHE_DIR="${UKLOAD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ukload}"
readonly CACHE_DIR

say() { printf 'setup-microvm: %s\n' "$*"; }
die() {
    printf 'setup-microvm: error: %s\n' "$*" >&2
    exit 1
}

need_root_for_apt() {
    if [ "$(id -u)" -ne 0 ]; then
        die "installing $1 with apt-get needs root: run this script as root (or install $1 yourself)"
    fi
}

apt_updated=0
apt_install() {
    need_root_for_apt "$*"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "$@"; then
        # A fresh machine may have empty package lists: update once, retry once.
        if [ "$apt_updated" -eq 0 ]; then
            apt-get update || die "apt-get update failed"
            apt_updated=1
            apt-get install -y --no-install-recommends "$@" || die "apt-get install $* failed"
        else
            die "apt-get install $* failed"
        fi
    fi
}

# --- 1. QEMU (and cpio) ------------------------------------------------------
step_qemu() {
    if command -v "$QEMU_BIN" >/dev/null 2>&1; then
        say "qemu: already installed ($("$QEMU_BIN" --version | head -n1))"
    else
        say "qemu: installing qemu-system-x86 with apt-get"
        apt_install qemu-system-x86
        command -v "$QEMU_BIN" >/dev/null 2>&1 || die "qemu-system-x86 installed but $QEMU_BIN is not on PATH"
    fi
    if command -v cpio >/dev/null 2>&1; then
        say "cpio: already installed"
    else
        say "cpio: installing with apt-get (the image tests list archives with it)"
        apt_install cpio
    fi
}

# --- 2. Kernel: vmlinux + modules -----------------------------------------
kernel_package() {
    # linux-image-amd64 is a metapackage; the real kernel is its linux-image-* dependency.
    local pkg
    pkg="$(apt-cache depends linux-image-amd64 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')"
    if [ -z "$pkg" ] && [ "$apt_updated" -eq 0 ] && [ "$(id -u)" -eq 0 ]; then
        apt-get update >/dev/null || die "apt-get update failed"
        apt_updated=1
        pkg="$(apt-cache depends linux-image-amd64 2>/dev/null |
            awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')"
    fi
    [ -n "$pkg" ] || die "cannot find the kernel package linux-image-amd64 depends on (apt-cache depends linux-image-amd64)"
    printf '%s\n' "$pkg"
}

# extract_vmlinux VMLINUZ OUT: the XZ payload of a bzImage, decompressed.
extract_vmlinux() {
    local vmlinuz="$1" out="$2" offset
    offset="$(LC_ALL=C grep -obUaP "$XZ_MAGIC" "$vmlinuz" | head -n1 | cut -d: -f1 || true)"
    [ -n "$offset" ] || die "no XZ payload (magic FD 37 7A 58 5A 00) in $vmlinuz"
    # --single-stream: ignore the size trailer the kernel build appends after the
    # stream. xz stops reading at the end of the stream, so tail may die of SIGPIPE:
    # only xz's status says whether the payload decompressed.
    { tail -c +"$((offset + 1))" "$vmlinuz" || true; } | xz --single-stream -dc >"$out.tmp" ||
        die "xz could not decompress the payload of $vmlinuz at offset $offset"
    if [ "$(head -c 4 "$out.tmp" | od -An -tx1 | tr -d ' \n')" != "7f454c46" ]; then
        rm -f "$out.tmp"
        die "decompressed payload of $vmlinuz is not an ELF file"
    fi
    mv "$out.tmp" "$out"
}

step_kernel() {
    local pkg version
    pkg="$(kernel_package)"
    version="${pkg#linux-image-}"
    if [ -s "$CACHE_DIR/vmlinux" ] && [ -d "$CACHE_DIR/modules" ] &&
        [ "$(cat "$CACHE_DIR/kernel-version" 2>/dev/null || true)" = "$version" ]; then
        say "kernel: $version already cached in $CACHE_DIR (vmlinux, modules/)"
        return
    fi
    mkdir -p "$CACHE_DIR/debs"
    local deb
    deb="$(find "$CACHE_DIR/debs" -maxdepth 1 -name "${pkg}_*.deb" | head -n1)"
    if [ -z "$deb" ]; then
        say "kernel: downloading $pkg with apt-get download"
        (cd "$CACHE_DIR/debs" && apt-get download "$pkg") || die "apt-get download $pkg failed"
        deb="$(find "$CACHE_DIR/debs" -maxdepth 1 -name "${pkg}_*.deb" | head -n1)"
        [ -n "$deb" ] || die "apt-get download $pkg left no .deb in $CACHE_DIR/debs"
    else
        say "kernel: using already downloaded $(basename "$deb")"
    fi

    local root="$CACHE_DIR/.unpack"
    rm -rf "$root"
    mkdir -p "$root"
    say "kernel: unpacking $(basename "$deb") (dpkg -x)"
    dpkg -x "$deb" "$root" || die "dpkg -x $deb failed"

    local vmlinuz="$root/boot/vmlinuz-$version"
    [ -f "$vmlinuz" ] || die "$deb has no boot/vmlinuz-$version"
    say "kernel: extracting uncompressed vmlinux from vmlinuz-$version"
    extract_vmlinux "$vmlinuz" "$CACHE_DIR/vmlinux"

    local moddir="$root/lib/modules/$version/kernel" staged="$CACHE_DIR/modules.tmp"
    rm -rf "$staged"
    mkdir -p "$staged"
    local d f name count=0
    for d in "${MODULE_DIRS[@]}"; do
        [ -d "$moddir/$d" ] || die "$deb has no lib/modules/$version/kernel/$d"
        while IFS= read -r -d '' f; do
            name="$(basename "$f")"
            case "$name" in
            *.ko) cp "$f" "$staged/$name" ;;
            *.ko.xz) xz -dc "$f" >"$staged/${name%.xz}" || die "xz -d $f failed" ;;
            *.ko.zst) zstd -qdc "$f" >"$staged/${name%.zst}" || die "zstd -d $f failed (install zstd)" ;;
            *.ko.gz) gzip -dc "$f" >"$staged/${name%.gz}" || die "gzip -d $f failed" ;;
            *) continue ;;
            esac
            count=$((count + 1))
        done < <(find "$moddir/$d" -type f -name '*.ko*' -print0)
    done
    [ "$count" -gt 0 ] || die "no modules found under $moddir (${MODULE_DIRS[*]})"
    rm -rf "$CACHE_DIR/modules"
    mv "$staged" "$CACHE_DIR/modules"
    printf '%s\n' "$version" >"$CACHE_DIR/kernel-version"
    rm -rf "$root"
    say "kernel: cached $version: vmlinux ($(($(stat -c %s "$CACHE_DIR/vmlinux") / 1048576)) MiB), $count modules in $CACHE_DIR/modules"
}

# --- 3. vhost-device-vsock -------------------------------------------------
step_vhost() {
    if command -v "$VHOST_BIN" >/dev/null 2>&1; then
        say "$VHOST_BIN: already installed ($(command -v "$VHOST_BIN"))"
        return
    fi
    if [ -x "$HOME/.cargo/bin/$VHOST_BIN" ]; then
        say "$VHOST_BIN: already installed in ~/.cargo/bin (add it to PATH)"
        return
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo is needed to build $VHOST_BIN (install Rust: https://rustup.rs)"
    say "$VHOST_BIN: building with cargo install --locked (about a minute)"
    cargo install "$VHOST_BIN" --locked || die "cargo install $VHOST_BIN --locked failed"
}

main() {
    say "cache directory: $CACHE_DIR"
    mkdir -p "$CACHE_DIR" || die "cannot create $CACHE_DIR"
    step_qemu
    step_kernel
    step_vhost
    say "done. Next: scripts/build-guest-image.sh builds the guest binary and the initramfs."
}

main "$@"
