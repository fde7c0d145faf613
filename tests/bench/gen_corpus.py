#!/usr/bin/env python3
"""A large, deterministic mailbox written straight into a Courier-style maildir (maildir++).

Used by sync_bench.py for the legacy user; runs standalone too:

    python3 tests/bench/gen_corpus.py --maildir /tmp/x/Maildir [--messages 10000]
        [--folders 20] [--large-mb 50] [--seed 4] [--owner dovecot]

Much faster than APPEND: every message is one file in <folder>/cur, named like Dovecot's own
maildir files (`<time>.M<n>P<seed>.bench,S=<file size>,W=<CRLF size>:2,<flags>`, so the server
never has to read a file to learn its sizes), with the file's mtime as INTERNALDATE and the
flags in the `:2,` suffix (S seen, R answered, F flagged, D draft, T deleted; keyword letters
a=$Forwarded, b=$Junk, c=$NotJunk through each folder's dovecot-keywords). Files have LF line
ends, as on a real Courier or Dovecot maildir; IMAP shows them with CRLF (sizes and hashes in the
manifest are of the CRLF form, what a client FETCHes).

Folders (legacy names, namespace "INBOX." with separator "."): INBOX, Sent, Drafts, Trash, Junk,
Archive with one child per year, Projects/Clients/Lists trees, one non-ASCII name; more than the
built-in list are numbered "Misc.Folder<n>". Sizes: 80 % 1-50 KB, 17 % 50-500 KB, 3 % 500 KB-5 MB
(log-uniform within each band), plus one message of --large-mb MiB in INBOX (not counted in
--messages). Bodies are text paragraphs, and above 12 KB a multipart with a base64 attachment
sliced from a random pool: incompressible, every message distinct (unique Message-ID).
"""
from __future__ import annotations

import argparse
import base64
import datetime as _dt
import hashlib
import json
import math
import os
import pwd
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "testbed"))
from testbed import mutf7_encode  # noqa: E402

DEFAULT_SEED = 4
KEYWORDS = ["$Forwarded", "$Junk", "$NotJunk"]          # maildir letters a, b, c

# (legacy name without "INBOX.", share of the messages); "INBOX" is the inbox itself
BUILTIN_FOLDERS: list[tuple[str, float]] = [
    ("INBOX", 22), ("Sent", 12), ("Drafts", 0.5), ("Trash", 3), ("Junk", 2),
    ("Archive", 2), ("Archive.2019", 5), ("Archive.2020", 6), ("Archive.2021", 7),
    ("Archive.2022", 7), ("Archive.2023", 8),
    ("Projects", 1), ("Projects.Apollo", 3), ("Projects.Gemini", 3),
    ("Clients", 1), ("Clients.Acme", 3), ("Clients.Globex", 2.5),
    ("Newsletters", 4), ("Receipts", 2), ("B\u00fcro", 1.5), ("Travel", 1),
    ("Lists", 0.5), ("Lists.dovecot", 2), ("Lists.ietf-imap", 2),
]

WORDS = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
         "incididunt ut labore et dolore magna aliqua quarterly report budget meeting invoice "
         "deadline review draft agenda minutes offsite release migration mailbox server "
         "schedule customer contract proposal estimate travel receipt newsletter").split()
PEOPLE = ["Alice Liddell <alice@example.org>", "Bob Builder <bob@example.net>",
          "Carol Danvers <carol@example.com>", "Dave Null <dave@example.org>",
          "Eve Listener <eve@example.net>", "Mallory <mallory@example.com>",
          "Trent Authority <trent@example.org>", "Peggy Prover <peggy@example.com>"]


def folder_list(n: int) -> list[tuple[str, float]]:
    if n < 1:
        raise ValueError("at least one folder (INBOX)")
    out = list(BUILTIN_FOLDERS[:n])
    for i in range(len(out), n):
        if i == len(BUILTIN_FOLDERS):
            out.append(("Misc", 0.2))
        else:
            out.append((f"Misc.Folder{i:03d}", 1.0))
    return out


