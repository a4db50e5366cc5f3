#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""End-to-end tests of the whole stack of every node: Postfix (its own
instance per node, SMTP on 127.0.K.i:10025) with porcupine-milter, Dovecot
with the porcupine plugin (LMTP, IMAP, POP3), porcupine-agent and its
redis-server, all real processes started by scripts/porcupine-local.

Usage:
  smtp_test.py --build BUILD_DIR [--subnet K] [unittest args]
  smtp_test.py --build BUILD_DIR --subnet K --soak [--messages M] [--sessions S] [--runs R]
               [--only-run N] [--stop | --full] [--down SECONDS]
      the no-loss run outside ctest: R runs of M messages over S SMTP
      sessions spread over the three nodes, one node killed with SIGKILL
      (every process of it) at a different moment of each run, then
      restarted SECONDS (3) later; with --stop, its agent SIGSTOPped for
      SECONDS instead; with --full, no node is stopped, but one node's spool
      is a small tmpfs of its own that fills during the run (it then takes
      no more copies). Prints per run what was accepted, lost, duplicated
      and how many LMTP deliveries Postfix deferred.
      Exit status 1 if any accepted message was lost (or could not be
      read). --only-run N repeats only the Nth run (its node and moment).

Each test starts its own cluster under a fresh directory and stops every
process it started, by PID. Skipped when Postfix, Dovecot or the milter is
not there.
"""
import imaplib
import importlib.machinery
import json
import os
import poplib
import random
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
local = importlib.machinery.SourceFileLoader("porcupine_local", os.path.join(ROOT, "scripts", "porcupine-local")).load_module()

BUILD = os.path.join(ROOT, "build")
SUBNET = 70
DOMAIN = "example.org"
USERS = {"alice@example.org": "alice-pw", "bob@example.org": "bob-pw", "carol@example.com": "carol-pw"}
# Headers added on the way in; everything else must arrive byte for byte.
TRACE = (b"received", b"return-path", b"delivered-to", b"x-original-to", b"x-porcupine-accepted-by")


def strip_trace(raw):
    """The message without the trace headers at its top."""
    lines = raw.split(b"\r\n")
    out, skipping, in_header = [], False, True
    for line in lines:
        if in_header:
            if line == b"":
                in_header = False
            elif line[:1] in (b" ", b"\t"):
                if skipping:
                    continue
            else:
                skipping = line.split(b":", 1)[0].strip().lower() in TRACE
                if skipping:
                    continue
        out.append(line)
    return b"\r\n".join(out)


def header(raw, name):
    for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(name.lower() + b":"):
            return line.split(b":", 1)[1].strip()
    return None


def make_message(to, tag, size=600):
    head = ("From: Sender <sender@outside.test>\r\nTo: <%s>\r\nSubject: %s\r\n"
            "Message-Id: <%s@test.porcupine>\r\nDate: Tue, 24 Nov 2026 12:00:00 +0000\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n" % (to, tag, tag)).encode()
    body = b"".join(b"%s line %04d: the quick brown fox jumps over the lazy dog\r\n" % (tag.encode(), n)
                    for n in range(size // 60 + 1))
    # One line that starts with a dot, so SMTP and POP3 dot-stuffing is exercised.
    return head + body + b".a line with a leading dot\r\n"


class Stack:
    """A porcupine-local cluster with the full stack on every node."""

    live = []  # stopped by the SIGTERM handler (a ctest timeout) too

    def __init__(self, base, nodes, replicas, subnet, extra_config=None):
        self.cl = local.Cluster(base, BUILD)
        self.nodes, self.subnet = nodes, subnet
        Stack.live.append(self)
        self.cl.start(nodes, replicas, 2, subnet, services=["dovecot", "milter", "postfix"],
                      domains=["example.org", "example.com"], extra_config=extra_config)

    def addr(self, i):
        return "127.0.%d.%d" % (self.subnet, i)

    def ctl(self, i, *args, check=True):
        argv = [self.cl.ctl_bin(), "--socket", os.path.join(self.cl.ndir(i), "agent.sock"), "--timeout", "15000"]
        r = subprocess.run(argv + list(args), capture_output=True, text=True)
        if check and r.returncode != 0:
            raise AssertionError("porcupinectl %s: %s" % (" ".join(args), r.stderr))
        return r

    def smtp(self, i, timeout=60):
        return smtplib.SMTP(self.addr(i), local.SMTP_PORT, timeout=timeout, source_address=(self.addr(i), 0))

    def imap(self, i, user):
        m = imaplib.IMAP4(self.addr(i), local.IMAP_PORT, timeout=60)
        m.login(user, USERS[user])
        return m

    def imap_messages(self, i, user):
        """Every message of user's INBOX read on node i: [raw bytes]."""
        m = self.imap(i, user)
        try:
            typ, _ = m.select("INBOX", readonly=True)
            assert typ == "OK"
            typ, data = m.uid("FETCH", "1:*", "(BODY.PEEK[])")
            assert typ == "OK", data
            return [d[1] for d in data if isinstance(d, tuple)]
        finally:
            m.logout()

    def pop3_messages(self, i, user):
        p = poplib.POP3(self.addr(i), local.POP3_PORT, timeout=60)
        try:
            p.user(user)
            p.pass_(USERS[user])
            count, _ = p.stat()
            return [b"\r\n".join(p.retr(n)[1]) + b"\r\n" for n in range(1, count + 1)]
        finally:
            p.quit()

    def queued(self, i):
        """How many messages wait in node i's Postfix queue."""
        q = os.path.join(self.cl.postfix_dir(i), "queue")
        return sum(len(files) for sub in ("maildrop", "incoming", "active", "deferred", "hold")
                   for _, _, files in os.walk(os.path.join(q, sub)))

    def queue_empty(self, i):
        return self.queued(i) == 0

    def postfix_log(self, i):
        try:
            with open(self.cl.postfix_log(i), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def milter_log(self, i):
        try:
            with open(os.path.join(self.cl.ndir(i), "milter.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def status(self, i):
        return json.loads(self.ctl(i, "--json", "status").stdout)

    def stop_node(self, i):
        """Node i's whole stack stopped as `stop` stops every node: SIGTERM,
        mail services first, then the agent and its Redis."""
        for what in list(reversed(self.cl.services())) + ["agent", "redis"]:
            master = self.cl.pid(i, what)
            self.cl.stop_pid(i, what)
            if what == "postfix" and master:
                for p in self.cl.session_members(master):  # children the master left
                    try:
                        os.kill(p, signal.SIGKILL)
                    except OSError:
                        pass

    def stop(self):
        self.cl.stop()
        if self in Stack.live:
            Stack.live.remove(self)


def on_sigterm(signum, frame):
    for st in list(Stack.live):
        st.stop()
    os._exit(1)


def wait_for(cond, timeout, step=0.2):
    """Until cond() is true; an IMAP/POP3/SMTP error on the way (a
    mailbox being rebuilt, a node restarting) counts as not yet."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if cond():
                return True
        except (imaplib.IMAP4.error, poplib.error_proto, smtplib.SMTPException, OSError):
            pass
        time.sleep(step)
    return False


# ---- The no-loss load, shared by the test and --soak ---------------------------

class Load:
    """messages over sessions SMTP sessions, session s on node s % N + 1.
    A message answered 250 is `accepted`; one answered 4xx, or whose
    session broke before an answer, is tried again (on the next node) until
    it gets a 250 or a 5xx, or the deadline passes."""

    def __init__(self, stack, messages, sessions, deadline_s=300, pace_s=0.0):
        self.st, self.messages, self.sessions = stack, messages, sessions
        self.pace_s = pace_s  # pause of each session after each message accepted
        self.deadline = time.time() + deadline_s
        self.lock = threading.Lock()
        self.accepted = {}     # tag -> user
        self.retried = set()   # tags that got a 4xx or a broken session first
        self.tempfailed = []   # (tag, node, code, reply) of every 4xx answer
        self.broken = []       # (tag, node, error) of every session that broke
        self.unanswered = set()  # tags whose DATA got no answer at least once (may arrive twice)
        self.rejected = {}     # tag -> 5xx reply (must not happen)
        self.gave_up = set()
        self.done = 0

    def run_session(self, s):
        users = sorted(USERS)
        mine = [n for n in range(self.messages) if n % self.sessions == s]
        node = s % self.st.nodes + 1
        conn = None
        for n in mine:
            tag = "load-%05d" % n
            user = users[n % len(users)]
            data = make_message(user, tag, 400)
            tries = 0
            while True:
                if time.time() > self.deadline:
                    with self.lock:
                        self.gave_up.add(tag)
                    break
                in_data = False
                try:
                    if conn is None:
                        conn = self.st.smtp(node, timeout=30)
                        conn.ehlo()
                    code, msg = conn.mail("sender@outside.test")
                    if code != 250:
                        raise smtplib.SMTPResponseException(code, b"node %d MAIL: %s" % (node, msg))
                    code, msg = conn.rcpt(user)
                    if code >= 500:
                        with self.lock:
                            self.rejected[tag] = (code, b"node %d RCPT: %s" % (node, msg))
                        conn.rset()
                        break
                    if code >= 400:
                        raise smtplib.SMTPResponseException(code, msg)
                    in_data = True
                    code, msg = conn.data(data)
                    if code == 250:
                        with self.lock:
                            self.accepted[tag] = user
                        time.sleep(self.pace_s)
                        break
                    if code >= 500:
                        with self.lock:
                            self.rejected[tag] = (code, msg)
                        break
                    raise smtplib.SMTPResponseException(code, msg)
                except smtplib.SMTPResponseException as e:
                    if e.smtp_code >= 500:
                        with self.lock:
                            self.rejected[tag] = (e.smtp_code, e.smtp_error)
                        break
                    with self.lock:
                        self.tempfailed.append((tag, node, e.smtp_code, e.smtp_error))
                    try:
                        conn.rset()
                    except (smtplib.SMTPException, OSError):
                        conn = self.close(conn)
                except (smtplib.SMTPException, OSError) as e:
                    with self.lock:
                        self.broken.append((tag, node, repr(e)))
                    if in_data:
                        with self.lock:
                            self.unanswered.add(tag)
                    conn = self.close(conn)
                tries += 1
                with self.lock:
                    self.retried.add(tag)
                node = node % self.st.nodes + 1  # try the next node
                time.sleep(min(0.2 * tries, 2))
            with self.lock:
                self.done += 1
        self.close(conn)

    @staticmethod
    def close(conn):
        if conn is not None:
            try:
                conn.quit()
            except (smtplib.SMTPException, OSError):
                try:
                    conn.close()
                except OSError:
                    pass
        return None

    def start(self):
        self.threads = [threading.Thread(target=self.run_session, args=(s,), daemon=True)
                        for s in range(self.sessions)]
        for t in self.threads:
            t.start()

    def join(self):
        for t in self.threads:
            t.join(max(1, self.deadline - time.time() + 30))
        return not any(t.is_alive() for t in self.threads)


def census(stack, reader):
    """tag -> how many copies node `reader` shows over IMAP, for every user."""
    seen = {}
    for user in USERS:
        for raw in stack.imap_messages(reader, user):
            subject = header(raw, b"Subject")
            if subject and subject.startswith(b"load-"):
                tag = subject.decode()
                seen[tag] = seen.get(tag, 0) + 1
    return seen


def crash_run(stack, messages, sessions, victim, crash_after, down_s, log=print, fault="kill"):
    """One run of the load with node `victim` SIGKILLed (all its processes)
    once `crash_after` messages are through, restarted down_s later; with
    fault "stop", its agent SIGSTOPped for down_s instead.
    Returns a summary dict."""
    load = Load(stack, messages, sessions)
    load.start()
    wait_for(lambda: load.done >= crash_after, 120, 0.02)
    crashed_at = load.done
    if fault == "full":
        pass  # the victim's spool fills by itself (soak() gave it a small one)
    elif fault == "stop":
        pid = stack.cl.pid(victim, "agent")
        os.kill(pid, signal.SIGSTOP)
        log("  stopped node %d's agent after %d messages" % (victim, crashed_at))
        time.sleep(down_s)
        os.kill(pid, signal.SIGCONT)
        log("  resumed node %d's agent after %.1f s" % (victim, down_s))
    else:
        stack.cl.kill(victim, redis=True, everything=True)
        log("  killed node %d (every process, Redis too) after %d messages" % (victim, crashed_at))
        time.sleep(down_s)
        stack.cl.restart(victim)
        log("  restarted node %d after %.1f s" % (victim, down_s))
    finished = load.join()
    # Wait for every queue to drain and the cluster to show every accepted
    # message, read over IMAP on a node that was not killed (or, if that
    # node cannot answer, on any other).
    readers = [victim % stack.nodes + 1] + [i for i in range(1, stack.nodes + 1) if i != victim % stack.nodes + 1]
    seen, reader, read_errors = None, None, []

    def read():
        nonlocal seen, reader
        for i in readers:
            try:
                seen, reader = census(stack, i), i
                return True
            except (imaplib.IMAP4.error, OSError, AssertionError) as e:
                read_errors.append("node %d: %s" % (i, e))
        return False

    def complete():
        if not all(stack.queue_empty(i) for i in range(1, stack.nodes + 1)):
            return False
        return read() and all(seen.get(tag, 0) >= 1 for tag in load.accepted)
    drained = wait_for(complete, 180, 1.0)
    if seen is None:
        read()
    lost = None if seen is None else sorted(t for t in load.accepted if seen.get(t, 0) == 0)
    seen = seen or {}
    dup = sorted(t for t, c in seen.items() if c > 1)
    retried_lost = sorted(t for t in load.retried if t not in load.accepted and t not in load.rejected)
    # LMTP deliveries Postfix had to put back in its queue (a 4xx from the
    # cluster, or no answer): each waits for Postfix's next queue run.
    deferred = {i: stack.postfix_log(i).count("status=deferred") for i in range(1, stack.nodes + 1)}
    summary = {
        "messages": messages, "sessions": sessions, "victim": victim, "crashed_after": crashed_at,
        "lmtp_deferred": deferred,
        "sessions_finished": finished, "accepted_250": len(load.accepted), "retried_after_4xx_or_break":
        len(load.retried), "retried_then_accepted": len(load.retried & set(load.accepted)),
        "unanswered_data": len(load.unanswered), "rejected_5xx": len(load.rejected), "gave_up": len(load.gave_up),
        "queues_drained": all(stack.queue_empty(i) for i in range(1, stack.nodes + 1)), "complete": drained,
        "still_queued": {i: stack.queued(i) for i in range(1, stack.nodes + 1) if stack.queued(i)},
        "read_on_node": reader, "read_errors": len(read_errors), "last_read_error": read_errors[-1:],
        "lost": None if lost is None else len(lost), "duplicated": len(dup),
        "duplicated_among_unanswered": len([t for t in dup if t in load.unanswered]),
        "lost_tags": (lost or [])[:20], "duplicated_tags": dup[:20], "rejected": ["%s: %d %s" % (t, c, m.decode(errors="replace") if isinstance(m, bytes) else m)
                     for t, (c, m) in sorted(load.rejected.items())[:5]],
        "retried_never_accepted": retried_lost[:20],
    }
    return summary


# ---- The tests ----------------------------------------------------------------

@unittest.skipUnless(os.path.exists(local.POSTFIX), "postfix is not installed")
class StackCase(unittest.TestCase):
    nodes = 3
    replicas = 2

    def setUp(self):
        for path, what in ((os.path.join(BUILD, "dovecot-plugin", "lib20_porcupine_plugin.so"), "the Dovecot plugin"),
                           (os.path.join(BUILD, "milter", "porcupine-milter"), "porcupine-milter")):
            if not os.path.exists(path):
                self.skipTest("%s was not built" % what)
        self.dir = tempfile.mkdtemp(prefix="pcpsm-")
        os.chmod(self.dir, 0o755)
        self.st = None
        self.addCleanup(self.stop_all)
        try:
            self.st = Stack(os.path.join(self.dir, "c"), self.nodes, self.replicas, SUBNET)
        except SystemExit:
            for st in list(Stack.live):  # what did start
                st.stop()
            self.fail("the cluster did not start (see %s)" % self.dir)
        self.assertTrue(wait_for(self.st.cl.converged, 30), "cluster did not form")
        for user, pw in USERS.items():
            self.st.ctl(1, "user", "add", user, "--password", pw)

    def stop_all(self):
        if self.st:
            self.st.stop()
        if not os.environ.get("KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)

    def rcpt(self, i, user):
        """The reply to RCPT TO (or to MAIL FROM when that already failed)."""
        with self.st.smtp(i) as s:
            s.ehlo()
            code, msg = s.mail("sender@outside.test")
            if code != 250:
                return code, msg
            return s.rcpt(user)


class Delivery(StackCase):
    def test_smtp_on_node1_imap_on_node2_pop3_on_node3_bytes_identical(self):
        sent = make_message("alice@example.org", "hello-across-nodes", 3000)
        with self.st.smtp(1) as s:
            refused = s.sendmail("sender@outside.test", ["alice@example.org"], sent)
        self.assertEqual(refused, {})
        self.assertTrue(wait_for(lambda: len(self.st.imap_messages(2, "alice@example.org")) == 1, 60),
                        "not readable on node 2; node 1's log:\n" + self.st.postfix_log(1)[-3000:])
        imap_raw = self.st.imap_messages(2, "alice@example.org")[0]
        pop_msgs = self.st.pop3_messages(3, "alice@example.org")
        self.assertEqual(len(pop_msgs), 1)
        self.assertEqual(strip_trace(imap_raw), sent)
        self.assertEqual(strip_trace(pop_msgs[0]), sent)
        # One trace header, naming the node that accepted it.
        heads = imap_raw.split(b"\r\n\r\n", 1)[0].lower()
        self.assertEqual(heads.count(b"\r\nx-porcupine-accepted-by:") + heads.startswith(b"x-porcupine-accepted-by:"), 1)
        self.assertTrue(header(imap_raw, b"X-Porcupine-Accepted-By").startswith(b"node 1 "), imap_raw[:400])

    def test_unknown_recipient_550_and_mixed_recipients_only_valid_ones_receive(self):
        code, msg = self.rcpt(2, "nobody@example.org")
        self.assertEqual(code, 550, msg)
        self.assertIn(b"5.1.1", msg)
        sent = make_message("alice@example.org", "mixed-recipients")
        with self.st.smtp(1) as s:
            refused = s.sendmail("sender@outside.test",
                                 ["alice@example.org", "ghost@example.org", "carol@example.com", "ghost@example.com"],
                                 sent)
        self.assertEqual(sorted(refused), ["ghost@example.com", "ghost@example.org"])
        self.assertTrue(all(c == 550 for c, _ in refused.values()), refused)
        for user in ("alice@example.org", "carol@example.com"):
            self.assertTrue(wait_for(lambda: len(self.st.imap_messages(3, user)) == 1, 60), user)
            self.assertEqual(strip_trace(self.st.imap_messages(3, user)[0]), sent)
        self.assertEqual(self.st.imap_messages(3, "bob@example.org"), [])
        # A domain that is not the cluster's is none of the milter's business:
        # it does not look it up (that would be a 550, as for ghost above).
        code, msg = self.rcpt(1, "someone@outside.test")
        self.assertEqual(code, 250, msg)
        self.assertNotIn("someone@outside.test", self.st.milter_log(1))

    def test_the_milter_and_lmtp_agree_on_every_recipient_form(self):
        """RFC 5321 forms of one address (quoted local part, source route,
        case) are accepted at RCPT and delivered to that user; unknown or
        malformed ones are refused at RCPT, permanently."""
        good = ['<"alice"@example.org>', "<@relay.example.com:alice@example.org>",
                '<@a.example.com,@b.example.com:"alice"@EXAMPLE.org>', "<alice@Example.Org>"]
        bad = ['<"ghost"@example.org>', '<"al ice"@example.org>', "<@relay.example.com:ghost@example.org>"]
        sent = make_message("alice@example.org", "recipient-forms")
        with self.st.smtp(1) as s:
            s.ehlo()
            self.assertEqual(s.mail("sender@outside.test")[0], 250)
            for rcpt in good:
                code, msg = s.docmd("RCPT", "TO:" + rcpt)
                self.assertEqual(code, 250, (rcpt, msg))
            for rcpt in bad:
                code, msg = s.docmd("RCPT", "TO:" + rcpt)
                self.assertEqual(code // 100, 5, (rcpt, code, msg))
            code, msg = s.data(sent)
            self.assertEqual(code, 250, msg)
        # Postfix folds the forms of one address into one recipient.
        self.assertTrue(wait_for(lambda: len(self.st.imap_messages(2, "alice@example.org")) == 1, 60),
                        "not delivered; node 1's log:\n" + self.st.postfix_log(1)[-3000:])
        self.assertEqual(strip_trace(self.st.imap_messages(2, "alice@example.org")[0]), sent)
        self.assertTrue(wait_for(lambda: self.st.queue_empty(1), 30), "left in the queue")

    def test_over_quota_recipient_gets_452(self):
        with self.st.smtp(1) as s:
            s.sendmail("sender@outside.test", ["bob@example.org"], make_message("bob@example.org", "fill", 2000))
        self.assertTrue(wait_for(lambda: len(self.st.imap_messages(2, "bob@example.org")) == 1, 60))
        # Now the mailbox holds more than its new quota.
        self.st.ctl(1, "user", "quota", "bob@example.org", "1000")

        def refused():
            code, msg = self.rcpt(2, "bob@example.org")
            return (code, msg) if code != 250 else None
        self.assertTrue(wait_for(lambda: refused() is not None, 30), "still 250 over quota")
        code, msg = refused()
        self.assertEqual(code, 452, msg)
        self.assertIn(b"4.2.2", msg)
        # Others on the same node are not affected.
        self.assertEqual(self.rcpt(2, "alice@example.org")[0], 250)


class Confidential(StackCase):
    """What a look at the wire between nodes, or another local account,
    can get out of a node: nothing of the mail or the hashes."""

    MARK = "confidential-%08x" % random.getrandbits(32)

    def deliver_marked(self, count):
        for n in range(count):
            user = sorted(USERS)[n % len(USERS)]
            # Each its own message (the same bytes again would be one
            # delivery: docs/architecture.md, "Exactly once").
            with self.st.smtp(1 + n % self.nodes) as s:
                self.assertEqual(s.sendmail("sender@outside.test", [user],
                                            make_message(user, "%s-%d" % (self.MARK, n), 3000)), {})
        # Read everywhere: the nodes fetch bodies from each other.
        for user in USERS:
            want = sum(1 for n in range(count) if sorted(USERS)[n % len(USERS)] == user)
            for i in range(1, self.nodes + 1):
                self.assertTrue(wait_for(lambda: len(self.st.imap_messages(i, user)) == want, 60), (user, i))

    def hashes(self):
        """The password hashes in the nodes' Redis files (as crypt(3) writes them)."""
        found = set()
        for top, _, files in (w for i in range(1, self.nodes + 1)
                              for w in os.walk(os.path.join(self.st.cl.ndir(i), "redis"))):
            for name in files:
                with open(os.path.join(top, name), "rb") as f:
                    found.update(re.findall(rb"\$6\$[./A-Za-z0-9]{1,16}\$[./A-Za-z0-9]{86}", f.read()))
        return found

    def test_a_capture_between_nodes_holds_no_body_or_hash(self):
        if not shutil.which("tcpdump"):
            self.fail("tcpdump is not installed (scripts/install-deps.sh installs it)")
        pcap = os.path.join(self.dir, "peers.pcap")
        dump = subprocess.Popen(["tcpdump", "-i", "lo", "-n", "-s", "0", "-U", "-w", pcap,
                                 "net 127.0.%d.0/24 and tcp port %d" % (SUBNET, local.PORT)],
                                stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        try:
            self.assertIn(b"listening on", dump.stderr.readline())
            # A new user and a password change (profiles and their hashes
            # go to R nodes), then mail delivered on every node and read on
            # every node.
            self.st.ctl(2, "user", "add", "dora@example.org", "--password", "dora-secret-pw")
            self.st.ctl(3, "user", "passwd", "alice@example.org", "--password", "alice-pw")
            self.deliver_marked(12)
        finally:
            dump.send_signal(signal.SIGINT)
            dump.wait(timeout=30)
        with open(pcap, "rb") as f:
            captured = f.read()
        hashes = self.hashes()
        self.assertGreaterEqual(len(hashes), len(USERS) + 1, "the hashes are not in the Redis files")
        # The capture saw the traffic (more than the mail itself, in TLS
        # application-data records) ...
        self.assertGreater(len(captured), 12 * 3000)
        self.assertGreater(captured.count(b"\x17\x03\x03"), 12)
        # ... and none of it in clear.
        self.assertNotIn(self.MARK.encode(), captured)
        self.assertNotIn(b"quick brown fox", captured)
        for h in hashes:
            self.assertNotIn(h, captured)
        for secret in (b"dora-secret-pw", b"dora@example.org", b"alice@example.org"):
            self.assertNotIn(secret, captured)

    def test_another_local_account_reads_nothing_of_a_node(self):
        self.deliver_marked(6)
        hashes = self.hashes()
        self.assertGreaterEqual(len(hashes), len(USERS))
        with open(os.path.join(self.st.cl.base, "secret"), "rb") as f:
            secret = f.read().strip()
        # As uid 4321 (no group of the system's): connect to every agent,
        # Redis and milter socket, and read every file of the cluster.
        probe = (
            "import json, os, socket, stat, sys\n"
            "out = {'connected': [], 'refused': [], 'read': {}, 'unreadable': 0}\n"
            "for top, dirs, files in os.walk(sys.argv[1]):\n"
            "    for name in files:\n"
            "        path = os.path.join(top, name)\n"
            "        mode = os.lstat(path).st_mode\n"
            "        if not stat.S_ISSOCK(mode) and not stat.S_ISREG(mode):\n"
            "            continue\n"
            "        if stat.S_ISSOCK(mode):\n"
            "            s = socket.socket(socket.AF_UNIX)\n"
            "            try:\n"
            "                s.connect(path); out['connected'].append(path)\n"
            "            except OSError:\n"
            "                out['refused'].append(path)\n"
            "            s.close(); continue\n"
            "        try:\n"
            "            with open(path, 'rb') as f: out['read'][path] = f.read().hex()\n"
            "        except OSError:\n"
            "            out['unreadable'] += 1\n"
            "print(json.dumps(out))\n")
        r = subprocess.run(["setpriv", "--reuid=4321", "--regid=4321", "--clear-groups", sys.executable, "-c",
                            probe, self.st.cl.base], capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        seen = json.loads(r.stdout)
        agents = [os.path.join(self.st.cl.ndir(i), "agent.sock") for i in range(1, self.nodes + 1)]
        # (Dovecot's login sockets are open to all, as its ports are.)
        self.assertEqual([p for p in seen["connected"] if p in agents or "redis" in p or "milter" in p], [])
        self.assertTrue(set(agents) <= set(seen["refused"]), seen["refused"])
        self.assertGreater(seen["unreadable"], 0)
        for path, data in seen["read"].items():
            data = bytes.fromhex(data)
            self.assertNotIn(self.MARK.encode(), data, path)
            self.assertNotIn(secret, data, path)
            for h in hashes:
                self.assertNotIn(h, data, path)


class Faults(StackCase):
    def test_agent_down_gives_451_not_250_not_550(self):
        self.st.cl.kill(2, redis=False)
        code, msg = self.rcpt(2, "alice@example.org")
        self.assertEqual(code, 451, msg)
        self.assertIn(b"4.3.0", msg)
        self.assertIn("RCPT <alice@example.org>: 451 4.3.0", self.st.milter_log(2))
        # Unknown users cannot be told apart either: still 451, never 550.
        code, msg = self.rcpt(2, "nobody@example.org")
        self.assertEqual(code, 451, msg)
        # Nor on a node whose agent is up, while node 2 is out of the group:
        # the profile of an unknown recipient might be there (451); known
        # users are accepted.
        self.assertTrue(wait_for(self.st.cl.converged, 30))
        self.assertEqual(self.rcpt(1, "alice@example.org")[0], 250)
        code, msg = self.rcpt(1, "nobody@example.org")
        self.assertEqual(code, 451, msg)
        # The agent back: the same node accepts again, and an unknown
        # recipient is a 550 again.
        self.st.cl.restart(2)
        self.assertTrue(wait_for(self.st.cl.converged, 30))
        self.assertTrue(wait_for(lambda: self.rcpt(2, "alice@example.org")[0] == 250, 30))
        self.assertTrue(wait_for(lambda: self.rcpt(1, "nobody@example.org")[0] == 550, 30))

    def test_agent_not_answering_gives_451_after_the_deadline(self):
        pid = self.st.cl.pid(3, "agent")
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.time()
            code, msg = self.rcpt(3, "bob@example.org")
            took = time.time() - started
        finally:
            os.kill(pid, signal.SIGCONT)
        self.assertEqual(code, 451, msg)
        self.assertIn(b"4.3.0", msg)
        print("451 after %.1f s" % took, file=sys.stderr)

    def test_milter_down_gives_tempfail(self):
        self.st.cl.kill_milter(1)
        code, msg = self.rcpt(1, "alice@example.org")
        self.assertTrue(400 <= code < 500, (code, msg))


class NoLoss(StackCase):
    """A bounded load while one node is killed with SIGKILL and restarted."""
    messages, sessions = 300, 6

    def check(self, victim, crash_after):
        summary = crash_run(self.st, self.messages, self.sessions, victim, crash_after, 3.0,
                            log=lambda m: print(m, file=sys.stderr))
        print(json.dumps(summary, indent=1), file=sys.stderr)
        self.assertTrue(summary["sessions_finished"])
        self.assertEqual(summary["rejected_5xx"], 0, summary)
        self.assertEqual(summary["gave_up"], 0, summary)
        self.assertEqual(summary["accepted_250"], self.messages, summary)
        self.assertIsNotNone(summary["read_on_node"], "no node could list the mailboxes: %s" % summary)
        self.assertEqual(summary["lost"], 0, summary)
        self.assertTrue(summary["queues_drained"], summary)

    def test_crash_early(self):
        self.check(2, 40)

    def test_crash_late(self):
        self.check(3, 200)


class Drain(StackCase):
    """A node drained while SMTP load runs through every node, the drained
    node then stopped and forgotten, then another node's agent killed with
    SIGKILL: nothing accepted is lost, nothing is refused."""
    nodes, replicas = 4, 2
    # About 20 s of load: the drain (a few seconds) ends well before it does.
    messages, sessions, pace_s = 400, 8, 0.3

    def log(self, m):
        print(m, file=sys.stderr, flush=True)

    def drain_left(self, i):
        s = self.st.status(i)
        return s["admin_state"], s["drain"]

    def metrics(self, i):
        import urllib.request
        with urllib.request.urlopen("http://%s:%d/metrics" % (self.st.addr(i), local.METRICS_PORT), timeout=10) as r:
            return r.read().decode()

    def read_all(self, readers, expect):
        """tag -> [raw] of every load message read over IMAP on each of
        readers; the bytes of every accepted one checked against what was
        sent. Returns (per node: tags missing, wrong, duplicated)."""
        out = {}
        for i in readers:
            got = {}
            for user in USERS:
                for raw in self.st.imap_messages(i, user):
                    subject = header(raw, b"Subject")
                    if subject and subject.startswith(b"load-"):
                        got.setdefault(subject.decode(), []).append((user, raw))
            missing = sorted(t for t in expect if t not in got)
            wrong = sorted(t for t in expect if t in got and any(
                u != expect[t] or strip_trace(raw) != make_message(expect[t], t, 400) for u, raw in got[t]))
            dup = sorted(t for t, v in got.items() if len(v) > 1)
            out[i] = (missing, wrong, dup)
        return out

    def wait_readable(self, readers, expect, timeout):
        result = {}

        def ok():
            result.update(self.read_all(readers, expect))
            return all(not m and not w for m, w, _ in result.values())
        done = wait_for(ok, timeout, 1.0)
        if not result:
            self.fail("no node among %s could list the mailboxes" % readers)
        return done, result

    def test_drain_under_smtp_load_then_forget_then_a_crash_nothing_lost_or_refused(self):
        st = self.st
        started = time.time()
        load = Load(st, self.messages, self.sessions, deadline_s=180, pace_s=self.pace_s)
        load.start()
        # One user's mail is on `spread` nodes: the node drained is the one
        # that holds the most once two fifths of the load are in, the one
        # crashed later the one that holds the most of the others.
        held = {}

        def some_in():
            held.update({i: self.drain_left(i)[1]["messages"] for i in range(1, self.nodes + 1)})
            return sum(held.values()) >= self.replicas * self.messages * 2 // 5
        self.assertTrue(wait_for(some_in, 90, 0.1), "the load does not go: %s" % held)
        n = max(held, key=lambda i: held[i])
        others = [i for i in range(1, self.nodes + 1) if i != n]
        crashed = max(others, key=lambda i: held[i])
        forget_on = min(i for i in others if i != crashed)
        before = self.drain_left(n)[1]
        self.log("drain of node %d: %d messages, %d profiles, %d buckets on it; %d of %d messages sent; held: %s"
                 % (n, before["messages"], before["profiles"], before["buckets"], load.done, self.messages, held))
        self.assertGreater(before["messages"], 0, "node %d holds nothing to drain" % n)
        st.ctl(n, "drain", str(n))
        drain_at = time.time()
        during = []  # the drain's progress, sampled while the load runs

        def drained():
            state, left = self.drain_left(n)
            during.append((round(time.time() - drain_at, 1), load.done, left["messages"]))
            return state == "draining" and all(v == 0 for v in left.values())
        drained_under_load = wait_for(lambda: drained() or load.done >= self.messages, 180, 0.5)
        drained_under_load = drained_under_load and load.done < self.messages
        sent_after_drained = self.messages - load.done if drained_under_load else 0
        drain_s = time.time() - drain_at
        self.assertTrue(load.join(), "the SMTP sessions did not finish")
        load_s = time.time() - started
        self.assertTrue(wait_for(drained, 120, 0.5), "node %d not drained: %s" % (n, self.drain_left(n)))
        drain_s = drain_s if drained_under_load else time.time() - drain_at
        self.assertTrue(wait_for(lambda: all(st.queue_empty(i) for i in range(1, self.nodes + 1)), 120, 0.5),
                        {i: st.queued(i) for i in range(1, self.nodes + 1)})
        deferred = {i: st.postfix_log(i).count("status=deferred") for i in range(1, self.nodes + 1)}
        summary = {
            "messages": self.messages, "sessions": self.sessions, "accepted_250": len(load.accepted),
            "sent_through_drained_node": len([t for t in load.accepted if int(t[5:]) % self.sessions % self.nodes + 1 == n]),
            "tempfailed_4xx": len(load.tempfailed), "broken_sessions": len(load.broken),
            "rejected_5xx": len(load.rejected), "gave_up": len(load.gave_up),
            "first_4xx": [(t, i, c, m.decode(errors="replace") if isinstance(m, bytes) else m)
                          for t, i, c, m in load.tempfailed[:5]],
            "first_breaks": load.broken[:5], "postfix_deferred_lmtp": deferred,
            "drained_while_load_ran": drained_under_load, "sent_after_drained": sent_after_drained,
            "drain_seconds": round(drain_s, 1),
            "load_seconds": round(load_s, 1), "drain_progress": during[:: max(1, len(during) // 12)],
        }
        self.log(json.dumps(summary, indent=1))
        # Nothing refused, nothing given up, every message accepted at once.
        self.assertEqual(load.tempfailed, [], summary)
        self.assertEqual(load.broken, [], summary)
        self.assertEqual(load.rejected, {}, summary)
        self.assertEqual(load.gave_up, set(), summary)
        self.assertEqual(len(load.accepted), self.messages, summary)
        # Drained: nothing on it, and it stays so now the load is over.
        state, left = self.drain_left(n)
        self.assertEqual((state, left), ("draining", {"messages": 0, "bytes": 0, "profiles": 0, "buckets": 0}))
        self.assertEqual([m["buckets"] for m in st.status(forget_on)["members"] if m["id"] == n], [0])
        self.assertIn({"node": n, "state": "draining"},
                      [{"node": a["node"], "state": a["state"]} for a in st.status(forget_on)["admin"]])
        # (The drain gauges are refreshed every 5 s.)
        self.assertTrue(wait_for(lambda: re.search(r"(?m)^porcupine_drain_remaining_messages 0$", self.metrics(n)),
                                 15, 0.5), self.metrics(n))
        self.assertRegex(self.metrics(n), r'(?m)^porcupine_node_admin_state\{node="%d"\} 1$' % n)
        # Every accepted message readable, byte for byte, on a node that
        # stays and on the drained one itself (it keeps serving).
        ok, result = self.wait_readable([forget_on, n], load.accepted, 120)
        self.assertTrue(ok, {i: (m[:10], w[:10]) for i, (m, w, _) in result.items()})
        self.assertEqual({i: d for i, (_, _, d) in result.items() if d}, {}, "duplicated")

        # The drained node stopped for good (its whole stack), then forgotten.
        st.stop_node(n)
        self.assertTrue(wait_for(lambda: st.cl.converged(), 60), "the cluster did not form without node %d" % n)
        stays = [i for i in range(1, self.nodes + 1) if i != n]
        passes = {i: st.status(i)["repair"]["passes"] for i in stays}
        forgot_at = time.time()
        st.ctl(forget_on, "node", "forget", str(n))

        def repaired():  # on every node: a full pass begun after the forget found nothing to copy
            views = {i: st.status(i) for i in stays}
            return all(any(a["node"] == n and a["state"] == "gone" for a in v["admin"]) and
                       v["repair"]["pending"] == 0 and v["repair"]["inflight"] == 0 and
                       v["repair"]["passes"] >= passes[i] + 2 for i, v in views.items())
        self.assertTrue(wait_for(repaired, 60, 0.5), [st.status(i)["repair"] for i in stays])
        self.log("node %d forgotten on node %d; repair settled in %.1f s: %s" % (
            n, forget_on, time.time() - forgot_at, {i: st.status(i)["repair"] for i in stays}))

        # Then another node's agent killed: every message still readable,
        # byte for byte, on each node left.
        st.cl.kill(crashed, redis=False)
        readers = [i for i in stays if i != crashed]
        self.assertTrue(wait_for(lambda: st.cl.converged(), 60), "the cluster did not form again")
        ok, result = self.wait_readable(readers, load.accepted, 120)
        self.assertTrue(ok, {i: (m[:10], w[:10]) for i, (m, w, _) in result.items()})
        self.assertEqual({i: d for i, (_, _, d) in result.items() if d}, {}, "duplicated")
        self.log("node %d's agent killed: %d messages read byte for byte on nodes %s; %.0f s in all" % (
            crashed, len(load.accepted), readers, time.time() - started))


FULL_SPOOL = "12m"          # --full: the victim's spool (tmpfs): full after some hundreds of copies
FULL_RESERVE = 8 << 20      # spool_reserve_bytes of every node


def small_spool(st, i):
    """Node i's spool on a tmpfs of FULL_SPOOL; returns its unmount."""
    spool = os.path.join(st.cl.ndir(i), "spool")
    st.cl.stop_pid(i, "agent")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0700" % FULL_SPOOL, "tmpfs", spool], check=True)
    st.cl.start_agent(i)

    def unmount():
        if subprocess.run(["umount", spool]).returncode != 0:
            subprocess.run(["umount", "-l", spool])
    return unmount


def soak(messages, sessions, runs, only_run=0, fault="kill", down_s=3.0):
    lost = 0
    moments = [0.1, 0.5, 0.8, 0.3, 0.65]
    for run in range(runs):
        if only_run and run + 1 != only_run:
            continue
        base = tempfile.mkdtemp(prefix="pcpsoak-")
        os.chmod(base, 0o755)
        st, unmount = None, None
        try:
            st = Stack(os.path.join(base, "c"), 3, 2, SUBNET,
                       extra_config={"spool_reserve_bytes": str(FULL_RESERVE)} if fault == "full" else None)
            if not wait_for(st.cl.converged, 30):
                raise SystemExit("soak: cluster did not form")
            if fault == "full":
                unmount = small_spool(st, run % 3 + 1)
                if not wait_for(st.cl.converged, 30):
                    raise SystemExit("soak: cluster did not form again")
            for user, pw in USERS.items():
                st.ctl(1, "user", "add", user, "--password", pw)
            victim = run % 3 + 1
            after = int(messages * moments[run % len(moments)])
            if fault == "full":
                print("run %d: %d messages over %d sessions, node %d's spool a %s tmpfs (reserve %d MB)" %
                      (run + 1, messages, sessions, victim, FULL_SPOOL, FULL_RESERVE >> 20), flush=True)
            else:
                print("run %d: %d messages over %d sessions, node %d %s after %d" %
                      (run + 1, messages, sessions, victim, "stopped" if fault == "stop" else "killed", after),
                      flush=True)
            started = time.time()
            s = crash_run(st, messages, sessions, victim, after, down_s, log=lambda m: print(m, flush=True),
                          fault=fault)
            s["seconds"] = round(time.time() - started, 1)
            if fault == "full":
                with open(os.path.join(st.cl.ndir(victim), "agent.log"), errors="replace") as f:
                    s["victim_full"] = "this node is full" in f.read()
            print(json.dumps(s, indent=1), flush=True)
            lost += s["messages"] if s["lost"] is None else s["lost"]
        finally:
            if os.environ.get("KEEP"):  # left running for a look; porcupine-local --dir ... stop
                print("kept: %s" % base, flush=True)
            else:
                if st:
                    st.stop()
                if unmount:
                    unmount()
                shutil.rmtree(base, ignore_errors=True)
    print("soak: %d runs, %d accepted messages lost or unreadable" % (runs, lost))
    return 1 if lost else 0


def main():
    global BUILD, SUBNET
    argv = [sys.argv[0]]
    args = iter(sys.argv[1:])
    soak_args = None
    for a in args:
        if a == "--build":
            BUILD = os.path.abspath(next(args))
        elif a == "--subnet":
            SUBNET = int(next(args))
        elif a == "--soak":
            soak_args = {"messages": 2000, "sessions": 20, "runs": 3}
        elif a in ("--messages", "--sessions", "--runs", "--only-run"):
            soak_args[a[2:].replace("-", "_")] = int(next(args))
        elif a == "--down":
            soak_args["down_s"] = float(next(args))
        elif a == "--stop":  # SIGSTOP the victim's agent instead of killing the node
            soak_args["fault"] = "stop"
        elif a == "--full":  # the victim's spool fills instead
            soak_args["fault"] = "full"
        else:
            argv.append(a)
    signal.signal(signal.SIGTERM, on_sigterm)
    if soak_args is not None:
        sys.exit(soak(**soak_args))
    unittest.main(argv=argv, verbosity=2)


if __name__ == "__main__":
    main()
