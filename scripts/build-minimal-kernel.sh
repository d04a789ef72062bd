#!/usr/bin/env bash
# Builds ukload's minimal guest kernel from Debian's `linux-source-6.1` package
# into the image cache (docs/microvm.md, "Minimal kernel"). Unattended and
# idempotent: it does nothing while the cached kernel was built from the same
# source version, the same configuration fragment and the same recipe.
#
# What it does:
#   1. installs, with apt-get, what is missing: linux-source-6.1 (the source
#      tarball lands in /usr/src), and the build tools (build-essential, bc,
#      flex, bison, libelf-dev: objtool, which x86_64 always builds, needs it);
#   2. unpacks the source into a scratch directory outside the repository
#      ($UKLOAD_KERNEL_BUILD_DIR, default /tmp/ukload-kernel-build);
#   3. configures: `allnoconfig` with tinyconfig's fragments plus
#      scripts/guest-kernel.config (this is what `make tinyconfig` does, with
#      our fragment merged in the same pass, so every option we do not name
#      stays off), then checks that every line of the fragment is in the final
#      .config;
#   4. `make -j$(nproc) vmlinux` (about 4 minutes on 2 cores);
#   5. slims the vmlinux (`ukload image slim-kernel`, as the setup does for
#      Debian's kernels) and installs it with its metadata into the cache.
#
# Layout left in the cache ($UKLOAD_CACHE_DIR, else
# ${XDG_CACHE_HOME:-$HOME/.cache}/ukload, the rule of ukload::image::cache_dir()):
#   vmlinux                  the kernel (ELF, PVH entry), slimmed
#   kernel-version           its release, e.g. 6.1.192-ukload-minimal
#   kernel-stamp             "<release> minimal <source version> <fragment sha256> <recipe> <slim|full>":
#                            the build is skipped while it matches
#   kernel-config            the full .config it was built with (for reference)
#   modules/modules.builtin  the build's list of built-in drivers: there are no
#                            modules, and this list tells the image builder and
#                            the guest's PID 1 that every driver is built in
#
# Environment:
#   UKLOAD_CACHE_DIR          cache directory (see above)
#   UKLOAD_KERNEL_BUILD_DIR   scratch directory (default /tmp/ukload-kernel-build)
#   UKLOAD_KEEP_KERNEL_BUILD  1: keep the scratch directory after a successful build
#   UKLOAD_KERNEL_JOBS        make -j value (default: nproc)
#
# Usage:
#   scripts/build-minimal-kernel.sh           build unless the cache is current
#   scripts/build-minimal-kernel.sh --check   only say whether the cache is current
#
# Exit status: 0 when the kernel is in the cache; with --check, 3 when a build
# is needed; 1 with a message naming the failed step otherwise.
set -euo pipefail

readonly SOURCE_PACKAGE=linux-source-6.1
readonly SOURCE_TARBALL=/usr/src/linux-source-6.1.tar.xz
# Top directory inside the tarball.
readonly SOURCE_TOPDIR=linux-source-6.1
# Build tools: a command each, and the package that provides it.
readonly BUILD_TOOL_COMMANDS=(gcc make bc flex bison)
readonly BUILD_TOOL_PACKAGES=(build-essential build-essential bc flex bison)
# objtool includes <libelf.h>; libelf-dev has no command of its own.
readonly LIBELF_HEADER=/usr/include/libelf.h
readonly ARCH=x86_64
# Bump when the build steps change in a way that changes the kernel produced
# (the fragment's own changes are caught by its hash).
readonly RECIPE=r1
readonly FLAVOR=minimal
# Exit status of --check when the cache needs a build.
readonly EXIT_STALE=3
# Reproducible build metadata (shown by `uname -v` in the guest).
readonly BUILD_USER=ukload
readonly BUILD_HOST=ukload
readonly BUILD_TIMESTAMP="Thu Jan  1 00:00:00 UTC 1970"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly REPO
readonly FRAGMENT="$REPO/scripts/guest-kernel.config"
CACHE_DIR="${UKLOAD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ukload}"
readonly CACHE_DIR
BUILD_DIR="${UKLOAD_KERNEL_BUILD_DIR:-/tmp/ukload-kernel-build}"
readonly BUILD_DIR
JOBS="${UKLOAD_KERNEL_JOBS:-$(nproc)}"
readonly JOBS

say() { printf 'build-minimal-kernel: %s\n' "$*" >&2; }
die() {
    printf 'build-minimal-kernel: error: %s\n' "$*" >&2
    exit 1
}

apt_updated=0
apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        die "installing $* with apt-get needs root: run this script as root (or install $* yourself)"
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "$@" >&2; then
        # A fresh machine may have empty package lists: update once, retry once.
        [ "$apt_updated" -eq 0 ] || die "apt-get install $* failed"
        apt-get update >&2 || die "apt-get update failed"
        apt_updated=1
        apt-get install -y --no-install-recommends "$@" >&2 || die "apt-get install $* failed"
    fi
}