def imap_name(name: str) -> str:
    """Legacy IMAP name (mUTF-7) of a folder from folder_list."""
    return "INBOX" if name == "INBOX" else "INBOX." + mutf7_encode(name)


def folder_dir(maildir: str, name: str) -> str:
    return maildir if name == "INBOX" else os.path.join(maildir, "." + mutf7_encode(name))


def pick_size(rng: random.Random) -> int:
    r = rng.random()
    lo, hi = (1_000, 50_000) if r < 0.80 else (50_000, 500_000) if r < 0.97 else \
        (500_000, 5_000_000)
    return int(math.exp(rng.uniform(math.log(lo), math.log(hi))))


class Pools:
    """Text and base64 material, sliced at random line offsets (fast, still varied)."""

    def __init__(self, seed: int, b64_mb: int = 8):
        r = random.Random(seed + 1)
        enc = base64.b64encode(r.randbytes(b64_mb * 1024 * 1024 * 3 // 4))
        self.b64 = b"\n".join(enc[i:i + 76] for i in range(0, len(enc), 76)) + b"\n"
        lines = []
        total = 0
        while total < 2 * 1024 * 1024:
            words = []
            width = 0
            while width < 66:
                w = r.choice(WORDS)
                words.append(w)
                width += len(w) + 1
            line = " ".join(words).encode() + b"\n"
            if r.random() < 0.15:
                line += b"\n"
            lines.append(line)
            total += len(line)
        self.text = b"".join(lines)

    @staticmethod
    def _slice(pool: bytes, rng: random.Random, n: int, line: int) -> bytes:
        if n <= 0:
            return b""
        out = bytearray()
        while len(out) < n:
            start = rng.randrange(0, len(pool) // line) * line
            out += pool[start:start + (n - len(out))]
        out = bytes(out[:n])
        cut = out.rfind(b"\n")
        return out[:cut + 1] if cut > 0 else out + b"\n"

    def text_of(self, rng: random.Random, n: int) -> bytes:
        return self._slice(self.text, rng, n, 1)

    def b64_of(self, rng: random.Random, n: int) -> bytes:
        return self._slice(self.b64, rng, n, 77)


def rfc822_date(when: _dt.datetime) -> str:
    return when.strftime("%a, %d %b %Y %H:%M:%S %z")


def make_message(rng: random.Random, pools: Pools, size: int, idx: int, seed: int,
                 when: _dt.datetime, folder: str) -> tuple[bytes, str]:
    """(LF-terminated message bytes of about `size` bytes, Message-ID)."""
    msgid = f"<bench.{seed}.{idx:07d}.{rng.getrandbits(32):08x}@suction.example>"
    sender = rng.choice(PEOPLE)
    to = "Alice Liddell <alice@example.org>"
    if folder == "Sent":
        sender, to = to, rng.choice(PEOPLE)
    subject = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 7))).capitalize()
    hdr = (f"Return-Path: <bounce-{idx}@example.net>\n"
           f"Received: from mx{rng.randint(1, 9)}.example.net (mx.example.net [192.0.2.{rng.randint(1, 254)}])\n"
           f"\tby legacy.example.org with ESMTPS id {rng.getrandbits(48):012x}\n"
           f"\tfor <alice@example.org>; {rfc822_date(when)}\n"
           f"From: {sender}\nTo: {to}\nSubject: {subject} #{idx}\nDate: {rfc822_date(when)}\n"
           f"Message-ID: {msgid}\nMIME-Version: 1.0\n")
    hdr_b = hdr.encode()
    if size < 12_000:
        body = pools.text_of(rng, max(200, size - len(hdr_b) - 80))
        return (hdr_b + b"Content-Type: text/plain; charset=us-ascii\n"
                b"Content-Transfer-Encoding: 7bit\n\n" + body), msgid
    boundary = f"=_bench_{idx}_{rng.getrandbits(32):08x}"
    text = pools.text_of(rng, rng.randint(500, 3000))
    head = hdr_b + (f'Content-Type: multipart/mixed; boundary="{boundary}"\n\n'
                    "This is a multi-part message in MIME format.\n"
                    f"--{boundary}\nContent-Type: text/plain; charset=us-ascii\n\n").encode() + text
    att_head = (f"--{boundary}\nContent-Type: application/octet-stream; name=\"file{idx}.bin\"\n"
                "Content-Transfer-Encoding: base64\n"
                f"Content-Disposition: attachment; filename=\"file{idx}.bin\"\n\n").encode()
    tail = f"--{boundary}--\n".encode()
    att = pools.b64_of(rng, max(77, size - len(head) - len(att_head) - len(tail)))
    return head + att_head + att + tail, msgid


