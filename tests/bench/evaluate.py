#!/usr/bin/python3
# SPDX-License-Identifier: MIT
"""evaluate.py - the whole evaluation in one command: real processes on this
machine, the failure timeline with real agents, scale-out in the simulator
with a cost model calibrated from the real runs, and the sizing on paper.
Writes results/<UTC date-time>/report.md and PNG plots; prints the path.

  tests/bench/evaluate.py [--build DIR] [--out DIR] [--runs N] [--quick]

--quick: seconds, not minutes (the CI suite runs it); it checks that every
part runs and produces sane figures, never a speed. Subnets: the stock stack
on 127.0.80.1, the clusters on 127.0.82-84.x, the failure timeline on
127.0.81.x.

Exit status: 0 when every part ran and produced figures, 1 otherwise.
"""
import argparse
import datetime
import importlib.machinery
import json
import math
import os
import platform
import poplib
import random
import re
import shutil
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
local = importlib.machinery.SourceFileLoader("porcupine_local", os.path.join(ROOT, "scripts", "porcupine-local")).load_module()
stock_dovecot = importlib.machinery.SourceFileLoader("stock_dovecot", os.path.join(HERE, "stock_dovecot.py")).load_module()
netsplit = importlib.machinery.SourceFileLoader("porcupine_netsplit",
                                                os.path.join(ROOT, "tests", "e2e", "netsplit.py")).load_module()

# The message size table of mail_load.cc (bytes, weight): median 4 KiB,
# mean about 22.6 KiB, a tail to 1 MiB.
SIZES = [(1024, 15), (2048, 20), (4096, 25), (8192, 15), (16384, 10), (32768, 7), (65536, 4), (131072, 2.5),
         (524288, 1), (1048576, 0.5)]
USERS = ["user%d@example.org" % u for u in range(10)]
SENDERS, READERS = 4, 4


