"""A TCP forwarder on loopback for fault injection and counting: it stands between suction and
the legacy server, so a test can cut connections mid-copy, play a server that is down, and
count how many connections suction holds to legacy at once."""

from __future__ import annotations

import socket
import threading


class Forwarder:
    """Forwards 127.0.0.1:port to `target`.

    cut/after: the first `cut` connections are cut once the server has sent `after` bytes.
    down: while True, a connection is accepted and closed at once (a server that is down).
    active/peak: connections open now / at most at once (to the target)."""

    def __init__(self, target: tuple[str, int], cut: int = 0, after: int = 0):
        self.target, self.cut, self.after = target, cut, after
        self.down = False
        self.accepted = 0
        self.cuts = 0
        self.refused = 0
        self.active = 0
        self.peak = 0
        self._lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopping:
            try:
                client, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if self.down:
                self.refused += 1
                client.close()
                continue
            self.accepted += 1
            limit = self.after if self.accepted <= self.cut else None
            threading.Thread(target=self._pipe_pair, args=(client, limit), daemon=True).start()

    def _pipe_pair(self, client: socket.socket, limit: int | None):
        try:
            server = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        server.settimeout(None)
        with self._lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        done = threading.Event()

        def pump(src, dst, budget):
            sent = 0
            try:
                while not done.is_set():
                    data = src.recv(65536)
                    if not data:
                        break
                    if budget is not None and sent + len(data) > budget:
                        self.cuts += 1
                        break
                    dst.sendall(data)
                    sent += len(data)
            except OSError:
                pass
            done.set()
            for s in (client, server):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        t = threading.Thread(target=pump, args=(client, server, None), daemon=True)
        t.start()
        pump(server, client, limit)
        t.join(10)
        client.close()
        server.close()
        with self._lock:
            self.active -= 1

    def close(self):
        self.stopping = True
        self.sock.close()
        self.thread.join(5)
