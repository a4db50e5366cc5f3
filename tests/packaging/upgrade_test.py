#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Install, upgrade from the previous release, remove and purge the real
packages with dpkg in a root where this machine's Postfix, Dovecot, Redis
and libraries are installed (packaging/README.md, "Upgrades and removal").

Usage: upgrade_test.py --packages DIR [unittest args]

DIR is what tests/packaging/build_packages.sh made: DIR/previous/*.deb
(the last release) and DIR/current/*.deb (this tree). The root is an
overlay of this machine's own / (read-only below, a tmpfs above) in a
private mount namespace, entered with chroot: dpkg sees this machine's
installed packages, so dependencies are really resolved, and adduser
really adds users, but nothing reaches this machine's files. Only the
service manager is missing: /run/systemd/system exists (so the maintainer
scripts act as under systemd), and `systemctl` is a stub in
/usr/local/sbin that records what it is asked to do and keeps which units
are "active"; deb-systemd-helper and deb-systemd-invoke are the real ones
(this machine's policy-rc.d is removed in the root). Needs root (mount namespaces, overlayfs); skipped (77)
without it or without the packages.
"""
import ctypes
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

PACKAGES = None
AGENT, MILTER, DOVECOT = "porcupine-agent", "porcupine-milter", "dovecot-porcupine"
UNITS = ["porcupine-agent.service", "porcupine-redis.service", "porcupine-milter.service"]
CLONE_NEWNS = 0x00020000

# systemctl without a service manager: enabled means a link in a .wants
# directory (what deb-systemd-helper and `systemctl enable` make), active
# means a file in /run/stub-active; every action is recorded, without its
# options, in /var/log/stub-calls.log. deb-systemd-invoke (the real one)
# asks it is-enabled and is-active before it starts or restarts a unit.
SYSTEMCTL = r"""#!/bin/sh
log=/var/log/stub-calls.log
state=/run/stub-active
mkdir -p "$state"
args=""
for a in "$@"; do
  case $a in --*|-q) ;; *) args="$args $a" ;; esac
done
set -- $args
action=$1; shift
case $action in
is-enabled)
  if ls /etc/systemd/system/*.wants/"$1" >/dev/null 2>&1; then echo enabled; exit 0; fi
  echo disabled; exit 1 ;;
is-active)
  [ -e "$state/$1" ] ;;
start|restart)
  echo "systemctl $action $*" >> "$log"
  for u in "$@"; do touch "$state/$u"; done ;;
try-restart)
  echo "systemctl $action $*" >> "$log" ;;
enable)
  echo "systemctl $action $*" >> "$log"
  mkdir -p /etc/systemd/system/multi-user.target.wants
  for u in "$@"; do ln -sf "/lib/systemd/system/$u" "/etc/systemd/system/multi-user.target.wants/$u"; done ;;
stop)
  echo "systemctl $action $*" >> "$log"
  for u in "$@"; do rm -f "$state/$u"; done ;;
*)
  echo "systemctl $action $*" >> "$log" ;;
esac
exit 0
"""


def skip(why):
    print("upgrade_test: skipped: " + why, file=sys.stderr)
    sys.exit(77)


def run(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


class Root:
    """The overlay root, mounted in this process's own mount namespace."""

    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="porcupine-upgrade-")
        rw, self.path = os.path.join(self.tmp, "rw"), os.path.join(self.tmp, "root")
        os.makedirs(rw)
        os.makedirs(self.path)
        run("mount", "-t", "tmpfs", "-o", "size=2g,mode=0755", "porcupine-upgrade", rw)
        os.makedirs(os.path.join(rw, "upper"))
        os.makedirs(os.path.join(rw, "work"))
        run("mount", "-t", "overlay", "porcupine-upgrade", "-o",
            "lowerdir=/,upperdir=%s/upper,workdir=%s/work" % (rw, rw), self.path)
        run("mount", "-t", "proc", "proc", self.p("/proc"))
        run("mount", "--rbind", "/dev", self.p("/dev"))
        run("mount", "-t", "tmpfs", "-o", "mode=0755", "run", self.p("/run"))
        run("mount", "-t", "tmpfs", "-o", "mode=1777", "tmp", self.p("/tmp"))
        os.makedirs(self.p("/run/systemd/system"))  # "systemd is running"
        os.makedirs(self.p("/run/lock"))
        with open(self.p("/usr/local/sbin/systemctl"), "w") as f:
            f.write(SYSTEMCTL)
        os.chmod(self.p("/usr/local/sbin/systemctl"), 0o755)
        if os.path.lexists(self.p("/usr/sbin/policy-rc.d")):
            os.remove(self.p("/usr/sbin/policy-rc.d"))
        # Nothing of a porcupine here before the test (this machine's own
        # users, if a developer made them, are not the packages').
        for pkg in (AGENT, MILTER, DOVECOT):
            if self.sh("dpkg-query -W -f '${Status}' %s 2>/dev/null || true" % pkg).strip().endswith(" installed"):
                raise unittest.SkipTest("%s is installed on this machine" % pkg)

    def p(self, path):
        return os.path.join(self.path, path.lstrip("/"))

    def sh(self, script, check=True):
        r = subprocess.run(["chroot", self.path, "/bin/sh", "-ec", script], capture_output=True, text=True,
                           stdin=subprocess.DEVNULL,
                           env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                                "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive", "HOME": "/root"})
        if check and r.returncode != 0:
            raise AssertionError("in the root: %s\n%s%s" % (script, r.stdout, r.stderr))
        return r.stdout

    def read(self, path):
        with open(self.p(path)) as f:
            return f.read()

    def write(self, path, text, mode="w"):
        os.makedirs(os.path.dirname(self.p(path)), exist_ok=True)
        with open(self.p(path), mode) as f:
            f.write(text)

    def stub_log(self):
        path = self.p("/var/log/stub-calls.log")
        lines = self.read("/var/log/stub-calls.log").splitlines() if os.path.exists(path) else []
        open(path, "w").close()
        return lines

    def calls(self):
        """What systemctl was asked to do since the last dpkg run."""
        return [l.rstrip() for l in self.read("/var/log/stub-calls.log").splitlines()]

    def active(self):
        d = self.p("/run/stub-active")
        return sorted(u for u in os.listdir(d) if u.startswith("porcupine-")) if os.path.isdir(d) else []

    def dpkg(self, *args):
        self.stub_log()
        return self.sh("dpkg --force-confdef --force-confold " + " ".join(args))

    def close(self):
        subprocess.run(["umount", "-R", self.path], capture_output=True)
        subprocess.run(["umount", "-R", os.path.join(self.tmp, "rw")], capture_output=True)
        shutil.rmtree(self.tmp, ignore_errors=True)


def tree_digest(root, paths):
    """A digest of the files (names, modes, contents) under each path."""
    h = hashlib.sha256()
    for top in paths:
        full = root.p(top)
        for d, dirs, files in sorted(os.walk(full)):
            dirs.sort()
            for f in sorted(files):
                fp = os.path.join(d, f)
                st = os.lstat(fp)
                h.update(("%s %o\n" % (os.path.relpath(fp, root.path), st.st_mode)).encode())
                if os.path.isfile(fp) and not os.path.islink(fp):
                    with open(fp, "rb") as fh:
                        h.update(fh.read())
    return h.hexdigest()


def version_of(deb):
    return run("dpkg-deb", "-f", deb, "Version").strip()


class Upgrade(unittest.TestCase):
    def setUp(self):
        self.prev = {os.path.basename(d).split("_")[0]: d for d in glob.glob(os.path.join(PACKAGES, "previous", "*.deb"))}
        self.cur = {os.path.basename(d).split("_")[0]: d for d in glob.glob(os.path.join(PACKAGES, "current", "*.deb"))}
        for s in (self.prev, self.cur):
            self.assertEqual(sorted(s), sorted([AGENT, MILTER, DOVECOT]), s)
        self.root = Root()
        self.addCleanup(self.root.close)
        os.makedirs(self.root.p("/tmp/debs/previous"))
        os.makedirs(self.root.p("/tmp/debs/current"))
        for kind, debs in (("previous", self.prev), ("current", self.cur)):
            for deb in debs.values():
                shutil.copy(deb, self.root.p("/tmp/debs/%s/" % kind))

    def status(self):
        out = self.root.sh("dpkg-query -W -f '${Package} ${Version} ${db:Status-Abbrev}\\n' "
                           "porcupine-agent porcupine-milter dovecot-porcupine 2>/dev/null || true")
        return {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}

    def test_InstallPrevious_UpgradeKeepsNodeConfigSecret_RemoveKeeps_PurgeRemovesOnlyOurs(self):
        r = self.root
        old, new = version_of(self.prev[AGENT]), version_of(self.cur[AGENT])
        self.assertEqual(subprocess.run(["dpkg", "--compare-versions", new, "gt", old]).returncode, 0,
                         "%s is not newer than %s" % (new, old))
        # The administrator's mail and the mail servers' configuration:
        # nothing of it may change, from install to purge.
        r.write("/var/mail/admin", "From admin@example.org  Sun Dec  6 10:00:00 2026\n\nkeep me\n")
        r.write("/home/admin/Maildir/cur/1.host:2,S", "Subject: keep me too\n\n")
        theirs = ["/var/mail", "/home", "/etc/postfix", "/etc/dovecot", "/var/spool/postfix"]
        before = tree_digest(r, theirs)
        find_ours = "find /etc /var /usr /lib -name '*porcupine*' ! -path '/usr/local/*' 2>/dev/null | sort || true"
        ours_before = r.sh(find_ours).split()

        # 1. The previous release, as a node runs it.
        r.dpkg("-i", *sorted("/tmp/debs/previous/" + os.path.basename(d) for d in self.prev.values()))
        st = self.status()
        for pkg in (AGENT, MILTER, DOVECOT):
            self.assertEqual(st[pkg], [old, "ii"], st)
        r.sh("getent passwd porcupine && getent passwd vmail")
        # The administrator configures and enables the node; it runs and
        # stores mail.
        r.write("/etc/porcupine/porcupine.conf", "\n# this node\nnode_id = 7\n", "a")
        conf = r.read("/etc/porcupine/porcupine.conf")
        secret = r.read("/etc/porcupine/secret")
        r.sh("systemctl enable porcupine-agent.service porcupine-milter.service")
        r.sh("systemctl start porcupine-redis.service porcupine-agent.service porcupine-milter.service")
        self.assertEqual(r.active(), sorted(UNITS))
        r.write("/var/lib/porcupine/spool/00/0000000000000001", "a message body")
        r.write("/var/lib/porcupine/redis/appendonly.aof", "*1\r\n$4\r\nPING\r\n")
        r.write("/var/lib/porcupine/dovecot/user/dovecot.index.log", "cache")
        data = tree_digest(r, ["/var/lib/porcupine"])

        # 2. Upgrade to this tree's packages.
        out = r.dpkg("-i", *sorted("/tmp/debs/current/" + os.path.basename(d) for d in self.cur.values()))
        log = r.calls()
        st = self.status()
        for pkg in (AGENT, MILTER, DOVECOT):
            self.assertEqual(st[pkg], [new, "ii"], st)
        self.assertEqual(r.read("/etc/porcupine/porcupine.conf"), conf, "the changed conffile was replaced")
        self.assertFalse(os.path.exists(r.p("/etc/porcupine/porcupine.conf.dpkg-old")))
        self.assertEqual(r.read("/etc/porcupine/secret"), secret, "the secret changed")
        self.assertEqual(oct(os.stat(r.p("/etc/porcupine/secret")).st_mode & 0o777), "0o600")
        self.assertEqual(tree_digest(r, ["/var/lib/porcupine"]), data, "the node's data changed")
        self.assertNotIn("new cluster secret", out)
        # Policy: a running daemon is restarted on the new binaries after
        # the upgrade, not stopped before it; the agent's Redis is left
        # running; the unit files are reloaded first.
        self.assertIn("systemctl daemon-reload", log)
        self.assertIn("systemctl restart porcupine-agent.service", log)
        self.assertIn("systemctl restart porcupine-milter.service", log)
        self.assertLess(log.index("systemctl daemon-reload"), log.index("systemctl restart porcupine-agent.service"))
        self.assertFalse([l for l in log if l.startswith("systemctl stop") or "porcupine-redis" in l], log)
        self.assertEqual(r.active(), sorted(UNITS))
        # dovecot-core's trigger on its module directory restarts Dovecot,
        # which loads the new plugin.
        self.assertIn("systemctl restart dovecot.service", log)
        # Enabled units stay enabled; the agent's Redis comes with it.
        for unit in ("porcupine-agent.service", "porcupine-milter.service"):
            self.assertTrue(os.path.islink(r.p("/etc/systemd/system/multi-user.target.wants/" + unit)), unit)
        self.assertEqual(r.sh("dpkg-query -W -f '${Conffiles}' porcupine-agent").split()[0],
                         "/etc/porcupine/porcupine.conf")
        # systemd-analyze verify of every unit, as installed (the real
        # programs at their paths, redis-server from this machine).
        units = [r.p("/lib/systemd/system/" + u) for u in UNITS]
        for u in units:
            self.assertTrue(os.path.exists(u), u)
        v = subprocess.run(["chroot", r.path, "systemd-analyze", "verify", "--man=no"]
                           + ["/lib/systemd/system/" + u for u in UNITS], capture_output=True, text=True)
        self.assertEqual((v.returncode, v.stdout + v.stderr), (0, ""), "systemd-analyze verify")

        # 3. Removal: the daemons stopped; configuration,
        # secret and data kept.
        r.dpkg("-r", MILTER, DOVECOT, AGENT)
        log = r.calls()
        st = self.status()
        for pkg in (AGENT, MILTER, DOVECOT):
            self.assertEqual(st.get(pkg, ["", "rc"])[1], "rc", st)
        for unit in UNITS:
            self.assertIn("systemctl stop " + unit, log)
        self.assertEqual(r.active(), [])
        self.assertFalse(os.path.exists(r.p("/usr/sbin/porcupine-agent")))
        self.assertEqual(r.read("/etc/porcupine/porcupine.conf"), conf)
        self.assertEqual(r.read("/etc/porcupine/secret"), secret)
        self.assertEqual(tree_digest(r, ["/var/lib/porcupine"]), data)

        # 4. Purge: what the packages made is gone, the administrator's
        # mail and the mail servers' configuration are as they were.
        r.dpkg("-P", MILTER, DOVECOT, AGENT)
        self.assertEqual(self.status(), {})
        for p in ("/etc/porcupine", "/var/lib/porcupine", "/run/porcupine",
                  "/var/lib/systemd/deb-systemd-helper-enabled/porcupine-agent.service.dsh-also",
                  "/etc/systemd/system/multi-user.target.wants/porcupine-agent.service",
                  "/etc/systemd/system/multi-user.target.wants/porcupine-milter.service",
                  "/etc/systemd/system/porcupine-agent.service"):
            self.assertFalse(os.path.lexists(r.p(p)), p)
        self.assertEqual(r.sh(find_ours).split(), ours_before, "files named *porcupine* left after purge")
        self.assertEqual(tree_digest(r, theirs), before, "the administrator's mail or configuration changed")
        # The system users stay, as Debian usually leaves them.
        r.sh("getent passwd porcupine && getent passwd vmail")

        # 5. A first install of this tree's packages (the users exist
        # now): a new secret and directories, nothing started.
        out = r.dpkg("-i", *sorted("/tmp/debs/current/" + os.path.basename(d) for d in self.cur.values()))
        log = r.calls()
        self.assertIn("new cluster secret", out)
        self.assertIn("smtpd_milters = unix:/run/porcupine/milter.sock", out)
        self.assertFalse([l for l in log if l.split()[1] in ("start", "restart", "enable") and "porcupine" in l], log)
        self.assertEqual(r.active(), [])
        self.assertEqual(oct(os.stat(r.p("/etc/porcupine/secret")).st_mode & 0o777), "0o600")
        self.assertNotEqual(r.read("/etc/porcupine/secret"), secret)
        r.dpkg("-P", MILTER, DOVECOT, AGENT)
        self.assertEqual(self.status(), {})
        self.assertFalse(os.path.exists(r.p("/var/lib/porcupine")))


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--packages" in args:
        i = args.index("--packages")
        PACKAGES = os.path.abspath(args[i + 1])
        del args[i:i + 2]
    if not PACKAGES or not glob.glob(os.path.join(PACKAGES, "current", "*.deb")) \
            or not glob.glob(os.path.join(PACKAGES, "previous", "*.deb")):
        skip("no packages in %s: run tests/packaging/build_packages.sh DIR first (scripts/test.sh does)" % PACKAGES)
    if os.geteuid() != 0:
        skip("needs root (a mount namespace and an overlay of /)")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS) != 0:
        skip("unshare(CLONE_NEWNS): %s" % os.strerror(ctypes.get_errno()))
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    unittest.main(argv=[sys.argv[0]] + args, verbosity=2)
