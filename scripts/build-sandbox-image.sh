#!/usr/bin/env bash
# Builds, idempotently and without any registry:
#  1. <build-dir>/execd-bundle/, by scripts/build-execd-bundle.sh: moat-execd, its shared
#     libraries and glibc's loader, and a launcher, so it runs from a read-only bind mount;
#  2. the images named on the command line (none: both), each by `docker import`:
#     - minimal: moat-sandbox:latest, a root file system made from Debian's busybox-static and
#       bash-static plus the bundle at /opt/moat (and GNU yes and head, see below);
#     - debian: moat-sandbox-debian:latest, moatd's default, a Debian 12 root file system made
#       by mmdebstrap from Debian's packages (python3, pip, git, curl, ...). The tarball is
#       cached (see debian_cache below), so only the first run downloads and unpacks packages.
#     Both get the bundle from moatd's read-only bind mount at /opt/moat.
# usage: scripts/build-sandbox-image.sh <build-dir> [minimal] [debian]
# env: MOAT_SANDBOX_IMAGE (the minimal image's tag), MOAT_SANDBOX_DEBIAN_IMAGE, MOAT_IMAGE_CACHE
#      (where the Debian tarball is kept), MOAT_DEBIAN_MIRROR, DOCKER, and DOCKER_HOST for an
#      engine other than the default one
set -euo pipefail

build_dir="${1:?usage: $0 <build-dir> [minimal] [debian]}"
shift
want_minimal=0 want_debian=0
[ $# -gt 0 ] || set -- minimal debian
for what in "$@"; do
  case "$what" in
    minimal) want_minimal=1 ;;
    debian) want_debian=1 ;;
    *) echo "build-sandbox-image: unknown image \"$what\" (minimal, debian)" >&2; exit 2 ;;
  esac
done
root="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$build_dir"
build_dir="$(cd "$build_dir" && pwd)"
image="${MOAT_SANDBOX_IMAGE:-moat-sandbox:latest}"
debian_image="${MOAT_SANDBOX_DEBIAN_IMAGE:-moat-sandbox-debian:latest}"
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
# --- the minimal image ---
build_minimal() {
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
  printf '%s\n' 'root:x:0:0:root:/root:/bin/bash' 'nobody:x:65534:65534:nobody:/nonexistent:/bin/sh' \
    >"$rootfs/etc/passwd"
  printf '%s\n' 'root:x:0:' 'nogroup:x:65534:' >"$rootfs/etc/group"

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
}

# --- the Debian image ---
# What goes into it. Any change here (or to debian_recipe, bumped when the way the file system
# is made changes) changes the cache key, so the next run builds it anew.
debian_recipe=1
debian_suite=bookworm
debian_packages=(bash coreutils procps python3 python3-pip git curl ca-certificates)
debian_mirror="${MOAT_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
debian_sources=(
  "deb $debian_mirror $debian_suite main"
  "deb $debian_mirror $debian_suite-updates main"
  "deb ${MOAT_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security} $debian_suite-security main"
)
# The mount points moatd binds over (the root is read-only in a sandbox, so they must exist).
debian_hook='mkdir -p "$1/workspace" "$1/run/moat" "$1/opt/moat"'
debian_args=(
  --variant=minbase --include="$(IFS=,; echo "${debian_packages[*]}")"
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
  --aptopt='Acquire::Retries "3"' --customize-hook="$debian_hook"
)
if [ -n "${MOAT_IMAGE_CACHE:-}" ]; then
  debian_cache="$MOAT_IMAGE_CACHE"
elif [ "$(id -u)" -eq 0 ]; then
  debian_cache=/var/cache/moat
else
  debian_cache="${XDG_CACHE_HOME:-$HOME/.cache}/moat"
fi

build_debian() {
  local key tarball current new
  key="$(printf '%s\n' "$debian_recipe" "$debian_suite" "${debian_args[@]}" "${debian_sources[@]}" |
    sha256sum | cut -c1-16)"
  tarball="$debian_cache/debian-$debian_suite-$key.tar"
  mkdir -p "$debian_cache"
  # Two builds at once (setup-and-run.sh and a test) wait for each other rather than both
  # downloading; the tarball appears whole (renamed) or not at all.
  exec 9>"$debian_cache/debian.lock"
  flock 9
  if [ -f "$tarball" ]; then
    echo "build-sandbox-image: cached Debian root file system $tarball"
  else
    command -v mmdebstrap >/dev/null ||
      { echo "build-sandbox-image: need mmdebstrap: apt-get install mmdebstrap" >&2; exit 1; }
    echo "build-sandbox-image: making a Debian $debian_suite root file system (mmdebstrap)"
    rm -f "$tarball.new.tar"
    mmdebstrap --quiet "${debian_args[@]}" "$debian_suite" "$tarball.new.tar" "${debian_sources[@]}"
    mv "$tarball.new.tar" "$tarball"
    find "$debian_cache" -maxdepth 1 -name 'debian-*.tar' ! -name "$(basename "$tarball")" -delete
  fi
  exec 9>&-

  # The image carries its key, so each engine knows whether it has this tarball already.
  current="$("$DOCKER" image inspect -f '{{index .Config.Labels "moat.rootfs"}} {{.Id}}' \
    "$debian_image" 2>/dev/null || true)"
  if [ "${current%% *}" = "$key" ]; then
    echo "build-sandbox-image: $debian_image is up to date (${current#* })"
  else
    new="$("$DOCKER" import \
      -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      -c 'ENV LANG=C.UTF-8' \
      -c "LABEL moat.rootfs=$key" \
      -c 'WORKDIR /workspace' \
      -c 'CMD ["/opt/moat/run", "--listen", "unix:/run/moat/execd.sock"]' \
      "$tarball" "$debian_image")"
    if [ -n "$current" ] && [ "${current#* }" != "$new" ]; then
      "$DOCKER" rmi "${current#* }" >/dev/null 2>&1 || true
    fi
    echo "build-sandbox-image: imported $debian_image ($new)"
  fi

  # The bundle (its own loader and libraries) runs from the read-only bind mount, with no network
  # and a read-only root, as in a sandbox; and python3 answers.
  "$DOCKER" run --rm --network none --read-only -v "$bundle:/opt/moat:ro" "$debian_image" \
    sh -c '/opt/moat/run --version && python3 -c "print(6*7)"'
}

[ "$want_minimal" = 0 ] || build_minimal
[ "$want_debian" = 0 ] || build_debian
