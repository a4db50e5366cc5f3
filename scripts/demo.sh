#!/usr/bin/env bash
# demo.sh - install dependencies, build, and show a cluster at work.
#
#   scripts/demo.sh [--nodes N] [--sim-only]
#
# 1. A real cluster of N (default 3) porcupine-agent processes, each with
#    its own redis-server, on 127.0.1.1..N (scripts/porcupine-local): users
#    are created, mail is delivered on node 1 and read on the others, a
#    node is killed with SIGKILL, the mail stays readable, the node comes
#    back and rejoins. The cluster is left running, with the commands to
#    use and stop it.
# 2. Before that, the deterministic simulator's narrated run: 5 simulated
#    nodes through crashes, a partition and a join (--sim-only: only this).
#
# Postfix and Dovecot join each node when the milter and the Dovecot plugin
# land; until then mail enters and leaves through porcupinectl.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

nodes=3
sim_only=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --nodes) nodes=$2; shift 2 ;;
    --sim-only) sim_only=1; shift ;;
    -h|--help) sed -n '2,17s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "demo: unknown argument: $1" >&2; exit 2 ;;
  esac
done
if ! [[ $nodes =~ ^[0-9]+$ ]] || (( nodes < 2 || nodes > 20 )); then
  echo "demo: --nodes is 2..20" >&2
  exit 2
fi

if [[ ${PORCUPINE_SKIP_DEPS:-0} != 1 ]]; then
  bash scripts/install-deps.sh
fi
bash scripts/build.sh

build=${BUILD_DIR:-build}
echo
echo "=== The simulator: 5 nodes through crashes, a partition and a join ==="
"$build/cluster-agent/porcupine-sim" demo --nodes 5
[[ $sim_only == 1 ]] && exit 0

local_tool="python3 scripts/porcupine-local --build $build"
ctl() { $local_tool ctl "$@"; }
step() { echo; echo "=== $* ==="; }

step "Starting $nodes nodes (agent + Redis each) on 127.0.1.1..$nodes"
$local_tool stop >/dev/null 2>&1 || true
$local_tool start "$nodes"
$local_tool wait-converged --timeout 30
ctl 1 status

step "Creating users on node 1, from node 2"
ctl 1 user add alice@example.org --password alice-secret
ctl 2 user add bob@example.org --password bob-secret
ctl 3 user list

step "Delivering 6 messages through node 1"
for i in 1 2 3 4 5 6; do
  printf 'From: demo@example.org\r\nTo: alice@example.org\r\nSubject: demo message %s\r\n\r\nHello Alice, this is message %s.\r\n' "$i" "$i" |
    ctl 1 mail deliver alice@example.org
done

step "Reading them on node 2 (list) and node 3 (fetch UID 3)"
ctl 2 mail list alice@example.org
ctl 3 mail fetch alice@example.org 3

step "Killing node 2 with SIGKILL"
$local_tool kill 2
start=$EPOCHREALTIME
$local_tool wait-converged --timeout 30
echo "the others reconfigured in $(python3 -c "print(round($EPOCHREALTIME - $start, 2))") s"
ctl 1 status

step "Every message is still readable (each is stored on 2 nodes)"
for uid in 1 2 3 4 5 6; do
  ctl 3 mail fetch alice@example.org "$uid" | grep Subject
done

step "Restarting node 2: it rejoins and rebuilds its state"
$local_tool restart 2
$local_tool wait-converged --timeout 30
ctl 2 status
ctl 2 mail list alice@example.org

cat <<EOF

=== The cluster is still running ===
  python3 scripts/porcupine-local status
  python3 scripts/porcupine-local ctl 1 status
  python3 scripts/porcupine-local ctl 3 mail list alice@example.org
  python3 scripts/porcupine-local kill 2 ; python3 scripts/porcupine-local restart 2
  python3 scripts/porcupine-local stop          # stops every process it started
(nodes 1..$nodes; logs and data under /tmp/porcupine-local)
EOF
