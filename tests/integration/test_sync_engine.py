"""`suction sync` (issue 4 item 9 and 10) against a private Dovecot test bed: several folders
at once over [sync] connections_per_user connection pairs (counted in the legacy server's log)
and never more than [legacy] max_connections; INBOX's recent mail first, newest first
(recent_first_days); transient network errors tried again with backoff (a fault-injecting
TCP forwarder cuts the first connections mid-copy) ending in an exact copy; the one-line run
log. Users: carol (order and connections), bob (retries); alice is left to other modules."""

from __future__ import annotations

import datetime as _dt
import json
import re
import socket
import time
import unittest

from netfault import Forwarder
from proxyfixture import bed, qmailbox, start_bed
from syncfixture import mailbox, messages, run_sync, write_config

DAY = 86400


def setUpModule():
    start_bed(seed=True)


def _date(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime('"%d-%b-%Y %H:%M:%S +0000"')


def _body(user: str, n: int, size: int = 2000) -> bytes:
    head = (f"From: sender{n}@example.org\r\nTo: {user}@example.org\r\n"
            f"Subject: message {n}\r\nMessage-ID: <{user}-{n}@example.org>\r\n\r\n").encode()
    return head + (f"line {n} ".encode() * (size // 8 + 1))[:size] + b"\r\n"


def seed(user: str, folder_messages: dict[str, list[tuple[float, bytes]]]) -> None:
    """Appends (instant, body) messages to the user's legacy folders (created if needed)."""
    imap = bed().legacy.connect(user)
    try:
        for folder, msgs in folder_messages.items():
            if folder != "INBOX":
                imap.create(qmailbox(folder))
            for when, body in msgs:
                typ, data = imap.append(qmailbox(folder), None, _date(when), body)
                assert typ == "OK", data
    finally:
        imap.logout()


def wipe_new(user: str) -> None:
    """Empties the user's mailbox on the new server: every folder but INBOX deleted."""
    imap = bed().new.connect(user)
    try:
        typ, data = imap.list('""', "*")
        assert typ == "OK", data
        names = []
        for line in data:
            m = re.match(rb'\(([^)]*)\) (?:"[^"]*"|NIL) (.*)$', line)
            assert m, line
            name = m.group(2).decode()
            names.append(name[1:-1] if name.startswith('"') else name)
        for name in sorted(names, key=len, reverse=True):
            if name.upper() != "INBOX":
                imap.delete(qmailbox(name))
        imap.select("INBOX")
        imap.store("1:*", "+FLAGS.SILENT", "(\\Deleted)")
        imap.expunge()
    finally:
        imap.logout()


def legacy_logins(user: str) -> int:
    return len(re.findall(rf"imap-login: (?:Info: )?Login: user=<{user}>", bed().legacy.read_log()))


class SyncEngine(unittest.TestCase):

    def test_connections_per_user_and_recent_first(self):
        now = time.time()
        # INBOX in UID order: old, recent, old, recent, ... (recent = the last days).
        inbox = []
        for n in range(12):
            when = now - (3 + n) * 3600 if n % 2 else now - (400 + n) * DAY
            inbox.append((when, _body("carol", n)))
        folders = {"INBOX": inbox}
        # Enough mail (252 messages) for more than one pair of connections.
        for f in range(4):
            folders[f"INBOX.Box{f}"] = [(now - 500 * DAY + i, _body("carol", 100 * (f + 1) + i, 500))
                                        for i in range(60)]
        seed("carol", folders)
        names = ["INBOX"] + [f"Box{f}" for f in range(4)]
        legacy = mailbox(bed().legacy, "carol", ["INBOX"] + [f"INBOX.Box{f}" for f in range(4)])

        # 1. max_connections caps connections_per_user: one pair only.
        cfg = write_config({"sync": {"connections_per_user": 3, "batch_messages": 1},
                            "legacy": {"max_connections": 1}})
        before = legacy_logins("carol")
        p = run_sync(cfg, user="carol", extra=["--json"])
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(legacy_logins("carol") - before, 1)

        # 2. Three pairs: three legacy logins, several folders at once, the same exact copy.
        wipe_new("carol")
        cfg = write_config({"sync": {"connections_per_user": 3, "batch_messages": 1,
                                     "recent_first_days": 14}})
        before = legacy_logins("carol")
        p = run_sync(cfg, user="carol", extra=["--json"])
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(legacy_logins("carol") - before, 3)
        rep = json.loads(p.stdout)
        self.assertEqual(rep["messages_copied"], 12 + 4 * 60)
        got = mailbox(bed().new, "carol", names)
        self.assertEqual([got[n] for n in names],
                         [legacy[n] for n in ["INBOX"] + [f"INBOX.Box{f}" for f in range(4)]])

        # Recent first: in new-UID order, INBOX holds the 6 recent messages newest first,
        # then the old ones in legacy order.
        imap = bed().new.connect("carol")
        try:
            order = [m[2] for m in sorted(messages(imap, "INBOX"), key=lambda m: m[3])]
        finally:
            imap.logout()
        recent = sorted((int(w) for w, _ in inbox if w > now - 14 * DAY), reverse=True)
        old = [int(w) for w, _ in inbox if w <= now - 14 * DAY]
        self.assertEqual(order, recent + old)

        # The run's log line.
        self.assertRegex(p.stderr.decode(), r"sync user=carol result=ok folders=\d+/\d+ "
                         r"copied=252 bytes=\d+ failed=0 duration=\d+\.\d+s")

        # Again, no change: nothing copied, the order of a second run changes nothing.
        p = run_sync(cfg, user="carol", extra=["--json"])
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(json.loads(p.stdout)["messages_copied"], 0)

        # A little new mail in two folders: one pair copies it (a second pair would cost
        # two more logins than the copy is worth).
        seed("carol", {"INBOX.Box0": [(now - 3 * DAY, _body("carol", 900))],
                       "INBOX.Box1": [(now - 3 * DAY, _body("carol", 901))]})
        before = legacy_logins("carol")
        p = run_sync(cfg, user="carol", extra=["--json"])
        self.assertEqual(p.returncode, 0, p.stderr)
        rep = json.loads(p.stdout)
        self.assertEqual(rep["messages_copied"], 2)
        self.assertEqual(rep["folders_examined"], 2)
        self.assertEqual(legacy_logins("carol") - before, 1)

    def test_network_errors_are_retried_with_backoff(self):
        seed("bob", {"INBOX": [(time.time() - 30 * DAY + i, _body("bob", i, 20000))
                               for i in range(30)],
                     "INBOX.Old": [(time.time() - 90 * DAY + i, _body("bob", 50 + i, 20000))
                                   for i in range(10)]})
        legacy = mailbox(bed().legacy, "bob", ["INBOX", "INBOX.Old"])
        tb = bed()
        fwd = Forwarder((tb.legacy.host, tb.legacy.imap_port), cut=2, after=150_000)
        try:
            cfg = write_config({"legacy": {"port": fwd.port},
                                "sync": {"connections_per_user": 2, "batch_messages": 5}})
            p = run_sync(cfg, user="bob", extra=["--json", "--retries", "3"], timeout=120)
        finally:
            fwd.close()
        err = p.stderr.decode()
        self.assertEqual(p.returncode, 0, err)
        self.assertGreaterEqual(fwd.cuts, 1, err)
        self.assertRegex(err, r"attempt 1 of 4 failed \(.*\); trying again in 1 s")
        self.assertRegex(err, r"sync user=bob result=(failed|finished_with_errors) ")
        self.assertRegex(err, r"sync user=bob result=ok ")
        rep = json.loads(p.stdout)
        self.assertEqual(rep["messages_copied"], 40)  # all attempts together, none twice
        self.assertEqual(mailbox(bed().new, "bob", ["INBOX", "Old"]),
                         {"INBOX": legacy["INBOX"], "Old": legacy["INBOX.Old"]})

    def test_unreachable_legacy_gives_up_after_the_retries(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()  # nothing listens there now
        cfg = write_config({"legacy": {"port": port}})
        t0 = time.monotonic()
        p = run_sync(cfg, user="bob", extra=["--retries", "2"], timeout=60)
        took = time.monotonic() - t0
        err = p.stderr.decode()
        self.assertEqual(p.returncode, 1, err)
        self.assertIn(f"cannot reach the legacy server 127.0.0.1:{port}", err)
        self.assertIn("attempt 1 of 3 failed", err)
        self.assertIn("trying again in 2 s", err)  # backoff: 1 s, then 2 s
        self.assertNotIn("attempt 3 of 3", err)
        self.assertGreaterEqual(took, 3.0)


if __name__ == "__main__":
    unittest.main()
