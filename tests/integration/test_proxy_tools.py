"""Real mail programs through the proxy: curl's IMAP and mbsync (isync), each compared with the
same program talking to the bed's new server directly."""

import hashlib
import imaplib
import os
import shutil
import subprocess
import unittest

import proxyfixture as pf
import testbed

CURL = shutil.which("curl")
MBSYNC = shutil.which("mbsync")
SEED_USER = "alice"


def setUpModule():
    pf.start_bed()


def new_name(legacy_name: str) -> str:
    """The legacy corpus folder name on the new server (no prefix, separator "/")."""
    if legacy_name == "INBOX":
        return "INBOX"
    return legacy_name[len("INBOX."):].replace(".", "/")


def seed_new(tb, user: str, large_mb: float) -> list[dict]:
    """APPENDs the legacy corpus (with a large message) to `user` on the NEW server."""
    msgs = testbed.build_corpus(large_mb)
    m = tb.new.connect(user, timeout=60)
    try:
        for name in sorted({new_name(x["folder"]) for x in msgs}):
            if name != "INBOX":
                typ, data = m.create(pf.qmailbox(name))
                if typ != "OK":
                    raise AssertionError(f"CREATE {name}: {data}")
        for x in msgs:
            flags = "(" + " ".join(x["flags"]) + ")" if x["flags"] else None
            typ, data = m.append(pf.qmailbox(new_name(x["folder"])), flags,
                                 '"' + x["internaldate"] + '"', x["data"])
            if typ != "OK":
                raise AssertionError(f"APPEND {x['folder']}: {data}")
        m.logout()
    except BaseException:
        m.shutdown()
        raise
    return msgs


@unittest.skipUnless(CURL, "curl is not installed")
class CurlTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tb = pf.bed()
        cls.proxy = pf.Proxy(cls.tb)
        cls.addClassCleanup(cls.proxy.stop)
        cls.proxy.start()
        # A message for bob, appended directly to the new server.
        cls.user = "bob"
        cls.message = (b"From: Alice <alice@example.org>\r\nTo: Bob <bob@example.net>\r\n"
                       b"Subject: curl through suction\r\nMessage-ID: <curl.1@suction.test>\r\n"
                       b"\r\nFetched by curl, byte for byte.\r\n"
                       + b"0123456789" * 5000 + b"\r\n")
        m = cls.tb.new.connect(cls.user)
        try:
            typ, data = m.append("INBOX", None, None, cls.message)
            assert typ == "OK", data
            typ, data = m.create(pf.qmailbox("Entw\u00fcrfe/2024"))
            assert typ == "OK", data
            m.select("INBOX", readonly=True)
            typ, data = m.uid("SEARCH", None, "ALL")
            cls.uid = int(data[0].split()[-1])
        finally:
            m.logout()

    def curl(self, url: str, *extra: str) -> bytes:
        args = [CURL, "-sS", "--max-time", "30", "--user",
                f"{self.user}:{self.tb.users[self.user]}", *extra, url]
        r = subprocess.run(args, capture_output=True, timeout=60)
        self.assertEqual(r.returncode, 0, f"{args}: {r.stderr!r}\n{self.proxy.log_tail()}")
        return r.stdout

    def direct(self, scheme="imap"):
        port = self.tb.new.imaps_port if scheme == "imaps" else self.tb.new.imap_port
        return f"{scheme}://127.0.0.1:{port}"

    def proxied(self, scheme="imap"):
        port = self.proxy.imaps_port if scheme == "imaps" else self.proxy.imap_port
        return f"{scheme}://127.0.0.1:{port}"

    def test_list_same_as_direct(self):
        direct = self.curl(self.direct() + "/")
        self.assertIn(b"INBOX", direct)
        self.assertIn(b"Entw&APw-rfe", direct)
        # curl 7.88 rejects AUTH=+LOGIN (the LOGIN command) as a bad URL; the default is
        # AUTHENTICATE PLAIN, AUTH=LOGIN is AUTHENTICATE LOGIN, both with an initial response.
        for opts in ((), ("--login-options", "AUTH=LOGIN")):
            with self.subTest(opts=opts):
                self.assertEqual(self.curl(self.proxied() + "/", *opts), direct)

    def test_fetch_same_as_direct(self):
        path = f"/INBOX;UID={self.uid}"
        direct = self.curl(self.direct() + path)
        self.assertEqual(direct, self.message)
        for opts in ((), ("--login-options", "AUTH=LOGIN")):
            with self.subTest(opts=opts):
                self.assertEqual(self.curl(self.proxied() + path, *opts), direct)

    def test_imaps_with_cacert(self):
        path = f"/INBOX;UID={self.uid}"
        direct = self.curl(self.direct("imaps") + path, "--cacert", self.tb.ca_file)
        self.assertEqual(direct, self.message)
        self.assertEqual(self.curl(self.proxied("imaps") + path, "--cacert", self.tb.ca_file),
                         direct)
        self.assertEqual(self.curl(self.proxied("imaps") + "/", "--cacert", self.tb.ca_file),
                         self.curl(self.direct("imaps") + "/", "--cacert", self.tb.ca_file))

    def test_starttls_required_with_cacert(self):
        path = f"/INBOX;UID={self.uid}"
        got = self.curl(self.proxied() + path, "--ssl-reqd", "--cacert", self.tb.ca_file)
        self.assertEqual(got, self.message)
        self.proxy.wait_log(r"login ok user=bob .*tls=yes")

    def test_wrong_password_fails(self):
        r = subprocess.run([CURL, "-sS", "--max-time", "30", "--user", "bob:wrong-password",
                            self.proxied() + "/"], capture_output=True, timeout=60)
        self.assertEqual(r.returncode, 67, r.stderr)  # CURLE_LOGIN_DENIED