def flags_for(rng: random.Random, folder: str) -> str:
    """maildir :2, flag letters (uppercase sorted, then keyword letters)."""
    f: set[str] = set()
    kw: set[str] = set()
    r = rng.random()
    if folder == "Drafts":
        f.add("D")
        if r < 0.5:
            f.add("S")
    elif folder == "Sent":
        f.add("S")
        if r < 0.05:
            kw.add("a")
    elif folder == "Trash":
        f.add("S")
        if r < 0.10:
            f.add("T")
    elif folder == "Junk":
        kw.add("b")
        if r < 0.3:
            f.add("S")
    else:
        if r < 0.75 or folder.startswith("Archive"):
            f.add("S")
        if rng.random() < 0.08:
            f.add("R")
        if rng.random() < 0.03:
            f.add("F")
        x = rng.random()
        if x < 0.03:
            kw.add("a")
        elif x < 0.05:
            kw.add("c")
    return "".join(sorted(f)) + "".join(sorted(kw))


def flags_imap(letters: str) -> list[str]:
    m = {"S": "\\Seen", "R": "\\Answered", "F": "\\Flagged", "D": "\\Draft", "T": "\\Deleted",
         "a": KEYWORDS[0], "b": KEYWORDS[1], "c": KEYWORDS[2]}
    return sorted(m[c] for c in letters)


