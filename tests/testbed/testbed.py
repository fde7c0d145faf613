#!/usr/bin/env python3
"""Real-server test bed for suction: two Dovecot instances on loopback.

  legacy  shaped like an old Courier server: maildir, one namespace "INBOX." with
          separator ".", no SPECIAL-USE anywhere. alice's mailbox is seeded with a varied
          corpus (see corpus.json).
  new     Dovecot defaults with sdbox, separator "/", no prefix, special-use Sent, Trash,
          Drafts, Junk, Archive (auto = subscribe); trusts 127.0.0.0/8 to forward the client
          address with ID x-originating-ip.

CLI:
  testbed.py up --dir DIR [--no-seed] [--large-mb N] [--timeout S] [--auth-penalty]
  testbed.py down --dir DIR [--timeout S]
  testbed.py status --dir DIR
  testbed.py selftest [--keep] [--dir DIR]

DIR (anywhere) gets testbed.json and corpus.json; the servers' own files are in a fresh
$TMPDIR/suction-bed-* dir that `down` removes (see up()).

Python:
  with Testbed(dir) as tb:
      imap = tb.legacy.connect("alice", tls="starttls")

Standard library only. Needs root (Dovecot's master must start as root), dovecot 2.3, openssl.
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import hashlib
import imaplib
import json
import os
import pwd
import grp
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from typing import Iterable

# ----------------------------------------------------------------------------------------------
# Fixed facts of the bed

HOST = "127.0.0.1"
ROLES = ("legacy", "new")

# The same users on both servers. Passwords are stored in Dovecot passwd-files with the
# {PLAIN} scheme; Dovecot does no escaping there: the password is the bytes between the first
# and second ':' after the scheme prefix, so every character here except ':' and newline is
# representable as is (verified by the selftest, which logs in as each user).
USERS: dict[str, str] = {
    "alice": "wonderland",
    "bob": 'p@ss w"rd\\{x}',          # quote, backslash, braces, space
    "carol": "p\u00e4ssw\u00f6rd",    # "pässwörd", UTF-8 on the wire
}

SEED_USER = "alice"
SEED = 20240611                      # fixed seed: the corpus is byte-for-byte reproducible
DEFAULT_LARGE_MB = 2.0
DEFAULT_START_TIMEOUT = 20.0
DEFAULT_STOP_TIMEOUT = 15.0

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
DOVEADM = shutil.which("doveadm") or "/usr/bin/doveadm"
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
DH_PEM = "/usr/share/dovecot/dh.pem"

NEW_SPECIAL_USE = [("Drafts", "\\Drafts"), ("Sent", "\\Sent"), ("Trash", "\\Trash"),
                   ("Junk", "\\Junk"), ("Archive", "\\Archive")]
SPECIAL_USE_ATTRS = {"\\all", "\\archive", "\\drafts", "\\flagged", "\\junk", "\\sent",
                     "\\trash", "\\important"}

# Dovecot 2.3.19's post-login capability list, used only if probing the running "new"
# server for its real list fails (normally the legacy list is probed, minus SPECIAL-USE).
FALLBACK_CAPS = ("IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY "
                 "THREAD=REFERENCES THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL "
                 "CATENATE UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 "
                 "CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES WITHIN CONTEXT=SEARCH LIST-STATUS "
                 "BINARY MOVE SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW STATUS=SIZE SAVEDATE "
                 "LITERAL+ NOTIFY SPECIAL-USE")

# imaplib has no ID command; register it for every state.
imaplib.Commands.setdefault("ID", ("NONAUTH", "AUTH", "SELECTED"))


class TestbedError(RuntimeError):
    pass


def _log(msg: str) -> None:
    print(f"testbed: {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# IMAP helpers: modified UTF-7, quoting, LIST parsing

def mutf7_encode(name: str) -> str:
    """RFC 3501 5.1.3 modified UTF-7."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",")
                       + "-")
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