# source_version: the installed linux-source-6.1 version, else the version apt
# would install (so a valid cache is recognised without installing anything).
source_version() {
    local v
    v="$(dpkg-query -W -f='${Status} ${Version}\n' "$SOURCE_PACKAGE" 2>/dev/null |
        awk '$1 == "install" && $3 == "installed" { print $4 }')"
    if [ -z "$v" ]; then
        v="$(apt-cache policy "$SOURCE_PACKAGE" 2>/dev/null | awk '$1 == "Candidate:" { print $2 }')"
        [ "$v" != "(none)" ] || v=""
    fi
    printf '%s\n' "$v"
}

fragment_sha() {
    sha256sum "$FRAGMENT" | awk '{ print $1 }'
}

# want_layout: "slim" when cargo can run `ukload image slim-kernel`, else "full".
want_layout() {
    if command -v cargo >/dev/null 2>&1; then printf 'slim\n'; else printf 'full\n'; fi
}

# The stamp of a kernel built from source version $1 with release $2.
stamp_for() {
    printf '%s %s %s %s %s %s\n' "$2" "$FLAVOR" "$1" "$(fragment_sha)" "$RECIPE" "$(want_layout)"
}

cached_is_current() {
    local version="$1" stamp release
    [ -s "$CACHE_DIR/vmlinux" ] && [ -f "$CACHE_DIR/modules/modules.builtin" ] || return 1
    stamp="$(cat "$CACHE_DIR/kernel-stamp" 2>/dev/null || true)"
    release="$(cat "$CACHE_DIR/kernel-version" 2>/dev/null || true)"
    [ -n "$release" ] && [ "$stamp" = "$(stamp_for "$version" "$release")" ]
}

