#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""End-to-end tests of what the Dovecot plugin does with a message at save
time: it is never whole in a mail process's memory, and its IMAP
BODYSTRUCTURE, worked out there by Dovecot's own code, is kept with it in
the cluster so a node holding none of the mail answers BODYSTRUCTURE and
BODY without moving a body.

Classes (each gets its own subnet from CMake):
  ImapBoundedSaves  a 50 MB APPEND and a 50 MB LMTP delivery: the imap and
                lmtp processes' and the agents' peak memory (VmHWM) grow by
                far less than the message; both read back byte for byte
                through a node holding none of the mail
  ImapStructureWithoutBodies  multipart messages of about 200 KB each,
                delivered by LMTP, APPEND and COPY: on a node holding none
                of them, UID FETCH BODYSTRUCTURE and BODY answer what a
                stock Dovecot answers for the same bytes, while that node's
                agent opens and fetches no body

Usage: imap_meta_test.py --build BUILD_DIR [--subnet K] [unittest args]
The cluster helpers are dovecot_test.py's (DovecotCase).
"""
import base64
import hashlib
import imaplib
import importlib.machinery
import json
import os
import re
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
dt = importlib.machinery.SourceFileLoader("dovecot_test", os.path.join(HERE, "dovecot_test.py")).load_module()
USER, PASSWORD = dt.USER, dt.PASSWORD

# The big messages of ImapBoundedSaves: 50 MB (PCP_BIG_BYTES to change it).
BIG_BYTES = int(os.environ.get("PCP_BIG_BYTES", 50 * 1000 * 1000))


def vmhwm(pid):
    """The process's peak resident memory in bytes (VmHWM)."""
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) * 1024


def children(ppid, name):
    """The PIDs of `ppid`'s children whose command is `name`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        if comm == name and int(fields[1]) == ppid:
            found.append(int(entry))
    return found


def sanitized(pid):
    """ASan's quarantine keeps freed chunks: its peaks mean nothing."""
    with open("/proc/%d/maps" % pid) as f:
        return "libasan" in f.read()