def mutf7_decode(name: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(name):
        ch = name[i]
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        j = name.index("-", i + 1)
        if j == i + 1:
            out.append("&")
        else:
            b64 = name[i + 1:j].replace(",", "/")
            b64 += "=" * (-len(b64) % 4)
            out.append(base64.b64decode(b64).decode("utf-16-be"))
        i = j + 1
    return "".join(out)


def quote(s: str) -> str:
    """IMAP quoted string (for ASCII strings, e.g. mUTF-7 mailbox names)."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def qmailbox(name: str) -> str:
    """A UTF-8 mailbox name -> quoted mUTF-7, ready for imaplib arguments."""
    return quote(mutf7_encode(name))


def _tokenize(data: bytes) -> list:
    """Tokens of one IMAP response line: atoms (str), quoted strings (str), lists, None (NIL)."""
    pos = 0
    stack: list[list] = [[]]
    n = len(data)
    while pos < n:
        c = data[pos:pos + 1]
        if c == b" ":
            pos += 1
        elif c == b"(":
            stack.append([])
            pos += 1
        elif c == b")":
            done = stack.pop()
            stack[-1].append(done)
            pos += 1
        elif c == b'"':
            pos += 1
            buf = bytearray()
            while data[pos:pos + 1] != b'"':
                if data[pos:pos + 1] == b"\\":
                    pos += 1
                buf += data[pos:pos + 1]
                pos += 1
                if pos >= n:
                    raise ValueError(f"unterminated quoted string in {data!r}")
            pos += 1
            stack[-1].append(buf.decode("utf-8"))
        else:
            m = re.compile(rb'[^ ()"]+').match(data, pos)
            tok = m.group(0).decode("utf-8")
            pos = m.end()
            stack[-1].append(None if tok.upper() == "NIL" else tok)
    if len(stack) != 1:
        raise ValueError(f"unbalanced parentheses in {data!r}")
    return stack[0]


def parse_list(data: Iterable) -> list[dict]:
    """imaplib LIST/LSUB data -> [{"attrs": [...], "sep": str|None, "name": utf8, "raw": mutf7}]."""
    out = []
    for item in data:
        if item is None:
            continue
        if isinstance(item, tuple):          # name sent as a literal
            head, lit = item
            toks = _tokenize(head[:head.rindex(b"{")])
            toks.append(lit.decode("utf-8"))
        else:
            toks = _tokenize(item)
        attrs, sep, raw = toks[0], toks[1], toks[2]
        out.append({"attrs": list(attrs), "sep": sep, "raw": raw, "name": mutf7_decode(raw)})
    return out


def send_id(imap: imaplib.IMAP4, fields: dict[str, str] | None) -> list:
    """Send RFC 2971 ID; returns the server's untagged ID data."""
    if fields:
        arg = "(" + " ".join(f"{quote(k)} {quote(v)}" for k, v in fields.items()) + ")"
    else:
        arg = "NIL"
    typ, _ = imap._simple_command("ID", arg)
    if typ != "OK":
        raise TestbedError(f"ID failed: {typ}")
    return imap.untagged_responses.pop("ID", [])


def _check(resp, what: str):
    typ, data = resp
    if typ != "OK":
        raise TestbedError(f"{what}: {typ} {data!r}")
    return data


# ----------------------------------------------------------------------------------------------
# Servers as seen by tests

class Server:
    """One running Dovecot of the bed (a view on testbed.json)."""

    def __init__(self, role: str, info: dict, ca_file: str, users: dict[str, str]):
        self.role = role
        self.info = info
        self.host: str = info["host"]
        self.imap_port: int = info["imap_port"]
        self.imaps_port: int = info["imaps_port"]
        self.log_path: str = info["log_path"]
        self.config_path: str = info["config_path"]
        self.home: str = info.get("home", "")    # one directory per user in here
        self.pid: int = info["pid"]
        self.ca_file = ca_file
        self.users = users

    def __repr__(self) -> str:
        return (f"Server({self.role} {self.host} imap={self.imap_port} "
                f"imaps={self.imaps_port} pid={self.pid})")

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)

    # --- cutover scenarios (issue 10): master users, a user's password on one server only
    def add_master_user(self, name: str, password: str, separator: str = "*") -> None:
        """Lets `name` log in as any user: AUTHENTICATE PLAIN with authzid = the user, or LOGIN
        "user<separator>name" (Dovecot's master passdb, auth_master_user_separator). Dovecot is
        reloaded (SIGHUP) and the master login checked before this returns."""
        conf_dir = os.path.dirname(self.config_path)
        masters = os.path.join(conf_dir, "masters.passwd")
        first = not os.path.exists(masters)
        with open(masters, "a", encoding="utf-8") as f:
            f.write(f"{name}:{{PLAIN}}{password}::::::\n")
        os.chmod(masters, 0o644)
        if first:
            with open(self.config_path, "a", encoding="utf-8") as f:
                f.write(f"\nauth_master_user_separator = {separator}\n"
                        "passdb {\n  driver = passwd-file\n  master = yes\n"
                        f"  args = scheme=PLAIN {masters}\n  result_success = continue\n}}\n")
            os.kill(self.pid, signal.SIGHUP)
        user = next(iter(self.users))
        deadline = time.monotonic() + 15
        while True:
            try:
                imap = self.open()
                blob = f"{user}\0{name}\0{password}".encode()
                imap.authenticate("PLAIN", lambda _c: blob)
                imap.logout()
                return
            except (imaplib.IMAP4.error, OSError):
                if time.monotonic() > deadline:
                    raise TestbedError(f"{self.role}: master user {name} does not work after reload")
                time.sleep(0.2)

    def add_user(self, user: str, password: str) -> None:
        """A user on this server only (its passwd-file), e.g. "alice@example.org" on the new
        server for names mapped between the servers; returns once a login with it works."""
        path = os.path.join(os.path.dirname(self.config_path), "users.passwd")
        if ":" in user + password or "\n" in user + password:
            raise TestbedError(f"{user}: ':' or a newline cannot be stored in a passwd-file")
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{user}:{{PLAIN}}{password}::::::\n")
        home = os.path.join(self.home, user)   # the mail user's, as _prepare_role makes them
        os.makedirs(home, mode=0o700, exist_ok=True)
        dv = pwd.getpwnam("dovecot")
        os.chown(home, dv.pw_uid, dv.pw_gid)
        self._wait_login(user, password, "new user")

    def _wait_login(self, user: str, password: str, what: str) -> None:
        deadline = time.monotonic() + 15
        while True:
            try:
                self.connect(user, password=password).logout()
                return
            except (imaplib.IMAP4.error, OSError):
                if time.monotonic() > deadline:
                    raise TestbedError(f"{self.role}: {what} {user} not taken")
                time.sleep(0.3)

    def set_password(self, user: str, password: str) -> None:
        """Changes `user`'s password on this server only (its passwd-file); returns once a
        login with it works (Dovecot reads the file again after a second or so)."""
        path = os.path.join(os.path.dirname(self.config_path), "users.passwd")
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        out = []
        for line in lines:
            name, _, rest = line.partition(":")
            if name == user:
                line = f"{name}:{{PLAIN}}{password}:" + rest.split(":", 1)[1]
            out.append(line)
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(out) + "\n")
        self._wait_login(user, password, "new password of")

    def open(self, tls: str = "none", timeout: float = 10.0) -> imaplib.IMAP4:
        """A connection, not logged in. tls: "none" | "starttls" | "implicit"."""
        if tls == "implicit":
            return imaplib.IMAP4_SSL(self.host, self.imaps_port, ssl_context=self.ssl_context(),
                                     timeout=timeout)
        imap = imaplib.IMAP4(self.host, self.imap_port, timeout=timeout)
        if tls == "starttls":
            try:
                _check(imap.starttls(ssl_context=self.ssl_context()), "STARTTLS")
            except Exception:
                imap.shutdown()
                raise
        elif tls != "none":
            imap.shutdown()
            raise ValueError(f"tls must be none, starttls or implicit, not {tls!r}")
        return imap

    def connect(self, user: str, tls: str = "none", password: str | None = None,
                mech: str = "auto", id: dict[str, str] | None = None,
                timeout: float = 10.0) -> imaplib.IMAP4:
        """A logged-in imaplib connection.

        mech: "login" (LOGIN, quoted string), "plain" (AUTHENTICATE PLAIN), or "auto" (LOGIN
        for ASCII passwords, AUTHENTICATE PLAIN otherwise: imaplib sends LOGIN arguments as
        ASCII). id: ID fields sent before logging in, e.g. {"x-originating-ip": "192.0.2.7"}.
        """
        if password is None:
            password = self.users[user]
        imap = self.open(tls, timeout)
        try:
            if id is not None:
                send_id(imap, id)
            if mech == "auto":
                mech = "login" if password.isascii() else "plain"
            if mech == "login":
                imap.login(user, password)
            elif mech == "plain":
                blob = b"\0" + user.encode() + b"\0" + password.encode("utf-8")
                imap.authenticate("PLAIN", lambda _challenge: blob)
            else:
                raise ValueError(f"unknown mech {mech!r}")
        except Exception:
            try:
                imap.shutdown()
            except OSError:
                pass
            raise
        return imap

    def capabilities(self, user: str = SEED_USER) -> list[str]:
        """Post-login CAPABILITY."""
        imap = self.connect(user)
        try:
            data = _check(imap.capability(), "CAPABILITY")
            return data[-1].decode().split()
        finally:
            imap.logout()

    def list(self, user: str = SEED_USER, pattern: str = "*") -> list[dict]:
        imap = self.connect(user)
        try:
            return parse_list(_check(imap.list('""', pattern), "LIST"))
        finally:
            imap.logout()

    def read_log(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern: str, timeout: float = 5.0) -> re.Match:
        """Wait (bounded) until a line matching regex `pattern` is in the log."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        for _ in range(int(timeout / 0.05) + 2):
            m = rx.search(self.read_log())
            if m:
                return m
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        raise TestbedError(f"{self.role}: no log line matching {pattern!r} within {timeout}s "
                           f"({self.log_path})")


class Testbed:
    """`with Testbed(dir) as tb:` starts both servers (seeded) and always stops them on exit.

    Testbed.attach(dir) gives a view of a bed already started with `testbed.py up`, without
    managing its lifetime.
    """

    def __init__(self, dir: str, seed: bool = True, large_mb: float = DEFAULT_LARGE_MB,
                 start_timeout: float = DEFAULT_START_TIMEOUT, auth_penalty: bool = False,
                 extra_users: int = 0):
        self.dir = os.path.abspath(dir)
        self.extra_users = extra_users
        self.auth_penalty = auth_penalty
        self.seed = seed
        self.large_mb = large_mb
        self.start_timeout = start_timeout
        self.state: dict | None = None
        self._owned = False

    @classmethod
    def attach(cls, dir: str) -> "Testbed":
        tb = cls(dir)
        tb._load(load_state(tb.dir))
        return tb

    def _load(self, state: dict) -> None:
        self.state = state
        self.ca_file: str = state["ca_file"]
        self.users: dict[str, str] = dict(state["users"])
        self.legacy = Server("legacy", state["legacy"], self.ca_file, self.users)
        self.new = Server("new", state["new"], self.ca_file, self.users)
        self.corpus_path = os.path.join(self.dir, "corpus.json")

    def corpus(self) -> dict:
        with open(self.corpus_path, encoding="utf-8") as f:
            return json.load(f)

    def start(self) -> "Testbed":
        self._owned = True
        self._load(up(self.dir, seed=self.seed, large_mb=self.large_mb,
                      timeout=self.start_timeout, auth_penalty=self.auth_penalty,
                      extra_users=self.extra_users))
        return self

    def stop(self) -> None:
        down(self.dir)

    def __enter__(self) -> "Testbed":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


# ----------------------------------------------------------------------------------------------
# Processes

def _proc_starttime(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # the comm field may contain spaces and parentheses: split after the last ')'
    fields = stat[stat.rindex(b")") + 2:].split()
    if fields[0] == b"Z":            # zombie: as good as gone
        return None
    return int(fields[19])


def _proc_ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2:].split()[1])


def _alive(pid: int, starttime: int | None = None) -> bool:
    st = _proc_starttime(pid)
    if st is None:
        return False
    return starttime is None or st == starttime


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _descendants(root: int) -> list[tuple[int, int]]:
    """(pid, starttime) of every live descendant of root."""
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        ppid = _proc_ppid(pid)
        if ppid is not None:
            children.setdefault(ppid, []).append(pid)
    out, todo = [], list(children.get(root, []))
    for _ in range(100000):
        if not todo:
            break
        pid = todo.pop()
        st = _proc_starttime(pid)
        if st is not None:
            out.append((pid, st))
        todo.extend(children.get(pid, []))
    return out


def _is_dovecot_exe(pid: int) -> bool:
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False
    return "dovecot" in exe


def _cmdline(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().rstrip(b"\0").split(b"\0")
    except OSError:
        return []


def _instance_name(role: str, marker: str) -> str:
    return f"suction-testbed-{role}-{marker}"


def bed_processes(d: str, state: dict | None = None) -> list[tuple[int, int]]:
    """(pid, starttime) of every process of the bed in DIR, found by process title.

    Dovecot titles its children "dovecot-<instance_name>/<service>" (e.g.
    "dovecot-suction-testbed-new-1cb2a93cee50/imap-login") and the master keeps its command
    line "dovecot -c <config_path>" (from testbed.json). The environment cannot be used: the
    process titles overwrite it.
    """
    d = os.path.abspath(d)
    if state is None:
        state = _state_or_empty(d)
    marker = state.get("marker") or _marker_for(d)
    titles = tuple(f"dovecot-{_instance_name(r, marker)}/".encode() for r in ROLES)
    confs = {info["config_path"].encode() for r in ROLES
             if (info := state.get(r)) and info.get("config_path")}
    out = []
    for pid in _all_pids():
        if pid == os.getpid():
            continue
        argv = _cmdline(pid)
        if not argv:
            continue
        ours = argv[0].startswith(titles) or (
            len(argv) >= 3 and argv[-2] == b"-c" and argv[-1] in confs
            and os.path.basename(argv[0]) == b"dovecot")
        if ours and _is_dovecot_exe(pid):
            st = _proc_starttime(pid)
            if st is not None:
                out.append((pid, st))
    return out


def _wait_gone(procs: list[tuple[int, int]], timeout: float) -> list[tuple[int, int]]:
    deadline = time.monotonic() + timeout
    left = procs
    for _ in range(int(timeout / 0.05) + 2):
        left = [(p, s) for p, s in left if _alive(p, s)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return left


def _kill(procs: list[tuple[int, int]], sig: int) -> None:
    for pid, st in procs:
        if _alive(pid, st):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


# ----------------------------------------------------------------------------------------------
# Setup: paths, TLS, users, configs

def _marker_for(d: str) -> str:
    return hashlib.sha256(os.path.abspath(d).encode()).hexdigest()[:12]


def _paths(run: str, role: str) -> dict[str, str]:
    """A server's files, all in the run dir (see _make_run_dir)."""
    root = os.path.join(run, role)
    return {
        "root": root,
        "config": os.path.join(root, "dovecot.conf"),
        "users": os.path.join(root, "users.passwd"),
        "base_dir": os.path.join(root, "run"),
        "state_dir": os.path.join(root, "state"),
        "home": os.path.join(root, "home"),
        "log": os.path.join(root, "dovecot.log"),
        "stderr": os.path.join(root, "dovecot.stderr"),
    }


