#!/usr/bin/env bash
# Installs the Debian 12 packages moat needs to build, test and run. Idempotent:
# packages already present are not touched, and apt is only called when something is missing.
set -euo pipefail

packages=(
  build-essential cmake pkg-config git ca-certificates curl
  protobuf-compiler protobuf-c-compiler libprotobuf-c-dev
  nanopb libnanopb-dev python3-protobuf python3-grpcio python3-grpc-tools
  libgrpc++-dev libprotobuf-dev protobuf-compiler-grpc
  uuid-dev libcmocka-dev libuv1-dev libcjson-dev
  libmicrohttpd-dev libwslay-dev libwslay1 libsqlite3-dev dpkg-dev nettle-dev libnghttp2-dev
  clang libclang-rt-14-dev valgrind openssl libgnutls28-dev
  docker.io busybox-static bash-static iproute2 procps runsc mmdebstrap tmux etcd-server
)
if [ "${MOAT_SKIP_DOCKER:-0}" = 1 ]; then
  packages=("${packages[@]/docker.io/}")
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive

# scripts/build-curl.sh builds moat's libcurl from Debian's curl source package,
# so Debian's source index must be enabled.
if ! apt-cache showsrc curl 2>/dev/null | grep -q '^Package: curl'; then
  echo "install-deps: enabling Debian source packages (for scripts/build-curl.sh)"
  $SUDO tee /etc/apt/sources.list.d/moat-debian-src.sources >/dev/null <<'SOURCES'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
  $SUDO apt-get update
fi

missing=()
for p in "${packages[@]}"; do
  [ -n "$p" ] || continue
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all packages present"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
if ! $SUDO apt-get install -y --no-install-recommends "${missing[@]}"; then
  $SUDO apt-get update
  $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
fi