def generate(maildir: str, messages: int = 10000, folders: int = 20, large_mb: float = 50,
             seed: int = DEFAULT_SEED, owner: str | None = None, samples: int = 40) -> dict:
    """Write the corpus; return the manifest (per folder counts and CRLF bytes, samples)."""
    t0 = time.monotonic()
    rng = random.Random(seed)
    pools = Pools(seed)
    flist = folder_list(folders)
    uid = gid = -1
    if owner:
        pw = pwd.getpwnam(owner)
        uid, gid = pw.pw_uid, pw.pw_gid

    def mkdir(p: str) -> None:
        os.makedirs(p, exist_ok=True)
        if uid >= 0:
            os.chown(p, uid, gid)
        os.chmod(p, 0o700)

    def own(p: str) -> None:
        if uid >= 0:
            os.chown(p, uid, gid)

    mkdir(maildir)
    for name, _w in flist:
        d = folder_dir(maildir, name)
        mkdir(d)
        for sub in ("cur", "new", "tmp"):
            mkdir(os.path.join(d, sub))
        if name != "INBOX":
            p = os.path.join(d, "maildirfolder")
            open(p, "wb").close()
            own(p)
        p = os.path.join(d, "dovecot-keywords")
        with open(p, "w") as f:
            f.write("".join(f"{i} {k}\n" for i, k in enumerate(KEYWORDS)))
        own(p)

    names = [n for n, _ in flist]
    weights = [w for _, w in flist]
    assignment = rng.choices(range(len(names)), weights=weights, k=messages)
    # every folder gets at least one message (as long as there are enough messages)
    for i in range(min(len(names), messages)):
        assignment[i] = i
    sample_idx = set(rng.sample(range(messages), min(samples, messages)))
    manifest: dict = {
        "seed": seed, "messages": messages, "large_mb": large_mb,
        "folders": {imap_name(n): {"name": n, "count": 0, "bytes": 0} for n in names},
        "samples": [], "large": None,
    }
    epoch_lo = _dt.datetime(2015, 1, 1, tzinfo=_dt.timezone.utc).timestamp()
    epoch_hi = _dt.datetime(2024, 12, 31, tzinfo=_dt.timezone.utc).timestamp()
    total_crlf = 0

    def write(idx: int, name: str, data: bytes, msgid: str, ts: int, letters: str,
              sample: bool) -> None:
        nonlocal total_crlf
        vsize = len(data) + data.count(b"\n")
        fname = f"{ts}.M{idx:07d}P{seed}.bench,S={len(data)},W={vsize}:2,{letters}"
        path = os.path.join(folder_dir(maildir, name), "cur", fname)
        with open(path, "wb") as f:
            f.write(data)
        own(path)
        os.utime(path, (ts, ts))
        entry = manifest["folders"][imap_name(name)]
        entry["count"] += 1
        entry["bytes"] += vsize
        total_crlf += vsize
        if sample:
            crlf = data.replace(b"\n", b"\r\n")
            rec = {"folder": imap_name(name), "message_id": msgid,
                   "sha256": hashlib.sha256(crlf).hexdigest(), "size": vsize,
                   "flags": flags_imap(letters), "internaldate": ts}
            if idx < 0:
                manifest["large"] = rec
            else:
                manifest["samples"].append(rec)

    for idx in range(messages):
        name = names[assignment[idx]]
        if name.startswith("Archive."):
            year = int(name.split(".")[1])
            lo = _dt.datetime(year, 1, 1, tzinfo=_dt.timezone.utc).timestamp()
            ts = int(rng.uniform(lo, lo + 365 * 86400))
        else:
            ts = int(rng.uniform(epoch_lo, epoch_hi))
        when = _dt.datetime.fromtimestamp(ts - rng.randint(5, 600), tz=_dt.timezone.utc)
        size = pick_size(rng)
        data, msgid = make_message(rng, pools, size, idx, seed, when, name)
        write(idx, name, data, msgid, ts, flags_for(rng, name), idx in sample_idx)
    if large_mb > 0:
        ts = int(_dt.datetime(2024, 6, 1, 12, 0, tzinfo=_dt.timezone.utc).timestamp())
        when = _dt.datetime.fromtimestamp(ts - 30, tz=_dt.timezone.utc)
        data, msgid = make_message(rng, pools, int(large_mb * 1024 * 1024), 9_999_999, seed,
                                   when, "INBOX")
        write(-1, "INBOX", data, msgid, ts, "S", True)
    manifest["total_messages"] = messages + (1 if large_mb > 0 else 0)
    manifest["total_bytes"] = total_crlf
    manifest["generate_seconds"] = round(time.monotonic() - t0, 2)
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--maildir", required=True, help="the user's Maildir (created)")
    ap.add_argument("--messages", type=int, default=10000)
    ap.add_argument("--folders", type=int, default=20)
    ap.add_argument("--large-mb", type=float, default=50)
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--owner", help="chown everything to this user (e.g. dovecot)")
    ap.add_argument("--manifest", help="write the manifest (JSON) here")
    a = ap.parse_args(argv)
    m = generate(a.maildir, a.messages, a.folders, a.large_mb, a.seed, a.owner)
    if a.manifest:
        with open(a.manifest, "w") as f:
            json.dump(m, f, indent=1)
    print(f"{m['total_messages']} messages, {m['total_bytes'] / 1e6:.1f} MB in "
          f"{len(m['folders'])} folders, {m['generate_seconds']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
