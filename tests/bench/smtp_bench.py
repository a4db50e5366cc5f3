#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""smtp_bench.py - SMTP delivery throughput, end to end, in one run on this
machine: smtp-source -> Postfix -> Dovecot LMTP, for

  stock      one Postfix + one stock Dovecot writing Maildir (no cluster)
  cluster-1  a 1-node porcupine cluster at R=1 (Postfix + porcupine-milter +
             Dovecot with the porcupine plugin + agent + Redis)
  cluster-3  a 3-node porcupine cluster at R=2, sessions spread over the nodes

Each setup gets the same load: MESSAGES messages of SIZE bytes over SESSIONS
SMTP sessions (smtp-source processes of 2 sessions each, one recipient
per process), and is timed from the first connection until every message
has left every Postfix queue (delivered over LMTP, so stored: in Maildir,
or in the cluster at R copies). The delivered count is checked afterwards.
Prints messages/s per setup and the ratios against stock.

Usage: smtp_bench.py --build BUILD_DIR [--subnet K] [--messages M]
                     [--sessions S] [--size BYTES] [--quick]
Exit status: 0 measured, 1 a setup failed or lost messages.
"""
import argparse
import importlib.machinery
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
local = importlib.machinery.SourceFileLoader("porcupine_local", os.path.join(ROOT, "scripts", "porcupine-local")).load_module()
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
DOVECOT = local.DOVECOT
stock_dovecot = importlib.machinery.SourceFileLoader(
    "stock_dovecot", os.path.join(os.path.dirname(os.path.abspath(__file__)), "stock_dovecot.py")).load_module()



def log(msg):
    print(msg, file=sys.stderr, flush=True)


def wait_for(cond, timeout, step=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(step)
    return False


def queue_empty(postfix_dir):
    q = os.path.join(postfix_dir, "queue")
    for sub in ("maildrop", "incoming", "active", "deferred", "hold"):
        for _, _, files in os.walk(os.path.join(q, sub)):
            if files:
                return False
    return True


class Stock:
    """One Postfix and one stock Dovecot on 127.0.K.1, configured the way
    porcupine-local configures a node, minus the milter and the plugin."""

    def __init__(self, base, subnet):
        self.base, self.subnet = base, subnet
        # Borrow porcupine-local's Postfix layout: one "node" with no agent.
        self.cl = local.Cluster(base, "")
        self.cl.state = {"subnet": subnet, "nodes": [1], "services": [], "domains": list(local.DOMAINS)}
        self.dd = os.path.join(base, "n1", "dovecot")

    def addr(self):
        return self.cl.address(1)

    def start(self):
        os.makedirs(self.dd, exist_ok=True)
        for sub in ("run", "state", "mail", "home"):
            os.makedirs(os.path.join(self.dd, sub), exist_ok=True)
        for path in (self.base, os.path.dirname(self.dd), self.dd):
            os.chmod(path, 0o755)
        for sub in ("mail", "home"):
            os.chmod(os.path.join(self.dd, sub), 0o777)
        conf = os.path.join(self.dd, "dovecot.conf")
        with open(conf, "w") as f:
            f.write(stock_dovecot.conf(self.dd, self.addr(), "porcupine-bench-stock", ["lmtp"],
                                       {"lmtp": local.LMTP_PORT}))
        if subprocess.call([DOVECOT, "-c", conf], stdin=subprocess.DEVNULL) != 0:
            raise RuntimeError("stock dovecot did not start: see %s/dovecot.log" % self.dd)
        if not wait_for(lambda: self.cl.listening(1, local.LMTP_PORT), 15):
            raise RuntimeError("stock dovecot does not listen")
        # The same main.cf as a cluster node, without smtpd_milters.
        real_main = local.POSTFIX_MAIN
        local.POSTFIX_MAIN = "\n".join(l for l in real_main.splitlines() if not l.startswith("smtpd_milters")) + "\n"
        try:
            self.cl.start_postfix(1)
        finally:
            local.POSTFIX_MAIN = real_main

    def postfix_dirs(self):
        return [self.cl.postfix_dir(1)]

    def addresses(self):
        return [self.addr()]

    def delivered(self, users):
        total = 0
        for u in users:
            for sub in ("new", "cur"):
                p = os.path.join(self.dd, "mail", u, sub)
                total += len(os.listdir(p)) if os.path.isdir(p) else 0
        return total

    def stop(self):
        pid = self.cl.pid(1, "postfix")
        self.cl.stop_pid(1, "postfix")
        if pid:
            for p in self.cl.session_members(pid):
                os.kill(p, signal.SIGKILL)
        try:
            with open(os.path.join(self.dd, "run", "master.pid")) as f:
                dpid = int(f.read())
            os.kill(dpid, signal.SIGTERM)
            wait_for(lambda: not os.path.exists("/proc/%d" % dpid), 10)
        except (OSError, ValueError):
            pass


class Porcupine:
    def __init__(self, base, build, subnet, nodes, replicas):
        self.cl = local.Cluster(base, build)
        self.nodes, self.replicas, self.subnet = nodes, replicas, subnet

    def start(self):
        self.cl.start(self.nodes, self.replicas, 2, self.subnet, services=["dovecot", "milter", "postfix"])
        if not wait_for(self.cl.converged, 30, 0.2):
            raise RuntimeError("cluster did not form")

    def add_users(self, users):
        for u in users:
            if self.cl.ctl(1, ["--timeout", "15000", "user", "add", u, "--password", "x"], capture=True).returncode:
                raise RuntimeError("cannot add " + u)

    def postfix_dirs(self):
        return [self.cl.postfix_dir(i) for i in self.cl.nodes()]

    def addresses(self):
        return [self.cl.address(i) for i in self.cl.nodes()]

    def delivered(self, users):
        total = 0
        for u in users:
            r = self.cl.ctl(1, ["--json", "--timeout", "15000", "mail", "list", u], capture=True)
            if r.returncode != 0:
                raise RuntimeError("mail list %s: %s" % (u, r.stderr))
            listing = json.loads(r.stdout)
            msgs = listing.get("messages", listing) if isinstance(listing, dict) else listing
            total += len(msgs)
        return total

    def stop(self):
        self.cl.stop()


def load(setup, users, messages, sessions, size, timeout):
    """Runs the smtp-sources; returns (seconds to inject, seconds to deliver)."""
    procs = []
    per_proc_sessions = 2
    nprocs = len(users)
    addrs = setup.addresses()
    started = time.time()
    for k, user in enumerate(users):
        count = messages // nprocs + (1 if k < messages % nprocs else 0)
        addr = addrs[k % len(addrs)]
        procs.append(subprocess.Popen(
            [SMTP_SOURCE, "-s", str(per_proc_sessions), "-m", str(count), "-l", str(size), "-d",
             "-f", "sender@outside.test", "-t", user, "-M", "bench.test", "%s:%d" % (addr, local.SMTP_PORT)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
    failed = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        if p.returncode != 0:
            failed.append(out.decode(errors="replace")[-500:])
    injected = time.time() - started
    if failed:
        raise RuntimeError("smtp-source failed: " + failed[0])
    if not wait_for(lambda: all(queue_empty(d) for d in setup.postfix_dirs()), timeout, 0.02):
        raise RuntimeError("queues did not drain within %d s" % timeout)
    return injected, time.time() - started


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--subnet", type=int, default=76)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--quick", action="store_true", help="a small load: checks that the benchmark works")
    o = ap.parse_args()
    if o.quick:
        o.messages, o.sessions, o.size = 120, 6, 2048
    if o.sessions < 2 or o.sessions % 2:
        sys.exit("smtp_bench: --sessions is an even number >= 2")
    users = ["bench%02d@example.org" % k for k in range(o.sessions // 2)]
    build = os.path.abspath(o.build)
    for path in (SMTP_SOURCE, local.POSTFIX, DOVECOT, os.path.join(build, "milter", "porcupine-milter"),
                 os.path.join(build, "dovecot-plugin", "lib20_porcupine_plugin.so")):
        if not os.path.exists(path):
            sys.exit("smtp_bench: %s is missing (install-deps.sh, then build)" % path)

    results = []
    setups = [("stock Postfix -> Dovecot LMTP -> Maildir", lambda b: Stock(b, o.subnet)),
              ("cluster, 1 node, R=1", lambda b: Porcupine(b, build, o.subnet, 1, 1)),
              ("cluster, 3 nodes, R=2", lambda b: Porcupine(b, build, o.subnet, 3, 2))]
    ok = True
    for name, make in setups:
        base = tempfile.mkdtemp(prefix="pcpbench-")
        os.chmod(base, 0o755)
        setup = make(os.path.join(base, "c"))
        try:
            log("%s: starting" % name)
            setup.start()
            if isinstance(setup, Porcupine):
                setup.add_users(users)
            inject_s, total_s = load(setup, users, o.messages, o.sessions, o.size, 600)
            delivered = 0
            wait_for(lambda: setup.delivered(users) >= o.messages, 30, 0.5)
            delivered = setup.delivered(users)
            results.append((name, o.messages / total_s, o.messages / inject_s, total_s, delivered))
            log("%s: %d messages in %.1f s, %d delivered" % (name, o.messages, total_s, delivered))
            if delivered != o.messages:
                ok = False
        except (RuntimeError, subprocess.TimeoutExpired, SystemExit) as e:
            log("%s: failed: %s" % (name, e))
            ok = False
        finally:
            setup.stop()
            shutil.rmtree(base, ignore_errors=True)

    print("SMTP end to end: %d messages of %d bytes, %d SMTP sessions (%d smtp-source x 2 sessions, "
          "one recipient each)" % (o.messages, o.size, o.sessions, len(users)))
    print("%-42s %9s %9s %8s %10s %9s" % ("setup", "msg/s", "inject/s", "seconds", "delivered", "vs stock"))
    base_rate = results[0][1] if results and results[0][0].startswith("stock") else None
    for name, rate, inject, secs, delivered in results:
        ratio = "%.2f" % (rate / base_rate) if base_rate else "-"
        print("%-42s %9.1f %9.1f %8.1f %10d %9s" % (name, rate, inject, secs, delivered, ratio))
    sys.exit(0 if ok and len(results) == len(setups) else 1)


if __name__ == "__main__":
    main()
