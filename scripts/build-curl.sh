#!/usr/bin/env bash
# Builds the libcurl that moat links: Debian 12's curl source, with Debian's
# security patches, configured for HTTP and HTTPS (GnuTLS) only, as a static
# library. Debian's shared libcurl drags 25 libraries (LDAP, Kerberos, SSH,
# RTMP, OpenSSL next to GnuTLS, ...) into every process that loads it: 5 MB of
# moatd's idle RSS and code moat never calls. Idempotent: a finished build with
# the same source and options is kept.
# usage: scripts/build-curl.sh [dir]   (default: third_party/curl)
set -euo pipefail
cd "$(dirname "$0")/.."
dir="$(realpath -m "${1:-third_party/curl}")"

options=(
  --disable-shared --enable-static --with-pic --with-gnutls
  --disable-ldap --disable-ldaps --disable-rtsp --disable-dict --disable-telnet
  --disable-tftp --disable-pop3 --disable-imap --disable-smb --disable-smtp
  --enable-websockets --disable-gopher --disable-mqtt --disable-ftp --disable-file --disable-manual
  --disable-ntlm --disable-alt-svc --disable-hsts --disable-cookies --disable-netrc
  --disable-doh --without-libpsl --without-brotli --without-zstd --without-nghttp2
  --without-libidn2 --without-librtmp --without-libssh2 --without-zlib --without-libgsasl
)
stamp="options: ${options[*]}"

if [ -f "$dir/install/lib/libcurl.a" ] && [ "$(cat "$dir/install/.moat-stamp" 2>/dev/null)" = "$stamp" ]; then
  exit 0
fi

mkdir -p "$dir/download"
if ! ls "$dir"/download/curl_*.dsc >/dev/null 2>&1; then
  echo "build-curl: fetching Debian's curl source package"
  if ! (cd "$dir/download" && apt-get source --download-only curl >/dev/null); then
    echo "build-curl: apt-get source curl failed; scripts/install-deps.sh enables Debian's" \
      "source packages (or configure with -DMOAT_SYSTEM_CURL=ON to use libcurl4-openssl-dev)" >&2
    exit 1
  fi
fi

rm -rf "$dir/src" "$dir/install"
dpkg-source --no-check -x "$(ls "$dir"/download/curl_*.dsc | head -n1)" "$dir/src" >/dev/null
echo "build-curl: configuring and building libcurl (HTTP and HTTPS only)"
(
  cd "$dir/src"
  ./configure --quiet --prefix="$dir/install" "${options[@]}" >/dev/null
  make -s -j"$(nproc)" -C lib >/dev/null
  make -s -C lib install >/dev/null
  make -s -C include install >/dev/null
)
echo "$stamp" >"$dir/install/.moat-stamp"
echo "build-curl: $dir/install/lib/libcurl.a"
