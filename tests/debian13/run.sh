#!/usr/bin/env bash
# run.sh - the Debian 13 (trixie) part of the test suite: the product
# built against Dovecot 2.4 and Postfix 3.10 and tested there, on a
# Debian 12 machine, in a Debian 13 root filesystem made from Debian's own
# packages.
#
#   tests/debian13/run.sh [--shell]
#
# 1. The root: mmdebstrap of trixie (variant apt), then the project's own
#    scripts/install-deps.sh inside it: the README's dependency step, run
#    on Debian 13. That base is kept in $PORCUPINE_DEBIAN13_BASE (default
#    /var/cache/porcupine/debian13-root) and made again when
#    install-deps.sh changes or it is older than
#    $PORCUPINE_DEBIAN13_MAX_AGE_DAYS (7). Each run works in an overlay
#    of it (a fresh upper layer, thrown away at the end), so nothing a run
#    leaves behind reaches the next: keeping it is safe.
# 2. Inside, with the source tree mounted read-only at /src: install-deps.sh
#    again (quick: a no-op unless the list grew), a build of the shipped
#    programs into /build13, and ctest's Dovecot, IMAP and SMTP
#    end-to-end tests there (the same tests as on Debian 12, real Dovecot
#    2.4, Postfix 3.10 and Redis 8 processes on 127.0.K.i).
#    Then a cluster of both (tests/e2e/mixed_test.py, from this side):
#    two nodes on this machine's Dovecot 2.3 with $BUILD_DIR's plugin
#    (default build/), two in the root on Dovecot 2.4 with /build13's.
# 3. The Debian packages built there (tests/packaging/build_packages.sh)
#    and ctest's packaging tests (contents, Depends on Dovecot 2.4's ABI,
#    maintainer scripts, install/remove/purge with dpkg, lintian); then
#    tests/debian13/install_test.py installs them with apt in the root,
#    checks the example configuration with doveconf, and that apt refuses
#    the Debian 12 packages ($BUILD_DIR/packages/current) there.
#
# The network is the machine's (loopback only is used by the tests; the
# root needs the Debian mirror this machine's apt uses, or
# $PORCUPINE_DEBIAN13_MIRROR, to be made).
# Processes left in the root are killed and every mount is undone on exit.
# Prints ctest's summary lines; exit status 0 when every test passed.
# On a Debian 13 machine it does nothing (exit 0): the main run is there.
# --shell: instead of the tests, a shell in the prepared root.
set -euo pipefail
# SPDX-License-Identifier: MIT

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
host_build=${BUILD_DIR:-build}
[[ $host_build == /* ]] || host_build="$ROOT/$host_build"
base=${PORCUPINE_DEBIAN13_BASE:-/var/cache/porcupine/debian13-root}
# The Debian mirror this machine's apt uses (its main archive, not the
# security one), so the root comes from where this machine's packages do.
host_mirror() {
  local uri
  uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
        awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }')
  if [[ -z $uri ]]; then
    uri=$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }' \
          /etc/apt/sources.list 2>/dev/null | head -n 1)
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}
mirror=${PORCUPINE_DEBIAN13_MIRROR:-$(host_mirror)}
max_age_days=${PORCUPINE_DEBIAN13_MAX_AGE_DAYS:-7}
shell=0
for arg in "$@"; do
  case $arg in
    --shell) shell=1 ;;
    -h|--help) sed -n '2,37s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "debian13: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

say() { echo "debian13: $*"; }
die() { echo "debian13: error: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "must run as root (chroot, mounts)"
. /etc/os-release
if [[ ${VERSION_ID:-} == 13 ]]; then
  say "this machine is Debian 13 already: its own test run covers it"
  exit 0
fi

# ---- the kept base root ----
stamp_want="$(sha256sum "$ROOT/scripts/install-deps.sh" | cut -d' ' -f1) $mirror"
fresh=0
if [[ -f $base/.porcupine-stamp && $(head -n 1 "$base/.porcupine-stamp") == "$stamp_want" ]] &&
   [[ -n $(find "$base/.porcupine-stamp" -mtime "-$max_age_days" 2>/dev/null) ]]; then
  say "reusing the Debian 13 root $base ($(sed -n 2p "$base/.porcupine-stamp"))"
else
  fresh=1
fi

# Mounts and processes under a root, undone by undo_root.
mounted=()
mount_in() {  # mount_in TARGET MOUNT-ARGS...
  local target=$1
  shift
  mkdir -p "$target"
  mount "$@" "$target"
  mounted+=("$target")
}
kill_root_processes() {  # every process whose root directory is under $1
  local r=$1 pid link killed=0
  for link in /proc/[0-9]*/root; do
    pid=${link#/proc/}
    pid=${pid%/root}
    if [[ $(readlink "$link" 2>/dev/null) == "$r"* ]]; then
      kill -KILL "$pid" 2>/dev/null && killed=$((killed + 1))
    fi
  done
  if [[ $killed -gt 0 ]]; then
    say "killed $killed process(es) left in $r"
    sleep 1
  fi
}
undo_mounts() {
  local i
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
    umount -l "${mounted[$i]}" 2>/dev/null || true
  done
  mounted=()
}
enter_mounts() {  # the kernel file systems, resolv.conf and /src in root $1
  local r=$1
  mount_in "$r/proc" -t proc proc
  mount_in "$r/sys" -t sysfs sys
  mount_in "$r/dev" --rbind /dev
  mount --make-rslave "$r/dev"
  mount_in "$r/tmp" -t tmpfs -o mode=1777 tmp
  mount_in "$r/run" -t tmpfs -o mode=0755 run
  cp -L /etc/resolv.conf "$r/etc/resolv.conf"
  mount_in "$r/src" --bind "$ROOT"
  mount -o remount,ro,bind "$r/src"
}

work=""
cleanup() {
  if [[ -n $work ]]; then
    kill_root_processes "$work/root"
  fi
  undo_mounts
  if [[ -n $work ]]; then
    rm -rf "$work"
  fi
}
trap cleanup EXIT

if [[ $fresh == 1 ]]; then
  command -v mmdebstrap >/dev/null 2>&1 || die "mmdebstrap not found (bash scripts/install-deps.sh installs it)"
  say "making a Debian 13 root from $mirror (mmdebstrap; log: $base.log)"
  rm -rf "$base.new"
  mkdir -p "$(dirname "$base")"
  if ! mmdebstrap --variant=apt --include=ca-certificates,python3 trixie "$base.new" "$mirror" >"$base.log" 2>&1; then
    tail -n 30 "$base.log" >&2
    die "mmdebstrap failed"
  fi
  say "installing the project's dependencies in it (scripts/install-deps.sh)"
  enter_mounts "$base.new"
  if ! chroot "$base.new" bash /src/scripts/install-deps.sh; then
    kill_root_processes "$base.new"
    undo_mounts
    die "scripts/install-deps.sh failed in the Debian 13 root"
  fi
  kill_root_processes "$base.new"
  undo_mounts
  rm -f "$base.new/etc/resolv.conf"
  printf '%s\n%s\n' "$stamp_want" "made $(date -u +%Y-%m-%dT%H:%MZ), $(cat "$base.new/etc/debian_version")" \
    > "$base.new/.porcupine-stamp"
  rm -rf "$base"
  mv "$base.new" "$base"
fi

# ---- this run's root: an overlay of the base ----
work=$(mktemp -d /var/tmp/porcupine-debian13.XXXXXX)
mkdir -p "$work/upper" "$work/ovl" "$work/root"
mount_in "$work/root" -t overlay overlay -o "lowerdir=$base,upperdir=$work/upper,workdir=$work/ovl"
enter_mounts "$work/root"
in_root() { chroot "$work/root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; }
say "root: $(in_root cat /etc/debian_version), $(in_root dovecot --version | cut -d' ' -f1) Dovecot, $(in_root postconf -d -h mail_version) Postfix"

if [[ $shell == 1 ]]; then
  in_root bash -i || true
  exit 0
fi

start=$(date +%s)
in_root bash /src/scripts/install-deps.sh
say "building the shipped programs into /build13"
targets=$(sed -n '/^TARGETS = /,/[^\\]$/p' "$ROOT/debian/rules" | sed 's/^TARGETS = //; s/\\//g' | tr -s ' \n' '  ')
if ! in_root bash -c "cmake -S /src -B /build13 -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPORCUPINE_WERROR=ON >/build13.log 2>&1 &&
      nice cmake --build /build13 -j$(nproc) --target $targets porcupine_dovecot_settings porcupine_auth_lua >>/build13.log 2>&1"; then
  tail -n 40 "$work/root/build13.log" >&2
  die "the build failed in the Debian 13 root"
fi
say "built ($(( $(date +%s) - start )) s)"

failed=0
timeout=${PORCUPINE_TEST_TIMEOUT:-600}
say "end-to-end tests on Dovecot 2.4 and Postfix 3.10"
if ! in_root ctest --test-dir /build13 --output-on-failure -j2 --timeout "$timeout" \
     -R '^e2e\.(dovecot|imap|smtp)' > "$work/e2e.log" 2>&1; then
  failed=1
fi
grep -E '^[0-9]+% tests passed|tests? failed out of|Failed|\*\*\*' "$work/e2e.log" || true
[[ $failed == 0 ]] || { grep -B2 -A60 'Output from these tests are in' "$work/e2e.log" | head -n 200 >&2 || true;
                        tail -n 150 "$work/e2e.log" >&2; }

say "a cluster of Dovecot 2.3 (this machine) and 2.4 (the root) nodes (tests/e2e/mixed_test.py)"
if [[ ! -f $host_build/dovecot-plugin/lib20_porcupine_plugin.so ]]; then
  say "no plugin in $host_build: build there first (scripts/build.sh)"
  failed=1
elif ! timeout "$timeout" python3 "$ROOT/tests/e2e/mixed_test.py" --build "$host_build" --root "$work/root" \
       --root-build /build13 --subnet 60 > "$work/mixed.log" 2>&1; then
  failed=1
  tail -n 150 "$work/mixed.log" >&2
fi
grep -E '^(Ran|OK|FAILED)' "$work/mixed.log" 2>/dev/null || true

say "Debian 13 packages (tests/packaging/build_packages.sh)"
if ! in_root bash /src/tests/packaging/build_packages.sh /build13/packages; then
  failed=1
elif ! in_root ctest --test-dir /build13 --output-on-failure --timeout "$timeout" -R '^packaging\.' \
       > "$work/packaging.log" 2>&1; then
  failed=1
  tail -n 150 "$work/packaging.log" >&2
fi
grep -E '^[0-9]+% tests passed|tests? failed out of' "$work/packaging.log" 2>/dev/null || true

say "the packages installed with apt in the root (tests/debian13/install_test.py)"
mkdir -p "$work/root/tmp/debian12-debs"
cp "$host_build"/packages/current/*.deb "$work/root/tmp/debian12-debs/" 2>/dev/null ||
  say "no Debian 12 packages in $host_build/packages/current: the refusal is not checked"
if ! in_root python3 /src/tests/debian13/install_test.py --debs /build13/packages/current \
     --foreign /tmp/debian12-debs > "$work/install.log" 2>&1; then
  failed=1
  tail -n 80 "$work/install.log" >&2
fi
grep -E '^(Ran|OK|FAILED)' "$work/install.log" 2>/dev/null || true
say "done in $(( $(date +%s) - start )) s: $([[ $failed == 0 ]] && echo passed || echo FAILED)"
exit "$failed"
