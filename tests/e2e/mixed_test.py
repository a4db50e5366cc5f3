#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""A cluster of Dovecot 2.3 and Dovecot 2.4 nodes, as a site has while it
upgrades its nodes from Debian 12 to Debian 13 one at a time: nodes 1 and
2 run this machine's Dovecot (2.3) with the plugin of BUILD; nodes 3 and
4 run in a Debian 13 root (tests/debian13/run.sh makes it) with its
Dovecot 2.4 and the plugin of the build inside it (scripts/porcupine-local's
roots: chroot, the cluster's directory at the same path on both sides).
Real agents, Redis and Dovecots on 127.0.K.1-4.

Checked: every node shows the same mailbox (UIDVALIDITY, UIDs, flags,
bytes, BODYSTRUCTURE) and the same POP3 UIDLs; flags, expunges, folders
and APPENDs made through a node of one version are seen through the
other's; the same password logs in everywhere and a wrong one nowhere.

Usage: mixed_test.py --build BUILD --root ROOT --root-build PATH
                     [--subnet K] [unittest args]
Exits 77 (skipped) without --root.
"""
import imaplib
import importlib.machinery
import os
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
dt = importlib.machinery.SourceFileLoader("dovecot_test", os.path.join(HERE, "dovecot_test.py")).load_module()
message = dt.message

OLD, NEW = (1, 2), (3, 4)  # Dovecot 2.3 nodes, Dovecot 2.4 nodes


class MixedVersions(dt.DovecotCase):
    nodes = 4

    def release(self, i):
        out = subprocess.run(self.cl.command(i, [dt.DOVECOT, "--version"]), capture_output=True, text=True).stdout
        return ".".join(out.split()[0].split(".")[:2])

    def bodystructures(self, i):
        """{uid: the FETCH BODYSTRUCTURE response of that message on node i,
        literals included, without its sequence number}."""
        m = self.imap(i)
        try:
            m.select("INBOX", readonly=True)
            typ, data = m.uid("SEARCH", None, "ALL")
            self.assertEqual(typ, "OK")
            out = {}
            for uid in data[0].split():
                typ, data = m.uid("FETCH", uid, "(BODYSTRUCTURE)")
                self.assertEqual(typ, "OK")
                flat = b"".join(b"".join(part) if isinstance(part, tuple) else part for part in data)
                out[int(uid)] = flat.split(b" ", 1)[1]
            return out
        finally:
            m.logout()

    def folders(self, i):
        m = self.imap(i)
        try:
            typ, data = m.list()
            self.assertEqual(typ, "OK")
            return sorted(line.decode().rsplit(' "', 1)[-1].rstrip('"') if line.decode().endswith('"')
                          else line.decode().split()[-1] for line in data)
        finally:
            m.logout()

    def test_the_versions_are_really_mixed(self):
        self.assertEqual([self.release(i) for i in OLD + NEW], ["2.3", "2.3", "2.4", "2.4"])

    def test_every_node_shows_the_same_mailbox_and_uidls(self):
        sent = 40
        for n in range(sent):
            self.deliver(1 + n % 4, message(n, size=200 + 97 * n))
        states = {i: self.imap_state(i) for i in OLD + NEW}
        uv1, msgs1 = states[1]
        self.assertEqual(len(msgs1), sent, self.dovecot_log(1))
        for i in OLD + NEW:
            uv, msgs = states[i]
            self.assertEqual(uv, uv1, "UIDVALIDITY on node %d (Dovecot %s)" % (i, self.release(i)))
            self.assertEqual(sorted(msgs), sorted(msgs1), "UIDs on node %d" % i)
            for uid in msgs1:
                self.assertEqual(msgs[uid], msgs1[uid], "flags and bytes of UID %d on node %d" % (uid, i))
        uidls = {i: self.pop3_uidl(i) for i in OLD + NEW}
        self.assertEqual(len(uidls[1]), sent)
        for i in NEW:
            self.assertEqual(uidls[i], uidls[1], "POP3 UIDLs on node %d (Dovecot 2.4) and node 1 (2.3)" % i)
        # BODYSTRUCTURE: each version uses a kept one only if it made it,
        # otherwise parses the body; the answer is the same.
        structures = {i: self.bodystructures(i) for i in (1, 3)}
        self.assertEqual(len(structures[1]), sent)
        self.assertEqual(structures[3], structures[1])

    def test_changes_through_one_version_are_seen_through_the_other(self):
        for n in range(6):
            self.deliver(1 + n % 4, message(n))
        _, msgs = self.imap_state(1)
        uids = sorted(msgs)
        # Flags on a 2.4 node, an expunge on a 2.3 node.
        m = self.imap(3)
        m.select("INBOX")
        self.assertEqual(m.uid("STORE", str(uids[0]), "+FLAGS", r"(\Flagged $Important)")[0], "OK")
        m.logout()
        m = self.imap(2)
        m.select("INBOX")
        self.assertEqual(m.uid("STORE", str(uids[1]), "+FLAGS", r"(\Deleted)")[0], "OK")
        self.assertEqual(m.expunge()[0], "OK")
        m.logout()
        # A folder made and renamed on 2.4, an APPEND with a keyword into it on 2.3.
        m = self.imap(4)
        self.assertEqual(m.create("Projects")[0], "OK")
        self.assertEqual(m.rename("Projects", "Archive")[0], "OK")
        m.logout()
        m = self.imap(1)
        self.assertEqual(m.append("Archive", r"(\Seen kept)", None, message(99))[0], "OK")
        m.logout()

        def agreed():
            views = {i: self.imap_state(i) for i in OLD + NEW}
            return all(v == views[1] for v in views.values()) and len(views[1][1]) == 5
        self.assertTrue(self.wait_for(agreed, 30), {i: self.imap_state(i)[1].keys() for i in OLD + NEW})
        uv, msgs = self.imap_state(1)
        self.assertNotIn(uids[1], msgs)
        self.assertEqual(msgs[uids[0]][0], {"\\Flagged", "$Important"})
        for i in OLD + NEW:
            self.assertIn("Archive", self.folders(i), "node %d" % i)
            self.assertNotIn("Projects", self.folders(i), "node %d" % i)
            m = self.imap(i)
            typ, data = m.select("Archive", readonly=True)
            self.assertEqual((typ, data[0]), ("OK", b"1"), "Archive on node %d" % i)
            typ, data = m.fetch("1", "(FLAGS)")
            self.assertIn(b"kept", data[0], "node %d: %s" % (i, data))
            m.logout()

    def test_one_password_everywhere(self):
        for i in OLD + NEW:
            self.imap(i).logout()
            m = imaplib.IMAP4(self.addr(i), dt.IMAP_PORT, timeout=30)
            with self.assertRaisesRegex(imaplib.IMAP4.error, "AUTHENTICATIONFAILED"):
                m.login(self.user, "not the password")
            m.logout()


def main():
    root = root_build = None
    argv = [sys.argv[0]]
    args = iter(sys.argv[1:])
    for a in args:
        if a == "--build":
            dt.BUILD = os.path.abspath(next(args))
        elif a == "--subnet":
            dt.SUBNET = int(next(args))
        elif a == "--root":
            root = os.path.abspath(next(args))
        elif a == "--root-build":
            root_build = next(args)
        else:
            argv.append(a)
    if not root or not root_build:
        print("mixed_test: skipped: no --root and --root-build (tests/debian13/run.sh gives them)", file=sys.stderr)
        sys.exit(77)
    MixedVersions.roots = {i: (root, root_build) for i in NEW}
    unittest.main(argv=argv, verbosity=2)


if __name__ == "__main__":
    main()
