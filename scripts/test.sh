#!/usr/bin/env bash
# test.sh - install dependencies, build, and run the whole test suite.
#
#   scripts/test.sh [--sanitize]
#
# With --sanitize (or PORCUPINE_CI_SANITIZE=1) it also builds the
# ASan/UBSan tree and runs there every GoogleTest binary (minus the long
# *Randomized* schedules) and the end-to-end tests that feed agents
# hostile and ordinary traffic, with sanitized agents; and it builds the
# fuzz targets with clang and runs each for a bounded time (scripts/fuzz.sh,
# docs/fuzzing.md). On Debian 12 it then runs the Debian 13 part
# (tests/debian13/run.sh: Dovecot 2.4 and Postfix 3.10 in a trixie root,
# a cluster mixing 2.3 and 2.4 nodes, the Debian 13 packages installed
# with apt). The main ctest run always goes last, and the
# final line printed is ctest's summary ("N% tests passed, N tests failed
# out of M"). Exit status: ctest's, or non-zero if the sanitizer pass, the
# packages' build or the Debian 13 part failed.
#
# Environment: BUILD_DIR, ASAN_BUILD_DIR (as for build.sh);
# PORCUPINE_TEST_TIMEOUT seconds per test (default 600; tests that set
# their own TIMEOUT keep it); PORCUPINE_SKIP_DEPS=1 skips install-deps.sh;
# PORCUPINE_FUZZ_SECONDS per fuzz target (default 30), FUZZ_BUILD_DIR;
# PORCUPINE_SKIP_DEBIAN13=1 skips the Debian 13 part (tests/debian13/run.sh).
set -euo pipefail
# SPDX-License-Identifier: MIT

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

sanitize=${PORCUPINE_CI_SANITIZE:-0}
for arg in "$@"; do
  case $arg in
    --sanitize) sanitize=1 ;;
    -h|--help) sed -n '2,23s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "test: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

build_dir=${BUILD_DIR:-build}
asan_dir=${ASAN_BUILD_DIR:-build-asan}
timeout=${PORCUPINE_TEST_TIMEOUT:-600}

# phase NAME - says how long the run has taken when NAME begins (the
# phases' times are read from these lines).
phase() { echo "test: [$((SECONDS / 60)) min $((SECONDS % 60)) s] $*"; }

if [[ ${PORCUPINE_SKIP_DEPS:-0} != 1 ]]; then
  phase "dependencies"
  bash scripts/install-deps.sh
fi
phase "build"
bash scripts/build.sh

# run_sanitized NAME ARGS... - run one test binary of the sanitizer tree;
# remember a failure rather than stop.
run_sanitized() {
  local bin="$asan_dir/tests/$1"
  shift
  echo "test: sanitizer pass: $bin $*"
  if [[ ! -x $bin ]]; then
    echo "test: sanitizer pass: $bin is missing" >&2
    sanitizer_failed=1
  elif ! ASAN_OPTIONS=${ASAN_OPTIONS:-detect_stack_use_after_return=1:strict_string_checks=1} \
       UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
       timeout "$((timeout * 3))" "$bin" "$@"; then
    echo "test: sanitizer pass: $bin FAILED" >&2
    sanitizer_failed=1
  fi
}

# Sanitizer pass: a failure here is remembered, not fatal, so the main
# ctest run below still runs and still prints the last line.
sanitizer_failed=0
if [[ $sanitize == 1 ]]; then
  phase "sanitizer build and tests"
  if ! bash scripts/build.sh --sanitize; then
    echo "test: sanitizer build FAILED" >&2
    sanitizer_failed=1
  else
    run_sanitized unit_tests
    run_sanitized sim_tests '--gtest_filter=-*Randomized*'
    run_sanitized codec/codec_tests
    run_sanitized config/config_tests
    run_sanitized agent/agent_checks_tests
    run_sanitized store/store_tests
    echo "test: sanitizer pass: end-to-end with sanitized agents"
    if ! ASAN_OPTIONS=detect_leaks=0 timeout "$timeout" python3 tests/e2e/agent_test.py \
         --build "$asan_dir" --subnet 41 Hostile MailAcrossNodes Secure Durability; then
      echo "test: sanitizer pass: end-to-end FAILED" >&2
      sanitizer_failed=1
    fi
  fi
  phase "fuzzing"
  fuzz_seconds=${PORCUPINE_FUZZ_SECONDS:-30}
  echo "test: sanitizer pass: fuzz targets, $fuzz_seconds s each"
  if ! bash scripts/fuzz.sh --seconds "$fuzz_seconds"; then
    echo "test: sanitizer pass: fuzzing FAILED" >&2
    sanitizer_failed=1
  fi
  if [[ $sanitizer_failed == 1 ]]; then
    echo "test: sanitizer pass FAILED (see above); running the main suite anyway"
  else
    echo "test: sanitizer pass ok"
  fi
fi

# The Debian packages the packaging.* ctest entries check: this tree's
# (dpkg-buildpackage from a clean copy) and the previous release's, to
# upgrade from. Two builds of the programs, so not beside the end-to-end
# tests of the main run; a failure is remembered, not fatal.
packaging_failed=0
phase "Debian packages (tests/packaging/build_packages.sh $build_dir/packages)"
if ! bash tests/packaging/build_packages.sh "$build_dir/packages"; then
  echo "test: building the Debian packages FAILED; running the main suite anyway" >&2
  packaging_failed=1
fi

# The same product on Debian 13 (Dovecot 2.4, Postfix 3.10), in a trixie
# root filesystem: its build, its Dovecot, IMAP and SMTP end-to-end tests
# and its packages (tests/debian13/run.sh). Not beside the main run: both
# use the same test subnets. A failure is remembered, not fatal.
debian13_failed=0
if [[ ${PORCUPINE_SKIP_DEBIAN13:-0} != 1 ]]; then
  phase "Debian 13 (tests/debian13/run.sh)"
  if ! bash tests/debian13/run.sh; then
    echo "test: Debian 13 FAILED; running the main suite anyway" >&2
    debian13_failed=1
  fi
fi

# Main run, last. ctest prints its summary line before the total time and
# the list of failed tests, so repeat the summary as the final line.
log="$build_dir/ctest-output.log"
phase "the main suite (ctest)"
set +e
ctest --test-dir "$build_dir" --output-on-failure -j2 --timeout "$timeout" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e

phase "done"
summary=$(grep -E '^[0-9]+% tests passed, [0-9]+ tests? failed out of [0-9]+' "$log" | tail -n 1 || true)
if [[ ($sanitizer_failed == 1 || $packaging_failed == 1 || $debian13_failed == 1) && $rc == 0 ]]; then
  rc=1
fi
if [[ -n $summary ]]; then
  echo "$summary"
else
  echo "test: ctest printed no summary line (exit status $rc)"
  [[ $rc != 0 ]] || rc=1
fi
exit "$rc"
