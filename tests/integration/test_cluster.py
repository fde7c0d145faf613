"""Two suction nodes behind a real HAProxy, sharing one PostgreSQL (issue 12, musts 1, 2 and 7).

The bed's legacy and new Dovecot servers; a private PostgreSQL 15 (tests/testbed/pgbed.py) as
[sync] state_db of both nodes (node-a, node-b, lease 5 s); HAProxy (Debian's haproxy) in front
of both with `send-proxy-v2`, sourced from 127.0.0.2 (the nodes' proxy_protocol_from); clients
connect to HAProxy from 127.0.0.3; a counting forwarder in front of legacy ([legacy]
max_connections = 3 for the cluster).

- 100 users log in through HAProxy three times each, landing on both nodes (round robin): every
  user migrated exactly (sha256, flags, INTERNALDATE per folder), each by one run at a time (the
  shared runs table: no two runs of a user overlap; runs by both nodes), legacy's cap never
  exceeded by the two nodes together (counted at the forwarder), the new server's log names the
  clients' own address (from the PROXY header), node-b's metrics scraped during it.
- `suction status` and `suction report` on node-b show the whole cluster: bob running on node-a.
- A node killed mid-migration (SIGKILL node-a while it copies bob's 2,500 messages): bob logs in
  again and lands on node-b, which waits for node-a's lease to expire, takes bob over (node-a's
  run marked interrupted) and finishes: exact, nothing twice.
- The cluster's queue: `suction migrate --users` on node-a (both nodes paused) hands 12 users
  who never log in to the shared queue (master users on both servers); resumed, both nodes take
  them (FOR UPDATE SKIP LOCKED): each exact, by one run at a time, the queue empty after, the
  cap held.
- A login's job handed over: node-a drains (starts no job) while 4 users log in on it; with
  master users on both servers, node-a puts their jobs in the shared queue as logins' (the
  passwords stay on node-a; `suction status` on node-a says so while node-b is paused) and
  node-b, resumed, runs them: exact, recorded as logins' runs by node-b, node-a's status
  shows them done, the queue empty after.
- `suction sync` keeps its run's lease: legacy stops answering for longer than the lease
  mid-run; the run stays held (its lease never runs out by the database's clock) and ends done.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import signal
import subprocess
import sys
import threading
import time
import unittest
import urllib.request
from collections import Counter

from netfault import Forwarder
from proxyfixture import HOST, SUCTION_BIN, Proxy, RawClient, bed, free_ports, start_bed, tmp_root, wait_until
from testbed import quote
from syncfixture import expected_name, folders, messages
from test_migration_e2e import ask, seed

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "testbed"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "bench"))
import gen_corpus  # noqa: E402
from pgbed import PgBed  # noqa: E402

BALANCER, CLIENT = "127.0.0.2", "127.0.0.3"
USERS = [f"user{i:03d}" for i in range(1, 101)]
BULK = [f"user{i:03d}" for i in range(101, 113)]    # never log in: `suction migrate` on node-a
HANDED = [f"user{i:03d}" for i in range(113, 117)]  # log in on node-a while it drains
SILENT = "user117"                                 # `suction sync` while legacy stalls
MASTER, MASTER_PW = "cluster-master", "clu5ter-m4ster"
LOGINS_EACH = 3
LEGACY_CAP = 3
LEASE = 5
KILL_USER = "bob"

_PG: PgBed | None = None


def setUpModule():
    global _PG
    tb = start_bed(seed=False, extra_users=len(USERS) + len(BULK) + len(HANDED) + 1)
    for server in (tb.legacy, tb.new):
        server.add_master_user(MASTER, MASTER_PW)
    for i, user in enumerate(USERS + BULK + HANDED + [SILENT]):
        seed(user, {"INBOX": 2, "INBOX.Kept": 1 + i % 3}, size=2000, tag=f"-c{i}")
    gen_corpus.generate(os.path.join(tb.legacy.home, KILL_USER, "Maildir"), 2500, 6, 8, seed=12,
                        owner="dovecot", samples=0)
    _PG = PgBed()
    _PG.start()
    unittest.addModuleCleanup(_PG.stop)


def contents(server, user: str, mapped: bool) -> dict[str, Counter]:
    """{folder (as on the new server): Counter of (sha256, flags, INTERNALDATE)}."""
    imap = server.connect(user, timeout=120)
    try:
        out: dict[str, Counter] = {}
        for f in folders(imap):
            if any(a.lower() in ("\\noselect", "\\nonexistent") for a in f["attrs"]):
                continue
            c = Counter(m[:3] for m in messages(imap, f["name"]))
            if c:
                out.setdefault(expected_name(f["name"]) if mapped else f["name"], Counter()).update(c)
        return out
    finally:
        imap.logout()


def runs_of(user: str | None = None) -> list[tuple]:
    """(user, id, node, result, started_at, finished_at) from the shared runs table."""
    where = f" WHERE \"user\" = '{user}'" if user else ""
    rows = _PG.psql(f"SELECT \"user\", id, node, result, started_at, finished_at FROM runs{where}"
                    " ORDER BY \"user\", id")
    out = []
    for line in rows.splitlines():
        u, i, node, result, s, f = line.split("|")
        out.append((u, int(i), node, result, int(s), int(f)))
    return out


def session(c: RawClient, user: str, first: bytes = b"") -> None:
    """`first` (a PROXY header), greeting, LOGIN with the user's bed password, LOGOUT; closes
    the connection."""
    try:
        if first:
            c.send(first)
        greeting = c.readline()
        assert greeting.startswith(b"* OK"), greeting
        answer = c.command("a1", f"LOGIN {quote(user)} {quote(bed().users[user])}")
        assert b"a1 OK" in answer, (user, answer)
        c.command("a2", "LOGOUT")
    finally:
        c.close()


@unittest.skipUnless(shutil.which("haproxy"), "haproxy not installed (deploy/install-deps.sh "
                     "installs Debian's haproxy)")
class TwoNodes(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.legacy = Forwarder((bed().legacy.host, bed().legacy.imap_port))
        cls.nodes = {}
        pw = os.path.join(tmp_root(), "cluster-master.pw")
        with open(pw, "w") as f:
            f.write(MASTER_PW + "\n")
        os.chmod(pw, 0o600)
        master = {"master_user": MASTER, "master_password_file": pw}
        metrics_port, = free_ports(1)
        cls.metrics_port = metrics_port
        for name in ("node-a", "node-b"):
            over = {
                "listen": {"proxy_protocol_from": [BALANCER]},
                "legacy": {"port": cls.legacy.port, "max_connections": LEGACY_CAP, **master},
                "new": dict(master),
                "sync": {"state_db": _PG.dsn, "node_name": name, "lease": LEASE,
                         "resync_interval": 0, "connections_per_user": 2,
                         "max_concurrent_users": 4},
                "log": {"level": "info"},
            }
            if name == "node-b":
                over["metrics"] = {"listen": f"{HOST}:{metrics_port}"}
            cls.nodes[name] = Proxy(overrides=over, name=name).start()
        cls.hap_port, = free_ports(1)
        cfg = os.path.join(tmp_root(), "haproxy-cluster.cfg")
        a, b = cls.nodes["node-a"], cls.nodes["node-b"]
        with open(cfg, "w") as f:
            f.write(f"""global
  maxconn 500
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend imap
  bind {HOST}:{cls.hap_port}
  default_backend suction