class ImapBoundedSaves(dt.DovecotCase):
    """A 50 MB APPEND and a 50 MB LMTP delivery are never whole in the
    memory of the Dovecot process that takes them (the APPEND goes to a
    temporary file above 256 KiB, LMTP's source is read again from
    LMTP's own temporary file), nor in an agent's; nor is a 50 MB message
    read through a node that holds none of it (its agent fetches it into
    a staging file, the imap process reads the descriptor it is given)."""

    def big(self, tag):
        line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+/0123456789abcdef\r\n"
        return (b"From: big@example.org\r\nTo: %s\r\nSubject: big %s\r\n\r\n" % (USER.encode(), tag) +
                line * (BIG_BYTES // len(line)))

    def test_a_50_mb_append_and_lmtp_delivery_are_never_whole_in_memory(self):
        master = self.cl.pid(1, "dovecot")
        agents = {i: vmhwm(self.cl.pid(i, "agent")) for i in (1, 2, 3)}
        appended = self.big(b"append")
        m = self.imap(1)
        try:
            # Dovecot runs one imap process per session (client_limit 1):
            # this session's is the only one of node 1.
            imaps = children(master, "imap")
            self.assertEqual(len(imaps), 1, imaps)
            before = vmhwm(imaps[0])
            typ, resp = m.append("INBOX", None, None, appended)
            self.assertEqual(typ, "OK", resp)
            grew = vmhwm(imaps[0]) - before
            print("\nimap process: VmHWM %d -> %d bytes for a %d-byte APPEND"
                  % (before, before + grew, len(appended)))
        finally:
            m.logout()
        self.assertLess(grew, 16 << 20, "the imap process grew by %d bytes for a %d-byte APPEND"
                        % (grew, len(appended)))

        delivered = self.big(b"lmtp")
        lmtps = {pid: vmhwm(pid) for pid in children(master, "lmtp")}
        self.deliver(1, delivered, timeout=120)
        after = children(master, "lmtp")
        self.assertTrue(after, "no lmtp process left to look at")
        for pid in after:
            # An lmtp process started for this delivery began near nothing.
            grew = vmhwm(pid) - lmtps.get(pid, 0)
            print("lmtp process %d: VmHWM %d -> %d bytes" % (pid, lmtps.get(pid, 0), vmhwm(pid)))
            self.assertLess(grew if pid in lmtps else vmhwm(pid), 24 << 20,
                            "lmtp process %d: %d bytes for a %d-byte delivery" % (pid, grew, len(delivered)))
        for i in (1, 2, 3):
            pid = self.cl.pid(i, "agent")
            if not sanitized(pid):
                grew = vmhwm(pid) - agents[i]
                print("agent %d: VmHWM %d -> %d bytes" % (i, agents[i], vmhwm(pid)))
                self.assertLess(grew, len(delivered) // 3, "agent %d grew by %d bytes" % (i, grew))

        listing = self.cluster_listing(1)["messages"]
        self.assertEqual(len(listing), 2)
        holders = set(listing[0]["replicas"]) | set(listing[1]["replicas"])
        reader = min(set((1, 2, 3)) - holders or {2})
        m = self.imap(reader)
        try:
            self.assertEqual(m.select("INBOX", readonly=True), ("OK", [b"2"]))
            for seq, want in ((1, appended), (2, delivered)):
                typ, got = m.fetch(str(seq), "(BODY.PEEK[])")
                self.assertEqual(typ, "OK")
                body = got[0][1]
                if seq == 2:
                    # LMTP puts its trace headers before what was sent.
                    self.assertTrue(body.endswith(want) and len(body) - len(want) < 2000)
                else:
                    self.assertEqual(hashlib.sha256(body).hexdigest(), hashlib.sha256(want).hexdigest())
        finally:
            m.logout()
        self.assertNotRegex(self.dovecot_log(1, whole=True), r" (Error|Panic|Fatal): ")

    def test_a_50_mb_message_read_through_a_node_holding_none_is_never_whole_in_memory(self):
        want = self.big(b"read")
        self.deliver(1, want)
        listing = self.cluster_listing(1)["messages"]
        self.assertEqual(len(listing), 1)
        outside = sorted(set((1, 2, 3)) - set(listing[0]["replicas"]))
        self.assertEqual(len(outside), 1, listing[0]["replicas"])
        reader = outside[0]
        agent = self.cl.pid(reader, "agent")
        agent_before = vmhwm(agent)
        m = self.imap(reader)
        try:
            imaps = children(self.cl.pid(reader, "dovecot"), "imap")
            self.assertEqual(len(imaps), 1, imaps)
            before = vmhwm(imaps[0])
            self.assertEqual(m.select("INBOX", readonly=True), ("OK", [b"1"]))
            typ, got = m.fetch("1", "(BODY.PEEK[])")
            self.assertEqual(typ, "OK")
            body = got[0][1]
            # LMTP puts its trace headers before what was sent.
            self.assertTrue(body.endswith(want) and len(body) - len(want) < 2000, len(body))
            grew = vmhwm(imaps[0]) - before
            print("\nnode %d (holding none): imap process VmHWM %d -> %d bytes for a %d-byte FETCH"
                  % (reader, before, before + grew, len(body)))
            self.assertLess(grew, 16 << 20, "the imap process grew by %d bytes reading %d" % (grew, len(body)))
        finally:
            m.logout()
        if not sanitized(agent):
            grew = vmhwm(agent) - agent_before
            print("node %d agent: VmHWM %d -> %d bytes" % (reader, agent_before, agent_before + grew))
            self.assertLess(grew, 16 << 20, "the reading node's agent grew by %d bytes" % grew)
        self.assertNotRegex(self.dovecot_log(reader, whole=True), r" (Error|Panic|Fatal): ")


def multipart(n, size=200 * 1000, lf=False):
    """A multipart/mixed message of about `size` bytes: text and HTML
    alternatives, a base64 attachment with a file name, and a forwarded
    message with its own parts."""
    rnd = hashlib.sha256(b"%d" % n).digest() * (size // 48 + 1)
    attachment = base64.encodebytes(rnd[:size * 3 // 4 - 20000]).replace(b"\n", b"\r\n")
    text = (b"Hello %d,\r\n\r\nThe report is attached. Caf\xc3\xa9.\r\n" % n) * 40
    html = b"<html><body><p>Hello =C3=A9 %d</p></body></html>\r\n" % n
    inner = (b"From: inner@example.org\r\nSubject: forwarded %d\r\nMIME-Version: 1.0\r\n"
             b"Content-Type: multipart/alternative; boundary=\"in%d\"\r\n\r\n"
             b"--in%d\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nforwarded text\r\n"
             b"--in%d\r\nContent-Type: text/html; charset=us-ascii\r\n\r\n<p>forwarded</p>\r\n"
             b"--in%d--\r\n" % (n, n, n, n, n))
    body = (b"From: sender@example.org\r\nTo: %s\r\nSubject: structure %d\r\n"
            b"Message-Id: <s%d@test>\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=\"out%d\"\r\n\r\n"
            b"This is a multi-part message in MIME format.\r\n"
            b"--out%d\r\nContent-Type: multipart/alternative; boundary=\"alt%d\"\r\n\r\n"
            b"--alt%d\r\nContent-Type: text/plain; charset=utf-8; format=flowed\r\n"
            b"Content-Transfer-Encoding: 8bit\r\n\r\n%s"
            b"--alt%d\r\nContent-Type: text/html; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: quoted-printable\r\nContent-Language: en\r\n\r\n%s"
            b"--alt%d--\r\n"
            b"--out%d\r\nContent-Type: application/pdf; name=\"report-%d.pdf\"\r\n"
            b"Content-Transfer-Encoding: base64\r\nContent-ID: <att%d@test>\r\n"
            b"Content-Description: the report\r\n"
            b"Content-Disposition: attachment; filename=\"report-%d.pdf\"; size=%d\r\n\r\n%s"
            b"--out%d\r\nContent-Type: message/rfc822\r\n\r\n%s"
            b"--out%d--\r\n"
            % (USER.encode(), n, n, n, n, n, n, text, n, html, n, n, n, n, n, len(attachment), attachment,
               n, inner, n))
    return body.replace(b"\r\n", b"\n") if lf else body


class ImapStructureWithoutBodies(dt.DovecotCase):
    """The BODYSTRUCTURE worked out at save is kept with the message: a
    node holding none of the mail answers BODYSTRUCTURE and BODY from its
    index's cache, as a stock Dovecot would for the same bytes, without
    opening a body."""
    nodes = 4  # R=2 over two of them: two nodes hold none of the mail

    def status(self, i):
        return json.loads(self.ctl(i, "--json", "status"))

    def fetch_all(self, m, item):
        typ, data = m.fetch("1:*", "(%s)" % item)
        self.assertEqual(typ, "OK", data)
        # One line per message (no literals in these structures).
        self.assertTrue(all(isinstance(d, bytes) for d in data), data)
        return data

    def test_a_node_holding_none_answers_bodystructure_and_body_as_stock_without_bodies(self):
        sent = [multipart(0)]
        self.deliver(1, sent[0])
        holders = set(self.cluster_listing(1)["messages"][0]["replicas"])
        self.assertEqual(len(holders), 2)
        writer = min(holders)
        reader = max(set(range(1, self.nodes + 1)) - holders)
        for n in (1, 2):
            sent.append(multipart(n))
            self.deliver(writer, sent[-1])
        m = self.imap(writer)
        try:
            for n in (3, 4):
                # LMTP makes line ends CRLF; an APPEND keeps bare LFs.
                sent.append(multipart(n, size=(150 + 40 * n) * 1000, lf=(n == 3)))
                m.literal = sent[-1]  # as it is (imaplib's append() would make it CRLF)
                typ, resp = m._simple_command("APPEND", "INBOX")
                self.assertEqual(typ, "OK", resp)
            self.assertEqual(m.create("Archive")[0], "OK")
            self.assertEqual(m.select("INBOX")[0], "OK")
            typ, resp = m.copy("1", "Archive")  # a COPY: the source's cached BODYSTRUCTURE goes with it
            self.assertEqual(typ, "OK", resp)
            self.assertEqual(m.select("Archive")[0], "OK")
            self.assertEqual(m.copy("1", "INBOX")[0], "OK")
        finally:
            m.logout()
        listing = self.cluster_listing(reader)["messages"]
        self.assertEqual(len(listing), 6)
        self.assertTrue(all(set(x["replicas"]) == holders for x in listing), listing)
        self.assertTrue(all(x["size"] > 100000 for x in listing))

        before = self.status(reader)
        m = self.imap(reader)
        try:
            # The SELECT takes the records; the first FETCH that wants
            # BODYSTRUCTURE, the metas.
            self.assertEqual(m.select("INBOX", readonly=True), ("OK", [b"6"]))
            first = self.fetch_all(m, "BODYSTRUCTURE")
        finally:
            m.logout()
        # One more, once the reader has indexed the others: its meta is
        # taken by the next FETCH, the others' are in the cache already.
        sent.append(multipart(5))
        self.deliver(writer, sent[-1])
        m = self.imap(reader)
        try:
            self.assertEqual(m.select("INBOX", readonly=True), ("OK", [b"7"]))
            structures = self.fetch_all(m, "BODYSTRUCTURE")
        finally:
            m.logout()
        self.assertEqual(structures[:6], first)
        m = self.imap(reader)  # a new session: BODY alone, from the cache too
        try:
            self.assertEqual(m.select("INBOX", readonly=True), ("OK", [b"7"]))
            bodies = self.fetch_all(m, "BODY")
        finally:
            m.logout()
        after = self.status(reader)
        self.assertEqual(after["cache"]["misses"], before["cache"]["misses"], (before["cache"], after["cache"]))
        self.assertEqual(after["cache"]["hits"], before["cache"]["hits"], (before["cache"], after["cache"]))
        self.assertEqual(after["cache"]["entries"], 0, after["cache"])
        if "fetched" in after:  # bodies and header parts fetched from holders
            self.assertEqual(after["fetched"], before.get("fetched"))

        # What the reader stores is what a stock Dovecot would answer for:
        # the same bytes (behind LMTP's trace headers), appended to one.
        m = self.imap(reader)
        try:
            self.assertEqual(m.select("INBOX", readonly=True)[0], "OK")
            typ, data = m.fetch("1:*", "(BODY.PEEK[])")
            self.assertEqual(typ, "OK")
            stored = [d[1] for d in data if isinstance(d, tuple)]
        finally:
            m.logout()
        self.assertEqual(len(stored), 7)
        # IMAP shows bare LFs as CRLF; the stock Dovecot is given the bytes
        # as stored (LMTP's trace headers, then what was sent).
        def crlf(b):
            return b.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        as_stored = []
        for b in stored:
            match = [w for w in sent if b.endswith(crlf(w))]
            self.assertEqual(len(match), 1, "a message read is not one sent")
            as_stored.append(b[:len(b) - len(crlf(match[0]))] + match[0])
        bench, stock = self.start_stock()
        s = imaplib.IMAP4(stock.addr, dt.IMAP_PORT, timeout=60)
        try:
            s.login(bench.USER, bench.PASSWORD)
            for body in as_stored:
                s.literal = body  # as it is (imaplib's append() would make it CRLF)
                self.assertEqual(s._simple_command("APPEND", "INBOX")[0], "OK")
            self.assertEqual(s.select("INBOX", readonly=True), ("OK", [b"7"]))
            want_structures = self.fetch_all(s, "BODYSTRUCTURE")
            want_bodies = self.fetch_all(s, "BODY")
        finally:
            s.logout()
        self.assertEqual(structures, want_structures)
        self.assertEqual(bodies, want_bodies)
        self.assertIn(b"\"report-0.pdf\"", structures[0])
        self.assertNotRegex(self.dovecot_log(reader, whole=True), r" (Error|Panic|Fatal): ")

    def start_stock(self):
        """A stock Dovecot (tests/bench/imap_bench.py's) on 127.0.K.9."""
        bench = importlib.machinery.SourceFileLoader(
            "imap_bench", os.path.join(HERE, "..", "bench", "imap_bench.py")).load_module()
        stock = bench.Stock(self.dir, "127.0.%d.9" % dt.SUBNET, dt.SUBNET)
        self.addCleanup(stock.stop)
        stock.start()
        return bench, stock


if __name__ == "__main__":
    dt.main()  # --build, --subnet, then unittest's own arguments
