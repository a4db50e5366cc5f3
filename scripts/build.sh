#!/usr/bin/env bash
# build.sh - configure and build the project.
#
#   scripts/build.sh [--sanitize] [CMAKE_ARG...]
#
# Default: Release with debug info, warnings as errors, into build/
# (or $BUILD_DIR). With --sanitize: AddressSanitizer + UBSan, into
# build-asan/ (or $ASAN_BUILD_DIR). Any other argument goes to the cmake
# configure step (e.g. -DPORCUPINE_WERROR=OFF). Relative directories are
# taken from the repository root.
set -euo pipefail
# SPDX-License-Identifier: MIT

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

sanitize=0
cmake_args=()
for arg in "$@"; do
  case $arg in
    --sanitize) sanitize=1 ;;
    -h|--help) sed -n '2,11s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) cmake_args+=("$arg") ;;
  esac
done

if [[ $sanitize -eq 1 ]]; then
  dir=${ASAN_BUILD_DIR:-build-asan}
  cmake_args=(-DPORCUPINE_SANITIZE=ON "${cmake_args[@]}")
else
  dir=${BUILD_DIR:-build}
  cmake_args=(-DPORCUPINE_SANITIZE=OFF "${cmake_args[@]}")
fi

echo "build: configuring $dir"
cmake -S "$ROOT" -B "$dir" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DPORCUPINE_WERROR=ON \
  "${cmake_args[@]}"

echo "build: building $dir with $(nproc) jobs"
cmake --build "$dir" -j"$(nproc)"

echo "build: ok ($dir)"
