"""Shared helpers for suction's proxy integration tests (Python 3 standard library only).

One Dovecot test bed per test module (setUpModule -> start_bed()), any number of proxies
(`Proxy(...)`, each with its own config, ports and stderr log file), and a small raw IMAP
client for what imaplib cannot say (8-bit literals, SASL continuations, pipelining, IDLE).

Environment:
  SUCTION_BIN          the suction binary (default: <source>/build/proxy/cli/suction)
  SUCTION_SOURCE_DIR   the source tree (default: two levels above this file)
  SUCTION_KEEP_TMP=1   keep the temp dir (bed, proxy configs and logs) after the module

Every wait is bounded in time; all traffic stays on 127.0.0.0/8.
"""

from __future__ import annotations

import base64
import imaplib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest

SOURCE_DIR = os.environ.get("SUCTION_SOURCE_DIR") or os.path.dirname(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SUCTION_BIN = os.environ.get("SUCTION_BIN") or os.path.join(SOURCE_DIR, "build", "proxy", "cli",
                                                            "suction")
sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "testbed"))

from testbed import Testbed, TestbedError, free_ports, mutf7_encode, qmailbox, quote  # noqa: E402

__all__ = ["SOURCE_DIR", "SUCTION_BIN", "Testbed", "TestbedError", "mutf7_encode", "qmailbox", "quote",
           "start_bed", "bed", "tmp_root", "free_ports", "Proxy", "RawClient", "ProxyError",
           "LogLineMissing",
           "b64", "plain_payload", "wait_until"]

HOST = "127.0.0.1"


class ProxyError(RuntimeError):
    pass


class LogLineMissing(AssertionError):
    """A log line a test waits for did not come (a test failure, not an error)."""


# ----------------------------------------------------------------------------------------------
# The module's test bed and temp dir

_BED: Testbed | None = None
_ROOT: str | None = None


def tmp_root() -> str:
    """This module's temp dir: the bed's testbed.json, the proxies' configs, logs and status
    sockets. Under /tmp: unix socket paths must be short. (The bed's servers have their own
    $TMPDIR/suction-bed-* dir, which the bed removes when it stops.)"""
    global _ROOT
    if _ROOT is None:
        _ROOT = tempfile.mkdtemp(prefix="suction-it-", dir="/tmp")
    return _ROOT


def _cleanup_module() -> None:
    global _BED, _ROOT
    try:
        if _BED is not None:
            _BED.stop()
    finally:
        _BED = None
        if _ROOT is not None and os.environ.get("SUCTION_KEEP_TMP") != "1":
            shutil.rmtree(_ROOT, ignore_errors=True)
        _ROOT = None


def start_bed(seed: bool = False, large_mb: float = 0, extra_users: int = 0) -> Testbed:
    """Call from setUpModule: starts the bed; it is stopped (and the temp dir removed) when the
    module is done, also when setUpModule or the tests fail."""
    global _BED
    if _BED is not None:
        return _BED
    unittest.addModuleCleanup(_cleanup_module)
    if not os.access(SUCTION_BIN, os.X_OK):
        raise unittest.SkipTest(f"no suction binary at {SUCTION_BIN} (set SUCTION_BIN or build "
                                "the suction target)")
    if os.geteuid() != 0:
        raise unittest.SkipTest("the Dovecot test bed needs root")
    tb = Testbed(os.path.join(tmp_root(), "bed"), seed=seed, large_mb=large_mb,
                 extra_users=extra_users)
    try:
        tb.start()
    except BaseException:
        tb.stop()
        raise
    _BED = tb
    return tb


def bed() -> Testbed:
    if _BED is None:
        raise ProxyError("start_bed() was not called (setUpModule)")
    return _BED


# ----------------------------------------------------------------------------------------------
# Small helpers

