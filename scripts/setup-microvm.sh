#!/usr/bin/env bash
# One idempotent, unattended setup step for real microVMs on a fresh Debian 12
# machine (see docs/microvm.md and FIELD-NOTES sections 1-3).
#
# It installs / fetches, skipping whatever is already there:
#   1. qemu-system-x86 (and cpio, used by the image tests to check our archives)
#      with apt-get;
#   2. the guest kernel of the chosen flavor: by default (UKLOAD_KERNEL_FLAVOR=
#      minimal) one built from Debian's linux-source-6.1 (below); or a Debian
#      kernel package (=cloud follows `linux-image-cloud-amd64`; =generic follows
#      `linux-image-amd64`), with `apt-get download` (not installed), unpacked
#      with `dpkg -x`; from it the cache keeps `vmlinux` (uncompressed, PVH
#      entry: QEMU boots it directly with -kernel, no TCG decompression) and the
#      virtio / vsock modules, decompressed and flat, so the guest needs no
#      decompressor;
#      or, with UKLOAD_KERNEL_FLAVOR=minimal (the default), a kernel built from Debian's
#      linux-source-6.1 with scripts/guest-kernel.config by
#      scripts/build-minimal-kernel.sh (4-7 minutes once; no modules: the cache
#      then holds vmlinux, kernel-version, kernel-stamp, kernel-config and
#      modules/modules.builtin only);
#   3. vhost-device-vsock (rust-vmm) with `cargo install --locked`.
#
# Cache directory: $UKLOAD_CACHE_DIR, else ${XDG_CACHE_HOME:-$HOME/.cache}/ukload
# (the same rule as `ukload::image::cache_dir()`).
#
# Layout left in the cache:
#   vmlinux              uncompressed kernel, slimmed: zero pages are data-less
#                        segments (`ukload image slim-kernel`), so QEMU maps
#                        and copies only the non-zero ones
#   kernel-stamp         "<version> slim" (or "full" without cargo): the kernel is
#                        in place; a missing or different stamp redoes this step
#   kernel-version       e.g. 6.1.0-56-cloud-amd64 (the package the cache was built
#                        from; a different flavor or version rebuilds the kernel)
#   modules/*.ko         every module of drivers/virtio and net/vmw_vsock, uncompressed
#   modules/modules.builtin  the package's list of built-in drivers (a driver
#                        built in needs no .ko)
#   debs/*.deb           the downloaded kernel package (kept so a rebuild is offline;
#                        packages of other kernels are removed)
#
# Exit status: 0 when everything is in place, non-zero with a message naming the
# failed step otherwise.
set -euo pipefail

readonly QEMU_BIN=qemu-system-x86_64
readonly VHOST_BIN=vhost-device-vsock
# x86 boot protocol header fields of a bzImage (Documentation/x86/boot.rst):
# offsets of setup_sects, the "HdrS" magic, payload_offset and payload_length.
readonly BZ_SETUP_SECTS_OFFSET=$((0x1f1))
readonly BZ_HDRS_MAGIC_OFFSET=$((0x202))
readonly BZ_PAYLOAD_OFFSET_OFFSET=$((0x248))
readonly BZ_PAYLOAD_LENGTH_OFFSET=$((0x24c))
readonly BZ_SECTOR=512
# setup_sects 0 means 4 (boot protocol, for old kernels).
readonly BZ_DEFAULT_SETUP_SECTS=4
# The uncompressed size the kernel build appends after the compressed payload.
readonly SIZE_TRAILER_LEN=4
# Kernel flavor: minimal (the default: built for this guest, ~57 MB PSS per VM
# with 10 VMs against ~101 for cloud; docs/microvm.md), cloud
# (linux-image-cloud-amd64: smaller than generic, made for VMs; the fallback)
# or generic (linux-image-amd64).
# cloud-6.12 and generic-6.12 follow Debian 12's 6.12 kernel series
# (linux-image-6.12-cloud-amd64, linux-image-6.12-amd64).
# minimal is not a Debian package: scripts/build-minimal-kernel.sh builds it
# from Debian's linux-source-6.1 with scripts/guest-kernel.config (about 4
# minutes on 2 cores, once; everything built in, no modules).
readonly KERNEL_FLAVORS="cloud, generic, cloud-6.12, generic-6.12 or minimal"
KERNEL_FLAVOR="${UKLOAD_KERNEL_FLAVOR:-minimal}"
readonly KERNEL_FLAVOR
# Directories (relative to lib/modules/<version>/kernel) holding the modules the
# guest loads; the exact list and order live in src/guest/pid1.rs (MODULES).
readonly MODULE_DIRS=(drivers/virtio net/vmw_vsock)

# Source package of the minimal flavor (scripts/build-minimal-kernel.sh).
readonly MINIMAL_SOURCE_PACKAGE=linux-source-6.1
# Records "<kernel version> <slim|full>" once the kernel is fully in place.
readonly STAMP_FILE=kernel-stamp
# The kernel package's list of built-in drivers (copied into modules/).
readonly BUILTIN_LIST=modules.builtin
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO

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

