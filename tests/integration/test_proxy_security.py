"""What the proxy tells the server about the client (ID forwarding), what it must not do with
bytes pipelined behind STARTTLS, and what it must never write to its log (passwords)."""

import re
import ssl
import unittest

import proxyfixture as pf


def setUpModule():
    pf.start_bed()


SOURCE = "127.0.0.2"  # Linux answers on all of 127.0.0.0/8


def server_log(tb, pattern: str, timeout: float = 5.0):
    """The new server's log line matching `pattern` (a test failure if it does not come)."""
    try:
        return tb.new.wait_log(pattern, timeout)
    except pf.TestbedError as e:
        tail = "\n".join(tb.new.read_log().splitlines()[-15:])
        raise AssertionError(f"{e}\n{tail}") from None


def proxy_session_id(proxy: pf.Proxy, user: str, client_port: int) -> str:
    m = proxy.wait_log(rf"login ok user={user} client={re.escape(SOURCE)}:{client_port} .*"
                       r"session=(\w+)")
    return m.group(1)


class ClientAddressTests(unittest.TestCase):
    def login_from(self, proxy: pf.Proxy, user: str = "bob") -> int:
        """Logs in through the proxy from 127.0.0.2; returns the client's port."""
        pw = proxy.tb.users[user].encode()
        with proxy.raw(source=SOURCE) as c:
            port = c.sock.getsockname()[1]
            self.assertEqual(c.sock.getsockname()[0], SOURCE)
            c.send(b"a LOGIN %s {%d}\r\n" % (user.encode(), len(pw)))
            self.assertTrue(c.readline().startswith(b"+"))
            c.send(pw + b"\r\n")
            _, tagged = c.read_tagged("a")
            self.assertTrue(tagged.startswith(b"a OK"), tagged)
            self.assertTrue(c.command("b", "NOOP").startswith(b"b OK"))
        return port

    def test_forward_client_info_true(self):
        tb = pf.bed()
        with pf.Proxy(tb, {"new": {"forward_client_info": True}}) as proxy:
            port = self.login_from(proxy)
            sid = proxy_session_id(proxy, "bob", port)
            m = server_log(tb, rf"Login: user=<bob>, method=\S+, rip=([^,\s]+), [^\n]*"
                                rf"session=<{sid}>")
            self.assertEqual(m.group(1), "127.0.0.2", m.group(0))
            server_log(tb, rf"ID sent: x-originating-ip=127\.0\.0\.2, "
                            rf"x-originating-port={port}, x-session-id={sid}")

    def test_forward_client_info_false(self):
        tb = pf.bed()
        with pf.Proxy(tb, {"new": {"forward_client_info": False}}) as proxy:
            before = len(tb.new.read_log())
            port = self.login_from(proxy)
            sid = proxy_session_id(proxy, "bob", port)

            def login_line():
                m = re.search(r"Login: user=<bob>, method=\S+, rip=([^,\s]+), [^\n]*",
                              tb.new.read_log()[before:])
                return m
            m = pf.wait_until(login_line, 5)
            self.assertIsNotNone(m, tb.new.read_log()[before:])
            self.assertEqual(m.group(1), "127.0.0.1", m.group(0))
            new_part = tb.new.read_log()[before:]
            self.assertNotIn("127.0.0.2", new_part)
            self.assertNotIn(sid, new_part)


class StarttlsInjectionTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.proxy = pf.Proxy(pf.bed())
        cls.addClassCleanup(cls.proxy.stop)
        cls.proxy.start()

    def starttls_with(self, injected: bytes) -> tuple[list[bytes], pf.RawClient]:
        c = self.proxy.raw()
        self.addCleanup(c.close)
        c.send(b"a STARTTLS\r\n" + injected)  # one send
        line = c.readline()
        self.assertTrue(line.startswith(b"a OK"), line)
        # Nothing else may come in plaintext (answering b before the handshake is wrong too).
        c.starttls(self.proxy.client_context())
        c.send(b"c NOOP\r\n")
        untagged, tagged = c.read_tagged("c")
        self.assertTrue(tagged.startswith(b"c OK"), tagged)
        after = untagged + [tagged] + c.read_available(0.3).splitlines(keepends=True)
        return after, c

    def test_pipelined_capability_dropped(self):
        after, _ = self.starttls_with(b"b CAPABILITY\r\n")
        tags = [l.split(b" ", 1)[0] for l in after if not l.startswith((b"*", b"+"))]
        self.assertEqual(tags, [b"c"], after)
        self.assertFalse([l for l in after if l.startswith(b"* CAPABILITY")], after)

    def test_pipelined_login_dropped(self):
        before = len(self.proxy.log())
        after, c = self.starttls_with(b"b LOGIN alice wonderland\r\n")
        tags = [l.split(b" ", 1)[0] for l in after if not l.startswith((b"*", b"+"))]
        self.assertEqual(tags, [b"c"], after)
        # Still not logged in: SELECT is not a pre-auth command.
        tagged = c.command("d", "SELECT INBOX")
        self.assertTrue(tagged.startswith(b"d BAD"), tagged)
        self.assertNotIn("login ok", self.proxy.log()[before:])
        # And a real login inside TLS works.
        self.assertTrue(c.command("e", "LOGIN alice wonderland").startswith(b"e OK"))

    def test_pipelined_partial_literal_dropped(self):
        after, c = self.starttls_with(b"b LOGIN alice {10}\r\n")
        tags = [l.split(b" ", 1)[0] for l in after if not l.startswith((b"*", b"+"))]
        self.assertEqual(tags, [b"c"], after)
        self.assertFalse([l for l in after if l.startswith(b"+")], after)


# Distinctive wrong passwords: if any of these shows up in the log, it came from the client.
WRONG = {
    "alice": "Qx7-Wrong-Quokka-4417",
    "bob": 'Nar"whal\\Wrong{9}',
    "carol": "Falsch-\u00c4pfel-\u00df-3141",
}


def printable(s: bytes) -> bytes:
    """The proxy's own escaping for log values (control bytes, quote, backslash as \\xNN)."""
    out = bytearray()
    for c in s:
        if c < 0x20 or c == 0x7F or c in (0x22, 0x5C):
            out += b"\\x%02x" % c
        else:
            out.append(c)
    return bytes(out)


def secret_forms(user: str, password: str) -> dict[str, bytes]:
    pw = password.encode("utf-8")
    payload = pf.plain_payload(user, password)
    payload_z = pf.plain_payload(user, password, authzid=user)
    forms = {
        "raw": pw,
        "printable": printable(pw),
        "imap-quoted": pw.replace(b"\\", b"\\\\").replace(b'"', b'\\"'),
        "latin1": password.encode("latin-1", "replace"),
        "base64(password)": pf.b64(pw).encode(),
        "base64(password) unpadded": pf.b64(pw).rstrip("=").encode(),
        "base64(PLAIN)": pf.b64(payload).encode(),
        "base64(PLAIN) unpadded": pf.b64(payload).rstrip("=").encode(),
        "base64(PLAIN authzid)": pf.b64(payload_z).encode(),
        "hex": pw.hex().encode(),
    }
    return forms


