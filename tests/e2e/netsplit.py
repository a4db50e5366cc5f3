# SPDX-License-Identifier: MIT
"""Network splits between the nodes of a cluster on one machine.

enter_namespace() runs the calling script again in a network namespace of
its own (unshare --net): its own loopback, so the rules it adds reach
nothing of the host's. Links cuts links between nodes with iptables DROP
rules on source and destination address, which tell nodes apart because
every connection a node makes leaves from its own address (the agent's
source_address; Postfix's smtp_bind_address and lmtp_bind_address).
"""
import os
import subprocess
import sys
import threading
import time

CHAIN = "PORCUPINE-SPLIT"


def in_namespace():
    return os.environ.get("PORCUPINE_NETNS") == "1"


def enter_namespace():
    """Runs this script again (same arguments) in a new network namespace
    with its loopback up; returns in the namespace. Needs root."""
    if in_namespace():
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        return
    env = dict(os.environ, PORCUPINE_NETNS="1")
    os.execvpe("unshare", ["unshare", "--net", "--", sys.executable] + sys.argv, env)


def iptables(*args, check=True):
    r = subprocess.run(["iptables", "-w"] + list(args), capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError("iptables %s: %s" % (" ".join(args), r.stderr.strip()))
    return r


class Links:
    """Cuts between nodes, named by number; addr(i) is node i's address."""

    def __init__(self, addr):
        if not in_namespace():
            raise RuntimeError("Links: only in a namespace of this script's own (enter_namespace)")
        self.addr = addr
        self.cuts = set()
        self.lock = threading.Lock()
        iptables("-N", CHAIN, check=False)
        iptables("-F", CHAIN)
        if iptables("-C", "INPUT", "-j", CHAIN, check=False).returncode != 0:
            iptables("-I", "INPUT", "-j", CHAIN)

    def cut(self, a, b, one_way=False):
        """a and b no longer hear each other; one_way: only a's packets to b are dropped."""
        with self.lock:
            for x, y in [(a, b)] + ([] if one_way else [(b, a)]):
                if (x, y) not in self.cuts:
                    iptables("-A", CHAIN, "-s", self.addr(x), "-d", self.addr(y), "-j", "DROP")
                    self.cuts.add((x, y))

    def cut_off(self, side_a, side_b):
        """No node of side_a hears any of side_b, nor the reverse."""
        for a in side_a:
            for b in side_b:
                self.cut(a, b)

    def heal(self):
        with self.lock:
            iptables("-F", CHAIN)
            self.cuts.clear()

    def flap(self, a, b, period_s, for_s):
        """The link cut for half of every period, for for_s seconds, in a
        thread; returns it (join it)."""
        def run():
            end = time.time() + for_s
            while time.time() < end:
                self.cut(a, b)
                time.sleep(period_s / 2)
                self.heal()
                time.sleep(period_s / 2)
        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t
