"""Where the password is checked (issue 10, musts 1 and 7): `[auth] verify = "legacy"` and
`"new_then_legacy"` against the real Dovecot servers of the bed, with a master user on the new
server (the bed's add_master_user: a master passdb, auth_master_user_separator).

- verify = "legacy": the new server does not know bob's password (the bed changes it there);
  bob logs in through the proxy with his legacy password, works in his mailbox, and his
  migration copies it exactly (the engine logs in to the new server with the master
  credentials too). Both master login forms: AUTHENTICATE PLAIN with authzid, and LOGIN
  "user*master".
- A wrong password gets the answer the new server itself gives ("[AUTHENTICATIONFAILED]
  Authentication failed."), logged `login failed ... checked_by=legacy`.
- verify = "new_then_legacy": a user the new server knows logs in there (checked_by=new); one
  it refuses is checked on legacy (checked_by=legacy).
- Legacy unreachable: NO [UNAVAILABLE], not counted as a failed login.
- The penalty: failed checks are delayed (failure_delay, doubled) and, past max_failures,
  refused without asking legacy (connections counted at a forwarder in front of legacy).
- A master password file readable by group: `suction proxy` refuses to start, in one line.
- `[auth] provision_command` (must 2) with the shipped deploy/provision/dovecot-passwd-file.sh:
  after bob's legacy-checked login his password works on the new server directly; a failing
  command is logged with its exit code and stderr (the password as ***), the login still works,
  and it is tried again at the next login.
"""

from __future__ import annotations

import imaplib
import os
import subprocess
import time
import unittest

from netfault import Forwarder
from proxyfixture import SUCTION_BIN, Proxy, bed, login_through, qmailbox, start_bed, tmp_root
from syncfixture import mailbox
from test_migration_e2e import ask, seed, wait_state

MASTER, MASTER_PW = "suction-master", "m4ster-secret"
STALE = "not-the-legacy-password"   # bob's password on the new server only


def setUpModule():
    tb = start_bed(seed=False)
    tb.new.add_master_user(MASTER, MASTER_PW)
    tb.new.set_password("bob", STALE)
    seed("bob", {"INBOX": 4, "INBOX.Cutover": 6}, tag="-cut")


def master_file(mode: int = 0o600) -> str:
    path = os.path.join(tmp_root(), f"master-{mode:o}.pw")
    with open(path, "w", encoding="utf-8") as f:
        f.write(MASTER_PW + "\n")
    os.chmod(path, mode)
    return path


def verify_config(verify: str, **auth) -> dict:
    return {"auth": {"verify": verify, "failure_delay": 0, **auth},
            "new": {"master_user": MASTER, "master_password_file": master_file()}}