def free_ports(n: int, host: str = HOST) -> list[int]:
    """n distinct ports that were free a moment ago."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


_SAFE_PATH = re.compile(r"^[A-Za-z0-9._/+-]+$")
RUN_PREFIX = "suction-bed-"
_RUN_TAG = ".suction-testbed"   # in a run dir: the --dir that owns it (down removes only those)


def _run_dir_problem(run: str) -> str | None:
    """Why Dovecot could not use `run` for its files, or None."""
    if not _SAFE_PATH.match(run):
        return "has characters other than [A-Za-z0-9._/+-] (Dovecot splits on spaces, expands %)"
    # unix sockets live in base_dir: sun_path is 108 bytes
    if len(_paths(run, "legacy")["base_dir"]) + len("/login/imap-urlauth-login") + 1 > 107:
        return "is too long for Dovecot's unix sockets"
    # the servers' processes run as dovecot and dovenull: every parent must be traversable
    p = run
    for _ in range(256):
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
        if not os.stat(p).st_mode & 0o001:
            return f"{p} is not traversable by others (the dovecot user must reach it)"
    return None


def _make_run_dir(d: str) -> str:
    """A fresh directory, mode 0755, for everything the servers' users (dovecot, dovenull) must
    reach: configs, sockets, homes, certificate. Under $TMPDIR, else /tmp (e.g. pam_tmpdir's
    0700 /tmp/user/0), so that DIR itself may be anywhere: in a 0700 home, with spaces."""
    problems = []
    for parent in dict.fromkeys((tempfile.gettempdir(), "/tmp")):
        run = tempfile.mkdtemp(prefix=RUN_PREFIX, dir=parent)
        problem = _run_dir_problem(run)
        if problem is None:
            os.chmod(run, 0o755)
            with open(os.path.join(run, _RUN_TAG), "w") as f:
                f.write(d)
            return run
        os.rmdir(run)
        problems.append(f"{run}: {problem}")
    raise TestbedError("no place for the servers' files: " + "; ".join(problems))


def _remove_run_dir(d: str, run: str | None) -> None:
    """Removes the run dir that DIR's bed made (only if its tag names DIR), keeping the servers'
    logs as DIR/<role>.log for a look after a failure."""
    if not run:
        return
    try:
        with open(os.path.join(run, _RUN_TAG)) as f:
            if f.read() != d:
                return
    except OSError:
        return
    for role in ROLES:
        try:
            shutil.move(_paths(run, role)["log"], os.path.join(d, f"{role}.log"))
        except OSError:
            pass
    shutil.rmtree(run, ignore_errors=True)


def _make_cert(tls_dir: str) -> tuple[str, str]:
    os.makedirs(tls_dir, exist_ok=True)
    cnf = os.path.join(tls_dir, "openssl.cnf")
    cert = os.path.join(tls_dir, "cert.pem")
    key = os.path.join(tls_dir, "key.pem")
    with open(cnf, "w") as f:
        f.write("[req]\n"
                "distinguished_name = dn\n"
                "prompt = no\n"
                "x509_extensions = v3\n"
                "[dn]\n"
                "CN = localhost\n"
                "[v3]\n"
                "basicConstraints = critical, CA:TRUE\n"
                "keyUsage = critical, digitalSignature, keyEncipherment, keyCertSign\n"
                "extendedKeyUsage = serverAuth\n"
                "subjectKeyIdentifier = hash\n"
                "subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1\n")
    r = subprocess.run([OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "3650",
                        "-keyout", key, "-out", cert, "-config", cnf],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise TestbedError(f"openssl failed: {r.stderr.strip()}")
    os.chmod(key, 0o600)
    os.chmod(cert, 0o644)
    return cert, key


def _write_users(path: str, users: dict[str, str]) -> None:
    lines = []
    for name, pw in users.items():
        if ":" in pw or "\n" in pw or "\r" in pw or "\0" in pw:
            raise TestbedError(f"password of {name} cannot be stored in a passwd-file")
        # user:password:uid:gid:gecos:home:shell:extra  (uid/gid/home from default_fields)
        lines.append(f"{name}:{{PLAIN}}{pw}::::::")
    with open(path, "wb") as f:
        f.write(("\n".join(lines) + "\n").encode("utf-8"))
    # read by the auth process, which runs as the internal user (dovecot)
    os.chown(path, 0, grp.getgrnam("dovecot").gr_gid)
    os.chmod(path, 0o640)


def _dovecot_conf(role: str, run: str, imap_port: int, imaps_port: int, cert: str, key: str,
                  marker: str, capability: str | None) -> str:
    p = _paths(run, role)
    dv = pwd.getpwnam("dovecot")
    lines = [
        f"{_GENERATED}: the {role!r} server",
        f"instance_name = {_instance_name(role, marker)}",
        f"base_dir = {p['base_dir']}",
        f"state_dir = {p['state_dir']}",
        "protocols = imap",
        f"listen = {HOST}",
        "shutdown_clients = yes",
        f"log_path = {p['log']}",
        f"info_log_path = {p['log']}",
        f"debug_log_path = {p['log']}",
        'log_timestamp = "%Y-%m-%d %H:%M:%S "',
        "auth_verbose = yes",
        "imap_id_log = *",
        # imap-login refuses to run as root
        "default_login_user = dovenull",
        "default_internal_user = dovecot",
        f"first_valid_uid = {min(dv.pw_uid, 100)}",
        "first_valid_gid = 1",
        "disable_plaintext_auth = no",
        "auth_mechanisms = plain login",
        # test speed: no 2 s delay after a failed login, no fsync
        "auth_failure_delay = 0",
        "mail_fsync = never",
        "mail_max_userip_connections = 100",
        "ssl = yes",
        f"ssl_cert = <{cert}",
        f"ssl_key = <{key}",
        "ssl_min_protocol = TLSv1.2",
    ]
    if os.path.exists(DH_PEM):
        lines.append(f"ssl_dh = <{DH_PEM}")
    lines += [
        "",
        "passdb {",
        "  driver = passwd-file",
        f"  args = scheme=PLAIN username_format=%u {p['users']}",
        "}",
        "userdb {",
        "  driver = passwd-file",
        f"  args = username_format=%u {p['users']}",
        f"  default_fields = uid={dv.pw_uid} gid={dv.pw_gid} home={p['home']}/%u",
        "}",
        "",
        "service imap-login {",
        "  inet_listener imap {",
        f"    address = {HOST}",
        f"    port = {imap_port}",
        "  }",
        "  inet_listener imaps {",
        f"    address = {HOST}",
        f"    port = {imaps_port}",
        "    ssl = yes",
        "  }",
        "}",
        "",
    ]
    if role == "legacy":
        lines += [
            "# Courier-like: maildir++, everything under INBOX. with '.'; no SPECIAL-USE",
            "mail_location = maildir:~/Maildir",
            f"imap_capability = {capability}",
            "namespace inbox {",
            "  inbox = yes",
            "  prefix = INBOX.",
            "  separator = .",
            "}",
        ]
    else:
        lines += [
            "# Dovecot defaults: sdbox, '/' separator, no prefix, RFC 6154 special-use",
            "mail_location = sdbox:~/mail",
            "login_trusted_networks = 127.0.0.0/8 ::1/128",
            "namespace inbox {",
            "  inbox = yes",
            "  prefix =",
            "  separator = /",
        ]
        for name, use in NEW_SPECIAL_USE:
            lines += [f"  mailbox {name} {{",
                      f"    special_use = {use}",
                      "    auto = subscribe",
                      "  }"]
        lines.append("}")
    return "\n".join(lines) + "\n"


_GENERATED = "# generated by suction tests/testbed/testbed.py"


def _is_generated(conf: str) -> bool:
    try:
        with open(conf) as f:
            return f.readline().startswith(_GENERATED)
    except OSError:
        return False


def _prepare_role(run: str, role: str, users: dict[str, str]) -> dict[str, str]:
    p = _paths(run, role)
    os.makedirs(p["root"], exist_ok=True)
    os.chmod(p["root"], 0o755)
    os.makedirs(p["state_dir"], exist_ok=True)
    os.makedirs(p["home"], exist_ok=True)
    os.chmod(p["home"], 0o755)
    dv = pwd.getpwnam("dovecot")
    for user in users:
        h = os.path.join(p["home"], user)
        os.makedirs(h, exist_ok=True)
        os.chown(h, dv.pw_uid, dv.pw_gid)
        os.chmod(h, 0o700)
    _write_users(p["users"], users)
    # pre-created so that it stays readable (Dovecot's log process would create it 0600)
    with open(p["log"], "a"):
        pass
    os.chmod(p["log"], 0o644)
    return p


def _tail(path: str, n: int = 30) -> str:
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return f"({path} not readable)"
    return "\n".join(lines[-n:]) or f"({path} is empty)"


def _greeting_ok(port: int, use_tls: bool, ca_file: str, timeout: float) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as raw:
            s = raw
            if use_tls:
                s = ssl.create_default_context(cafile=ca_file).wrap_socket(
                    raw, server_hostname=HOST)
            line = s.recv(4096)
            return line.startswith(b"* OK")
    except (OSError, ssl.SSLError):
        return False


def _start_server(role: str, run: str, info: dict, ca_file: str, env: dict,
                  timeout: float, penalty: bool = False) -> dict:
    p = _paths(run, role)
    with open(p["stderr"], "w") as errf:
        r = subprocess.run([DOVECOT, "-c", p["config"]], stdin=subprocess.DEVNULL,
                           stdout=errf, stderr=subprocess.STDOUT, env=env, timeout=timeout)
    if r.returncode != 0:
        raise TestbedError(f"{role}: dovecot -c {p['config']} exited {r.returncode}:\n"
                           f"{_tail(p['stderr'])}\n--- {p['log']}:\n{_tail(p['log'])}")
    if not penalty:
        # Dovecot's auth penalty (2.3) delays every login from an IP for 2-15 s after a failed
        # one -- for trusted networks too -- and anvil keeps it across tests. The auth process
        # (started on the first login, not yet) skips penalties silently when it cannot find
        # this socket, so unlink it while the master still holds the listening fd.
        try:
            os.unlink(os.path.join(p["base_dir"], "anvil-auth-penalty"))
        except FileNotFoundError:
            pass
    pid_file = os.path.join(p["base_dir"], "master.pid")
    deadline = time.monotonic() + timeout
    pid = None
    ready = False
    for _ in range(int(timeout / 0.05) + 2):
        if pid is None:
            try:
                with open(pid_file) as f:
                    pid = int(f.read().strip())
            except (OSError, ValueError):
                pass
        if pid is not None and not _alive(pid):
            break
        if pid is not None and _greeting_ok(info["imap_port"], False, ca_file, 2) \
                and _greeting_ok(info["imaps_port"], True, ca_file, 2):
            ready = True
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if not ready:
        why = "master died" if pid is not None and not _alive(pid) else \
            f"not accepting connections within {timeout:g}s"
        raise TestbedError(f"{role}: dovecot {why} (ports {info['imap_port']}/"
                           f"{info['imaps_port']}, pid {pid}).\n--- tail of {p['log']}:\n"
                           f"{_tail(p['log'])}\n--- {p['stderr']}:\n{_tail(p['stderr'])}")
    info["pid"] = pid
    info["pid_starttime"] = _proc_starttime(pid)
    return info


def _write_json(path: str, obj: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def _state_or_empty(d: str) -> dict:
    try:
        return load_state(d)
    except (TestbedError, ValueError):
        return {}


def load_state(d: str) -> dict:
    path = os.path.join(os.path.abspath(d), "testbed.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise TestbedError(f"{path} not found: is the bed up?") from None


# ----------------------------------------------------------------------------------------------
# up / down

def extra_user_names(n: int) -> dict[str, str]:
    """The bed's extra users (for login storms): user001 .. userNNN, password "pw-userNNN"."""
    return {f"user{i:03d}": f"pw-user{i:03d}" for i in range(1, n + 1)}