def b64(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return base64.b64encode(data).decode("ascii")


def plain_payload(user: str, password: str, authzid: str = "") -> bytes:
    return authzid.encode() + b"\0" + user.encode() + b"\0" + password.encode("utf-8")


def login_through(p: "Proxy", user: str, password: str) -> tuple[str, bytes]:
    """LOGIN through the proxy: ("OK", b"") or ("NO", the server's text)."""
    imap = p.imap()
    try:
        imap.login(user, password)
    except imaplib.IMAP4.error as e:
        imap.shutdown()
        return "NO", str(e).encode()
    try:
        typ, data = imap.select("INBOX")
        assert typ == "OK", data
        imap.logout()
    except BaseException:
        imap.shutdown()
        raise
    return "OK", b""


def wait_until(cond, timeout: float, step: float = 0.05):
    """Polls cond() until it returns something true (returned) or timeout passes (None)."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / step) + 2):
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            break
        time.sleep(step)
    return None


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string for everything we write
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):   # an inline table, keys quoted ("example.org" = ...)
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"no TOML for {v!r}")


def toml_text(sections: dict[str, dict]) -> str:
    out = []
    for name, keys in sections.items():
        out.append(f"[{name}]")
        for k, v in keys.items():
            if v is not None:
                out.append(f"{k} = {_toml_value(v)}")
        out.append("")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------
# The proxy under test

class Proxy:
    """`suction proxy` in front of the bed's new server, on free loopback ports.

    overrides: {"section": {"key": value}} merged over the defaults (None removes a key).
    Use as a context manager, or call start()/stop() (stop is idempotent and always bounded).
    """

    _counter = 0

    def __init__(self, tb: Testbed | None = None, overrides: dict | None = None,
                 name: str = "proxy"):
        self.tb = tb or bed()
        Proxy._counter += 1
        self.dir = os.path.join(tmp_root(), f"{name}{Proxy._counter}")
        os.makedirs(self.dir, exist_ok=True)
        self.host = HOST
        self.imap_port, self.imaps_port = free_ports(2)
        # Its own copies of the bed's certificate (CN=localhost, IP SAN 127.0.0.1), so a test may
        # replace them.
        self.cert = os.path.join(self.dir, "cert.pem")
        self.key = os.path.join(self.dir, "key.pem")
        bed_tls = os.path.dirname(self.tb.ca_file)
        shutil.copyfile(os.path.join(bed_tls, "cert.pem"), self.cert)
        shutil.copyfile(os.path.join(bed_tls, "key.pem"), self.key)
        os.chmod(self.key, 0o600)
        self.config = {
            "listen": {"imap": f"{HOST}:{self.imap_port}", "imaps": f"{HOST}:{self.imaps_port}",
                       "tls_cert": self.cert, "tls_key": self.key},
            "new": {"host": self.tb.new.host, "port": self.tb.new.imap_port, "tls": "none",
                    "connect_timeout": 5, "command_timeout": 30},
            "legacy": {"host": self.tb.legacy.host, "port": self.tb.legacy.imap_port,
                       "tls": "none"},
            "limits": {"shutdown_grace": 1},
            # Migration at login runs against the bed's legacy server; its state and the
            # status socket live in the proxy's own directory.
            "sync": {"state_db": os.path.join(self.dir, "state.db")},
            "status": {"socket": os.path.join(self.dir, "status.sock")},
            "log": {"level": "debug"},
        }
        for section, keys in (overrides or {}).items():
            self.config.setdefault(section, {}).update(keys)
        self.config_path = os.path.join(self.dir, "suction.toml")
        self.log_path = os.path.join(self.dir, "suction.stderr")
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None
        self.killed = False

    # --- lifetime
    def write_config(self) -> None:
        with open(self.config_path, "w", encoding="utf-8") as f:
            f.write(toml_text(self.config))

    def start(self, wait_probe: bool = True, timeout: float = 10.0) -> "Proxy":
        self.write_config()
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen([SUCTION_BIN, "proxy", "--config", self.config_path],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        finally:
            log.close()
        try:
            need = [r"listening imap=", r"listening imaps="]
            need = [n for n, key in zip(need, ("imap", "imaps")) if self.config["listen"].get(key)]
            if wait_probe:
                need.append(r"backend \S+ offers:|backend probe failed")
            for pattern in need:
                self.wait_log(pattern, timeout)
            # ... and it accepts (listen() happened before the log line; check anyway).
            for key, port in (("imap", self.imap_port), ("imaps", self.imaps_port)):
                if self.config["listen"].get(key):
                    self._wait_accepts(port, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_accepts(self, port: int, timeout: float) -> None:
        def probe():
            try:
                with socket.create_connection((HOST, port), timeout=1):
                    return True
            except OSError:
                return False
        # Connecting starts a session in the proxy that ends when we close: harmless, but do it
        # only when the listener is not obviously up (it almost always is by now).
        if not wait_until(probe, timeout, 0.1):
            raise ProxyError(f"proxy does not accept on {HOST}:{port} within {timeout}s\n"
                             + self.log_tail())

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, then SIGKILL after `timeout` s (default: shutdown_grace + 2). Returns the
        exit code (-9 and self.killed = True when SIGKILL was needed)."""
        p = self.proc
        if p is None:
            return self.returncode
        if timeout is None:
            timeout = self.config.get("limits", {}).get("shutdown_grace", 30) + 2
        try:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.killed = True
                    p.kill()
                    p.wait(5)
        finally:
            self.returncode = p.returncode
            self.proc = None
        return self.returncode

    def signal(self, sig: int) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise ProxyError("proxy is not running\n" + self.log_tail())
        self.proc.send_signal(sig)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> "Proxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- log
    def log(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_bytes(self) -> bytes:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return b""

    def log_tail(self, n: int = 40) -> str:
        lines = self.log().splitlines()[-n:]
        return f"--- {self.log_path} (last {len(lines)} lines)\n" + "\n".join(lines)

    def wait_log(self, pattern: str, timeout: float = 5.0, after: int = 0) -> re.Match:
        """Bounded wait for a log line matching `pattern` (in the log from offset `after`)."""
        rx = re.compile(pattern)

        def look():
            m = rx.search(self.log(), after)
            if m:
                return m
            if self.proc is not None and self.proc.poll() is not None:
                return rx.search(self.log(), after) or False
            return None
        m = wait_until(look, timeout)
        if not m:
            raise LogLineMissing(f"no proxy log line matching {pattern!r} within {timeout}s\n"
                                 + self.log_tail())
        return m

    # --- clients
    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.tb.ca_file)

    def imap(self, tls: str = "none", timeout: float = 10.0) -> imaplib.IMAP4:
        """imaplib connection through the proxy (not logged in); certificates verified."""
        if tls == "implicit":
            return imaplib.IMAP4_SSL(HOST, self.imaps_port, ssl_context=self.client_context(),
                                     timeout=timeout)
        m = imaplib.IMAP4(HOST, self.imap_port, timeout=timeout)
        if tls == "starttls":
            try:
                typ, data = m.starttls(ssl_context=self.client_context())
                if typ != "OK":
                    raise ProxyError(f"STARTTLS: {typ} {data}")
            except BaseException:
                m.shutdown()
                raise
        elif tls != "none":
            m.shutdown()
            raise ValueError(tls)
        return m

    def raw(self, tls: str = "none", source: str | None = None, timeout: float = 10.0,
            greeting: bool = True) -> "RawClient":
        """A raw client through the proxy; reads the greeting unless greeting=False."""
        if tls == "implicit":
            c = RawClient.connect(HOST, self.imaps_port, tls_ctx=self.client_context(),
                                  source=source, timeout=timeout)
        else:
            c = RawClient.connect(HOST, self.imap_port, source=source, timeout=timeout)
        if greeting:
            c.greeting = c.readline()
            if not c.greeting.startswith(b"* OK"):
                c.close()
                raise ProxyError(f"unexpected greeting {c.greeting!r}")
        return c


# ----------------------------------------------------------------------------------------------
# A raw IMAP client: bytes in, lines out, every read bounded

class RawClient:
    def __init__(self, sock: socket.socket, timeout: float = 10.0):
        self.sock = sock
        self.buf = b""
        self.timeout = timeout
        self.greeting = b""
        self.eof = False

    @classmethod
    def connect(cls, host: str, port: int, tls_ctx: ssl.SSLContext | None = None,
                source: str | None = None, timeout: float = 10.0) -> "RawClient":
        s = socket.create_connection((host, port), timeout=timeout,
                                     source_address=(source, 0) if source else None)
        if tls_ctx is not None:
            try:
                s = tls_ctx.wrap_socket(s, server_hostname=host)
            except BaseException:
                s.close()
                raise
        return cls(s, timeout)

    def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        """Reads more into buf; False at EOF; TimeoutError past the deadline."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out waiting for the server")
        self.sock.settimeout(left)
        try:
            data = self.sock.recv(65536)
        except (socket.timeout, TimeoutError):
            raise TimeoutError("timed out waiting for the server") from None
        except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError, BrokenPipeError):
            data = b""
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def readline(self, timeout: float | None = None) -> bytes:
        """One line with its CRLF; b"" at EOF (with nothing buffered)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        for _ in range(100000):
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line, self.buf = self.buf[:i + 2], self.buf[i + 2:]
                return line
            if self.eof or not self._fill(deadline):
                line, self.buf = self.buf, b""
                return line
        raise TimeoutError("line too long")

    def read_tagged(self, tag: str, timeout: float | None = None) -> tuple[list[bytes], bytes]:
        """Lines up to and including the tagged answer for `tag`: (untagged..., tagged line)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        lines = []
        prefix = tag.encode() + b" "
        for _ in range(100000):
            line = self.readline(max(0.0, deadline - time.monotonic()))
            if not line:
                raise EOFError(f"connection closed before the answer to {tag}; got {lines!r}")
            if line.startswith(prefix):
                return lines, line
            lines.append(line)
        raise TimeoutError("too many lines")

    def command(self, tag: str, text: str | bytes, timeout: float | None = None) -> bytes:
        """Sends `tag text` and returns the tagged answer line."""
        return self.command_all(tag, text, timeout)[1]

    def command_all(self, tag: str, text: str | bytes,
                    timeout: float | None = None) -> tuple[list[bytes], bytes]:
        """Sends `tag text`; returns (untagged lines, tagged answer line)."""
        if isinstance(text, str):
            text = text.encode("utf-8")
        self.send(tag.encode() + b" " + text + b"\r\n")
        return self.read_tagged(tag, timeout)

    def read_available(self, wait: float = 0.3) -> bytes:
        """Whatever arrives within `wait` s (and what is buffered)."""
        deadline = time.monotonic() + wait
        try:
            for _ in range(1000):
                if self.eof or not self._fill(deadline):
                    break
        except TimeoutError:
            pass
        data, self.buf = self.buf, b""
        return data

    def wait_closed(self, timeout: float) -> bytes:
        """Reads until EOF (returned: what came before it); TimeoutError if still open."""
        deadline = time.monotonic() + timeout
        for _ in range(100000):
            if self.eof or not self._fill(deadline):
                data, self.buf = self.buf, b""
                return data
        raise TimeoutError("still open")

    def starttls(self, ctx: ssl.SSLContext, hostname: str = HOST) -> None:
        if self.buf:
            raise ProxyError(f"bytes before the TLS handshake: {self.buf!r}")
        self.sock.settimeout(self.timeout)
        self.sock = ctx.wrap_socket(self.sock, server_hostname=hostname)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "RawClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