def log(msg):
    print("[%s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def median_spread(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None, None
    return statistics.median(xs), min(xs), max(xs)


def fmt(xs, digits=1):
    m, lo, hi = median_spread(xs)
    if m is None:
        return "n/a"
    if len(xs) == 1:
        return "%.*f" % (digits, m)
    return "%.*f (%.*f–%.*f)" % (digits, m, digits, lo, digits, hi)


def kv(line):
    return {k: float(v) for k, v in re.findall(r"(\w+)=(-?[\d.]+(?:e[-+]?\d+)?)", line)}


# ---------------------------------------------------------------------------
# Measuring processes: CPU time and fsync calls of a process tree (perf stat
# follows children forked after it attaches).
class ProcMeter:
    def __init__(self, pids, out):
        self.out = out
        self.p = None
        if not shutil.which("perf"):
            log("perf not found (Debian: linux-perf): no CPU or fsync figures")
            return
        # perf gives up if a pid has gone by the time it attaches (a
        # short-lived child): retry with the processes still there.
        for _attempt in range(5):
            alive = [p for p in pids if os.path.exists("/proc/%d" % p)]
            self.p = subprocess.Popen(["perf", "stat", "-x,", "-o", out, "-e",
                                       "task-clock,syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync",
                                       "-p", ",".join(str(p) for p in alive)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.3)
            if self.p.poll() is None:
                return
        log("perf stat did not stay attached: no CPU or fsync figures")
        self.p = None

    def stop(self):
        if self.p is None:
            return None, None
        self.p.send_signal(signal.SIGINT)
        self.p.wait(timeout=30)
        cpu_ms = fsyncs = 0.0
        with open(self.out) as f:
            for line in f:
                parts = line.strip().split(",")
                if len(parts) < 3 or not parts[0].replace(".", "").isdigit():
                    continue
                if parts[2] == "task-clock":
                    cpu_ms += float(parts[0])
                elif "sync" in parts[2]:
                    fsyncs += float(parts[0])
        return cpu_ms, fsyncs


def on_block_device(path):
    """Whether `path` is on a disk /proc/diskstats counts (not a tmpfs)."""
    st = os.stat(path)
    with open("/proc/diskstats") as f:
        return any((int(x[0]), int(x[1])) == (os.major(st.st_dev), os.minor(st.st_dev))
                   for x in (line.split() for line in f))


def work_dir():
    """Where the measured setups keep their files: $PORCUPINE_EVAL_DIR, else
    /tmp when it is on a disk, else /var/tmp (Debian 13 mounts /tmp as a
    tmpfs, where an fsync costs nothing and the disk's busy time cannot be
    read)."""
    if os.environ.get("PORCUPINE_EVAL_DIR"):
        return os.environ["PORCUPINE_EVAL_DIR"]
    tmp = tempfile.gettempdir()
    return tmp if on_block_device(tmp) else "/var/tmp"


class DiskMeter:
    """Busy time (io_ticks, ms) of the block device holding `path`, from
    /proc/diskstats: the whole device's, other users of the disk included."""

    def __init__(self, path):
        st = os.stat(path)
        self.dev = (os.major(st.st_dev), os.minor(st.st_dev))
        self.start = self.read()

    def read(self):
        with open("/proc/diskstats") as f:
            for line in f:
                x = line.split()
                if (int(x[0]), int(x[1])) == self.dev:
                    return int(x[12])
        return None

    def stop(self):
        end = self.read()
        return None if end is None or self.start is None else end - self.start


def tree(pid):
    """pid and every live descendant."""
    kids = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/stat" % name) as f:
                    kids.setdefault(int(f.read().rsplit(")", 1)[1].split()[1]), []).append(int(name))
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def pct(xs, p):
    if not xs:
        return 0.0
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


# ---------------------------------------------------------------------------
# (1a) The stock stack: Postfix -> Dovecot LMTP -> Maildir, one node.


def postfix_conf(d, addr):
    main = "\n".join([
        "compatibility_level = 3.6", "config_directory = %s/etc" % d, "queue_directory = %s/queue" % d,
        "data_directory = %s/data" % d, "meta_directory = /etc/postfix", "shlib_directory = /usr/lib/postfix",
        "daemon_directory = /usr/lib/postfix/sbin", "command_directory = /usr/sbin", "mail_owner = postfix",
        "setgid_group = postdrop", "myhostname = stock.porcupine.test", "mydestination =", "inet_interfaces = all",
        "inet_protocols = ipv4", "smtp_bind_address = %s" % addr, "lmtp_bind_address = %s" % addr,
        "syslog_name = postfix-porcupine-eval-stock", "maillog_file = %s/postfix.log" % d,
        "maillog_file_prefixes = %s" % d, "mynetworks = 127.0.0.0/8",
        "smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination", "alias_maps =",
        "alias_database =", "local_recipient_maps =", "biff = no", "message_size_limit = 10240000",
        "virtual_mailbox_domains = example.org", "virtual_mailbox_maps =",
        "virtual_transport = lmtp:inet:%s:10024" % addr, ""])
    master = "\n".join([
        "%s:10025 inet n - n - - smtpd" % addr, "pickup    unix  n - n 60   1 pickup",
        "cleanup   unix  n - n -    0 cleanup", "qmgr      unix  n - n 300  1 qmgr",
        "rewrite   unix  - - n -    - trivial-rewrite", "bounce    unix  - - n -    0 bounce",
        "defer     unix  - - n -    0 bounce", "trace     unix  - - n -    0 bounce",
        "verify    unix  - - n -    1 verify", "proxymap  unix  - - n -    - proxymap",
        "smtp      unix  - - n -    - smtp", "relay     unix  - - n -    - smtp", "showq     unix  n - n -    - showq",
        "error     unix  - - n -    - error", "retry     unix  - - n -    - error",
        "discard   unix  - - n -    - discard", "lmtp      unix  - - n -    - lmtp",
        "anvil     unix  - - n -    1 anvil", "scache    unix  - - n -    1 scache",
        "postlog   unix-dgram n - n - 1 postlogd", ""])
    return main, master


def listening(addr, port):
    try:
        with socket.create_connection((addr, port), timeout=1):
            return True
    except OSError:
        return False


class StockStack:
    ADDR = "127.0.80.1"

    def __init__(self):
        self.d = tempfile.mkdtemp(prefix="porcupine-eval-stock-", dir=work_dir())
        os.chmod(self.d, 0o755)
        self.pf = os.path.join(self.d, "postfix")
        self.dv = os.path.join(self.d, "dovecot")

    def start(self):
        for sub in ("etc", "queue", "data"):
            os.makedirs(os.path.join(self.pf, sub), exist_ok=True)
        shutil.chown(os.path.join(self.pf, "data"), user="postfix")
        for sub in ("run", "state", "mail", "home"):
            os.makedirs(os.path.join(self.dv, sub), exist_ok=True)
        os.chmod(self.pf, 0o755)
        os.chmod(self.dv, 0o755)
        for sub in ("mail", "home"):
            os.chmod(os.path.join(self.dv, sub), 0o777)
        main, master = postfix_conf(self.pf, self.ADDR)
        with open(os.path.join(self.pf, "etc", "main.cf"), "w") as f:
            f.write(main)
        with open(os.path.join(self.pf, "etc", "master.cf"), "w") as f:
            f.write(master)
        conf = os.path.join(self.dv, "dovecot.conf")
        with open(conf, "w") as f:
            f.write(stock_dovecot.conf(self.dv, self.ADDR, "porcupine-eval-stock", ["pop3", "lmtp"],
                                       {"pop3": 10110, "lmtp": 10024}, home="domain/name",
                                       passdb=("password", "secret")))
        with open(os.path.join(self.dv, "dovecot.out"), "w") as out:
            if subprocess.call(["dovecot", "-c", conf], stdout=out, stderr=subprocess.STDOUT, timeout=30) != 0:
                raise RuntimeError("stock dovecot did not start: see " + self.dv)
        with open(os.path.join(self.pf, "postfix.out"), "w") as out:
            if subprocess.call(["postfix", "-c", os.path.join(self.pf, "etc"), "start"], stdout=out,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=60) != 0:
                raise RuntimeError("stock postfix did not start: see " + self.pf)
        deadline = time.time() + 15
        while not (listening(self.ADDR, 10025) and listening(self.ADDR, 10110) and listening(self.ADDR, 10024)):
            if time.time() > deadline:
                raise RuntimeError("stock stack does not listen")
            time.sleep(0.1)

    def pid(self, path):
        try:
            with open(path) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def pids(self):
        out = []
        for p in (self.pid(os.path.join(self.pf, "queue", "pid", "master.pid")),
                  self.pid(os.path.join(self.dv, "run", "master.pid"))):
            if p:
                out += tree(p)
        return out

    def stop(self):
        subprocess.call(["postfix", "-c", os.path.join(self.pf, "etc"), "stop"], stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL, timeout=60)
        p = self.pid(os.path.join(self.dv, "run", "master.pid"))
        if p:
            try:
                os.kill(p, signal.SIGTERM)
            except OSError:
                pass
            for _ in range(100):
                if not os.path.exists("/proc/%d" % p):
                    break
                time.sleep(0.05)
        shutil.rmtree(self.d, ignore_errors=True)

    def delivered_files(self):
        n = 0
        for root, _dirs, files in os.walk(os.path.join(self.dv, "mail")):
            if root.endswith("/new") or root.endswith("/cur"):
                n += len(files)
        return n


def body_of(size, n):
    head = "From: load@example.net\r\nTo: x@example.org\r\nSubject: load %d\r\n\r\n" % n
    line = "0123456789abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLM\r\n"
    return (head + line * (size // len(line) + 1))[:size]


def stock_workload(seconds, seed, addrs=None):
    """Senders over SMTP, readers over POP3 (RETR + DELE), thread k on
    addrs[k % len(addrs)] (default: the stock stack); returns figures."""
    addrs = addrs or [StockStack.ADDR]
    end = time.time() + seconds
    t0 = time.time()
    lock = threading.Lock()
    st = {"smtp": [], "pop": [], "fail": 0, "bytes": 0}
    weights = [w for _s, w in SIZES]

    def sender(k):
        rng = random.Random(seed * 1000 + k)
        n = 0
        while time.time() < end:
            try:
                with smtplib.SMTP(addrs[k % len(addrs)], 10025, timeout=30) as s:
                    while time.time() < end and n % 20 != 19:
                        size = rng.choices([s_ for s_, _w in SIZES], weights)[0]
                        t = time.time()
                        s.sendmail("load@example.net", [rng.choice(USERS)], body_of(size, n))
                        with lock:
                            st["smtp"].append((time.time() - t) * 1000)
                            st["bytes"] += size
                        n += 1
                    n += 1
            except (OSError, smtplib.SMTPException):
                with lock:
                    st["fail"] += 1
                time.sleep(0.05)

    def reader(k):
        rng = random.Random(seed * 2000 + k)
        while time.time() < end:
            try:
                p = poplib.POP3(addrs[(k + SENDERS) % len(addrs)], 10110, timeout=30)
                p.user(rng.choice(USERS))
                p.pass_("secret")
                count = p.stat()[0]
                for i in range(1, min(count, 100) + 1):
                    if time.time() >= end:
                        break
                    t = time.time()
                    p.retr(i)
                    p.dele(i)
                    with lock:
                        st["pop"].append((time.time() - t) * 1000)
                p.quit()
                if count == 0:
                    time.sleep(0.02)
            except (OSError, poplib.error_proto):
                with lock:
                    st["fail"] += 1
                time.sleep(0.05)

    threads = [threading.Thread(target=sender, args=(k,)) for k in range(SENDERS)]
    threads += [threading.Thread(target=reader, args=(k,)) for k in range(READERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    secs = time.time() - t0
    return {"t0": t0, "accepted": len(st["smtp"]), "reads": len(st["pop"]), "failures": st["fail"], "seconds": secs,
            "smtp_p50": pct(st["smtp"], 0.5), "smtp_p99": pct(st["smtp"], 0.99),
            "read_p50": pct(st["pop"], 0.5), "read_p99": pct(st["pop"], 0.99)}


def run_stock(seconds, seed):
    s = StockStack()
    try:
        s.start()
        meter = ProcMeter(s.pids(), os.path.join(s.d, "perf.txt"))
        disk = DiskMeter(s.d)
        w = stock_workload(seconds, seed)
        # Postfix acknowledges a message once it is in its queue; it counts
        # as delivered once Dovecot has put it in a Maildir (or a reader
        # has already retrieved and deleted it).
        in_window = s.delivered_files() + w["reads"]
        # Let the queue drain (bounded) so CPU and fsyncs cover whole deliveries.
        deadline = time.time() + 60
        while time.time() < deadline:
            q = subprocess.run(["postqueue", "-c", os.path.join(s.pf, "etc"), "-j"], capture_output=True, text=True)
            if not q.stdout.strip():
                break
            time.sleep(0.2)
        busy = time.time() - w["t0"]
        cpu_ms, fsyncs = meter.stop()
        disk_ms = disk.stop()
        n = s.delivered_files() + w["reads"]
        return {"msgs_per_s": n / busy, "in_window_per_s": in_window / w["seconds"],
                "accepted_per_s": w["accepted"] / w["seconds"],
                "reads_per_s": w["reads"] / w["seconds"],
                "p50": w["smtp_p50"], "p99": w["smtp_p99"], "read_p50": w["read_p50"], "read_p99": w["read_p99"],
                "cpu_ms_per_msg": cpu_ms / n if n and cpu_ms is not None else None,
                "fsyncs_per_msg": fsyncs / n if n and fsyncs is not None else None,
                "disk_ms_per_msg": disk_ms / n if n and disk_ms is not None else None,
                "failures": w["failures"], "messages": n, "accepted": w["accepted"]}
    finally:
        s.stop()


# ---------------------------------------------------------------------------
# (1b, 1c) Clusters of real agents, the workload through the local API.
def start_cluster(build, nodes, replicas, subnet, services=()):
    d = tempfile.mkdtemp(prefix="porcupine-eval-", dir=work_dir())
    cl = local.Cluster(d, build)
    if services:
        cl.start(nodes, replicas, 2, subnet, services=services)
    else:
        cl.start(nodes, replicas, 2, subnet)
    deadline = time.time() + 30
    while not cl.converged():
        if time.time() > deadline:
            cl.stop()
            raise RuntimeError("cluster of %d did not form" % nodes)
        time.sleep(0.1)
    for u in USERS:
        r = cl.ctl(1, ["user", "add", u, "--password", "secret"], capture=True)
        if r.returncode != 0:
            cl.stop()
            raise RuntimeError("user add: " + r.stderr)
    return cl, d


def mail_load_argv(build, cl, nodes, seconds, seed, per_second=False):
    argv = [os.path.join(build, "tests", "bench", "mail_load"), "--seconds", str(seconds), "--senders", str(SENDERS),
            "--readers", str(READERS), "--seed", str(seed)]
    for i in range(1, nodes + 1):
        argv += ["--socket", os.path.join(cl.ndir(i), "agent.sock")]
    for u in USERS:
        argv += ["--users", u]
    if per_second:
        argv.append("--per-second")
    return argv


def run_cluster(build, nodes, replicas, subnet, seconds, seed):
    cl, d = start_cluster(build, nodes, replicas, subnet)
    try:
        pids = []
        for i in range(1, nodes + 1):
            pids += [cl.pid(i, "agent"), cl.pid(i, "redis")]
        meter = ProcMeter([p for p in pids if p], os.path.join(d, "perf.txt"))
        disk = DiskMeter(d)
        out = subprocess.run(mail_load_argv(build, cl, nodes, seconds, seed), capture_output=True, text=True,
                             timeout=seconds + 120)
        cpu_ms, fsyncs = meter.stop()
        disk_ms = disk.stop()
        f = kv(out.stdout.strip().splitlines()[-1]) if out.stdout.strip() else {}
        if out.returncode != 0 or "per_second" not in f:
            raise RuntimeError("mail_load failed: " + out.stdout[-500:] + out.stderr[-500:])
        n = f["deliveries"]
        return {"msgs_per_s": f["per_second"], "reads_per_s": f["reads_per_second"], "p50": f["p50_ms"],
                "p99": f["p99_ms"], "read_p50": f["read_p50_ms"], "read_p99": f["read_p99_ms"],
                "cpu_ms_per_msg": cpu_ms / n if cpu_ms is not None else None,
                "fsyncs_per_msg": fsyncs / n if fsyncs is not None else None, "failures": f["failures"],
                "disk_ms_per_msg": disk_ms / n if disk_ms is not None else None,
                "messages": n, "mean_bytes": f["mean_bytes"]}
    finally:
        cl.stop()
        shutil.rmtree(d, ignore_errors=True)


FULL_STACK = ("dovecot", "milter", "postfix")


def run_cluster_smtp(build, nodes, replicas, subnet, seconds, seed):
    """Every node the full stack (scripts/porcupine-local --with
    dovecot,milter,postfix), driven like the stock stack: SMTP to each node's
    Postfix, POP3 to each node's Dovecot."""
    cl, d = start_cluster(build, nodes, replicas, subnet, FULL_STACK)
    try:
        pids = []
        for i in range(1, nodes + 1):
            for what in ("agent", "redis", "milter", "postfix", "dovecot"):
                p = cl.pid(i, what)
                if p:
                    pids += tree(p)
        meter = ProcMeter(pids, os.path.join(d, "perf.txt"))
        disk = DiskMeter(d)

        def sent():
            n = 0
            for i in range(1, nodes + 1):
                try:
                    with open(cl.postfix_log(i)) as f:
                        n += sum(1 for line in f if " status=sent " in line)
                except OSError:
                    pass
            return n

        w = stock_workload(seconds, seed, [cl.address(i) for i in range(1, nodes + 1)])
        in_window = sent()
        deadline = time.time() + 60
        while time.time() < deadline:
            if not any(subprocess.run(["postqueue", "-c", os.path.join(cl.postfix_dir(i), "etc"), "-j"],
                                      capture_output=True, text=True).stdout.strip() for i in range(1, nodes + 1)):
                break
            time.sleep(0.2)
        busy = time.time() - w["t0"]
        cpu_ms, fsyncs = meter.stop()
        disk_ms = disk.stop()
        n = sent()
        return {"msgs_per_s": n / busy, "in_window_per_s": in_window / w["seconds"],
                "accepted_per_s": w["accepted"] / w["seconds"], "reads_per_s": w["reads"] / w["seconds"],
                "p50": w["smtp_p50"], "p99": w["smtp_p99"], "read_p50": w["read_p50"], "read_p99": w["read_p99"],
                "cpu_ms_per_msg": cpu_ms / n if n and cpu_ms is not None else None,
                "fsyncs_per_msg": fsyncs / n if n and fsyncs is not None else None,
                "disk_ms_per_msg": disk_ms / n if n and disk_ms is not None else None,
                "failures": w["failures"], "messages": n, "accepted": w["accepted"]}
    finally:
        cl.stop()
        shutil.rmtree(d, ignore_errors=True)


def fsync_rate(build):
    d = tempfile.mkdtemp(prefix="porcupine-eval-fsync-", dir=work_dir())
    try:
        out = subprocess.run([os.path.join(build, "tests", "bench", "fsync_rate"), d, "300"], capture_output=True,
                             text=True, timeout=120)
        return float(re.findall(r"=(\d+)", out.stdout)[0])
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ---------------------------------------------------------------------------
# (2) The failure timeline with real agents.
def real_timeline(build, quick, seed, outdir):
    """Crashes and restarts, then (in a network namespace of this run's
    own: netsplit) a split of the nodes into two sides and its heal.
    A split event's nodes are node 1's side."""
    nodes = 3 if quick else 5
    total = 10 if quick else 60
    plan = [(3, "kill", [3]), (6, "restart", [3])] if quick else \
        [(15, "kill", [5]), (25, "kill", [4]), (40, "restart", [5, 4])]
    if netsplit.in_namespace():
        total = 16 if quick else 80
        plan += [(10, "split", [1, 2]), (13, "heal", [])] if quick else [(52, "split", [1, 2, 3]), (64, "heal", [])]
    cl, d = start_cluster(build, nodes, 2, 81)
    links = netsplit.Links(cl.address) if netsplit.in_namespace() else None
    changes = []
    try:
        load = subprocess.Popen(mail_load_argv(build, cl, nodes, total, seed, per_second=True), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        t0 = time.time()
        stop = threading.Event()

        def watch():
            last = None
            while not stop.is_set():
                r = cl.ctl(1, ["--json", "--timeout", "1000", "status"], capture=True)
                if r.returncode == 0:
                    s = json.loads(r.stdout)
                    view = (s["epoch"], tuple(sorted(m["id"] for m in s["members"])))
                    if view != last:
                        changes.append({"t": time.time() - t0, "epoch": view[0], "members": list(view[1])})
                        last = view
                time.sleep(0.2)

        w = threading.Thread(target=watch)
        w.start()
        events = []
        for at, what, victims in plan:
            time.sleep(max(0, t0 + at - time.time()))
            if what == "split":
                links.cut_off(victims, [i for i in range(1, nodes + 1) if i not in victims])
            elif what == "heal":
                links.heal()
            for v in victims if what in ("kill", "restart") else []:
                if what == "kill":
                    cl.kill(v, redis=False)
                else:
                    cl.restart(v)
            events.append({"t": time.time() - t0, "what": what, "nodes": victims})
        out, err = load.communicate(timeout=total + 120)
        stop.set()
        w.join()
    finally:
        if links:
            links.heal()
        cl.stop()
        shutil.rmtree(d, ignore_errors=True)
    # The last second is partial (the load stops inside it): left out.
    seconds = [kv(l) for l in out.splitlines() if l.startswith("second ") and kv(l)["t"] < total]
    series = [(int(x["t"]), x["deliveries"]) for x in seconds]
    p99s = [(int(x["t"]), x.get("p99_ms", 0)) for x in seconds]
    summary = kv(out.strip().splitlines()[-1]) if out.strip() else {}
    if not series or summary.get("deliveries", 0) <= 0:
        raise RuntimeError("timeline load failed: " + err[-500:])
    # Time to reconfigure: from each event to node 1's first view with the
    # new members (a split: its side; a heal: every node).
    for e in events:
        want = None
        for c in changes:
            if c["t"] >= e["t"] and ((e["what"] == "kill" and not set(e["nodes"]) & set(c["members"])) or
                                     (e["what"] == "restart" and set(e["nodes"]) <= set(c["members"])) or
                                     (e["what"] == "split" and set(c["members"]) == set(e["nodes"])) or
                                     (e["what"] == "heal" and len(c["members"]) == nodes)):
                want = c
                break
        e["reconfig_s"] = want["t"] - e["t"] if want else None
        e["steady_s"] = steady_after(series, e["t"], [x["t"] for x in events if x["t"] > e["t"]] + [total])
    crash_effects(events, series, p99s, nodes)
    return {"nodes": nodes, "series": series, "p99s": p99s, "events": events, "changes": changes,
            "summary": summary, "total": total}


def crash_effects(events, series, p99s, nodes):
    """Per kill: the throughput level before it (median of the 5 whole
    seconds before), the level the live nodes' share of it makes (live
    after / live before), the lowest second in the 3 after it against the
    level before (dip), the seconds from the kill to the end of the first
    second at or above 90 % of that share (back_s), and the highest
    per-second p99 delivery latency in those 3 seconds beside the median
    per-second p99 of the 10 seconds before the first event. Per split, the
    same, the share being the larger side's (whose nodes serve on as most
    of the cluster)."""
    per = dict(series)
    lat = dict(p99s)
    first = int(min(e["t"] for e in events)) if events else 0
    steady = [lat[s] for s in range(max(1, first - 10), first) if s in lat]
    live = nodes
    for e in events:
        before_live = live
        live += {"kill": -len(e["nodes"]), "restart": len(e["nodes"])}.get(e["what"], 0)
        if e["what"] not in ("kill", "split"):
            continue
        at = int(e["t"])
        pre = [per[s] for s in range(at - 5, at) if s in per]
        if not pre or not steady:
            continue
        level = statistics.median(pre)
        share = level * live / before_live if e["what"] == "kill" else \
            level * max(len(e["nodes"]), live - len(e["nodes"])) / live
        after = [s for s in range(at, at + 3) if s in per]
        e["level_before"] = level
        e["share_level"] = share
        e["dip"] = min(per[s] for s in after) / level if after and level else None
        back = next((s for s in sorted(per) if s >= at and per[s] >= 0.9 * share), None)
        e["back_s"] = max(0.0, back + 1 - e["t"]) if back is not None else None
        e["p99_through_ms"] = max(lat[s] for s in after if s in lat) if after else None
        e["p99_steady_ms"] = statistics.median(steady)


def event_name(e, nodes):
    if e["what"] == "split":
        return "split %s from %s" % (",".join(map(str, e["nodes"])),
                                  ",".join(str(i) for i in range(1, nodes + 1) if i not in e["nodes"]))
    if e["what"] == "heal":
        return "heal"
    return "%s node %s" % (e["what"], ",".join(map(str, e["nodes"])))


def steady_after(series, t, later):
    """Seconds from t until throughput is back within 10 % of the level it
    settles at before the next event (median of the second half)."""
    nxt = min(later)
    seg = [(s, v) for s, v in series if t <= s < nxt]
    if len(seg) < 4:
        return None
    level = statistics.median([v for _s, v in seg[len(seg) // 2:]])
    for k, (s, v) in enumerate(seg):
        if all(abs(v2 - level) <= 0.1 * level + 1 for _s2, v2 in seg[k:k + 2]):
            return max(0.0, s + 1 - t)
    return None


# ---------------------------------------------------------------------------
# (3) The simulator.
def sim(build, args):
    out = subprocess.run([os.path.join(build, "tests", "bench", "sim_eval")] + [str(a) for a in args],
                         capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError("sim_eval %s failed: %s" % (" ".join(map(str, args)), out.stderr[-500:]))
    return out.stdout


def store_disk(runs, fsync_ms):
    """Disk time per message of the 1-node runs: the disk's busy time, or,
    where that cannot be read (a file system no block device counts),
    their fsyncs per message times the raw fsync time."""
    if all(r.get("disk_ms_per_msg") is not None for r in runs):
        return statistics.median([r["disk_ms_per_msg"] for r in runs])
    if all(r.get("fsyncs_per_msg") is not None for r in runs):
        log("no disk busy time (not a block device): store_disk from fsyncs x raw fsync time")
        return statistics.median([r["fsyncs_per_msg"] for r in runs]) * fsync_ms
    raise RuntimeError("no disk figures for the cost model: perf stat and /proc/diskstats gave none")


def cost_spec(c):
    return ",".join("%s=%g" % (k, v) for k, v in c.items())


# ---------------------------------------------------------------------------
def plots(outdir, R):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    files = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(os.path.join(outdir, name), dpi=110)
        plt.close(fig)
        files.append(name)

    # Real processes: throughput and latency per setup.
    setups = list(R["real"].keys())
    fig, ax = plt.subplots(1, 2, figsize=(14, 4.8))
    for k, key in enumerate(["msgs_per_s", "p99"]):
        meds = [median_spread([r[key] for r in R["real"][s]]) for s in setups]
        ax[k].bar(range(len(setups)), [m[0] for m in meds],
                  yerr=[[m[0] - m[1] for m in meds], [m[2] - m[0] for m in meds]], capsize=4,
                  color=["#888" if s.startswith("stock") else "#37a" if s.startswith("full") else "#3a7"
                         for s in setups])
        ax[k].set_xticks(range(len(setups)))
        ax[k].set_xticklabels([s.replace("full stack, ", "full stack,\n") + ("" if s.startswith(("stock", "full"))
                                                                               else "\n(local API)") for s in setups],
                              rotation=20, fontsize=7)
    ax[0].set_ylabel("messages delivered per second")
    ax[0].set_title("Throughput, real processes (median, min–max)")
    ax[1].set_ylabel("p99 delivery latency (ms)")
    ax[1].set_title("p99 delivery latency (SMTP, or the local API's deliver)")
    save(fig, "real_throughput.png")

    # Real failure timeline.
    tl = R["timeline"]
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot([s for s, _v in tl["series"]], [v for _s, v in tl["series"]], "-o", ms=3, label="deliveries per second")
    for e in tl["events"]:
        ax.axvline(e["t"], color={"kill": "red", "restart": "green", "split": "orange"}.get(e["what"], "blue"),
                   ls="--", label=event_name(e, tl["nodes"]))
    for c in tl["changes"][1:]:
        ax.axvline(c["t"], color="gray", ls=":", lw=1)
    ax.plot([], [], color="gray", ls=":", label="membership change seen by node 1")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("messages delivered per second")
    ax.set_title("Failure timeline: %d real agents, R=2, kill -9 and restart%s" % (
        tl["nodes"], ", a split and its heal" if any(e["what"] == "split" for e in tl["events"]) else ""))
    ax.legend(fontsize=8, loc="lower left")
    save(fig, "real_failure_timeline.png")

    # Sim scale-out.
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in (1, 2):
        pts = sorted(R["sim_scale"][r].items())
        ns = [n for n, _v in pts]
        meds = [median_spread(v) for _n, v in pts]
        ax.errorbar(ns, [m[0] for m in meds], yerr=[[m[0] - m[1] for m in meds], [m[2] - m[0] for m in meds]],
                    marker="o", capsize=3, label="simulated, R=%d" % r)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("nodes")
    ax.set_ylabel("messages per second")
    ax.set_title("Scale-out in the simulator (calibrated cost model)")
    ax.legend()
    save(fig, "sim_scaleout.png")

    # Sim failure timelines.
    fig, ax = plt.subplots(figsize=(10, 4))
    for k, t in sorted(R["sim_timeline"].items()):
        whole = t["series"][1:-1]  # the first and last seconds are partial
        ax.plot([s for s, _v in whole], [v for _s, v in whole], label="%d of %d crashed" % (k, t["nodes"]))
    if R["sim_timeline"]:
        t = next(iter(R["sim_timeline"].values()))
        ax.axvline(t["crash_at"], color="red", ls="--", label="crash")
        ax.axvline(t["restart_at"], color="green", ls="--", label="restart")
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("messages delivered per second")
    ax.set_title("Simulated failure timeline, R=2")
    ax.legend(fontsize=8)
    save(fig, "sim_failure_timeline.png")

    # Heterogeneity.
    fig, ax = plt.subplots(1, len(R["hetero"]), figsize=(5.5 * len(R["hetero"]), 4))
    for k, regime in enumerate(R["hetero"]):
        for pol in ("static", "random", "spread"):
            pts = sorted(R["hetero"][regime][pol].items())
            ax[k].plot([p for p, _v in pts], [statistics.median(v) for _p, v in pts], marker="o", label=pol)
        ax[k].set_xlabel("% of nodes with 3x faster disks")
        ax[k].set_ylabel("messages per second")
        ax[k].set_title("Heterogeneity, %d nodes, R=1:\n%s" % (R["hetero_nodes"], regime), fontsize=9)
        ax[k].legend()
    save(fig, "sim_heterogeneity.png")

    # Reconfiguration cost.
    ns = sorted(R["reconfig"])
    med = lambda k, n: statistics.median([x[k] for x in R["reconfig"][n]])
    new = all("idle_msgs_3s" in x for n in ns for x in R["reconfig"][n])
    fig, ax = plt.subplots(1, 3 if new else 2, figsize=(16 if new else 11, 4))
    ax[0].plot(ns, [med("crash_ms", n) for n in ns], "-o", label="crash")
    ax[0].plot(ns, [med("rejoin_ms", n) for n in ns], "-o", label="rejoin")
    ax[0].set_xscale("log")
    ax[0].set_xlabel("nodes")
    ax[0].set_ylabel("simulated ms to a converged group (100 ms steps)")
    ax[0].set_ylim(0, max([med("crash_ms", n) for n in ns] + [med("rejoin_ms", n) for n in ns]) * 1.5)
    ax[0].set_title("Time to reconfigure")
    ax[0].legend()
    if new:
        for what in ("crash", "rejoin"):
            ax[1].plot(ns, [med(what + "_round_msgs", n) for n in ns], "-o", label="round messages, " + what)
            ax[1].plot(ns, [med(what + "_msgs_3s", n) for n in ns], "-s", label="all messages to 3 s after, " + what)
        ax[1].plot(ns, [med("idle_msgs_3s", n) for n in ns], "--", label="idle 3 s")
        ax[1].plot(ns, [3 * n for n in ns], ":", color="grey", label="3N")
    else:
        ax[1].plot(ns, [med("crash_msgs", n) for n in ns], "-o", label="crash to converged (all traffic)")
        ax[1].plot(ns, [med("idle_msgs_same_span", n) for n in ns], "--", label="idle traffic over the same span")
        ax[1].plot(ns, [med("rejoin_msgs", n) for n in ns], "-o", label="rejoin (all traffic)")
    ax[1].set_xscale("log")
    ax[1].set_yscale("log")
    ax[1].set_xlabel("nodes")
    ax[1].set_ylabel("protocol messages")
    ax[1].set_title("Messages per reconfiguration")
    ax[1].legend(fontsize=7)
    if new:
        for what in ("crash", "rejoin"):
            ax[2].plot(ns, [statistics.median([x[what + "_round_bytes"] / max(1, x[what + "_round_msgs"])
                                               for x in R["reconfig"][n]]) for n in ns], "-o", label=what)
        ax[2].set_xscale("log")
        ax[2].set_xlabel("nodes")
        ax[2].set_ylabel("bytes (encoded)")
        ax[2].set_title("Bytes per round message")
        ax[2].legend()
    save(fig, "sim_reconfig_cost.png")
    return files


# ---------------------------------------------------------------------------
def main():
    # The failure timeline cuts links between nodes: in a network namespace
    # of this run's own (its own loopback; nothing of the host's is cut).
    # Not root: no namespace, and the timeline has no split.
    if os.geteuid() == 0:
        netsplit.enter_namespace()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--out", default=os.path.join(ROOT, "results"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--report-only", metavar="RESULTS_DIR",
                    help="redraw the plots and rewrite report.md from RESULTS_DIR/results.json")
    ap.add_argument("--redo-real", metavar="RESULTS_DIR",
                    help="measure section 1 (real processes) again into RESULTS_DIR, then rewrite its report")
    ap.add_argument("--redo-hetero", metavar="RESULTS_DIR",
                    help="run the heterogeneity part again with RESULTS_DIR's calibration, then rewrite its report")
    ap.add_argument("--redo-reconfig", metavar="RESULTS_DIR",
                    help="measure the reconfiguration cost (section 3) again into RESULTS_DIR, then rewrite its report")
    ap.add_argument("--redo-timeline", metavar="RESULTS_DIR",
                    help="measure section 2 (the real failure timeline) again into RESULTS_DIR, then rewrite its report")
    args = ap.parse_args()
    if args.redo_reconfig:
        return redo_reconfig(os.path.abspath(args.build), args.redo_reconfig)
    if args.redo_timeline:
        return redo_timeline(os.path.abspath(args.build), args.redo_timeline, args.runs)
    if args.report_only:
        return report_only(args.report_only)
    if args.redo_real:
        return redo_real(os.path.abspath(args.build), args.redo_real, args.runs)
    if args.redo_hetero:
        return redo_hetero(os.path.abspath(args.build), args.redo_hetero)
    build = os.path.abspath(args.build)
    quick = args.quick
    runs = 1 if quick else args.runs
    stamp = datetime.datetime.utcnow().strftime("%Y-%m-%d-%H%M%S")
    outdir = os.path.join(os.path.abspath(args.out), stamp + ("-quick" if quick else ""))
    os.makedirs(outdir, exist_ok=True)
    t_start = time.time()
    R = {"real": {}, "sim_scale": {1: {}, 2: {}}, "sim_timeline": {}, "hetero": {}, "reconfig": {}, "stamp": stamp}
    seconds = 3 if quick else 20

    # (1) real processes.
    run_real(build, R, runs, seconds, quick)
    # (2) the failure timeline.
    log("real failure timeline")
    R["timeline"] = real_timeline(build, quick, 1, outdir)
    tls = [R["timeline"]]
    for run in range(1, 1 if quick else min(runs, 2)):
        log("real failure timeline, run %d" % (run + 1))
        tls.append(real_timeline(build, quick, run + 1, outdir))
    R["timeline_runs"] = timeline_runs(tls)

    # (3) calibration of the cost model from (1), then the simulator.
    stock = R["real"]["stock Postfix+Dovecot"]
    one = R["real"]["1 node, R=1"]
    fsync_ms = 1000.0 / statistics.median(R["fsync"])
    cal = {
        "fe_deliver_cpu": statistics.median([r["cpu_ms_per_msg"] for r in stock]),
        "fe_read_cpu": 0.0,
        "store_cpu": statistics.median([r["cpu_ms_per_msg"] for r in one]),
        "store_disk": store_disk(one, fsync_ms),
        "mutate_disk": 0.0, "fetch_disk": 0.0, "msg_cpu": 0.02, "cores": 2, "net_latency": 1,
    }
    R["calibration"] = cal
    R["fsync_ms"] = fsync_ms
    cs = cost_spec(cal)
    scale_ns = [1, 2, 4] if quick else [1, 2, 4, 8, 12, 16, 20, 24, 30]
    sim_runs = 1 if quick else 3
    ssec, swarm = ("1", "0.5") if quick else ("3", "1")
    for r in (1, 2):
        for n in scale_ns:
            R["sim_scale"][r][n] = []
            for s in range(sim_runs):
                log("sim scale: %d nodes R=%d seed %d" % (n, r, s + 1))
                R["sim_scale"][r][n].append(kv(sim(build, ["scale", "--nodes", n, "--replicas", r, "--seconds", ssec,
                                                           "--warmup", swarm, "--seed", s + 1, "--clients-per-node", 16,
                                                           "--cost", cs]))["msgs_per_s"])
    big = [(20, "1", "0.5")] if quick else [(100, "2", "1"), (1000, "0.5", "0.5")]
    R["sim_big"] = {}
    for n, sec, warm in big:
        log("sim scale: %d nodes R=2 (one run, %s simulated s)" % (n, sec))
        f = kv(sim(build, ["scale", "--nodes", n, "--replicas", 2, "--seconds", sec, "--warmup", warm,
                           "--clients-per-node", 16, "--users-per-node", 5, "--cost", cs]))
        R["sim_big"][n] = dict(f, sim_seconds=float(sec))
        R["sim_scale"][2].setdefault(n, []).append(f["msgs_per_s"])
    R["hetero_nodes"] = sim_timelines(build, R, quick, cs)
    run_hetero(build, R, quick, sim_runs)
    run_reconfig(build, R, quick, sim_runs)

    # (4) on paper.
    per_node = statistics.median(R["sim_scale"][2][max(scale_ns)]) / max(scale_ns)
    R["per_node_r2"] = per_node
    R["elapsed_s"] = time.time() - t_start
    R["plots"] = plots(outdir, R)
    with open(os.path.join(outdir, "results.json"), "w") as f:
        json.dump(R, f, indent=1, default=str)
    with open(os.path.join(outdir, "report.md"), "w") as f:
        f.write(report(R, quick, runs, sim_runs, scale_ns, stamp))
    # Sanity: every part produced positive figures.
    bad = [n for n, rs in R["real"].items() if not all(r["msgs_per_s"] > 0 for r in rs)]
    bad += ["sim %d" % n for n, v in R["sim_scale"][1].items() if not all(x > 0 for x in v)]
    if bad:
        print("evaluate: no throughput in: " + ", ".join(bad), file=sys.stderr)
        return 1
    print(outdir)
    return 0


REAL_SETUPS = [("stock Postfix+Dovecot", None, None), ("1 node, R=1", (1, 1, 82), "api"),
               ("3 nodes, R=1", (3, 1, 83), "api"), ("3 nodes, R=2", (3, 2, 84), "api"),
               ("full stack, 1 node, R=1", (1, 1, 85), "smtp"), ("full stack, 3 nodes, R=1", (3, 1, 86), "smtp"),
               ("full stack, 3 nodes, R=2", (3, 2, 87), "smtp")]


def run_real(build, R, runs, seconds, quick=False):
    log("raw fsync rate")
    R["fsync"] = [fsync_rate(build) for _ in range(3)]
    # --quick leaves out the 3-node R=1 setups (the R=2 ones cover 3 nodes).
    setups = [x for x in REAL_SETUPS if not (quick and x[1] and x[1][0] == 3 and x[1][1] == 1)]
    R["real"] = {name: [] for name, _c, _how in setups}
    for run in range(runs):
        for name, c, how in setups:
            log("real: %s, run %d/%d" % (name, run + 1, runs))
            if how is None:
                R["real"][name].append(run_stock(seconds, run + 1))
            elif how == "api":
                R["real"][name].append(run_cluster(build, c[0], c[1], c[2], seconds, run + 1))
            else:
                R["real"][name].append(run_cluster_smtp(build, c[0], c[1], c[2], seconds, run + 1))


def sim_timelines(build, R, quick, cs):
    """The simulated failure timelines (k of 30 nodes killed, then
    restarted), with the same figures per crash as the real one."""
    tl_nodes = 6 if quick else 30
    crashes = [1] if quick else [1, 3, 6]
    crash_at, restart_at, tl_secs = (2, 5, 8) if quick else (8, 20, 30)
    R["sim_timeline"] = {}
    for k in crashes:
        log("sim timeline: %d of %d crashed" % (k, tl_nodes))
        out = sim(build, ["timeline", "--nodes", tl_nodes, "--crash", k, "--replicas", 2, "--crash-at", crash_at,
                          "--restart-at", restart_at, "--seconds", tl_secs, "--cost", cs])
        series = [(int(kv(l)["t_s"]), kv(l)["msgs"]) for l in out.splitlines() if l.startswith("second ")]
        ev = [kv(l) for l in out.splitlines() if "what=converged" in l]
        per = dict(series)
        pre = [per[x] for x in range(crash_at - 5, crash_at) if x in per]
        level = statistics.median(pre) if pre else 0
        share = level * (tl_nodes - k) / tl_nodes
        after = [per[x] for x in range(crash_at, crash_at + 3) if x in per]
        back = next((x for x in sorted(per) if x >= crash_at and per[x] >= 0.9 * share), None)
        R["sim_timeline"][k] = {"nodes": tl_nodes, "series": series, "crash_at": crash_at, "restart_at": restart_at,
                                "reconfig_ms": [e["reconfig_ms"] for e in ev],
                                "dip": min(after) / level if after and level else None,
                                "back_s": back + 1 - crash_at if back is not None else None}
    return tl_nodes


def timeline_runs(tls):
    keep = ("what", "nodes", "reconfig_s", "steady_s", "dip", "back_s", "p99_through_ms", "p99_steady_ms")
    return [[{k: e.get(k) for k in keep} for e in t["events"]] for t in tls]


def redo(d, measure, what):
    """Measures one part again into results directory d (measure(R, quick)
    fills R), notes it with `what`, and rewrites the report."""
    with open(os.path.join(d, "results.json")) as f:
        R = int_keys(json.load(f))
    quick = os.path.basename(os.path.normpath(d)).endswith("-quick")
    t0 = time.time()
    measure(R, quick)
    stamp = datetime.datetime.utcnow().strftime("%Y-%m-%d %H:%M")
    R.setdefault("notes", []).append(what % ("at %s UTC (%.0f s)" % (stamp, time.time() - t0)))
    with open(os.path.join(d, "results.json"), "w") as f:
        json.dump(R, f, indent=1, default=str)
    return report_only(d)


def redo_timeline(build, d, runs):
    def measure(R, quick):
        tls = [real_timeline(build, quick, run + 1, d) for run in range(1 if quick else min(runs, 2))]
        R["timeline"] = tls[0]
        R["timeline_runs"] = timeline_runs(tls)
        sim_timelines(build, R, quick, cost_spec(R["calibration"]))
    return redo(d, measure, "Section 2 (the failure timeline) and the simulated failure timelines of section 3 were "
                            "measured again %s with `--redo-timeline`.")


def redo_real(build, d, runs):
    return redo(d, lambda R, quick: run_real(build, R, 1 if quick else runs, 3 if quick else 20, quick),
                "Section 1 was measured again %s with `--redo-real`; the simulator's calibration (section 3) is "
                "still the one taken from the first run's section 1.")


def run_hetero(build, R, quick, sim_runs):
    """Placement policies against heterogeneous disks, in three regimes."""
    cal = R["calibration"]
    disk_bound = cost_spec(dict(cal, store_disk=cal["store_disk"] * 10))
    regimes = [("calibrated (CPU-bound), Zipf users", cost_spec(cal), "zipf"),
               ("disk-bound (store_disk x10), Zipf users", disk_bound, "zipf"),
               ("disk-bound (store_disk x10), uniform users", disk_bound, "uniform")]
    R["hetero"] = {}
    for regime, spec, users in regimes:
        log("sim heterogeneity: " + regime)
        R["hetero"][regime] = {}
        for pol in ("static", "random", "spread"):
            R["hetero"][regime][pol] = {}
            for pctf in (0, 3, 7, 10):
                R["hetero"][regime][pol][pctf] = []
                for s in range(sim_runs):
                    R["hetero"][regime][pol][pctf].append(kv(sim(build, [
                        "hetero", "--nodes", R["hetero_nodes"], "--fast-pct", pctf, "--policy", pol,
                        "--seconds", 20 if not quick else 5, "--warmup", 5 if not quick else 2,
                        "--clients-per-node", 4, "--users", users, "--seed", s + 1, "--cost", spec]))["msgs_per_s"])


def run_reconfig(build, R, quick, sim_runs):
    """Membership changes against cluster size: a crash and a rejoin, with
    two users per node holding one message each (the whole protocol:
    rounds, reports to the new managers, listings after)."""
    R["reconfig"] = {}
    for n in ([3, 10, 30] if quick else [3, 10, 30, 100, 300, 1000]):
        log("sim reconfiguration cost: %d nodes" % n)
        R["reconfig"][n] = [kv(sim(build, ["reconfig", "--nodes", n, "--seed", s + 1, "--mail-users", 2]))
                            for s in range(1 if (quick or n >= 300) else sim_runs)]


def redo_reconfig(build, d):
    def measure(R, quick):
        scale_ns = sorted(R["sim_scale"][1])
        run_reconfig(build, R, quick, len(R["sim_scale"][1][scale_ns[0]]))
    return redo(d, measure, "The reconfiguration cost of section 3 was measured again %s with `--redo-reconfig`.")


def redo_hetero(build, d):
    def measure(R, quick):
        scale_ns = sorted(R["sim_scale"][1])
        run_hetero(build, R, quick, len(R["sim_scale"][1][scale_ns[0]]))
    return redo(d, measure, "The heterogeneity part of section 3 was measured again %s with `--redo-hetero`, the "
                            "same calibration.")


def int_keys(x):
    if isinstance(x, dict):
        return {(int(k) if isinstance(k, str) and k.isdigit() else k): int_keys(v) for k, v in x.items()}
    if isinstance(x, list):
        return [int_keys(v) for v in x]
    return x


def report_only(d):
    with open(os.path.join(d, "results.json")) as f:
        R = int_keys(json.load(f))
    tl = R["timeline"]
    tl["series"] = [x for x in tl["series"] if x[0] < tl["total"]]
    R["plots"] = plots(d, R)
    name = os.path.basename(os.path.normpath(d))
    quick = name.endswith("-quick")
    runs = len(R["real"]["stock Postfix+Dovecot"])
    scale_ns = sorted(n for n, v in R["sim_scale"][1].items())
    sim_runs = len(R["sim_scale"][1][scale_ns[0]])
    with open(os.path.join(d, "report.md"), "w") as f:
        f.write(report(R, quick, runs, sim_runs, scale_ns, R.get("stamp") or name.replace("-quick", "").replace("-redo", "")))
    print(d)
    return 0


def report(R, quick, runs, sim_runs, scale_ns, stamp):
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = re.findall(r"model name\s*:\s*(.*)", f.read())[0]
    except (OSError, IndexError):
        pass
    L = []
    w = L.append
    w("# Evaluation report%s" % (" (quick run: figures only show that it runs)" if quick else ""))
    w("")
    w("* Date (UTC): %s; total run time %.0f s" % (stamp, R["elapsed_s"]))
    w("* Machine: %s, %d cores (%s), kernel %s; shared with other work while it ran" % (
        platform.node(), os.cpu_count(), cpu, platform.release()))
    w("* Raw disk: %s fsyncs/s (4 KiB create+write+fsync, `fsync_rate`, %d runs)" % (fmt(R["fsync"], 0), len(R["fsync"])))
    w("* Message sizes: %s (bytes: weight %%); median 4 KiB, mean %.1f KiB" % (
        ", ".join("%d: %g" % s for s in SIZES), sum(s * w_ for s, w_ in SIZES) / sum(w_ for _s, w_ in SIZES) / 1024))
    for note in R.get("notes", []):
        w("* Note: " + note)
    w("* Workload: %d senders and %d readers (retrieve and delete) at once, 10 users, %s s per run; %d runs per setup; "
      "figures are medians with (min–max) over runs" % (SENDERS, READERS, "3" if quick else "20", runs))
    w("")
    w("## 1. Real processes on this machine")
    w("")
    w("The stock stack is Postfix → Dovecot LMTP → Maildir, driven over SMTP (senders) and POP3 (readers: RETR + "
      "DELE). The `full stack` clusters run on every node what `scripts/porcupine-local --with "
      "dovecot,milter,postfix` starts (Postfix with porcupine-milter, Dovecot with the porcupine plugin, the agent "
      "and its Redis) and are driven exactly like the stock stack, over SMTP and POP3, each client thread on one "
      "node. The other clusters (agents and Redis only) are driven through the agents' local API (`mail_load`: "
      "deliver; list, fetch and expunge), so their figures leave out the SMTP and LMTP work. CPU is the "
      "processes' task-clock (perf stat, following forked children) of every process of the setup; fsyncs count "
      "fsync + fdatasync calls of the same processes. All nodes share this machine's %d cores, so more nodes here "
      "cannot mean more throughput." % os.cpu_count())
    w("")
    w("| setup | msgs/s | ratio to stock | reads/s | p50 / p99 delivery ms | p50 / p99 read ms | CPU ms/msg | fsyncs/msg | disk busy ms/msg |")
    w("|---|---|---|---|---|---|---|---|---|")
    base_runs = R["real"]["stock Postfix+Dovecot"]
    base = [r["msgs_per_s"] for r in base_runs]
    for name, rs in R["real"].items():
        ratios = [r["msgs_per_s"] / b for r, b in zip(rs, base)]
        w("| %s | %s | %s | %s | %s / %s | %s / %s | %s | %s | %s |" % (
            name, fmt([r["msgs_per_s"] for r in rs]), fmt(ratios, 2), fmt([r["reads_per_s"] for r in rs]),
            fmt([r["p50"] for r in rs]), fmt([r["p99"] for r in rs]), fmt([r["read_p50"] for r in rs]),
            fmt([r["read_p99"] for r in rs]), fmt([r["cpu_ms_per_msg"] for r in rs], 2),
            fmt([r["fsyncs_per_msg"] for r in rs], 2), fmt([r.get("disk_ms_per_msg") for r in rs], 2)))
    w("")
    w("msgs/s: for the stock stack, messages delivered into a Maildir from the start of the load until Postfix's "
      "queue was empty, divided by that time (Postfix accepted %s msgs/s into its queue while the load ran, faster "
      "than it could deliver; %s msgs/s reached a Maildir within the load period itself); for the full-stack "
      "clusters the same with Postfix's `status=sent` deliveries to the node's Dovecot (which stores into the "
      "cluster before it answers); for the local-API clusters, deliveries the agents acknowledged (stored on every "
      "replica) during the load period. Delivery "
      "latency is SMTP (accepted into Postfix's queue) for the stock stack and the full stack, the local API's "
      "deliver for the others; read latency is POP3 RETR + DELE (session set-up excluded) and list + fetch + expunge. CPU, fsyncs "
      "and disk busy time (the device's io_ticks, which includes anything else using the disk) are per delivered "
      "message, the stock stack's measured until its queue drained. Ratios are per run (run k of a cluster against "
      "run k of the stock stack, measured minutes apart)." % (fmt([r.get("accepted_per_s") for r in base_runs]),
                                                     fmt([r.get("in_window_per_s") for r in base_runs])))
    w("")
    w("![throughput](real_throughput.png)")
    w("")
    w("## 2. Failure timeline (real agents)")
    w("")
    tl = R["timeline"]
    w("%d agents (each with its Redis) on 127.0.81.x, R=2, the same workload through the local API; node 1 is "
      "polled (`porcupinectl --json status`) every 0.2 s and each change of its view is marked." % tl["nodes"])
    w("")
    w("| event | time to reconfigure (s) | time to steady throughput (s) | lowest second / level before | "
      "back at the live nodes' share (s) | p99 delivery ms through it (steady) |")
    w("|---|---|---|---|---|---|")
    for k, e in enumerate(tl["events"]):
        col = lambda key: [t[k].get(key) for t in R["timeline_runs"] if t[k].get(key) is not None]
        kill = e["what"] in ("kill", "split")
        w("| %s at t=%.0f s | %s | %s | %s | %s | %s |" % (
            event_name(e, tl["nodes"]), e["t"], fmt(col("reconfig_s"), 2), fmt(col("steady_s"), 0),
            fmt(col("dip"), 2) if kill and col("dip") else "",
            fmt(col("back_s"), 1) if kill and col("back_s") else "",
            "%s (%s)" % (fmt(col("p99_through_ms"), 0), fmt(col("p99_steady_ms"), 0)) if kill and col("p99_through_ms")
            else ""))
    w("")
    w("Runs: %d. Time to reconfigure: from the kill or restart to node 1's first view with the new members. Time to "
      "steady throughput: from the event to the first second from which two seconds stay within 10 %% of the "
      "level the throughput settles at before the next event. Lowest second: the fewest deliveries in one of the "
      "3 seconds from the kill, over the median of the 5 seconds before. Back at the live nodes' share: from the "
      "kill to the end of the first second with at least 90 %% of the level before times live nodes after over "
      "live nodes before. p99 through it: the highest per-second p99 delivery latency of the deliveries begun in "
      "those 3 seconds (failed ones included); steady: the median per-second p99 of the 10 seconds before the "
      "first kill. On this 2-core machine fewer live agents leave more CPU to the rest, so throughput can rise "
      "after a kill. A split (when the run had a network namespace of its own, as root): iptables drops every "
      "packet between node 1's side and the other, both ways; the time to reconfigure is to node 1's view of "
      "its side alone, and the share the throughput is measured against is the larger side's (it serves on as "
      "most of the cluster; the smaller defers deliveries to folders it had to take over). A heal: the rules "
      "go; the time to reconfigure is to node 1's view of every node." % len(R["timeline_runs"]))
    w("")
    w("![timeline](real_failure_timeline.png)")
    w("")
    w("## 3. The simulator with a calibrated cost model")
    w("")
    cal = R["calibration"]
    w("Each simulated node has %d CPU cores and one disk, each a FIFO queue (`cluster-agent/sim/cost.h`); the real "
      "core runs unchanged on top. Calibration from section 1 (medians):" % cal["cores"])
    w("")
    w("* front end, per delivery: %.2f ms CPU = the stock stack's CPU per message (Postfix + LMTP + Maildir + "
      "POP3 read), the work every node's Postfix and Dovecot do; reads get no separate front-end charge (it is in "
      "this figure)" % cal["fe_deliver_cpu"])
    w("* per copy stored: %.2f ms CPU (agent + Redis CPU per message, 1 node R=1, reads included) and %.2f ms disk "
      "(fsyncs per message at 1 node R=1 × %.2f ms per raw fsync)" % (cal["store_cpu"], cal["store_disk"], R["fsync_ms"]))
    w("* any other protocol message: %.2f ms CPU; network latency %d ms one way (the simulator's clock has 1 ms "
      "steps; loopback is faster)" % (cal["msg_cpu"], cal["net_latency"]))
    w("* workload: closed loop, 16 clients per node (8 in the failure timelines), half deliveries and half reads (list, fetch, expunge), users "
      "uniform; every node also receives SMTP (front ends chosen at random)")
    w("")
    w("| nodes | R=1 msgs/s | R=2 msgs/s | R=2 per node |")
    w("|---|---|---|---|")
    for n in sorted(set(R["sim_scale"][1]) | set(R["sim_scale"][2])):
        r1 = R["sim_scale"][1].get(n, [])
        r2 = R["sim_scale"][2].get(n, [])
        w("| %d | %s | %s | %s |" % (n, fmt(r1) if r1 else "–", fmt(r2) if r2 else "–",
                                     fmt([x / n for x in r2]) if r2 else "–"))
    w("")
    w("%d seed(s) per point up to %d nodes; the larger clusters ran once (5 users per node) for fewer "
      "simulated seconds: %s." % (sim_runs, max(scale_ns), "; ".join(
          "%d nodes: %.1f simulated s in %.0f s of wall time" % (n, f["sim_seconds"], f["wall_s"])
          for n, f in sorted(R["sim_big"].items()))))
    w("")
    w("![scale-out](sim_scaleout.png)")
    w("")
    w("### Simulated failures (%d nodes, R=2)" % R["hetero_nodes"])
    w("")
    for k, t in sorted(R["sim_timeline"].items()):
        w("* %d crashed at t=%d s, restarted at t=%d s: reconfigured in %s ms%s" % (
            k, t["crash_at"], t["restart_at"], " and ".join("%.0f" % x for x in t["reconfig_ms"]) or "n/a",
            "; lowest second after the crash %.2f of the level before (the live nodes' share: %.2f); back at 90 %% "
            "of that share %d s after the crash (per-second figures)" % (
                t["dip"], (t["nodes"] - k) / t["nodes"], t["back_s"]) if t.get("dip") is not None and
            t.get("back_s") is not None else ""))
    w("")
    w("![sim timeline](sim_failure_timeline.png)")
    w("")
    w("### Heterogeneity (placement policies)")
    w("")
    w("%d nodes, R=1; 0/3/7/10 %% of nodes with 3× faster disks (as in the paper). The same cost queues "
      "with no protocol traffic: `static` stores a user's mail on hash(user) mod N, `random` on any node, `spread` "
      "calls the core's `choose_placement` as a manager does, with each node's stores in flight (CPU and disk) as "
      "its load: a user's own nodes first, and while they are busy (twice the least-loaded other node's load plus "
      "8) the least-loaded others, which then join the user's nodes. Three regimes: the "
      "calibrated costs (this machine: CPU-bound, the front end dominates) and the same with 10× the disk time per "
      "store (the paper's disk-bound regime); users drawn by Zipf(1) over %d users (skewed: the top user gets "
      "about 14 %% of all mail) or uniformly. Spread is 2 (as it grows for busy users above); the mail map of a "
      "user only grows here (nothing is read, so what a wider spread costs reads is not in these figures)." % (R["hetero_nodes"], 20 * R["hetero_nodes"]))
    w("")
    w("| regime | policy | 0 % | 3 % | 7 % | 10 % |")
    w("|---|---|---|---|---|---|")
    for regime, pols in R["hetero"].items():
        for pol, pts in pols.items():
            w("| %s | %s | %s |" % (regime, pol, " | ".join(fmt(pts[p], 0) for p in (0, 3, 7, 10))))
    w("")
    w("![heterogeneity](sim_heterogeneity.png)")
    w("")
    rounds = all("idle_msgs_3s" in x for xs in R["reconfig"].values() for x in xs)
    if rounds:
        w("### Reconfiguration cost versus cluster size (two users per node, one message each)")
        w("")
        w("| nodes | form (sim ms) | crash → converged (sim ms) | round messages | bytes per round message | all messages, 3 s after | "
          "rejoin → converged (sim ms) | round messages | bytes per round message | all messages, 3 s after | "
          "idle 3 s | listed after |")
        w("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for n in sorted(R["reconfig"]):
            xs = R["reconfig"][n]
            col = lambda k: fmt([x[k] for x in xs], 0)
            per = lambda what: fmt([x[what + "_round_bytes"] / max(1, x[what + "_round_msgs"]) for x in xs], 0)
            w("| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d of %d |" % (
                n, col("formed_ms"), col("crash_ms"), col("crash_round_msgs"), per("crash"), col("crash_msgs_3s"),
                col("rejoin_ms"), col("rejoin_round_msgs"), per("rejoin"), col("rejoin_msgs_3s"), col("idle_msgs_3s"),
                min(x["listed"] for x in xs), max(x["delivered"] for x in xs)))
        w("")
        w("The last node is killed (its address refuses connections), then restarted; times are to the simulator's "
          "100 ms polling step. Round messages: `NewGroup`, "
          "`Accept` and `Commit` from the change to a converged group, bytes as the agent encodes them. All "
          "messages, 3 s after: everything from the change to 3 s after convergence (the round, probes, the reports "
          "that rebuild the moved buckets' state at their new managers, anti-entropy), against idle 3 s with no "
          "change. Listed after: users whose INBOX listed its one message through another node after the rejoin, "
          "of those delivered to.")
        w("")
    else:
        w("### Reconfiguration cost versus cluster size (no load)")
        w("")
        w("| nodes | form (sim ms) | crash → converged (sim ms) | messages meanwhile | idle messages, same span | rejoin (sim ms) | rejoin messages |")
        w("|---|---|---|---|---|---|---|")
        for n in sorted(R["reconfig"]):
            xs = R["reconfig"][n]
            w("| %d | %s | %s | %s | %s | %s | %s |" % (n, fmt([x["formed_ms"] for x in xs], 0), fmt([x["crash_ms"] for x in xs], 0),
                                                 fmt([x["crash_msgs"] for x in xs], 0), fmt([x["idle_msgs_same_span"] for x in xs], 0),
                                                 fmt([x["rejoin_ms"] for x in xs], 0), fmt([x["rejoin_msgs"] for x in xs], 0)))
        w("")
    w("![reconfiguration](sim_reconfig_cost.png)")
    w("")
    w("## 4. On paper: 10⁹ messages a day")
    w("")
    need = 1e9 / 86400
    pn = R["per_node_r2"]
    one = statistics.median([r["msgs_per_s"] for r in R["real"]["1 node, R=1"]])
    stock = statistics.median([r["msgs_per_s"] for r in R["real"]["stock Postfix+Dovecot"]])
    avg_nodes, peak_nodes = math.ceil(need / pn), math.ceil(3 * need / pn)
    w("* **Rate.** 10⁹ messages/day = %.0f messages/s on average, %.0f/s at a peak of 3× the average. The "
      "simulated full-stack node (R=2, %d nodes, every node paying this machine's Postfix + Dovecot CPU per message "
      "plus the agent's) does %.0f messages/s, so the average needs %d nodes and the peak %d. For scale: one real "
      "agent alone (no SMTP, no LMTP) did %.0f/s here and the whole stock stack %.0f/s, so the front end, not the "
      "cluster, is most of the cost per message." % (need, 3 * need, max(scale_ns), pn, avg_nodes, peak_nodes, one, stock))
    w("* **Node ids.** `porcupine.conf` takes node_id 1–65535 (ids are 32 bits on the wire and at rest; "
      "UIDVALIDITY is seconds since 1970, not derived from node ids), so the %d nodes of the peak are within reach; "
      "the simulator runs the whole protocol at 300 nodes in the randomized suite and at 1000 nodes here." % peak_nodes)
    B = 1024
    w("* **Bucket count.** B = 1024 buckets spread over N managers: at 255 nodes a manager has 4 or 5 buckets, so "
      "the busiest manager does 5/4.02 = 1.24× the mean manager work; at 1024 nodes and beyond some nodes manage "
      "nothing and the rest one bucket each. B is a cluster-wide constant fixed at formation; a cluster meant to "
      "grow past a few hundred nodes should start with B = 4096 or more (the whole user map, B entries of "
      "about 2 bytes, travels only to and from a node that starts; a round otherwise carries the buckets that move).")
    big = max(R["reconfig"])
    xs = R["reconfig"][big]
    if rounds:
        w("* **Membership fan-out.** A change costs one round: the coordinator sends one `NewGroup` to every known "
          "node, gets one `Accept` from each and sends one `Commit` to each: O(N) messages. Each carries only what "
          "changed: an accepter leaves out a user map no newer than the coordinator's and a node list whose digest "
          "matches, and a member still at the coordinator's group gets the change to it (members that leave or join, "
          "buckets that move), so in steady state the bytes per message do not grow with N. Measured in the "
          "simulator at %d nodes: a crash took %s round messages of %s bytes on average, a rejoin %s of %s bytes "
          "(the returning node alone gets and sends the whole map); all traffic from the crash to 3 s after the "
          "group converged was %s messages, against %s in 3 s without a change. Only the dead node's watcher (its ring "
          "predecessor) starts a round when its connections are refused, and a starting node asks the group's "
          "leader to let it in, so a change is one round, not one per node. The recovery scan is proportional to "
          "the moved buckets' data, as in the paper, not to N." % (
              big, fmt([x["crash_round_msgs"] for x in xs], 0),
              fmt([x["crash_round_bytes"] / max(1, x["crash_round_msgs"]) for x in xs], 0),
              fmt([x["rejoin_round_msgs"] for x in xs], 0),
              fmt([x["rejoin_round_bytes"] / max(1, x["rejoin_round_msgs"]) for x in xs], 0),
              fmt([x["crash_msgs_3s"] for x in xs], 0), fmt([x["idle_msgs_3s"] for x in xs], 0)))
    else:
        w("* **Membership fan-out.** A change costs the coordinator one `NewGroup` to every known node, one `Accept` "
          "from each (carrying its user map, B entries, and the nodes it knows, N entries) and one `Commit` to each "
          "(members + map): O(N) messages and O(N·(B+N)) bytes at one node, about %.1f MB in and %.1f MB out per "
          "change at N = %d. Measured in the simulator at %d nodes: %s messages from the crash to a converged group "
          "against %s in the same span without a change, converged in %s simulated ms; a rejoin took %s messages." % (
              big * (B + big) * 4 / 1e6, big * (B + big) * 4 / 1e6, big, big, fmt([x["crash_msgs"] for x in xs], 0),
              fmt([x["idle_msgs_same_span"] for x in xs], 0), fmt([x["crash_ms"] for x in xs], 0),
              fmt([x["rejoin_msgs"] for x in xs], 0)))
    users = 1e8
    w("* **Mail-map size.** With 10⁸ users (10 messages per user per day), each manager keeps per user a profile "
      "and per folder its holder set (about `spread` = 2 node ids) and UID lineage: on the order of 100 bytes "
      "per user and folder, about 10 GB for the whole cluster, %.0f MB per node at 255 nodes. That is not the "
      "limit; what costs is rebuilding it: a crashed manager's buckets (1024/N of all users) are reported again "
      "by every node holding their mail." % (users * 100 / 255 / 1e6))
    w("")
    if rounds:
        w("So the order in which the protocols give out: the bucket count's granularity first (a few hundred nodes, "
          "unless the cluster starts with more buckets), then the coordinator's O(N) messages per change; the mail "
          "map last.")
    else:
        w("So the order in which the protocols give out: node ids (255) first, then the bucket count's granularity "
          "(a few hundred nodes), then the membership round's O(N·(B+N)) bytes at the coordinator; the mail map last.")
    w("")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    sys.exit(main())