def up(d: str, seed: bool = True, large_mb: float = DEFAULT_LARGE_MB,
       timeout: float = DEFAULT_START_TIMEOUT, auth_penalty: bool = False,
       extra_users: int = 0) -> dict:
    """Start both servers, seed legacy, write DIR/testbed.json. Returns its content.

    extra_users: that many more users (extra_user_names), with empty mailboxes.

    DIR holds testbed.json and corpus.json only, so it may be anywhere (a 0700 home, a path
    with spaces). What Dovecot's users must reach is in a fresh run dir (_make_run_dir),
    recorded in testbed.json as "run_dir" before anything starts: `down` removes it, and so
    does any failure here.
    """
    if os.geteuid() != 0:
        raise TestbedError("must run as root (Dovecot's master drops privileges itself)")
    for tool in (DOVECOT, DOVEADM, OPENSSL):
        if not os.path.exists(tool):
            raise TestbedError(f"{tool} not found")
    t0 = time.monotonic()
    d = os.path.abspath(d)
    os.makedirs(d, exist_ok=True)
    down(d, quiet=True)              # a bed already running here is replaced, not doubled
    # legacy/, new/, tls/: what a bed put in DIR before the run dir existed
    for name in ("legacy", "new", "tls", "testbed.json", "corpus.json", "legacy.log", "new.log"):
        path = os.path.join(d, name)
        if os.path.isdir(path):
            conf = os.path.join(path, "dovecot.conf")
            ours = (name == "tls" and os.path.exists(os.path.join(path, "openssl.cnf"))) or \
                not os.listdir(path) or _is_generated(conf)
            if not ours:
                raise TestbedError(f"{path} exists and is not from a previous bed; "
                                   "use an empty or dedicated --dir")
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.unlink(path)

    users = dict(USERS) | extra_user_names(extra_users)
    marker = _marker_for(d)
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")}
    if "TZ" in os.environ:
        env["TZ"] = os.environ["TZ"]
    run = _make_run_dir(d)
    state: dict = {
        "ca_file": None,
        "run_dir": run,
        "users": users,
        "legacy": None,
        "new": None,
        "dir": d,
        "marker": marker,
        "seed_user": SEED_USER,
        "corpus": None,
        "auth_penalty": auth_penalty,
    }
    json_path = os.path.join(d, "testbed.json")
    try:
        _write_json(json_path, state)
        cert, key = _make_cert(os.path.join(run, "tls"))
        state["ca_file"] = cert
        for role in ("new", "legacy"):     # new first: legacy's capability list is probed on it
            p = _prepare_role(run, role, users)
            caps = None
            if role == "legacy":
                try:
                    caps = Server("new", state["new"], cert, users).capabilities()
                except Exception as e:   # noqa: BLE001 -- fall back, but say so
                    _log(f"probing new's CAPABILITY failed ({e}); using the 2.3.19 list")
                    caps = FALLBACK_CAPS.split()
                caps = " ".join(c for c in caps if c.upper() != "SPECIAL-USE")
            last_err: Exception | None = None
            for attempt in range(3):       # a port may be taken between picking and binding
                imap_port, imaps_port = free_ports(2)
                info = {"host": HOST, "imap_port": imap_port, "imaps_port": imaps_port,
                        "log_path": p["log"], "config_path": p["config"], "pid": 0,
                        "pid_starttime": None, "base_dir": p["base_dir"], "home": p["home"],
                        "instance_name": _instance_name(role, marker)}
                with open(p["config"], "w") as f:
                    f.write(_dovecot_conf(role, run, imap_port, imaps_port, cert, key, marker,
                                          caps))
                state[role] = info
                _write_json(json_path, state)
                try:
                    _start_server(role, run, info, cert, env, timeout, auth_penalty)
                    last_err = None
                    break
                except TestbedError as e:
                    last_err = e
                    _stop(d, state, DEFAULT_STOP_TIMEOUT, quiet=True)   # the run dir stays
                    if "in use" not in str(e):
                        break
            if last_err is not None:
                raise last_err
            _write_json(json_path, state)
        t_started = time.monotonic()
        if seed:
            corpus = seed_legacy(Server("legacy", state["legacy"], cert, users),
                                 large_mb=large_mb)
            corpus_path = os.path.join(d, "corpus.json")
            _write_json(corpus_path, corpus)
            state["corpus"] = corpus_path
        _write_json(json_path, state)
        t_done = time.monotonic()
        _log(f"up in {t_done - t0:.2f}s (servers {t_started - t0:.2f}s, seeding "
             f"{t_done - t_started:.2f}s); {json_path}")
        return state
    except BaseException:
        down(d, quiet=True)
        _remove_run_dir(d, run)      # if testbed.json could not even be written
        raise