backend suction
  balance roundrobin
  server node-a {HOST}:{a.imap_port} send-proxy-v2 source {BALANCER}
  server node-b {HOST}:{b.imap_port} send-proxy-v2 source {BALANCER}
""")
        cls.hap_log = open(os.path.join(tmp_root(), "haproxy-cluster.log"), "wb")
        cls.hap = subprocess.Popen(["haproxy", "-db", "-f", cfg], stdout=cls.hap_log,
                                   stderr=cls.hap_log)

        def accepting():
            try:
                RawClient.connect(HOST, cls.hap_port).close()
                return True
            except OSError:
                return False
        assert wait_until(accepting, 10), "haproxy did not start"

    @classmethod
    def tearDownClass(cls):
        cls.hap.terminate()
        cls.hap.wait(10)
        cls.hap_log.close()
        for p in cls.nodes.values():
            p.stop()
        cls.legacy.close()

    def log_in(self, user: str) -> None:
        """Through HAProxy, from the client's address."""
        session(RawClient.connect(HOST, self.hap_port, source=CLIENT, timeout=30), user)

    def all_done(self, users: list[str]) -> bool:
        """Every user's newest run is done and none is running, on either node; neither node
        has a job queued, running or waiting for a retry."""
        last: dict[str, tuple] = {}
        for r in runs_of():
            last[r[0]] = r
        if any(u not in last or last[u][3] != "done" for u in users):
            return False
        for p in self.nodes.values():
            if not p.running():
                continue
            for u in ask(p, {"cmd": "users"})["users"]:
                if u["user"] in users and u["state"] != "done":
                    return False
        return True

    def assert_exact(self, user: str) -> None:
        want = contents(bed().legacy, user, mapped=True)
        got = contents(bed().new, user, mapped=False)
        self.assertTrue(want, user)
        for name in sorted(set(want) | set(got)):
            w, g = want.get(name, Counter()), got.get(name, Counter())
            self.assertEqual(w, g, f"{user}: folder {name!r}: missing {sum((w - g).values())}, "
                             f"extra {sum((g - w).values())}")

    def assert_runs_never_overlap(self, user: str) -> None:
        runs = runs_of(user)
        for before, after in zip(runs, runs[1:]):
            # A run ends (or is cut off) before the next begins; seconds, so <=.
            self.assertLessEqual(before[5], after[4], runs)
            self.assertNotEqual(before[3], "running", runs)

    def test_1_logins_through_haproxy_land_on_both_nodes(self):
        errors: list[BaseException] = []
        todo = [u for u in USERS for _ in range(LOGINS_EACH)]
        lock = threading.Lock()
        scraped: list[str] = []

        def worker():
            while True:
                with lock:
                    if not todo:
                        return
                    user = todo.pop()
                try:
                    self.log_in(user)
                except BaseException as e:  # noqa: BLE001 -- reported below
                    errors.append(e)
        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        # node-b's metrics, scraped while the cluster migrates.
        with urllib.request.urlopen(f"http://{HOST}:{self.metrics_port}/metrics", timeout=5) as r:
            scraped.append(r.read().decode())
        for t in threads:
            t.join(120)
        self.assertEqual(errors, [])
        self.assertTrue(wait_until(lambda: self.all_done(USERS), 180),
                        "not all migrated: " + self.nodes["node-a"].log_tail(10) +
                        self.nodes["node-b"].log_tail(10))
        for user in USERS:
            with self.subTest(user=user):
                self.assert_exact(user)
                self.assert_runs_never_overlap(user)
        nodes = {r[2] for r in runs_of()}
        self.assertEqual(nodes, {"node-a", "node-b"}, "the runs did not land on both nodes")
        for p in self.nodes.values():
            self.assertIn(f"login ok user=user001 client={CLIENT}:", p.log())
        self.assertGreaterEqual(self.legacy.peak, 2)
        self.assertLessEqual(self.legacy.peak, LEGACY_CAP,
                             "[legacy] max_connections exceeded by the two nodes together")
        bed().new.wait_log(rf"Login: user=<user\d\d\d>.* rip={CLIENT.replace('.', '[.]')},")
        self.assertIn("suction_sessions_open", scraped[0])

    def test_2_a_killed_nodes_user_finishes_on_the_other_after_its_lease(self):
        a, b = self.nodes["node-a"], self.nodes["node-b"]
        # Straight to node-a (HAProxy's round robin would pick either), from the balancer's
        # address with a PROXY header: the client stays 127.0.0.3.
        self.log_in_direct(a, KILL_USER)

        def copying():
            u = ask(a, {"cmd": "user", "user": KILL_USER})
            return u.get("state") == "running" and u.get("progress", {}).get("messages_copied", 0) > 50
        self.assertTrue(wait_until(copying, 60), a.log_tail())
        # node-b's status shows the whole cluster: bob running on node-a.
        r = subprocess.run([SUCTION_BIN, "status", "--config", b.config_path, "--json"],
                           capture_output=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        cluster = json.loads(r.stdout)["cluster"]
        self.assertEqual(cluster["node"], "node-b")
        self.assertIn({"user": KILL_USER, "node": "node-a"},
                      [{"user": x["user"], "node": x["node"]} for x in cluster["running"]])
        r = subprocess.run([SUCTION_BIN, "status", "--config", b.config_path], capture_output=True,
                           timeout=30)
        self.assertRegex(r.stdout.decode(), r"cluster: +this node node-b; \d+ running on all nodes")
        self.assertRegex(r.stdout.decode(), rf"\n{KILL_USER} +node-a ")
        # ... and so does the report, from the shared runs.
        r = subprocess.run([SUCTION_BIN, "report", "--config", b.config_path, "--json"],
                           capture_output=True, timeout=30)
        rows = {u["user"]: u for u in json.loads(r.stdout)["users"]}
        self.assertEqual((rows[KILL_USER]["state"], rows[KILL_USER]["node"]), ("running", "node-a"))
        self.assertEqual(rows["user001"]["state"], "done")
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(10)
        self.assertEqual([r[3] for r in runs_of(KILL_USER)][-1], "running")
        killed_at = time.monotonic()
        # bob's client reconnects: HAProxy finds node-a down and sends it to node-b.
        self.log_in(KILL_USER)
        self.assertTrue(wait_until(lambda: runs_of(KILL_USER)[-1][3] == "done"
                                   and runs_of(KILL_USER)[-1][2] == "node-b", 120), b.log_tail())
        runs = runs_of(KILL_USER)
        self.assertEqual(runs[0][2], "node-a")
        self.assertEqual(runs[0][3], "interrupted", runs)
        # Not before node-a's lease ran out.
        self.assertGreaterEqual(time.monotonic() - killed_at, LEASE - 1)
        b.wait_log(r"migration user=bob result=failed .*is running on node node-a")
        self.assert_exact(KILL_USER)
        self.assert_runs_never_overlap(KILL_USER)

    def test_3_users_handed_over_on_one_node_are_run_by_both(self):
        a, b = self.nodes["node-a"], self.nodes["node-b"]
        if not a.running():
            a.start()   # test_2 killed it; its lease is long gone
        users = os.path.join(tmp_root(), "cluster-bulk.txt")
        with open(users, "w") as f:
            f.write("".join(u + "\n" for u in BULK))
        # Both nodes paused while the users are handed over on node-a: they wait in the shared
        # queue, then both nodes are let go at once and take them.
        for p in (a, b):
            self.assertEqual(ask(p, {"cmd": "pause"}), {"ok": True})
        r = subprocess.run([SUCTION_BIN, "migrate", "--config", a.config_path, "--users", users],
                           capture_output=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout.decode() + r.stderr.decode())
        self.assertEqual(_PG.psql("SELECT count(*) FROM job_queue"), str(len(BULK)))
        for p in (a, b):
            self.assertEqual(ask(p, {"cmd": "resume"}), {"ok": True})
        self.assertTrue(wait_until(lambda: self.all_done(BULK), 180),
                        a.log_tail(10) + b.log_tail(10))
        nodes = {r[2] for r in runs_of() if r[0] in BULK}
        self.assertEqual(nodes, {"node-a", "node-b"}, "the queue was not shared")
        for user in BULK:
            with self.subTest(user=user):
                self.assert_exact(user)
                self.assert_runs_never_overlap(user)
        self.assertEqual(_PG.psql("SELECT count(*) FROM job_queue"), "0")
        self.assertLessEqual(self.legacy.peak, LEGACY_CAP)
        for p in (a, b):
            self.assertNotIn(MASTER_PW, p.log())

    def test_4_a_draining_nodes_logins_are_run_by_the_other(self):
        a, b = self.nodes["node-a"], self.nodes["node-b"]
        if not a.running():
            a.start()
        self.assertEqual(ask(a, {"cmd": "drain"}), {"ok": True})
        self.assertEqual(ask(b, {"cmd": "pause"}), {"ok": True})
        try:
            for user in HANDED:
                self.log_in_direct(a, user)
            # node-b paused: they wait in the shared queue, as logins' jobs of node-a.
            queued = lambda: _PG.psql("SELECT \"user\", priority, login_node, client FROM job_queue"
                                      " ORDER BY \"user\"")
            want = "\n".join(f"{u}|0|node-a|{CLIENT}" for u in HANDED)
            self.assertTrue(wait_until(lambda: queued() == want, 30), queued())
            r = subprocess.run([SUCTION_BIN, "status", "--config", a.config_path],
                               capture_output=True, timeout=30)
            self.assertRegex(r.stdout.decode(), rf"\n{HANDED[0]} +pending \(cluster queue\) ")
            self.assertEqual(ask(b, {"cmd": "resume"}), {"ok": True})
            self.assertTrue(wait_until(lambda: self.all_done(HANDED), 120),
                            a.log_tail(10) + b.log_tail(10))
        finally:
            for p in (a, b):
                self.assertEqual(ask(p, {"cmd": "resume"}), {"ok": True})
        for user in HANDED:
            with self.subTest(user=user):
                a.wait_log(rf"cluster queue: user={user} login's job handed over")
                self.assertEqual([(r[2], r[3]) for r in runs_of(user)], [("node-b", "done")])
                self.assertEqual(_PG.psql(f"SELECT started_by FROM runs WHERE \"user\" = '{user}'"),
                                 "login")
                b.wait_log(rf"migration user={user} result=ok .* client={CLIENT} ")
                view = ask(a, {"cmd": "user", "user": user})
                self.assertEqual((view["state"], view["in_cluster_queue"]), ("done", False))
                self.assert_exact(user)
        self.assertEqual(_PG.psql("SELECT count(*) FROM job_queue"), "0")
        self.assertLessEqual(self.legacy.peak, LEGACY_CAP)

    def test_5_suction_sync_keeps_its_lease_through_a_silent_stretch(self):
        a = self.nodes["node-a"]
        pw = os.path.join(tmp_root(), "silent.pw")
        with open(pw, "w") as f:
            f.write(bed().users[SILENT] + "\n")
        left = lambda: _PG.psql(
            "SELECT lease_until_ms - (extract(epoch from clock_timestamp()) * 1000)::bigint"
            f" FROM runs WHERE \"user\" = '{SILENT}' AND result = 'running'")
        # Silent from the start: the run begins, then waits for legacy's greeting (within
        # the 10 s connect timeout) for longer than the lease.
        self.legacy.stalled = True
        stalled_at = time.monotonic()
        sync = subprocess.Popen([SUCTION_BIN, "sync", "--config", a.config_path, "--user", SILENT,
                                 "--password-file", pw, "--retries", "0"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            self.assertTrue(wait_until(lambda: left() != "", 5), "the run never began")
            lowest = LEASE * 1000
            deadline = stalled_at + LEASE + 2
            while time.monotonic() < deadline:
                ms = left()
                self.assertNotEqual(ms, "", "the run ended while legacy was silent")
                lowest = min(lowest, int(ms))
                time.sleep(0.2)
            # Renewed every third of the lease: never close to running out.
            self.assertGreater(lowest, 1000, "the run's lease ran out while legacy was silent")
        finally:
            self.legacy.stalled = False
            out, err = sync.communicate(timeout=120)
        self.assertEqual(sync.returncode, 0, err.decode())
        self.assertEqual([r[3] for r in runs_of(SILENT)], ["done"])
        self.assert_exact(SILENT)

    def log_in_direct(self, node: Proxy, user: str) -> None:
        src, dst = bytes([127, 0, 0, 3]), bytes([127, 0, 0, 1])
        body = src + dst + struct.pack("!HH", 40000, node.imap_port)
        header = (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", len(body))
                  + body)
        session(RawClient.connect(HOST, node.imap_port, source=BALANCER, timeout=30), user, header)


if __name__ == "__main__":
    unittest.main()
