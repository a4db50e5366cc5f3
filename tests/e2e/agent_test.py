#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""End-to-end tests of porcupine-agent: real agents and real redis-servers
on loopback (127.0.K.i), driven with porcupinectl and raw sockets.

Usage: agent_test.py --build BUILD_DIR [--subnet K] [unittest args]
Each test starts its own cluster under a fresh directory and stops every
process it started, by PID. Figures (reconfiguration times) are printed,
never asserted.
"""
import importlib.machinery
import grp
import json
import re
import os
import random
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
import unittest
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
local = importlib.machinery.SourceFileLoader("porcupine_local", os.path.join(ROOT, "scripts", "porcupine-local")).load_module()

BUILD = os.path.join(ROOT, "build")
SUBNET = 21


def message(n, size=300):
    body = ("Subject: message %d\r\nMessage-Id: <m%d@test>\r\n\r\n" % (n, n)).encode()
    filler = (b"line of message %d " % n) * (size // 20 + 1)
    return body + filler[:size] + b"\r\n"


class ClusterCase(unittest.TestCase):
    nodes = 3
    replicas = 2
    extra_config = {}  # porcupine.conf lines for every node

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="porcupine-e2e-")
        self.cl = local.Cluster(self.dir, BUILD)
        self.cl.start(self.nodes, self.replicas, 2, SUBNET, extra_config=self.extra_config)
        self.assertTrue(self.wait_converged(30), "cluster did not form")

    def tearDown(self):
        self.cl.stop()

    # ---- helpers ---------------------------------------------------------
    def wait_converged(self, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.cl.converged():
                return True
            time.sleep(0.1)
        return False

    def ctl(self, i, *args, stdin=None, check=True, timeout_ms=15000):
        import subprocess
        argv = [self.cl.ctl_bin(), "--socket", os.path.join(self.cl.ndir(i), "agent.sock"), "--timeout", str(timeout_ms)]
        r = subprocess.run(argv + list(args), input=stdin, capture_output=True)
        if check:
            self.assertEqual(r.returncode, 0, "porcupinectl %s on node %d: %s" % (" ".join(args), i, r.stderr.decode()))
        return r

    def ctl_json(self, i, *args):
        return json.loads(self.ctl(i, "--json", *args).stdout)

    def deliver(self, i, rcpt, data):
        r = self.ctl(i, "--json", "mail", "deliver", rcpt, stdin=data, check=False)
        if r.returncode != 0:
            return None
        return json.loads(r.stdout)[0]

    def add_user(self, i, user, password="pw"):
        self.ctl(i, "user", "add", user, "--password", password)

    def start_node_with_the_wrong_secret(self, i):
        """Node i, with this cluster's configuration but another secret."""
        d = os.path.join(self.dir, "n%d" % i)
        os.makedirs(os.path.join(d, "redis"))
        os.makedirs(os.path.join(d, "spool"))
        with open(os.path.join(self.dir, "secret-wrong"), "w") as f:
            f.write("this is not the cluster secret\n")
        self.cl.state["nodes"].append(i)
        self.cl.write_config(i, [1, 2, i])
        conf = os.path.join(d, "porcupine.conf")
        with open(conf) as f:
            text = f.read().replace(os.path.join(self.dir, "secret"), os.path.join(self.dir, "secret-wrong"))
        with open(conf, "w") as f:
            f.write(text)
        self.cl.start_redis(i)
        self.cl.start_agent(i)

    def log_of(self, i):
        with open(os.path.join(self.cl.ndir(i), "agent.log"), errors="replace") as f:
            return f.read()


