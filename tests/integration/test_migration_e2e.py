"""Migrate at login, end to end (issue 5): users log in through `suction proxy` with imaplib; the
test watches the real status socket until their migration is done and compares the new server
with legacy exactly (sha256 of every message, flags, INTERNALDATE). Also: a second login copies
only what legacy got in between; one job per user and resync_interval; resync/pause/resume/drain
and credential_ttl through the socket; a storm of 50 users with the caps counted at a forwarder
in front of legacy; legacy down at login (the login works, the job retries and completes); a
killed daemon's job shows "interrupted" after the restart and resumes at the next login; no
password in any answer or log."""

from __future__ import annotations

import imaplib
import json
import os
import socket
import subprocess
import threading
import time
import unittest

from netfault import Forwarder, TempfailFront
from proxyfixture import SUCTION_BIN, Proxy, bed, qmailbox, start_bed, wait_until
from syncfixture import expected_corpus, legacy_state, mailbox, run_sync, write_config
from testbed import extra_user_names

STORM = 50
ANSWERS: list[str] = []  # every status answer: none may hold a password


def setUpModule():
    start_bed(seed=True, extra_users=STORM)


def ask(proxy: Proxy, request: dict, timeout: float = 5.0) -> dict:
    path = proxy.config["status"]["socket"]
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall((json.dumps(request) + "\n").encode())
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    ANSWERS.append(buf.decode())
    return json.loads(buf)


def wait_state(proxy: Proxy, user: str, states: tuple[str, ...], timeout: float,
               runs: int | None = None) -> dict:
    """Polls {"cmd":"user"} until the user is in one of `states` (and has `runs` runs)."""
    last = {}

    def look():
        nonlocal last
        last = ask(proxy, {"cmd": "user", "user": user})
        if last.get("state") in states and (runs is None or len(last.get("runs", [])) >= runs):
            return last
        return None
    got = wait_until(look, timeout, step=0.1)
    if not got:
        raise AssertionError(f"{user} not in {states} within {timeout}s: {last}\n"
                             + proxy.log_tail())
    return got


def login(proxy: Proxy, user: str, typed: str | None = None) -> None:
    """Logs in through the proxy (as `typed`, e.g. in other letter case) and out again; the
    login must succeed."""
    imap = proxy.imap()
    try:
        password = bed().users[user]
        user = typed or user
        if password.isascii():
            imap.login(user, password)
        else:
            blob = b"\0" + user.encode() + b"\0" + password.encode()
            imap.authenticate("PLAIN", lambda _: blob)
        imap.logout()
    except BaseException:
        imap.shutdown()
        raise


