#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Deliveries per second through the agents' local API: 1 node at R=1,
3 nodes at R=1 and 3 nodes at R=2, on loopback, with the disk's raw
fsync rate measured in the same run. Prints a table; asserts nothing about
speed.

  agent_bench.py --build BUILD [--messages N] [--size BYTES] [--connections C] [--quick]
"""
import argparse
import importlib.machinery
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
local = importlib.machinery.SourceFileLoader("porcupine_local", os.path.join(ROOT, "scripts", "porcupine-local")).load_module()


def run_setup(build, nodes, replicas, args, subnet):
    d = tempfile.mkdtemp(prefix="porcupine-bench-")
    cl = local.Cluster(d, build)
    try:
        cl.start(nodes, replicas, 2, subnet)
        deadline = time.time() + 30
        while not cl.converged():
            if time.time() > deadline:
                raise RuntimeError("cluster of %d did not form" % nodes)
            time.sleep(0.1)
        users = ["bench%d@example.org" % u for u in range(10)]
        for u in users:
            r = cl.ctl(1, ["user", "add", u, "--password", "x"], capture=True)
            if r.returncode != 0:
                raise RuntimeError("user add: " + r.stderr)
        argv = [os.path.join(build, "tests", "bench", "deliver_bench"), "--messages", str(args.messages),
                "--size", str(args.size), "--connections", str(args.connections)]
        for i in range(1, nodes + 1):
            argv += ["--socket", os.path.join(cl.ndir(i), "agent.sock")]
        for u in users:
            argv += ["--users", u]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=600)
        figures = dict(re.findall(r"(\w+)=([\d.]+)", out.stdout))
        if out.returncode != 0 or "per_second" not in figures:
            raise RuntimeError("deliver_bench failed: " + out.stdout + out.stderr)
        fs = subprocess.run([os.path.join(build, "tests", "bench", "fsync_rate"), d, "300"], capture_output=True, text=True)
        figures["fsync"] = re.findall(r"=(\d+)", fs.stdout)[0]
        return figures
    finally:
        cl.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="a few messages, to show it runs (CI)")
    args = ap.parse_args()
    if args.quick:
        args.messages, args.connections = 40, 4
    build = os.path.abspath(args.build)
    print("deliveries through the local API: %d messages of %d bytes, %d connections; machine: %s, %d cores"
          % (args.messages, args.size, args.connections, os.uname().nodename, os.cpu_count()))
    print("%-16s %10s %9s %9s %9s %12s" % ("setup", "msg/s", "p50 ms", "p99 ms", "ratio", "raw fsync/s"))
    base = None
    for name, nodes, replicas, subnet in (("1 node, R=1", 1, 1, 31), ("3 nodes, R=1", 3, 1, 32),
                                          ("3 nodes, R=2", 3, 2, 33)):
        f = run_setup(build, nodes, replicas, args, subnet)
        rate = float(f["per_second"])
        if int(f["ok"]) <= 0 or rate <= 0:
            print("no delivery succeeded in setup " + name, file=sys.stderr)
            return 1
        base = base or rate
        print("%-16s %10.1f %9.2f %9.2f %9.2f %12s" % (name, rate, float(f["p50_ms"]), float(f["p99_ms"]),
                                                      rate / base, f["fsync"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
