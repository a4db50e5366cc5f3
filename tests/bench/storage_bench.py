#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""storage_bench.py - the disk a porcupine cluster uses for its mail once
every user has read it through every node.

A 3-node cluster (R=2, spread 2) of real agents, redis-servers and a
Dovecot per node (scripts/porcupine-local) on 127.0.K.1-3. USERS users get
MESSAGES messages of SIZE bytes each over LMTP, spread over the nodes; then
every user reads every message (UID FETCH 1:* BODY.PEEK[]) through every
node. Printed per node, in bytes on disk (st_blocks): the replicas in the
agent's spool, its node cache, Dovecot's storage (indexes only), and what
that node may hold at most (its share of the R copies: the replicas it
holds, plus its cache budget); then the cluster's total against the mail's
size. Asserts nothing about the figures; exits 1 if a read came back
wrong.

Usage: storage_bench.py --build BUILD_DIR [--subnet K] [--users U]
                        [--messages N] [--size BYTES] [--cache-size 64M]
"""
import argparse
import imaplib
import importlib.machinery
import json
import os
import shutil
import smtplib
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
local = importlib.machinery.SourceFileLoader("porcupine_local", os.path.join(ROOT, "scripts", "porcupine-local")).load_module()
PASSWORD = "secret"


def disk_bytes(path):
    total = 0
    for d, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(d, f)).st_blocks * 512
            except OSError:
                pass
    return total


def message(user, n, size):
    head = ("From: sender@example.org\r\nTo: %s\r\nSubject: storage %d\r\n\r\n" % (user, n)).encode()
    line = b"abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123456789ab\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--subnet", type=int, default=77)
    ap.add_argument("--users", type=int, default=1)
    ap.add_argument("--messages", type=int, default=200)
    ap.add_argument("--size", type=int, default=20000)
    ap.add_argument("--cache-size", default="1M")
    a = ap.parse_args()
    build = os.path.abspath(a.build)
    base = tempfile.mkdtemp(prefix="pcpstorage-")
    os.chmod(base, 0o755)
    cl = local.Cluster(os.path.join(base, "c"), build)
    users = ["s%02d@example.com" % k for k in range(a.users)]
    ok = False
    try:
        try:
            cl.start(3, 2, 2, a.subnet, services=["dovecot"], extra_config={"cache_size": a.cache_size})
        except SystemExit:
            raise RuntimeError("the cluster did not start (see %s)" % cl.base)
        deadline = time.time() + 30
        while not cl.converged():
            if time.time() > deadline:
                raise RuntimeError("the cluster did not form")
            time.sleep(0.2)
        for u in users:
            r = cl.ctl(1, ["user", "add", u, "--password", PASSWORD], capture=True)
            if r.returncode != 0:
                raise RuntimeError("user add: " + r.stderr)
        mail = 0
        for u in users:
            for k in range(3):
                msgs = [message(u, n, a.size) for n in range(k, a.messages, 3)]
                mail += sum(len(m) for m in msgs)
                with smtplib.LMTP(cl.address(1 + k), local.LMTP_PORT, timeout=60) as s:
                    for data in msgs:
                        s.sendmail("sender@example.org", [u], data)
        bad = 0
        for i in (1, 2, 3):
            for u in users:
                m = imaplib.IMAP4(cl.address(i), local.IMAP_PORT, timeout=120)
                m.login(u, PASSWORD)
                m.select("INBOX", readonly=True)
                typ, data = m.uid("FETCH", "1:*", "(BODY.PEEK[])")
                bodies = [item[1] for item in data if isinstance(item, tuple)]
                bad += sum(1 for b in bodies if b"Subject: storage" not in b) + abs(len(bodies) - a.messages)
                m.logout()
        time.sleep(1)
        print("storage_bench: %d users x %d messages of %d bytes (%d bytes of mail), R=2, 3 nodes, "
              "each user read through every node" % (a.users, a.messages, a.size, mail))
        print("  %-6s %12s %12s %12s %12s %12s %12s" % ("node", "replicas", "cache", "budget", "dovecot",
                                                        "total", "bound"))
        total = 0
        within = True
        for i in (1, 2, 3):
            spool = os.path.join(cl.ndir(i), "spool")
            replicas = disk_bytes(os.path.join(spool, "msg"))
            cache = disk_bytes(os.path.join(spool, "cache"))
            dovecot = disk_bytes(os.path.join(cl.dovecot_dir(i), "mail"))
            status = json.loads(cl.ctl(i, ["--json", "status"], capture=True).stdout)
            budget = status["cache"]["budget"]
            node = replicas + cache + dovecot
            bound = replicas + budget
            within = within and replicas + cache <= bound
            total += node
            print("  %-6d %12d %12d %12d %12d %12d %12d" % (i, replicas, cache, budget, dovecot, node, bound))
        print("  cluster total %d bytes on disk for %d bytes of mail: %.2fx (R=2; the caches' budgets "
              "add at most %.2fx)" % (total, mail, total / mail, 3 * budget / mail))
        print("  bodies (replicas + caches) within each node's share of the R copies plus its budget: %s" %
              ("yes" if within else "NO"))
        ok = bad == 0
        if bad:
            print("storage_bench: %d reads came back wrong or missing" % bad, file=sys.stderr)
    except (RuntimeError, OSError, imaplib.IMAP4.error, smtplib.SMTPException) as e:
        print("storage_bench: %s" % e, file=sys.stderr)
    finally:
        cl.stop()
        if ok and not os.environ.get("KEEP"):
            shutil.rmtree(base, ignore_errors=True)
        elif not ok:
            print("storage_bench: logs kept in %s" % base, file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
