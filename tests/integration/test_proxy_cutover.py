"""A cutover with names that change and two legacy servers (issue 10, musts 3, 4 and 5), against
real Dovecot servers: the bed (its legacy server is [legacy]) and a second bed whose legacy
server is [legacy_servers.old2]. The new server knows none of the users' passwords: every login
is checked on legacy ([auth] verify = "legacy") and the new server is logged in to with a master
user; mail is copied from the legacy name to the new name.

- Templates: `alice` on legacy is `alice@example.org` on the new server ([users] legacy = "%n",
  new = "%n@example.org"); logged in at once as "alice", "ALICE" and "alice*<legacy master>"
  (Dovecot's master-user form): one account, one job, never two runs at once; mailbox exact.
- The map file: a row sends `bob` to `robert@example.org`; a row added later is taken on
  SIGHUP; a bad row on SIGHUP is one error line naming file and line, and the old map stays.
- Two legacy servers: `user001@old2.example` is routed to old2 by [users] legacy_by_domain;
  the mail copied is old2's, not the default legacy's; old2's own max_connections holds
  (counted at a forwarder in front of it).
- `suction migrate --users LIST` (no --standalone) hands users who never logged in to the
  running daemon (the status socket's `enqueue`); `suction report` shows them queued (it asks
  the daemon); they are migrated with the legacy master user, exact, behind a login
  (max_concurrent_users = 1: the login's run comes first); `suction report` over the list
  then exits 0, each done by "bulk" with 0 bytes left.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import threading
import unittest

from netfault import Forwarder
from proxyfixture import SUCTION_BIN, Proxy, bed, login_through, start_bed, tmp_root
from syncfixture import messages
from test_migration_e2e import ask, seed, wait_state
from testbed import Testbed

MASTER, MASTER_PW = "cutover-master", "cut0ver-m4ster"
NEW_PW = "the-new-server-password-nobody-types"
_OLD2: Testbed | None = None


def setUpModule():
    global _OLD2
    tb = start_bed(seed=False, extra_users=6)
    for server in (tb.legacy, tb.new):
        server.add_master_user(MASTER, MASTER_PW)
    _OLD2 = Testbed(os.path.join(tmp_root(), "bed-old2"), seed=False, extra_users=1)
    unittest.addModuleCleanup(_OLD2.stop)
    _OLD2.start()
    _OLD2.legacy.add_master_user(MASTER, MASTER_PW)
    for name in ("alice", "robert", "u2.renamed", "user001", "user003", "user004", "user005",
                 "user006"):
        tb.new.add_user(f"{name}@example.org", NEW_PW)
    seed("alice", {"INBOX": 3, "INBOX.Mapped": 4}, tag="-tmpl")
    seed("bob", {"INBOX": 2, "INBOX.Row": 3}, tag="-row")
    seed("user002", {"INBOX": 2}, tag="-reload")
    seed("user001", {"INBOX": 5}, tag="-wrong-server")   # the default legacy's user001: not copied
    seed("user001", {"INBOX": 3, "INBOX.Old2": 2}, tag="-old2", server=_OLD2.legacy)
    for i in range(3, 7):
        seed(f"user{i:03d}", {"INBOX": 2, "INBOX.Bulk": 1 + i % 3}, tag=f"-bulk{i}")



def box(server, user: str, names: list[str], password: str | None = None) -> dict[str, list]:
    imap = server.connect(user, password=password)
    try:
        return {n: sorted(m[:3] for m in messages(imap, n)) for n in names}
    finally:
        imap.logout()


def new_box(user: str, names: list[str]) -> dict[str, list]:
    return box(bed().new, user, names, password=NEW_PW)


def secret_file(name: str, text: str) -> str:
    path = os.path.join(tmp_root(), name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    os.chmod(path, 0o600)
    return path


def write_map(rows: list[str]) -> str:
    path = os.path.join(tmp_root(), "map.csv")
    with open(path, "w", encoding="utf-8") as f:
        f.write("login,legacy_user,new_user,legacy_server\n" + "".join(r + "\n" for r in rows))
    return path


def cutover_config(old2_port: int, **sync) -> dict:
    pw = secret_file("master.pw", MASTER_PW)
    master = {"master_user": MASTER, "master_password_file": pw}
    return {
        "auth": {"verify": "legacy", "failure_delay": 0},
        "new": dict(master),
        "legacy": dict(master),
        "legacy_servers": {"old2": {"host": _OLD2.legacy.host, "port": old2_port, "tls": "none",
                                    "max_connections": 2, **master}},
        "users": {"legacy": "%n", "new": "%n@example.org",
                  "map_file": write_map(["bob,bob,robert@example.org"]),
                  "legacy_by_domain": {"old2.example": "old2"}},
        "sync": {"resync_interval": 0, "connections_per_user": 2, **sync},
    }


def login(p: Proxy, user: str, password: str) -> None:
    answer = login_through(p, user, password)
    assert answer == ("OK", b""), (user, answer, p.log_tail())


class Cutover(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.old2 = Forwarder((_OLD2.legacy.host, _OLD2.legacy.imap_port))
        cls.p = Proxy(overrides=cutover_config(cls.old2.port))
        cls.p.start()

    @classmethod
    def tearDownClass(cls):
        cls.p.stop()
        cls.old2.close()

    def test_1_template_names_one_account_three_spellings(self):
        tb, p = bed(), self.p
        spellings = [("alice", tb.users["alice"]), ("ALICE", tb.users["alice"]),
                     (f"alice*{MASTER}", MASTER_PW)]
        errors: list[BaseException] = []

        def one(user, pw):
            try:
                login(p, user, pw)
            except BaseException as e:   # noqa: BLE001 -- reported below
                errors.append(e)
        threads = [threading.Thread(target=one, args=s) for s in spellings for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertEqual(errors, [], p.log_tail())
        u = wait_state(p, "alice@example.org", ("done",), 60)
        # Every spelling is one account: one entry, keyed by the new name.
        names = [x["user"] for x in ask(p, {"cmd": "users"})["users"]]
        self.assertIn("alice@example.org", names)
        self.assertFalse([n for n in names if n.startswith("alice") and n != "alice@example.org"],
                         names)
        # ... and its runs never overlapped.
        runs = sorted(u["runs"], key=lambda r: r["id"])
        for before, after in zip(runs, runs[1:]):
            self.assertLessEqual(before["finished_at"], after["started_at"], runs)
        # The operator may ask by login too.
        self.assertEqual(ask(p, {"cmd": "user", "user": "Alice"})["user"], "alice@example.org")
        want = box(tb.legacy, "alice", ["INBOX", "INBOX.Mapped"])
        got = new_box("alice@example.org", ["INBOX", "Mapped"])
        self.assertEqual(len(want["INBOX.Mapped"]), 4)
        self.assertEqual(got, {"INBOX": want["INBOX"], "Mapped": want["INBOX.Mapped"]})
        p.wait_log(r"login ok user=\"?alice\*cutover-master\"? .*checked_by=legacy")
        self.assertNotIn(MASTER_PW, p.log())

    def test_2_map_file_row_and_sighup_reload(self):
        tb, p = bed(), self.p
        login(p, "bob", tb.users["bob"])
        wait_state(p, "robert@example.org", ("done",), 60)
        want = box(tb.legacy, "bob", ["INBOX", "INBOX.Row"])
        self.assertEqual(new_box("robert@example.org", ["INBOX", "Row"]),
                         {"INBOX": want["INBOX"], "Row": want["INBOX.Row"]})
        # A row added while running is taken on SIGHUP.
        mark = len(p.log())
        write_map(["bob,bob,robert@example.org", "user002,user002,u2.renamed@example.org"])
        p.signal(signal.SIGHUP)
        p.wait_log(r"SIGHUP: map_file reloaded: 2 rows from ", after=mark)
        login(p, "user002", tb.users["user002"])
        wait_state(p, "u2.renamed@example.org", ("done",), 60)
        self.assertEqual(new_box("u2.renamed@example.org", ["INBOX"]),
                         box(tb.legacy, "user002", ["INBOX"]))
        # A bad row: one error line naming file and line; the old map stays.
        mark = len(p.log())
        path = write_map(["bob,bob,robert@example.org", "user002,,u2.renamed@example.org"])
        p.signal(signal.SIGHUP)
        p.wait_log(r"SIGHUP: " + path + r":3: \[users\] map_file: legacy_user is empty", after=mark)
        login(p, "user002", tb.users["user002"])
        self.assertIsNone(ask(p, {"cmd": "user", "user": "user002@example.org"}).get("user"))
        write_map(["bob,bob,robert@example.org", "user002,user002,u2.renamed@example.org"])

    def test_3_second_legacy_server_by_domain(self):
        p = self.p
        login(p, "user001@old2.example", _OLD2.users["user001"])
        u = wait_state(p, "user001@example.org", ("done",), 60)
        self.assertEqual(u["legacy_server"], "old2")
        want = box(_OLD2.legacy, "user001", ["INBOX", "INBOX.Old2"])
        self.assertEqual(len(want["INBOX"]), 3)   # the default legacy's user001 has 5
        self.assertEqual(new_box("user001@example.org", ["INBOX", "Old2"]),
                         {"INBOX": want["INBOX"], "Old2": want["INBOX.Old2"]})
        self.assertGreaterEqual(self.old2.peak, 1)
        self.assertLessEqual(self.old2.peak, 2, "[legacy_servers.old2] max_connections exceeded")
        p.wait_log(r"migration user=\"?user001@example.org\"? result=ok .* legacy=127\.0\.0\.1:%d"
                   % self.old2.port)


class Enqueue(unittest.TestCase):
    """Users who never log in handed to the running daemon, behind a login."""

    def test_migrate_hands_users_to_the_daemon_behind_logins(self):
        tb = bed()
        old2 = Forwarder((_OLD2.legacy.host, _OLD2.legacy.imap_port))
        self.addCleanup(old2.close)
        with Proxy(overrides=cutover_config(old2.port, max_concurrent_users=1)) as p:
            config = p.config_path
            users = os.path.join(p.dir, "users.txt")
            with open(users, "w") as f:
                f.write("user003\nuser004\nuser005\n")
            self.assertEqual(ask(p, {"cmd": "pause"}), {"ok": True})
            r = subprocess.run([SUCTION_BIN, "migrate", "--config", config, "--users", users],
                               capture_output=True, timeout=60)
            self.assertEqual(r.returncode, 0, r.stdout.decode() + r.stderr.decode())
            self.assertIn("3 of 3 users queued by the daemon", r.stdout.decode())
            # The report asks the running daemon: queued, not "never seen".
            rep = subprocess.run([SUCTION_BIN, "report", "--config", config, "--users", users,
                                  "--json"], capture_output=True, timeout=60)
            self.assertEqual(rep.returncode, 1)
            self.assertEqual([u["state"] for u in json.loads(rep.stdout)["users"]],
                             ["queued"] * 3)
            # Queued while paused; then a user logs in: the login goes first.
            login(p, "user006", tb.users["user006"])
            self.assertEqual(ask(p, {"cmd": "resume"}), {"ok": True})
            for i in (3, 4, 5, 6):
                u = wait_state(p, f"user{i:03d}@example.org", ("done",), 90)
                self.assertEqual(u["queued_by"], "login" if i == 6 else "bulk")
            with sqlite3.connect(p.config["sync"]["state_db"]) as db:
                order = [row[0] for row in db.execute("SELECT user FROM runs ORDER BY id")]
            self.assertEqual(order[0], "user006@example.org", order)
            self.assertEqual(sorted(order[1:]),
                             ["user003@example.org", "user004@example.org", "user005@example.org"])
            for i in (3, 4, 5):
                user = f"user{i:03d}"
                want = box(tb.legacy, user, ["INBOX", "INBOX.Bulk"])
                self.assertEqual(new_box(f"{user}@example.org", ["INBOX", "Bulk"]),
                                 {"INBOX": want["INBOX"], "Bulk": want["INBOX.Bulk"]}, user)
            rep = subprocess.run([SUCTION_BIN, "report", "--config", config, "--users", users,
                                  "--json"], capture_output=True, timeout=60)
            self.assertEqual(rep.returncode, 0, rep.stdout.decode())
            done = json.loads(rep.stdout)
            self.assertEqual([(u["state"], u["done_by"], u["bytes_left"]) for u in done["users"]],
                             [("done", "bulk", 0)] * 3)
            self.assertTrue(done["all_done"])
            # Asked again: queued again (incremental), nothing new to copy.
            again = subprocess.run([SUCTION_BIN, "migrate", "--config", config, "--users", users,
                                    "--json"], capture_output=True, timeout=60)
            self.assertEqual(again.returncode, 0, again.stderr.decode())
            self.assertNotIn(MASTER_PW, p.log())


if __name__ == "__main__":
    unittest.main()
