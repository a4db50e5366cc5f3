#!/usr/bin/env bash
# install-deps.sh - install everything needed to build, test and run the
# project on Debian 12 (bookworm) or 13 (trixie). The one place the
# dependency list lives.
#
# Run as root. Idempotent and non-interactive: safe to run again and again.
# apt-get's own output goes to a log file under /tmp; this script prints one
# line per phase, and the tail of the log if a phase fails.
#
# Dovecot is installed for the porcupine plugin and its end-to-end test;
# the system-wide dovecot service is stopped and disabled right after, so it
# does not hold ports 143/110 on 0.0.0.0 (each test runs its own instances).
set -euo pipefail
# SPDX-License-Identifier: MIT

# Build and test.
PACKAGES=(
  build-essential cmake pkg-config git python3 ca-certificates
  libgtest-dev libgmock-dev googletest
  libxxhash-dev
)
# Later parts of the product (agent daemon, milter), installed now so the
# list stays in one place.
PACKAGES+=(
  libboost-dev libboost-system-dev libboost-program-options-dev
  libhiredis-dev redis-server
  libprotobuf-dev protobuf-compiler
  libssl-dev
  libmilter-dev nlohmann-json3-dev libcrypt-dev
)
# The agent's Prometheus metrics endpoint (docs/monitoring.md).
PACKAGES+=(prometheus-cpp-dev)
# The Dovecot plugin (dovecot-plugin/) and its end-to-end test.
# On Dovecot 2.4 (Debian 13) users are checked through Dovecot's Lua
# passdb and userdb (dovecot-auth-lua) and the project's Lua module, built
# with Lua 5.4's headers (its interpreter for tests/debian13); Debian 12
# has these packages too.
PACKAGES+=(
  dovecot-dev dovecot-core dovecot-imapd dovecot-pop3d dovecot-lmtpd
  dovecot-auth-lua liblua5.4-dev lua5.4
)
# The evaluation (tests/bench/evaluate.py): plots, and CPU time and fsync
# counts of the measured processes.
PACKAGES+=(python3-matplotlib linux-perf)
# Postfix for every node's SMTP (porcupine-milter, scripts/porcupine-local),
# its end-to-end tests and the benchmark (smtp-source is in postfix).
PACKAGES+=(postfix)
# Debian packages (scripts/build-debs.sh: dpkg-buildpackage of debian/)
# and their tests (tests/packaging): debhelper, fakeroot, lintian, and a
# lint of the maintainer scripts.
PACKAGES+=(dpkg-dev debhelper fakeroot lintian shellcheck)
# The man pages' test renders them with groff and indexes them with
# lexgrog (tests/packaging/man_test.py).
PACKAGES+=(groff-base man-db)
# The fuzz targets (scripts/fuzz.sh): clang and its libFuzzer and
# sanitizer runtimes (libclang-rt-dev: on Debian 13 clang does not pull
# them in).
PACKAGES+=(clang libclang-rt-dev)
# The end-to-end check that nothing crosses between nodes in clear.
PACKAGES+=(tcpdump)
# The partition tests (tests/e2e/partition_test.py): a network namespace
# of their own (unshare, util-linux; ip, iproute2) and links cut in it.
PACKAGES+=(iptables iproute2 util-linux)
# mount(8), for the tests that give a node a small disk of its own (tmpfs);
# a minimal Debian 13 root lacks it. systemd for systemd-analyze (the
# packages' units are verified) and, with systemd-dev on Debian 13, the
# unit directory the packages install into (pkg-config systemd).
PACKAGES+=(mount systemd)
if [[ -r /etc/os-release ]] && . /etc/os-release && [[ ${VERSION_ID:-0} -ge 13 ]]; then
  PACKAGES+=(systemd-dev)
fi
# The Debian 13 part of the test suite (tests/debian13/run.sh) makes a
# trixie root filesystem from Debian's packages.
PACKAGES+=(mmdebstrap)

say() { echo "install-deps: $*"; }
die() { echo "install-deps: error: $*" >&2; exit 1; }

if [[ $(id -u) -ne 0 ]]; then
  die "must run as root (try: sudo bash scripts/install-deps.sh)"
fi
if ! command -v apt-get >/dev/null 2>&1; then
  die "apt-get not found: this script supports Debian 12 and 13 (or a Debian-like system) only"
fi

LOG=$(mktemp /tmp/porcupine-install-deps.XXXXXX.log)
export DEBIAN_FRONTEND=noninteractive

# run PHASE CMD... - run one phase quietly; on failure show why and stop.
run() {
  local phase=$1
  shift
  if ! "$@" >>"$LOG" 2>&1; then
    echo "install-deps: error: $phase failed; last lines of $LOG:" >&2
    tail -n 25 "$LOG" >&2
    exit 1
  fi
}

# Postfix: no system-wide configuration (each node writes its own).
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections

say "updating package lists (log: $LOG)"
run "apt-get update" apt-get update

say "installing ${#PACKAGES[@]} packages"
run "apt-get install" apt-get install -y --no-install-recommends \
  -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
  "${PACKAGES[@]}"

# Installing dovecot-core starts the system-wide service when an init
# system runs; the tests start their own instances on 127.0.K.i.
say "stopping the system-wide dovecot service"
if [[ -d /run/systemd/system ]]; then
  systemctl disable --now dovecot.socket dovecot.service >>"$LOG" 2>&1 || true
fi
service dovecot stop >>"$LOG" 2>&1 || true
update-rc.d dovecot disable >>"$LOG" 2>&1 || true

# Likewise Postfix: nothing system-wide holds port 25.
say "stopping the system-wide postfix service"
if [[ -d /run/systemd/system ]]; then
  systemctl disable --now postfix.service >>"$LOG" 2>&1 || true
fi
service postfix stop >>"$LOG" 2>&1 || true
update-rc.d postfix disable >>"$LOG" 2>&1 || true

say "ok"
