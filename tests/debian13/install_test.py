#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The Debian 13 packages installed for real, with apt, in the Debian 13
root of tests/debian13/run.sh (an overlay thrown away after the run; never
on a real machine: it refuses to run outside a root whose
/.porcupine-stamp marks it).

Usage: install_test.py --debs DIR [--foreign DIR] [unittest args]

DIR: this tree's packages built there (Dovecot 2.4). --foreign: the same
packages built on Debian 12 (Dovecot 2.3), which apt must refuse here.
"""
import glob
import os
import subprocess
import sys
import unittest

DEBS = None
FOREIGN = None
PACKAGES = ("porcupine-agent", "porcupine-milter", "dovecot-porcupine")


def debs(directory):
    return sorted(glob.glob(os.path.join(directory, "*.deb")))


def run(*argv, check=True):
    r = subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    if check and r.returncode != 0:
        raise AssertionError("%s: exit %d\n%s%s" % (" ".join(argv), r.returncode, r.stdout[-3000:], r.stderr[-3000:]))
    return r


class Install(unittest.TestCase):
    def test_a_DebianTwelvesPlugin_IsRefusedBesideDovecot24(self):
        if not FOREIGN or not debs(FOREIGN):
            self.skipTest("no Debian 12 packages given (--foreign)")
        r = run("apt-get", "install", "--simulate", "-y", *debs(FOREIGN), check=False)
        self.assertNotEqual(r.returncode, 0, r.stdout)
        self.assertIn("dovecot-abi-2.3.abiv19", r.stdout + r.stderr)

    def test_b_Install_ExampleIsValid_LuaModuleLoads(self):
        mine = debs(DEBS)
        self.assertEqual(sorted(os.path.basename(d).split("_")[0] for d in mine), sorted(PACKAGES))
        run("apt-get", "install", "-y", "-q", "--no-install-recommends", *mine)
        status = run("dpkg-query", "-W", "-f", "${Package} ${Status}\n", *PACKAGES).stdout
        for name in PACKAGES:
            self.assertIn("%s install ok installed" % name, status)
        # The example, enabled beside Debian's stock conf.d: the config
        # process knows the plugin's settings (the settings module) and
        # finds the Lua passdb's files where the package put them.
        example = "/usr/share/dovecot-porcupine/90-porcupine.conf"
        with open(example) as f:
            text = f.read()
        for path in ("/usr/share/porcupine/porcupine-auth.lua", "/usr/lib/porcupine/porcupine_auth.so"):
            self.assertIn(path, text)
            self.assertTrue(os.path.exists(path), path)
        with open("/etc/dovecot/conf.d/90-porcupine.conf", "w") as f:
            f.write(text)
        conf = run("doveconf", "-n").stdout
        self.assertIn("porcupine_socket = /run/porcupine/agent.sock", conf)
        self.assertIn("porcupine = yes", conf)
        # A bad value is refused by the config process, naming it.
        with open("/etc/dovecot/conf.d/91-bad.conf", "w") as f:
            f.write("porcupine_timeout_ms = soon\n")
        r = run("doveconf", "-n", check=False)
        os.unlink("/etc/dovecot/conf.d/91-bad.conf")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("porcupine_timeout_ms: invalid value 'soon'", r.stderr)
        # Lua's module from the script's point of view: it loads and answers
        # "tempfail" while no agent runs.
        lua = ("local open = package.loadlib('/usr/lib/porcupine/porcupine_auth.so', 'luaopen_porcupine_auth')\n"
               "local m = open()\n"
               "print(m.check('/run/porcupine/agent.sock', 1000, 'a@example.org', 'x'))\n")
        r = run("lua5.4", "-e", lua)
        self.assertTrue(r.stdout.startswith("tempfail"), r.stdout + r.stderr)

    def test_c_RemoveAndPurge(self):
        run("apt-get", "purge", "-y", "-q", *PACKAGES)
        status = run("dpkg-query", "-W", "-f", "${Package} ${Status}\n", *PACKAGES, check=False).stdout
        for name in PACKAGES:
            self.assertNotIn("%s install ok installed" % name, status)
        self.assertFalse(os.path.exists("/usr/lib/dovecot/modules/settings/libporcupine_settings.so"))


def main():
    global DEBS, FOREIGN
    argv = [sys.argv[0]]
    args = iter(sys.argv[1:])
    for a in args:
        if a == "--debs":
            DEBS = next(args)
        elif a == "--foreign":
            FOREIGN = next(args)
        else:
            argv.append(a)
    if not os.path.exists("/.porcupine-stamp"):
        print("install_test: refusing to install packages outside tests/debian13/run.sh's root", file=sys.stderr)
        sys.exit(2)
    if not DEBS or not debs(DEBS):
        print("install_test: no packages (--debs)", file=sys.stderr)
        sys.exit(2)
    unittest.main(argv=argv, verbosity=2)


if __name__ == "__main__":
    main()
