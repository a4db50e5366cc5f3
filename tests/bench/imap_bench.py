#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""imap_bench.py - IMAP FETCH and POP3 RETR through the porcupine Dovecot
plugin, against a stock Dovecot with Maildir on the same machine in the
same run. Prints the rates and their ratio; asserts no speed.

  porcupine: a 3-node cluster (R=2) of real agents and redis-servers with a
             Dovecot per node (scripts/porcupine-local) on 127.0.K.1-3;
             the sessions go to node 1.
  stock:     one Dovecot, mail_location = maildir, a passwd-file, on
             127.0.K.10, same ports.

Both get the same N messages over LMTP. Then, per side:
  cold     the first IMAP SELECT (porcupine: node 1 fills its cache from
           the cluster)
  fetch    ROUNDS sessions of SELECT + UID FETCH 1:* BODY.PEEK[]
  retr     ROUNDS POP3 sessions, RETR of every message
Rates are messages per second of wall time.

Usage: imap_bench.py --build BUILD_DIR [--subnet K] [--messages N]
                     [--size BYTES] [--rounds R] [--quick]
--quick (ctest bench.imap.quick): 40 messages, 2 rounds; checks only that
every figure is there and every message came back whole (exit 1 if not).
"""
import argparse
import imaplib
import importlib.machinery
import os
import poplib
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
local = importlib.machinery.SourceFileLoader("porcupine_local", os.path.join(ROOT, "scripts", "porcupine-local")).load_module()
DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
USER, PASSWORD = "bench@example.com", "secret"

STOCK_CONF = """# stock Dovecot for imap_bench.py
instance_name = porcupine-bench-stock-{subnet}
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
listen = {addr}
protocols = imap pop3 lmtp
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = 1
mail_location = maildir:{d}/mail/%u
lmtp_rcpt_check_quota = no
passdb {{
  driver = passwd-file
  args = {d}/passwd
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534 home={d}/home/%u allow_all_users=yes
}}
service imap-login {{
  inet_listener imap {{
    port = {imap}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {pop3}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = {addr}
    port = {lmtp}
  }}
}}
"""


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

    def __init__(self, base, addr, subnet):
        self.d = os.path.join(base, "stock")
        self.addr = addr
        self.subnet = subnet
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
            f.write(STOCK_CONF.format(d=d, addr=self.addr, subnet=self.subnet, imap=local.IMAP_PORT,
                                      pop3=local.POP3_PORT, lmtp=local.LMTP_PORT))
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
    with smtplib.LMTP(addr, local.LMTP_PORT, timeout=60) as s:
        for data in msgs:
            s.sendmail("sender@example.org", [USER], data)


def imap_session(addr):
    m = imaplib.IMAP4(addr, local.IMAP_PORT, timeout=120)
    m.login(USER, PASSWORD)
    return m


def cold_select(addr):
    started = time.time()
    m = imap_session(addr)
    typ, data = m.select("INBOX", readonly=True)
    elapsed = time.time() - started
    m.logout()
    return int(data[0]), elapsed


def fetch_round(addr):
    m = imap_session(addr)
    m.select("INBOX", readonly=True)
    typ, data = m.uid("FETCH", "1:*", "(BODY.PEEK[])")
    m.logout()
    return [item[1] for item in data if isinstance(item, tuple)]


def retr_round(addr):
    p = poplib.POP3(addr, local.POP3_PORT, timeout=120)
    p.user(USER)
    p.pass_(PASSWORD)
    count = p.stat()[0]
    bodies = [b"\r\n".join(p.retr(i)[1]) for i in range(1, count + 1)]
    p.quit()
    return bodies


def whole(body):
    """A message came back with its header and the end of its body."""
    return b"Subject: bench" in body and body.rstrip(b"\r\n").endswith(b"xyz")


def measure(name, addr, rounds):
    got, cold = cold_select(addr)
    fetched = retrd = 0
    bad = []
    started = time.time()
    for _ in range(rounds):
        bodies = fetch_round(addr)
        fetched += len(bodies)
        bad += [b for b in bodies if not whole(b)]
    fetch_s = time.time() - started
    started = time.time()
    for _ in range(rounds):
        bodies = retr_round(addr)
        retrd += len(bodies)
        bad += [b for b in bodies if not whole(b)]
    retr_s = time.time() - started
    return {"name": name, "selected": got, "cold_s": cold, "fetched": fetched, "fetch_rate": fetched / fetch_s,
            "retrieved": retrd, "retr_rate": retrd / retr_s, "bad": len(bad)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--subnet", type=int, default=69)
    ap.add_argument("--messages", type=int, default=500)
    ap.add_argument("--size", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.quick:
        a.messages, a.rounds = 40, 2
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
            cl.start(3, 2, 2, a.subnet, services=["dovecot"])
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
        started = time.time()
        for k in range(3):  # spread over the nodes
            deliver(cl.address(1 + k), msgs[k::3])
        p_deliver = time.time() - started
        started = time.time()
        deliver(stock.addr, msgs)
        s_deliver = time.time() - started
        results = [measure("porcupine", cl.address(1), a.rounds), measure("stock", stock.addr, a.rounds)]
        print("imap_bench: %d messages of %d bytes, %d rounds, same machine, same run" %
              (a.messages, a.size, a.rounds))
        print("  %-10s %12s %10s %14s %14s" % ("", "LMTP msg/s", "cold s", "FETCH msg/s", "RETR msg/s"))
        for res, dl in zip(results, (p_deliver, s_deliver)):
            print("  %-10s %12.0f %10.2f %14.0f %14.0f" %
                  (res["name"], a.messages / dl, res["cold_s"], res["fetch_rate"], res["retr_rate"]))
        p, s = results
        print("  ratio porcupine/stock: FETCH %.2f, RETR %.2f, LMTP %.2f" %
              (p["fetch_rate"] / s["fetch_rate"], p["retr_rate"] / s["retr_rate"], s_deliver / p_deliver))
        ok = True
        for res in results:
            want = a.messages * a.rounds
            if res["selected"] != a.messages or res["fetched"] != want or res["retrieved"] != want or res["bad"]:
                print("imap_bench: %s: %d selected, %d fetched, %d retrieved (want %d, %d), %d bad bodies" %
                      (res["name"], res["selected"], res["fetched"], res["retrieved"], a.messages, want, res["bad"]),
                      file=sys.stderr)
                ok = False
            if not (res["fetch_rate"] > 0 and res["retr_rate"] > 0):
                ok = False
    except (RuntimeError, OSError, imaplib.IMAP4.error, poplib.error_proto, smtplib.SMTPException) as e:
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