step_tools() {
    local i missing=()
    for i in "${!BUILD_TOOL_COMMANDS[@]}"; do
        command -v "${BUILD_TOOL_COMMANDS[$i]}" >/dev/null 2>&1 || missing+=("${BUILD_TOOL_PACKAGES[$i]}")
    done
    [ -f "$LIBELF_HEADER" ] || missing+=(libelf-dev)
    if [ ${#missing[@]} -eq 0 ]; then
        say "build tools: already installed"
    else
        say "build tools: installing ${missing[*]} with apt-get"
        apt_install "${missing[@]}"
    fi
    if [ -f "$SOURCE_TARBALL" ]; then
        say "$SOURCE_PACKAGE: already installed ($SOURCE_TARBALL)"
    else
        say "$SOURCE_PACKAGE: installing with apt-get"
        apt_install "$SOURCE_PACKAGE"
        [ -f "$SOURCE_TARBALL" ] || die "$SOURCE_PACKAGE installed but $SOURCE_TARBALL is missing"
    fi
}

# unpack_source VERSION: the source tree in $BUILD_DIR/$SOURCE_TOPDIR, unpacked
# again unless it is the same package version.
unpack_source() {
    local version="$1" marker="$BUILD_DIR/source-version"
    if [ -d "$BUILD_DIR/$SOURCE_TOPDIR" ] && [ "$(cat "$marker" 2>/dev/null || true)" = "$version" ]; then
        say "source: $SOURCE_PACKAGE $version already unpacked in $BUILD_DIR"
        return
    fi
    rm -rf "$BUILD_DIR"
    mkdir -p "$BUILD_DIR"
    say "source: unpacking $SOURCE_TARBALL into $BUILD_DIR (about 20 s)"
    tar -xf "$SOURCE_TARBALL" -C "$BUILD_DIR" || die "unpacking $SOURCE_TARBALL failed"
    [ -f "$BUILD_DIR/$SOURCE_TOPDIR/Makefile" ] || die "$SOURCE_TARBALL has no $SOURCE_TOPDIR/Makefile"
    printf '%s\n' "$version" >"$marker"
}

kmake() {
    make -C "$BUILD_DIR/$SOURCE_TOPDIR" O="$BUILD_DIR/obj" ARCH="$ARCH" \
        KBUILD_BUILD_USER="$BUILD_USER" KBUILD_BUILD_HOST="$BUILD_HOST" \
        KBUILD_BUILD_TIMESTAMP="$BUILD_TIMESTAMP" "$@"
}

# configure: allnoconfig + tinyconfig's fragments + ours, then a check that
# Kconfig kept every line of ours (a dropped dependency would otherwise give a
# kernel that silently lacks a driver).
configure() {
    local src="$BUILD_DIR/$SOURCE_TOPDIR" obj="$BUILD_DIR/obj"
    mkdir -p "$obj"
    say "config: allnoconfig + tinyconfig fragments + $(basename "$FRAGMENT")"
    (cd "$src" && ./scripts/kconfig/merge_config.sh -n -O "$obj" \
        kernel/configs/tiny-base.config kernel/configs/tiny.config \
        "arch/x86/configs/tiny.config" "$FRAGMENT" >"$BUILD_DIR/config.log" 2>&1) ||
        die "merging the configuration failed (see $BUILD_DIR/config.log)"
    local line sym bad=()
    while IFS= read -r line; do
        case "$line" in
        CONFIG_*=*)
            grep -qxF "$line" "$obj/.config" || bad+=("$line")
            ;;
        "# CONFIG_"*" is not set")
            sym="${line#\# }"
            sym="${sym%% *}"
            grep -q "^$sym=" "$obj/.config" && bad+=("$line")
            ;;
        esac
    done <"$FRAGMENT"
    if [ ${#bad[@]} -gt 0 ]; then
        die "Kconfig did not keep these lines of $FRAGMENT (unmet dependencies?): ${bad[*]}"
    fi
    say "config: all $(grep -c '^CONFIG_\|^# CONFIG_' "$FRAGMENT") lines of the fragment kept; $(grep -c '=y$' "$obj/.config") options built in"
}

# slim FILE: prints slim or full (see setup-microvm.sh's slim_vmlinux).
slim() {
    if [ "$(want_layout)" = full ]; then
        printf 'build-minimal-kernel: warning: cargo not found: keeping the full vmlinux\n' >&2
        printf 'full\n'
        return
    fi
    (cd "$REPO" && cargo run --quiet --bin ukload -- image slim-kernel "$1" >&2) ||
        die "slimming $1 failed (ukload image slim-kernel)"
    printf 'slim\n'
}

main() {
    local check_only=0
    case "${1:-}" in
    "") ;;
    --check) check_only=1 ;;
    -h | --help)
        sed -n '2,45p' "${BASH_SOURCE[0]}"
        return
        ;;
    *) die "unknown argument $1 (expected --check or nothing)" ;;
    esac
    say "cache directory: $CACHE_DIR, scratch directory: $BUILD_DIR"
    [ -f "$FRAGMENT" ] || die "configuration fragment $FRAGMENT is missing"
    local version
    version="$(source_version)"
    if [ -n "$version" ] && cached_is_current "$version"; then
        say "kernel: $(cat "$CACHE_DIR/kernel-version") ($FLAVOR, $SOURCE_PACKAGE $version) already cached in $CACHE_DIR"
        return
    fi
    if [ "$check_only" -eq 1 ]; then
        say "kernel: the cache holds no current $FLAVOR kernel (stamp: $(cat "$CACHE_DIR/kernel-stamp" 2>/dev/null || printf none)): a build is needed"
        exit "$EXIT_STALE"
    fi
    step_tools
    version="$(source_version)"
    [ -n "$version" ] || die "cannot tell the version of $SOURCE_PACKAGE (dpkg-query -W $SOURCE_PACKAGE)"
    local started=$SECONDS
    unpack_source "$version"
    configure
    say "build: make -j$JOBS vmlinux ($ARCH; about 4 minutes on 2 cores; log in $BUILD_DIR/build.log)"
    kmake -j"$JOBS" vmlinux >"$BUILD_DIR/build.log" 2>&1 ||
        die "kernel build failed; last lines of $BUILD_DIR/build.log: $(tail -n 15 "$BUILD_DIR/build.log")"
    local obj="$BUILD_DIR/obj" release
    release="$(kmake -s kernelrelease 2>/dev/null)" || die "make kernelrelease failed"
    [ -s "$obj/vmlinux" ] || die "the build left no $obj/vmlinux"
    [ -f "$obj/modules.builtin" ] || die "the build left no $obj/modules.builtin"

    mkdir -p "$CACHE_DIR"
    rm -f "$CACHE_DIR/kernel-stamp"
    cp "$obj/vmlinux" "$CACHE_DIR/vmlinux.tmp"
    say "kernel: slimming vmlinux"
    local layout
    layout="$(slim "$CACHE_DIR/vmlinux.tmp")"
    mv "$CACHE_DIR/vmlinux.tmp" "$CACHE_DIR/vmlinux"
    # No modules: the whole directory is replaced, so no .ko of another kernel
    # flavor is left to be packed into the image.
    rm -rf "$CACHE_DIR/modules.tmp"
    mkdir -p "$CACHE_DIR/modules.tmp"
    cp "$obj/modules.builtin" "$CACHE_DIR/modules.tmp/modules.builtin"
    rm -rf "$CACHE_DIR/modules"
    mv "$CACHE_DIR/modules.tmp" "$CACHE_DIR/modules"
    cp "$obj/.config" "$CACHE_DIR/kernel-config"
    printf '%s\n' "$release" >"$CACHE_DIR/kernel-version"
    # The stamp last: it says everything above is in place.
    stamp_for "$version" "$release" >"$CACHE_DIR/kernel-stamp"
    if [ "${UKLOAD_KEEP_KERNEL_BUILD:-0}" = 1 ]; then
        say "keeping $BUILD_DIR (UKLOAD_KEEP_KERNEL_BUILD=1)"
    else
        rm -rf "$BUILD_DIR"
    fi
    say "kernel: cached $release ($FLAVOR, $layout, $(($(stat -c %s "$CACHE_DIR/vmlinux") / 1024)) KiB) in $CACHE_DIR in $((SECONDS - started)) s"
}

main "$@"
