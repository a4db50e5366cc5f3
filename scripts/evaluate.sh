#!/usr/bin/env bash
# evaluate.sh - build, then run the whole evaluation (tests/bench/evaluate.py):
# real Postfix + Dovecot and real agents on this machine, the failure
# timeline, the simulator's scale-out with a calibrated cost model, and the
# sizing on paper. Writes results/<date>/report.md and its PNG plots.
#
#   scripts/evaluate.sh [--build DIR] [--quick] [--runs N] [--publish]
#
# --publish copies the report, its plots and results.json to docs/evaluation/.
# Runs as root (it starts Postfix and Dovecot instances of its own on
# 127.0.80.1 and agents on 127.0.81-84.x, and reads perf counters).
set -euo pipefail
# SPDX-License-Identifier: MIT
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BUILD="$ROOT/build"
PUBLISH=0
ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build) BUILD="$2"; shift 2 ;;
    --publish) PUBLISH=1; shift ;;
    --quick) ARGS+=(--quick); shift ;;
    --runs) ARGS+=(--runs "$2"); shift 2 ;;
    *) echo "evaluate.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
cmake -S "$ROOT" -B "$BUILD" >/dev/null
# Dovecot 2.4 builds also have the plugin's settings module and the Lua
# passdb's module (dovecot-plugin/README.md).
extra=()
for t in porcupine_dovecot_settings porcupine_auth_lua; do
  if cmake --build "$BUILD" --target help | grep -q "^\.\.\. $t\$"; then extra+=("$t"); fi
done
nice cmake --build "$BUILD" -j2 --target porcupine-agent porcupinectl porcupine-milter \
  porcupine-checkpassword porcupine_dovecot_plugin mail_load sim_eval fsync_rate "${extra[@]}" >/dev/null
OUT="$(/usr/bin/python3 "$ROOT/tests/bench/evaluate.py" --build "$BUILD" --out "$ROOT/results" "${ARGS[@]}" | tail -1)"
echo "report: $OUT/report.md"
if [[ $PUBLISH == 1 ]]; then
  mkdir -p "$ROOT/docs/evaluation"
  cp "$OUT"/report.md "$OUT"/*.png "$OUT"/results.json "$ROOT/docs/evaluation/"
  echo "copied to docs/evaluation/"
fi
