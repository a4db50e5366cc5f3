#!/usr/bin/env bash
# demo.sh - install dependencies, build, and show a mail cluster at work.
#
#   scripts/demo.sh [--nodes N] [--subnet K] [--sim] [--sim-only]
#
# Starts a real cluster of N (default 3) nodes on 127.0.K.1..N (K default
# 1) with scripts/porcupine-local. Every node is the same full stack:
# Postfix (SMTP on :10025) with porcupine-milter, Dovecot with the porcupine
# plugin (IMAP :10143, POP3 :10110), porcupine-agent and its redis-server.
# Then: users are created; mail is sent by SMTP to node 1 (an unknown
# recipient is refused at RCPT); it is read by IMAP on node 2 and by POP3
# on node 3; node 2 is killed with SIGKILL (every process of it); the mail
# stays readable and node 1 still takes mail; node 2 is restarted and
# rejoins. Each step is narrated with `porcupinectl status`. The cluster is
# left running, with the commands to use and stop it.
#
# --sim first shows the deterministic simulator's narrated run (5 simulated
# nodes through crashes, a partition and a join); --sim-only shows only it.
# PORCUPINE_SKIP_DEPS=1 skips the installation of packages.
set -euo pipefail
# SPDX-License-Identifier: MIT

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

nodes=3
subnet=1
sim=0
sim_only=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --nodes) nodes=$2; shift 2 ;;
    --subnet) subnet=$2; shift 2 ;;
    --sim) sim=1; shift ;;
    --sim-only) sim=1; sim_only=1; shift ;;
    -h|--help) sed -n '2,20s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "demo: unknown argument: $1" >&2; exit 2 ;;
  esac
done
if ! [[ $nodes =~ ^[0-9]+$ ]] || (( nodes < 3 || nodes > 20 )); then
  echo "demo: --nodes is 3..20" >&2
  exit 2
fi
if ! [[ $subnet =~ ^[0-9]+$ ]] || (( subnet < 1 || subnet > 254 )); then
  echo "demo: --subnet is 1..254" >&2
  exit 2
fi

if [[ ${PORCUPINE_SKIP_DEPS:-0} != 1 ]]; then
  bash scripts/install-deps.sh
fi
bash scripts/build.sh

build=${BUILD_DIR:-build}
if [[ $sim == 1 ]]; then
  echo
  echo "=== The simulator: 5 nodes through crashes, a partition and a join ==="
  "$build/cluster-agent/porcupine-sim" demo --nodes 5
  [[ $sim_only == 1 ]] && exit 0
fi

local_tool="python3 scripts/porcupine-local --build $build"
ctl() { $local_tool ctl "$@"; }
step() { echo; echo "=== $* ==="; }
addr() { echo "127.0.$subnet.$1"; }

# mail ACTION ARGS...: the SMTP, IMAP and POP3 clients of this demo
# (Python's smtplib, imaplib, poplib), printing what the servers answer.
mail() {
  python3 - "$subnet" "$@" <<'PY'
import imaplib, poplib, smtplib, sys, time
subnet, action, args = sys.argv[1], sys.argv[2], sys.argv[3:]
addr = lambda i: "127.0.%s.%s" % (subnet, i)
PASSWORDS = {"alice@example.org": "alice-secret", "bob@example.org": "bob-secret"}

def subject_and_trace(raw):
    head = raw.split(b"\r\n\r\n", 1)[0].decode(errors="replace").split("\r\n")
    pick = lambda name: next((h.split(":", 1)[1].strip() for h in head if h.lower().startswith(name + ":")), "?")
    return pick("subject"), pick("x-porcupine-accepted-by")

if action == "send":  # send NODE SUBJECT RCPT...
    node, subject, rcpts = args[0], args[1], args[2:]
    msg = ("From: demo@outside.example\r\nTo: %s\r\nSubject: %s\r\n\r\nHello from the demo: %s.\r\n"
           % (", ".join(rcpts), subject, subject)).encode()
    with smtplib.SMTP(addr(node), 10025, timeout=30) as s:
        s.ehlo("demo.client")
        s.mail("demo@outside.example")
        ok = []
        for r in rcpts:
            code, text = s.rcpt(r)
            print("  RCPT TO:<%s>  ->  %d %s" % (r, code, text.decode()))
            if code == 250:
                ok.append(r)
        if ok:
            code, text = s.data(msg)
            print("  DATA \"%s\"  ->  %d %s" % (subject, code, text.decode()))
elif action == "wait":  # wait NODE USER COUNT: until IMAP shows COUNT messages
    node, user, count = args[0], args[1], int(args[2])
    deadline = time.time() + 60
    while time.time() < deadline:
        m = imaplib.IMAP4(addr(node), 10143, timeout=30)
        m.login(user, PASSWORDS[user])
        n = int(m.select("INBOX", readonly=True)[1][0])
        m.logout()
        if n >= count:
            break
        time.sleep(0.5)
    else:
        sys.exit("demo: %s has %d messages, not %d" % (user, n, count))
elif action == "imap":  # imap NODE USER
    node, user = args
    m = imaplib.IMAP4(addr(node), 10143, timeout=30)
    m.login(user, PASSWORDS[user])
    typ, data = m.select("INBOX", readonly=True)
    print("  IMAP %s:10143 LOGIN %s, SELECT INBOX: %s messages" % (addr(node), user, data[0].decode()))
    typ, data = m.uid("FETCH", "1:*", "(BODY.PEEK[HEADER])")
    for d in data:
        if isinstance(d, tuple):
            uid = d[0].decode().split("UID ")[1].split()[0]
            subject, trace = subject_and_trace(d[1])
            print("    UID %-3s %-34s accepted by %s" % (uid, subject, trace))
    m.logout()
elif action == "pop3":  # pop3 NODE USER
    node, user = args
    p = poplib.POP3(addr(node), 10110, timeout=30)
    p.user(user)
    p.pass_(PASSWORDS[user])
    count, size = p.stat()
    print("  POP3 %s:10110 USER %s, STAT: %d messages, %d bytes" % (addr(node), user, count, size))
    for n in range(1, count + 1):
        raw = b"\r\n".join(p.top(n, 0)[1])
        print("    %-3d %s" % (n, subject_and_trace(raw)[0]))
    p.quit()
PY
}

