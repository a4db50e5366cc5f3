#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""imap_bench.py - reads and deliveries through the porcupine Dovecot
plugin against a stock Dovecot with Maildir on the same machine, in the same
run, round by round. Prints medians with their spread and the ratios to
stock; asserts no speed unless --check.

  porcupine: a 4-node cluster (R=2, spread 2) of real agents and
             redis-servers with a Dovecot per node (scripts/porcupine-local)
             on 127.0.K.1-4. A first message shows which two nodes hold the
             user's mail: reads go to one of them ("holding") and to a node
             that holds none and never accepted any ("none"); LMTP goes in
             turn to the other holder and to the remaining node (which holds
             none: the accepting node's cache fill).
  stock:     one Dovecot, mail_location = maildir, a passwd-file, on
             127.0.K.10, same ports.

Both get the same N messages over LMTP, in 2*ROUNDS slices, one LMTP
session per slice, porcupine's and stock's slices in turn. Then ROUNDS
rounds, each on stock, the holding node and the none node in turn:
  cold     the first IMAP SELECT of the folder on a node that never opened
           it: its Dovecot has no index of it and builds one (porcupine:
           the node's Dovecot index of the user removed before the round,
           built from the cluster's listing; stock: its dovecot.index* files
           removed, built again from dovecot-uidlist and the maildir, whose
           files keep the UIDs, flags and sizes; the headers are parsed
           again on both)
  headers  in the same session, a desktop client's first header fetch:
           UID FETCH 1:* (FLAGS RFC822.SIZE INTERNALDATE
           BODY.PEEK[HEADER.FIELDS (From To Subject Date)])
  search   a new session: SELECT + UID SEARCH BODY "line 00000007" (one
           message matches), which reads every body (no full-text index)
  warm     a new session's SELECT of the folder its Dovecot has indexed
           (porcupine: the cluster's digest of it, compared with the one
           the index took)
  fetch    in that session: UID FETCH 1:* BODY.PEEK[]
  retr     a POP3 session (login, STAT, RETR of every message, QUIT)
Times are seconds, rates messages per second of wall time; ratios are
porcupine/stock of the same round (times: at most 2 is the goal; rates: at
least 0.8), then their median and range. The none node's first round reads
what its node cache does not hold yet (fetched from the holders); its later
rounds read its cache: its first round is shown apart too (its SEARCH
reads bodies no node cache has; FETCH then reads what SEARCH brought).

Usage: imap_bench.py --build BUILD_DIR [--subnet K] [--messages N]
                     [--size BYTES] [--rounds R] [--quick] [--check]
--quick (ctest bench.imap.quick): 40 messages, 2 rounds; checks only that
every figure is there and every message came back whole (exit 1 if not).
--check: also exit 1 if a figure misses the goal (cold and headers at most
2x stock's time; FETCH and RETR on both nodes and LMTP at least 0.8x
stock's rate; medians).
"""
import argparse
import imaplib
import importlib.machinery
import json
import os
import poplib
import shutil
import signal
import smtplib
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
local = importlib.machinery.SourceFileLoader("porcupine_local", os.path.join(ROOT, "scripts", "porcupine-local")).load_module()
stock_dovecot = importlib.machinery.SourceFileLoader(
    "stock_dovecot", os.path.join(os.path.dirname(os.path.abspath(__file__)), "stock_dovecot.py")).load_module()
DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
USER, PASSWORD = "bench@example.com", "secret"



def message(n, size):
    head = ("From: sender@example.org\r\nTo: %s\r\nSubject: bench %d\r\nMessage-Id: <b%d@bench>\r\n\r\n"
            % (USER, n, n)).encode()
    line = b"benchmark body line %08d abcdefghijklmnopqrstuvwxyz\r\n" % n
    return head + line * max(1, size // len(line))


def wait_listening(addr, ports, timeout=15):
    import socket
    deadline = time.time() + timeout
    while time.time() < deadline:
        ok = True
        for p in ports:
            try:
                socket.create_connection((addr, p), timeout=1).close()
            except OSError:
                ok = False
        if ok:
            return True
        time.sleep(0.1)
    return False


class Stock:
    """A stock Dovecot (Maildir, passwd-file); stopped by its master's PID."""

    def __init__(self, base, addr, subnet, mail="maildir"):
        self.d = os.path.join(base, "stock")
        self.addr = addr
        self.subnet = subnet
        self.mail = mail
        self.pid = None

    def start(self):
        d = self.d
        for sub in ("run", "state", "mail", "home"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        for sub in ("mail", "home"):
            os.chmod(os.path.join(d, sub), 0o777)
        os.chmod(d, 0o755)
        with open(os.path.join(d, "passwd"), "w") as f:
            f.write("%s:{PLAIN}%s::::::\n" % (USER, PASSWORD))
        conf = os.path.join(d, "dovecot.conf")
        with open(conf, "w") as f:
            f.write(stock_dovecot.conf(d, self.addr, "porcupine-bench-stock-%d" % self.subnet, ["imap", "pop3", "lmtp"],
                                       {"imap": local.IMAP_PORT, "pop3": local.POP3_PORT, "lmtp": local.LMTP_PORT},
                                       mail=self.mail, passdb=("passwd-file", os.path.join(d, "passwd"))))
        with open(os.path.join(d, "dovecot.out"), "w") as out:
            rc = subprocess.call([DOVECOT, "-c", conf], stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, timeout=30)
        # The PID first (the file can exist before its PID is written), so
        # stop() can end the master whatever happens next.
        deadline = time.time() + 10
        while rc == 0 and self.pid is None and time.time() < deadline:
            try:
                with open(os.path.join(d, "run", "master.pid")) as f:
                    self.pid = int(f.read().strip())
            except (OSError, ValueError):
                time.sleep(0.05)
        if rc != 0 or not self.pid or not wait_listening(self.addr, (local.IMAP_PORT, local.POP3_PORT, local.LMTP_PORT)):
            raise RuntimeError("the stock Dovecot did not start (see %s)" % d)

    def stop(self):
        if not self.pid:
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        os.kill(self.pid, signal.SIGKILL)


def deliver(addr, msgs):
    with smtplib.LMTP(addr, local.LMTP_PORT, timeout=120) as s:
        for data in msgs:
            s.sendmail("sender@example.org", [USER], data)


def imap_session(addr):
    m = imaplib.IMAP4(addr, local.IMAP_PORT, timeout=300)
    m.login(USER, PASSWORD)
    return m


HEADER_FETCH = "(FLAGS RFC822.SIZE INTERNALDATE BODY.PEEK[HEADER.FIELDS (From To Subject Date)])"


def cold_round(addr):
    """The first SELECT, then the first header fetch, in one session: the
    count, both times, and how many header answers named their Subject."""
    m = imap_session(addr)
    started = time.time()
    typ, data = m.select("INBOX", readonly=True)
    selected = time.time()
    typ, got = m.uid("FETCH", "1:*", HEADER_FETCH)
    done = time.time()
    m.logout()
    headers = sum(1 for item in got if isinstance(item, tuple) and b"Subject: bench" in item[1])
    return int(data[0]), selected - started, done - selected, headers


SEARCH_FOR = "line 00000007"


def search_round(addr):
    """UID SEARCH BODY over the folder in a new session: the UIDs found and
    the SEARCH's time."""
    m = imap_session(addr)
    m.select("INBOX", readonly=True)
    started = time.time()
    typ, data = m.uid("SEARCH", "BODY", '"%s"' % SEARCH_FOR)
    done = time.time()
    m.logout()
    if typ != "OK":
        raise RuntimeError("SEARCH BODY on %s: %s" % (addr, data))
    return data[0].split(), done - started


def fetch_round(addr):
    """A warm SELECT's time, then the bodies of UID FETCH 1:* BODY.PEEK[]
    and the FETCH's time."""
    m = imap_session(addr)
    started = time.time()
    m.select("INBOX", readonly=True)
    selected = time.time()
    typ, data = m.uid("FETCH", "1:*", "(BODY.PEEK[])")
    done = time.time()
    m.logout()
    return selected - started, [item[1] for item in data if isinstance(item, tuple)], done - selected


def retr_round(addr):
    p = poplib.POP3(addr, local.POP3_PORT, timeout=300)
    p.user(USER)
    p.pass_(PASSWORD)
    count = p.stat()[0]
    bodies = [b"\r\n".join(p.retr(i)[1]) for i in range(1, count + 1)]
    try:
        p.quit()  # where the server marks what was retrieved \Seen
    except poplib.error_proto as e:
        return bodies, str(e)
    return bodies, None


def whole(body):
    """A message came back with its header and the end of its body."""
    return b"Subject: bench" in body and body.rstrip(b"\r\n").endswith(b"xyz")


class Side:
    """One reader (stock, or a porcupine node): its figures of every round."""

    def __init__(self, name, addr, forget):
        self.name, self.addr, self.forget = name, addr, forget
        self.cold, self.headers, self.search, self.warm, self.fetch, self.retr = [], [], [], [], [], []
        self.found = []
        self.selected, self.header_answers, self.fetched, self.retrieved, self.bad = [], [], 0, 0, 0
        self.quit_errors = []

    def round(self):
        self.forget()
        got, cold_s, headers_s, answers = cold_round(self.addr)
        self.selected.append(got)
        self.header_answers.append(answers)
        self.cold.append(cold_s)
        self.headers.append(headers_s)
        found, search_s = search_round(self.addr)
        self.found.append(len(found))
        self.search.append(search_s)
        warm_s, bodies, fetch_s = fetch_round(self.addr)
        self.warm.append(warm_s)
        self.fetch.append(len(bodies) / max(fetch_s, 1e-9))
        self.fetched += len(bodies)
        self.bad += sum(1 for b in bodies if not whole(b))
        started = time.time()
        bodies, quit_error = retr_round(self.addr)
        if quit_error:
            self.quit_errors.append(quit_error)
        self.retr.append(len(bodies) / max(time.time() - started, 1e-9))
        self.retrieved += len(bodies)
        self.bad += sum(1 for b in bodies if not whole(b))


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def spread(xs, fmt):
    """median (min-max), each with fmt."""
    if not xs:
        return "-"
    return (fmt + " (" + fmt + "-" + fmt + ")") % (median(xs), min(xs), max(xs))


def ratios(mine, stock):
    """Per round: mine/stock of the same round (a rate's or a time's)."""
    return [m / s if s > 0 else float("inf") for m, s in zip(mine, stock)]


def remove_tree(path):
    shutil.rmtree(path, ignore_errors=True)


def stock_forget(stock):
    """Stock's maildir without its Dovecot index (dovecot.index, its log
    and cache): what a server that never opened the folder would have."""
    def forget():
        for root, _, files in os.walk(os.path.join(stock.d, "mail")):
            for f in files:
                if f.startswith("dovecot.index"):
                    os.unlink(os.path.join(root, f))
    return forget


def holders_of(cl, node):
    """{message id: replicas} from node's listing of the user's INBOX."""
    r = cl.ctl(node, ["--json", "--timeout", "30000", "mail", "list", USER], capture=True)
    if r.returncode != 0:
        raise RuntimeError("mail list: " + r.stderr)
    return {m["id"]: m["replicas"] for m in json.loads(r.stdout)["messages"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--subnet", type=int, default=69)
    ap.add_argument("--messages", type=int, default=500)
    ap.add_argument("--size", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.messages, a.rounds = 40, 2
    a.rounds = max(1, a.rounds)
    a.messages = max(a.messages, 2 * a.rounds + 1)
    build = os.path.abspath(a.build)
    if not os.path.exists(os.path.join(build, "dovecot-plugin", "lib20_porcupine_plugin.so")):
        print("imap_bench: the Dovecot plugin is not built in %s" % build, file=sys.stderr)
        return 1
    base = tempfile.mkdtemp(prefix="pcpbench-")
    os.chmod(base, 0o755)
    cl = local.Cluster(os.path.join(base, "c"), build)
    stock = Stock(base, "127.0.%d.10" % a.subnet, a.subnet)
    ok = False
    try:
        try:
            cl.start(4, 2, 2, a.subnet, services=["dovecot"])
        except SystemExit:
            raise RuntimeError("the cluster did not start (see %s)" % cl.base)
        deadline = time.time() + 30
        while not cl.converged():
            if time.time() > deadline:
                raise RuntimeError("the cluster did not form")
            time.sleep(0.2)
        r = cl.ctl(1, ["user", "add", USER, "--password", PASSWORD], capture=True)
        if r.returncode != 0:
            raise RuntimeError("user add: " + r.stderr)
        stock.start()
        msgs = [message(i, a.size) for i in range(a.messages)]

        # The first message shows where the user's mail goes (spread 2 of
        # 4 nodes, R=2: the same two nodes for every message).
        deliver(cl.address(1), msgs[:1])
        deliver(stock.addr, msgs[:1])
        [replicas] = holders_of(cl, 1).values()
        holding = replicas[0]
        other_holder = replicas[1]
        others = [n for n in (1, 2, 3, 4) if n not in replicas]
        # Node 1 accepted the first message: if it holds none, it is the
        # accepting node (its cache has that message), not the one read
        # (others is in order, so node 1 comes first).
        accepting, none = others

        # LMTP: slices in turn, porcupine's through the other holder and the
        # accepting node (holding none) by turns, stock's between them.
        rest = msgs[1:]
        slices = [rest[k::2 * a.rounds] for k in range(2 * a.rounds)]
        lmtp = {"stock": [], "holder": [], "other": []}
        for k, part in enumerate(slices):
            via = other_holder if k % 2 == 0 else accepting
            started = time.time()
            deliver(cl.address(via), part)
            lmtp["holder" if via == other_holder else "other"].append(len(part) / (time.time() - started))
            started = time.time()
            deliver(stock.addr, part)
            lmtp["stock"].append(len(part) / (time.time() - started))
        placed = holders_of(cl, none)
        on_holding = sum(1 for r in placed.values() if holding in r)
        on_none = sum(1 for r in placed.values() if none in r)

        def forget_node(n):
            return lambda: remove_tree(os.path.join(cl.dovecot_dir(n), "mail", USER))

        sides = [Side("stock", stock.addr, stock_forget(stock)),
                 Side("holding n%d" % holding, cl.address(holding), forget_node(holding)),
                 Side("none n%d" % none, cl.address(none), forget_node(none))]
        for _ in range(a.rounds):
            for side in sides:
                side.round()
        st, hold, nothing = sides

        print("imap_bench: %d messages of %d bytes, %d rounds, same machine, same run; medians (min-max)" %
              (a.messages, a.size, a.rounds))
        print("  porcupine: 4 nodes, R=2; the user's mail on n%d and n%d (%d of %d listed on n%d, %d on n%d); "
              "LMTP through n%d (a holder) and n%d (holding none)" %
              (replicas[0], replicas[1], on_holding, len(placed), holding, on_none, none, other_holder, accepting))
        rows = [("cold SELECT s", "cold", "%.3f"), ("headers s", "headers", "%.3f"),
                ("SEARCH BODY s", "search", "%.3f"), ("warm SELECT s", "warm", "%.4f"),
                ("FETCH msg/s", "fetch", "%.0f"), ("RETR msg/s", "retr", "%.0f")]
        print("  %-15s %-24s %-24s %-20s %-24s %-20s" %
              ("", "stock", hold.name, "ratio", nothing.name, "ratio"))
        figures = {}
        for label, key, fmt in rows:
            s_xs, h_xs, n_xs = getattr(st, key), getattr(hold, key), getattr(nothing, key)
            h_r, n_r = ratios(h_xs, s_xs), ratios(n_xs, s_xs)
            figures[key] = (median(h_r), median(n_r))
            print("  %-15s %-24s %-24s %-20s %-24s %-20s" %
                  (label, spread(s_xs, fmt), spread(h_xs, fmt), spread(h_r, "%.2f"), spread(n_xs, fmt),
                   spread(n_r, "%.2f")))
        lm_h = ratios(lmtp["holder"], lmtp["stock"][0::2])
        lm_o = ratios(lmtp["other"], lmtp["stock"][1::2])
        figures["lmtp"] = median(lm_h + lm_o)
        print("  %-15s %-24s %-24s %-20s %-24s %-20s" %
              ("LMTP msg/s", spread(lmtp["stock"], "%.0f"), "via holder " + spread(lmtp["holder"], "%.0f"),
               spread(lm_h, "%.2f"), "via none " + spread(lmtp["other"], "%.0f"), spread(lm_o, "%.2f")))
        print("  %s first round (its node cache empty but for nothing it accepted): headers %.3f s, "
              "SEARCH BODY %.3f s, FETCH %.0f msg/s, RETR %.0f msg/s" %
              (nothing.name, nothing.headers[0], nothing.search[0], nothing.fetch[0], nothing.retr[0]))
        print("  ratio porcupine/stock (medians): cold %.2f/%.2f, headers %.2f/%.2f, SEARCH BODY %.2f/%.2f, "
              "warm %.2f/%.2f, FETCH %.2f/%.2f, RETR %.2f/%.2f (holding/none), LMTP %.2f" %
              (figures["cold"] + figures["headers"] + figures["search"] + figures["warm"] + figures["fetch"] +
               figures["retr"] + (figures["lmtp"],)))

        ok = True
        want = a.messages * a.rounds
        for side in sides:
            if (any(n != a.messages for n in side.selected) or any(n != a.messages for n in side.header_answers)
                    or side.fetched != want or side.retrieved != want or side.bad
                    or any(n != 1 for n in side.found)):
                print("imap_bench: %s: selected %s, header answers %s, %d fetched, %d retrieved (want %d, %d), "
                      "%d bad bodies, SEARCH found %s (want 1 each)" %
                      (side.name, side.selected, side.header_answers, side.fetched, side.retrieved, a.messages,
                       want, side.bad, side.found), file=sys.stderr)
                ok = False
            if side.quit_errors:
                print("imap_bench: %s: %d POP3 QUITs failed: %s" %
                      (side.name, len(side.quit_errors), side.quit_errors[0]), file=sys.stderr)
                ok = False
            if not all(x > 0 for x in side.cold + side.headers + side.search + side.warm + side.fetch + side.retr):
                print("imap_bench: %s: a figure is missing" % side.name, file=sys.stderr)
                ok = False
        if len(placed) != a.messages or on_none:
            print("imap_bench: n%d lists %d messages, %d on n%d (want %d, 0)" %
                  (none, len(placed), on_none, none, a.messages), file=sys.stderr)
            ok = False
        if not all(x > 0 for x in lmtp["stock"] + lmtp["holder"] + lmtp["other"]):
            ok = False
        if a.check and ok:
            misses = [name for name, value, good in (
                ("cold (holding)", figures["cold"][0], figures["cold"][0] <= 2),
                ("cold (none)", figures["cold"][1], figures["cold"][1] <= 2),
                ("headers (holding)", figures["headers"][0], figures["headers"][0] <= 2),
                ("headers (none)", figures["headers"][1], figures["headers"][1] <= 2),
                ("FETCH (holding)", figures["fetch"][0], figures["fetch"][0] >= 0.8),
                ("FETCH (none)", figures["fetch"][1], figures["fetch"][1] >= 0.8),
                ("RETR (holding)", figures["retr"][0], figures["retr"][0] >= 0.8),
                ("RETR (none)", figures["retr"][1], figures["retr"][1] >= 0.8),
                ("LMTP", figures["lmtp"], figures["lmtp"] >= 0.8)) if not good]
            if misses:
                print("imap_bench: --check: missed: " + ", ".join(misses), file=sys.stderr)
                ok = False
    except (RuntimeError, OSError, ValueError, imaplib.IMAP4.error, poplib.error_proto,
            smtplib.SMTPException) as e:
        print("imap_bench: %s" % e, file=sys.stderr)
    finally:
        stock.stop()
        cl.stop()
        if ok and not os.environ.get("KEEP"):
            shutil.rmtree(base, ignore_errors=True)
        elif not ok:
            print("imap_bench: logs kept in %s" % base, file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
