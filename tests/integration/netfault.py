"""A TCP forwarder on loopback for fault injection and counting: it stands between suction and
the legacy server, so a test can cut connections mid-copy, play a server that is down, and
count how many connections suction holds to legacy at once.

One thread, one selector, and in each round the closes are handled before the accepts: on
loopback a client's close() has put its FIN in our receive queue before its next connect()
reaches the listener, so a connection closed before another was opened is never counted as
open beside it (threads per connection would see the two in either order)."""

from __future__ import annotations

import selectors
import socket
import threading
import time


class _Pair:
    def __init__(self, client: socket.socket, server: socket.socket, limit: int | None):
        self.client, self.server, self.limit = client, server, limit
        self.to_client = 0  # bytes the server sent through us
        self.closed = False


class Forwarder:
    """Forwards 127.0.0.1:port to `target`.

    cut/after: the first `cut` connections are cut once the server has sent `after` bytes.
    down: while True, a connection is accepted and closed at once (a server that is down).
    stalled: while True, nothing is forwarded either way (a server that stopped answering).
    active/peak: connections open now / at most at once (to the target)."""

    def __init__(self, target: tuple[str, int], cut: int = 0, after: int = 0):
        self.target, self.cut, self.after = target, cut, after
        self.down = False
        self.stalled = False
        self.accepted = 0
        self.cuts = 0
        self.refused = 0
        self.active = 0
        self.peak = 0
        self._lock = threading.Lock()  # the counters, for readers on other threads
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.sock, selectors.EVENT_READ, None)
        self.stopping = False
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while not self.stopping:
            events = self._sel.select(timeout=0.2)
            # Data and closes first, the listener last (see the module docstring).
            events.sort(key=lambda ev: ev[0].data is None)
            if self.stalled:
                time.sleep(0.05)   # the data stays in the kernel's buffers meanwhile
                events = [ev for ev in events if ev[0].data is None]
            for key, _ in events:
                if key.data is None:
                    self._accept()
                else:
                    pair, from_server = key.data
                    if not pair.closed:
                        self._pump(pair, from_server)
        for key in list(self._sel.get_map().values()):
            if key.data is not None:
                self._close(key.data[0])

    def _accept(self):
        try:
            client, _ = self.sock.accept()
        except OSError:
            return
        if self.down:
            self.refused += 1
            client.close()
            return
        self.accepted += 1
        try:
            server = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        for s in (client, server):
            s.settimeout(30)  # sendall to a peer that reads: bounded anyway
        pair = _Pair(client, server, self.after if self.accepted <= self.cut else None)
        self._sel.register(client, selectors.EVENT_READ, (pair, False))
        self._sel.register(server, selectors.EVENT_READ, (pair, True))
        with self._lock:
            self.active += 1
            self.peak = max(self.peak, self.active)

    def _pump(self, pair: _Pair, from_server: bool):
        src, dst = (pair.server, pair.client) if from_server else (pair.client, pair.server)
        try:
            data = src.recv(65536)
            if not data:
                self._close(pair)
                return
            if from_server and pair.limit is not None and pair.to_client + len(data) > pair.limit:
                self.cuts += 1
                self._close(pair)
                return
            dst.sendall(data)
            if from_server:
                pair.to_client += len(data)
        except OSError:
            self._close(pair)

    def _close(self, pair: _Pair):
        if pair.closed:
            return
        pair.closed = True
        for s in (pair.client, pair.server):
            try:
                self._sel.unregister(s)
            except (KeyError, ValueError):
                pass
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
        with self._lock:
            self.active -= 1

    def reset(self) -> None:
        """Starts counting anew: peak = what is open now, accepted = 0."""
        with self._lock:
            self.peak = self.active
            self.accepted = 0

    def close(self):
        self.stopping = True
        self.thread.join(5)
        try:
            self._sel.unregister(self.sock)
        except (KeyError, ValueError):
            pass
        self.sock.close()
        self._sel.close()


class TempfailFront:
    """A legacy server that is busy at first: the first `refusals` connections are answered by
    this front itself, a greeting and `tag NO [UNAVAILABLE] ...` to every LOGIN (RFC 5530, as a
    server at its connection limit says); later ones are forwarded to `target` unchanged.
    Bounded: socket timeouts, daemon threads, close() ends it."""

    def __init__(self, target: tuple[str, int], refusals: int):
        self.target, self.left = target, refusals
        self.refused = 0          # LOGINs answered NO [UNAVAILABLE]
        self.forwarded = 0        # connections passed to target
        self._lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self.sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            c.settimeout(30)
            with self._lock:
                refuse = self.left > 0
                self.left -= 1 if refuse else 0
            threading.Thread(target=self._refuse if refuse else self._forward, args=(c,),
                             daemon=True).start()

    def _refuse(self, c: socket.socket) -> None:
        try:
            c.sendall(b"* OK [CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN] busy legacy ready\r\n")
            buf = b""
            while True:
                data = c.recv(4096)
                if not data:
                    return
                buf += data
                while b"\r\n" in buf:
                    line, buf = buf.split(b"\r\n", 1)
                    tag, _, rest = line.partition(b" ")
                    verb = rest.split(b" ", 1)[0].upper()
                    if verb == b"LOGIN" or verb == b"AUTHENTICATE":
                        with self._lock:
                            self.refused += 1
                        c.sendall(tag + b" NO [UNAVAILABLE] Maximum number of connections "
                                  b"reached, try again later\r\n")
                    elif verb == b"CAPABILITY":
                        c.sendall(b"* CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN\r\n" + tag +
                                  b" OK done\r\n")
                    elif verb == b"LOGOUT":
                        c.sendall(b"* BYE bye\r\n" + tag + b" OK done\r\n")
                        return
                    else:
                        c.sendall(tag + b" BAD not now\r\n")
        except OSError:
            pass
        finally:
            c.close()

    def _forward(self, c: socket.socket) -> None:
        try:
            s = socket.create_connection(self.target, timeout=30)
        except OSError:
            c.close()
            return
        with self._lock:
            self.forwarded += 1

        def pump(a: socket.socket, b: socket.socket) -> None:
            try:
                while True:
                    data = a.recv(65536)
                    if not data:
                        break
                    b.sendall(data)
            except OSError:
                pass
            finally:
                for x in (a, b):
                    try:
                        x.close()
                    except OSError:
                        pass
        threading.Thread(target=pump, args=(s, c), daemon=True).start()
        pump(c, s)
