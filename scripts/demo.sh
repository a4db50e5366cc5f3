#!/usr/bin/env bash
# demo.sh - install dependencies, build, and show a cluster at work.
#
#   scripts/demo.sh [porcupine-sim demo args...]
#
# Runs the deterministic simulator's narrated demo: a cluster of $NODES
# (default 5) nodes accepts and serves mail while nodes crash and recover,
# the network partitions and heals, and a new node joins. Extra arguments
# are passed to `porcupine-sim demo` (e.g. --seed N).
#
# When the agent daemon lands, a real-process cluster (Postfix, Dovecot,
# agent and Redis per node on 127.0.1.N) replaces this simulated one.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

if [[ ${PORCUPINE_SKIP_DEPS:-0} != 1 ]]; then
  bash scripts/install-deps.sh
fi
bash scripts/build.sh

sim="${BUILD_DIR:-build}/cluster-agent/porcupine-sim"
if [[ ! -x $sim ]]; then
  echo "demo: $sim was not built" >&2
  exit 1
fi
exec "$sim" demo --nodes "${NODES:-5}" "$@"
