#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""End-to-end tests of the Dovecot plugin (dovecot-plugin/): a porcupine
cluster of real agents and redis-servers on loopback (127.0.K.i), and on
every node a Dovecot instance this test configures itself (own base_dir,
state_dir, log, instance_name; listen = 127.0.K.i; IMAP, POP3 and LMTP
on the ports below; the built plugin; porcupine-checkpassword as passdb).

Usage: dovecot_test.py --build BUILD_DIR [--subnet K] [unittest args]
Each test starts its own cluster and Dovecots under a fresh directory and
stops every process it started, by PID (Dovecot's master.pid). Skipped
when dovecot or the plugin is not there.
"""
import imaplib
import importlib.machinery
import os
import poplib
import re
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
local = importlib.machinery.SourceFileLoader("porcupine_local", os.path.join(ROOT, "scripts", "porcupine-local")).load_module()

BUILD = os.path.join(ROOT, "build")
SUBNET = 61
IMAP_PORT, POP3_PORT, LMTP_PORT = local.IMAP_PORT, local.POP3_PORT, local.LMTP_PORT
USER, PASSWORD = "alice@example.com", "secret"
DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"


def plugin_dir():
    return os.path.join(BUILD, "dovecot-plugin")


def json_loads(text):
    import json
    return json.loads(text)


def message(n, size=300):
    head = ("From: sender@example.org\r\nTo: %s\r\nSubject: message %d\r\nMessage-Id: <m%d@test>\r\n\r\n"
            % (USER, n, n)).encode()
    filler = (b"line of message %d " % n) * (size // 20 + 1)
    return head + filler[:size] + b"\r\n"


@unittest.skipUnless(os.path.exists(DOVECOT), "dovecot is not installed")
class DovecotCase(unittest.TestCase):
    nodes = 3
    replicas = 2
    spread = 2
    extra_config = None  # agent settings of every node (porcupine-local's extra_config)
    roots = None  # nodes in another root filesystem (porcupine-local's roots; mixed_test.py)
    user = USER  # the user the helpers below speak for

    def setUp(self):
        if not os.path.exists(os.path.join(plugin_dir(), "lib20_porcupine_plugin.so")):
            self.skipTest("the plugin was not built (no dovecot-dev)")
        self.dir = tempfile.mkdtemp(prefix="pcpdv-")
        os.chmod(self.dir, 0o755)
        self.cl = local.Cluster(os.path.join(self.dir, "c"), BUILD)
        self.addCleanup(self.stop_all)
        try:
            self.cl.start(self.nodes, self.replicas, self.spread, SUBNET, services=["dovecot"],
                          extra_config=self.extra_config, roots=self.roots)
        except SystemExit:
            self.fail("the cluster did not start (see %s)" % self.cl.base)
        self.assertTrue(self.wait_for(self.cl.converged, 30), "cluster did not form")
        self.ctl(1, "user", "add", self.user, "--password", PASSWORD)

    def stop_all(self):
        self.cl.stop()
        crashes = [line for i in range(1, self.nodes + 1) for line in self.dovecot_log(i, whole=True).splitlines()
                   if " Panic: " in line or " Fatal: " in line]
        if not os.environ.get("KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)
        # A Dovecot process that died (an assertion in the plugin) fails the test.
        self.assertEqual(crashes, [])

    # ---- helpers ---------------------------------------------------------
    def addr(self, i):
        return "127.0.%d.%d" % (SUBNET, i)

    def ddir(self, i):
        return self.cl.dovecot_dir(i)

    def wait_for(self, cond, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if cond():
                return True
            time.sleep(0.2)
        return False

    def ctl(self, i, *args):
        argv = [self.cl.ctl_bin(), "--socket", os.path.join(self.cl.ndir(i), "agent.sock"), "--timeout", "15000"]
        r = subprocess.run(argv + list(args), capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, "porcupinectl %s: %s" % (" ".join(args), r.stderr))
        return r.stdout

    def dovecot_log(self, i, whole=False):
        try:
            with open(os.path.join(self.ddir(i), "dovecot.log"), errors="replace") as f:
                return f.read() if whole else f.read()[-4000:]
        except OSError:
            return ""

    def deliver(self, i, data, timeout=30):
        """LMTP delivery the way an MTA does it: a 4xx is retried (a
        membership change in progress), for at most `timeout` seconds."""
        deadline = time.time() + timeout
        while True:
            try:
                return self.lmtp_deliver(i, data)
            except smtplib.SMTPDataError as e:
                if not 400 <= e.smtp_code < 500 or time.time() > deadline:
                    raise
            time.sleep(0.5)

    def lmtp_deliver(self, i, data):
        with smtplib.LMTP(self.addr(i), LMTP_PORT, timeout=30, source_address=(self.addr(i), 0)) as s:
            s.sendmail("sender@example.org", [self.user], data)

    def cluster_listing(self, i):
        return self.cluster_listing_of(i, self.user)

    def cluster_listing_of(self, i, user):
        import json
        return json.loads(self.ctl(i, "--json", "mail", "list", user))

    def agent_log(self, i):
        try:
            with open(os.path.join(self.cl.ndir(i), "agent.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def subjects(self, i):
        """The Subject of every message in INBOX on node i, in UID order."""
        return [re.search(rb"Subject: ([^\r\n]*)", body).group(1)
                for _, (_, body) in sorted(self.imap_state(i)[1].items())]

    def assert_lmtp_4xx(self, i, data):
        with self.assertRaises((smtplib.SMTPDataError, smtplib.SMTPRecipientsRefused)) as cm:
            self.lmtp_deliver(i, data)
        e = cm.exception
        codes = [c for c, _ in e.recipients.values()] if isinstance(e, smtplib.SMTPRecipientsRefused) else [e.smtp_code]
        for code in codes:
            self.assertTrue(400 <= code < 500, "LMTP answered %s, not 4xx" % codes)

    def imap(self, i):
        m = imaplib.IMAP4(self.addr(i), IMAP_PORT, timeout=30)
        m.login(self.user, PASSWORD)
        return m

    def pop3_bodies(self, i):
        """Every message of the maildrop on node i, RETR in order, as bytes."""
        p = poplib.POP3(self.addr(i), POP3_PORT, timeout=30)
        try:
            p.user(self.user)
            p.pass_(PASSWORD)
            return [b"\r\n".join(p.retr(k)[1]) + b"\r\n" for k in range(1, p.stat()[0] + 1)]
        finally:
            p.quit()

    def imap_state(self, i):
        """(uidvalidity, {uid: (flags, bytes)}) of INBOX on node i."""
        m = self.imap(i)
        try:
            typ, _ = m.select("INBOX", readonly=True)
            self.assertEqual(typ, "OK")
            uidvalidity = int(m.response("UIDVALIDITY")[1][0])
            typ, data = m.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[])")
            self.assertEqual(typ, "OK")
            msgs = {}
            for item in data:
                if not isinstance(item, tuple):
                    continue
                head = item[0].decode()
                uid = int(re.search(r"UID (\d+)", head).group(1))
                flags = re.search(r"FLAGS \(([^)]*)\)", head)
                msgs[uid] = (set(flags.group(1).split()) - {"\\Recent"} if flags else set(), item[1])
            # FLAGS may come after the literal: look in the trailing part.
            for idx, item in enumerate(data):
                if isinstance(item, tuple) and idx + 1 < len(data) and isinstance(data[idx + 1], bytes):
                    tail = data[idx + 1].decode(errors="replace")
                    f = re.search(r"FLAGS \(([^)]*)\)", tail)
                    if f:
                        uid = int(re.search(r"UID (\d+)", item[0].decode()).group(1))
                        msgs[uid] = (set(f.group(1).split()) - {"\\Recent"}, msgs[uid][1])
            return uidvalidity, msgs
        finally:
            m.logout()

    def pop3_uidl(self, i):
        p = poplib.POP3(self.addr(i), POP3_PORT, timeout=30)
        try:
            p.user(self.user)
            p.pass_(PASSWORD)
            return [line.split()[1] for line in p.uidl()[1]]
        finally:
            p.quit()


class Dovecot(DovecotCase):
    def test_lmtp_on_three_nodes_then_same_mailbox_everywhere(self):
        sent = []
        for n in range(100):
            data = message(n)
            self.deliver(1 + n % 3, data)
            sent.append(data)
        states = {i: self.imap_state(i) for i in range(1, self.nodes + 1)}
        uv1, msgs1 = states[1]
        self.assertEqual(len(msgs1), 100, self.dovecot_log(1))
        for i in range(2, self.nodes + 1):
            uv, msgs = states[i]
            self.assertEqual(uv, uv1, "UIDVALIDITY on node %d" % i)
            self.assertEqual(sorted(msgs), sorted(msgs1), "UIDs on node %d" % i)
            for uid in msgs1:
                self.assertEqual(msgs[uid][1], msgs1[uid][1], "bytes of UID %d on node %d" % (uid, i))
        # Every body delivered is there (LMTP adds its own header lines).
        # The cluster has them, with the same UIDs, UIDVALIDITY and sizes:
        # the local caches hold no message of their own.
        listing = self.cluster_listing(2)
        self.assertEqual(listing["uidvalidity"], uv1)
        self.assertEqual(sorted(m["uid"] for m in listing["messages"]), sorted(msgs1))
        for m in listing["messages"]:
            self.assertEqual(m["size"], len(msgs1[m["uid"]][1]), "size of UID %d" % m["uid"])
        bodies = [b for _, b in msgs1.values()]
        for data in sent:
            tail = data.split(b"\r\n\r\n", 1)[1]
            self.assertTrue(any(b.endswith(tail) for b in bodies), "a delivered body is missing")

        uidls = {i: self.pop3_uidl(i) for i in range(1, self.nodes + 1)}
        self.assertEqual(len(uidls[1]), 100)
        for i in range(2, self.nodes + 1):
            self.assertEqual(uidls[i], uidls[1], "POP3 UIDL on node %d" % i)

    def test_flags_and_expunge_on_node2_seen_on_nodes_1_and_3(self):
        for n in range(4):
            self.lmtp_deliver(1 + n % 3, message(n))
        uv, msgs = self.imap_state(1)
        self.assertEqual(len(msgs), 4, self.dovecot_log(1))
        uids = sorted(msgs)
        flagged, gone = uids[0], uids[2]

        m = self.imap(2)
        try:
            self.assertEqual(m.select("INBOX")[0], "OK")
            self.assertEqual(m.uid("STORE", str(flagged), "+FLAGS", "(\\Flagged \\Seen)")[0], "OK")
            self.assertEqual(m.uid("STORE", str(gone), "+FLAGS", "(\\Deleted)")[0], "OK")
            self.assertEqual(m.expunge()[0], "OK")
        finally:
            m.logout()

        for i in (1, 3):
            def converged():
                _, now = self.imap_state(i)
                return sorted(now) == [u for u in uids if u != gone] and \
                    now[flagged][0] == {"\\Flagged", "\\Seen"}
            self.assertTrue(self.wait_for(converged, 20), "node %d: %s\n%s" % (i, self.imap_state(i), self.dovecot_log(i)))

    def test_pop3_dele_on_node3_seen_on_node1(self):
        for n in range(3):
            self.lmtp_deliver(1 + n % 3, message(n))
        _, before = self.imap_state(1)
        self.assertEqual(len(before), 3, self.dovecot_log(1))
        p = poplib.POP3(self.addr(3), POP3_PORT, timeout=30)
        p.user(USER)
        p.pass_(PASSWORD)
        self.assertTrue(p.dele(2).startswith(b"+OK"))
        p.quit()
        self.assertEqual(len(self.pop3_uidl(3)), 2)
        self.assertTrue(self.wait_for(lambda: sorted(self.imap_state(1)[1]) == sorted(before)[0:1] + sorted(before)[2:], 20),
                        "node 1: %s" % sorted(self.imap_state(1)[1]))
        self.assertEqual(len(self.cluster_listing(1)["messages"]), 2)

    def test_parallel_sessions_on_one_node_cache_each_message_once(self):
        import threading
        for n in range(8):
            self.lmtp_deliver(2, message(n, 20000))
        results, errors = [], []

        def session():
            try:
                results.append(self.imap_state(1))
            except Exception as e:  # reported below
                errors.append(e)
        threads = [threading.Thread(target=session) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual(errors, [])
        uids = sorted(m["uid"] for m in self.cluster_listing(1)["messages"])
        self.assertEqual(len(uids), 8)
        for _, msgs in results + [self.imap_state(1)]:
            self.assertEqual(sorted(msgs), uids, self.dovecot_log(1))

    def test_folders_created_renamed_deleted_over_imap_follow_the_cluster(self):
        m = self.imap(1)
        try:
            self.assertEqual(m.create("Work")[0], "OK")
            self.assertEqual(m.create("Old")[0], "OK")
            self.assertEqual(m.append("Work", None, None, message(7))[0], "OK")
        finally:
            m.logout()
        folders = lambda: set(json_loads(self.ctl(2, "--json", "folder", "list", USER)))
        self.assertEqual(folders(), {"INBOX", "Work", "Old"})
        # Node 3 has the folders at its next login, with the message.
        m = self.imap(3)
        try:
            names = {line.decode().rsplit(" ", 1)[-1].strip('"') for line in m.list()[1]}
            self.assertTrue({"INBOX", "Work", "Old"} <= names, names)
            typ, data = m.select("Work")
            self.assertEqual((typ, data[0]), ("OK", b"1"))
            self.assertEqual(m.rename("Work", "Archive")[0], "OK")
            self.assertEqual(m.delete("Old")[0], "OK")
        finally:
            m.logout()
        self.assertEqual(folders(), {"INBOX", "Archive"})
        # Node 1 follows: Work and Old are gone there, Archive has the message.
        def follows():
            m = self.imap(1)
            try:
                names = {line.decode().rsplit(" ", 1)[-1].strip('"') for line in m.list()[1]}
                if names != {"INBOX", "Archive"}:
                    return False
                typ, data = m.select("Archive")
                return typ == "OK" and data[0] == b"1"
            finally:
                m.logout()
        self.assertTrue(self.wait_for(follows, 20), self.dovecot_log(1))

    def test_imap_append_goes_to_the_cluster(self):
        m = self.imap(3)
        try:
            typ, data = m.append("INBOX", "(\\Seen)", None, message(42))
            self.assertEqual(typ, "OK", data)
        finally:
            m.logout()
        for i in (1, 2, 3):
            def there():
                _, now = self.imap_state(i)
                return len(now) == 1 and list(now.values())[0][0] == {"\\Seen"}
            self.assertTrue(self.wait_for(there, 20), "node %d: %s\n%s" % (i, self.imap_state(i), self.dovecot_log(i)))

    def test_over_the_size_limit_gets_552_5_3_4_and_a_message_at_postfix_limit_is_taken(self):
        """The agent's message_size_limit (50 MiB, Postfix's limit too) is
        what a message may have when Postfix takes it; LMTP adds its trace
        headers, which the agent allows for. Bigger: a permanent 552 5.3.4
        at LMTP, not a 451 Postfix would retry for days."""
        limit = 50 << 20
        line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+/0123456789ab\r\n"

        def message_of(size):
            head = b"From: big@example.org\r\nSubject: size %d\r\n\r\n" % size
            body = line * ((size - len(head)) // len(line))
            return head + body + b"y" * (size - len(head) - len(body) - 2) + b"\r\n"

        at_limit = message_of(limit)
        self.assertEqual(len(at_limit), limit)
        self.lmtp_deliver(1, at_limit)
        listing = self.cluster_listing(2)["messages"]
        self.assertEqual(len(listing), 1)
        self.assertGreater(listing[0]["size"], limit)  # with the trace headers LMTP added
        with self.assertRaises(smtplib.SMTPDataError) as cm:
            self.lmtp_deliver(2, message_of(limit + (128 << 10)))
        self.assertEqual(cm.exception.smtp_code, 552, cm.exception)
        self.assertIn(b"5.3.4", cm.exception.smtp_error)
        self.assertEqual(len(self.cluster_listing(3)["messages"]), 1)

    def test_agent_down_gives_lmtp_4xx(self):
        self.lmtp_deliver(1, message(1))
        self.cl.kill(1, False)  # node 1's agent is gone; its Dovecot is not
        self.assert_lmtp_4xx(1, message(2))
        # The other nodes take mail again once they have noticed node 1's
        # failure (until then they answer 4xx too), and serve both messages.
        def delivered():
            try:
                self.lmtp_deliver(2, message(3))
                return True
            except smtplib.SMTPDataError as e:
                self.assertTrue(400 <= e.smtp_code < 500, e)
                return False
        self.assertTrue(self.wait_for(delivered, 60), "node 2 does not take mail")
        # A delivery answered 4xx may still arrive later (the sender retries:
        # a duplicate, as with any MTA), so look for both subjects.
        def both():
            bodies = [b for _, b in self.imap_state(3)[1].values()]
            return all(any(b"Subject: message %d\r\n" % n in b for b in bodies) for n in (1, 3))
        self.assertTrue(self.wait_for(both, 30), "node 3: %s" % self.imap_state(3)[1].keys())

    def test_agent_not_answering_gives_lmtp_4xx_and_does_not_deliver_later(self):
        self.lmtp_deliver(1, message(1))
        pid = self.cl.pid(1, "agent")
        os.kill(pid, signal.SIGSTOP)  # the agent hangs: the plugin's deadline (5 s) ends the call
        try:
            started = time.time()
            self.assert_lmtp_4xx(1, message(2))
            print("LMTP 4xx after %.1f s" % (time.time() - started), file=sys.stderr)
        finally:
            os.kill(pid, signal.SIGCONT)
        # The agent reads the request its client gave up on, and does not
        # act on it: the MTA was told 4xx and will send the message again.
        time.sleep(3)
        self.assertEqual(self.subjects(2), [b"message 1"])
        self.assertIn("read after their client's deadline", self.agent_log(1))
        # The MTA's retry is delivered, once.
        self.deliver(1, message(2))
        self.assertEqual(sorted(self.subjects(2)), [b"message 1", b"message 2"])

    def test_a_retry_of_a_message_with_a_300_kb_header_line_is_stored_once(self):
        # The key's scan of the header is not by whole lines.
        data = b"Received: from a by b with ESMTP id 1;\r\n\tMon, 7 Dec 2026\r\nX-Long: " + b"a" * 300000 + \
            b"\r\n" + message(7)
        self.deliver(1, data)
        self.deliver(3, data)
        self.assertEqual(self.subjects(2), [b"message 7"])
        self.assertNotIn("delivered without a key", self.dovecot_log(1, whole=True) + self.dovecot_log(3, whole=True))

    def test_an_mta_retry_of_a_delivered_message_is_not_stored_twice(self):
        # Postfix sends a message again when its answer was lost (a crash,
        # a timeout after the store): the same bytes, through any node.
        self.deliver(1, message(1))
        self.deliver(2, message(1))
        self.deliver(3, message(1))
        # The sending client's own resend through another MTA: the same
        # message under other trace fields.
        self.deliver(2, b"Received: from client.example by mx2.example (Postfix) with ESMTP id 4AbC;\r\n"
                        b"\tMon, 7 Dec 2026 09:00:00 +0000\r\nX-Porcupine-Accepted-By: n2 id 4AbC\r\n" + message(1))
        self.assertEqual(self.subjects(1), [b"message 1"])
        self.assertIn("not stored again", self.agent_log(2) + self.agent_log(3))
        # Other bytes are another message, and so is the same message to
        # another user (each user's own delivery) or from another sender.
        self.deliver(2, message(2))
        self.assertEqual(sorted(self.subjects(3)), [b"message 1", b"message 2"])
        with smtplib.LMTP(self.addr(1), LMTP_PORT, timeout=30, source_address=(self.addr(1), 0)) as s:
            s.sendmail("list-bounces@example.net", [self.user], message(2))
        self.assertEqual(sorted(self.subjects(3)), [b"message 1", b"message 2", b"message 2"])
        self.ctl(1, "user", "add", "bob@example.com", "--password", PASSWORD)
        with smtplib.LMTP(self.addr(3), LMTP_PORT, timeout=30, source_address=(self.addr(3), 0)) as s:
            s.sendmail("sender@example.org", ["bob@example.com"], message(1))
        bob = self.cluster_listing_of(1, "bob@example.com")["messages"]
        self.assertEqual(len(bob), 1, bob)
        # An IMAP APPEND of the same bytes is the user's own copy, kept.
        m = self.imap(2)
        try:
            self.assertEqual(m.append("INBOX", None, None, message(1))[0], "OK")
        finally:
            m.logout()
        self.assertEqual(sorted(self.subjects(1)), [b"message 1", b"message 1", b"message 2", b"message 2"])


def main():
    global BUILD, SUBNET
    argv = [sys.argv[0]]
    args = iter(sys.argv[1:])
    for a in args:
        if a == "--build":
            BUILD = os.path.abspath(next(args))
        elif a == "--subnet":
            SUBNET = int(next(args))
        else:
            argv.append(a)
    unittest.main(argv=argv, verbosity=2)


if __name__ == "__main__":
    main()