def _masters(d: str, state: dict) -> list[tuple[int, int]]:
    """Live master processes of the bed: from testbed.json, the pid files, the command lines."""
    out = set()
    for role in ROLES:
        info = state.get(role) or {}
        if not info.get("config_path"):
            continue
        cands = []
        if info.get("pid"):
            cands.append((info["pid"], info.get("pid_starttime")))
        try:
            with open(os.path.join(info["base_dir"], "master.pid")) as f:
                cands.append((int(f.read().strip()), None))
        except (OSError, KeyError, ValueError):
            pass
        for pid, st in cands:
            argv = _cmdline(pid)
            if _alive(pid, st) and _is_dovecot_exe(pid) and argv and \
                    argv[-1] == info["config_path"].encode():
                out.add((pid, _proc_starttime(pid)))
    for pid, st in bed_processes(d, state):
        argv = _cmdline(pid)
        if argv and os.path.basename(argv[0]) == b"dovecot":
            out.add((pid, st))
    return sorted(out)


def down(d: str, timeout: float = DEFAULT_STOP_TIMEOUT, quiet: bool = False) -> None:
    """Stop both servers of the bed in DIR and wait until every process of it is gone.

    Idempotent; never fails when nothing runs. SIGTERM to each master (what `doveadm stop`
    does, minus its slow polling), then bounded waits, then SIGKILL for anything left. Then
    the run dir is removed (the servers' logs kept as DIR/legacy.log and DIR/new.log).
    """
    d = os.path.abspath(d)
    state = _state_or_empty(d)
    _stop(d, state, timeout, quiet)
    _remove_run_dir(d, state.get("run_dir"))


def _stop(d: str, state: dict, timeout: float, quiet: bool) -> None:
    """down() without removing the run dir (up() retries a start in it)."""
    masters = _masters(d, state)
    procs = set(masters)
    for pid, _st in masters:
        procs.update(_descendants(pid))
    procs.update(bed_processes(d, state))
    procs = sorted(procs)
    complaints = []
    _kill(masters, signal.SIGTERM)
    left = _wait_gone(procs, timeout)
    if left:
        complaints.append(f"SIGKILL to {[p for p, _ in left]} still there after {timeout:g}s")
        _kill(left, signal.SIGKILL)
        _wait_gone(left, 5.0)
    # a last look, e.g. for a process forked while we were waiting
    for _ in range(3):
        left = bed_processes(d, state)
        if not left:
            break
        complaints.append(f"stray processes of the bed killed: {[p for p, _ in left]}")
        _kill(left, signal.SIGKILL)
        _wait_gone(left, 5.0)
    if complaints and not quiet:
        for c in complaints:
            _log(c)


# ----------------------------------------------------------------------------------------------
# The legacy corpus

_CRLF = b"\r\n"


def _msg(headers: list[tuple[str, str | bytes]], body: str | bytes) -> bytes:
    out = bytearray()
    for k, v in headers:
        out += k.encode("ascii") + b": " + (v if isinstance(v, bytes) else v.encode("utf-8"))
        out += _CRLF
    out += _CRLF
    if isinstance(body, str):
        body = body.encode("utf-8")
    body = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if not body.endswith(_CRLF):
        body += _CRLF
    return bytes(out + body)


def _b64_lines(data: bytes) -> str:
    enc = base64.b64encode(data).decode("ascii")
    return "\n".join(enc[i:i + 76] for i in range(0, len(enc), 76))


def _imap_date(when: _dt.datetime) -> str:
    return when.strftime("%d-%b-%Y %H:%M:%S %z")


def _rfc822_date(when: _dt.datetime) -> str:
    return when.strftime("%a, %d %b %Y %H:%M:%S %z")


def parse_internaldate(s: str) -> _dt.datetime:
    return _dt.datetime.strptime(s.strip(), "%d-%b-%Y %H:%M:%S %z")


# (full legacy name in UTF-8, subscribed). Created in this order; INBOX exists already.
LEGACY_FOLDERS: list[tuple[str, bool]] = [
    ("INBOX", True),
    ("INBOX.Projects", True),
    ("INBOX.Projects.2024", True),
    ("INBOX.Projects.2024.Q1", True),
    ("INBOX.Sent Items", True),
    ("INBOX.Deleted Items", True),
    ("INBOX.Junk E-mail", True),
    ("INBOX.Drafts", True),
    ("INBOX.Entw\u00fcrfe", True),
    ("INBOX.\u00c9l\u00e9ments envoy\u00e9s", False),
    ("INBOX.\u65e5\u672c\u8a9e", True),
    ('INBOX.Say "hi"', False),
    ("INBOX.100% done", True),
    ("INBOX.Tom & Jerry", False),
    ("INBOX.Empty", True),
    ("INBOX.Ghost.Child", True),     # INBOX.Ghost is never created: a \Noselect parent
]
LEGACY_NOSELECT = ["INBOX.Ghost"]
LEGACY_SUBSCRIBED_MISSING = ["INBOX.Gone"]   # subscribed, does not exist (a real-world quirk)