step "Starting $nodes nodes on $(addr 1)..$nodes: Postfix + milter, Dovecot + plugin, agent, Redis on each"
$local_tool stop >/dev/null 2>&1 || true
$local_tool start "$nodes" --subnet "$subnet" --with dovecot,milter,postfix --domains example.org
$local_tool wait-converged --timeout 30
$local_tool status
ctl 1 status

step "Creating users alice and bob (from nodes 1 and 2: any node will do)"
ctl 1 user add alice@example.org --password alice-secret
ctl 2 user add bob@example.org --password bob-secret
ctl 3 user list

step "SMTP to node 1 ($(addr 1):10025): three messages, and one unknown recipient"
for n in 1 2 3; do
  mail send 1 "Hello Alice, message $n" alice@example.org
done
mail send 1 "For Bob, and for nobody" bob@example.org nobody@example.org
echo "  (the milter asked the cluster at RCPT TO: nobody@example.org is no user, so 550 5.1.1;"
echo "   Postfix then handed the accepted message to node 1's Dovecot over LMTP, into the cluster)"
mail wait 2 alice@example.org 3
mail wait 2 bob@example.org 1

step "IMAP on node 2 and POP3 on node 3: the same mailboxes"
mail imap 2 alice@example.org
mail pop3 3 alice@example.org
mail pop3 3 bob@example.org

step "Killing node 2 with SIGKILL: its Postfix, milter, Dovecot, agent and Redis"
$local_tool kill 2 --all
start=$EPOCHREALTIME
$local_tool wait-converged --timeout 30
echo "  the other nodes noticed and reconfigured in $(python3 -c "print(round($EPOCHREALTIME - $start, 2))") s"
ctl 1 status

step "Every message is still readable (each is stored on 2 nodes), and node 1 still takes mail"
mail imap 3 alice@example.org
mail send 1 "Hello Alice, sent while node 2 is down" alice@example.org
mail wait 3 alice@example.org 4
mail pop3 1 alice@example.org

step "Restarting node 2: it rejoins and serves every message again"
$local_tool restart 2
$local_tool wait-converged --timeout 30
ctl 2 status
mail imap 2 alice@example.org

logs=${PORCUPINE_LOCAL_DIR:-/tmp/porcupine-local}
cat <<EOF

=== The cluster is still running ===
  python3 scripts/porcupine-local status
  python3 scripts/porcupine-local ctl 1 status
  swaks --server $(addr 1):10025 --to alice@example.org      # SMTP on any node
  python3 -c 'import imaplib; m = imaplib.IMAP4("$(addr 3)", 10143); m.login("alice@example.org", "alice-secret"); print(m.select("INBOX"))'
  python3 scripts/porcupine-local ctl 2 mail list alice@example.org
  python3 scripts/porcupine-local kill 2 --all ; python3 scripts/porcupine-local restart 2
  python3 scripts/porcupine-local stop          # stops every process it started
(nodes 1..$nodes on 127.0.$subnet.1..$nodes: SMTP 10025, IMAP 10143, POP3 10110;
 data and logs under $logs/n<i>: postfix/postfix.log, milter.log, dovecot/dovecot.log, agent.log)
EOF
