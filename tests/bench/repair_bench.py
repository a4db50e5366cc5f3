#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Repair after a node is lost for good: how fast the cluster makes the
lost copies again, and what that costs the mail going on meanwhile.

Per run (one per --inflight value, each on a fresh cluster of agents and
their Redis on 127.0.K.i, 4 nodes, R=2, no mail services):
  1. M messages of S bytes delivered through the local API of every node
     (deliver_bench, C connections): the baseline delivery rate;
  2. node 4 stopped for good, its spool and Redis deleted, the other three
     form a group, then `porcupinectl node forget 4` on node 1;
  3. from that moment, the same delivery load in batches on nodes 1-3 until
     the repair is over (at most 8 M messages): every node's status shows node 4 gone and repair
     pending 0 and inflight 0 after a full pass begun after the forget;
     then M/2 messages more on nodes 1-3 (the rate without a repair);
  4. checked on disk: each remaining node's spool holds as many bodies as
     it holds messages whose replica list names it (its status), and the
     count of body files over the three nodes is R x every message
     delivered (all three loads).
Prints the repair time, its rate (messages and MB per second), and the
delivery rate while it ran against the baseline and after it. Asserts nothing about
speed; exit 1 if a run did not complete (repair not finished in time,
wrong counts, deliveries failed).

  repair_bench.py --build BUILD [--subnet K] [--messages M] [--size BYTES]
                  [--connections C] [--inflight N[,N...]] [--quick]