def build_corpus(large_mb: float = DEFAULT_LARGE_MB) -> list[dict]:
    """Deterministic list of {folder, data, flags, internaldate, note} in APPEND order."""
    rng = random.Random(SEED)
    msgs: list[dict] = []
    zones = [_dt.timezone.utc, _dt.timezone(_dt.timedelta(hours=1)),
             _dt.timezone(_dt.timedelta(hours=-5)), _dt.timezone(_dt.timedelta(hours=9)),
             _dt.timezone(_dt.timedelta(hours=5, minutes=30))]
    people = ["Alice Liddell <alice@example.org>", "Bob Builder <bob@example.net>",
              "Carol Danvers <carol@example.com>", "Dave Null <dave@example.org>",
              "Eve Listener <eve@example.net>", "Mallory <mallory@example.com>"]
    words = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
             "incididunt ut labore et dolore magna aliqua quarterly report budget meeting "
             "invoice deadline review draft agenda minutes offsite release").split()
    counter = [0]

    def when(year_lo=2009, year_hi=2024) -> _dt.datetime:
        return _dt.datetime(rng.randint(year_lo, year_hi), rng.randint(1, 12),
                            rng.randint(1, 28), rng.randint(0, 23), rng.randint(0, 59),
                            rng.randint(0, 59), tzinfo=rng.choice(zones))

    def add(folder: str, data: bytes, flags: list[str], at: _dt.datetime, note: str) -> None:
        msgs.append({"folder": folder, "data": data, "flags": flags,
                     "internaldate": _imap_date(at), "note": note})

    def ordinary(folder: str, flags: list[str], note: str = "ordinary",
                 message_id: bool = True, at: _dt.datetime | None = None) -> None:
        counter[0] += 1
        at = at or when()
        subject = " ".join(rng.choice(words) for _ in range(rng.randint(2, 6))).capitalize()
        paras = [" ".join(rng.choice(words) for _ in range(rng.randint(8, 30)))
                 for _ in range(rng.randint(1, 5))]
        hdrs = [("Return-Path", "<sender@example.org>"),
                ("From", rng.choice(people)),
                ("To", "Alice Liddell <alice@example.org>"),
                ("Subject", f"{subject} #{counter[0]}"),
                ("Date", _rfc822_date(at))]
        if message_id:
            hdrs.append(("Message-ID", f"<tb{counter[0]:04d}.{rng.getrandbits(40):x}"
                                       "@testbed.example.org>"))
        hdrs += [("MIME-Version", "1.0"),
                 ("Content-Type", "text/plain; charset=us-ascii"),
                 ("Content-Transfer-Encoding", "7bit")]
        add(folder, _msg(hdrs, "\n\n".join(paras) + "\n"), flags, at, note)

    # -- INBOX: the special cases
    at = _dt.datetime(1998, 3, 17, 9, 15, 0, tzinfo=_dt.timezone.utc)
    add("INBOX", _msg([("From", "Old Timer <old@example.org>"),
                       ("To", "alice@example.org"),
                       ("Subject", "Greetings from 1998"),
                       ("Date", _rfc822_date(at)),
                       ("Message-ID", "<1998.0317@old.example.org>")],
                      "Y2K is coming.\n"), ["\\Seen"], at, "internaldate-1998")
    ordinary("INBOX", ["\\Seen", "\\Answered"], "internaldate-2005",
             at=_dt.datetime(2005, 7, 4, 18, 30, 0,
                             tzinfo=_dt.timezone(_dt.timedelta(hours=-5))))
    # multipart/mixed with a base64 attachment
    at = when()
    attachment = random.Random(SEED + 1).randbytes(6000)
    body = ("This is a multi-part message in MIME format.\n"
            "--=_testbed_boundary_1\n"
            "Content-Type: text/plain; charset=utf-8\n"
            "Content-Transfer-Encoding: 8bit\n\n"
            "Please find the report attached. Gr\u00fc\u00dfe!\n\n"
            "--=_testbed_boundary_1\n"
            "Content-Type: application/pdf; name=\"report.pdf\"\n"
            "Content-Transfer-Encoding: base64\n"
            "Content-Disposition: attachment; filename=\"report.pdf\"\n\n"
            + _b64_lines(attachment) + "\n"
            "--=_testbed_boundary_1--\n")
    add("INBOX", _msg([("From", "Bob Builder <bob@example.net>"),
                       ("To", "Alice Liddell <alice@example.org>"),
                       ("Subject", "Quarterly report (attachment)"),
                       ("Date", _rfc822_date(at)),
                       ("Message-ID", "<multipart.1@testbed.example.org>"),
                       ("MIME-Version", "1.0"),
                       ("Content-Type",
                        'multipart/mixed; boundary="=_testbed_boundary_1"')], body),
        ["\\Seen", "$Forwarded"], at, "multipart-base64-attachment")
    # raw 8-bit UTF-8 headers
    at = when()
    add("INBOX", _msg([("From", "J\u00fcrgen M\u00fcller <juergen@example.de>".encode()),
                       ("To", "Alice Liddell <alice@example.org>"),
                       ("Subject", "Gr\u00fc\u00dfe aus K\u00f6ln \u2014 \u65e5\u672c\u8a9e"
                                   "\u30c6\u30b9\u30c8".encode()),
                       ("Date", _rfc822_date(at)),
                       ("Message-ID", "<raw8bit.1@testbed.example.org>"),
                       ("MIME-Version", "1.0"),
                       ("Content-Type", "text/plain; charset=utf-8"),
                       ("Content-Transfer-Encoding", "8bit")],
                      "Sch\u00f6ne Gr\u00fc\u00dfe, \u3053\u3093\u306b\u3061\u306f\n"),
        ["\\Flagged"], at, "raw-utf8-headers")
    # RFC 2047 encoded subject
    at = when()
    add("INBOX", _msg([("From", "=?utf-8?q?Ren=C3=A9e?= <renee@example.fr>"),
                       ("To", "alice@example.org"),
                       ("Subject", "=?utf-8?b?w4ls6ZltZW50cyBlbnZvecOpcw==?="),
                       ("Date", _rfc822_date(at)),
                       ("Message-ID", "<encword.1@testbed.example.org>")],
                      "encoded words\n"), ["$Label1"], at, "rfc2047-subject")
    # no Message-ID at all
    ordinary("INBOX", [], "no-message-id", message_id=False)
    ordinary("INBOX", ["\\Seen"], "no-message-id", message_id=False)
    # an exact duplicate pair: same bytes, flags and date, twice in one folder
    at = when()
    dup = _msg([("From", "Dave Null <dave@example.org>"),
                ("To", "alice@example.org"),
                ("Subject", "This message arrives twice"),
                ("Date", _rfc822_date(at)),
                ("Message-ID", "<duplicate.1@testbed.example.org>")],
               "Same bytes, twice.\n")
    add("INBOX", dup, ["\\Seen"], at, "duplicate-1")
    add("INBOX", dup, ["\\Seen"], at, "duplicate-2")
    # keywords, \Deleted
    ordinary("INBOX", ["\\Seen", "ProjectX"], "custom-keyword")
    ordinary("INBOX", ["\\Seen", "\\Deleted"], "deleted-not-expunged")
    ordinary("INBOX", ["$Forwarded", "$Label1", "\\Seen", "\\Flagged"], "keywords")
    # the large one
    if large_mb > 0:
        at = when()
        raw_len = int(large_mb * 1024 * 1024 * 57 / 78)   # base64 + CRLF every 76 chars
        blob = random.Random(SEED + 2).randbytes(raw_len)
        body = ("--=_testbed_big\n"
                "Content-Type: text/plain; charset=us-ascii\n\n"
                "A large attachment follows.\n\n"
                "--=_testbed_big\n"
                "Content-Type: application/octet-stream; name=\"big.bin\"\n"
                "Content-Transfer-Encoding: base64\n"
                "Content-Disposition: attachment; filename=\"big.bin\"\n\n"
                + _b64_lines(blob) + "\n--=_testbed_big--\n")
        add("INBOX", _msg([("From", "Carol Danvers <carol@example.com>"),
                           ("To", "alice@example.org"),
                           ("Subject", f"Large message ({large_mb:g} MB)"),
                           ("Date", _rfc822_date(at)),
                           ("Message-ID", "<large.1@testbed.example.org>"),
                           ("MIME-Version", "1.0"),
                           ("Content-Type", 'multipart/mixed; boundary="=_testbed_big"')],
                          body), ["\\Seen"], at, "large")
    for _ in range(10):
        ordinary("INBOX", rng.choice([[], ["\\Seen"], ["\\Seen"], ["\\Seen", "\\Answered"],
                                      ["\\Flagged"]]))

    # -- the other folders
    ordinary("INBOX.Projects", ["\\Seen"])
    ordinary("INBOX.Projects", ["\\Seen", "ProjectX"], "custom-keyword")
    ordinary("INBOX.Projects.2024", ["\\Seen"])
    for _ in range(3):
        ordinary("INBOX.Projects.2024.Q1", rng.choice([[], ["\\Seen"], ["\\Seen", "$Label1"]]))
    for _ in range(4):
        ordinary("INBOX.Sent Items", ["\\Seen"])
    ordinary("INBOX.Sent Items", ["\\Seen", "\\Answered", "$Forwarded"], "keywords")
    ordinary("INBOX.Deleted Items", ["\\Seen", "\\Deleted"], "deleted-not-expunged")
    ordinary("INBOX.Deleted Items", ["\\Seen"])
    ordinary("INBOX.Junk E-mail", [], "junk")
    ordinary("INBOX.Junk E-mail", ["$Junk"], "junk")
    ordinary("INBOX.Drafts", ["\\Draft"], "draft")
    ordinary("INBOX.Drafts", ["\\Draft", "\\Seen"], "draft")
    ordinary("INBOX.Entw\u00fcrfe", ["\\Draft"], "draft")
    ordinary("INBOX.\u00c9l\u00e9ments envoy\u00e9s", ["\\Seen"])
    ordinary("INBOX.\u00c9l\u00e9ments envoy\u00e9s", ["\\Seen"])
    ordinary("INBOX.\u65e5\u672c\u8a9e", [])
    ordinary('INBOX.Say "hi"', ["\\Seen"])
    ordinary("INBOX.100% done", ["\\Seen", "\\Flagged"])
    ordinary("INBOX.Tom & Jerry", [])
    ordinary("INBOX.Ghost.Child", ["\\Seen"])
    ordinary("INBOX.Ghost.Child", [], "internaldate-2005",
             at=_dt.datetime(2005, 1, 2, 3, 4, 5, tzinfo=_dt.timezone(_dt.timedelta(hours=9))))
    return msgs


