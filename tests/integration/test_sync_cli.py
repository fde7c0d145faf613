"""`suction sync` (issue 4) against a private Dovecot test bed: an exact copy of alice's legacy
corpus into the new server, legacy untouched, folder plan, subscriptions, a no-change re-run,
--dry-run, --json, --password-file, a refused login (exit 3), an unreachable legacy (exit 1),
and the password never printed. The tests run in name order on one bed: test_1 must precede
test_2 (dry run before the first copy)."""

from __future__ import annotations

import json
import os
import unittest

from proxyfixture import SUCTION_BIN, bed, free_ports, start_bed, tmp_root
from syncfixture import (expected_corpus, expected_name, folders, instant, legacy_state, messages,
                         run_sync, subscriptions, write_config)

PASSWORD = "wonderland"  # alice's password on the bed (checked in setUpModule)
OUTPUTS: list[bytes] = []  # every stdout/stderr of suction: none may hold the password

def setUpModule():
    tb = start_bed(seed=True)
    assert tb.users["alice"] == PASSWORD


def run(*args, **kw):
    p = run_sync(*args, **kw)
    OUTPUTS.append(p.stdout)
    OUTPUTS.append(p.stderr)
    return p


class SyncCli(unittest.TestCase):
    config: str = ""
    legacy_before: dict = {}

    @classmethod
    def setUpClass(cls):
        cls.config = write_config()
        imap = bed().legacy.connect("alice")
        try:
            cls.legacy_before = legacy_state(imap)
        finally:
            imap.logout()
        # The snapshot has something to compare: every folder, flags included.
        assert len(cls.legacy_before) >= 15, cls.legacy_before.keys()
        assert any(flags for _, flags in cls.legacy_before.values())

    def assertNoPassword(self):
        for out in OUTPUTS:
            self.assertNotIn(PASSWORD.encode(), out)

    # ---- 1: the dry run, before anything was copied
    def test_1_dry_run_prints_plan_copies_nothing(self):
        p = run(self.config, extra=["--dry-run"])
        out = p.stdout.decode()
        self.assertEqual(p.returncode, 0, p.stderr.decode() + out)
        self.assertIn("INBOX.Sent Items -> Sent", out)
        self.assertIn("INBOX.Projects.2024.Q1 -> Projects/2024/Q1", out)
        self.assertIn("INBOX.日本語 -> 日本語", out)
        self.assertIn("INBOX -> INBOX  22 messages, 22 to copy", out)
        j = run(self.config, extra=["--dry-run", "--json"])
        self.assertEqual(j.returncode, 0, j.stderr)
        rep = json.loads(j.stdout)
        self.assertTrue(rep["dry_run"])
        self.assertEqual(rep["messages_copied"], 0)
        corpus = bed().corpus()["folders"]
        self.assertEqual(sum(f["to_copy"] for f in rep["folders"]),
                         sum(len(v["messages"]) for v in corpus.values()))
        imap = bed().new.connect("alice")
        try:
            names = {f["name"] for f in folders(imap)}
            self.assertNotIn("Projects", names)
            self.assertNotIn("Empty", names)
            self.assertEqual(messages(imap, "INBOX"), [])
        finally:
            imap.logout()
        self.assertNoPassword()

    # ---- 2: the copy, exact, and a no-change re-run
    def test_2_copy_is_exact_and_incremental(self):
        p = run(self.config, extra=["--json"])
        self.assertEqual(p.returncode, 0, p.stderr.decode() + p.stdout.decode())
        rep = json.loads(p.stdout)
        corpus = bed().corpus()
        self.assertEqual(rep["outcome"], "ok")
        self.assertEqual(rep["messages_copied"], corpus["total_messages"])
        self.assertEqual(rep["bytes"], corpus["total_bytes"])
        self.assertEqual(rep["messages_failed"], 0)
        self.assertEqual(rep["folders_copied"], rep["folders_planned"])
        mapping = {f["legacy"]: f["new"] for f in rep["folders"]}
        for legacy in corpus["folders"]:
            self.assertEqual(mapping.get(legacy), expected_name(legacy), legacy)

        expected = expected_corpus()
        imap = bed().new.connect("alice")
        try:
            listed = {f["name"]: f for f in folders(imap)}
            for name in ("Empty", "Ghost", "Ghost/Child", "Projects/2024/Q1", "日本語"):
                self.assertIn(name, listed)
            for name in ("Empty", "Ghost"):  # real folders, not implicit parents
                attrs = [a.lower() for a in listed[name]["attrs"]]
                self.assertNotIn("\\noselect", attrs, name)
                self.assertNotIn("\\nonexistent", attrs, name)
            for name, want in expected.items():
                got = [m[:3] for m in messages(imap, name)]
                self.assertEqual(sorted(got), sorted(want), name)
            subs = subscriptions(imap)
            for legacy, info in corpus["folders"].items():
                if info["subscribed"]:
                    self.assertIn(expected_name(legacy), subs, legacy)
            for name in ("Say \"hi\"", "Tom & Jerry"):  # not subscribed on legacy
                self.assertNotIn(name, subs)
        finally:
            imap.logout()

        # Legacy untouched.
        imap = bed().legacy.connect("alice")
        try:
            self.assertEqual(legacy_state(imap), self.legacy_before)
        finally:
            imap.logout()

        # The run is recorded in the state store ([sync] state_db, its folder created).
        import sqlite3
        db = os.path.join(os.path.dirname(self.config), "state", "state.db")
        con = sqlite3.connect(db)
        try:
            row = con.execute("SELECT result, messages_copied, bytes_copied, messages_failed"
                              " FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        finally:
            con.close()
        self.assertEqual(row, ("done", corpus["total_messages"], corpus["total_bytes"], 0))

        # A second run copies nothing.
        again = run(self.config, extra=["--json"])
        self.assertEqual(again.returncode, 0, again.stderr)
        rep2 = json.loads(again.stdout)
        self.assertEqual(rep2["messages_copied"], 0)
        self.assertEqual(rep2["bytes"], 0)
        self.assertEqual(sum(f["to_copy"] for f in rep2["folders"]), 0)
        # No change on legacy (CONDSTORE: STATUS HIGHESTMODSEQ as stored): every
        # folder skipped after its STATUS, none EXAMINEd, yet all are done.
        self.assertGreater(rep["folders_examined"], 0)
        self.assertEqual(rep2["folders_examined"], 0)
        self.assertEqual(rep2["folders_copied"], rep2["folders_planned"])
        # Dovecot offers LIST-STATUS: the STATUS of every folder came with the
        # LIST, no STATUS command per folder.
        self.assertEqual(rep2["legacy_status_commands"], 0)
        self.assertEqual(sum(f["legacy_messages"] for f in rep2["folders"]),
                         bed().corpus()["total_messages"])
        # The readable report says the same.
        text = run(self.config)
        self.assertEqual(text.returncode, 0, text.stderr)
        self.assertIn("0 messages copied", text.stdout.decode())
        self.assertIn("INBOX.Sent Items -> Sent", text.stdout.decode())
        self.assertNoPassword()

    # ---- password sources and failures
    def test_3_password_file(self):
        pw = os.path.join(tmp_root(), "alice.pw")
        with open(pw, "w") as f:
            f.write(PASSWORD + "\n")
        os.chmod(pw, 0o600)
        p = run(self.config, password_file=pw, extra=["--dry-run", "--json"])
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(json.loads(p.stdout)["outcome"], "ok")
        missing = run(self.config, password_file=pw + ".missing", extra=["--dry-run"])
        self.assertEqual(missing.returncode, 2)
        self.assertIn(b"cannot read the password file", missing.stderr)
        empty = os.path.join(tmp_root(), "empty.pw")
        open(empty, "w").close()
        e = run(self.config, password_file=empty, extra=["--dry-run"])
        self.assertEqual(e.returncode, 2)
        self.assertIn(b"empty", e.stderr)
        # CRLF line ends and a second line: the first line, without its CR, is the password.
        crlf = os.path.join(tmp_root(), "crlf.pw")
        with open(crlf, "wb") as f:
            f.write(PASSWORD.encode() + b"\r\nnot this\n")
        c = run(self.config, password_file=crlf, extra=["--dry-run"])
        self.assertEqual(c.returncode, 0, c.stderr)
        # A line longer than any password is refused, not cut.
        long = run(self.config, password="x" * 5000, extra=["--dry-run"])
        self.assertEqual(long.returncode, 2)
        self.assertIn(b"at most 4096 bytes", long.stderr)
        self.assertNoPassword()

    def test_4_wrong_password_exits_3(self):
        p = run(self.config, password="not-" + PASSWORD + "-x")
        self.assertEqual(p.returncode, 3, p.stderr + p.stdout)
        tb = bed()
        self.assertIn(f"legacy server {tb.legacy.host}:{tb.legacy.imap_port} refused the login"
                      .encode(), p.stderr)
        self.assertNotIn(b"not-wonderland-x", p.stdout + p.stderr)
        self.assertNoPassword()

    def test_5_unreachable_legacy_exits_1(self):
        port = free_ports(1)[0]
        cfg = write_config({"legacy": {"port": port}})
        p = run(cfg, extra=["--retries", "0"])  # retries: test_sync_engine
        self.assertEqual(p.returncode, 1, p.stderr + p.stdout)
        self.assertIn(f"127.0.0.1:{port}".encode(), p.stderr)
        self.assertNoPassword()

    def test_6_password_never_in_argv_or_output(self):
        # No option takes the password on the command line.
        p = run(self.config, stdin=False)
        self.assertEqual(p.returncode, 2)
        p = run(self.config, stdin=False, extra=["--password", PASSWORD])
        self.assertEqual(p.returncode, 2)
        OUTPUTS.pop()  # the rejected argv may be echoed back: it was the caller's own argv
        OUTPUTS.pop()
        self.assertNoPassword()

    def test_6b_new_server_refusing_exits_3(self):
        # A scripted "new server" that refuses every LOGIN.
        import socket
        import threading
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(4)
        srv.settimeout(30)
        port = srv.getsockname()[1]
        seen: list[bytes] = []

        def serve():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                conn.sendall(b"* OK [CAPABILITY IMAP4rev1 LITERAL+] fake ready\r\n")
                buf = b""
                try:
                    while True:
                        data = conn.recv(4096)
                        if not data:
                            return
                        buf += data
                        while b"\r\n" in buf:
                            line, buf = buf.split(b"\r\n", 1)
                            seen.append(line)
                            tag = line.split(b" ", 1)[0]
                            if b" LOGIN " in line.upper():
                                conn.sendall(tag + b" NO [AUTHENTICATIONFAILED] Authentication failed.\r\n")
                            elif b" LOGOUT" in line.upper():
                                conn.sendall(b"* BYE\r\n" + tag + b" OK bye\r\n")
                                return
                            else:
                                conn.sendall(tag + b" BAD unexpected\r\n")
                except OSError:
                    return

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        try:
            cfg = write_config({"new": {"port": port}})
            p = run(cfg)
        finally:
            srv.close()
            t.join(10)
        self.assertEqual(p.returncode, 3, p.stderr + p.stdout)
        self.assertIn(f"new server 127.0.0.1:{port} refused the login".encode(), p.stderr)
        self.assertTrue(any(b"LOGIN" in l.upper() for l in seen), seen)
        self.assertNoPassword()

    # ---- last: it changes legacy
    def test_7_new_legacy_mail_is_the_only_copy(self):
        p = run(self.config, extra=["--json"])  # up to date first (whatever ran before)
        self.assertIn(p.returncode, (0, 4), p.stderr)
        body = (b"From: x@example.org\r\nTo: alice@example.org\r\nSubject: late\r\n"
                b"Message-ID: <late-1@example.org>\r\n\r\nadded after the first run\r\n")
        imap = bed().legacy.connect("alice")
        try:
            typ, data = imap.append("INBOX.Projects", "(\\Flagged $Late)",
                                    '"01-Feb-2024 10:00:00 +0100"', body)
            self.assertEqual(typ, "OK", data)
        finally:
            imap.logout()
        p = run(self.config, extra=["--json"])
        self.assertEqual(p.returncode, 0, p.stderr)
        rep = json.loads(p.stdout)
        self.assertEqual(rep["messages_copied"], 1)
        self.assertEqual(rep["bytes"], len(body))
        per = {f["legacy"]: f["copied"] for f in rep["folders"]}
        self.assertEqual(per["INBOX.Projects"], 1)
        self.assertEqual(rep["folders_examined"], 1)  # only the folder with new mail
        imap = bed().new.connect("alice")
        try:
            got = messages(imap, "Projects")
        finally:
            imap.logout()
        import hashlib
        late = [m for m in got if m[0] == hashlib.sha256(body).hexdigest()]
        self.assertEqual(len(late), 1, got)
        self.assertEqual(late[0][1], ("$Late", "\\Flagged"))
        self.assertEqual(late[0][2], instant("01-Feb-2024 10:00:00 +0100"))
        again = run(self.config, extra=["--json"])
        self.assertEqual(json.loads(again.stdout)["messages_copied"], 0)
        self.assertEqual(json.loads(again.stdout)["folders_examined"], 0)

        # A flag set on legacy (no new mail): HIGHESTMODSEQ moved, so that
        # folder alone is examined and the flag carried over.
        imap = bed().legacy.connect("alice")
        try:
            typ, data = imap.select('"INBOX.Projects"')
            self.assertEqual(typ, "OK", data)
            typ, data = imap.search(None, "HEADER", "Message-ID", "<late-1@example.org>")
            self.assertEqual(typ, "OK", data)
            num = data[0].split()[-1]
            typ, data = imap.store(num, "+FLAGS", "(\\Seen)")
            self.assertEqual(typ, "OK", data)
        finally:
            imap.logout()
        p = run(self.config, extra=["--json"])
        self.assertEqual(p.returncode, 0, p.stderr)
        rep = json.loads(p.stdout)
        self.assertEqual(rep["messages_copied"], 0)
        self.assertEqual(rep["folders_examined"], 1)
        per = {f["legacy"]: f["flags_updated"] for f in rep["folders"]}
        self.assertEqual(per["INBOX.Projects"], 1)
        imap = bed().new.connect("alice")
        try:
            got = messages(imap, "Projects")
        finally:
            imap.logout()
        late = [m for m in got if m[0] == hashlib.sha256(body).hexdigest()]
        self.assertEqual(late[0][1], ("$Late", "\\Flagged", "\\Seen"))
        self.assertNoPassword()

    def test_8_report_says_who_is_done(self):
        """`suction report` (issue 10 must 6) over a users file: states from the state store,
        JSON, CSV, and exit 0 only once every listed user is done."""
        import subprocess
        db = os.path.join(tmp_root(), "report", "state.db")
        config = write_config(state_db=db)
        users = os.path.join(tmp_root(), "report", "users.csv")
        os.makedirs(os.path.dirname(users), exist_ok=True)
        with open(users, "w") as f:
            f.write("# login,legacy_user,new_user\nalice,alice,alice\nBob\n\ndave\n")

        def report(*extra):
            return subprocess.run([SUCTION_BIN, "report", "--config", config, "--users", users,
                                   *extra], capture_output=True, timeout=30)
        self.assertEqual(run_sync(config, "alice").returncode, 0)
        self.assertEqual(run_sync(config, "bob", password="wrong").returncode, 3)
        r = report("--json")
        self.assertEqual(r.returncode, 1, r.stderr)
        doc = json.loads(r.stdout)
        states = {u["user"]: u["state"] for u in doc["users"]}
        self.assertEqual(states, {"alice": "done", "Bob": "failed", "dave": "never_seen"})
        bob = next(u for u in doc["users"] if u["user"] == "Bob")
        self.assertIn("refused the login", bob["error"])
        self.assertEqual(doc["counts"]["done"], 1)
        self.assertFalse(doc["all_done"])
        alice = next(u for u in doc["users"] if u["user"] == "alice")
        self.assertRegex(alice["done_at"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
        r = report("--csv")
        lines = r.stdout.decode().splitlines()
        self.assertEqual(lines[0], "user,state,runs,last_run_at,done_at,messages_copied,"
                                   "bytes_copied,error,done_by,bytes_left")
        self.assertEqual([l.split(",")[:2] for l in lines[1:]],
                         [["alice", "done"], ["Bob", "failed"], ["dave", "never_seen"]])
        r = report()
        self.assertIn("not done: 2 of 3 users", r.stdout.decode())
        # bob migrated after all (his login name in another case is the same user), dave
        # taken off the list: every listed user done.
        self.assertEqual(run_sync(config, "bob").returncode, 0)
        with open(users, "w") as f:
            f.write("alice\nBob\n")
        r = report()
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertIn("every listed user is done", r.stdout.decode())
        # A users file that cannot be read: exit 2, one line.
        r = subprocess.run([SUCTION_BIN, "report", "--config", config, "--users", "/nonexistent"],
                           capture_output=True, timeout=30)
        self.assertEqual(r.returncode, 2)
        self.assertEqual(r.stderr.decode(), "suction report: cannot read /nonexistent\n")


if __name__ == "__main__":
    unittest.main()
