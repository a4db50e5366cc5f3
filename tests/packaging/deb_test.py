#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The Debian packages (debian/, packaging/README.md), as
dpkg-buildpackage built them (tests/packaging/build_packages.sh puts them
in BUILD/packages/current), inspected beside the build tree BUILD_DIR.

Usage: deb_test.py --build BUILD_DIR --debs DIR [unittest args]

Nothing is installed on this machine and no service is touched: the
packages are read with dpkg-deb, unpacked with `dpkg-deb -x` into a
temporary root, and their maintainer scripts are run against a temporary
root (DPKG_ROOT) with adduser, systemctl, deb-systemd-helper and friends
replaced by stubs that only record their arguments. With DPKG_ROOT set,
debhelper's snippets leave the service manager alone: starting, restarting
and stopping are checked by upgrade_test.py, in a root of their own.
Exits 77 (skipped) when DIR holds no packages.
"""
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BUILD = os.path.join(ROOT, "build")
DEBS = None

AGENT, MILTER, DOVECOT = "porcupine-agent", "porcupine-milter", "dovecot-porcupine"
# Where this release's packages keep systemd units (debian/rules asks
# pkg-config the same): /lib/systemd/system on Debian 12, /usr/lib/... on 13.
UNIT_DIR = (subprocess.run(["pkg-config", "--variable=systemdsystemunitdir", "systemd"], capture_output=True,
                           text=True).stdout.strip() or "/lib/systemd/system").lstrip("/")

# path in the package -> mode it must have (every entry is root:root).
EXPECTED_FILES = {
    AGENT: {
        "./usr/sbin/porcupine-agent": 0o755,
        "./usr/bin/porcupinectl": 0o755,
        "./usr/bin/porcupine-config-doc": 0o755,
        "./etc/porcupine/porcupine.conf": 0o644,
        "./%s/porcupine-agent.service" % UNIT_DIR: 0o644,
        "./%s/porcupine-redis.service" % UNIT_DIR: 0o644,
        "./usr/lib/tmpfiles.d/porcupine.conf": 0o644,
        "./usr/share/porcupine-agent/porcupine.conf": 0o644,
        "./usr/share/doc/porcupine-agent/configuration.md": 0o644,
        "./usr/share/doc/porcupine-agent/agent.md": 0o644,
        "./usr/share/doc/porcupine-agent/monitoring.md": 0o644,
        "./usr/share/porcupine-agent/grafana/porcupine-dashboard.json": 0o644,
        "./usr/share/man/man8/porcupine-agent.8.gz": 0o644,
        "./usr/share/man/man8/porcupinectl.8.gz": 0o644,
        "./usr/share/man/man5/porcupine.conf.5.gz": 0o644,
        "./usr/share/man/man1/porcupine-config-doc.1.gz": 0o644,
    },
    MILTER: {
        "./usr/sbin/porcupine-milter": 0o755,
        "./%s/porcupine-milter.service" % UNIT_DIR: 0o644,
        "./usr/share/porcupine-milter/main.cf.porcupine": 0o644,
        "./usr/share/doc/porcupine-milter/README.md": 0o644,
        "./usr/share/man/man8/porcupine-milter.8.gz": 0o644,
    },
    DOVECOT: {
        "./usr/lib/dovecot/modules/lib20_porcupine_plugin.so": 0o644,
        "./usr/share/dovecot-porcupine/90-porcupine.conf": 0o644,
        "./usr/share/doc/dovecot-porcupine/README.md": 0o644,
    },
}


def dovecot_release():
    """The Dovecot series the packages were built against ("2.3", "2.4"):
    dovecot-dev's, the same as the build's."""
    with open("/usr/include/dovecot/config.h") as f:
        return re.search(r'#define DOVECOT_ABI_VERSION "(\d+\.\d+)\.', f.read()).group(1)


# How users log in differs: 2.3's checkpassword program, 2.4's Lua passdb
# with its module, and the settings module 2.4's config process loads.
if dovecot_release() == "2.3":
    EXPECTED_FILES[DOVECOT]["./usr/lib/porcupine/porcupine-checkpassword"] = 0o755
else:
    EXPECTED_FILES[DOVECOT].update({
        "./usr/lib/dovecot/modules/settings/libporcupine_settings.so": 0o644,
        "./usr/lib/porcupine/porcupine_auth.so": 0o644,
        "./usr/share/porcupine/porcupine-auth.lua": 0o644,
    })
# What debhelper adds to each package (not in `cmake --install`): the
# machine-readable copyright and the changelog.
for _name, _files in EXPECTED_FILES.items():
    _files["./usr/share/doc/%s/copyright" % _name] = 0o644
    _files["./usr/share/doc/%s/changelog.gz" % _name] = 0o644
DEBHELPER_ADDED = re.compile(r"^\./usr/share/(doc/[^/]+/(copyright|changelog\.gz)|lintian/overrides/[^/]+)$")
SCRIPTS = {AGENT: ["postinst", "prerm", "postrm"], MILTER: ["postinst", "prerm", "postrm"],
           DOVECOT: ["postinst", "postrm"]}
UNITS = {AGENT: ["porcupine-agent.service", "porcupine-redis.service"], MILTER: ["porcupine-milter.service"]}

# Stand-ins for the commands maintainer scripts run. Each records its
# arguments in $STUB_LOG. getent and adduser share a user table, so a user
# added once is found the next time.
STUBS = {
    "adduser": r'''echo "adduser $*" >> "$STUB_LOG"
last=""; for a in "$@"; do last=$a; done
case " $* " in *" --system "*) echo "$last" >> "$STUB_USERS" ;; esac
''',
    "getent": r'''case $1 in
passwd) grep -qx "$2" "$STUB_USERS" ;;
group) [ "$2" = mail ] || grep -qx "$2" "$STUB_USERS" ;;
*) exit 2 ;;
esac
''',
    "chown": 'echo "chown $*" >> "$STUB_LOG"\n',
    # install -o/-g need the users to exist: record them, drop them.
    "install": r'''echo "install $*" >> "$STUB_LOG"
args=""
while [ $# -gt 0 ]; do
  case $1 in -o|-g) shift 2 ;; *) args="$args $1"; shift ;; esac
done
exec /usr/bin/install $args
''',
    "deb-systemd-helper": 'echo "deb-systemd-helper $*" >> "$STUB_LOG"\n'
                          '[ "$1" = --quiet ] && [ "$2" = was-enabled ] && exit 1\nexit 0\n',
    "deb-systemd-invoke": 'echo "deb-systemd-invoke $*" >> "$STUB_LOG"\n',
    "systemctl": 'echo "systemctl $*" >> "$STUB_LOG"\n',
    "systemd-tmpfiles": 'echo "systemd-tmpfiles $*" >> "$STUB_LOG"\n',
}


def read(path, mode="r"):
    with open(path, mode) as f:
        return f.read()


def run(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw).stdout


def control_fields(text):
    fields, key = {}, None
    for line in text.splitlines():
        m = re.match(r"^ ([A-Za-z-]+): ?(.*)$", line)
        if m:
            key = m.group(1)
            fields[key] = m.group(2)
        elif key and line.startswith("  "):
            fields[key] += "\n" + line.strip()
    return fields


def depends(fields):
    return [d.strip() for d in fields.get("Depends", "").split(",") if d.strip()]


def setUpModule():
    """Builds the packages once, into a temporary directory, and reads them."""
    P = Packages
    P.tmp = tempfile.mkdtemp(prefix="porcupine-deb-test-")
    out = DEBS
    P.arch = run("dpkg", "--print-architecture").strip()
    for name in (AGENT, MILTER, DOVECOT):
        found = [f for f in os.listdir(out) if f.startswith(name + "_") and f.endswith("_%s.deb" % P.arch)]
        assert len(found) == 1, "%s: %s in %s" % (name, found, os.listdir(out))
        deb = P.debs[name] = os.path.join(out, found[0])
        P.fields[name] = control_fields(run("dpkg-deb", "--info", deb))
        P.contents[name] = {}
        for line in run("dpkg-deb", "--contents", deb).splitlines():
            # -rwxr-xr-x root/root 12345 2026-11-24 23:00 ./usr/sbin/x
            parts = line.split(None, 5)
            path = parts[5].split(" -> ")[0]
            P.contents[name][path.rstrip("/") if path != "./" else path] = (parts[0], parts[1])
        P.roots[name] = os.path.join(P.tmp, "root-" + name)
        run("dpkg-deb", "-x", deb, P.roots[name])
        P.controls[name] = os.path.join(P.tmp, "control-" + name)
        run("dpkg-deb", "-e", deb, P.controls[name])


def tearDownModule():
    if Packages.tmp is None:
        return
    if os.environ.get("KEEP") == "1":
        print("kept", Packages.tmp)
    else:
        shutil.rmtree(Packages.tmp, ignore_errors=True)


class ServiceManagerCheck:
    def assertNoServiceManager(self, log):
        """Under DPKG_ROOT, debhelper's snippets neither start, restart nor
        stop a unit (upgrade_test.py checks what they do without it)."""
        self.assertFalse([l for l in log if l.startswith(("deb-systemd-invoke", "systemctl"))], log)


class Packages(unittest.TestCase):
    """What the three packages hold (filled by setUpModule)."""
    tmp = arch = None
    debs, fields, contents, roots, controls = {}, {}, {}, {}, {}

    # ---- names, versions, files -------------------------------------------
    def test_ThreePackages_SameVersion_ThisArchitecture(self):
        versions = {self.fields[n]["Version"] for n in self.fields}
        self.assertEqual(len(versions), 1, versions)
        version = versions.pop()
        self.assertRegex(version, r"^\d+\.\d+\.\d+$")  # native: no Debian revision
        # One version: debian/changelog's is the project's (CMakeLists.txt).
        self.assertEqual(version, run("dpkg-parsechangelog", "-l", os.path.join(ROOT, "debian/changelog"),
                                      "-S", "Version").strip())
        self.assertRegex(read(os.path.join(ROOT, "CMakeLists.txt")),
                         r"(?m)^project\(porcupine VERSION %s " % re.escape(version))
        maintainers = {f["Maintainer"] for f in self.fields.values()}
        self.assertEqual(maintainers, {re.search(r"(?m)^Maintainer: (.*)$",
                                                 read(os.path.join(ROOT, "debian/control"))).group(1)})
        self.assertNotIn("localhost", maintainers.pop())
        for name, f in self.fields.items():
            self.assertEqual(f["Package"], name)
            self.assertEqual(f["Architecture"], self.arch)
            self.assertEqual(f["Section"], "mail")

    def test_Contents_ExpectedFilesWithModes_OwnedByRoot(self):
        for name, expected in EXPECTED_FILES.items():
            contents = self.contents[name]
            for path, mode in expected.items():
                self.assertIn(path, contents, "%s lacks %s" % (name, path))
                perms, owner = contents[path]
                self.assertEqual(perms[0], "-", "%s %s is not a plain file" % (name, path))
                self.assertEqual(stat.S_IMODE(os.stat(os.path.join(self.roots[name], path)).st_mode), mode,
                                 "%s %s mode" % (name, path))
            for path, (perms, owner) in contents.items():
                self.assertEqual(owner, "root/root", "%s %s" % (name, path))
                self.assertFalse(path.startswith("./usr/local"), "%s %s" % (name, path))
                self.assertNotIn("/run/", path + "/", "%s ships %s (made at run time)" % (name, path))
        # Files no package may ship: generated at install, or data.
        every = set().union(*self.contents.values())
        for path in ("./etc/porcupine/secret", "./var/lib/porcupine"):
            self.assertNotIn(path, every)
        # No file is in two packages.
        for a in self.contents:
            for b in self.contents:
                if a < b:
                    files = {p for p, (perms, _) in self.contents[a].items() if perms[0] != "d"}
                    other = {p for p, (perms, _) in self.contents[b].items() if perms[0] != "d"}
                    self.assertEqual(files & other, set(), (a, b))

    def test_CmakeInstall_LaysOutThePackagesTree(self):
        """`cmake --install BUILD --prefix /usr` installs exactly the files
        of the three packages (the same install() rules)."""
        dest = os.path.join(self.tmp, "cmake-install")
        subprocess.run(["cmake", "--install", BUILD, "--prefix", "/usr"], env=dict(os.environ, DESTDIR=dest),
                       check=True, capture_output=True)
        installed = set()
        for top, dirs, files in os.walk(dest):
            for f in files:
                installed.add("./" + os.path.relpath(os.path.join(top, f), dest))
        packaged = {p for c in self.contents.values() for p, (perms, _) in c.items()
                    if perms[0] != "d" and not DEBHELPER_ADDED.match(p)}
        self.assertEqual(installed, packaged)

    def test_ManPages_CompressedAndRendered(self):
        """Every man page of the packages is in the directory of its section,
        gzip -9n'd as Debian's policy wants (no name, no time stamp), and
        man(1) renders the unpacked file without a warning."""
        pages = sorted((path, name) for name, c in self.contents.items()
                       for path, (perms, _) in c.items() if path.startswith("./usr/share/man/") and perms[0] != "d")
        self.assertEqual([p for p, _ in pages], sorted(p for files in EXPECTED_FILES.values() for p in files
                                                      if p.startswith("./usr/share/man/")))
        for path, name in pages:
            m = re.match(r"^\./usr/share/man/man(\d)/[^/]+\.(\d)\.gz$", path)
            self.assertTrue(m and m.group(1) == m.group(2), path)
            full = os.path.join(self.roots[name], path)
            data = read(full, "rb")
            self.assertEqual(data[:3], b"\x1f\x8b\x08", path)
            self.assertEqual((data[3] & 0x08, data[4:8], data[8]), (0, b"\0\0\0\0", 2), "%s: not gzip -9n" % path)
            r = subprocess.run(["man", "--warnings", "-l", full], capture_output=True, text=True,
                               env=dict(os.environ, MANPAGER="cat", PAGER="cat", MANWIDTH="80"))
            self.assertEqual((r.returncode, r.stderr), (0, ""), path)
            self.assertIn("SEE ALSO", r.stdout, path)

    def test_Conffiles_OnlyPorcupineConf(self):
        with open(os.path.join(self.controls[AGENT], "conffiles")) as f:
            self.assertEqual(f.read().split(), ["/etc/porcupine/porcupine.conf"])
        for name in (MILTER, DOVECOT):
            self.assertFalse(os.path.exists(os.path.join(self.controls[name], "conffiles")), name)
        # The shipped configuration is the example in packaging/etc.
        with open(os.path.join(ROOT, "packaging", "etc", "porcupine.conf")) as a, \
             open(os.path.join(self.roots[AGENT], "etc", "porcupine", "porcupine.conf")) as b:
            self.assertEqual(a.read(), b.read())

    # ---- dependencies -----------------------------------------------------
    def needed_packages(self, name):
        """Debian packages holding the shared libraries the package's ELF
        files need, found here with readelf, ldconfig and dpkg -S
        (independently of dpkg-shlibdeps)."""
        ldconfig = run("ldconfig", "-p")
        paths = {}
        for path in EXPECTED_FILES[name]:
            full = os.path.join(self.roots[name], path)
            if read(full, "rb")[:4] != b"\x7fELF":
                continue
            for lib in re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", run("readelf", "-d", full)):
                m = re.search(r"^\s*%s \([^)]*x86-64[^)]*\) => (\S+)" % re.escape(lib), ldconfig, re.M) or \
                    re.search(r"^\s*%s \(.*\) => (\S+)" % re.escape(lib), ldconfig, re.M)
                self.assertIsNotNone(m, "%s: %s needs %s, not found on this machine" % (name, path, lib))
                found = m.group(1)
                real = os.path.realpath(found)
                # dpkg knows a file by the path its package ships (/lib or /usr/lib).
                paths[lib] = {found, real, real.replace("/usr/lib/", "/lib/", 1), found.replace("/lib/", "/usr/lib/", 1)}
        every = sorted(set().union(*paths.values())) if paths else []
        r = subprocess.run(["dpkg", "-S"] + every, capture_output=True, text=True)
        owner_of = {}
        for line in r.stdout.splitlines():
            pkg, _, file = line.partition(": ")
            owner_of[file.strip()] = pkg.split(":")[0]
        owners = set()
        for lib, candidates in paths.items():
            pkgs = {owner_of[c] for c in candidates if c in owner_of}
            self.assertEqual(len(pkgs), 1, "%s: owner of %s (%s): %s" % (name, lib, candidates, pkgs))
            owners |= pkgs
        return owners

    def test_Depends_EveryNeededLibraryAndTheStack(self):
        version = self.fields[AGENT]["Version"]
        for name in (AGENT, MILTER, DOVECOT):
            deps = depends(self.fields[name])
            dep_names = {re.split(r"[ (]", d)[0] for d in deps}
            for pkg in self.needed_packages(name):
                self.assertIn(pkg, dep_names, "%s: Depends %s lacks %s" % (name, deps, pkg))
        agent = depends(self.fields[AGENT])
        for prefix in ("redis-server", "adduser", "libhiredis", "libprotobuf", "libboost-program-options",
                       "libssl"):
            self.assertTrue(any(d.startswith(prefix) for d in agent), "%s not in %s" % (prefix, agent))
        milter = depends(self.fields[MILTER])
        self.assertIn("porcupine-agent (= %s)" % version, milter)
        self.assertIn("postfix", milter)
        self.assertTrue(any(d.startswith("libmilter") for d in milter), milter)
        dovecot = depends(self.fields[DOVECOT])
        release = dovecot_release()
        major, minor = release.split(".")
        wanted = ["dovecot-core (>= 1:%s)" % release, "dovecot-core (<< 1:%s.%d)" % (major, int(minor) + 1),
                  "porcupine-agent (= %s)" % version]
        if release != "2.3":
            wanted.append("dovecot-auth-lua")  # the passdb of porcupine-auth.lua
        for d in wanted:
            self.assertIn(d, dovecot)
        # The plugin loads only into the Dovecot ABI it was built for.
        abi = re.search(r'#define DOVECOT_ABI_VERSION "([0-9.]+)\.ABIv(\d+)[("]', read("/usr/include/dovecot/config.h"))
        self.assertIn("dovecot-abi-%s.abiv%s" % abi.groups(), [d.lower() for d in dovecot])

    def test_Depends_SatisfiedBesideThisMachinesPostfixAndDovecot(self):
        """Each dependency names a package at a version this machine has
        installed, or the package of this set (dpkg --compare-versions)."""
        ours = {n: self.fields[n]["Version"] for n in self.fields}
        installed, provided = {}, set()
        for line in run("dpkg-query", "-W", "-f", "${Package}\t${Version}\t${Status}\t${Provides}\n").splitlines():
            pkg, version, status, provides = line.split("\t")
            if status.endswith("install ok installed"):
                installed.setdefault(pkg, []).append(version)
                provided |= {re.split(r"[ (]", p.strip())[0] for p in provides.split(",") if p.strip()}
        for name in (AGENT, MILTER, DOVECOT):
            for dep in depends(self.fields[name]):
                ok = False
                for alt in (a.strip() for a in dep.split("|")):
                    m = re.match(r"^([a-z0-9.+-]+)(?::any)?(?: \((<<|<=|=|>=|>>) ([^)]+)\))?$", alt)
                    self.assertIsNotNone(m, "%s: odd dependency %r" % (name, alt))
                    pkg, op, want = m.groups()
                    have = [ours[pkg]] if pkg in ours else installed.get(pkg, [])
                    if not have and not op and pkg in provided:
                        ok = True  # a virtual package (dovecot-abi-*) an installed one provides
                    for v in have:
                        if not op or subprocess.run(["dpkg", "--compare-versions", v,
                                                     {"<<": "lt", "<=": "le", "=": "eq", ">=": "ge", ">>": "gt"}[op],
                                                     want]).returncode == 0:
                            ok = True
                self.assertTrue(ok, "%s: %r is not satisfied on this machine" % (name, dep))

    # ---- what is inside ---------------------------------------------------
    def test_Programs_RunFromTheUnpackedTree(self):
        agent_root = self.roots[AGENT]
        out = run(os.path.join(agent_root, "usr/sbin/porcupine-agent"), "--print-defaults")
        self.assertRegex(out, r"(?m)^local_socket = /run/porcupine/agent.sock$")
        out = run(os.path.join(agent_root, "usr/bin/porcupine-config-doc"))
        self.assertIn("| `local_socket_group` |", out)
        # The shipped porcupine.conf is valid for the agent and the milter.
        conf = os.path.join(agent_root, "etc/porcupine/porcupine.conf")
        out = run(os.path.join(agent_root, "usr/sbin/porcupine-agent"), "--print-config", "-c", conf)
        self.assertRegex(out, r"(?m)^spool_directory = /var/lib/porcupine/spool$")
        r = subprocess.run([os.path.join(agent_root, "usr/bin/porcupinectl"), "--socket",
                            os.path.join(self.tmp, "no-agent.sock"), "status"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 4, r.stderr)  # the agent is unreachable
        for name in (AGENT, MILTER, DOVECOT):
            for path in EXPECTED_FILES[name]:
                full = os.path.join(self.roots[name], path)
                with open(full, "rb") as f:
                    if f.read(4) != b"\x7fELF":
                        continue
                dyn = run("readelf", "-d", full)
                self.assertNotRegex(dyn, r"R(UN)?PATH", "%s keeps a build RPATH" % path)
                self.assertNotIn(".debug_info", run("readelf", "-S", "-W", full), "%s is not stripped" % path)
                self.assertNotIn("not found", run("ldd", full), path)

    def test_DovecotPlugin_ExportsThisDovecotsAbiVersion(self):
        so = os.path.join(self.roots[DOVECOT], "usr/lib/dovecot/modules/lib20_porcupine_plugin.so")
        symbols = run("nm", "-D", "--defined-only", so).split()
        for sym in ("porcupine_plugin_init", "porcupine_plugin_deinit", "porcupine_plugin_version"):
            self.assertIn(sym, symbols)
        abi = re.search(r'#define DOVECOT_ABI_VERSION "([^"]+)"', read("/usr/include/dovecot/config.h")).group(1)
        self.assertIn(abi.encode(), read(so, "rb"))
        conf = read(os.path.join(self.roots[DOVECOT], "usr/share/dovecot-porcupine/90-porcupine.conf"))
        if dovecot_release() == "2.3":
            self.assertIn("args = /usr/lib/porcupine/porcupine-checkpassword", conf)
        else:
            # The example names what this package installs, where it does.
            for path in ("/usr/share/porcupine/porcupine-auth.lua", "/usr/lib/porcupine/porcupine_auth.so"):
                self.assertIn(path, conf)
                self.assertIn("." + path, self.contents[DOVECOT])
            settings = os.path.join(self.roots[DOVECOT], "usr/lib/dovecot/modules/settings/libporcupine_settings.so")
            symbols = run("nm", "-D", "--defined-only", settings).split()
            for sym in ("porcupine_settings_set_infos", "porcupine_settings_version"):
                self.assertIn(sym, symbols)
            self.assertIn(abi.encode(), read(settings, "rb"))
            auth = os.path.join(self.roots[DOVECOT], "usr/lib/porcupine/porcupine_auth.so")
            self.assertIn("luaopen_porcupine_auth", run("nm", "-D", "--defined-only", auth).split())
        # Not enabled: nothing under /etc/dovecot.
        self.assertFalse(any(p.startswith("./etc/") for p in self.contents[DOVECOT]), self.contents[DOVECOT].keys())

    def test_SystemdUnits_Verify(self):
        """systemd-analyze verify of every unit, with ExecStart pointing at
        the unpacked programs (the host does not have them installed); any
        diagnostic fails."""
        units = os.path.join(self.tmp, "units")
        os.makedirs(units, exist_ok=True)
        for name, names in UNITS.items():
            for unit in names:
                text = read(os.path.join(self.roots[name], UNIT_DIR, unit))
                if unit != "porcupine-redis.service":
                    self.assertIn(" -c /etc/porcupine/porcupine.conf", text)
                text = text.replace("/usr/sbin/", os.path.join(self.roots[name], "usr/sbin") + "/")
                with open(os.path.join(units, unit), "w") as f:
                    f.write(text)
        r = subprocess.run(["systemd-analyze", "verify", "--man=no"] +
                           sorted(os.path.join(units, u) for u in os.listdir(units)),
                           capture_output=True, text=True)
        self.assertEqual((r.returncode, r.stdout + r.stderr), (0, ""))
        # Sandboxed: own user, no privileges to gain, a read-only system;
        # systemd's own exposure score at most 2.0 of 10 (9.2 unsandboxed).
        for unit in sorted(os.listdir(units)):
            text = read(os.path.join(units, unit))
            for line in ("User=porcupine", "NoNewPrivileges=yes", "ProtectSystem=strict", "CapabilityBoundingSet=\n"):
                self.assertIn(line, text, unit)
            r = subprocess.run(["systemd-analyze", "security", "--offline=true", "--threshold=20", "--no-pager",
                                os.path.join(units, unit)], capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, unit + ": " + r.stdout[-600:] + r.stderr)
        tmpfiles = read(os.path.join(self.roots[AGENT], "usr/lib/tmpfiles.d/porcupine.conf"))
        self.assertRegex(tmpfiles, r"(?m)^d /run/porcupine 0755 porcupine porcupine -$")

    # ---- maintainer scripts -----------------------------------------------
    def test_MaintainerScripts_ShellSyntaxShellcheckAndModes(self):
        shellcheck = shutil.which("shellcheck")
        for name, scripts in SCRIPTS.items():
            present = sorted(f for f in os.listdir(self.controls[name]) if f in ("preinst", "postinst", "prerm", "postrm"))
            self.assertEqual(present, sorted(scripts), name)
            for script in scripts:
                path = os.path.join(self.controls[name], script)
                self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o755, path)
                self.assertTrue(read(path).startswith("#!/bin/sh\n"), path)
                subprocess.run(["sh", "-n", path], check=True)
                if shellcheck:
                    r = subprocess.run([shellcheck, "-s", "sh", path], capture_output=True, text=True)
                    self.assertEqual(r.returncode, 0, r.stdout)
        if not shellcheck:
            print("shellcheck not installed: maintainer scripts checked with sh -n only", file=sys.stderr)


class MaintainerScripts(ServiceManagerCheck, unittest.TestCase):
    """The maintainer scripts run against a temporary root (DPKG_ROOT),
    with every command that would change the system stubbed; the package
    files are laid out there first, as dpkg would."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="porcupine-deb-scripts-")
        self.root = os.path.join(self.tmp, "root")
        os.makedirs(os.path.join(self.root, "run/systemd/system"))  # "systemd is running"
        for name in (AGENT, MILTER, DOVECOT):
            run("cp", "-a", Packages.roots[name] + "/.", self.root)
        stubs = os.path.join(self.tmp, "stubs")
        os.makedirs(stubs)
        for cmd, body in STUBS.items():
            with open(os.path.join(stubs, cmd), "w") as f:
                f.write("#!/bin/sh\n" + body)
            os.chmod(os.path.join(stubs, cmd), 0o755)
        # postrm calls deb-systemd-helper only where it is installed.
        os.makedirs(os.path.join(self.root, "usr/bin"), exist_ok=True)
        shutil.copy(os.path.join(stubs, "deb-systemd-helper"), os.path.join(self.root, "usr/bin"))
        self.log = os.path.join(self.tmp, "log")
        self.users = os.path.join(self.tmp, "users")
        with open(self.users, "w") as f:
            f.write("dovecot\npostfix\n")  # from dovecot-core and postfix
        self.env = dict(os.environ, DPKG_ROOT=self.root, STUB_LOG=self.log, STUB_USERS=self.users,
                        PATH=stubs + ":" + os.environ["PATH"])

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def script(self, name, script, *args):
        open(self.log, "w").close()
        r = subprocess.run(["sh", "-e", os.path.join(Packages.controls[name], script)] + list(args),
                           env=self.env, capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, "%s %s %s: %s" % (name, script, args, r.stderr))
        return r.stdout, read(self.log).splitlines()

    def path(self, p):
        return os.path.join(self.root, p.lstrip("/"))

    def test_Agent_FirstInstall_UserDirsSecretNothingStarted(self):
        out, log = self.script(AGENT, "postinst", "configure")
        self.assertTrue(any(l.startswith("adduser --system --group") and l.endswith(" porcupine") for l in log), log)
        secret = self.path("/etc/porcupine/secret")
        self.assertEqual(stat.S_IMODE(os.stat(secret).st_mode), 0o600)
        self.assertGreaterEqual(len(read(secret).strip()), 32)
        self.assertIn("chown porcupine:porcupine %s.dpkg-new" % secret, log)
        for d, mode in (("/var/lib/porcupine", 0o755), ("/var/lib/porcupine/spool", 0o750),
                        ("/var/lib/porcupine/redis", 0o750)):
            self.assertEqual(stat.S_IMODE(os.stat(self.path(d)).st_mode), mode, d)
        # spool and redis are porcupine's; /var/lib/porcupine stays root's.
        owned = [l.split()[-1] for l in log if l.startswith("install -d -o porcupine -g porcupine")]
        self.assertEqual(owned, [self.path("/var/lib/porcupine/spool"), self.path("/var/lib/porcupine/redis")])
        self.assertIn("deb-systemd-helper update-state porcupine-agent.service", log)
        self.assertFalse([l for l in log if l.startswith("deb-systemd-invoke")], log)  # nothing started
        self.assertFalse([l for l in log if " enable " in l], log)
        self.assertIn("systemctl enable --now porcupine-agent", out)
        self.assertIn("new cluster secret", out)

    def test_Agent_Upgrade_KeepsSecretAndData_RestartsARunningAgent(self):
        self.script(AGENT, "postinst", "configure")
        secret = self.path("/etc/porcupine/secret")
        before = read(secret)
        with open(self.path("/var/lib/porcupine/spool/kept"), "w") as f:
            f.write("a message body")
        out, log = self.script(AGENT, "postinst", "configure", "0.1.0-1")
        self.assertEqual(read(secret), before)
        self.assertTrue(os.path.exists(self.path("/var/lib/porcupine/spool/kept")))
        self.assertNoServiceManager(log)
        self.assertFalse([l for l in log if l.startswith("adduser --system")], log)  # the user exists
        self.assertNotIn("new cluster secret", out)
        # An upgrade's prerm stops nothing.
        _, log = self.script(AGENT, "prerm", "upgrade", "0.1.0-2")
        self.assertEqual(log, [])

    def test_Agent_RemoveKeepsData_PurgeRemovesData(self):
        self.script(AGENT, "postinst", "configure")
        _, log = self.script(AGENT, "prerm", "remove")
        self.assertNoServiceManager(log)
        _, log = self.script(AGENT, "postrm", "remove")
        self.assertFalse([l for l in log if l.startswith("deb-systemd-helper purge")], log)  # only on purge
        for p in ("/etc/porcupine/secret", "/var/lib/porcupine/spool", "/var/lib/porcupine/redis"):
            self.assertTrue(os.path.exists(self.path(p)), p)
        # dpkg removes the conffile before postrm purge.
        os.remove(self.path("/etc/porcupine/porcupine.conf"))
        _, log = self.script(AGENT, "postrm", "purge")
        self.assertIn("deb-systemd-helper purge porcupine-redis.service", log)
        for p in ("/etc/porcupine/secret", "/var/lib/porcupine", "/etc/porcupine"):
            self.assertFalse(os.path.exists(self.path(p)), p)

    def test_Agent_SecretFileFromTheConfiguration(self):
        conf = self.path("/etc/porcupine/porcupine.conf")
        with open(conf, "a") as f:
            f.write("secret_file = /etc/porcupine/cluster.key\n")
        self.script(AGENT, "postinst", "configure")
        self.assertEqual(stat.S_IMODE(os.stat(self.path("/etc/porcupine/cluster.key")).st_mode), 0o600)
        self.assertFalse(os.path.exists(self.path("/etc/porcupine/secret")))

    def test_Milter_FirstInstallPrintsMainCfLines(self):
        self.script(AGENT, "postinst", "configure")
        out, log = self.script(MILTER, "postinst", "configure")
        self.assertIn("    smtpd_milters = unix:/run/porcupine/milter.sock", out)
        self.assertIn("    milter_default_action = tempfail", out)
        self.assertFalse([l for l in log if "postconf" in l or l.startswith("deb-systemd-invoke")], log)
        self.assertIn("deb-systemd-helper update-state porcupine-milter.service", log)
        _, log = self.script(MILTER, "postinst", "configure", "0.1.0-1")
        self.assertNoServiceManager(log)
        _, log = self.script(MILTER, "prerm", "remove")
        self.assertNoServiceManager(log)

    def test_Dovecot_VmailUserCacheDirSocketGroup_PurgeRemovesCache(self):
        self.script(AGENT, "postinst", "configure")
        out, log = self.script(DOVECOT, "postinst", "configure")
        self.assertTrue(any(l.startswith("adduser --system") and l.endswith(" vmail") for l in log), log)
        self.assertIn("adduser --quiet dovecot mail", log)
        self.assertIn("adduser --quiet vmail mail", log)
        cache = self.path("/var/lib/porcupine/dovecot")
        self.assertEqual(stat.S_IMODE(os.stat(cache).st_mode), 0o750)
        self.assertIn("cp /usr/share/dovecot-porcupine/90-porcupine.conf /etc/dovecot/conf.d/", out)
        self.assertFalse(os.path.exists(self.path("/etc/dovecot")))
        # local_socket_group changed by the operator: that group is joined.
        with open(self.users, "a") as f:
            f.write("mailcluster\n")
        with open(self.path("/etc/porcupine/porcupine.conf"), "a") as f:
            f.write("local_socket_group = mailcluster\n")
        _, log = self.script(DOVECOT, "postinst", "configure", "0.1.0-1")
        self.assertIn("adduser --quiet dovecot mailcluster", log)
        self.assertNotIn("adduser --quiet dovecot mail", log)
        with open(os.path.join(cache, "cached"), "w") as f:
            f.write("x")
        self.script(DOVECOT, "postrm", "remove")
        self.assertTrue(os.path.exists(os.path.join(cache, "cached")))
        self.script(DOVECOT, "postrm", "purge")
        self.assertFalse(os.path.exists(cache))
        self.assertTrue(os.path.exists(self.path("/var/lib/porcupine/spool")))  # the agent's data stays