def normalize(data: bytes) -> bytes:
    """A message as mbsync stores it in a maildir: LF line ends, without the X-TUID header
    mbsync adds (random per run)."""
    data = data.replace(b"\r\n", b"\n")
    head, sep, body = data.partition(b"\n\n")
    head = b"\n".join(l for l in head.split(b"\n") if not l.startswith(b"X-TUID: "))
    return head + sep + body


def maildir_snapshot(root: str) -> dict[str, list[tuple[str, str]]]:
    """{folder path relative to root: sorted [(sha256 of the normalized file, maildir flag
    letters)]}."""
    out: dict[str, list[tuple[str, str]]] = {}
    for dirpath, dirnames, _files in os.walk(root):
        if not {"cur", "new", "tmp"} <= set(dirnames):
            continue
        folder = os.path.relpath(dirpath, root)
        msgs = []
        for sub in ("cur", "new"):
            for fn in os.listdir(os.path.join(dirpath, sub)):
                with open(os.path.join(dirpath, sub, fn), "rb") as f:
                    digest = hashlib.sha256(normalize(f.read())).hexdigest()
                flags = fn.rsplit(":2,", 1)[1] if ":2," in fn else ""
                msgs.append((digest, "".join(sorted(flags))))
        out[folder] = sorted(msgs)
    return out


@unittest.skipUnless(MBSYNC, "mbsync (isync) is not installed")
class MbsyncTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tb = pf.bed()
        cls.msgs = seed_new(cls.tb, SEED_USER, large_mb=1.5)
        cls.proxy = pf.Proxy(cls.tb)
        cls.addClassCleanup(cls.proxy.stop)
        cls.proxy.start()

    def mbsync(self, name: str, port: int, tls: str, host: str = "127.0.0.1") -> str:
        base = os.path.join(pf.tmp_root(), f"mbsync-{name}")
        local = os.path.join(base, "mail")
        os.makedirs(local, exist_ok=True)
        conf = os.path.join(base, "mbsyncrc")
        lines = [
            f"IMAPAccount {name}",
            f"Host {host}",
            f"Port {port}",
            f"User {SEED_USER}",
            f"Pass {self.tb.users[SEED_USER]}",
            f"SSLType {tls}",
            "AuthMechs LOGIN",
            "Timeout 30",
        ]
        if tls != "None":
            lines.append(f"CertificateFile {self.tb.ca_file}")
        lines += [
            "",
            f"IMAPStore {name}-far",
            f"Account {name}",
            "",
            f"MaildirStore {name}-near",
            f"Path {local}/",
            f"Inbox {local}/INBOX",
            "SubFolders Verbatim",
            "",
            f"Channel {name}",
            f"Far :{name}-far:",
            f"Near :{name}-near:",
            "Patterns *",
            "Create Near",
            "Sync Pull",
            "SyncState *",
            "",
        ]
        with open(conf, "w") as f:
            f.write("\n".join(lines))
        r = subprocess.run([MBSYNC, "-c", conf, "-a"], capture_output=True, text=True,
                           timeout=120, cwd=base)
        self.assertEqual(r.returncode, 0,
                         f"mbsync {name}: {r.stdout}\n{r.stderr}\n{self.proxy.log_tail()}")
        return local

    def test_mbsync_through_proxy_equals_direct(self):
        direct = maildir_snapshot(self.mbsync("direct", self.tb.new.imap_port, "None"))
        proxied = maildir_snapshot(self.mbsync("proxied", self.proxy.imap_port, "STARTTLS", host="localhost"))
        # The direct copy is the corpus: the comparison below is not vacuous.
        wanted = {}
        for x in self.msgs:
            wanted.setdefault(new_name(x["folder"]), []).append(
                hashlib.sha256(normalize(x["data"])).hexdigest())
        got = {pf.mutf7_encode(k) if k != "INBOX" else k: v for k, v in wanted.items()}
        self.assertGreaterEqual(len(self.msgs), 30)
        self.assertTrue(any(len(x["data"]) > 1024 * 1024 for x in self.msgs))
        for folder, hashes in got.items():
            self.assertIn(folder, direct, sorted(direct))
            self.assertEqual(sorted(hashes), sorted(h for h, _ in direct[folder]), folder)
        self.assertTrue(any(f for _, f in direct["INBOX"]), "no flags pulled at all")
        # Through the proxy: the same folders, the same bytes, the same flags.
        self.assertEqual(sorted(proxied), sorted(direct))
        for folder in direct:
            self.assertEqual(proxied[folder], direct[folder], folder)
        self.proxy.wait_log(r"login ok user=alice .*tls=yes")


if __name__ == "__main__":
    unittest.main()
