#!/usr/bin/env bash
# Makes the moat-execd bundle: moat-execd, lib/ (its shared libraries and glibc's loader)
# and `run`, a POSIX-sh launcher, so the bundle runs from a read-only bind mount in any
# image that has /bin/sh. Built in a scratch dir beside it, then swapped in.
# usage: scripts/build-execd-bundle.sh <moat-execd binary> <bundle dir>
# Used by scripts/build-sandbox-image.sh and by `cmake --install`.
set -euo pipefail

bin="${1:?usage: $0 <moat-execd binary> <bundle dir>}"
bundle="${2:?usage: $0 <moat-execd binary> <bundle dir>}"
[ -x "$bin" ] || { echo "build-execd-bundle: $bin is not an executable" >&2; exit 1; }
mkdir -p "$(dirname "$bundle")"
stage="$bundle.new"
rm -rf "$stage"
mkdir -p "$stage/lib"
# Sanitizer builds cannot run under the bundled loader's library path alone.
if ldd "$bin" | grep -q 'libasan\|libubsan'; then
  echo "build-execd-bundle: $bin is a sanitizer build; use a normal build dir" >&2
  exit 1
fi
strip -o "$stage/moat-execd" "$bin" 2>/dev/null || cp "$bin" "$stage/moat-execd"
chmod 0755 "$stage/moat-execd"
loader=""
while read -r line; do
  case "$line" in
    *"=> not found"*) echo "build-execd-bundle: missing library: $line" >&2; exit 1 ;;
    *"=>"*/*) lib="$(echo "$line" | sed -E 's/.*=> ([^ ]+) .*/\1/')" ;;
    /*) lib="$(echo "$line" | awk '{print $1}')"; loader="$lib" ;;
    *) continue ;;
  esac
  cp -L "$lib" "$stage/lib/$(basename "$lib")"
done < <(ldd "$bin")
[ -n "$loader" ] || { echo "build-execd-bundle: no ELF loader found by ldd" >&2; exit 1; }
if [ "$(basename "$loader")" != ld-linux-x86-64.so.2 ]; then
  cp -L "$loader" "$stage/lib/ld-linux-x86-64.so.2"
fi
chmod 0755 "$stage/lib/"*
cat >"$stage/run" <<'EOF'
#!/bin/sh
# Starts moat-execd with the libraries of this bundle, whatever the image's libc.
case "$0" in
  */*) dir="${0%/*}" ;;
  *) dir=. ;;
esac
exec "$dir/lib/ld-linux-x86-64.so.2" --library-path "$dir/lib" "$dir/moat-execd" "$@"
EOF
chmod 0755 "$stage/run"
"$stage/run" --version >/dev/null
rm -rf "$bundle"
mv "$stage" "$bundle"
echo "build-execd-bundle: bundle $bundle ($(du -sh "$bundle" | cut -f1))"
