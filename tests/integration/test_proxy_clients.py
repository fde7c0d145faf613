"""Real clients (imaplib and raw sockets) through the proxy to the bed's new server:
every way of logging in, the capabilities seen before and after login, and a working
session afterwards (SELECT, APPEND, FETCH, IDLE)."""

import imaplib
import re
import secrets
import unittest

import proxyfixture as pf

ALICE, BOB, CAROL = "alice", "bob", "carol"


def setUpModule():
    pf.start_bed()


def caps_of(line: bytes) -> list[str]:
    m = re.search(rb"\[CAPABILITY ([^\]]*)\]", line)
    return m.group(1).decode().split() if m else []


class LoginTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tb = pf.bed()
        cls.proxy = pf.Proxy(cls.tb)
        cls.addClassCleanup(cls.proxy.stop)
        cls.proxy.start()

    def pw(self, user):
        return self.tb.users[user]

    def check_logged_in(self, m: imaplib.IMAP4, user: str):
        """Logged in as `user` (says the proxy's log); SELECT and NAMESPACE answer; LOGOUT."""
        self.assertEqual(m.state, "AUTH")
        typ, data = m.select("INBOX", readonly=True)
        self.assertEqual(typ, "OK", data)
        typ, data = m.namespace()
        self.assertEqual(typ, "OK", data)
        typ, data = m.logout()
        self.assertEqual(typ, "BYE", data)
        self.proxy.wait_log(rf"login ok user={user} ")

    def test_login_plain(self):
        m = self.proxy.imap("none")
        typ, data = m.login(ALICE, self.pw(ALICE))
        self.assertEqual(typ, "OK", data)
        self.check_logged_in(m, ALICE)
        self.proxy.wait_log(r"login ok user=alice .*mech=\"LOGIN\" tls=no")

    def test_starttls_then_login(self):
        m = self.proxy.imap("starttls")  # verifies the certificate against tb.ca_file
        self.assertIsNotNone(m.sock.version())  # TLS is on
        typ, data = m.login(ALICE, self.pw(ALICE))
        self.assertEqual(typ, "OK", data)
        self.check_logged_in(m, ALICE)
        self.proxy.wait_log(r"login ok user=alice .*tls=yes")

    def test_implicit_tls_login(self):
        m = self.proxy.imap("implicit")
        self.assertTrue(m.welcome.startswith(b"* OK"), m.welcome)
        typ, data = m.login(ALICE, self.pw(ALICE))
        self.assertEqual(typ, "OK", data)
        self.check_logged_in(m, ALICE)

    def test_starttls_rejects_unknown_ca(self):
        """The client-side check works at all: without the bed's CA the handshake fails."""
        import ssl
        m = imaplib.IMAP4(self.proxy.host, self.proxy.imap_port, timeout=10)
        try:
            with self.assertRaises(ssl.SSLCertVerificationError):
                m.starttls(ssl_context=ssl.create_default_context())
        finally:
            m.sock.close()

    def test_login_8bit_password_as_literal(self):
        pw = self.pw(CAROL).encode("utf-8")
        self.assertFalse(pw.isascii())
        with self.proxy.raw() as c:
            c.send(b"a LOGIN carol {%d}\r\n" % len(pw))
            cont = c.readline()
            self.assertTrue(cont.startswith(b"+"), cont)
            c.send(pw + b"\r\n")
            _, tagged = c.read_tagged("a")
            self.assertTrue(tagged.startswith(b"a OK"), tagged)
            self.assertEqual(c.command("b", "SELECT INBOX")[:4], b"b OK")

    def test_login_8bit_password_quoted(self):
        pw = self.pw(CAROL).encode("utf-8")
        with self.proxy.raw() as c:
            tagged = c.command("a", b'LOGIN carol "' + pw + b'"')
            self.assertTrue(tagged.startswith(b"a OK"), tagged)

    def test_login_8bit_password_nonsync_literal(self):
        pw = self.pw(CAROL).encode("utf-8")
        with self.proxy.raw() as c:
            tagged = c.command("a", b"LOGIN carol {%d+}\r\n" % len(pw) + pw)
            self.assertTrue(tagged.startswith(b"a OK"), tagged)

    def test_login_special_characters_quoted(self):
        pw = self.pw(BOB)
        for ch in '"\\{} ':
            self.assertIn(ch, pw)
        m = self.proxy.imap()
        typ, data = m.login(BOB, pw)  # imaplib quotes: \" and \\ escapes
        self.assertEqual(typ, "OK", data)
        self.check_logged_in(m, BOB)

    def test_login_special_characters_literal(self):
        pw = self.pw(BOB).encode()
        with self.proxy.raw() as c:
            c.send(b"a LOGIN {3}\r\n")
            self.assertTrue(c.readline().startswith(b"+"))
            c.send(b"bob {%d}\r\n" % len(pw))
            self.assertTrue(c.readline().startswith(b"+"))
            c.send(pw + b"\r\n")
            _, tagged = c.read_tagged("a")
            self.assertTrue(tagged.startswith(b"a OK"), tagged)

    def test_authenticate_plain_imaplib(self):
        m = self.proxy.imap()
        typ, data = m.authenticate("PLAIN", lambda _: pf.plain_payload(CAROL, self.pw(CAROL)))
        self.assertEqual(typ, "OK", data)
        self.check_logged_in(m, CAROL)
        self.proxy.wait_log(r"login ok user=carol .*mech=\"AUTHENTICATE PLAIN\"")

    def test_authenticate_plain_sasl_ir(self):
        with self.proxy.raw() as c:
            tagged = c.command("a", "AUTHENTICATE PLAIN " + pf.b64(pf.plain_payload(BOB, self.pw(BOB))))
            self.assertTrue(tagged.startswith(b"a OK"), tagged)
            self.assertEqual(c.command("b", "NOOP")[:4], b"b OK")

    def test_authenticate_plain_continuation_raw(self):
        with self.proxy.raw(tls="implicit") as c:
            c.send(b"a AUTHENTICATE PLAIN\r\n")
            cont = c.readline()
            self.assertTrue(cont.startswith(b"+"), cont)
            c.send(pf.b64(pf.plain_payload(CAROL, self.pw(CAROL))).encode() + b"\r\n")
            _, tagged = c.read_tagged("a")
            self.assertTrue(tagged.startswith(b"a OK"), tagged)
            self.assertEqual(c.command("b", "NOOP")[:4], b"b OK")

    def test_authenticate_plain_with_own_authzid(self):
        with self.proxy.raw() as c:
            blob = pf.plain_payload(ALICE, self.pw(ALICE), authzid=ALICE)
            tagged = c.command("a", "AUTHENTICATE PLAIN " + pf.b64(blob))
            self.assertTrue(tagged.startswith(b"a OK"), tagged)

    def test_authenticate_login_raw(self):
        with self.proxy.raw() as c:
            c.send(b"a AUTHENTICATE LOGIN\r\n")
            cont = c.readline()
            self.assertTrue(cont.startswith(b"+"), cont)
            c.send(pf.b64(BOB).encode() + b"\r\n")
            cont = c.readline()
            self.assertTrue(cont.startswith(b"+"), cont)
            c.send(pf.b64(self.pw(BOB)).encode() + b"\r\n")
            _, tagged = c.read_tagged("a")
            self.assertTrue(tagged.startswith(b"a OK"), tagged)
            self.assertEqual(c.command("b", "NOOP")[:4], b"b OK")
        self.proxy.wait_log(r"login ok user=bob .*mech=\"AUTHENTICATE LOGIN\"")

    def test_authenticate_abort(self):
        with self.proxy.raw() as c:
            c.send(b"a AUTHENTICATE PLAIN\r\n")
            self.assertTrue(c.readline().startswith(b"+"))
            c.send(b"*\r\n")
            _, tagged = c.read_tagged("a")
            self.assertTrue(tagged.startswith(b"a BAD"), tagged)
            self.assertEqual(c.command("b", "NOOP")[:4], b"b OK")

    def test_wrong_then_right_password(self):
        m = self.proxy.imap()
        with self.assertRaises(imaplib.IMAP4.error) as cm:
            m.login(ALICE, "not-" + self.pw(ALICE))
        self.assertIn("AUTHENTICATIONFAILED", str(cm.exception))
        self.assertEqual(m.state, "NONAUTH")
        typ, data = m.login(ALICE, self.pw(ALICE))
        self.assertEqual(typ, "OK", data)
        self.check_logged_in(m, ALICE)

    def test_unknown_mechanism_refused(self):
        with self.proxy.raw() as c:
            tagged = c.command("a", "AUTHENTICATE CRAM-MD5")
            self.assertTrue(tagged.startswith(b"a NO"), tagged)
            self.assertEqual(c.command("b", "NOOP")[:4], b"b OK")


class CapabilityTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tb = pf.bed()
        cls.proxy = pf.Proxy(cls.tb)
        cls.addClassCleanup(cls.proxy.stop)
        cls.proxy.start()

    def direct_login_caps(self) -> list[str]:
        # Raw: imaplib asks CAPABILITY first, after which Dovecot leaves the code out.
        with pf.RawClient.connect(self.tb.new.host, self.tb.new.imap_port) as d:
            self.assertTrue(d.readline().startswith(b"* OK"))
            tagged = d.command("a", "LOGIN alice wonderland")
            self.assertTrue(tagged.startswith(b"a OK [CAPABILITY "), tagged)
            return caps_of(tagged)

    def test_post_login_capabilities_in_ok(self):
        with self.proxy.raw() as c:
            tagged = c.command("a", "LOGIN alice wonderland")
            self.assertTrue(tagged.startswith(b"a OK [CAPABILITY "), tagged)
            caps = caps_of(tagged)
            self.assertTrue("CONDSTORE" in caps or "MOVE" in caps, caps)
            self.assertFalse([x for x in caps if x.upper().startswith("AUTH=")], caps)
            self.assertNotIn("STARTTLS", caps)
            self.assertNotIn("LOGINDISABLED", caps)
            # Exactly what the server itself says to a direct login.
            self.assertEqual(sorted(caps), sorted(self.direct_login_caps()))
            # And what CAPABILITY says afterwards (relayed from the server).
            untagged, tagged = c.command_all("b", "CAPABILITY")
            self.assertTrue(tagged.startswith(b"b OK"), tagged)
            after = [l for l in untagged if l.startswith(b"* CAPABILITY ")]
            self.assertEqual(len(after), 1, untagged)
            self.assertEqual(sorted(after[0].decode().split()[2:]), sorted(caps))

    def preauth_caps(self, tls: str) -> tuple[list[str], list[str]]:
        with self.proxy.raw(tls=tls) as c:
            greeting = caps_of(c.greeting)
            untagged, tagged = c.command_all("a", "CAPABILITY")
            self.assertTrue(tagged.startswith(b"a OK"), tagged)
            lines = [l for l in untagged if l.startswith(b"* CAPABILITY ")]
            self.assertEqual(len(lines), 1, untagged)
            return greeting, lines[0].decode().split()[2:]

    def test_preauth_capabilities_plain_listener(self):
        greeting, caps = self.preauth_caps("none")
        for cs in (greeting, caps):
            self.assertIn("IMAP4rev1", cs)
            self.assertIn("STARTTLS", cs)
            self.assertIn("AUTH=PLAIN", cs)
            self.assertNotIn("AUTH=CRAM-MD5", cs)
            self.assertNotIn("LOGINDISABLED", cs)
            self.assertIn("ID", cs)  # from the backend's list
        self.assertEqual(greeting, caps)

    def test_preauth_capabilities_imaps_listener(self):
        greeting, caps = self.preauth_caps("implicit")
        for cs in (greeting, caps):
            self.assertNotIn("STARTTLS", cs)
            self.assertIn("AUTH=PLAIN", cs)
            self.assertNotIn("AUTH=CRAM-MD5", cs)

    def test_preauth_capabilities_after_starttls(self):
        m = self.proxy.imap("starttls")
        try:
            typ, data = m.capability()
            self.assertEqual(typ, "OK")
            caps = data[-1].decode().split()
            self.assertNotIn("STARTTLS", caps)
            self.assertIn("AUTH=PLAIN", caps)
        finally:
            m.shutdown()


