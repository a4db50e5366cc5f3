#!/usr/bin/env bash
# lintian_test.sh - lintian on this tree's packages, their .changes and
# the source package's .dsc (tests/packaging/build_packages.sh made them): the test fails on any
# error or warning. Overrides live beside each package, each with its
# reason (debian/<package>.lintian-overrides). Informational tags are
# printed, not counted.
#
#   tests/packaging/lintian_test.sh PACKAGES_DIR
#
# Exit status: 0 clean, 1 an error or a warning, 77 no packages (skipped).
set -uo pipefail
# SPDX-License-Identifier: MIT

dir=${1:?usage: lintian_test.sh PACKAGES_DIR}/current
shopt -s nullglob
changes=("$dir"/*.changes)
dsc=("$dir"/*.dsc)
debs=("$dir"/*.deb)
if [[ ${#changes[@]} -ne 1 || ${#dsc[@]} -ne 1 || ${#debs[@]} -ne 3 ]]; then
  echo "lintian_test: skipped: no packages in $dir (tests/packaging/build_packages.sh DIR; scripts/test.sh runs it)" >&2
  exit 77
fi
command -v lintian >/dev/null || { echo "lintian_test: lintian is not installed (scripts/install-deps.sh)" >&2; exit 1; }

echo "lintian_test: lintian $(lintian --version | awk '{print $2}') on ${changes[0]##*/} (${debs[*]##*/}) and ${dsc[0]##*/}"
out=$(lintian --display-info --show-overrides --fail-on error,warning "${changes[0]}" "${dsc[0]}" 2>&1)
rc=$?
printf '%s\n' "$out"
counted=$(printf '%s\n' "$out" | grep -c -E '^[EW]: ' || true)
echo "lintian_test: lintian exit status $rc, $counted error or warning lines"
[[ $rc -eq 0 && $counted -eq 0 ]]
