#!/usr/bin/env python3
"""A minimal fake IMAP backend for suction's proxy benchmarks (Python 3 standard library only).

Dovecot cannot hold thousands of imap processes on a small machine; this server holds any
number of cheap logged-in sessions on one asyncio loop, so the proxy's own memory per session
can be measured. It also answers FETCH with one literal of --fetch-bytes bytes, which makes it
the "tiny server that just streams the message" reference for the client's own ceiling.

    python3 tests/bench/fake_backend.py [--host 127.0.0.1] [--port 0] [--fetch-bytes N]
                                        [--max-seconds S] [--watch-stdin]

Prints "LISTENING <port>" on stdout once it accepts connections. Stops on SIGTERM/SIGINT,
after --max-seconds (default 3600), or, with --watch-stdin, when its stdin closes (so it never
outlives the benchmark that started it).

Answers (anything else: tagged BAD):
  greeting     * OK [CAPABILITY IMAP4rev1 LITERAL+ ID AUTH=PLAIN] ...
  CAPABILITY   * CAPABILITY IMAP4rev1 LITERAL+ ID AUTH=PLAIN
  ID           * ID NIL
  LOGIN        any user and password: OK [CAPABILITY IMAP4rev1 LITERAL+ ID IDLE NAMESPACE]
  AUTHENTICATE PLAIN (with or without initial response): OK, as LOGIN
  NOOP, CHECK  OK
  SELECT/EXAMINE  * 1 EXISTS, OK
  FETCH / UID FETCH  * 1 FETCH (UID 1 BODY[] {N} <N bytes>), OK
  LOGOUT       * BYE, OK, close
Literals ({n} and {n+}) in commands are accepted.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import sys

PRE_CAPS = b"IMAP4rev1 LITERAL+ ID AUTH=PLAIN"
POST_CAPS = b"IMAP4rev1 LITERAL+ ID IDLE NAMESPACE"
MAX_LINE = 64 * 1024
MAX_LITERAL = 1024 * 1024
LITERAL_RX = re.compile(rb"\{(\d+)(\+?)\}\r\n$")


def make_payload(size: int) -> bytes:
    """A deterministic RFC 5322 message of exactly `size` bytes (CRLF lines of 78 characters)."""
    head = (b"From: bench@example.net\r\nTo: alice@example.net\r\nSubject: suction proxy bench\r\n"
            b"Message-ID: <bench-10mb@example.net>\r\nDate: Tue, 24 Nov 2026 12:00:00 +0000\r\n\r\n")
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcd\r\n"
    if size <= len(head):
        return (head * (size // len(head) + 1))[:size]
    body_len = size - len(head)
    body = line * (body_len // len(line) + 1)
    body = body[:body_len]
    if body_len >= 2:
        body = body[:-2] + b"\r\n"
    return head + body


class Backend:
    def __init__(self, fetch_bytes: int):
        self.payload = make_payload(fetch_bytes) if fetch_bytes > 0 else b""
        self.sessions = 0

    async def read_command(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes | None:
        """One command with its literals; None at EOF."""
        parts = []
        for _ in range(64):  # bounded number of literals per command
            line = await reader.readuntil(b"\r\n")
            parts.append(line)
            m = LITERAL_RX.search(line)
            if not m:
                return b"".join(parts)
            n = int(m.group(1))
            if n > MAX_LITERAL:
                raise ValueError("literal too large")
            if not m.group(2):
                writer.write(b"+ OK\r\n")
            parts.append(await reader.readexactly(n))
        raise ValueError("too many literals")

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sessions += 1
        try:
            writer.write(b"* OK [CAPABILITY " + PRE_CAPS + b"] fake backend ready\r\n")
            while True:
                try:
                    cmd = await self.read_command(reader, writer)
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
                    return
                if cmd is None:
                    return
                words = cmd.split(b" ", 3)
                tag = words[0].rstrip(b"\r\n")
                name = words[1].rstrip(b"\r\n").upper() if len(words) > 1 else b""
                if name == b"UID" and len(words) > 2:
                    name = words[2].rstrip(b"\r\n").upper()
                if name == b"NOOP" or name == b"CHECK":
                    writer.write(tag + b" OK NOOP completed\r\n")
                elif name == b"CAPABILITY":
                    writer.write(b"* CAPABILITY " + PRE_CAPS + b"\r\n" + tag + b" OK CAPABILITY completed\r\n")
                elif name == b"ID":
                    writer.write(b"* ID NIL\r\n" + tag + b" OK ID completed\r\n")
                elif name == b"LOGIN":
                    writer.write(tag + b" OK [CAPABILITY " + POST_CAPS + b"] Logged in\r\n")
                elif name == b"AUTHENTICATE":
                    if len(words) < 4:  # no initial response: one empty challenge
                        writer.write(b"+ \r\n")
                        await reader.readuntil(b"\r\n")
                    writer.write(tag + b" OK [CAPABILITY " + POST_CAPS + b"] Logged in\r\n")
                elif name in (b"SELECT", b"EXAMINE"):
                    writer.write(b"* 1 EXISTS\r\n* 0 RECENT\r\n* OK [UIDVALIDITY 1] UIDs valid\r\n"
                                 b"* OK [UIDNEXT 2] Predicted next UID\r\n" + tag + b" OK [READ-ONLY] done\r\n")
                elif name == b"FETCH":
                    writer.write(b"* 1 FETCH (UID 1 BODY[] {%d}\r\n" % len(self.payload))
                    writer.write(self.payload)
                    writer.write(b")\r\n" + tag + b" OK FETCH completed\r\n")
                elif name == b"LOGOUT":
                    writer.write(b"* BYE logging out\r\n" + tag + b" OK LOGOUT completed\r\n")
                    await writer.drain()
                    return
                else:
                    writer.write(tag + b" BAD unknown command\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):  # CancelledError: stopping; end quietly
            pass
        finally:
            self.sessions -= 1
            writer.close()


async def serve(args: argparse.Namespace) -> None:
    backend = Backend(args.fetch_bytes)
    server = await asyncio.start_server(backend.handle, args.host, args.port, limit=MAX_LINE,
                                        backlog=4096, reuse_address=True)
    port = server.sockets[0].getsockname()[1]
    print(f"LISTENING {port}", flush=True)
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    if args.watch_stdin:
        def on_stdin() -> None:
            try:
                data = os.read(0, 4096)
            except OSError:
                data = b""
            if not data:
                loop.remove_reader(0)
                done.set()
        loop.add_reader(0, on_stdin)
    try:
        await asyncio.wait_for(done.wait(), timeout=args.max_seconds)
    except asyncio.TimeoutError:
        print("fake_backend: --max-seconds reached, stopping", file=sys.stderr, flush=True)
    server.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--fetch-bytes", type=int, default=10 * 1000 * 1000)
    ap.add_argument("--max-seconds", type=float, default=3600.0)
    ap.add_argument("--watch-stdin", action="store_true")
    args = ap.parse_args(argv)
    if not args.host.startswith("127."):
        ap.error("benchmarks stay on loopback: --host must be in 127.0.0.0/8")
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