def seed_legacy(server: Server, user: str = SEED_USER,
                large_mb: float = DEFAULT_LARGE_MB) -> dict:
    """Create folders and APPEND the corpus as a real client; returns corpus.json content."""
    msgs = build_corpus(large_mb)
    imap = server.connect(user, timeout=60)
    try:
        for name, _sub in LEGACY_FOLDERS:
            if name != "INBOX":
                _check(imap.create(qmailbox(name)), f"CREATE {name}")
        for name, sub in LEGACY_FOLDERS:
            if sub:
                _check(imap.subscribe(qmailbox(name)), f"SUBSCRIBE {name}")
        for name in LEGACY_SUBSCRIBED_MISSING:
            # Dovecot refuses SUBSCRIBE to a missing mailbox, but DELETE keeps the subscription
            _check(imap.create(qmailbox(name)), f"CREATE {name}")
            _check(imap.subscribe(qmailbox(name)), f"SUBSCRIBE {name}")
            _check(imap.delete(qmailbox(name)), f"DELETE {name}")
        folders: dict[str, dict] = {
            name: {"mutf7": mutf7_encode(name), "subscribed": sub, "messages": []}
            for name, sub in LEGACY_FOLDERS}
        for m in msgs:
            data = m["data"]
            if imaplib.MapCRLF.sub(imaplib.CRLF, data) != data:
                raise TestbedError(f"corpus message {m['note']} is not pure CRLF")
            flags = "(" + " ".join(m["flags"]) + ")" if m["flags"] else None
            _check(imap.append(qmailbox(m["folder"]), flags, '"' + m["internaldate"] + '"',
                               data), f"APPEND to {m['folder']}")
            folders[m["folder"]]["messages"].append({
                "sha256": hashlib.sha256(data).hexdigest(),
                "flags": m["flags"],
                "internaldate": m["internaldate"],
                "size": len(data),
                "note": m["note"],
            })
        imap.logout()
    except BaseException:
        try:
            imap.shutdown()
        except OSError:
            pass
        raise
    return {
        "server": "legacy",
        "user": user,
        "prefix": "INBOX.",
        "separator": ".",
        "seed": SEED,
        "large_mb": large_mb,
        "folders": folders,
        "noselect": LEGACY_NOSELECT,
        "subscribed_missing": LEGACY_SUBSCRIBED_MISSING,
        "total_messages": len(msgs),
        "total_bytes": sum(len(m["data"]) for m in msgs),
    }


def fetch_folder(imap: imaplib.IMAP4, name: str) -> list[dict]:
    """EXAMINE a folder (UTF-8 name) and fetch every message: uid, flags, internaldate, data."""
    data = _check(imap.select(qmailbox(name), readonly=True), f"EXAMINE {name}")
    if int(data[0]) == 0:
        return []
    data = _check(imap.uid("FETCH", "1:*", "(UID FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])"),
                  f"FETCH {name}")
    out = []
    i = 0
    while i < len(data):
        item = data[i]
        if isinstance(item, tuple):
            head, body = item
            tail = data[i + 1] if i + 1 < len(data) and isinstance(data[i + 1], bytes) else b""
            meta = head + b" " + tail
            i += 2 if tail else 1
            flags = re.search(rb"FLAGS \(([^)]*)\)", meta).group(1).decode().split()
            out.append({
                "uid": int(re.search(rb"UID (\d+)", meta).group(1)),
                "flags": flags,
                "internaldate": re.search(rb'INTERNALDATE "([^"]+)"', meta).group(1).decode(),
                "size": int(re.search(rb"RFC822\.SIZE (\d+)", meta).group(1)),
                "data": body,
            })
        else:
            i += 1
    out.sort(key=lambda m: m["uid"])
    return out


# ----------------------------------------------------------------------------------------------
# Selftest