# --- 1. QEMU (and cpio, erofs-utils) ----------------------------------------
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
    if command -v mkfs.erofs >/dev/null 2>&1; then
        say "erofs-utils: already installed"
    else
        say "erofs-utils: installing with apt-get (ukload image rootfs builds read-only root filesystems with mkfs.erofs)"
        apt_install erofs-utils
    fi
}

# --- 2. Kernel: vmlinux + modules -----------------------------------------
# The metapackage of the chosen flavor; the real kernel is its linux-image-*
# dependency.
kernel_metapackage() {
    case "$KERNEL_FLAVOR" in
    cloud) printf 'linux-image-cloud-amd64\n' ;;
    generic) printf 'linux-image-amd64\n' ;;
    cloud-6.12) printf 'linux-image-6.12-cloud-amd64\n' ;;
    generic-6.12) printf 'linux-image-6.12-amd64\n' ;;
    minimal) printf '%s\n' "$MINIMAL_SOURCE_PACKAGE" ;;
    *) die "UKLOAD_KERNEL_FLAVOR=$KERNEL_FLAVOR: expected $KERNEL_FLAVORS" ;;
    esac
}

kernel_package() {
    local meta pkg
    meta="$(kernel_metapackage)"
    pkg="$(apt-cache depends "$meta" 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')"
    if [ -z "$pkg" ] && [ "$apt_updated" -eq 0 ] && [ "$(id -u)" -eq 0 ]; then
        apt-get update >/dev/null || die "apt-get update failed"
        apt_updated=1
        pkg="$(apt-cache depends "$meta" 2>/dev/null |
            awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')"
    fi
    [ -n "$pkg" ] || die "cannot find the kernel package $meta depends on (apt-cache depends $meta)"
    printf '%s\n' "$pkg"
}

# le_uint FILE OFFSET BYTES: an unsigned little-endian integer read from FILE.
le_uint() {
    od -An -tu"$3" -j "$2" -N "$3" "$1" | tr -d ' \n'
}

# need_tool TOOL PACKAGE: installs PACKAGE with apt-get when TOOL is missing.
need_tool() {
    if ! command -v "$1" >/dev/null 2>&1; then
        say "$1: installing $2 with apt-get (needed to decompress the kernel)"
        apt_install "$2"
    fi
}

# extract_vmlinux VMLINUZ OUT: the compressed payload of a bzImage, decompressed.
# The payload's place comes from the boot protocol header (setup_sects,
# payload_offset, payload_length), so no magic-byte search can pick a false
# match; its format from its first bytes: Debian's generic flavor uses XZ, the
# cloud flavor LZ4 (legacy frame). The kernel build appends a 4-byte size
# after every payload format except gzip; it is cut off so each decompressor
# sees exactly one stream and its exit status can be trusted.
extract_vmlinux() {
    local vmlinuz="$1" out="$2" setup_sects offset length magic
    [ "$(head -c "$((BZ_HDRS_MAGIC_OFFSET + 4))" "$vmlinuz" | tail -c 4)" = "HdrS" ] ||
        die "$vmlinuz is not a bzImage (no HdrS boot header)"
    setup_sects="$(le_uint "$vmlinuz" "$BZ_SETUP_SECTS_OFFSET" 1)"
    [ "$setup_sects" -ne 0 ] || setup_sects=$BZ_DEFAULT_SETUP_SECTS
    offset=$(((setup_sects + 1) * BZ_SECTOR + $(le_uint "$vmlinuz" "$BZ_PAYLOAD_OFFSET_OFFSET" 4)))
    length="$(le_uint "$vmlinuz" "$BZ_PAYLOAD_LENGTH_OFFSET" 4)"
    magic="$(tail -c +"$((offset + 1))" "$vmlinuz" 2>/dev/null | head -c 6 | od -An -tx1 | tr -d ' \n' || true)"
    local -a decompress
    case "$magic" in
    fd377a585a00*) need_tool xz xz-utils && decompress=(xz --single-stream -dc) ;;
    02214c18*) need_tool lz4 lz4 && decompress=(lz4 -dc) ;;
    28b52ffd*) need_tool zstd zstd && decompress=(zstd -qdc) ;;
    1f8b*) decompress=(gzip -dc) ;;
    *) die "$vmlinuz: unknown payload format (first bytes $magic at offset $offset)" ;;
    esac
    case "$magic" in 1f8b*) ;; *) length=$((length - SIZE_TRAILER_LEN)) ;; esac
    # tail | head: head stops reading at the payload's end, so tail may die of
    # SIGPIPE; only the decompressor's status says whether the payload was whole.
    { tail -c +"$((offset + 1))" "$vmlinuz" 2>/dev/null || true; } | head -c "$length" |
        "${decompress[@]}" >"$out.tmp" ||
        die "${decompress[0]} could not decompress the payload of $vmlinuz ($length bytes at offset $offset)"
    if [ "$(head -c 4 "$out.tmp" | od -An -tx1 | tr -d ' \n')" != "7f454c46" ]; then
        rm -f "$out.tmp"
        die "decompressed payload of $vmlinuz is not an ELF file"
    fi
    mv "$out.tmp" "$out"
}