class DpkgRoot(ServiceManagerCheck, unittest.TestCase):
    """dpkg itself installs, reinstalls (dpkg's upgrade path: prerm upgrade,
    postinst configure OLD-VERSION), removes and purges the packages in a
    temporary root (`dpkg --root`, maintainer scripts run with DPKG_ROOT
    and the stubs first in PATH). Dependencies are not installed there
    (--force-depends), so the agent goes first, as apt would order it."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="porcupine-deb-dpkg-")
        self.root = os.path.join(self.tmp, "root")
        for d in ("var/lib/dpkg/updates", "var/lib/dpkg/info", "run/systemd/system", "usr/bin"):
            os.makedirs(os.path.join(self.root, d))
        open(os.path.join(self.root, "var/lib/dpkg/status"), "w").close()
        stubs = os.path.join(self.tmp, "stubs")
        os.makedirs(stubs)
        for cmd, body in STUBS.items():
            with open(os.path.join(stubs, cmd), "w") as f:
                f.write("#!/bin/sh\n" + body)
            os.chmod(os.path.join(stubs, cmd), 0o755)
        shutil.copy(os.path.join(stubs, "deb-systemd-helper"), os.path.join(self.root, "usr/bin"))
        self.log = os.path.join(self.tmp, "log")
        self.users = os.path.join(self.tmp, "users")
        with open(self.users, "w") as f:
            f.write("dovecot\npostfix\n")
        self.env = dict(os.environ, STUB_LOG=self.log, STUB_USERS=self.users,
                        PATH=stubs + ":" + os.environ["PATH"])

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def dpkg(self, *args):
        open(self.log, "w").close()
        r = subprocess.run(["dpkg", "--root=" + self.root, "--force-script-chrootless", "--force-depends",
                            "--force-not-root", "--force-confold", "--log=" + os.path.join(self.tmp, "dpkg.log")]
                           + list(args), env=self.env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        self.assertEqual(r.returncode, 0, "dpkg %s: %s%s" % (args, r.stdout, r.stderr))
        return r.stdout, read(self.log).splitlines()

    def path(self, p):
        return os.path.join(self.root, p.lstrip("/"))

    def test_InstallReinstallRemovePurge_ConfigAndDataKeptUntilPurge(self):
        debs = Packages.debs
        self.dpkg("-i", debs[AGENT])
        self.dpkg("-i", debs[MILTER], debs[DOVECOT])
        status = run("dpkg-query", "--admindir=" + self.path("/var/lib/dpkg"), "-W",
                     "-f", "${Package} ${Status}\n")
        for name in (AGENT, MILTER, DOVECOT):
            self.assertIn("%s install ok installed" % name, status)
        for p in ("/usr/sbin/porcupine-agent", "/usr/lib/dovecot/modules/lib20_porcupine_plugin.so",
                  "/etc/porcupine/secret", "/var/lib/porcupine/spool", "/var/lib/porcupine/dovecot"):
            self.assertTrue(os.path.exists(self.path(p)), p)
        self.assertEqual(stat.S_IMODE(os.stat(self.path("/etc/porcupine/secret")).st_mode), 0o600)

        # The operator's configuration and data, then the same packages again.
        conf = self.path("/etc/porcupine/porcupine.conf")
        with open(conf, "a") as f:
            f.write("node_id = 7\n")
        secret = read(self.path("/etc/porcupine/secret"))
        with open(self.path("/var/lib/porcupine/spool/body"), "w") as f:
            f.write("a message")
        _, log = self.dpkg("-i", debs[AGENT], debs[MILTER], debs[DOVECOT])
        self.assertTrue(read(conf).endswith("node_id = 7\n"))
        self.assertEqual(read(self.path("/etc/porcupine/secret")), secret)
        self.assertTrue(os.path.exists(self.path("/var/lib/porcupine/spool/body")))
        self.assertNoServiceManager(log)
        self.assertFalse([l for l in log if " stop " in l], log)

        # Removal: configuration and data kept.
        _, log = self.dpkg("-r", MILTER, DOVECOT, AGENT)
        self.assertNoServiceManager(log)
        self.assertFalse(os.path.exists(self.path("/usr/sbin/porcupine-agent")))
        self.assertTrue(read(conf).endswith("node_id = 7\n"))
        for p in ("/etc/porcupine/secret", "/var/lib/porcupine/spool/body", "/var/lib/porcupine/dovecot"):
            self.assertTrue(os.path.exists(self.path(p)), p)

        # Purge: all of it gone.
        self.dpkg("-P", MILTER, DOVECOT, AGENT)
        for p in ("/etc/porcupine", "/var/lib/porcupine"):
            self.assertFalse(os.path.exists(self.path(p)), p)
        self.assertNotIn("porcupine", run("dpkg-query", "--admindir=" + self.path("/var/lib/dpkg"), "-W",
                                          "-f", "${Package} ${Status}\n"))


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--build" in args:
        i = args.index("--build")
        BUILD = os.path.abspath(args[i + 1])
        del args[i:i + 2]
    if "--debs" in args:
        i = args.index("--debs")
        DEBS = os.path.abspath(args[i + 1])
        del args[i:i + 2]
    if not DEBS or not os.path.isdir(DEBS) or not [f for f in os.listdir(DEBS) if f.endswith(".deb")]:
        print("deb_test: skipped: no packages in %s (tests/packaging/build_packages.sh; scripts/test.sh runs it)"
              % DEBS, file=sys.stderr)
        sys.exit(77)
    unittest.main(argv=[sys.argv[0]] + args, verbosity=2)
