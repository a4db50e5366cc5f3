#!/usr/bin/env bash
# build_packages.sh - the packages tests/packaging checks: this tree's,
# built by dpkg-buildpackage from a clean copy (scripts/build-debs.sh), and
# the previous release's, built from `git archive` of its commit by that
# commit's own scripts/build-debs.sh, to upgrade from.
#
#   tests/packaging/build_packages.sh OUT_DIR
#
# OUT_DIR/current/   *.deb, *.changes, *.buildinfo of this tree
# OUT_DIR/previous/  *.deb of PREVIOUS_COMMIT (below)
#
# scripts/test.sh runs it before the main ctest run (two builds of the
# shipped programs would starve the timing-sensitive end-to-end tests
# running beside them); the ctest entries packaging.deb, packaging.lintian
# and packaging.upgrade read OUT_DIR. The previous release's packages are
# kept and reused while PREVIOUS_COMMIT stays the same; this tree's are
# rebuilt every time. Builds are niced, at most JOBS (2) jobs.
set -euo pipefail
# SPDX-License-Identifier: MIT

# The last release: 0.1.0-1, the CPack packages (before debian/). Move it
# forward when a release is made.
PREVIOUS_COMMIT=c84d00709848d735ca78bca104f12eccbd075feb

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
out=${1:?usage: build_packages.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
say() { echo "build_packages: $*"; }
die() { echo "build_packages: error: $*" >&2; exit 1; }

cd "$ROOT"
start=$(date +%s)
# The previous release supports Dovecot 2.3 (Debian 12) only: on Dovecot
# 2.4 (Debian 13) there is nothing to upgrade from yet.
dovecot_series=$(sed -n 's/^#define DOVECOT_ABI_VERSION "\([0-9]*\.[0-9]*\)\..*/\1/p' /usr/include/dovecot/config.h 2>/dev/null || true)
if [[ $dovecot_series != 2.3 ]]; then
  rm -rf "$out/previous"
  say "previous release: none for Dovecot ${dovecot_series:-?} (the last release supports Debian 12's 2.3 only): no upgrade test"
elif ! git cat-file -e "$PREVIOUS_COMMIT^{commit}" 2>/dev/null; then
  # packaging.upgrade then says it was skipped, and why.
  rm -rf "$out/previous"
  echo "build_packages: WARNING: commit $PREVIOUS_COMMIT (the previous release) is not in this clone" \
       "(a shallow clone? git fetch --unshallow): no upgrade test" >&2
elif [[ $(cat "$out/previous/commit" 2>/dev/null) != "$PREVIOUS_COMMIT" ]]; then
  rm -rf "$out/previous" "$out/previous.tmp"
  mkdir -p "$out/previous.tmp/src"
  say "previous release: building ${PREVIOUS_COMMIT:0:12} with its own scripts/build-debs.sh"
  git archive "$PREVIOUS_COMMIT" | tar -x -C "$out/previous.tmp/src"
  if ! (cd "$out/previous.tmp/src" && NICE=15 nice -n 15 bash scripts/build-debs.sh \
        --build-dir "$out/previous.tmp/build" --out "$out/previous.tmp/dist") >"$out/previous.log" 2>&1; then
    tail -n 40 "$out/previous.log" >&2
    die "building the previous release failed (log: $out/previous.log)"
  fi
  mkdir "$out/previous"
  mv "$out"/previous.tmp/dist/*.deb "$out/previous/"
  echo "$PREVIOUS_COMMIT" > "$out/previous/commit"
  rm -rf "$out/previous.tmp"
else
  say "previous release: reusing $out/previous"
fi
[[ -d $out/previous ]] && say "previous release: $(cd "$out/previous" && echo *.deb) ($(( $(date +%s) - start )) s)"

start=$(date +%s)
rm -rf "$out/current" "$out/current.work"
say "this tree: scripts/build-debs.sh (dpkg-buildpackage -us -uc -b from a clean copy)"
if ! bash scripts/build-debs.sh --out "$out/current" --work "$out/current.work" >"$out/current.log" 2>&1; then
  cat "$out/current.log" >&2
  die "building this tree's packages failed (log: $out/current.log, $out/current.work/build.log)"
fi
cp "$out/current.work/build.log" "$out/current-dpkg-buildpackage.log"
rm -rf "$out/current.work"
say "this tree: $(cd "$out/current" && echo *.deb) ($(( $(date +%s) - start )) s)"
