#!/usr/bin/env bash
# fuzz.sh - build the libFuzzer targets (tests/fuzz) and run them.
#
#   scripts/fuzz.sh [--seconds N | --runs N] [TARGET...]
#
# Builds with clang into build-fuzz/ (or $FUZZ_BUILD_DIR; PORCUPINE_FUZZ:
# ASan + UBSan + libFuzzer), only the fuzz targets. Then runs each TARGET
# (default: all) for N seconds (--seconds, default 30) or N executions
# (--runs), on a copy of its seed corpus (tests/fuzz/corpus/TARGET, never
# written to), with its dictionary if it has one. One line per target:
# executions, time, and the result; a crashing input is left in
# build-fuzz/fuzz-run/TARGET/ and its path printed. Exit status: 0 when no
# target crashed (or timed out, or ran out of memory), 1 otherwise, 2 bad
# usage or a failed build. docs/fuzzing.md.
#
# Environment: FUZZ_BUILD_DIR; FUZZ_JOBS build jobs (default: nproc);
# CC, CXX (default clang, clang++).
set -euo pipefail
# SPDX-License-Identifier: MIT

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

ALL_TARGETS=(fuzz_peer_frame fuzz_handshake fuzz_local_request fuzz_config fuzz_milter_address)

die() { echo "fuzz: error: $*" >&2; exit 2; }

limit=(-max_total_time=30)
targets=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --seconds) [[ ${2:-} =~ ^[0-9]+$ ]] || die "--seconds needs a number"; limit=(-max_total_time="$2"); shift 2 ;;
    --runs) [[ ${2:-} =~ ^[0-9]+$ ]] || die "--runs needs a number"; limit=(-runs="$2"); shift 2 ;;
    -h|--help) sed -n '2,18s/^# \{0,1\}//p' "$0"; exit 0 ;;
    -*) die "unknown option $1" ;;
    *)
      [[ " ${ALL_TARGETS[*]} " == *" $1 "* ]] || die "unknown target $1 (targets: ${ALL_TARGETS[*]})"
      targets+=("$1"); shift ;;
  esac
done
[[ ${#targets[@]} -gt 0 ]] || targets=("${ALL_TARGETS[@]}")

dir=${FUZZ_BUILD_DIR:-build-fuzz}
export CC=${CC:-clang} CXX=${CXX:-clang++}
command -v "$CXX" >/dev/null 2>&1 || die "$CXX not found (scripts/install-deps.sh installs clang)"

# Warnings are the gcc build's business (scripts/build.sh, -Werror); a
# newer clang's new warnings must not stop the fuzzing.
echo "fuzz: configuring $dir ($CXX)"
cmake -S "$ROOT" -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPORCUPINE_FUZZ=ON -DPORCUPINE_WERROR=OFF >/dev/null
echo "fuzz: building ${targets[*]}"
cmake --build "$dir" -j"${FUZZ_JOBS:-$(nproc)}" --target "${targets[@]}" >"$dir/fuzz-build.log" 2>&1 || {
  tail -n 40 "$dir/fuzz-build.log" >&2
  die "build failed (log: $dir/fuzz-build.log)"
}

failed=0
for t in "${targets[@]}"; do
  run="$dir/fuzz-run/$t"
  rm -rf "$run"
  mkdir -p "$run/corpus"
  cp tests/fuzz/corpus/"$t"/* "$run/corpus/"
  dict=()
  [[ -f tests/fuzz/$t.dict ]] && dict=(-dict="tests/fuzz/$t.dict")
  log="$run/fuzz.log"
  start=$SECONDS
  set +e
  "$dir/tests/fuzz/$t" "${limit[@]}" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    -artifact_prefix="$run/" "${dict[@]}" "$run/corpus" >"$log" 2>&1
  rc=$?
  set -e
  elapsed=$((SECONDS - start))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  [[ -n $execs ]] || execs=$(grep -oE '^#[0-9]+' "$log" | tail -n 1 | tr -d '#')
  inputs=$(find "$run/corpus" -type f | wc -l)
  if [[ $rc == 0 ]]; then
    echo "fuzz: $t: ${execs:-?} executions in ${elapsed} s, no crash (corpus: $inputs inputs)"
  else
    failed=1
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n 1)
    echo "fuzz: $t: FAILED (exit $rc) after ${execs:-?} executions in ${elapsed} s; input: ${artifact:-none saved}; log: $log"
    grep -E '^(==[0-9]+==ERROR|SUMMARY|fuzz check failed|.*runtime error)' "$log" | head -n 5 | sed 's/^/fuzz:   /'
  fi
done
exit "$failed"