def seed(user: str, per_folder: dict[str, int], size: int = 3000, tag: str = "",
         server=None) -> None:
    """Appends messages to the user's folders on `server` (default: the bed's legacy)."""
    imap = (server or bed().legacy).connect(user)
    try:
        for folder, count in per_folder.items():
            if folder != "INBOX":
                imap.create(qmailbox(folder))
            for i in range(count):
                body = (f"From: x@example.org\r\nTo: {user}@example.org\r\nSubject: {folder} {i}"
                        f"{tag}\r\nMessage-ID: <{user}-{folder}-{i}{tag}@example.org>\r\n\r\n"
                        ).encode() + (b"%d " % i) * (size // 4)
                typ, data = imap.append(qmailbox(folder), "(\\Seen)" if i % 2 else None,
                                        '"%02d-Mar-2024 10:%02d:00 +0100"' % (1 + i % 28, i % 60),
                                        body)
                assert typ == "OK", data
    finally:
        imap.logout()


def assert_exact_corpus(tc: unittest.TestCase, user: str = "alice") -> None:
    expected = expected_corpus()
    got = mailbox(bed().new, user, list(expected))
    for name, want in expected.items():
        tc.assertEqual(got[name], sorted(want), name)


class MigrationE2E(unittest.TestCase):

    def assertNoSecrets(self, proxy: Proxy | None = None):
        texts = list(ANSWERS) + ([proxy.log()] if proxy else [])
        for pw in bed().users.values():
            for t in texts:
                self.assertNotIn(pw, t)

    # ---- 1: a login migrates the user exactly; the next login copies only what is new
    def test_1_login_migrates_and_next_login_copies_only_new(self):
        legacy_before = None
        imap = bed().legacy.connect("alice")
        try:
            legacy_before = legacy_state(imap)
        finally:
            imap.logout()
        with Proxy(overrides={"sync": {"resync_interval": 0}}) as p:
            t0 = time.monotonic()
            login(p, "alice")
            login_s = time.monotonic() - t0
            u = wait_state(p, "alice", ("done", "failed"), 90)
            self.assertEqual(u["state"], "done", u)
            total = bed().corpus()["total_messages"]
            self.assertEqual(u["runs"][0]["result"], "done")
            self.assertEqual(u["runs"][0]["messages_copied"], total)
            self.assertEqual(u["progress"]["messages_copied"], total)
            self.assertEqual(u["progress"]["folders_done"], u["progress"]["folders_total"])
            assert_exact_corpus(self)
            imap = bed().legacy.connect("alice")
            try:
                self.assertEqual(legacy_state(imap), legacy_before)  # legacy untouched
            finally:
                imap.logout()
            # One grep-able line for the run: user, client address, backends, result, duration.
            line = p.wait_log(r"migration user=alice result=ok folders=\d+/\d+ copied=%d bytes=\d+"
                              r" failed=0 duration=[\d.]+s client=127\.0\.0\.1 legacy=127\.0\.0\.1:%d"
                              r" new=127\.0\.0\.1:%d attempt=1" % (total, bed().legacy.imap_port,
                                                                   bed().new.imap_port))
            self.assertTrue(line)
            self.assertLess(login_s, 5.0)  # sanity only; latency is measured in tests/bench
            st = ask(p, {"cmd": "status"})
            self.assertEqual(st["migration"]["users_done"], 1)
            self.assertEqual(st["migration"]["messages_copied"], total)
            self.assertGreaterEqual(st["proxy"]["logins_ok"], 1)

            # New legacy mail: the next login copies it and nothing else.
            seed("alice", {"INBOX": 1}, tag="-late")
            login(p, "alice")
            u = wait_state(p, "alice", ("done", "failed"), 60, runs=2)
            self.assertEqual(u["state"], "done", u)
            self.assertEqual(u["runs"][0]["messages_copied"], 1)
            got = mailbox(bed().new, "alice", ["INBOX"])["INBOX"]
            want = mailbox(bed().legacy, "alice", ["INBOX"])["INBOX"]
            self.assertEqual(got, want)

            # `suction status` against the real daemon.
            out = subprocess.run([SUCTION_BIN, "status", "--socket", p.config["status"]["socket"]],
                                 capture_output=True, timeout=30)
            self.assertEqual(out.returncode, 0, out.stderr)
            self.assertRegex(out.stdout.decode(), r"alice\s+done")
            ANSWERS.append(out.stdout.decode())
            self.assertNoSecrets(p)

    # ---- 2: one job per user, resync_interval, operator commands, credential_ttl
    def test_2_one_job_per_user_and_operator_commands(self):
        seed("bob", {"INBOX": 40}, size=20000)
        with Proxy(overrides={"sync": {"resync_interval": 600, "credential_ttl": 4,
                                       "batch_messages": 2}}) as p:
            login(p, "bob")
            login(p, "bob")  # while the first job is queued or running: nothing new
            u = wait_state(p, "bob", ("done", "failed"), 60)
            self.assertEqual(u["state"], "done", u)
            self.assertEqual(len(u["runs"]), 1, u)
            login(p, "bob")  # done less than resync_interval ago: nothing new
            login(p, "bob", typed="BoB")  # the same user in other letters (fold_user_case)
            time.sleep(0.5)
            self.assertEqual(len(ask(p, {"cmd": "user", "user": "bob"})["runs"]), 1)
            self.assertEqual(ask(p, {"cmd": "user", "user": "BOB"})["user"], "bob")
            self.assertNotIn("BoB", [u["user"] for u in ask(p, {"cmd": "users"})["users"]])
            self.assertEqual(mailbox(bed().new, "bob", ["INBOX"]),
                             mailbox(bed().legacy, "bob", ["INBOX"]))

            # The operator asks for a pass: credentials are still held.
            self.assertEqual(ask(p, {"cmd": "resync", "user": "bob"}), {"ok": True})
            u = wait_state(p, "bob", ("done", "failed"), 60, runs=2)
            self.assertEqual(u["runs"][0]["messages_copied"], 0)
            self.assertIn("error", ask(p, {"cmd": "resync", "user": "nobody"}))

            # Paused: a login queues, nothing starts; resume starts it.
            self.assertEqual(ask(p, {"cmd": "pause"}), {"ok": True})
            login(p, "carol")
            time.sleep(1.0)
            self.assertEqual(ask(p, {"cmd": "user", "user": "carol"})["state"], "pending")
            self.assertTrue(ask(p, {"cmd": "status"})["migration"]["paused"])
            self.assertEqual(ask(p, {"cmd": "resume"}), {"ok": True})
            wait_state(p, "carol", ("done",), 60)
            # Drain: nothing new starts until resume.
            self.assertEqual(ask(p, {"cmd": "drain"}), {"ok": True})
            self.assertEqual(ask(p, {"cmd": "resync", "user": "carol"}), {"ok": True})
            time.sleep(1.0)
            self.assertEqual(ask(p, {"cmd": "user", "user": "carol"})["state"], "pending")
            self.assertTrue(ask(p, {"cmd": "status"})["migration"]["draining"])
            ask(p, {"cmd": "resume"})
            wait_state(p, "carol", ("done",), 60, runs=2)

            # credential_ttl: after 4 s the credentials are gone; a resync says why not.
            self.assertTrue(wait_until(
                lambda: not ask(p, {"cmd": "user", "user": "bob"})["credentials_held"], 10))
            err = ask(p, {"cmd": "resync", "user": "bob"})
            self.assertIn("no credentials held for bob", err.get("error", ""))
            p.wait_log(r"credentials dropped user=bob")
            self.assertNoSecrets(p)

    # ---- 3: 50 users at once, the caps counted where legacy sees them
    def test_3_login_storm_respects_the_caps(self):
        users = list(extra_user_names(STORM))
        for u in users:
            seed(u, {"INBOX": 3, "INBOX.Box": 2}, size=2000)
        tb = bed()
        fwd = Forwarder((tb.legacy.host, tb.legacy.imap_port))
        try:
            # parallel_threshold 0: each job opens both pairs even for its 5 messages, so
            # the cap on legacy connections is reached, not only reserved.
            overrides = {"legacy": {"port": fwd.port, "max_connections": 6},
                         "sync": {"connections_per_user": 2, "max_concurrent_users": 4,
                                  "parallel_threshold": 0}}
            with Proxy(overrides=overrides) as p:
                errors: list[BaseException] = []

                def one(user):
                    try:
                        login(p, user)
                    except BaseException as e:  # noqa: BLE001 - reported below
                        errors.append(e)
                threads = [threading.Thread(target=one, args=(u,)) for u in users]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(60)
                self.assertEqual(errors, [])
                peak_running = 0

                def all_done():
                    nonlocal peak_running
                    st = ask(p, {"cmd": "status"})["migration"]
                    peak_running = max(peak_running, st["users_running"])
                    self.assertLessEqual(st["legacy_connections"], 6)
                    return st["users_done"] == STORM or None
                self.assertTrue(wait_until(all_done, 180, step=0.2),
                                ask(p, {"cmd": "status"}))
                listed = {u["user"]: u["state"] for u in ask(p, {"cmd": "users"})["users"]}
                self.assertEqual(set(listed), set(users))
                self.assertEqual(set(listed.values()), {"done"})
        finally:
            fwd.close()
        self.assertLessEqual(fwd.peak, 6)           # [legacy] max_connections, at legacy's door
        self.assertGreaterEqual(fwd.peak, 4)        # ... and the storm did reach it
        self.assertLessEqual(peak_running, 4)       # [sync] max_concurrent_users (sampled)
        for u in users:
            self.assertEqual(mailbox(tb.new, u, ["INBOX", "Box"]),
                             {"INBOX": mailbox(tb.legacy, u, ["INBOX"])["INBOX"],
                              "Box": mailbox(tb.legacy, u, ["INBOX.Box"])["INBOX.Box"]}, u)

    # ---- 4: legacy down at login
    def test_4_legacy_down_at_login_retries_until_it_is_back(self):
        user = "user001"  # migrated by the storm already? use its own folder below
        seed(user, {"INBOX.Late": 4}, tag="-down")
        tb = bed()
        fwd = Forwarder((tb.legacy.host, tb.legacy.imap_port))
        fwd.down = True
        try:
            with Proxy(overrides={"legacy": {"port": fwd.port}}) as p:
                login(p, user)  # the login works with legacy down
                u = wait_state(p, user, ("pending",), 20)
                self.assertTrue(wait_until(
                    lambda: ask(p, {"cmd": "user", "user": user})["attempts"] >= 1, 20))
                u = ask(p, {"cmd": "user", "user": user})
                self.assertIsNotNone(u["retry_at"], u)
                self.assertIn(f"127.0.0.1:{fwd.port}", u["last_error"] or "")
                p.wait_log(rf"migration user={user} result=failed .* retry_in=5\.0s")
                fwd.down = False
                u = wait_state(p, user, ("done",), 60)
                self.assertEqual(u["runs"][0]["result"], "done")
        finally:
            fwd.close()
        self.assertGreaterEqual(fwd.refused, 1)
        self.assertEqual(mailbox(tb.new, user, ["Late"])["Late"],
                         mailbox(tb.legacy, user, ["INBOX.Late"])["INBOX.Late"])

    # ---- 5: a daemon killed mid-job: "interrupted" after the restart, resumed at the next login
    def test_5_killed_daemon_job_is_interrupted_then_resumed(self):
        user = "user002"
        seed(user, {"INBOX.Big": 150}, size=60000, tag="-big")
        with Proxy(overrides={"sync": {"batch_messages": 1, "connections_per_user": 1}}) as p:
            login(p, user)
            self.assertTrue(wait_until(
                lambda: ask(p, {"cmd": "user", "user": user})["progress"]["messages_copied"] >= 5,
                60, step=0.02))
            # One migration per user, also across processes: `suction sync` beside the daemon.
            r = run_sync(write_config(state_db=p.config["sync"]["state_db"]), user=user,
                         extra=["--retries", "0"])
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn(f"a migration of {user} is running in process {p.proc.pid}",
                          r.stderr.decode())
            p.proc.kill()
            p.proc.wait(10)
            state_db, sock = p.config["sync"]["state_db"], p.config["status"]["socket"]
        with Proxy(overrides={"sync": {"state_db": state_db}, "status": {"socket": sock}}) as p2:
            u = ask(p2, {"cmd": "user", "user": user})
            self.assertEqual(u["state"], "interrupted", u)
            self.assertEqual(u["runs"][0]["result"], "interrupted")
            login(p2, user)
            u = wait_state(p2, user, ("done",), 90, runs=2)
        self.assertEqual(mailbox(bed().new, user, ["Big"])["Big"],
                         mailbox(bed().legacy, user, ["INBOX.Big"])["INBOX.Big"])

        # SIGTERM during a job: a clean exit (0), the run interrupted, resumed next time.
        seed(user, {"INBOX.More": 150}, size=60000, tag="-more")
        overrides = {"sync": {"state_db": state_db, "batch_messages": 1, "resync_interval": 0,
                              "connections_per_user": 1},
                     "status": {"socket": sock}}
        p3 = Proxy(overrides=overrides).start()
        try:
            login(p3, user)
            self.assertTrue(wait_until(
                lambda: (ask(p3, {"cmd": "user", "user": user})["state"] == "running" and
                         ask(p3, {"cmd": "user", "user": user})["progress"]["messages_copied"] >= 5),
                60, step=0.02))
        finally:
            code = p3.stop()
        self.assertEqual(code, 0, p3.log_tail())
        self.assertFalse(p3.killed)
        # The job was cut off and unwound before the daemon exited (its coroutines are not
        # destroyed suspended): its own line says so.
        self.assertRegex(p3.log(), rf"migration user={user} result=interrupted failure=stopped ")
        with Proxy(overrides=overrides) as p4:
            u = ask(p4, {"cmd": "user", "user": user})
            self.assertEqual(u["state"], "interrupted", u)
            self.assertEqual(u["runs"][0]["result"], "interrupted")
            login(p4, user)
            wait_state(p4, user, ("done",), 90, runs=4)
        self.assertEqual(mailbox(bed().new, user, ["More"])["More"],
                         mailbox(bed().legacy, user, ["INBOX.More"])["INBOX.More"])

    # ---- 4b: legacy refusing the login for now (NO [UNAVAILABLE]) is retried, not a failure
    def test_4b_legacy_unavailable_twice_then_done(self):
        user = "user004"
        seed(user, {"INBOX.Busy": 3}, tag="-busy")
        tb = bed()
        front = TempfailFront((tb.legacy.host, tb.legacy.imap_port), refusals=2)
        try:
            with Proxy(overrides={"legacy": {"port": front.port}}) as p:
                login(p, user)
                self.assertTrue(wait_until(lambda: front.refused >= 1, 20))
                u = wait_state(p, user, ("pending",), 20)
                self.assertTrue(u["credentials_held"], u)
                self.assertIn("refused the login for now", u["last_error"] or "")
                p.wait_log(rf"migration user=\"?{user}\"? result=failed failure=unavailable .* retry_in=5\.0s")
                u = wait_state(p, user, ("done",), 60)
                self.assertEqual(front.refused, 2)
                self.assertEqual([r["result"] for r in u["runs"]], ["done", "failed", "failed"])
                self.assertTrue(u["credentials_held"], u)  # credential_ttl still runs
                p.wait_log(rf"migration user=\"?{user}\"? result=failed .* retry_in=10\.0s")
                self.assertNoSecrets(p)
        finally:
            front.close()
        self.assertEqual(mailbox(tb.new, user, ["Busy"])["Busy"],
                         mailbox(tb.legacy, user, ["INBOX.Busy"])["INBOX.Busy"])

    # ---- 6: a refused legacy login is reported and not retried; credentials dropped
    def test_6_legacy_refusing_the_login_is_not_retried(self):
        user = "user003"
        users_file = os.path.join(os.path.dirname(bed().legacy.config_path), "users.passwd")
        with open(users_file, "rb") as f:
            original = f.read()
        changed = original.replace(b"user003:{PLAIN}pw-user003:", b"user003:{PLAIN}changed:")
        self.assertNotEqual(changed, original)
        try:
            with open(users_file, "wb") as f:  # the legacy password is no longer the new one
                f.write(changed)

            def legacy_refuses():  # Dovecot looks at the file again after a second or so
                try:
                    bed().legacy.connect(user).logout()
                    return False
                except imaplib.IMAP4.error:
                    return True
            self.assertTrue(wait_until(legacy_refuses, 10, step=0.5))
            with Proxy() as p:
                login(p, user)  # the new server accepts: the login works
                u = wait_state(p, user, ("failed",), 30)
                self.assertIn(f"legacy server 127.0.0.1:{bed().legacy.imap_port} refused the login"
                              f" for {user}", u["last_error"])
                self.assertEqual(u["attempts"], 0)
                self.assertIsNone(u["retry_at"])
                self.assertFalse(u["credentials_held"])
                self.assertEqual(u["runs"][0]["result"], "failed")
                p.wait_log(rf"migration user={user} result=login_failed failure=credentials ")
                time.sleep(6)  # longer than the first retry's delay: nothing else ran
                self.assertEqual(len(ask(p, {"cmd": "user", "user": user})["runs"]), 1)
                self.assertIn("no credentials held", ask(p, {"cmd": "resync", "user": user})["error"])
                self.assertNoSecrets(p)
        finally:
            with open(users_file, "wb") as f:
                f.write(original)

    # ---- 7: a state store that cannot be opened stops the start with one line
    def test_7_unusable_state_db_is_a_clear_start_error(self):
        p = Proxy(overrides={"sync": {"state_db": "/proc/suction-no-such-dir/state.db"}})
        p.write_config()
        r = subprocess.run([SUCTION_BIN, "proxy", "--config", p.config_path],
                           capture_output=True, timeout=30)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertRegex(r.stderr.decode(), r"^suction: \S+suction\.toml: \[sync\] state_db: ")
        self.assertEqual(r.stderr.decode().count("\n"), 1, r.stderr)

    # ---- 8: the daemon's job refused at once (the user's run is held by `suction sync`):
    # the daemon keeps answering, and the job runs when the other process is done.
    def test_8_job_refused_as_busy_keeps_the_daemon_serving(self):
        user = "user004"
        seed(user, {"INBOX.Slow": 120}, size=60000, tag="-slow")
        with Proxy() as p:
            db = p.config["sync"]["state_db"]
            cfg = write_config({"sync": {"batch_messages": 1, "connections_per_user": 1}},
                               state_db=db)
            cli = subprocess.Popen([SUCTION_BIN, "sync", "--config", cfg, "--user", user,
                                    "--password-stdin", "--retries", "0"],
                                   stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
            try:
                cli.stdin.write((bed().users[user] + "\n").encode())
                cli.stdin.close()
                import sqlite3

                def cli_running():
                    try:
                        con = sqlite3.connect(db, timeout=1)
                        try:
                            return con.execute("SELECT COUNT(*) FROM runs WHERE user = ? AND "
                                               "result = 'running' AND pid = ?",
                                               (user, cli.pid)).fetchone()[0] == 1
                        finally:
                            con.close()
                    except sqlite3.Error:
                        return False
                self.assertTrue(wait_until(cli_running, 30, step=0.02))
                login(p, user)
                u = wait_state(p, user, ("pending",), 20)
                self.assertTrue(wait_until(
                    lambda: f"is running in process {cli.pid}" in
                    (ask(p, {"cmd": "user", "user": user})["last_error"] or ""), 20), u)
                self.assertIn("proxy", ask(p, {"cmd": "status"}))  # still serving
                login(p, "carol")  # and logins go on
                self.assertEqual(cli.wait(120), 0)
            finally:
                if cli.poll() is None:
                    cli.kill()
                    cli.wait(10)
            u = wait_state(p, user, ("done",), 60)  # the retry, once the CLI is done
            self.assertEqual(u["runs"][0]["result"], "done")
        self.assertEqual(mailbox(bed().new, user, ["Slow"])["Slow"],
                         mailbox(bed().legacy, user, ["INBOX.Slow"])["INBOX.Slow"])


if __name__ == "__main__":
    unittest.main()
