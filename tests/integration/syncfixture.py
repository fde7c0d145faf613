"""Helpers for the `suction sync` integration tests: run the command against the module's bed,
and read a whole mailbox (every folder, every message) from either server with imaplib."""

from __future__ import annotations

import datetime as _dt
import hashlib
import imaplib
import os
import re
import subprocess

from proxyfixture import (SUCTION_BIN, bed, free_ports, qmailbox, tmp_root)  # noqa: F401
from proxyfixture import toml_text
from testbed import parse_list

HOST = "127.0.0.1"
_COUNTER = [0]


def write_config(overrides: dict | None = None, state_db: str | None = None) -> str:
    """A config for `suction sync` against the bed; returns its path."""
    tb = bed()
    _COUNTER[0] += 1
    d = os.path.join(tmp_root(), f"sync{_COUNTER[0]}")
    os.makedirs(d, exist_ok=True)
    cfg = {
        # imaps "" so no certificate is needed: sync does not listen.
        "listen": {"imap": f"{HOST}:{free_ports(1)[0]}", "imaps": ""},
        "new": {"host": tb.new.host, "port": tb.new.imap_port, "tls": "none",
                "connect_timeout": 5, "command_timeout": 30},
        "legacy": {"host": tb.legacy.host, "port": tb.legacy.imap_port, "tls": "none",
                   "connect_timeout": 5, "command_timeout": 30},
        "sync": {"state_db": state_db or os.path.join(d, "state", "state.db")},
    }
    for section, keys in (overrides or {}).items():
        cfg.setdefault(section, {}).update(keys)
    path = os.path.join(d, "suction.toml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(toml_text(cfg))
    return path


def run_sync(config: str, user: str = "alice", password: str | None = None,
             extra: list[str] | None = None, stdin: bool = True,
             password_file: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    args = [SUCTION_BIN, "sync", "--config", config, "--user", user]
    data = None
    if password_file is not None:
        args += ["--password-file", password_file]
    elif stdin:
        args += ["--password-stdin"]
        data = ((password if password is not None else bed().users[user]) + "\n").encode()
    args += extra or []
    return subprocess.run(args, input=data, capture_output=True, timeout=timeout)


def instant(internaldate: str) -> int:
    return int(_dt.datetime.strptime(internaldate, "%d-%b-%Y %H:%M:%S %z").timestamp())


_FETCH_HEAD = re.compile(rb'UID (\d+) FLAGS \(([^)]*)\) INTERNALDATE "([^"]+)" BODY\[\] \{(\d+)\}')
_FLAGS_HEAD = re.compile(rb'UID (\d+) FLAGS \(([^)]*)\)')


def _flags(raw: bytes) -> tuple[str, ...]:
    return tuple(sorted(f for f in raw.decode().split() if f != "\\Recent"))


def folders(imap: imaplib.IMAP4) -> list[dict]:
    typ, data = imap.list('""', "*")
    assert typ == "OK", data
    return parse_list(data)


def subscriptions(imap: imaplib.IMAP4) -> set[str]:
    typ, data = imap.lsub('""', "*")
    assert typ == "OK", data
    return {f["name"] for f in parse_list(data)}


def messages(imap: imaplib.IMAP4, name: str) -> list[tuple[str, tuple[str, ...], int, int]]:
    """(sha256 of BODY[], flags minus \\Recent, INTERNALDATE instant, uid) of every message."""
    typ, data = imap.select(qmailbox(name), readonly=True)
    assert typ == "OK", (name, data)
    if int(data[0]) == 0:
        return []
    typ, data = imap.uid("FETCH", "1:*", "(UID FLAGS INTERNALDATE BODY.PEEK[])")
    assert typ == "OK", data
    out = []
    for item in data:
        if not isinstance(item, tuple):
            continue
        m = _FETCH_HEAD.search(item[0])
        assert m, item[0]
        out.append((hashlib.sha256(item[1]).hexdigest(), _flags(m.group(2)),
                    instant(m.group(3).decode()), int(m.group(1))))
    return out


def mailbox(server, user: str, names: list[str]) -> dict[str, list]:
    """{folder: sorted (sha256, flags, INTERNALDATE instant)} of the user's folders `names`."""
    imap = server.connect(user)
    try:
        return {n: sorted(m[:3] for m in messages(imap, n)) for n in names}
    finally:
        imap.logout()


# Where the bed's legacy special-use folders land on the new server.
SPECIAL = {"INBOX.Sent Items": "Sent", "INBOX.Éléments envoyés": "Sent",
           "INBOX.Deleted Items": "Trash", "INBOX.Junk E-mail": "Junk",
           "INBOX.Drafts": "Drafts", "INBOX.Entwürfe": "Drafts"}


def expected_name(legacy: str) -> str:
    """The new server's name for a legacy folder of the bed's corpus."""
    if legacy == "INBOX":
        return "INBOX"
    if legacy in SPECIAL:
        return SPECIAL[legacy]
    assert legacy.startswith("INBOX."), legacy
    return legacy[len("INBOX."):].replace(".", "/")


def expected_corpus() -> dict[str, list]:
    """The seeded corpus as it must be on the new server: {new folder: [(sha256, flags,
    instant)]} (folders merged by the special-use mapping hold both lists)."""
    expected: dict[str, list] = {}
    for legacy, info in bed().corpus()["folders"].items():
        lst = expected.setdefault(expected_name(legacy), [])
        for m in info["messages"]:
            lst.append((m["sha256"], tuple(sorted(f for f in m["flags"] if f != "\\Recent")),
                        instant(m["internaldate"])))
    return expected


def legacy_state(imap: imaplib.IMAP4) -> dict:
    """What must not change on legacy: per folder UIDVALIDITY, count, uid -> flags."""
    out = {}
    for f in folders(imap):
        if any(a.lower() == "\\noselect" for a in f["attrs"]):
            continue
        typ, data = imap.status(qmailbox(f["name"]), "(MESSAGES UIDVALIDITY UIDNEXT)")
        assert typ == "OK", data
        typ, sel = imap.select(qmailbox(f["name"]), readonly=True)
        assert typ == "OK", sel
        flags = {}
        if int(sel[0]) > 0:
            typ, fd = imap.uid("FETCH", "1:*", "(UID FLAGS)")
            assert typ == "OK", fd
            for item in fd:
                m = _FLAGS_HEAD.search(item if isinstance(item, bytes) else item[0])
                if m:
                    flags[int(m.group(1))] = _flags(m.group(2))
        out[f["name"]] = (data[0], flags)
    return out