"""
import argparse
import importlib.machinery
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
local = importlib.machinery.SourceFileLoader("porcupine_local", os.path.join(ROOT, "scripts", "porcupine-local")).load_module()

NODES, REPLICAS, LOST = 4, 2, 4
USERS = ["repair%d@example.org" % u for u in range(10)]


class Failed(Exception):
    pass


def ctl_json(cl, i, *args):
    r = cl.ctl(i, ["--json", "--timeout", "10000"] + list(args), capture=True)
    if r.returncode != 0:
        raise Failed("porcupinectl %s on node %d: %s" % (" ".join(args), i, r.stderr.strip()))
    return json.loads(r.stdout) if r.stdout.strip() else {}


def wait(cond, timeout, step=0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(step)
    return False


def deliver(build, cl, nodes, messages, size, connections):
    """deliver_bench's figures (ok, tempfail, failed, seconds, per_second...)."""
    argv = [os.path.join(build, "tests", "bench", "deliver_bench"), "--messages", str(messages),
            "--size", str(size), "--connections", str(connections)]
    for i in nodes:
        argv += ["--socket", os.path.join(cl.ndir(i), "agent.sock")]
    for u in USERS:
        argv += ["--users", u]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    f = {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", out.stdout)}
    if "per_second" not in f:
        raise Failed("deliver_bench failed: " + out.stdout + out.stderr)
    return f


def body_files(cl, i):
    """Message bodies in node i's spool (msg/<origin>/<seq>, no temporary files)."""
    top = os.path.join(cl.ndir(i), "spool", "msg")
    n = 0
    for d, _, files in os.walk(top):
        n += sum(1 for f in files if f.isdigit())
    return n


def run(build, subnet, inflight, o):
    d = tempfile.mkdtemp(prefix="porcupine-repair-bench-")
    cl = local.Cluster(d, build)
    try:
        cl.start(NODES, REPLICAS, 2, subnet, extra_config={"repair_inflight": str(inflight)})
        if not wait(cl.converged, 30):
            raise Failed("the cluster of %d did not form" % NODES)
        for u in USERS:
            r = cl.ctl(1, ["user", "add", u, "--password", "x"], capture=True)
            if r.returncode != 0:
                raise Failed("user add: " + r.stderr)
        base = deliver(build, cl, range(1, NODES + 1), o.messages, o.size, o.connections)
        if base["ok"] != o.messages:
            raise Failed("baseline: %d of %d delivered: %s" % (base["ok"], o.messages, base))
        delivered = int(base["ok"])

        # What node 4 holds: the copies to make again.
        held = ctl_json(cl, LOST, "status")["drain"]["messages"]
        # Node 4 lost for good: stopped, its disk gone, forgotten.
        cl.stop_pid(LOST, "agent")
        cl.stop_pid(LOST, "redis")
        for sub in ("spool", "redis"):
            shutil.rmtree(os.path.join(cl.ndir(LOST), sub), ignore_errors=True)
        stays = [i for i in range(1, NODES + 1) if i != LOST]
        if not wait(cl.converged, 60):
            raise Failed("nodes %s did not form a group without node %d" % (stays, LOST))
        before = {i: ctl_json(cl, i, "status")["repair"] for i in stays}
        status = {}

        def finished():
            for i in stays:
                status[i] = ctl_json(cl, i, "status")
            return all(any(a["node"] == LOST and a["state"] == "gone" for a in s["admin"]) and
                       s["repair"]["passes"] >= before[i]["passes"] + 2 and
                       s["repair"]["pending"] == 0 and s["repair"]["inflight"] == 0 for i, s in status.items())

        # The same load while the repair runs, in batches on nodes 1-3 (a
        # thread), until it is over; the status of every node polled.
        batch = max(20, o.messages // 20)
        during = {"ok": 0, "tempfail": 0, "failed": 0, "seconds": 0.0, "batches": 0, "p99": [], "error": None,
                  "capped": False}
        stop = threading.Event()

        def load():
            try:
                while not stop.is_set():
                    if during["ok"] >= 8 * o.messages:  # bounded disk use: the load stops, the repair goes on
                        during["capped"] = True
                        return
                    f = deliver(build, cl, stays, batch, o.size, o.connections)
                    for k in ("ok", "tempfail", "failed", "seconds"):
                        during[k] += f[k]
                    during["p99"].append(f["p99_ms"])
                    during["batches"] += 1
            except Exception as e:  # reported below
                during["error"] = e
        ctl_json(cl, 1, "node", "forget", str(LOST))
        t0 = time.time()
        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        try:
            done = wait(finished, o.timeout, 0.2)
            repair_s = time.time() - t0
        finally:
            stop.set()
            loader.join(120)
        if during["error"]:
            raise Failed("the load during the repair: %s" % during["error"])
        if not done:
            raise Failed("repair not finished in %d s: %s" % (o.timeout, {i: s["repair"] for i, s in status.items()}))
        delivered += int(during["ok"])
        if during["failed"]:
            raise Failed("%d deliveries failed during the repair" % during["failed"])

        # The same load again once the repair is over, on the same three
        # nodes: what the cluster of three does without a repair going on.
        after = deliver(build, cl, stays, max(batch, o.messages // 2), o.size, o.connections)
        if after["failed"]:
            raise Failed("%d deliveries failed after the repair" % after["failed"])
        delivered += int(after["ok"])

        copies = sum(s["repair"]["copies"] - before[i]["copies"] for i, s in status.items())
        nbytes = sum(s["repair"]["bytes"] - before[i]["bytes"] for i, s in status.items())
        failed = sum(s["repair"]["failed"] - before[i]["failed"] for i, s in status.items())
        # Every body is written before its delivery is acknowledged: the
        # count is final once the repair is.
        files = {i: body_files(cl, i) for i in stays}
        named = {i: ctl_json(cl, i, "status")["drain"]["messages"] for i in stays}  # records naming node i
        ok = sum(files.values()) == REPLICAS * delivered and files == named
        return {
            "inflight": inflight, "base_rate": base["per_second"], "base_p99": base["p99_ms"],
            "delivered": delivered, "repair_s": repair_s, "copies": copies, "bytes": nbytes, "failed": failed,
            "during_rate": during["ok"] / during["seconds"] if during["seconds"] else 0.0,
            "during_ok": int(during["ok"]), "during_tempfail": int(during["tempfail"]), "capped": during["capped"],
            "during_p99": max(during["p99"]) if during["p99"] else 0.0,
            "after_rate": after["per_second"], "after_p99": after["p99_ms"],
            "files": files, "named": named, "files_ok": ok, "held": held,
            "per_node": {i: {k: status[i]["repair"][k] - before[i].get(k, 0) if k in ("copies", "bytes", "passes")
                             else status[i]["repair"][k] for k in ("copies", "bytes", "passes", "pending", "inflight")}
                         for i in stays},
        }
    finally:
        cl.stop()
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--subnet", type=int, default=34)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--size", type=int, default=20 * 1024)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--inflight", default="8,2,32", help="repair_inflight of each run, comma-separated")
    ap.add_argument("--timeout", type=int, default=240, help="seconds a repair may take before the run fails")
    ap.add_argument("--quick", action="store_true", help="a few messages, two runs, to show it runs (CI)")
    o = ap.parse_args()

    def on_sigterm(signum, frame):  # a ctest timeout: the run's `finally` stops its cluster
        raise KeyboardInterrupt("SIGTERM")
    signal.signal(signal.SIGTERM, on_sigterm)
    if o.quick:
        o.messages, o.size, o.connections, o.inflight, o.timeout = 200, 8 * 1024, 4, "8,32", 90
    build = os.path.abspath(o.build)
    runs = [int(x) for x in o.inflight.split(",") if x.strip()]
    print("repair of a lost node: %d nodes, R=%d, node %d lost after %d messages of %d bytes; "
          "delivery load %d connections; machine: %s, %d cores"
          % (NODES, REPLICAS, LOST, o.messages, o.size, o.connections, os.uname().nodename, os.cpu_count()),
          flush=True)
    results, bad = [], 0
    for inflight in runs:
        started = time.time()
        try:
            r = run(build, o.subnet, inflight, o)
        except (Failed, subprocess.TimeoutExpired, SystemExit) as e:
            print("repair_inflight=%d: FAILED: %s" % (inflight, e), flush=True)
            bad += 1
            continue
        r["run_s"] = time.time() - started
        results.append(r)
        print("repair_inflight=%d: node %d held %d messages; repaired %d copies (%.1f MB) in %.1f s: %.1f msg/s, %.2f MB/s; "
              "delivery %.1f msg/s baseline (4 nodes), %.1f msg/s during repair (%.2f of it), %.1f msg/s after "
              "(3 nodes; during/after %.2f), p99 %.1f / %.1f / %.1f ms; "
              "body files %s = %d (R x %d = %d)%s; run %.0f s"
              % (inflight, LOST, r["held"], r["copies"], r["bytes"] / 1e6, r["repair_s"], r["copies"] / r["repair_s"],
                 r["bytes"] / 1e6 / r["repair_s"], r["base_rate"], r["during_rate"],
                 r["during_rate"] / r["base_rate"], r["after_rate"], r["during_rate"] / r["after_rate"],
                 r["base_p99"], r["during_p99"], r["after_p99"],
                 "+".join(str(r["files"][i]) for i in sorted(r["files"])), sum(r["files"].values()),
                 r["delivered"], REPLICAS * r["delivered"], "" if r["files_ok"] else " WRONG", r["run_s"]),
              flush=True)
        print("  per node: " + json.dumps(r["per_node"]), flush=True)
        if r["capped"]:
            print("  (the load during the repair stopped at %d messages, before the repair ended)" % r["during_ok"])
        if r["files"] != r["named"]:
            print("  body files per node %s, messages naming each node %s" % (r["files"], r["named"]), flush=True)
        if not r["files_ok"] or r["copies"] < r["held"] or r["held"] <= 0:
            print("repair_inflight=%d: WRONG COUNTS (body files or copies made)" % inflight, flush=True)
            bad += 1
    if results:
        print()
        print("repair: copies made and their rate; delivery msg/s: before (4 nodes), during the repair and after "
              "it (3 nodes); ratio = during / before")
        print("%-10s %8s %9s %9s %8s %9s %9s %9s %7s" % ("inflight", "copies", "repair s", "msg/s", "MB/s",
                                                         "before", "during", "after", "ratio"))
        for r in results:
            print("%-10d %8d %9.1f %9.1f %8.2f %9.1f %9.1f %9.1f %7.2f" % (
                r["inflight"], r["copies"], r["repair_s"], r["copies"] / r["repair_s"], r["bytes"] / 1e6 / r["repair_s"],
                r["base_rate"], r["during_rate"], r["after_rate"], r["during_rate"] / r["base_rate"]))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