class AuthVerify(unittest.TestCase):

    def test_legacy_checks_the_password_new_server_knows_none(self):
        tb = bed()
        legacy_pw = tb.users["bob"]
        # The new server alone refuses bob's legacy password.
        with self.assertRaises(imaplib.IMAP4.error):
            tb.new.connect("bob", password=legacy_pw).logout()
        state_db = os.path.join(tmp_root(), "verify-legacy-state.db")
        for form in ("authzid", "separator"):
            with self.subTest(master_login=form):
                cfg = verify_config("legacy")
                cfg["new"]["master_login"] = form
                cfg["sync"] = {"state_db": state_db}   # one migration, two proxies
                with Proxy(overrides=cfg) as p:
                    self.assertEqual(login_through(p, "bob", legacy_pw), ("OK", b""), p.log_tail())
                    p.wait_log(r"login ok user=\"?bob\"? .* checked_by=legacy ")
                    u = wait_state(p, "bob", ("done",), 60)
                    self.assertEqual(u["runs"][0]["result"], "done", u)
                    self.assertNotIn(MASTER_PW, p.log())
                    self.assertNotIn(legacy_pw, p.log())
        want = {"INBOX": mailbox(tb.legacy, "bob", ["INBOX"])["INBOX"],
                "Cutover": mailbox(tb.legacy, "bob", ["INBOX.Cutover"])["INBOX.Cutover"]}
        self.assertEqual(len(want["Cutover"]), 6)
        self.assertEqual(self.new_mailbox_as_master(["INBOX", "Cutover"]), want)

    def new_mailbox_as_master(self, names: list[str]) -> dict:
        """bob's new mailbox, read as the master user (the new server has no password for him)."""
        from syncfixture import messages
        imap = bed().new.open()
        try:
            blob = f"bob\0{MASTER}\0{MASTER_PW}".encode()
            imap.authenticate("PLAIN", lambda _c: blob)
            return {n: sorted(m[:3] for m in messages(imap, n)) for n in names}
        finally:
            imap.logout()

    def test_wrong_password_gets_the_new_servers_answer(self):
        tb = bed()
        direct = tb.new.open()
        try:
            with self.assertRaises(imaplib.IMAP4.error) as cm:
                direct.login("alice", "wrong password")
            direct_text = str(cm.exception)
        finally:
            direct.shutdown()
        with Proxy(overrides=verify_config("legacy")) as p:
            typ, text = login_through(p, "alice", "wrong password")
            self.assertEqual(typ, "NO")
            self.assertEqual(text.decode(), direct_text)
            p.wait_log(r"login failed user=\"?alice\"? .* checked_by=legacy reason=")
            stats = ask(p, {"cmd": "status"})
            self.assertEqual(stats["proxy"]["logins_failed"], 1, stats)

    def test_new_then_legacy(self):
        tb = bed()
        with Proxy(overrides=verify_config("new_then_legacy")) as p:
            # alice: the new server knows her password: checked there.
            self.assertEqual(login_through(p, "alice", tb.users["alice"]), ("OK", b""))
            p.wait_log(r"login ok user=\"?alice\"? .* checked_by=new ")
            # bob: the new server refuses his (legacy) password: checked again on legacy.
            self.assertEqual(login_through(p, "bob", tb.users["bob"]), ("OK", b""))
            p.wait_log(r"login ok user=\"?bob\"? .* checked_by=legacy ")
            # Wrong on both: the usual NO.
            self.assertEqual(login_through(p, "bob", "nope")[0], "NO")

    def test_legacy_unreachable_is_unavailable(self):
        tb = bed()
        fwd = Forwarder((tb.legacy.host, tb.legacy.imap_port))
        fwd.down = True
        try:
            cfg = verify_config("legacy")
            cfg["legacy"] = {"port": fwd.port}
            with Proxy(overrides=cfg) as p:
                typ, text = login_through(p, "bob", tb.users["bob"])
                self.assertEqual(typ, "NO")
                self.assertIn(b"[UNAVAILABLE]", text)
                p.wait_log(r"login unavailable user=\"?bob\"? ")
                self.assertEqual(ask(p, {"cmd": "status"})["proxy"]["logins_failed"], 0)
        finally:
            fwd.close()

    def test_failed_checks_are_delayed_then_limited(self):
        tb = bed()
        fwd = Forwarder((tb.legacy.host, tb.legacy.imap_port))
        try:
            cfg = verify_config("legacy", failure_delay=1, max_failures=2, failure_window=60)
            cfg["legacy"] = {"port": fwd.port}
            with Proxy(overrides=cfg) as p:
                t0 = time.monotonic()
                self.assertEqual(login_through(p, "carol", "wrong-1")[0], "NO")
                first = time.monotonic() - t0
                t0 = time.monotonic()
                self.assertEqual(login_through(p, "carol", "wrong-2")[0], "NO")
                second = time.monotonic() - t0
                self.assertGreaterEqual(first, 0.9)    # failure_delay
                self.assertGreaterEqual(second, 1.9)   # doubled
                asked = fwd.accepted
                # Past max_failures: even the right password is not checked on legacy now.
                blob_user, blob_pw = "carol", tb.users["carol"]
                imap = p.imap()
                try:
                    with self.assertRaises(imaplib.IMAP4.error):
                        imap.authenticate("PLAIN", lambda _c: f"\0{blob_user}\0{blob_pw}".encode())
                finally:
                    imap.shutdown()
                self.assertEqual(fwd.accepted, asked, "legacy was asked past max_failures")
                p.wait_log(r"login failed user=\"?carol\"? .* reason=\"too many failed checks")
        finally:
            fwd.close()

    def test_provision_command_sets_the_new_password(self):
        tb = bed()
        legacy_pw = tb.users["bob"]
        users_file = os.path.join(os.path.dirname(tb.new.config_path), "users.passwd")
        script = os.path.join(os.environ.get("SUCTION_SOURCE_DIR", "../.."), "deploy", "provision",
                              "dovecot-passwd-file.sh")
        self.addCleanup(tb.new.set_password, "bob", STALE)
        # A command that fails, echoing its stdin: logged with *** for the password, the login
        # works anyway, and the next login tries again.
        failing = os.path.join(tmp_root(), "provision-fails.sh")
        with open(failing, "w") as f:
            f.write("#!/bin/sh\nread -r pw\necho \"cannot provision $1 with $pw\" >&2\nexit 3\n")
        os.chmod(failing, 0o755)
        cfg = verify_config("legacy", provision_command=[failing])
        with Proxy(overrides=cfg) as p:
            seen = 0
            for _attempt in (1, 2):
                self.assertEqual(login_through(p, "bob", legacy_pw), ("OK", b""))
                m = p.wait_log(r"provision user=\"?bob\"? .*result=failed exit=3 .*stderr=(.*)",
                               after=seen)
                self.assertIn("***", m.group(1))
                seen = m.end()
            self.assertNotIn(legacy_pw, p.log())
            self.assertNotIn(legacy_pw[:5], p.log())   # nor its log_value-escaped form
        cfg = verify_config("legacy", provision_command=[os.path.abspath(script), users_file])
        with Proxy(overrides=cfg) as p:
            self.assertEqual(login_through(p, "bob", legacy_pw), ("OK", b""))
            p.wait_log(r"provision user=\"?bob\"? new_user=\"?bob\"? client=\S+ result=ok exit=0 ", timeout=15)
            self.assertNotIn(legacy_pw, p.log())
        deadline = time.monotonic() + 10
        while True:   # Dovecot reads the passwd-file again once it changed
            try:
                tb.new.connect("bob", password=legacy_pw).logout()
                break
            except imaplib.IMAP4.error:
                self.assertLess(time.monotonic(), deadline, "the provisioned password does not work")
                time.sleep(0.3)
        with open(users_file) as f:
            line = [x for x in f.read().splitlines() if x.startswith("bob:")]
        self.assertEqual(len(line), 1)
        self.assertTrue(line[0].startswith("bob:{SHA512-CRYPT}$6$"), line)

    def test_master_password_file_readable_by_group_is_refused(self):
        cfg = verify_config("legacy")
        cfg["new"]["master_password_file"] = master_file(0o640)
        p = Proxy(overrides=cfg)
        p.write_config()
        r = subprocess.run([SUCTION_BIN, "proxy", "--config", p.config_path], capture_output=True,
                           timeout=30)
        err = r.stderr.decode()
        self.assertEqual(r.returncode, 2, err)
        self.assertRegex(err, r"^suction: \S+suction\.toml: \[new\] master_password_file: "
                              r"\"[^\"]+\" is readable or writable by group or others")
        self.assertEqual(err.count("\n"), 1, err)
        self.assertNotIn(MASTER_PW, err)


if __name__ == "__main__":
    unittest.main()
