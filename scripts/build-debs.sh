#!/usr/bin/env bash
# build-debs.sh - build the Debian packages of this tree into dist/:
# porcupine-agent, porcupine-milter and dovecot-porcupine
# (packaging/README.md).
#
#   scripts/build-debs.sh [--build-dir DIR] [--out DIR] [--no-build]
#
# --build-dir  CMake build directory (default build-pkg; configured here
#              without sanitizers if it is new)
# --out        where the .deb files go (default dist)
# --no-build   package what DIR already holds; fail if a program is missing
#
# Needs dpkg-dev (dpkg-deb, dpkg-shlibdeps), libmilter-dev and dovecot-dev
# (scripts/install-deps.sh installs them). Changes nothing outside DIR and
# the output directory. Exit status: 0 packages built, 1 failure, 2 usage.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

build_dir=build-pkg
out_dir=dist
do_build=1
while [[ $# -gt 0 ]]; do
  case $1 in
    --build-dir) build_dir=${2:?--build-dir needs a directory}; shift 2 ;;
    --out) out_dir=${2:?--out needs a directory}; shift 2 ;;
    --no-build) do_build=0; shift ;;
    -h|--help) sed -n '2,15s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "build-debs: unknown argument: $1" >&2; exit 2 ;;
  esac
done

say() { echo "build-debs: $*"; }
die() { echo "build-debs: error: $*" >&2; exit 1; }

for tool in cmake cpack dpkg-deb dpkg-shlibdeps; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found (apt-get install cmake dpkg-dev)"
done

# The programs each package ships, and the man pages, as CMake targets.
targets=(porcupine-agent porcupinectl porcupine-config-doc porcupine-milter
         porcupine-checkpassword porcupine_dovecot_plugin porcupine-man)

if [[ $do_build == 1 ]]; then
  if [[ ! -f $build_dir/CMakeCache.txt ]]; then
    say "configuring $build_dir"
    cmake -S "$ROOT" -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPORCUPINE_WERROR=ON >/dev/null
  fi
  say "building ${targets[*]} in $build_dir"
  nice cmake --build "$build_dir" -j "${JOBS:-2}" --target "${targets[@]}" >/dev/null
fi

[[ -f $build_dir/CPackConfig.cmake ]] || die "$build_dir is not a configured build directory"
if grep -q '^PORCUPINE_SANITIZE:BOOL=ON' "$build_dir/CMakeCache.txt"; then
  die "$build_dir is a sanitizer build; packages are made from a plain one"
fi
# Every program must be there: a build without libmilter-dev or dovecot-dev
# leaves the milter or the plugin out, and its package would be empty.
for program in cluster-agent/agent/porcupine-agent cluster-agent/agent/porcupinectl \
               cluster-agent/config/porcupine-config-doc milter/porcupine-milter \
               dovecot-plugin/porcupine-checkpassword dovecot-plugin/lib20_porcupine_plugin.so; do
  [[ -f $build_dir/$program ]] || die "$build_dir/$program is missing (is libmilter-dev / dovecot-dev installed? run without --no-build)"
done
for page in porcupine.conf.5 porcupine-agent.8 porcupinectl.8 porcupine-milter.8; do
  [[ -f $build_dir/man/$page.gz ]] || die "$build_dir/man/$page.gz is missing (build the target porcupine-man, or run without --no-build)"
done

mkdir -p "$out_dir"
staging=$(mktemp -d "${TMPDIR:-/tmp}/porcupine-debs.XXXXXX")
trap 'rm -rf "$staging"' EXIT
say "packaging (cpack -G DEB)"
if ! cpack --config "$build_dir/CPackConfig.cmake" -B "$staging" >"$staging/cpack.log" 2>&1; then
  cat "$staging/cpack.log" >&2
  die "cpack failed"
fi
shopt -s nullglob
debs=("$staging"/*.deb)
[[ ${#debs[@]} -eq 3 ]] || { cat "$staging/cpack.log" >&2; die "expected 3 packages, cpack made ${#debs[@]}"; }
for deb in "${debs[@]}"; do
  mv -f "$deb" "$out_dir/"
  say "$out_dir/$(basename "$deb")"
done
