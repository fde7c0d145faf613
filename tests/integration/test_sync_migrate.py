"""`suction migrate --standalone` (issue 10 must 5, first part): 30 users who never log in are
migrated with master users on both servers of the bed (the bed's add_master_user), at the
configured caps; every mailbox exact (sha256, flags, INTERNALDATE per folder), legacy
untouched; `suction report` over the same list then exits 0; a re-run copies nothing; without
legacy master credentials nothing is guessed: the users are listed as needing a login. Without
--standalone and no daemon: one line saying so, exit 1 (handing users to a running daemon is
test_proxy_cutover.py's)."""

from __future__ import annotations

import json
import os
import subprocess
import unittest

from netfault import Forwarder
from proxyfixture import SUCTION_BIN, bed, start_bed, tmp_root
from syncfixture import legacy_state, mailbox, write_config
from test_migration_e2e import seed
from testbed import extra_user_names

USERS = 30
MASTER, MASTER_PW = "bulk-master", "bulk-m4ster"
_LEGACY: dict[str, dict] = {}


def setUpModule():
    tb = start_bed(seed=False, extra_users=USERS)
    tb.legacy.add_master_user(MASTER, MASTER_PW)
    tb.new.add_master_user(MASTER, MASTER_PW)
    for i, user in enumerate(extra_user_names(USERS)):
        seed(user, {"INBOX": 2 + i % 3, "INBOX.Bulk": 1 + i % 4}, tag=f"-bulk{i}")
        imap = tb.legacy.connect(user)
        try:
            _LEGACY[user] = legacy_state(imap)
        finally:
            imap.logout()


def config_with_masters(legacy_master: bool = True, legacy_port: int | None = None) -> tuple[str, str]:
    d = os.path.join(tmp_root(), f"migrate-{legacy_master}")
    os.makedirs(d, exist_ok=True)
    pw = os.path.join(d, "master.pw")
    with open(pw, "w") as f:
        f.write(MASTER_PW + "\n")
    os.chmod(pw, 0o600)
    over = {"new": {"master_user": MASTER, "master_password_file": pw},
            "sync": {"max_concurrent_users": 4}}
    if legacy_master:
        over["legacy"] = {"master_user": MASTER, "master_password_file": pw, "max_connections": 6}
        if legacy_port:
            over["legacy"]["port"] = legacy_port
    config = write_config(over, state_db=os.path.join(d, "state.db"))
    users = os.path.join(d, "users.txt")
    with open(users, "w") as f:
        f.write("\n".join(extra_user_names(USERS)) + "\n")
    return config, users


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SUCTION_BIN, *args], capture_output=True, timeout=300)


def run_on_terminal(*args: str) -> tuple[subprocess.CompletedProcess, str]:
    """stdout captured, stderr on a pseudo-terminal (what an admin sees): (result, stderr)."""
    master, slave = os.openpty()
    try:
        p = subprocess.Popen([SUCTION_BIN, *args], stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        slave = -1
        seen = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:          # EIO: the other side closed
                break
            if not chunk:
                break
            seen += chunk
        out, _ = p.communicate(timeout=300)
        return subprocess.CompletedProcess(p.args, p.returncode, out, b""), seen.decode()
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)


class SyncMigrate(unittest.TestCase):

    def test_1_thirty_users_who_never_log_in(self):
        tb = bed()
        fwd = Forwarder((tb.legacy.host, tb.legacy.imap_port))   # counts connections to legacy
        self.addCleanup(fwd.close)
        config, users = config_with_masters(legacy_port=fwd.port)
        r = run("migrate", "--config", config, "--users", users, "--standalone", "--json")
        self.assertEqual(r.returncode, 0, r.stderr.decode()[-3000:])
        self.assertLessEqual(fwd.peak, 6, "[legacy] max_connections exceeded")
        self.assertGreaterEqual(fwd.peak, 2, "users were not migrated several at once")
        results = json.loads(r.stdout)
        self.assertEqual(len(results), USERS)
        self.assertTrue(all(x["outcome"] == "ok" for x in results), results)
        self.assertEqual(r.stderr.decode().count("suction: migration user="), USERS)
        self.assertNotIn(MASTER_PW, r.stderr.decode() + r.stdout.decode())
        for user in extra_user_names(USERS):
            self.assertEqual(mailbox(tb.new, user, ["INBOX", "Bulk"]),
                             {"INBOX": mailbox(tb.legacy, user, ["INBOX"])["INBOX"],
                              "Bulk": mailbox(tb.legacy, user, ["INBOX.Bulk"])["INBOX.Bulk"]}, user)
            imap = tb.legacy.connect(user)
            try:
                self.assertEqual(legacy_state(imap), _LEGACY[user], f"{user}: legacy changed")
            finally:
                imap.logout()
        rep = run("report", "--config", config, "--users", users)
        self.assertEqual(rep.returncode, 0, rep.stdout.decode()[-2000:])
        self.assertIn("every listed user is done", rep.stdout.decode())
        # Incremental: a re-run copies nothing. On a terminal it draws a progress bar.
        again, tty = run_on_terminal("migrate", "--config", config, "--users", users,
                                     "--standalone", "--json")
        self.assertEqual(again.returncode, 0, tty[-2000:])
        self.assertEqual(sum(x["messages_copied"] for x in json.loads(again.stdout)), 0)
        self.assertIn("[####################] 30/30 users  0 running  0 failed", tty)

    def test_2_without_legacy_master_nothing_is_guessed(self):
        config, users = config_with_masters(legacy_master=False)
        r = run("migrate", "--config", config, "--users", users, "--standalone")
        self.assertEqual(r.returncode, 1)
        out = r.stdout.decode().splitlines()
        self.assertEqual(len(out), USERS)
        self.assertEqual(out[0], "user001: not migrated: needs a login (no [legacy] master_user)")
        self.assertIn("30 users listed as needing a login", r.stderr.decode())

    def test_3_without_standalone_and_no_daemon(self):
        config, users = config_with_masters()
        r = run("migrate", "--config", config, "--users", users)
        self.assertEqual(r.returncode, 1)
        self.assertRegex(r.stderr.decode(),
                         r"^suction migrate: cannot connect to .*status.* \(is `suction proxy` running\?\)")


if __name__ == "__main__":
    unittest.main()