class SecretsTests(unittest.TestCase):
    """[log] level = "trace": no password in any form, one "login ok" line per login."""

    def test_no_secrets_in_trace_log(self):
        tb = pf.bed()
        users = tb.users
        proxy = pf.Proxy(tb, {"log": {"level": "trace"}})
        self.addCleanup(proxy.stop)
        proxy.start()
        ok = 0
        failed = 0

        def expect(c, tag, good):
            nonlocal ok, failed
            _, tagged = c.read_tagged(tag)
            if good:
                self.assertTrue(tagged.startswith(tag.encode() + b" OK"), tagged)
                ok += 1
            else:
                self.assertTrue(tagged.startswith(tag.encode() + b" NO"), tagged)
                failed += 1

        def login_quoted(user, pw, good, tls="none"):
            with proxy.raw(tls=tls) as c:
                q = pw.encode().replace(b"\\", b"\\\\").replace(b'"', b'\\"')
                c.send(b'a LOGIN "%s" "%s"\r\n' % (user.encode(), q))
                expect(c, "a", good)

        def login_literal(user, pw, good):
            with proxy.raw() as c:
                p = pw.encode()
                c.send(b"a LOGIN %s {%d}\r\n" % (user.encode(), len(p)))
                self.assertTrue(c.readline().startswith(b"+"))
                c.send(p + b"\r\n")
                expect(c, "a", good)

        def login_literal_plus(user, pw, good):
            with proxy.raw() as c:
                p = pw.encode()
                c.send(b"a LOGIN %s {%d+}\r\n%s\r\n" % (user.encode(), len(p), p))
                expect(c, "a", good)

        def plain_ir(user, pw, good):
            with proxy.raw() as c:
                c.send(f"a AUTHENTICATE PLAIN {pf.b64(pf.plain_payload(user, pw))}\r\n")
                expect(c, "a", good)

        def plain_continuation(user, pw, good):
            with proxy.raw() as c:
                c.send(b"a AUTHENTICATE PLAIN\r\n")
                self.assertTrue(c.readline().startswith(b"+"))
                c.send(pf.b64(pf.plain_payload(user, pw)).encode() + b"\r\n")
                expect(c, "a", good)

        def auth_login(user, pw, good):
            with proxy.raw() as c:
                c.send(b"a AUTHENTICATE LOGIN\r\n")
                self.assertTrue(c.readline().startswith(b"+"))
                c.send(pf.b64(user).encode() + b"\r\n")
                self.assertTrue(c.readline().startswith(b"+"))
                c.send(pf.b64(pw).encode() + b"\r\n")
                expect(c, "a", good)

        def auth_login_ir(user, pw, good):
            with proxy.raw() as c:
                c.send(f"a AUTHENTICATE LOGIN {pf.b64(user)}\r\n")
                self.assertTrue(c.readline().startswith(b"+"))
                c.send(pf.b64(pw).encode() + b"\r\n")
                expect(c, "a", good)

        # Successful logins, every way.
        login_quoted("alice", users["alice"], True)
        login_quoted("bob", users["bob"], True, tls="implicit")
        login_literal("bob", users["bob"], True)
        login_literal("carol", users["carol"], True)
        login_literal_plus("alice", users["alice"], True)
        plain_ir("carol", users["carol"], True)
        plain_ir("bob", users["bob"], True)
        plain_continuation("bob", users["bob"], True)
        plain_continuation("carol", users["carol"], True)
        auth_login("alice", users["alice"], True)
        auth_login("carol", users["carol"], True)
        auth_login_ir("bob", users["bob"], True)
        # Failed ones, with distinctive wrong passwords (each costs Dovecot's ~0.5 s).
        login_quoted("alice", WRONG["alice"], False)
        login_literal("carol", WRONG["carol"], False)
        plain_ir("bob", WRONG["bob"], False)
        auth_login("carol", WRONG["carol"], False)
        plain_continuation("alice", WRONG["alice"], False)

        self.assertEqual(proxy.stop(), 0, proxy.log_tail())
        log = proxy.log_bytes()
        self.assertIn(b" trace ", log)  # the level took effect
        for user in users:
            for label, password in (("right", users[user]), ("wrong", WRONG[user])):
                for form, needle in secret_forms(user, password).items():
                    with self.subTest(user=user, password=label, form=form):
                        self.assertNotIn(needle, log)
        text = log.decode("utf-8", "replace")
        ok_lines = [l for l in text.splitlines() if " login ok " in l]
        self.assertEqual(len(ok_lines), ok, "\n".join(ok_lines))
        for line in ok_lines:
            for field in ("user=", "client=", "backend=", "duration="):
                self.assertIn(field, line)
            self.assertRegex(line, r"user=(alice|bob|carol) client=127\.0\.0\.1:\d+ "
                                   r"backend=127\.0\.0\.1:\d+ .*duration=\d+")
        failed_lines = [l for l in text.splitlines() if " login failed " in l]
        self.assertEqual(len(failed_lines), failed, "\n".join(failed_lines))


if __name__ == "__main__":
    unittest.main()
