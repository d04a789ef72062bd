#!/usr/bin/env bash
# Builds the microVM guest image into the cache (see docs/microvm.md):
#   1. the static guest agent: `cargo build --release --bin ukload-guest` for the
#      gnu target with crt-static, in its own target dir (target/static) so the
#      static RUSTFLAGS never mix with the normal build's artifacts;
#   2. the initramfs (newc cpio, uncompressed) with that binary, stripped, as /init and the
#      kernel modules fetched by scripts/setup-microvm.sh. The archive is written
#      by ukload::image::build_initramfs (the one cpio writer), run through
#      `ukload image build`.
#
# Usage:
#   scripts/build-guest-image.sh                 build the guest, then the initramfs
#   scripts/build-guest-image.sh --guest PATH    use an already built static binary as /init
#   scripts/build-guest-image.sh --binary-only   build the static guest only; print its path
#
# Cache directory: $UKLOAD_CACHE_DIR, else ${XDG_CACHE_HOME:-$HOME/.cache}/ukload.
set -euo pipefail

readonly TARGET=x86_64-unknown-linux-gnu
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO
readonly STATIC_TARGET_DIR="$REPO/target/static"
CACHE_DIR="${UKLOAD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ukload}"
readonly CACHE_DIR

say() { printf 'build-guest-image: %s\n' "$*" >&2; }
die() {
    printf 'build-guest-image: error: %s\n' "$*" >&2
    exit 1
}

# build_static_guest: builds ukload-guest statically; prints the binary's path.
build_static_guest() {
    command -v cargo >/dev/null 2>&1 || die "cargo not found (install Rust: https://rustup.rs)"
    say "building static ukload-guest (release, $TARGET, crt-static) in $STATIC_TARGET_DIR"
    # --target is required: with it, RUSTFLAGS apply to the guest only, not to
    # build scripts and proc macros (serde_derive), which cannot be static.
    (cd "$REPO" && RUSTFLAGS='-C target-feature=+crt-static' \
        cargo build --release --bin ukload-guest --target "$TARGET" --target-dir "$STATIC_TARGET_DIR" >&2) ||
        die "cargo build of the static ukload-guest failed"
    local bin="$STATIC_TARGET_DIR/$TARGET/release/ukload-guest"
    [ -x "$bin" ] || die "cargo reported success but $bin is missing"
    printf '%s\n' "$bin"
}

main() {
    local guest="" binary_only=0
    while [ $# -gt 0 ]; do
        case "$1" in
        --guest)
            [ $# -ge 2 ] || die "--guest needs a path"
            guest="$2"
            shift 2
            ;;
        --binary-only)
            binary_only=1
            shift
            ;;
        -h | --help)
            sed -n '2,20p' "${BASH_SOURCE[0]}"
            exit 0
            ;;
        *) die "unknown argument: $1 (try --help)" ;;
        esac
    done

    if [ "$binary_only" -eq 1 ]; then
        build_static_guest
        return
    fi
    if [ ! -d "$CACHE_DIR/modules" ] || [ ! -s "$CACHE_DIR/vmlinux" ]; then
        die "kernel or modules missing in $CACHE_DIR: run scripts/setup-microvm.sh first"
    fi
    if [ -z "$guest" ]; then
        guest="$(build_static_guest)"
    fi
    [ -f "$guest" ] || die "guest binary $guest does not exist"
    # Stripped (2.0 -> 1.7 MB): the binary is in guest RAM twice (the
    # initramfs QEMU loads, then its unpacked copy in the rootfs) and mapped
    # by every QEMU, so its symbols cost about 0.6 MB per VM (docs/microvm.md).
    install -m 0755 "$guest" "$CACHE_DIR/ukload-guest.tmp"
    if command -v strip >/dev/null 2>&1; then
        strip "$CACHE_DIR/ukload-guest.tmp" || die "strip $CACHE_DIR/ukload-guest.tmp failed"
    else
        say "warning: strip not found (binutils): the guest keeps its symbols"
    fi
    mv "$CACHE_DIR/ukload-guest.tmp" "$CACHE_DIR/ukload-guest"
    say "writing $CACHE_DIR/initramfs.cpio"
    (cd "$REPO" && UKLOAD_CACHE_DIR="$CACHE_DIR" cargo run --quiet --bin ukload -- \
        image build --guest "$CACHE_DIR/ukload-guest" >&2) ||
        die "writing the initramfs failed (see the message above)"
    say "done: kernel $CACHE_DIR/vmlinux, initramfs $CACHE_DIR/initramfs.cpio ($(du -h "$CACHE_DIR/initramfs.cpio" | cut -f1))"
}

main "$@"
