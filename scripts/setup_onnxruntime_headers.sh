#!/usr/bin/env bash
# Fetch the ONNX Runtime C/C++ headers for building the C++ runtime (csrc/) against the onnxruntime pip
# wheel's library, which ships no headers.
#
# Usage: scripts/setup_onnxruntime_headers.sh [DEST]    (default: build/third_party/onnxruntime-headers)
#
# Takes Debian trixie's libonnxruntime-dev package with apt, through a private apt configuration in a temp
# directory (the system's sources and package lists are left untouched), and unpacks only its headers into
# DEST/include with `dpkg -x`. The package's own library needs a newer glibc than bookworm has, so only the
# headers are used; they are API version 21 (ONNX Runtime 1.21), which any newer library serves.
# Idempotent: returns at once when DEST already holds the headers.
#
# Environment: MEDFM_ORT_HEADERS_DEB=/path/to/libonnxruntime-dev_*.deb to unpack a .deb you already have
# (offline machines); MEDFM_DEBIAN_MIRROR to use another Debian mirror.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-$here/build/third_party/onnxruntime-headers}"
stamp="$dest/.medfm-headers-ok"

if [[ -f "$stamp" && -f "$dest/include/onnxruntime_cxx_api.h" ]]; then
  echo "ONNX Runtime headers already in $dest/include"
  exit 0
fi

for tool in dpkg-deb; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found; on a non-Debian system pass -DONNXRUNTIME_ROOT=<onnxruntime install> to cmake instead" >&2; exit 1; }
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

deb="${MEDFM_ORT_HEADERS_DEB:-}"
if [[ -z "$deb" ]]; then
  command -v apt-get >/dev/null || { echo "error: apt-get not found; set MEDFM_ORT_HEADERS_DEB or pass -DONNXRUNTIME_ROOT= to cmake" >&2; exit 1; }
  mirror="${MEDFM_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  [[ -f "$keyring" ]] || { echo "error: $keyring missing (apt-get install debian-archive-keyring)" >&2; exit 1; }
  mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/sources.list.d" "$work/preferences.d"
  echo "deb [signed-by=$keyring] $mirror trixie main" > "$work/sources.list"
  apt_opts=(
    -o "Dir::Etc::sourcelist=$work/sources.list" -o "Dir::Etc::sourceparts=$work/sources.list.d"
    -o "Dir::Etc::preferencesparts=$work/preferences.d" -o "Dir::State::Lists=$work/lists"
    -o "Dir::Cache=$work/cache" -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache="
    -o "APT::Sandbox::User=root" -o "Debug::NoLocking=1"
  )
  echo "fetching Debian trixie's libonnxruntime-dev (headers only) ..."
  apt-get "${apt_opts[@]}" -qq update >"$work/update.log" 2>&1 || { cat "$work/update.log" >&2; echo "error: apt-get update (private trixie sources) failed" >&2; exit 1; }
  (cd "$work" && apt-get "${apt_opts[@]}" -qq download libonnxruntime-dev) >"$work/download.log" 2>&1 \
    || { cat "$work/download.log" >&2; echo "error: could not download libonnxruntime-dev" >&2; exit 1; }
  deb="$(ls "$work"/libonnxruntime-dev_*.deb | head -n1)"
fi

dpkg-deb -x "$deb" "$work/x"
src="$work/x/usr/include/onnxruntime"
[[ -f "$src/onnxruntime_cxx_api.h" ]] || { echo "error: $deb holds no onnxruntime_cxx_api.h" >&2; exit 1; }
rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
cp -r "$src" "$dest.tmp/include"
if [[ -f "$work/x/usr/share/doc/libonnxruntime-dev/copyright" ]]; then
  cp "$work/x/usr/share/doc/libonnxruntime-dev/copyright" "$dest.tmp/COPYRIGHT"
fi
basename "$deb" > "$dest.tmp/.medfm-headers-ok"
rm -rf "$dest" && mkdir -p "$(dirname "$dest")" && mv "$dest.tmp" "$dest"
echo "ONNX Runtime headers in $dest/include ($(cat "$stamp"))"