class Formation(ClusterCase):
    nodes = 4

    def test_every_node_shows_the_same_epoch_members_and_map(self):
        views = [self.ctl_json(i, "status") for i in range(1, self.nodes + 1)]
        for v in views:
            self.assertTrue(v["in_group"])
            self.assertEqual(v["epoch"], views[0]["epoch"])
            self.assertEqual(v["map_digest"], views[0]["map_digest"])
            self.assertEqual(sorted(m["id"] for m in v["members"]), list(range(1, self.nodes + 1)))
            self.assertEqual(sum(m["buckets"] for m in v["members"]), v["buckets"])
            self.assertTrue(all(m["connected"] for m in v["members"]))

    def test_each_node_connects_to_its_peers_from_its_own_address(self):
        # So that a firewall rule (or a test's cut) can tell nodes apart.
        import subprocess
        out = subprocess.run(["ss", "-Htn", "state", "established"], capture_output=True, text=True, check=True).stdout
        prefix = "127.0.%d." % SUBNET
        links = set()
        for line in out.splitlines():
            fields = line.split()
            local_addr, peer = fields[-2], fields[-1]
            if peer.startswith(prefix) and peer.endswith(":%d" % local.PORT):
                self.assertTrue(local_addr.startswith(prefix), "a connection to %s leaves from %s" % (peer, local_addr))
                links.add((local_addr.rsplit(":", 1)[0], peer.rsplit(":", 1)[0]))
        # Every node reaches every other (one side dials each pair).
        pairs = {frozenset(p) for p in links if p[0] != p[1]}
        self.assertEqual(len(pairs), self.nodes * (self.nodes - 1) // 2, sorted(links))


class MailAcrossNodes(ClusterCase):
    def test_deliver_on_one_node_list_and_fetch_on_another(self):
        self.add_user(1, "ann@example.org")
        sent = {}
        for n in range(12):
            data = message(n, 200 + 97 * n)
            d = self.deliver(1 + n % 3, "ann@example.org", data)
            self.assertIsNotNone(d)
            self.assertEqual(d["code"], "OK")
            sent[d["uid"]] = data
        listings = [self.ctl_json(i, "mail", "list", "ann@example.org") for i in (1, 2, 3)]
        for l in listings:
            self.assertEqual(l["uidvalidity"], listings[0]["uidvalidity"])
            self.assertEqual(sorted(m["uid"] for m in l["messages"]), sorted(sent))
        for m in listings[2]["messages"]:
            self.assertEqual(m["size"], len(sent[m["uid"]]))
        for uid, data in sent.items():
            self.assertEqual(self.ctl(3, "mail", "fetch", "ann@example.org", str(uid)).stdout, data)

    def test_a_large_message_streams_through_every_node_without_being_held_whole(self):
        """30 MiB at R=2: the accepting agent stages it in its spool as it
        arrives, the replicas receive it in chunk frames; no agent's peak
        memory grows by anything near the message's size before it is read."""
        self.add_user(1, "big@example.org")
        size = 30 << 20
        data = message(7, 300) + os.urandom(size // 2).hex().encode()[:size]

        def peak(i):
            with open("/proc/%d/status" % self.cl.pid(i, "agent")) as f:
                return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) * 1024
        before = {i: peak(i) for i in (1, 2, 3)}
        r = self.ctl(1, "--json", "mail", "deliver", "big@example.org", stdin=data, check=False)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        d = json.loads(r.stdout)[0]
        self.assertEqual(d["code"], "OK")
        listed = self.ctl_json(2, "mail", "list", "big@example.org")["messages"]
        self.assertEqual([m["size"] for m in listed], [len(data)])
        replicas = listed[0]["replicas"]
        self.assertEqual(len(replicas), 2)
        time.sleep(1)  # the push to the second replica
        with open("/proc/%d/maps" % self.cl.pid(1, "agent")) as f:
            sanitized = "libasan" in f.read()  # ASan's quarantine keeps freed chunks: peaks mean nothing there
        for i in (1, 2, 3):
            grew = peak(i) - before[i]
            if not sanitized:
                self.assertLess(grew, size // 3, "agent %d grew by %d bytes for a %d-byte message" % (i, grew, size))
        for i in replicas:
            origin, seq = d["id"].split(":")
            path = os.path.join(self.cl.ndir(i), "spool", "msg", origin, seq)
            with open(path, "rb") as f:
                self.assertEqual(f.read(), data, "node %d's copy" % i)
            self.assertEqual(os.listdir(os.path.join(self.cl.ndir(i), "spool", "incoming")), [])
        # Read back on every node: the one without a copy gets it from a
        # replica as a body transfer.
        for i in (1, 2, 3):
            self.assertEqual(self.ctl(i, "mail", "fetch", "big@example.org", str(d["uid"])).stdout, data,
                             "fetched on node %d" % i)

    def test_folders_create_move_rename_delete_seen_from_every_node(self):
        self.add_user(1, "fay@example.org")
        self.ctl(1, "folder", "create", "fay@example.org", "Projects")
        r = self.ctl(2, "folder", "create", "fay@example.org", "Projects", check=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"EXISTS", r.stderr)
        for n in range(4):
            self.assertEqual(self.deliver(1 + n % 3, "fay@example.org", message(n))["code"], "OK")
        self.ctl(2, "mail", "move", "fay@example.org", "2", "Projects")
        deadline = time.time() + 15
        while time.time() < deadline:
            moved = self.ctl_json(3, "mail", "list", "fay@example.org", "--folder", "Projects")
            if len(moved["messages"]) == 1:
                break
            time.sleep(0.2)
        self.assertEqual(len(moved["messages"]), 1, "the moved message did not get a UID in Projects")
        self.assertEqual(self.ctl(1, "mail", "fetch", "fay@example.org", str(moved["messages"][0]["uid"]),
                                  "--folder", "Projects").stdout, message(1))
        self.assertEqual(len(self.ctl_json(1, "mail", "list", "fay@example.org")["messages"]), 3)
        self.ctl(3, "folder", "rename", "fay@example.org", "Projects", "Archive")
        self.assertEqual(self.ctl_json(1, "folder", "list", "fay@example.org"), ["INBOX", "Archive"])
        deadline = time.time() + 15
        while time.time() < deadline:
            if len(self.ctl_json(2, "mail", "list", "fay@example.org", "--folder", "Archive")["messages"]) == 1:
                break
            time.sleep(0.2)
        self.assertEqual(len(self.ctl_json(2, "mail", "list", "fay@example.org", "--folder", "Archive")["messages"]), 1)
        self.ctl(1, "folder", "delete", "fay@example.org", "Archive")
        self.assertEqual(self.ctl_json(3, "folder", "list", "fay@example.org"), ["INBOX"])
        r = self.ctl(1, "folder", "delete", "fay@example.org", "INBOX", check=False)
        self.assertEqual(r.returncode, 1)

    def test_unknown_user_and_bad_password(self):
        self.add_user(2, "bob@example.org", "right")
        self.assertEqual(self.ctl(1, "user", "auth", "bob@example.org", "--password", "right").returncode, 0)
        r = self.ctl(3, "user", "auth", "bob@example.org", "--password", "wrong", check=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn(b"AUTH_FAILED", r.stderr)
        d = self.deliver(1, "nobody@example.org", message(1))
        self.assertIsNone(d)
        r = self.ctl(1, "mail", "deliver", "nobody@example.org", stdin=message(1), check=False)
        self.assertIn(b"NO_SUCH_USER", r.stdout + r.stderr)

    def test_quota_counts_mail_on_every_node_and_refuses_delivery_over_it(self):
        user = "quinn@example.org"
        self.add_user(1, user)
        data = message(1, size=1000)
        for i in (1, 2, 3):
            self.assertIsNotNone(self.deliver(i, user, data))
        shown = self.ctl_json(2, "user", "show", user)
        self.assertEqual(shown["used_bytes"], 3 * len(data))
        self.ctl(3, "user", "quota", user, str(4 * len(data)))
        self.assertEqual(self.ctl_json(1, "user", "show", user)["quota_bytes"], 4 * len(data))
        self.assertIsNotNone(self.deliver(2, user, data))  # exactly at the quota
        r = self.ctl(1, "mail", "deliver", user, stdin=data, check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(b"OVER_QUOTA", r.stdout + r.stderr)
        self.assertEqual(self.ctl_json(3, "user", "show", user)["used_bytes"], 4 * len(data))
        self.assertEqual(len(self.ctl_json(3, "mail", "list", user)["messages"]), 4)


class Crash(ClusterCase):
    def test_kill9_agent_others_reconfigure_mail_stays_readable_and_it_rejoins(self):
        self.add_user(1, "cat@example.org")
        sent = {}
        for n in range(10):
            d = self.deliver(1 + n % 3, "cat@example.org", message(n))
            sent[d["uid"]] = message(n)
        before = self.ctl_json(1, "mail", "list", "cat@example.org")
        t0 = time.time()
        self.cl.kill(2, redis=False)
        self.assertTrue(self.wait_converged(20), "survivors did not reconfigure")
        print("\nreconfiguration after kill -9 of node 2: %.2f s" % (time.time() - t0), file=sys.stderr)
        # Every message is readable through the survivors (R=2).
        for uid, data in sent.items():
            self.assertEqual(self.ctl(3, "mail", "fetch", "cat@example.org", str(uid)).stdout, data)
        d = self.deliver(1, "cat@example.org", message(99))
        self.assertEqual(d["code"], "OK")
        t0 = time.time()
        self.cl.restart(2)
        self.assertTrue(self.wait_converged(30), "node 2 did not rejoin")
        print("rejoin after restart of node 2: %.2f s" % (time.time() - t0), file=sys.stderr)
        deadline = time.time() + 20
        while time.time() < deadline:
            views = [self.ctl_json(i, "status") for i in (1, 2, 3)]
            if all(v["replication_backlog"] == 0 for v in views):
                break
            time.sleep(0.2)
        self.assertTrue(all(v["replication_backlog"] == 0 for v in views), "replicas did not converge")
        after = self.ctl_json(2, "mail", "list", "cat@example.org")
        self.assertEqual(len(after["messages"]), 11)
        # UIDs never move backwards for a client that saw the old listing
        # unless UIDVALIDITY changed (a manager crash may change it).
        if after["uidvalidity"] == before["uidvalidity"]:
            old = {m["id"]: m["uid"] for m in before["messages"]}
            for m in after["messages"]:
                if m["id"] in old:
                    self.assertEqual(m["uid"], old[m["id"]])

    def test_a_killed_agent_is_taken_out_as_its_address_refuses_a_frozen_one_after_its_silence(self):
        members = lambda i: sorted(m["id"] for m in self.ctl_json(i, "status")["members"])
        # Killed: its peers' connections close, their next dial is refused,
        # and a round runs at once (not after probe_timeout of silence).
        self.cl.kill(2, redis=False)
        self.assertTrue(self.wait_converged(20), "survivors did not reconfigure")
        self.assertEqual(members(1), [1, 3])
        logs = self.log_of(1) + self.log_of(3)
        self.assertRegex(logs, r"coordinating epoch \S+ \(node 2 refuses connections\)")
        self.assertNotIn("successor 2 silent", logs)
        self.cl.restart(2)
        self.assertTrue(self.wait_converged(30), "node 2 did not rejoin")
        # Frozen (SIGSTOP): its connections stay open and nothing refuses;
        # only silence shows it.
        pid = self.cl.pid(3, "agent")
        os.kill(pid, signal.SIGSTOP)
        try:
            deadline = time.time() + 20
            while time.time() < deadline and members(1) != [1, 2]:
                time.sleep(0.2)
            self.assertEqual(members(1), [1, 2])
            logs = self.log_of(1) + self.log_of(2)
            self.assertIn("successor 3 silent", logs)
            self.assertNotIn("node 3 refuses", logs)
        finally:
            os.kill(pid, signal.SIGCONT)
        self.assertTrue(self.wait_converged(30), "node 3 did not come back")

    def test_kill9_agent_and_redis_mid_stream_loses_nothing_acknowledged(self):
        self.add_user(1, "dan@example.org")
        acked, failed, stop = {}, [], threading.Event()

        def stream():
            n = 0
            while not stop.is_set() and n < 400:
                data = message(1000 + n, 500)
                d = self.deliver(2, "dan@example.org", data)
                if d and d["code"] == "OK":
                    acked[d["id"]] = data
                else:
                    failed.append(data)
                    time.sleep(0.05)
                n += 1

        t = threading.Thread(target=stream)
        t.start()
        time.sleep(1.5)
        self.cl.kill(2, redis=True)
        time.sleep(0.5)
        self.cl.restart(2)
        time.sleep(1.0)
        stop.set()
        t.join(60)
        self.assertTrue(self.wait_converged(30))
        self.assertGreater(len(acked), 5)
        time.sleep(2)
        listing = self.ctl_json(3, "mail", "list", "dan@example.org")
        present = {m["id"]: m for m in listing["messages"]}
        for mid in acked:
            self.assertIn(mid, present, "acknowledged message %s lost" % mid)
        # Nothing half-present: every listed message reads back whole.
        bodies = set(acked.values()) | set(failed)
        for m in listing["messages"]:
            body = self.ctl(1, "mail", "fetch", "dan@example.org", str(m["uid"])).stdout
            self.assertIn(body, bodies)
        extra = len(present) - len(acked)
        print("\nstream: %d acknowledged, %d failed, %d of the failed present in full"
              % (len(acked), len(failed), extra), file=sys.stderr)


class Durability(ClusterCase):
    def body_files(self, i):
        spool = os.path.join(self.cl.ndir(i), "spool", "msg")
        return {os.path.join(top, f) for top, _, files in os.walk(spool) for f in files}

    def test_a_cut_redis_file_deletes_no_body_and_the_peers_give_everything_back(self):
        users = ["ida@example.org", "jon@example.org", "kim@example.org"]
        for u in users:
            self.add_user(1, u)
        sent = {}  # (user, id) -> bytes
        for n in range(60):
            u = users[n % 3]
            d = self.deliver(1 + n % 3, u, message(n, 2000))
            self.assertIsNotNone(d)
            self.assertEqual(d["code"], "OK")
            sent[(u, d["id"])] = message(n, 2000)
            if n % 5 == 0:
                self.ctl(1 + n % 3, "mail", "flags", u, str(d["uid"]), "seen,flagged")
        self.assertTrue(self.wait_backlogs_drain(30))
        # Node 2 down (agent and Redis, kill -9), its append-only file cut in half.
        victim = 2
        before = self.body_files(victim)
        self.assertGreater(len(before), 20)
        self.cl.kill(victim, redis=True)
        aof_dir = os.path.join(self.cl.ndir(victim), "redis", "appendonlydir")
        aof = max((os.path.join(aof_dir, f) for f in os.listdir(aof_dir) if ".aof" in f and "manifest" not in f),
                  key=os.path.getsize)
        size = os.path.getsize(aof)
        with open(aof, "r+b") as f:
            f.truncate(size // 2)
        self.cl.restart(victim)
        self.assertTrue(self.wait_converged(30), "node 2 did not rejoin")
        # No body is deleted to make the index agree, and the node says so.
        self.assertTrue(before <= self.body_files(victim), "bodies deleted: %s" % sorted(before - self.body_files(victim))[:5])
        log = self.log_of(victim)
        self.assertIn("error: store: the index and the spool disagree", log)
        status = self.ctl_json(victim, "status")
        self.assertRegex(status["store_damage"], r"^[1-9][0-9]* bodies named by no record")
        # The peers give back what it lost; it claims its own bodies.
        deadline = time.time() + 60
        while time.time() < deadline:
            status = self.ctl_json(victim, "status")
            if status["unindexed_bodies"] == 0 and status["sync"]["bodies_pending"] == 0:
                break
            time.sleep(0.3)
        self.assertEqual(status["unindexed_bodies"], 0, status)
        self.assertGreater(status["sync"]["users_pulled"], 0, status)
        self.assertEqual(before, self.body_files(victim))
        # Every acknowledged message is read, whole, with any one other node down.
        for down in (1, 3):
            self.cl.kill(down, redis=False)
            self.assertTrue(self.wait_converged(30), "no group without node %d" % down)
            via = 3 if down == 1 else 1
            for u in users:
                listed = {m["id"]: m for m in self.ctl_json(via, "mail", "list", u)["messages"]}
                mine = {mid: data for (user, mid), data in sent.items() if user == u}
                self.assertEqual(set(listed), set(mine), "%s with node %d down" % (u, down))
                for mid, data in mine.items():
                    self.assertEqual(self.ctl(via, "mail", "fetch", u, str(listed[mid]["uid"])).stdout, data)
            self.cl.restart(down)
            self.assertTrue(self.wait_converged(30), "node %d did not rejoin" % down)

    def wait_backlogs_drain(self, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if all(self.ctl_json(i, "status")["replication_backlog"] == 0 for i in (1, 2, 3)):
                return True
            time.sleep(0.2)
        return False


class Repair(ClusterCase):
    """A node lost for good (its spool and Redis gone), forgotten by the
    operator: the others make a new copy of everything it held, and a
    second crash after loses nothing."""
    nodes = 4

    def body_files(self, i):
        spool = os.path.join(self.cl.ndir(i), "spool", "msg")
        return {"%s:%s" % (os.path.basename(top), f) for top, _, files in os.walk(spool) for f in files
                if not f.endswith(".tmp")}

    def statuses(self, nodes):
        return {i: self.ctl_json(i, "status") for i in nodes}

    def wait_repaired(self, nodes, timeout):
        """Until every node has made two full passes over its records since
        now and found nothing left to copy."""
        start = {i: s["repair"]["passes"] for i, s in self.statuses(nodes).items()}
        deadline = time.time() + timeout
        while time.time() < deadline:
            st = self.statuses(nodes)
            if all(s["repair"]["passes"] >= start[i] + 2 and s["repair"]["pending"] == 0
                   and s["repair"]["inflight"] == 0 and s["replication_backlog"] == 0 for i, s in st.items()):
                return st
            time.sleep(0.3)
        self.fail("repair did not finish: %s" % {i: (s["repair"], s["replication_backlog"])
                                                 for i, s in self.statuses(nodes).items()})

    def test_a_node_lost_for_good_is_forgotten_its_copies_made_again_and_a_second_crash_loses_nothing(self):
        users = ["%s@example.org" % n for n in ("lea", "max", "ned", "ola", "pia", "quy", "rob", "sue", "tom", "uma")]
        for u in users:
            self.add_user(1, u)
        sent = {}  # (user, id) -> bytes
        expunged = set()
        for n in range(100):
            u = users[n % len(users)]
            d = self.deliver(1 + n % 4, u, message(n, 3000))
            self.assertIsNotNone(d)
            self.assertEqual(d["code"], "OK")
            sent[(u, d["id"])] = message(n, 3000)
            if n % 7 == 0:
                self.ctl(1 + n % 4, "mail", "flags", u, str(d["uid"]), "seen,$Repaired")
            if n % 11 == 5:
                self.ctl(1 + n % 4, "mail", "expunge", u, str(d["uid"]))
                expunged.add((u, d["id"]))
        live = {k: v for k, v in sent.items() if k not in expunged}
        victim = 4
        held = {mid for (u, mid) in live if mid in self.body_files(victim)}
        self.assertGreater(len(held), 10, "node 4 holds too little for the test to mean anything")

        # Forgetting a live member is refused.
        r = self.ctl(1, "node", "forget", "2", check=False)
        self.assertEqual(r.returncode, 1, r)
        self.assertIn(b"live member", r.stderr)

        # Node 4's disk dies: agent and Redis killed, spool and Redis files gone.
        self.cl.kill(victim, redis=True)
        import shutil
        shutil.rmtree(os.path.join(self.cl.ndir(victim), "spool"))
        shutil.rmtree(os.path.join(self.cl.ndir(victim), "redis"))
        self.assertTrue(self.wait_converged(30), "no group of the three others")
        self.ctl(2, "node", "forget", str(victim))
        st = self.wait_repaired((1, 2, 3), 90)
        for i, s in st.items():
            self.assertIn({"node": victim, "state": "gone"},
                          [{"node": a["node"], "state": a["state"]} for a in s["admin"]], "node %d" % i)
            self.assertNotIn(victim, s["known_not_members"], "node %d still waits for the forgotten node" % i)
        copies = sum(s["repair"]["copies"] for s in st.values())
        self.assertGreaterEqual(copies, len(held))
        # The metrics say the same (refreshed each second).
        deadline = time.time() + 10
        while True:
            m = {i: Metrics.scrape(self, i) for i in (1, 2, 3)}
            got = (sum(Metrics.value(m[i], "porcupine_repair_copies_total") for i in m),
                   [Metrics.value(m[i], "porcupine_node_admin_state", node=str(victim)) for i in m],
                   sum(Metrics.value(m[i], "porcupine_repair_pending_messages") for i in m))
            if got == (copies, [2, 2, 2], 0) or time.time() > deadline:
                break
            time.sleep(0.3)
        self.assertEqual(got, (copies, [2, 2, 2], 0))

        # On disk: every live message has R = 2 bodies among the three.
        files = {i: self.body_files(i) for i in (1, 2, 3)}
        for (u, mid) in live:
            n = sum(1 for i in (1, 2, 3) if mid in files[i])
            self.assertEqual(n, 2, "%s of %s has %d copies on disk" % (mid, u, n))
        # The listing agrees: no replica list names the forgotten node.
        for u in users:
            for m in self.ctl_json(1, "mail", "list", u)["messages"]:
                self.assertNotIn(victim, m["replicas"], m)
                self.assertEqual(len(m["replicas"]), 2, m)
            info = self.ctl_json(1, "user", "show", u)
            self.assertNotIn(victim, info["profile_replicas"], info)
            self.assertEqual(len(info["profile_replicas"]), 2, info)

        # A second crash (kill -9): nothing acknowledged is lost.
        self.cl.kill(1, redis=False)
        self.assertTrue(self.wait_converged(30), "no group of nodes 2 and 3")
        for u in users:
            listed = {m["id"]: m for m in self.ctl_json(3, "mail", "list", u)["messages"]}
            mine = {mid: data for (user, mid), data in live.items() if user == u}
            self.assertEqual(set(listed), set(mine), u)
            for mid, data in mine.items():
                self.assertEqual(self.ctl(2, "mail", "fetch", u, str(listed[mid]["uid"])).stdout, data)
            self.assertEqual(self.ctl(2, "user", "auth", u, "--password", "pw").returncode, 0)


class Secure(ClusterCase):
    """Agents speak TLS 1.3 with a key from the cluster secret (the
    default, peer_security = tls)."""

    def relay(self, listen, to, stop, counter):
        """Accepts on `listen` and pipes each connection to `to`, byte for
        byte, until `stop` is set."""
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(listen)
        srv.listen(16)
        srv.settimeout(0.2)

        def pipe(a, b):
            try:
                while not stop.is_set():
                    try:
                        data = a.recv(65536)
                    except socket.timeout:
                        continue
                    if not data:
                        break
                    b.sendall(data)
            except OSError:
                pass
            finally:
                for s in (a, b):
                    try:
                        s.close()
                    except OSError:
                        pass

        try:
            while not stop.is_set():
                try:
                    c, _ = srv.accept()
                except socket.timeout:
                    continue
                try:
                    up = socket.create_connection(to, timeout=5)
                except OSError:
                    c.close()
                    continue
                counter[0] += 1
                for s in (c, up):
                    s.settimeout(0.2)
                threading.Thread(target=pipe, args=(c, up), daemon=True).start()
                threading.Thread(target=pipe, args=(up, c), daemon=True).start()
        finally:
            srv.close()

    def test_a_dial_relayed_to_another_node_goes_nowhere(self):
        """A process on a down node's address relays node 1's dials to node
        2: TLS completes (both hold the key) but node 2 sees it was not the
        node dialled and closes; node 1 never takes it for node 3."""
        self.cl.kill(3, redis=False)
        self.assertTrue(self.wait_converged(20))
        stop = threading.Event()
        relayed = [0]
        t = threading.Thread(target=self.relay, args=((self.cl.address(3), local.PORT),
                                                      (self.cl.address(2), local.PORT), stop, relayed))
        t.start()
        try:
            deadline = time.time() + 40
            while time.time() < deadline and "not this node" not in self.log_of(2):
                time.sleep(0.2)
        finally:
            stop.set()
            t.join(10)
        self.assertGreater(relayed[0], 0, "node 1 never dialled node 3's address")
        self.assertIn("n1 dialled n3, not this node (a relayed connection?)", self.log_of(2))
        killed_at = self.log_of(1).rfind("peer n3: connection closed")
        self.assertNotIn("peer n3: connected", self.log_of(1)[killed_at:])
        for i in (1, 2):
            self.assertEqual(sorted(m["id"] for m in self.ctl_json(i, "status")["members"]), [1, 2])

    def test_a_node_in_upgrade_mode_joins_a_tls_cluster(self):
        """Rolling upgrade, second step: node 3 still on peer_security =
        both (dials the old handshake, accepts either) while nodes 1 and 2
        are on tls: the TLS dials of 1 and 2 to 3 carry the cluster."""
        self.add_user(1, "ivy@example.org")
        self.cl.kill(3, redis=False)
        with open(os.path.join(self.cl.ndir(3), "porcupine.conf"), "a") as f:
            f.write("peer_security = both\n")
        self.cl.restart(3)
        self.assertTrue(self.wait_converged(30), "node 3 did not rejoin")
        d = self.deliver(3, "ivy@example.org", b"Subject: mixed\r\n\r\nx\r\n")
        self.assertEqual(d["code"], "OK")
        self.assertEqual(len(self.ctl_json(1, "mail", "list", "ivy@example.org")["messages"]), 1)

    def test_a_stranger_learns_nothing_and_a_wrong_secret_gets_nothing(self):
        # What an old agent's Hello gets from a TLS node: no id, no
        # address, no address book; at most a TLS alert.
        s = socket.create_connection((self.cl.address(1), local.PORT), timeout=5)
        hello = b"\x08\x01\x10\x09\x22\x20" + os.urandom(32)
        s.sendall(struct.pack(">I", len(hello)) + hello)
        got = b""
        try:
            while len(got) < 4096:
                chunk = s.recv(4096)
                if not chunk:
                    break
                got += chunk
        except (socket.timeout, ConnectionResetError):
            pass
        s.close()
        self.assertLess(len(got), 64, got)
        self.assertNotIn(self.cl.address(1).encode(), got)
        self.assertNotIn(self.cl.address(2).encode(), got)
        # A node with the wrong secret: the TLS handshake fails both ways.
        self.start_node_with_the_wrong_secret(9)
        time.sleep(4)
        self.assertIn("TLS handshake failed", self.log_of(1) + self.log_of(2))
        for i in (1, 2, 3):
            self.assertEqual(sorted(m["id"] for m in self.ctl_json(i, "status")["members"]), [1, 2, 3])


class Hostile(ClusterCase):
    nodes = 2
    # The frames tests below speak the old handshake (Python has no TLS-PSK
    # client before 3.13): these nodes accept it as during a rolling upgrade.
    extra_config = {"peer_security": "both"}

    def connect(self, i):
        s = socket.create_connection((self.cl.address(i), local.PORT), timeout=5)
        s.settimeout(5)
        return s

    def closed_by_peer(self, s):
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def test_stranger_with_the_wrong_secret_is_refused_and_logged(self):
        self.start_node_with_the_wrong_secret(9)
        time.sleep(4)
        self.assertIn("authentication failed", self.log_of(1) + self.log_of(2))
        for i in (1, 2):
            members = [m["id"] for m in self.ctl_json(i, "status")["members"]]
            self.assertEqual(sorted(members), [1, 2])

    def test_thousands_of_idle_strangers_do_not_stop_a_node(self):
        """2,000 connections to node 1's peer port that never say anything,
        from 50 addresses, opened again as the node closes them, for up to
        60 s: node 1 still delivers and answers, node 2 restarted gets back
        in through node 1's port, the strangers are closed after the
        handshake deadline, and the log is not flooded."""
        self.add_user(1, "sam@example.org")
        port = local.PORT
        sources = ["127.0.%d.%d" % (SUBNET, 100 + k) for k in range(50)]
        stop = threading.Event()
        opened = [0]
        closed_by_node = [0]

        def flood():
            held = []
            deadline = time.time() + 60
            while not stop.is_set() and time.time() < deadline:
                alive = []
                for c in held:
                    try:
                        if c.recv(1, socket.MSG_DONTWAIT) == b"":
                            closed_by_node[0] += 1
                            c.close()
                            continue
                    except BlockingIOError:
                        pass
                    except OSError:
                        closed_by_node[0] += 1
                        c.close()
                        continue
                    alive.append(c)
                held = alive
                k = 0
                while len(held) < 2000 and not stop.is_set():
                    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    c.bind((sources[k % len(sources)], 0))
                    k += 1
                    c.settimeout(2)
                    try:
                        c.connect((self.cl.address(1), port))
                    except OSError:
                        c.close()
                        continue
                    opened[0] += 1
                    held.append(c)
                time.sleep(0.2)
            for c in held:
                c.close()

        t = threading.Thread(target=flood)
        t.start()
        try:
            time.sleep(3)
            for n in range(5):
                d = self.deliver(1, "sam@example.org", b"Subject: under siege %d\r\n\r\nbody\r\n" % n)
                self.assertIsNotNone(d, "delivery %d through node 1 failed" % n)
                self.assertEqual(d["code"], "OK")
            self.cl.kill(2, redis=False)
            time.sleep(1)
            self.cl.restart(2)
            self.assertTrue(self.wait_converged(30), "node 2 did not get back in")
            self.assertEqual(self.deliver(2, "sam@example.org", b"Subject: back\r\n\r\nx\r\n")["code"], "OK")
            time.sleep(12)  # past the handshake deadline (10 s)
        finally:
            stop.set()
            t.join(30)
        self.assertGreaterEqual(opened[0], 2000)
        self.assertGreater(closed_by_node[0], 1000)  # refused at once, or closed at the deadline
        log = self.log_of(1)
        stranger = re.compile(r"peer 127\.0\.%d\.1\d\d" % SUBNET)
        stranger_lines = [line for line in log.splitlines() if stranger.search(line)]
        self.assertLess(len(stranger_lines), 400, "the log is flooded")
        self.assertIn("more lines about unauthenticated connections left out", log)
        listed = self.ctl_json(2, "mail", "list", "sam@example.org")["messages"]
        self.assertEqual(len(listed), 6)

    def test_protobufs_complaints_about_bad_strings_are_limited_in_the_log(self):
        """A proto3 string that is not UTF-8 makes protobuf complain; 40 such
        requests put at most 10 of its lines in the log, not 40."""
        sock = os.path.join(self.cl.ndir(1), "agent.sock")
        before = self.log_of(1).count("UTF-8")
        for n in range(40):
            u = socket.socket(socket.AF_UNIX)
            u.settimeout(5)
            u.connect(sock)
            req = self.pb_field(1, n + 1) + self.pb_field(10, self.pb_field(1, b"\xff\xfe@example.org"))
            u.sendall(struct.pack(">I", len(req)) + req)
            self.assertTrue(self.closed_by_peer(u))
        time.sleep(0.5)
        complaints = self.log_of(1).count("UTF-8") - before
        self.assertGreater(complaints, 0, "protobuf said nothing: the test does not reach it")
        self.assertLessEqual(complaints, 10)
        self.add_user(1, "utf@example.org")  # and the node still serves

    def test_porcupinectl_answers_a_usage_error_for_a_number_that_is_not_one(self):
        self.add_user(1, "num@example.org")
        for args, what in ((("user", "quota", "num@example.org", "lots"), b"BYTES must be a number"),
                           (("user", "quota", "num@example.org", "1e3"), b"BYTES must be a number"),
                           (("mail", "fetch", "num@example.org", "1x"), b"UID must be a number")):
            r = self.ctl(1, *args, check=False)
            self.assertEqual(r.returncode, 2, (args, r.stderr))
            self.assertIn(what, r.stderr)

    def test_password_guessing_is_limited_per_user(self):
        """auth_failures_per_user (10) wrong passwords, then even the right
        one gets "try later" without a check; other users are not held up."""
        self.add_user(1, "gus@example.org", "right-pw")
        self.add_user(1, "hal@example.org", "hal-pw")
        for n in range(10):
            r = self.ctl(2, "user", "auth", "gus@example.org", "--password", "guess-%d" % n, check=False)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn(b"AUTH_FAILED", r.stderr, n)
        r = self.ctl(2, "user", "auth", "gus@example.org", "--password", "right-pw", check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(b"too many failed logins", r.stderr)
        self.assertIn("gus@example.org: too many failed logins", self.log_of(2))
        self.ctl(2, "user", "auth", "hal@example.org", "--password", "hal-pw")
        # The budget is each node's own: node 1 checks gus as before.
        self.ctl(1, "user", "auth", "gus@example.org", "--password", "right-pw")

    def test_the_local_api_checks_who_asks(self):
        """Root administers users; another local account cannot connect to a
        socket not opened to it; one that can connect (Dovecot's and
        Postfix's users) gets mail operations but not user administration;
        nobody is ever sent a password hash."""
        sock = os.path.join(self.cl.ndir(1), "agent.sock")
        self.add_user(1, "una@example.org", "secret-pw")

        def as_nobody(*args, stdin=None, groups="--clear-groups"):
            import subprocess
            argv = ["setpriv", "--reuid=65534", "--regid=65534", groups, self.cl.ctl_bin(),
                    "--socket", sock, "--timeout", "15000"] + list(args)
            return subprocess.run(argv, input=stdin, capture_output=True)

        r = as_nobody("user", "show", "una@example.org")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(b"ermission denied", r.stderr)
        # In local_socket_group (mail), as Dovecot's mail processes are.
        in_group = "--groups=%d" % grp.getgrnam("mail").gr_gid
        r = as_nobody("--json", "user", "show", "una@example.org", groups=in_group)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["user"], "una@example.org")
        r = as_nobody("--json", "mail", "deliver", "una@example.org", stdin=b"Subject: hi\r\n\r\nx\r\n",
                      groups=in_group)
        self.assertEqual(r.returncode, 0, r.stderr)
        for args in (("user", "add", "mallory@example.org", "--password", "x"),
                     ("user", "passwd", "una@example.org", "--password", "stolen"),
                     ("user", "quota", "una@example.org", "1"),
                     ("user", "list")):
            r = as_nobody(*args, groups=in_group)
            self.assertNotEqual(r.returncode, 0, args)
            self.assertIn(b"FORBIDDEN", r.stderr, args)
        self.assertEqual(self.ctl(1, "user", "auth", "una@example.org", "--password", "secret-pw").returncode, 0)
        self.assertNotEqual(self.ctl(1, "user", "show", "mallory@example.org", check=False).returncode, 0)
        # UserGet, raw, as root: the profile without its hash.
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(sock)
        req = self.pb_field(1, 7) + self.pb_field(10, self.pb_field(1, b"una@example.org"))
        s.sendall(struct.pack(">I", len(req)) + req)
        answer = self.read_frame(s)
        s.close()
        self.assertIn(b"una@example.org", answer)
        self.assertNotIn(b"CRYPT", answer)
        self.assertNotIn(b"{", answer)

    def test_a_request_with_a_deadline_gets_tempfail_when_the_cluster_is_slow(self):
        users = ["u%d@example.org" % n for n in range(8)]
        for u in users:
            self.add_user(1, u)
        pid = self.cl.pid(2, "agent")
        os.kill(pid, signal.SIGSTOP)  # frozen, not yet suspected: its users' requests hang
        try:
            results = [self.ctl(1, "user", "show", u, check=False, timeout_ms=800) for u in users]
        finally:
            os.kill(pid, signal.SIGCONT)
        late = [r for r in results if r.returncode == 3]
        self.assertTrue(late, "no user managed by the frozen node among %s" % users)
        for r in late:
            self.assertIn(b"deadline of the request passed", r.stderr)
        self.assertTrue(any(r.returncode == 0 for r in results))  # node 1's own users answer
        self.assertTrue(self.wait_converged(20))
        self.assertEqual(self.ctl(1, "user", "show", users[0]).returncode, 0)

    def test_malformed_truncated_and_huge_frames_close_only_that_connection(self):
        s = self.connect(1)
        s.sendall(struct.pack(">I", 16) + b"\xff" * 16)  # not a Hello
        self.assertTrue(self.closed_by_peer(s))
        s = self.connect(1)
        s.sendall(struct.pack(">I", 1 << 30))  # 1 GiB length prefix
        self.assertTrue(self.closed_by_peer(s))
        with self.connect(1) as s:
            s.sendall(struct.pack(">I", 100) + b"abc")  # truncated, then gone
        s = self.connect(2)
        s.sendall(os.urandom(4096))
        self.assertTrue(self.closed_by_peer(s))
        # The local API too.
        u = socket.socket(socket.AF_UNIX)
        u.settimeout(5)
        u.connect(os.path.join(self.cl.ndir(1), "agent.sock"))
        u.sendall(struct.pack(">I", 8) + b"\x0a\xff\xff\xff\xff\xff\xff\xff")
        self.assertTrue(self.closed_by_peer(u))
        time.sleep(0.5)
        log = self.log_of(1)
        self.assertIn("malformed hello", log)
        self.assertIn("exceeds the limit", log)
        # Both nodes still serve and still see each other.
        self.add_user(1, "eve@example.org")
        self.assertEqual(self.deliver(2, "eve@example.org", message(1))["code"], "OK")
        self.assertTrue(self.cl.converged())

    # ---- an authenticated peer that misbehaves ---------------------------
    # Protobuf by hand (field numbers of porcupine.proto / agent.proto).
    @staticmethod
    def pb_varint(n):
        out = b""
        while True:
            b = n & 0x7F
            n >>= 7
            if n:
                out += bytes([b | 0x80])
            else:
                return out + bytes([b])

    def pb_field(self, num, value):
        if isinstance(value, int):
            return self.pb_varint(num << 3) + self.pb_varint(value)
        return self.pb_varint((num << 3) | 2) + self.pb_varint(len(value)) + value

    def read_frame(self, s):
        def exact(n):
            buf = b""
            while len(buf) < n:
                chunk = s.recv(n - len(buf))
                if not chunk:
                    raise ConnectionError("closed")
                buf += chunk
            return buf
        return exact(struct.unpack(">I", exact(4))[0])

    def authenticated_peer(self, i, claim=9):
        """A connection to node i that passes the handshake with the cluster
        secret, claiming node id `claim`; returns (socket, send_frame)."""
        import hashlib
        import hmac
        with open(os.path.join(self.cl.base, "secret"), "rb") as f:
            secret = f.read().rstrip(b"\n")
        s = self.connect(i)
        nonce = os.urandom(32)
        hello = (self.pb_field(1, 1) + self.pb_field(2, claim) + self.pb_field(3, b"127.0.0.1:9") +
                 self.pb_field(4, nonce) + self.pb_field(6, 1))
        s.sendall(struct.pack(">I", len(hello)) + hello)
        theirs = self.read_frame(s)
        peer_nonce = theirs[theirs.index(b"\x22\x20") + 2:][:32]  # field 4, 32 bytes
        tag = hmac.new(secret, b"I" + nonce + peer_nonce + struct.pack(">I", claim), hashlib.sha256).digest()
        proof = self.pb_field(1, tag)
        s.sendall(struct.pack(">I", len(proof)) + proof)
        self.read_frame(s)  # their proof
        session = hmac.new(secret, b"porcupine-session" + nonce + peer_nonce, hashlib.sha256).digest()
        seq = [0]

        def send_frame(body_field, body):
            env = self.pb_field(1, 1) + self.pb_field(2, claim) + self.pb_field(3, i) + self.pb_field(body_field, body)
            t = hmac.new(session, b"I" + struct.pack(">Q", seq[0]) + env, hashlib.sha256).digest()
            seq[0] += 1
            s.sendall(struct.pack(">I", len(t) + len(env)) + t + env)
        return s, send_frame

    def chunk(self, transfer, data, last):
        return self.pb_field(1, transfer) + self.pb_field(2, data) + (self.pb_field(3, 1) if last else b"")

    def test_a_frame_of_a_kind_this_build_does_not_know_is_dropped_not_fatal(self):
        """What a newer peer may send during a rolling upgrade: the frame
        goes, the connection stays (then a malformed one closes it)."""
        s, send = self.authenticated_peer(1)
        send(59, self.pb_field(1, 7))  # Envelope.body field 59: no such kind here
        s.settimeout(1.5)
        try:
            self.assertNotEqual(s.recv(1), b"", "the node closed the connection")
        except socket.timeout:
            pass
        self.assertIn("a message kind this build does not know?); dropped", self.log_of(1))
        send(26, b"\xff\xff")  # a Push that is not one
        self.assertTrue(self.closed_by_peer(s))

    def test_body_transfers_that_break_the_rules_close_only_that_connection(self):
        # A Store whose record names a transfer that never came.
        s, send = self.authenticated_peer(1)
        record = self.pb_field(5, 1) + self.pb_field(16, 10) + self.pb_field(30, 5)
        update = self.pb_field(2, 1) + self.pb_field(5, record)
        send(23, self.pb_field(1, 7) + self.pb_field(2, update))
        self.assertTrue(self.closed_by_peer(s))
        # Two transfers interleaved.
        s, send = self.authenticated_peer(1)
        send(60, self.chunk(1, b"x" * 1000, False))
        send(60, self.chunk(2, b"y" * 1000, False))
        self.assertTrue(self.closed_by_peer(s))
        # A transfer past message_size_limit (50 MiB by default).
        s, send = self.authenticated_peer(2)
        piece = b"z" * (4 << 20)
        try:
            for _ in range(14):
                send(60, self.chunk(3, piece, False))
        except OSError:
            pass  # closed while we were still sending
        self.assertTrue(self.closed_by_peer(s))
        time.sleep(0.5)
        self.assertIn("did not arrive whole", self.log_of(1))
        self.assertIn("body transfers out of order", self.log_of(1))
        self.assertIn("body transfer over the size limit", self.log_of(2))
        for i in (1, 2):  # nothing half-staged is left behind
            self.assertEqual(os.listdir(os.path.join(self.cl.ndir(i), "spool", "incoming")), [])
        # The nodes still serve and still see each other.
        self.add_user(1, "mal@example.org")
        self.assertEqual(self.deliver(2, "mal@example.org", message(1))["code"], "OK")
        self.assertTrue(self.wait_converged(20))


class FullDisk(ClusterCase):
    """Node 3's spool on a small tmpfs of its own that fills under load: once
    node 3 says it is full no copy is placed there, no peer connection is
    torn down, nothing acknowledged is lost; a body it cannot stage at all
    is refused alone; it takes copies again when the filesystem grows."""
    RESERVE = 4 << 20
    extra_config = {"spool_reserve_bytes": str(RESERVE)}
    USERS = ["fill%d@example.org" % k for k in range(12)]
    GRACE_MS = 1500  # every member hears of it within a second (Node::tick)

    def setUp(self):
        if os.geteuid() != 0:
            self.skipTest("mounting a tmpfs needs root")
        super().setUp()
        self.spool = os.path.join(self.cl.ndir(3), "spool")
        self.cl.stop_pid(3, "agent")
        import subprocess
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=10m,mode=0700", "tmpfs", self.spool], check=True)
        self.addCleanup(self.unmount)
        self.cl.start_agent(3)
        self.assertTrue(self.wait_converged(30), "cluster did not form again")
        self.mark = {i: len(self.log_of(i)) for i in (1, 2, 3)}

    def unmount(self):
        import subprocess
        self.cl.stop()  # nothing may hold the mount
        if subprocess.run(["umount", self.spool]).returncode != 0:
            subprocess.run(["umount", "-l", self.spool])

    def new_log(self, i):
        return self.log_of(i)[self.mark[i]:]

    def torn_down(self):
        """Peer connections closed (and opened again) since setUp, per node."""
        return {i: [l for l in self.new_log(i).splitlines()
                    if "connection closed" in l or re.search(r"peer n\d+: connected", l)] for i in (1, 2, 3)}

    def deliver_until_taken(self, via, user, data, tries=8):
        """As Postfix does: a temporary failure is tried again."""
        tempfails = 0
        for _ in range(tries):
            r = self.ctl(via, "--json", "mail", "deliver", user, stdin=data, check=False, timeout_ms=30000)
            try:
                d = json.loads(r.stdout)[0]
            except (ValueError, IndexError):
                d = None
            if d and d["code"] == "OK":
                return d, tempfails
            tempfails += 1
            time.sleep(0.3)
        return None, tempfails

    def sees_full(self, i, n):
        """Whether node i's status says node n is full."""
        return next(m for m in self.ctl_json(i, "status")["members"] if m["id"] == n)["full"]

    def listing(self, i=1):
        out = {}
        for u in self.USERS:
            for m in self.ctl_json(i, "mail", "list", u)["messages"]:
                out[m["id"]] = dict(m, user=u)
        return out

    def when_logged(self, i, text):
        """Epoch ms of the first line of node i's log (since setUp) with `text`."""
        import datetime
        for line in self.new_log(i).splitlines():
            if text in line:
                t = datetime.datetime.strptime(line.split()[0], "%Y-%m-%dT%H:%M:%S.%fZ")
                return t.replace(tzinfo=datetime.timezone.utc).timestamp() * 1000
        return None

    def test_a_full_node_gets_no_new_copies_and_nothing_is_lost_or_disconnected(self):
        for u in self.USERS:
            self.add_user(1 + self.USERS.index(u) % 3, u)
        # 200 messages through every node, four at a time: mostly small,
        # every 8th over 256 KiB (it crosses as a body transfer). About 31 MB
        # of copies at R=2, a third of them for node 3's 10 MiB.
        work = []
        for n in range(200):
            size = 300000 + 40000 * (n % 5) if n % 8 == 0 else 10000 + 3000 * (n % 17)
            work.append((n, 1 + n % 3, self.USERS[n % len(self.USERS)], message(n, size)))
        taken, tempfails, lock = {}, [0], threading.Lock()
        began = time.time()

        def worker(k):
            for n, via, user, data in work[k::4]:
                d, t = self.deliver_until_taken(via, user, data)
                with lock:
                    tempfails[0] += t
                    if d:
                        taken[d["id"]] = (user, d["uid"], data)
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        load_s = time.time() - began
        self.assertEqual(len(taken), len(work), "deliveries never taken")
        full_at = self.when_logged(3, "this node is full")
        self.assertIsNotNone(full_at, "node 3 never reported its spool full:\n" + self.new_log(3)[-3000:])
        self.assertTrue(self.sees_full(1, 3), "node 1 does not see node 3 full")

        # No copy placed on node 3 once the others could have heard, and no
        # body written there from the moment it said so. (A listing shows no
        # UID above one handed to a delivery that was given up until that
        # delivery's deadline has passed: wait for every message taken.)
        deadline = time.time() + 30
        held = self.listing()
        while time.time() < deadline and not set(taken) <= set(held):
            time.sleep(0.5)
            held = self.listing()
        late = [i for i, m in held.items() if 3 in m["replicas"] and m["internal_date_ms"] >= full_at + self.GRACE_MS]
        self.assertEqual(late, [], "placed on node 3 after it was full")
        on3 = sum(1 for m in held.values() if 3 in m["replicas"])
        in_grace = sum(1 for m in held.values()
                       if 3 in m["replicas"] and full_at <= m["internal_date_ms"] < full_at + self.GRACE_MS)
        written_after = []
        for root, _, files in os.walk(os.path.join(self.spool, "msg")):
            for f in files:
                if os.stat(os.path.join(root, f)).st_mtime_ns / 1e6 > full_at + 10:
                    written_after.append(os.path.join(root, f))
        self.assertEqual(written_after, [], "bodies written on node 3 after it was full")
        # Nothing lost: every message taken is there with its bytes.
        for k, (mid, (user, uid, data)) in enumerate(sorted(taken.items())):
            self.assertIn(mid, held, "message %s to %s lost" % (mid, user))
            self.assertEqual(held[mid]["uid"], uid)
            self.assertEqual(self.ctl(1 + k % 2, "mail", "fetch", user, str(uid)).stdout, data)
        self.assertEqual(self.torn_down(), {1: [], 2: [], 3: []})

        # Completely full: a large body node 3 must stage (a read of a message
        # it does not hold) is refused alone; its connections stay.
        filler = os.path.join(self.spool, "filler")
        with open(filler, "wb", buffering=0) as f:  # unbuffered: nothing left to flush at close
            try:
                while True:
                    f.write(b"\0" * (1 << 20))
                    f.flush()
            except OSError:
                pass
        big_id = next((mid for mid, m in held.items() if m["size"] > 256 << 10 and 3 not in m["replicas"]), None)
        self.assertIsNotNone(big_id)
        big = held[big_id]
        r = self.ctl(3, "mail", "fetch", big["user"], str(big["uid"]), check=False, timeout_ms=30000)
        self.assertEqual(r.returncode, 3, "a read node 3 cannot stage should fail for now: %r" % r.stderr)
        self.assertIn("dropped: its body could not be staged", self.new_log(3))
        os.unlink(filler)
        want = taken[big_id][2]
        self.assertEqual(self.ctl(3, "mail", "fetch", big["user"], str(big["uid"])).stdout, want)
        self.assertEqual(self.torn_down(), {1: [], 2: [], 3: []})

        # The filesystem grows: node 3 takes copies again.
        import subprocess
        subprocess.run(["mount", "-o", "remount,size=64m", self.spool], check=True)
        deadline = time.time() + 10
        while time.time() < deadline and (self.sees_full(1, 3) or self.sees_full(2, 3)):
            time.sleep(0.2)
        self.assertFalse(self.sees_full(1, 3) or self.sees_full(2, 3))
        again = {}
        for n in range(200, 236):
            d, _ = self.deliver_until_taken(1 + n % 2, self.USERS[n % len(self.USERS)], message(n, 20000))
            self.assertIsNotNone(d)
            again[d["id"]] = d
        held = self.listing(2)
        self.assertTrue(all(mid in held for mid in again))
        back = sum(1 for mid in again if 3 in held[mid]["replicas"])
        self.assertGreater(back, 0, "node 3 not used again after it had room")
        self.assertEqual(self.torn_down(), {1: [], 2: [], 3: []})
        print("\nfull disk: %d deliveries in %.1f s, %d temporary failures (tried again); node 3 full %.1f s "
              "into the load; %d messages have a copy on node 3, %d placed in the %d ms after it was full, "
              "0 after; %d of %d placed on it once it had room; 0 peer connections closed"
              % (len(work), load_s, tempfails[0], (full_at / 1000) - began, on3, in_grace, self.GRACE_MS,
                 back, len(again)), file=sys.stderr)


class NodeCache(ClusterCase):
    """The agent's node cache (store/node_cache.h) as the agent runs it: its
    directory in the spool (0700), its figures in status and the metrics,
    the entries a restart finds (and the unfinished fills it removes), an
    expunge made through a node that holds no replica dropping that node's
    entry at once, and a delivery through such a node filling its cache, so
    a read there is a hit."""

    def test_entries_survive_a_restart_and_an_expunge_drops_its_entry(self):
        self.add_user(1, "cat@example.org")
        data = message(1, 5000)
        d = self.deliver(1, "cat@example.org", data)
        self.assertEqual(d["code"], "OK")
        [m] = self.ctl_json(1, "mail", "list", "cat@example.org")["messages"]
        origin, seq = m["id"].split(":")
        outsider = next(i for i in (1, 2, 3) if i not in m["replicas"])
        cache = os.path.join(self.cl.ndir(outsider), "spool", "cache")
        self.assertEqual(os.stat(cache).st_mode & 0o777, 0o700)
        # The accepting node keeps the body of a message it holds no
        # replica of: node 1 has it in its cache when it is the outsider.
        status = self.ctl_json(outsider, "status")["cache"]
        accepted = 1 if outsider == 1 else 0
        self.assertEqual(status["entries"], accepted)
        self.assertEqual(status["bytes"] > 0, bool(accepted))
        self.assertEqual(status, dict(status, budget=1 << 30, hits=0, misses=0, evictions=0, refused=0))

        # The body as a read on that node would have kept it, a fill cut
        # off by a crash, and a name the cache does not own.
        self.cl.stop_pid(outsider, "agent")
        os.makedirs(os.path.join(cache, origin), exist_ok=True)
        entry = os.path.join(cache, origin, seq)
        with open(entry, "wb") as f:
            f.write(data)
        with open(os.path.join(cache, origin, "999999.tmp"), "wb") as f:
            f.write(b"half")
        with open(os.path.join(cache, "README"), "w") as f:
            f.write("not an entry\n")
        self.cl.start_agent(outsider)
        self.assertTrue(self.wait_converged(30), "node %d did not rejoin" % outsider)
        status = self.ctl_json(outsider, "status")["cache"]
        self.assertEqual(status["entries"], 1)
        self.assertEqual(status["bytes"], os.stat(entry).st_blocks * 512)
        self.assertFalse(os.path.exists(os.path.join(cache, origin, "999999.tmp")))
        self.assertTrue(os.path.exists(os.path.join(cache, "README")))
        self.assertIn("names that are not cache entries", self.log_of(outsider))
        text = self.ctl(outsider, "status").stdout.decode()
        self.assertIn("cache: %d KiB of %d KiB, 1 bodies" % (status["bytes"] // 1024, (1 << 30) // 1024), text)

        # Expunged through the node without a replica: its entry goes now.
        self.ctl(outsider, "mail", "expunge", "cat@example.org", str(d["uid"]))
        self.assertFalse(os.path.exists(entry))
        status = self.ctl_json(outsider, "status")["cache"]
        self.assertEqual((status["entries"], status["bytes"], status["evictions"]), (0, 0, 0))
        self.assertEqual(self.ctl_json(1, "mail", "list", "cat@example.org")["messages"], [])

        # The gauges follow within a refresh (a second).
        url = "http://%s:%d/metrics" % (self.cl.address(outsider), local.METRICS_PORT)
        deadline = time.time() + 10
        while True:
            with urllib.request.urlopen(url, timeout=5) as r:
                metrics = r.read().decode()
            if re.search(r"(?m)^porcupine_cache_entries 0$", metrics) or time.time() > deadline:
                break
            time.sleep(0.2)
        self.assertRegex(metrics, r"(?m)^porcupine_cache_entries 0$")
        self.assertRegex(metrics, r"(?m)^porcupine_cache_budget_bytes 1073741824$")
        self.assertRegex(metrics, r"(?m)^porcupine_cache_evictions_total 0$")


    def test_a_delivery_through_a_node_holding_no_replica_fills_its_cache_and_a_read_there_is_a_hit(self):
        self.add_user(1, "dan@example.org")
        self.assertEqual(self.deliver(1, "dan@example.org", message(1, 2000))["code"], "OK")
        [first] = self.ctl_json(1, "mail", "list", "dan@example.org")["messages"]
        outsider = next(i for i in (1, 2, 3) if i not in first["replicas"])
        before = self.ctl_json(outsider, "status")["cache"]
        # Spread 2 of 3 nodes, R=2: the user's next messages go to the same
        # two nodes. A small body (bytes) and a large one (a staging file).
        bodies = {}
        for n, size in ((2, 5000), (3, 700 << 10)):
            data = message(n, size)
            d = self.deliver(outsider, "dan@example.org", data)
            self.assertEqual(d["code"], "OK")
            bodies[d["uid"]] = data
        listed = {m["uid"]: m for m in self.ctl_json(outsider, "mail", "list", "dan@example.org")["messages"]}
        for uid in bodies:
            self.assertNotIn(outsider, listed[uid]["replicas"])
            origin, seq = listed[uid]["id"].split(":")
            with open(os.path.join(self.cl.ndir(outsider), "spool", "cache", origin, seq), "rb") as f:
                self.assertEqual(f.read(), bodies[uid])
        status = self.ctl_json(outsider, "status")["cache"]
        self.assertEqual(status["entries"], before["entries"] + 2)
        self.assertEqual((status["hits"], status["misses"]), (before["hits"], before["misses"]))
        # No staging file stays behind the links.
        self.assertEqual(os.listdir(os.path.join(self.cl.ndir(outsider), "spool", "incoming")), [])

        # A read there right after (Open, as the Dovecot plugin reads) is
        # answered from the cache: hits, no miss (a miss fetches from a holder).
        got = open_bodies(self.cl, outsider, "dan@example.org", [listed[uid] for uid in bodies])
        self.assertEqual(got, list(bodies.values()))
        status = self.ctl_json(outsider, "status")["cache"]
        self.assertEqual(status["hits"], before["hits"] + 2)
        self.assertEqual(status["misses"], before["misses"])

        # A holder keeps nothing in its cache: Open finds its own copy.
        holder = listed[min(bodies)]["replicas"][0]
        self.assertEqual(self.ctl_json(holder, "status")["cache"]["entries"], 0)


def open_bodies(cl, node, user, listed):
    """The bodies of the listed messages through node's Open (porcupine_open_many
    of libporcupine-client.so), as the Dovecot plugin reads them."""
    import ctypes
    lib = ctypes.CDLL(os.path.join(BUILD, "cluster-agent", "agent", "libporcupine-client.so"))

    class MsgRef(ctypes.Structure):
        _fields_ = [("origin", ctypes.c_uint32), ("seq", ctypes.c_uint64), ("nreplicas", ctypes.c_uint32),
                    ("replicas", ctypes.c_uint32 * 8)]  # PORCUPINE_MAX_REPLICAS

    class Opened(ctypes.Structure):
        # struct porcupine_opened up to fd; the room after it (zeroed) takes
        # the fields the header adds after fd, one item per call.
        _fields_ = [("ref", MsgRef), ("size_hint", ctypes.c_uint64), ("result", ctypes.c_int),
                    ("size", ctypes.c_uint64), ("fd", ctypes.c_int), ("room", ctypes.c_char * 256)]

    lib.porcupine_open.restype = ctypes.c_void_p
    lib.porcupine_open.argtypes = [ctypes.c_char_p, ctypes.c_int]
    lib.porcupine_open_many.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p,
                                        ctypes.c_size_t]
    lib.porcupine_close.argtypes = [ctypes.c_void_p]
    c = lib.porcupine_open(os.path.join(cl.ndir(node), "agent.sock").encode(), 15000)
    assert c, "no connection to node %d" % node
    out = []
    try:
        for m in listed:
            item = Opened()
            origin, seq = m["id"].split(":")
            item.ref.origin, item.ref.seq = int(origin), int(seq)
            item.ref.nreplicas = len(m["replicas"])
            for k, r in enumerate(m["replicas"]):
                item.ref.replicas[k] = r
            item.size_hint = m["size"]
            item.fd = -1
            code = lib.porcupine_open_many(c, user.encode(), b"INBOX", ctypes.byref(item), 1)
            assert code == 0 and item.result == 0 and item.fd >= 0, (code, item.result, item.fd)
            with os.fdopen(item.fd, "rb") as f:
                out.append(f.read())
    finally:
        lib.porcupine_close(c)
    return out


class Metrics(ClusterCase):
    """Every agent serves Prometheus metrics on metrics_listen
    (porcupine-local: 127.0.K.i:9477); the figures are what the cluster
    did and is: requests and deliveries counted, latencies observed, the
    members, the backlog draining, copies on a dead node under-replicated."""

    def scrape(self, i):
        """Node i's metrics: {(name, ((label, value), ...)): value}."""
        url = "http://%s:%d/metrics" % (self.cl.address(i), local.METRICS_PORT)
        with urllib.request.urlopen(url, timeout=5) as r:
            self.assertEqual(r.status, 200)
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$", line)
            self.assertIsNotNone(m, "not an exposition line: %r" % line)
            labels = tuple(sorted(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', m.group(2) or "")))
            out[(m.group(1), labels)] = float(m.group(3))
        return out

    @staticmethod
    def value(metrics, name, **labels):
        """One series' value; 0 for a counter not yet counted."""
        return metrics.get((name, tuple(sorted(labels.items()))), 0.0)

    def wait_for(self, what, check, timeout=30):
        """Scrapes until check() holds; fails with the last figures."""
        deadline = time.time() + timeout
        while True:
            got = check()
            if got is True or time.time() > deadline:
                break
            time.sleep(0.2)
        self.assertIs(got, True, "%s: %s" % (what, got))

    def test_the_figures_are_what_the_cluster_did(self):
        self.add_user(1, "ann@example.org")
        self.add_user(1, "bob@example.org")
        sizes = {1: [], 2: [], 3: []}
        uids = []
        for n in range(12):
            via = 1 if n < 7 else 2  # 7 through node 1, 5 through node 2
            data = message(n, 300 + 71 * n)
            d = self.deliver(via, "ann@example.org", data)
            self.assertEqual(d["code"], "OK")
            sizes[via].append(len(data))
            uids.append(d["uid"])
        # One delivery to two recipients (node 3): one request, two messages.
        r = self.ctl(3, "--json", "mail", "deliver", "ann@example.org", "bob@example.org", stdin=message(50))
        self.assertEqual([d["code"] for d in json.loads(r.stdout)], ["OK", "OK"])
        sizes[3] += [len(message(50))] * 2
        # A refused one (node 2): counted under its code.
        r = self.ctl(2, "--json", "mail", "deliver", "nobody@example.org", stdin=message(51), check=False)
        self.assertNotEqual(r.returncode, 0)
        # Reads and flag changes on node 3: each looks the UID up in a listing first.
        for uid in uids[:3]:
            self.ctl(3, "mail", "fetch", "ann@example.org", str(uid))
        self.ctl(3, "mail", "flags", "ann@example.org", str(uids[0]), "seen")
        self.ctl(3, "mail", "list", "ann@example.org")

        m = {i: self.scrape(i) for i in (1, 2, 3)}
        v = self.value
        # Counters are counted before the answer leaves: exact at once.
        for i, n in ((1, 7), (2, 5), (3, 1)):
            self.assertEqual(v(m[i], "porcupine_local_requests_total", operation="deliver", code="OK"), n, i)
            self.assertEqual(v(m[i], "porcupine_local_request_duration_seconds_count", operation="deliver"),
                             n + (1 if i == 2 else 0), i)
            self.assertEqual(v(m[i], "porcupine_delivered_messages_total", code="OK"), len(sizes[i]), i)
            self.assertEqual(v(m[i], "porcupine_delivered_bytes_total"), sum(sizes[i]), i)
            # Every latency lands in a bucket; +Inf holds them all.
            self.assertEqual(v(m[i], "porcupine_local_request_duration_seconds_bucket", operation="deliver",
                               le="+Inf"), v(m[i], "porcupine_local_request_duration_seconds_count",
                                             operation="deliver"))
            self.assertGreater(v(m[i], "porcupine_local_request_duration_seconds_sum", operation="deliver"), 0)
        self.assertEqual(sum(v(m[i], "porcupine_local_requests_total", operation="deliver", code="OK")
                             for i in (1, 2, 3)), 13)
        self.assertEqual(v(m[2], "porcupine_local_requests_total", operation="deliver", code="NO_SUCH_USER"), 1)
        self.assertEqual(v(m[2], "porcupine_delivered_messages_total", code="NO_SUCH_USER"), 1)
        self.assertEqual(v(m[1], "porcupine_local_requests_total", operation="user_create", code="OK"), 2)
        self.assertEqual(v(m[3], "porcupine_local_requests_total", operation="fetch", code="OK"), 3)
        self.assertEqual(v(m[3], "porcupine_local_request_duration_seconds_count", operation="fetch"), 3)
        self.assertEqual(v(m[3], "porcupine_local_requests_total", operation="set_flags", code="OK"), 1)
        self.assertEqual(v(m[3], "porcupine_local_requests_total", operation="folder_list", code="OK"), 5)
        for i in (1, 2, 3):
            version = self.ctl_json(i, "status")["version"]
            self.assertEqual(v(m[i], "porcupine_agent_info", node=str(i), version=version), 1)

        # What the agent carries from its parts' own counts, once a second.
        def carried():
            m = {i: self.scrape(i) for i in (1, 2, 3)}
            got = {i: (v(m[i], "porcupine_store_flush_duration_seconds_count") > 0,
                       v(m[i], "porcupine_peer_frames_total", direction="in") > 0) for i in (1, 2, 3)}
            return all(all(x) for x in got.values()) or got
        self.wait_for("store flushes and peer frames counted on every node", carried)

        # Gauges are refreshed every second: each view has 3 members, all
        # connected, and each bucket has exactly one manager.
        buckets = self.ctl_json(1, "status")["buckets"]

        def views():
            m = {i: self.scrape(i) for i in (1, 2, 3)}
            got = {i: {"members": v(m[i], "porcupine_members"), "in group": v(m[i], "porcupine_in_group"),
                       "member": [v(m[i], "porcupine_node_member", node=str(k)) for k in (1, 2, 3)],
                       "connected": [v(m[i], "porcupine_node_connected", node=str(k)) for k in (1, 2, 3)],
                       "buckets": sum(v(m[i], "porcupine_node_buckets", node=str(k)) for k in (1, 2, 3)),
                       "managed": v(m[i], "porcupine_buckets_managed") == v(m[i], "porcupine_node_buckets",
                                                                           node=str(i)),
                       "spool": 0 < v(m[i], "porcupine_spool_filesystem_avail_bytes") <=
                       v(m[i], "porcupine_spool_filesystem_size_bytes")} for i in (1, 2, 3)}
            managed = sum(v(m[i], "porcupine_buckets_managed") for i in (1, 2, 3))
            want = {i: {"members": 3, "in group": 1, "member": [1, 1, 1], "connected": [1, 1, 1],
                        "buckets": buckets, "managed": True, "spool": True} for i in (1, 2, 3)}
            return (got == want and managed == buckets) or (got, managed)
        self.wait_for("3 members in every view", views)

        # Gauges follow the state: the backlog drains, and the cluster holds
        # R copies of each of the 14 messages, with their bytes.
        copies, stored = self.replicas * 14, self.replicas * sum(sum(s) for s in sizes.values())

        def settled():
            m = {i: self.scrape(i) for i in (1, 2, 3)}
            got = {"backlog": [v(m[i], "porcupine_replication_backlog") for i in (1, 2, 3)],
                   "records": sum(v(m[i], "porcupine_message_records") for i in (1, 2, 3)),
                   "bytes": sum(v(m[i], "porcupine_spool_message_bytes") for i in (1, 2, 3)),
                   "under": [v(m[i], "porcupine_under_replicated_messages") for i in (1, 2, 3)]}
            return got == {"backlog": [0, 0, 0], "records": copies, "bytes": stored, "under": [0, 0, 0]} or got
        self.wait_for("backlog drained, %d copies of %d bytes" % (copies, stored), settled)

        # The Grafana dashboard asks only for what the agents serve.
        with open(os.path.join(ROOT, "packaging", "grafana", "porcupine-dashboard.json")) as f:
            dashboard = json.load(f)
        ids = [p["id"] for p in dashboard["panels"]]
        self.assertEqual(len(ids), len(set(ids)))
        served = {name for name, _ in self.scrape(1)}
        wanted = set(re.findall(r"porcupine_[a-z_]+", json.dumps(dashboard)))
        self.assertGreater(len(wanted), 20)
        self.assertEqual(wanted - served, set())

    def test_a_dead_node_leaves_the_members_and_its_copies_under_replicated(self):
        for u in ("cy@example.org", "di@example.org", "ed@example.org"):
            self.add_user(1, u)
        for n in range(15):
            self.assertEqual(self.deliver(1 + n % 3, ("cy@example.org", "di@example.org", "ed@example.org")[n % 3],
                                          message(n))["code"], "OK")
        replicas = [m["replicas"] for u in ("cy@example.org", "di@example.org", "ed@example.org")
                    for m in self.ctl_json(1, "mail", "list", u)["messages"]]
        self.assertEqual(len(replicas), 15)
        # The node holding the most copies dies; each survivor holds the
        # other copy of every message that names it.
        victim = max((1, 2, 3), key=lambda k: sum(k in r for r in replicas))
        survivors = [k for k in (1, 2, 3) if k != victim]
        expect = {j: sum(j in r and victim in r for r in replicas) for j in survivors}
        self.assertGreater(sum(expect.values()), 0)
        v = self.value

        def before():
            m = {j: self.scrape(j) for j in survivors}
            got = {j: (v(m[j], "porcupine_replication_backlog"), v(m[j], "porcupine_under_replicated_messages"))
                   for j in survivors}
            return all(g == (0, 0) for g in got.values()) or got
        self.wait_for("backlog drained, nothing under-replicated", before)
        changes = {j: v(self.scrape(j), "porcupine_epoch_changes_total") for j in survivors}

        self.cl.kill(victim, redis=False)
        with self.assertRaises(OSError):
            self.scrape(victim)

        def after():
            m = {j: self.scrape(j) for j in survivors}
            got = {j: {"members": v(m[j], "porcupine_members"),
                       "victim member": v(m[j], "porcupine_node_member", node=str(victim)),
                       "victim connected": v(m[j], "porcupine_node_connected", node=str(victim)),
                       "under": v(m[j], "porcupine_under_replicated_messages"),
                       "new epoch": v(m[j], "porcupine_epoch_changes_total") > changes[j]} for j in survivors}
            want = {j: {"members": 2, "victim member": 0, "victim connected": 0, "under": expect[j],
                        "new epoch": True} for j in survivors}
            return got == want or got
        self.wait_for("node %d dead, %s under-replicated" % (victim, expect), after)
        print("\nnode %d killed: under-replicated per survivor %s" % (victim, expect), file=sys.stderr)
        # A node out of the group has no buckets, load or weight series.
        m = self.scrape(survivors[0])
        self.assertNotIn(("porcupine_node_buckets", (("node", str(victim)),)), m)
        self.assertEqual(sum(v(m, "porcupine_node_buckets", node=str(j)) for j in survivors),
                         v(m, "porcupine_buckets"))

    def test_off_unless_configured(self):
        """The default serves nothing: the agent listens on its peer port
        only. An address it cannot take stops it at start (exit 69)."""
        import subprocess
        defaults = subprocess.run([self.cl.agent_bin(), "--print-defaults"], capture_output=True, text=True,
                                  check=True).stdout
        self.assertIn("\nmetrics_listen =\n", defaults)
        conf = os.path.join(self.cl.ndir(3), "porcupine.conf")
        with open(conf) as f:
            lines = f.read().splitlines(True)
        self.assertEqual(len([l for l in lines if l.startswith("metrics_listen =")]), 1)
        self.cl.kill(3, redis=False)
        taken = "%s:%d" % (self.cl.address(1), local.METRICS_PORT)  # node 1's
        r = subprocess.run([self.cl.agent_bin(), "-c", conf, "-o", "metrics_listen=" + taken] +
                           (["--allow-root"] if os.geteuid() == 0 else []), capture_output=True, text=True,
                           timeout=60)
        self.assertEqual(r.returncode, 69, r.stderr)
        self.assertIn("cannot serve metrics on %s: Address already in use" % taken, r.stderr)
        with open(conf, "w") as f:
            f.writelines(l for l in lines if not l.startswith("metrics_listen ="))
        self.cl.restart(3)
        self.assertTrue(self.wait_converged(30), "node 3 did not rejoin")
        self.assertEqual(self.listening_ports(self.cl.pid(3, "agent")), {local.PORT})
        with self.assertRaises(OSError):
            self.scrape(3)
        started = [l for l in self.log_of(3).splitlines() if "agent: node 3 listening on" in l]
        self.assertEqual(len(started), 2)
        self.assertIn("metrics on http://%s:%d/metrics" % (self.cl.address(3), local.METRICS_PORT), started[0])
        self.assertNotIn("metrics on", started[1])
        # The others still serve theirs, and count node 3 back in.
        self.wait_for("node 3 a member again on node 1",
                      lambda: self.value(self.scrape(1), "porcupine_members") == 3 or "not yet")

    @staticmethod
    def listening_ports(pid):
        """TCP ports the process listens on (/proc: its socket inodes in LISTEN)."""
        inodes = set()
        for fd in os.listdir("/proc/%d/fd" % pid):
            try:
                target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        ports = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as f:
                for row in f.read().splitlines()[1:]:
                    cols = row.split()
                    if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                        ports.add(int(cols[1].rsplit(":", 1)[1], 16))
        return ports


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--build" in args:
        i = args.index("--build")
        BUILD = os.path.abspath(args[i + 1])
        del args[i:i + 2]
    if "--subnet" in args:
        i = args.index("--subnet")
        SUBNET = int(args[i + 1])
        del args[i:i + 2]
    unittest.main(argv=[sys.argv[0]] + args, verbosity=2)
