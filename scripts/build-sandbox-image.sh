#!/usr/bin/env bash
# Builds, idempotently and without any registry:
#  1. <build-dir>/execd-bundle/, by scripts/build-execd-bundle.sh: moat-execd, its shared
#     libraries and glibc's loader, and a launcher, so it runs from a read-only bind mount;
#  2. the image moat-sandbox:latest, by `docker import` of a root file system made from
#     Debian's busybox-static and bash-static plus the bundle at /opt/moat (and GNU yes
#     and head, see below).
# usage: scripts/build-sandbox-image.sh <build-dir>
# env: MOAT_SANDBOX_IMAGE, DOCKER, and DOCKER_HOST for an engine other than the default one
set -euo pipefail

build_dir="${1:?usage: $0 <build-dir>}"
root="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$build_dir"
build_dir="$(cd "$build_dir" && pwd)"
image="${MOAT_SANDBOX_IMAGE:-moat-sandbox:latest}"
DOCKER="${DOCKER:-/usr/bin/docker}"
[ -x "$DOCKER" ] || DOCKER=docker

# --- the binary ---
if [ ! -f "$build_dir/CMakeCache.txt" ]; then
  cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
if ! log="$(cmake --build "$build_dir" --target moat-execd -j 2 2>&1)"; then
  echo "$log" >&2
  echo "build-sandbox-image: building moat-execd failed" >&2
  exit 1
fi
bin="$build_dir/src/execd/moat-execd"
[ -x "$bin" ] || { echo "build-sandbox-image: $bin was not built" >&2; exit 1; }

# --- the bundle ---
bundle="$build_dir/execd-bundle"
"$root/scripts/build-execd-bundle.sh" "$bin" "$bundle"

# --- the image ---
if ! "$DOCKER" version >/dev/null 2>&1; then
  echo "build-sandbox-image: no Docker engine answers; bundle built, image skipped" >&2
  exit 1
fi
# Debian's busybox-static and bash-static install static binaries at these paths.
busybox=/bin/busybox
bash_static=/bin/bash-static
for f in "$busybox" "$bash_static"; do
  if [ ! -x "$f" ] || ldd "$f" >/dev/null 2>&1; then
    echo "build-sandbox-image: need a static $f: apt-get install busybox-static bash-static" >&2
    exit 1
  fi
done

rootfs="$build_dir/sandbox-rootfs"
rm -rf "$rootfs"
mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,workspace,run/moat,opt/moat,root,proc,sys,dev}
chmod 1777 "$rootfs/tmp"
cp "$busybox" "$rootfs/bin/busybox"
"$busybox" --list-full | while read -r applet; do
  case "$applet" in */*) ;; *) continue ;; esac # skip "linuxrc" at the root
  [ -e "$rootfs/$applet" ] || ln -s /bin/busybox "$rootfs/$applet"
done
rm -f "$rootfs/bin/bash"
cp "$bash_static" "$rootfs/bin/bash"
cp -a "$bundle/." "$rootfs/opt/moat/"
# GNU yes and head (coreutils) in /usr/local/bin, ahead of busybox's on PATH: busybox's
# write and read in tiny blocks (about 64 and 120 MB/s here), so any streaming figure taken
# with them would measure them rather than the transport. They need glibc at its usual path.
for tool in yes head; do
  gnu="$(command -v -p "$tool")"
  mkdir -p "$rootfs/usr/local/bin"
  cp -L "$gnu" "$rootfs/usr/local/bin/$tool"
  ldd "$gnu" | awk '/=> \//{print $3} /^\t\/.*ld-linux/{print $1}' | while read -r lib; do
    mkdir -p "$rootfs$(dirname "$lib")"
    [ -e "$rootfs$lib" ] || cp -L "$lib" "$rootfs$lib"
  done
done
cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/bash
nobody:x:65534:65534:nobody:/nonexistent:/bin/sh
EOF
cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF

tarball="$build_dir/sandbox-rootfs.tar"
tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$rootfs" -cf "$tarball" .
sum="$(sha256sum "$tarball" | cut -d' ' -f1)"
# One stamp per engine: an import into a second engine (DOCKER_HOST) must not make the first
# one's image look stale.
stamp="$build_dir/sandbox-image.stamp"
if [ -n "${DOCKER_HOST:-}" ]; then
  stamp="$build_dir/sandbox-image-$(printf '%s' "$DOCKER_HOST" | sha256sum | cut -c1-12).stamp"
fi
current="$("$DOCKER" image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)"
if [ -n "$current" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum $current" ]; then
  echo "build-sandbox-image: $image is up to date ($current)"
else
  new="$("$DOCKER" import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'WORKDIR /workspace' \
    -c 'CMD ["/opt/moat/run", "--listen", "unix:/run/moat/execd.sock"]' \
    "$tarball" "$image")"
  echo "$sum $new" >"$stamp"
  if [ -n "$current" ] && [ "$current" != "$new" ]; then
    "$DOCKER" rmi "$current" >/dev/null 2>&1 || true
  fi
  echo "build-sandbox-image: imported $image ($new)"
fi
rm -rf "$rootfs" "$tarball"

# The bundle must run from a read-only bind mount with nothing but busybox in the image
# (bash removed first), with no network.
"$DOCKER" run --rm --network none -v "$bundle:/opt/moat:ro" "$image" \
  /bin/busybox sh -c 'rm /bin/bash && exec /opt/moat/run --version'