def make_message(tag: str, body_kb: int = 0) -> bytes:
    body = ("Gr\u00fc\u00dfe aus dem Proxy-Test \u2713\r\n"
            "a line with trailing spaces   \r\n"
            ".\r\n"
            "\tindented\r\n").encode("utf-8")
    if body_kb:
        line = (b"0123456789abcdefghijklmnopqrstuvwxyz" * 2)[:70] + b"\r\n"
        body += line * (body_kb * 1024 // len(line))
    return (b"From: Alice <alice@example.org>\r\n"
            b"To: Bob <bob@example.net>\r\n"
            b"Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?= " + tag.encode() + b"\r\n"
            b"Message-ID: <" + tag.encode() + b"@suction.test>\r\n"
            b"Date: Mon, 10 Jun 2024 12:00:00 +0200\r\n"
            b"MIME-Version: 1.0\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: 8bit\r\n"
            b"\r\n" + body)


class SessionTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tb = pf.bed()
        cls.proxy = pf.Proxy(cls.tb)
        cls.addClassCleanup(cls.proxy.stop)
        cls.proxy.start()

    def login(self, user=ALICE, tls="none") -> imaplib.IMAP4:
        m = self.proxy.imap(tls)
        typ, data = m.login(user, self.tb.users[user])
        self.assertEqual(typ, "OK", data)
        self.addCleanup(lambda: m.shutdown() if m.state != "LOGOUT" else None)
        return m

    def test_append_fetch_byte_identical(self):
        for tls, kb in (("none", 0), ("implicit", 0), ("none", 600), ("starttls", 600)):
            with self.subTest(tls=tls, kb=kb):
                m = self.login(tls=tls)
                box = f"proxytest-{secrets.token_hex(4)}"
                self.assertEqual(m.create(box)[0], "OK")
                msg = make_message(box, kb)
                typ, data = m.append(box, r"(\Flagged $Label1)", None, msg)
                self.assertEqual(typ, "OK", data)
                typ, data = m.select(box)
                self.assertEqual((typ, data), ("OK", [b"1"]))
                typ, data = m.uid("FETCH", "1:*", "(FLAGS RFC822.SIZE BODY.PEEK[])")
                self.assertEqual(typ, "OK", data)
                head, body = data[0]
                self.assertEqual(body, msg)
                self.assertIn(b"RFC822.SIZE %d" % len(msg), head + data[1])
                self.assertIn(b"\\Flagged", head + data[1])
                # The same bytes through a direct connection.
                d = self.tb.new.connect(ALICE)
                try:
                    d.select(box, readonly=True)
                    typ, ddata = d.uid("FETCH", "1:*", "(BODY.PEEK[])")
                    self.assertEqual(ddata[0][1], msg)
                finally:
                    d.logout()
                m.logout()

    def test_search_and_store(self):
        m = self.login(BOB)
        box = f"proxytest-{secrets.token_hex(4)}"
        self.assertEqual(m.create(box)[0], "OK")
        for i in range(3):
            self.assertEqual(m.append(box, None, None, make_message(f"{box}-{i}"))[0], "OK")
        self.assertEqual(m.select(box), ("OK", [b"3"]))
        typ, data = m.store("2", "+FLAGS", r"(\Seen)")
        self.assertEqual(typ, "OK", data)
        typ, data = m.search(None, "SEEN")
        self.assertEqual((typ, data), ("OK", [b"2"]))
        typ, data = m.search(None, "UNSEEN")
        self.assertEqual((typ, data), ("OK", [b"1 3"]))

    def test_idle_sees_new_message(self):
        box = f"idle-{secrets.token_hex(4)}"
        d = self.tb.new.connect(ALICE)
        self.addCleanup(d.shutdown)
        self.assertEqual(d.create(box)[0], "OK")
        with self.proxy.raw() as c:
            self.assertTrue(c.command("a", "LOGIN alice wonderland").startswith(b"a OK"))
            untagged, tagged = c.command_all("b", f"SELECT {box}")
            self.assertTrue(tagged.startswith(b"b OK"), tagged)
            self.assertIn(b"* 0 EXISTS\r\n", untagged)
            c.send(b"c IDLE\r\n")
            cont = c.readline()
            self.assertEqual(cont, b"+ idling\r\n")
            self.assertEqual(c.read_available(0.2), b"")
            self.assertEqual(d.append(box, None, None, make_message(box))[0], "OK")
            line = b""
            for _ in range(20):
                line = c.readline(timeout=10)
                if line.endswith(b"EXISTS\r\n") or not line:
                    break
            self.assertEqual(line, b"* 1 EXISTS\r\n")
            c.send(b"DONE\r\n")
            _, tagged = c.read_tagged("c")
            self.assertTrue(tagged.startswith(b"c OK"), tagged)
            untagged, tagged = c.command_all("d", "UID FETCH 1:* (UID)")
            self.assertTrue(tagged.startswith(b"d OK"), tagged)
            self.assertEqual(len(untagged), 1, untagged)

    def test_pipelined_commands_behind_login(self):
        """Commands sent in the same packet as LOGIN reach the server after the login."""
        with self.proxy.raw() as c:
            c.send(b"a LOGIN alice wonderland\r\nb SELECT INBOX\r\nc NOOP\r\n")
            _, a = c.read_tagged("a")
            self.assertTrue(a.startswith(b"a OK"), a)
            _, b = c.read_tagged("b")
            self.assertTrue(b.startswith(b"b OK"), b)
            _, cc = c.read_tagged("c")
            self.assertTrue(cc.startswith(b"c OK"), cc)

    def test_logout_closes(self):
        with self.proxy.raw() as c:
            self.assertTrue(c.command("a", "LOGIN alice wonderland").startswith(b"a OK"))
            c.send(b"b LOGOUT\r\n")
            rest = c.wait_closed(10)
            self.assertIn(b"* BYE", rest)
            self.assertIn(b"b OK", rest)
        self.proxy.wait_log(r"session closed user=alice .*reason=\"backend closed\"")


if __name__ == "__main__":
    unittest.main()
