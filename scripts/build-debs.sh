#!/usr/bin/env bash
# build-debs.sh - build the Debian packages of this tree into dist/:
# porcupine-agent, porcupine-milter and dovecot-porcupine, with
# dpkg-buildpackage from debian/ (packaging/README.md).
#
#   scripts/build-debs.sh [--out DIR] [--rev REV] [--work DIR]
#
# --out    where the packages go (default dist): the three .deb, their
#          .changes and .buildinfo, and the source package (.dsc, .tar.xz)
# --rev    build the tree of commit REV (git archive) instead of the
#          working tree
# --work   build there (it must not exist; kept afterwards) instead of in
#          a temporary directory that is deleted
#
# The source is copied first, so the build never writes into this tree:
# the working tree's files as git sees them (tracked and untracked, not
# ignored; build directories are not copied), or REV's. Then
# `dpkg-source -b` makes the source package of the copy, and
# `dpkg-buildpackage -us -uc -b` builds the binary ones, niced, with
# DEB_BUILD_OPTIONS="parallel=${JOBS:-2} nocheck" (the package build runs no
# tests, debian/rules). Needs dpkg-dev, debhelper, fakeroot and the
# Build-Depends of debian/control (scripts/install-deps.sh installs them).
# Exit status: 0 packages built, 1 failure, 2 usage.
set -euo pipefail
# SPDX-License-Identifier: MIT

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

out_dir=dist
rev=""
work=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --out) out_dir=${2:?--out needs a directory}; shift 2 ;;
    --rev) rev=${2:?--rev needs a commit}; shift 2 ;;
    --work) work=${2:?--work needs a directory}; shift 2 ;;
    -h|--help) sed -n '2,23s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "build-debs: unknown argument: $1" >&2; exit 2 ;;
  esac
done

say() { echo "build-debs: $*"; }
die() { echo "build-debs: error: $*" >&2; exit 1; }

for tool in git dpkg-buildpackage dh fakeroot; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool not found (bash scripts/install-deps.sh)"
done

if [[ -n $work ]]; then
  [[ ! -e $work ]] || die "$work exists"
  mkdir -p "$work"
  work=$(cd "$work" && pwd)
else
  work=$(mktemp -d "${TMPDIR:-/tmp}/porcupine-debs.XXXXXX")
  trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$out_dir"
out_dir=$(cd "$out_dir" && pwd)

src="$work/porcupine"
mkdir "$src"
if [[ -n $rev ]]; then
  say "source: git archive $rev"
  git archive "$rev" | tar -x -C "$src"
else
  say "source: the working tree"
  # (a file deleted but not yet committed is in the index, not on disk)
  while IFS= read -r -d '' f; do
    if [[ -e $f ]]; then printf '%s\0' "$f"; fi
  done < <(git ls-files -z --cached --others --exclude-standard) \
    | tar -c --null -T - -f - | tar -x -C "$src"
fi
[[ -f $src/debian/control ]] || die "no debian/ in the source${rev:+ of $rev}"
version=$(cd "$src" && dpkg-parsechangelog -S Version)

say "dpkg-source -b (porcupine $version)"
if ! (cd "$work" && dpkg-source -b porcupine) >"$work/source.log" 2>&1; then
  cat "$work/source.log" >&2
  die "dpkg-source failed"
fi

say "dpkg-buildpackage -us -uc -b (porcupine $version; log: $work/build.log)"
if ! (cd "$src" && DEB_BUILD_OPTIONS="parallel=${JOBS:-2} nocheck ${DEB_BUILD_OPTIONS:-}" \
      nice -n "${NICE:-15}" dpkg-buildpackage -us -uc -b) >"$work/build.log" 2>&1; then
  tail -n 40 "$work/build.log" >&2
  die "dpkg-buildpackage failed (log: $work/build.log)"
fi

shopt -s nullglob
debs=("$work"/*.deb)
[[ ${#debs[@]} -eq 3 ]] || die "expected 3 packages, dpkg-buildpackage made ${#debs[@]}: ${debs[*]}"
for f in "${debs[@]}" "$work"/*.changes "$work"/*.buildinfo "$work"/*.dsc "$work"/*.tar.xz; do
  cp -f "$f" "$out_dir/"
  say "$out_dir/$(basename "$f")"
done