# slim_vmlinux FILE: rewrites FILE in place so QEMU maps and copies only its
# non-zero pages (ukload::image::slim_kernel; docs/microvm.md). Prints "slim"
# when done, "full" when cargo is missing (the full vmlinux boots as well).
slim_vmlinux() {
    if ! command -v cargo >/dev/null 2>&1; then
        printf 'setup-microvm: warning: cargo not found: keeping the full vmlinux (the slim one saves ~15 MB per VM)\n' >&2
        printf 'full\n'
        return
    fi
    (cd "$REPO" && cargo run --quiet --bin ukload -- image slim-kernel "$1" >&2) ||
        die "slimming $1 failed (ukload image slim-kernel)"
    printf 'slim\n'
}

# The minimal flavor: built from source by its own script, which keeps its own
# stamp and skips the build while the cached kernel is current.
step_minimal_kernel() {
    UKLOAD_CACHE_DIR="$CACHE_DIR" bash "$REPO/scripts/build-minimal-kernel.sh" ||
        die "building the minimal kernel failed (scripts/build-minimal-kernel.sh)"
}

step_kernel() {
    if [ "$KERNEL_FLAVOR" = minimal ]; then
        step_minimal_kernel
        return
    fi
    local pkg version want_layout=slim
    pkg="$(kernel_package)"
    version="${pkg#linux-image-}"
    command -v cargo >/dev/null 2>&1 || want_layout=full
    # Keep only the package in use: each is 27-70 MB.
    if [ -d "$CACHE_DIR/debs" ]; then
        find "$CACHE_DIR/debs" -maxdepth 1 -name 'linux-image-*.deb' ! -name "${pkg}_*.deb" -delete
    fi
    if [ -s "$CACHE_DIR/vmlinux" ] && [ -d "$CACHE_DIR/modules" ] &&
        [ "$(cat "$CACHE_DIR/kernel-version" 2>/dev/null || true)" = "$version" ] &&
        [ "$(cat "$CACHE_DIR/$STAMP_FILE" 2>/dev/null || true)" = "$version $want_layout" ]; then
        say "kernel: $version already cached in $CACHE_DIR (vmlinux, $want_layout; modules/)"
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
    rm -f "$CACHE_DIR/$STAMP_FILE"
    extract_vmlinux "$vmlinuz" "$CACHE_DIR/vmlinux"
    say "kernel: slimming vmlinux (zero pages out of the file and out of QEMU's copy)"
    local layout
    layout="$(slim_vmlinux "$CACHE_DIR/vmlinux")"

    local kdir="$root/lib/modules/$version" staged="$CACHE_DIR/modules.tmp"
    local moddir="$kdir/kernel"
    rm -rf "$staged"
    mkdir -p "$staged"
    local d f name count=0
    for d in "${MODULE_DIRS[@]}"; do
        # A flavor may build a whole directory in: then it has no modules here,
        # and modules.builtin (copied below) says so to the image builder.
        [ -d "$moddir/$d" ] || continue
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
    if [ -f "$kdir/$BUILTIN_LIST" ]; then
        cp "$kdir/$BUILTIN_LIST" "$staged/$BUILTIN_LIST"
    elif [ "$count" -eq 0 ]; then
        die "no modules under $moddir (${MODULE_DIRS[*]}) and no $BUILTIN_LIST in $deb"
    fi
    rm -rf "$CACHE_DIR/modules"
    mv "$staged" "$CACHE_DIR/modules"
    printf '%s\n' "$version" >"$CACHE_DIR/kernel-version"
    # Left by the minimal flavor; it would describe another kernel.
    rm -f "$CACHE_DIR/kernel-config"
    printf '%s %s\n' "$version" "$layout" >"$CACHE_DIR/$STAMP_FILE"
    rm -rf "$root"
    say "kernel: cached $version: vmlinux ($layout, $(($(stat -c %s "$CACHE_DIR/vmlinux") / 1048576)) MiB), $count modules in $CACHE_DIR/modules"
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
    say "cache directory: $CACHE_DIR, kernel flavor: $KERNEL_FLAVOR (UKLOAD_KERNEL_FLAVOR: $KERNEL_FLAVORS)"
    kernel_metapackage >/dev/null
    mkdir -p "$CACHE_DIR" || die "cannot create $CACHE_DIR"
    step_qemu
    step_kernel
    step_vhost
    say "done. Next: scripts/build-guest-image.sh builds the guest binary and the initramfs."
}

main "$@"