def selftest(keep: bool = False, d: str | None = None) -> int:
    t0 = time.monotonic()
    own_dir = d is None
    d = d or tempfile.mkdtemp(prefix="suction-selftest-")
    failures: list[str] = []
    checks = [0]

    def check(cond: bool, what: str) -> None:
        checks[0] += 1
        if not cond:
            failures.append(what)
            _log(f"FAIL: {what}")

    masters: list[tuple[int, int]] = []
    procs: list[tuple[int, int]] = []
    ports: list[int] = []
    try:
        with Testbed(d) as tb:
            t_up = time.monotonic() - t0
            for s in (tb.legacy, tb.new):
                masters.append((s.pid, s.info["pid_starttime"]))
                procs += _descendants(s.pid)
                ports += [s.imap_port, s.imaps_port]
            check(all(_alive(p, st) for p, st in masters), "both masters alive")
            live = {x for x in masters + procs if _alive(*x)}
            check(len(live) >= 4 and live <= set(bed_processes(d)),
                  "every process of the bed is found by its title")
            st = load_state(d)
            for key in ("ca_file", "users", "legacy", "new", "run_dir"):
                check(key in st, f"testbed.json has {key}")
            run = st["run_dir"]
            check(os.stat(run).st_mode & 0o777 == 0o755, f"run dir {run} is 0755")
            check(not os.path.exists(os.path.join(d, "legacy")), "no server files in DIR")
            for role in ROLES:
                for key in ("host", "imap_port", "imaps_port", "log_path", "config_path", "pid"):
                    check(key in st[role], f"testbed.json {role} has {key}")

            # legacy shape
            corpus = tb.corpus()
            lst = tb.legacy.list()
            names = {e["name"]: e for e in lst}
            check(all(e["sep"] == "." for e in lst), "legacy separator is '.'")
            check(all(e["name"] == "INBOX" or e["name"].startswith("INBOX.") for e in lst),
                  f"legacy names are under INBOX.: {sorted(names)}")
            check(not any(a.lower() in SPECIAL_USE_ATTRS for e in lst for a in e["attrs"]),
                  "legacy LIST has no special-use attributes")
            for name in corpus["folders"]:
                check(name in names, f"legacy folder {name!r} listed")
            for name in corpus["noselect"]:
                check(name in names and "\\Noselect" in names[name]["attrs"],
                      f"{name} is \\Noselect ({names.get(name)})")
            caps_l = tb.legacy.capabilities()
            caps_n = tb.new.capabilities()
            check("SPECIAL-USE" not in caps_l, "legacy does not advertise SPECIAL-USE")
            check("SPECIAL-USE" in caps_n, "new advertises SPECIAL-USE")
            check(set(caps_l) == set(caps_n) - {"SPECIAL-USE"},
                  f"legacy caps = new caps - SPECIAL-USE ({set(caps_l) ^ set(caps_n)})")
            for c in ("IMAP4rev1", "LITERAL+", "CONDSTORE", "QRESYNC", "UIDPLUS", "MULTIAPPEND",
                      "NAMESPACE", "ESEARCH", "LIST-STATUS", "ENABLE", "ID", "IDLE"):
                check(c in caps_l, f"legacy advertises {c}")
            imap = tb.legacy.connect("alice")
            ns = _check(imap.namespace(), "NAMESPACE")[0]
            check(ns.startswith(b'(("INBOX." ".")) NIL NIL'), f"legacy NAMESPACE {ns!r}")
            lsub = {e["name"] for e in parse_list(_check(imap.lsub('""', "*"), "LSUB"))}
            want_sub = {n for n, f in corpus["folders"].items() if f["subscribed"]}
            want_sub |= set(corpus["subscribed_missing"])
            check(lsub == want_sub, f"legacy subscriptions {lsub ^ want_sub}")
            # the corpus comes back exactly
            total = 0
            for name, folder in corpus["folders"].items():
                got = fetch_folder(imap, name)
                want = folder["messages"]
                check(len(got) == len(want), f"{name}: {len(got)} messages, want {len(want)}")
                for g, w in zip(got, want):
                    total += 1
                    what = f"{name} uid {g['uid']} ({w['note']})"
                    check(hashlib.sha256(g["data"]).hexdigest() == w["sha256"], f"{what}: hash")
                    check(g["size"] == w["size"] == len(g["data"]), f"{what}: size")
                    check(set(g["flags"]) - {"\\Recent"} == set(w["flags"]),
                          f"{what}: flags {g['flags']} want {w['flags']}")
                    check(parse_internaldate(g["internaldate"]) ==
                          parse_internaldate(w["internaldate"]),
                          f"{what}: internaldate {g['internaldate']} want {w['internaldate']}")
            check(total == corpus["total_messages"], "every corpus message compared")
            imap.logout()

            # new shape
            lst = tb.new.list()
            names = {e["name"]: e for e in lst}
            check(all(e["sep"] == "/" for e in lst), "new separator is '/'")
            ns_conn = tb.new.connect("bob", tls="implicit")
            ns = _check(ns_conn.namespace(), "NAMESPACE")[0]
            check(ns.startswith(b'(("" "/")) NIL NIL'), f"new NAMESPACE {ns!r}")
            lsub = {e["name"] for e in parse_list(_check(ns_conn.lsub('""', "*"), "LSUB"))}
            check({n for n, _ in NEW_SPECIAL_USE} <= lsub, f"new auto-subscribed {lsub}")
            ns_conn.logout()
            for name, use in NEW_SPECIAL_USE:
                check(name in names and use in names[name]["attrs"],
                      f"new {name} has {use} ({names.get(name)})")

            # every user, every transport, both servers
            for s in (tb.legacy, tb.new):
                for user in tb.users:
                    for tls in ("none", "starttls", "implicit"):
                        try:
                            c = s.connect(user, tls=tls)
                            _check(c.noop(), "NOOP")
                            if tls != "none":
                                check(c.sock.version() in ("TLSv1.2", "TLSv1.3"),
                                      f"{s.role} {user} {tls}: {c.sock.version()}")
                            c.logout()
                        except Exception as e:  # noqa: BLE001
                            check(False, f"{s.role} login {user} over {tls}: {e!r}")
                    try:    # LOGIN too, for every user: UTF-8 password as a literal
                        c = s.open()
                        pw = tb.users[user].encode("utf-8")
                        c.literal = pw
                        _check(c._simple_command("LOGIN", user), "LOGIN literal")
                        c.logout()
                    except Exception as e:  # noqa: BLE001
                        check(False, f"{s.role} LOGIN {user} with a literal: {e!r}")
                for user in tb.users:
                    try:
                        s.connect(user, mech="plain").logout()
                    except Exception as e:  # noqa: BLE001
                        check(False, f"{s.role} AUTHENTICATE PLAIN {user}: {e!r}")
                for user, pw in (("alice", "wrong"), ("bob", tb.users["bob"][:-1])):
                    try:        # a near miss must fail: the password is compared exactly
                        s.connect(user, password=pw).logout()
                        check(False, f"{s.role}: wrong password {pw!r} accepted for {user}")
                    except imaplib.IMAP4.error:
                        pass
            # certificates really are verified
            try:
                c = imaplib.IMAP4_SSL(HOST, tb.new.imaps_port,
                                      ssl_context=ssl.create_default_context(), timeout=5)
                c.logout()
                check(False, "TLS without the bed's CA should fail verification")
            except ssl.SSLCertVerificationError:
                pass
            ctx = ssl.create_default_context(cafile=tb.ca_file)
            with socket.create_connection(("localhost", tb.new.imaps_port), timeout=5) as raw:
                with ctx.wrap_socket(raw, server_hostname="localhost") as tls_sock:
                    check(tls_sock.recv(100).startswith(b"* OK"), "TLS to name localhost")
            # trusted proxy: forwarded client address shows in the new server's log
            c = tb.new.connect("alice", id={"x-originating-ip": "192.0.2.7",
                                            "x-originating-port": "51234",
                                            "x-session-id": "testbedSelfTest1"})
            c.logout()
            try:
                tb.new.wait_log(r"imap-login: (?:Info: )?Login: user=<alice>, method=\S+, rip=192\.0\.2\.7,")
            except TestbedError as e:
                check(False, str(e))
            # ...and the legacy server does not trust us with it
            c = tb.legacy.connect("bob", id={"x-originating-ip": "192.0.2.8"})
            c.logout()
            try:
                tb.legacy.wait_log(r"imap-login: (?:Info: )?Login: user=<bob>, method=\S+, rip=127\.0\.0\.1,")
            except TestbedError as e:
                check(False, str(e))
            check("rip=192.0.2.8" not in tb.legacy.read_log(), "legacy ignores x-originating-ip")
            procs += _descendants(tb.legacy.pid) + _descendants(tb.new.pid)
        t_down0 = time.monotonic()
        # after the with block: nothing of the bed may remain
        check(not any(_alive(p, s) for p, s in masters + procs), "all bed processes gone")
        check(not bed_processes(d), "no process of the bed is found by title")
        for port in ports:
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                check(False, f"port {port} still accepts connections")
            except OSError:
                pass
        check(not os.path.exists(run), f"down removed the run dir {run}")
        check(all(os.path.isfile(os.path.join(d, f"{r}.log")) for r in ROLES),
              "down kept the servers' logs in DIR")
        down(d)         # idempotent
        down(d)
        check(not bed_processes(d), "down twice is harmless")
        _log(f"up {t_up:.2f}s, total {time.monotonic() - t0:.2f}s "
             f"(teardown checks {time.monotonic() - t_down0:.2f}s)")
    except Exception as e:  # noqa: BLE001
        import traceback
        traceback.print_exc()
        failures.append(f"exception: {e!r}")
    finally:
        down(d, quiet=True)
        if own_dir and not keep and not failures:
            shutil.rmtree(d, ignore_errors=True)
    if failures:
        _log(f"selftest FAILED: {len(failures)} of {checks[0]} checks (dir {d})")
        return 1
    _log(f"selftest passed: {checks[0]} checks")
    return 0


# ----------------------------------------------------------------------------------------------
# CLI

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Two real Dovecot servers for suction's tests.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("up", help="start both servers, seed legacy, write DIR/testbed.json")
    a.add_argument("--dir", required=True)
    a.add_argument("--no-seed", action="store_true")
    a.add_argument("--large-mb", type=float, default=DEFAULT_LARGE_MB,
                   help="size of the large message in MiB (0: none)")
    a.add_argument("--timeout", type=float, default=DEFAULT_START_TIMEOUT)
    a.add_argument("--auth-penalty", action="store_true",
                   help="keep Dovecot's per-IP delay after failed logins (off by default)")
    a = sub.add_parser("down", help="stop both servers (idempotent)")
    a.add_argument("--dir", required=True)
    a.add_argument("--timeout", type=float, default=DEFAULT_STOP_TIMEOUT)
    a = sub.add_parser("status", help="print testbed.json and whether the masters run")
    a.add_argument("--dir", required=True)
    a = sub.add_parser("selftest", help="up, check everything, down (exit 1 on failure)")
    a.add_argument("--dir", help="use this dir instead of a fresh temporary one")
    a.add_argument("--keep", action="store_true", help="keep the temporary dir")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "up":
            state = up(args.dir, seed=not args.no_seed, large_mb=args.large_mb,
                       timeout=args.timeout, auth_penalty=args.auth_penalty)
            print(json.dumps(state, indent=2, ensure_ascii=False))
            return 0
        if args.cmd == "down":
            down(args.dir, timeout=args.timeout)
            return 0
        if args.cmd == "status":
            state = load_state(args.dir)
            rc = 0
            for role in ROLES:
                info = state.get(role) or {}
                alive = bool(info.get("pid")) and _alive(info["pid"], info.get("pid_starttime"))
                rc |= 0 if alive else 1
                print(f"{role}: pid {info.get('pid')} {'running' if alive else 'NOT running'}"
                      f" imap {info.get('imap_port')} imaps {info.get('imaps_port')}")
            return rc
        if args.cmd == "selftest":
            return selftest(keep=args.keep, d=args.dir)
    except TestbedError as e:
        _log(f"error: {e}")
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
