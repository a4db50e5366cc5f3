#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Real network partitions of a cluster of real processes.

The whole stack of every node (Postfix with porcupine-milter, Dovecot with
the plugin, porcupine-agent, Redis; scripts/porcupine-local) runs inside a
network namespace this script makes for itself (unshare --net: its own
loopback, so nothing it does reaches the host's), each node on its own
address 127.0.K.i. Every connection a node makes leaves from that address
(the agent's source_address, Postfix's smtp/lmtp_bind_address), so
iptables rules on source and destination cut exactly the links between
nodes named (netsplit.py):

  Links.cut(a, b)           a and b no longer hear each other
  Links.cut(a, b, one_way)  packets from a to b are dropped, b to a pass
  Links.heal()              every link as it was
  Links.flap(a, b, ...)     cut and healed every period, for a while

Each scenario runs SMTP load on every node throughout (sessions on every
side of the split; a 4xx or a broken session is tried again on the next
node), logs every user in on both sides of the split and sets IMAP flags
there, then heals, and checks: every login and SELECT during the split
answered (every node looked every user up before it, so a side without a
copy of a user's profile has one in memory), 0 acknowledged messages
lost, 0 duplicated, and every node converging to the same mailboxes
(UIDVALIDITY, and per message UID, flags and content) within 30 s of the
heal. The time to converge is printed.

Usage:
  partition_test.py --build BUILD_DIR [--subnet K] [unittest args]

Needs root (unshare, iptables). Every process started is stopped by its
PID; the namespace goes with the last of them.
"""
import importlib.machinery
import json
import os
import re
import subprocess
import sys
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
smtp = importlib.machinery.SourceFileLoader("porcupine_smtp_test", os.path.join(HERE, "smtp_test.py")).load_module()
netsplit = importlib.machinery.SourceFileLoader("porcupine_netsplit", os.path.join(HERE, "netsplit.py")).load_module()

SUBNET = 90
CONVERGE_S = 30          # the bound after a heal
FLAG_MESSAGES = 4        # per user, delivered before the split; flagged on both sides of it


def mailbox_views(stack, node, users):
    """user -> (UIDVALIDITY, ((uid, flags, subject), ...)) read on `node`
    over IMAP (flags sorted, \\Recent left out: it is per session)."""
    out = {}
    for user in users:
        m = stack.imap(node, user)
        try:
            typ, data = m.select("INBOX", readonly=True)
            assert typ == "OK", data
            uidvalidity = int(m.untagged_responses.get("UIDVALIDITY", [b"0"])[-1])
            typ, data = m.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            assert typ == "OK", data
            rows = []
            for d in data:
                if not isinstance(d, tuple):
                    continue
                meta = d[0].decode()
                uid = int(re.search(r"UID (\d+)", meta).group(1))
                flags = re.search(r"FLAGS \(([^)]*)\)", meta).group(1).split()
                flags = " ".join(sorted(f for f in flags if f != "\\Recent"))
                subject = smtp.header(d[1], b"Subject") or b""
                rows.append((uid, flags, subject.decode()))
            out[user] = (uidvalidity, tuple(sorted(rows)))
        finally:
            m.logout()
    return out


class Split(unittest.TestCase):
    """One cluster per test; each test is one scenario of the issue's list."""
    nodes = 3
    messages = 240
    sessions = 6
    split_s = 10
    pace_s = 0.4  # each session's pause after a message: the load outlasts the split

    def setUp(self):
        self.dir = os.path.join("/tmp", "pcpsplit-%d-%s" % (os.getpid(), self._testMethodName[5:25]))
        os.makedirs(self.dir, exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.st = None
        self.addCleanup(self.stop_all)
        try:
            self.st = smtp.Stack(os.path.join(self.dir, "c"), self.nodes, 2, SUBNET,
                                 extra_config={"probe_timeout_ms": "1000"})
        except SystemExit:
            for st in list(smtp.Stack.live):
                st.stop()
            self.fail("the cluster did not start (see %s)" % self.dir)
        self.assertTrue(smtp.wait_for(self.st.cl.converged, 30), "cluster did not form")
        for user, pw in smtp.USERS.items():
            self.st.ctl(1, "user", "add", user, "--password", pw)
        self.links = netsplit.Links(self.st.addr)
        self.users = sorted(smtp.USERS)
        self.refused_logins = []
        self.refused_selects = []

    def stop_all(self):
        if self.st:
            if hasattr(self, "links"):
                self.links.heal()
            self.st.stop()
        if not os.environ.get("KEEP"):
            subprocess.run(["rm", "-rf", self.dir])

    def log(self, m):
        print("  " + m, flush=True)

    # ---- the parts of a scenario ----

    def deliver_flag_targets(self):
        """FLAG_MESSAGES messages per user before the split, each on every node's view."""
        with self.st.smtp(1) as s:
            for user in self.users:
                for k in range(FLAG_MESSAGES):
                    tag = "pre-%s-%d" % (user.split("@")[0], k)
                    refused = s.sendmail("sender@outside.test", [user], smtp.make_message(user, tag, 300))
                    self.assertEqual(refused, {}, tag)
        want = {u: FLAG_MESSAGES for u in self.users}

        def there():
            return all(sum(1 for r in mailbox_views(self.st, i, self.users)[u][1] if r[2].startswith("pre-")) == n
                       for i in range(1, self.nodes + 1) for u, n in want.items())
        self.assertTrue(smtp.wait_for(there, 60), "the messages before the split did not reach every node")

    def set_flags(self, node, user, k, flag):
        """STORE +FLAGS on message pre-<user>-k, through node's IMAP; whether it was answered OK."""
        try:
            m = self.st.imap(node, user)
        except Exception as e:
            # Every node logged every user in before the split
            # (deliver_flag_targets): a side without a copy of the user's
            # profile answers from that node's memory of it.
            self.log("node %d: %s cannot log in during the split: %s" % (node, user, e))
            self.refused_logins.append((node, user, str(e)))
            return False
        try:
            typ, data = m.select("INBOX")
            if typ != "OK":
                self.log("node %d: SELECT for %s refused during the split: %s" % (node, user, data))
                self.refused_selects.append((node, user, str(data)))
                return False
            typ, data = m.uid("SEARCH", None, "SUBJECT", "pre-%s-%d" % (user.split("@")[0], k))
            if typ != "OK" or not data[0]:
                self.log("node %d: message pre-%s-%d has no copy on this side" % (node, user.split("@")[0], k))
                return False
            uid = data[0].split()[0].decode()
            typ, data = m.uid("STORE", uid, "+FLAGS", "(%s)" % flag)
            if typ != "OK":
                self.log("node %d: STORE for %s answered %s" % (node, user, data))
            return typ == "OK"
        except Exception as e:
            self.log("node %d: STORE for %s failed during the split: %s" % (node, user, e))
            return False
        finally:
            try:
                m.logout()
            except Exception:
                pass

    def run_scenario(self, name, fault, sides):
        """Load on every node; fault() makes the split (and returns a
        thread to join for a flap); flags set on a node of each side; heal;
        then the checks. sides: one node per side to set flags through."""
        self.deliver_flag_targets()
        load = smtp.Load(self.st, self.messages, self.sessions, deadline_s=240, pace_s=self.pace_s)
        load.start()
        smtp.wait_for(lambda: load.done >= self.sessions, 30, 0.05)
        started = time.time()
        flapping = fault()
        self.log("%s: split after %d messages" % (name, load.done))
        time.sleep(2.5)  # the sides have seen it (probe_timeout 1 s) and re-formed
        flags = {}
        stored = {}

        def set_flags():
            for n, (node, flag) in enumerate(zip(sides, ("\\Flagged", "\\Answered", "\\Seen", "\\Draft"))):
                for user in self.users:
                    stored[(node, user)] = self.set_flags(node, user, 0, flag)  # one message, a flag per side
                    if stored[(node, user)]:
                        flags.setdefault(user, set()).add(flag)
                    stored[(node, user, 1)] = self.set_flags(node, user, 1 + n, "\\Flagged")  # a message per side
        flagging = threading.Thread(target=set_flags, daemon=True)
        flagging.start()
        if flapping:
            flapping.join()
        else:
            time.sleep(max(0, self.split_s - (time.time() - started)))
        flagging.join()
        # The load stops with the split: what it had not sent by now is not
        # sent, so what is checked below is the convergence alone.
        load.deadline = time.time()
        self.links.heal()
        healed = time.time()
        self.log("%s: healed after %.1f s, %d messages through" % (name, healed - started, load.done))
        finished = load.join()
        self.assertTrue(finished, "the SMTP sessions did not finish")
        # Converged: every accepted message on every node once, and every
        # node's view of every mailbox the same.
        views, last = {}, {}

        why = []  # what the last look found missing, for the log

        def converged():
            for i in range(1, self.nodes + 1):
                try:
                    views[i] = mailbox_views(self.st, i, self.users)
                except Exception as e:
                    why.append("%.1f s: node %d: %s" % (time.time() - healed, i, e))
                    raise
            last.clear()
            last.update(views)
            if any(views[i] != views[1] for i in views):
                why.append("%.1f s: views differ: %s" % (time.time() - healed, {
                    i: {u: len(v[1]) for u, v in views[i].items()} for i in views}))
                return False
            seen = {}
            for user in self.users:
                for _, _, subject in views[1][user][1]:
                    seen[subject] = seen.get(subject, 0) + 1
            return all(seen.get(t, 0) >= 1 for t in load.accepted) and \
                all(self.st.queue_empty(i) for i in range(1, self.nodes + 1))
        ok = smtp.wait_for(converged, 120, 1.0)
        took = time.time() - healed
        for line in why[-8:]:
            self.log("%s: not yet at %s" % (name, line))
        self.log("%s: %s %.1f s after the heal; %d accepted, %d retried after a 4xx or a break, "
                 "%d LMTP deferrals" % (name, "converged" if ok else "NOT converged", took, len(load.accepted),
                                        len(load.retried),
                                        sum(self.st.postfix_log(i).count("status=deferred")
                                            for i in range(1, self.nodes + 1))))
        self.assertTrue(ok, "no convergence within 120 s of the heal: %s" % {
            i: {u: len(v[1]) for u, v in last[i].items()} for i in last})
        self.assertLessEqual(took, CONVERGE_S, "converged, but %.1f s after the heal" % took)
        # 0 lost, 0 duplicated.
        seen = {}
        for user in self.users:
            for _, _, subject in views[1][user][1]:
                seen[subject] = seen.get(subject, 0) + 1
        self.assertEqual(load.rejected, {}, "5xx answers")
        self.assertEqual([t for t in load.accepted if seen.get(t, 0) == 0], [], "lost")
        self.assertEqual(sorted(t for t, c in seen.items() if c > 1), [], "duplicated")
        # Flags set on each side during the split: all of them survive.
        for user in self.users:
            rows = {subject: fl for _, fl, subject in views[1][user][1]}
            first = set(rows["pre-%s-0" % user.split("@")[0]].split())
            self.assertTrue(flags.get(user, set()) <= first, (user, flags.get(user), first))
            for n, node in enumerate(sides):
                if stored.get((node, user, 1)):
                    self.assertIn("\\Flagged", rows["pre-%s-%d" % (user.split("@")[0], 1 + n)].split(), user)
        self.assertEqual(self.refused_logins, [], "logins refused during the split")
        self.assertEqual(self.refused_selects, [], "SELECT refused during the split")
        answered = sum(1 for k, v in stored.items() if v)
        self.log("%s: %d of %d flag changes during the split answered OK, each kept" % (
            name, answered, len(stored)))
        uidvalidity = {u: views[1][u][0] for u in self.users}
        self.assertTrue(all(v > 0 for v in uidvalidity.values()), uidvalidity)

    # ---- the scenarios ----

    def manager_of(self, user):
        r = self.st.ctl(1, "--json", "user", "show", user)
        return int(json.loads(r.stdout)["manager"])

    def test_0_every_connection_between_nodes_leaves_from_its_nodes_address(self):
        """What makes a cut by address possible at all: each agent's peer
        connections, in both directions, have its own node's address at
        its end (source_address defaults to the listen address's host)."""
        with self.st.smtp(2) as s:  # some traffic between the nodes
            s.sendmail("sender@outside.test", [self.users[0]], smtp.make_message(self.users[0], "addr-check", 300))
        agents = {self.st.cl.pid(i, "agent"): i for i in range(1, self.nodes + 1)}
        out = subprocess.run(["ss", "-tnpH", "state", "established"], capture_output=True, text=True,
                             check=True).stdout
        seen = 0
        for line in out.splitlines():
            cols = line.split()
            local, peer = cols[2].rsplit(":", 1)[0], cols[3].rsplit(":", 1)[0]
            for pid in map(int, re.findall(r"pid=(\d+)", line)):
                if pid in agents and peer != local:
                    self.assertEqual(local, self.st.addr(agents[pid]), line)
                    seen += 1
        # Every agent has a connection to each other (one each way at most).
        self.assertGreaterEqual(seen, self.nodes * (self.nodes - 1), out)

    def test_a_one_node_cut_off_from_the_rest(self):
        self.run_scenario("(a) node 3 cut off", lambda: self.links.cut_off([3], [1, 2]), sides=[1, 3])

    def test_b_the_manager_of_a_busy_mailbox_cut_off(self):
        busy = self.users[0]
        m = self.manager_of(busy)
        others = [i for i in range(1, self.nodes + 1) if i != m]
        self.log("(b) %s is managed by node %d" % (busy, m))
        self.run_scenario("(b) manager n%d cut off" % m, lambda: self.links.cut_off([m], others),
                          sides=[others[0], m])

    def test_d_a_bridge_node_sees_both_the_others_do_not_see_each_other(self):
        self.run_scenario("(d) bridge n1, n2 | n3", lambda: self.links.cut(2, 3), sides=[2, 3])

    def test_e_a_one_way_cut(self):
        def fault():
            self.links.cut(3, 1, one_way=True)
            self.links.cut(3, 2, one_way=True)
        self.run_scenario("(e) n3 -> n1, n2 dropped", fault, sides=[1, 3])

    def test_f_a_link_flapping_every_second_for_30_s(self):
        self.run_scenario("(f) n1 - n2 flapping", lambda: self.links.flap(1, 2, 1.0, 30), sides=[1, 2])


class SplitOfFive(Split):
    nodes = 5
    messages = 300
    sessions = 10

    # (c), and (a) again: one node of five cut off. The other scenarios of
    # three nodes are not run again.
    test_0_every_connection_between_nodes_leaves_from_its_nodes_address = None
    test_b_the_manager_of_a_busy_mailbox_cut_off = None
    test_d_a_bridge_node_sees_both_the_others_do_not_see_each_other = None
    test_e_a_one_way_cut = None
    test_f_a_link_flapping_every_second_for_30_s = None

    def test_a_one_node_cut_off_from_the_rest(self):
        self.run_scenario("(a) node 5 of 5 cut off", lambda: self.links.cut_off([5], [1, 2, 3, 4]), sides=[1, 5])

    def test_c_two_against_three(self):
        self.run_scenario("(c) n1 n2 | n3 n4 n5", lambda: self.links.cut_off([1, 2], [3, 4, 5]), sides=[1, 4])


def main():
    global SUBNET
    argv = [sys.argv[0]]
    args = iter(sys.argv[1:])
    for a in args:
        if a == "--build":
            smtp.BUILD = os.path.abspath(next(args))
        elif a == "--subnet":
            SUBNET = int(next(args))
        else:
            argv.append(a)
    if os.geteuid() != 0:
        sys.exit("partition_test: needs root (a network namespace and iptables)")
    netsplit.enter_namespace()
    import signal
    signal.signal(signal.SIGTERM, smtp.on_sigterm)
    unittest.main(argv=argv, verbosity=2)


if __name__ == "__main__":
    main()
