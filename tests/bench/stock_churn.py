#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The load of e2e ImapConformance's churn test against a stock Dovecot
with sdbox (no cluster): one session creates, fills, renames and deletes a
folder over and over while four others keep STATUS, LIST and SELECT of it
going and two more log in and out. Prints the errors the stock Dovecot
logged, so the test's tolerance can be checked against stock.

    python3 tests/bench/stock_churn.py [--runs 6] [--subnet 88]
"""
import argparse
import imaplib
import importlib.machinery
import os
import shutil
import sys
import tempfile
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
bench = importlib.machinery.SourceFileLoader("imap_bench", os.path.join(HERE, "imap_bench.py")).load_module()


def message(n):
    return b"From: a@example.org\r\nSubject: m%d\r\n\r\nbody %d\r\n" % (n, n)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=6)
    ap.add_argument("--subnet", type=int, default=88)
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="stock-churn-")
    os.chmod(base, 0o755)
    addr = "127.0.%d.9" % args.subnet
    stock = bench.Stock(base, addr, args.subnet, mail="sdbox")

    def imap():
        m = imaplib.IMAP4(addr, bench.local.IMAP_PORT, timeout=30)
        m.login(bench.USER, bench.PASSWORD)
        return m

    def watcher(stop):
        m = imap()
        while not stop.is_set():
            try:
                m.status("churn", "(MESSAGES UIDVALIDITY)")
                m.list()
                typ, data = m.select("churn")
                if typ == "OK":
                    if data[0] != b"0":
                        m.fetch("1:*", "(FLAGS)")
                    m.close()
            except imaplib.IMAP4.abort:
                m = imap()  # selected while deleted: BYE
        m.logout()

    def relogin(stop):
        while not stop.is_set():
            m = imap()
            m.list()
            m.logout()

    try:
        stock.start()
        bad = []
        for run in range(args.runs):
            stop = threading.Event()
            threads = [threading.Thread(target=watcher, args=(stop,)) for _ in range(4)]
            threads += [threading.Thread(target=relogin, args=(stop,)) for _ in range(2)]
            for t in threads:
                t.start()
            m = imap()
            try:
                for k in range(15):
                    if k:
                        m.delete("churn")
                    m.create("churn")
                    for n in range(3):
                        m.append("churn", None, None, message(n))
                    m.select("churn")
                    m.store("1", "+FLAGS", "\\Seen")
                    m.close()
                    m.rename("churn", "churn-r")
                    m.status("churn-r", "(MESSAGES)")
                    m.delete("churn-r")
                    m.create("churn")
            finally:
                stop.set()
                for t in threads:
                    t.join(60)
            m.delete("churn")
            m.logout()
            with open(os.path.join(stock.d, "dovecot.log")) as f:
                bad = [line for line in f.read().splitlines()
                       if " Error: " in line or " Panic: " in line or " Fatal: " in line]
            print("round %d: %d errors logged so far" % (run + 1, len(bad)))
            sys.stdout.flush()
        for line in bad:
            print("  " + line)
    finally:
        stock.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
