"""A fault-injecting TCP proxy for tests: what a flaky middlebox does to a connection.

Listens on loopback only and forwards each connection to one upstream (Dovecot's IMAP or
POP3, the aiosmtpd SMTP server). Faults can be switched while it runs:

* ``cut(server_to_client=N)``: every connection is closed once N bytes went from the server
  to the client (and/or ``client_to_server=N``), counted per connection: a proxy with a
  small buffer that drops every download past some size;
* ``stall()``: bytes are held, new connections are accepted and never answered;
* ``latency(seconds)``: each chunk waits that long before it is passed on;
* ``drop_mid_command()``: the next chunk a client sends is passed on by half, then the
  connection is closed;
* ``lose_answer(b"UID STORE")``: the next chunk a client sends with that in it reaches the
  server, but its answer never comes back: the connection is closed once the server has
  had a moment to act (a pusher that lost its connection right after its STORE); once,
  other faults stay;
* ``heal()``: traffic passes untouched again (held bytes go through).

Bounded: one accepting thread and two pumping threads per connection, all ended (and
joined) when the proxy stops. Use it as a context manager::

    with FaultProxy(HOST, dovecot.imap_port) as proxy:
        proxy.cut(server_to_client=32 * 1024)
        ... connect to proxy.port ...
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

LOOPBACK = "127.0.0.1"
_CHUNK = 16 * 1024
_QUICKACK = getattr(socket, "TCP_QUICKACK", 12)  # Linux
_JOIN_SECONDS = 5.0
_SERVER_ACTS_SECONDS = 0.3  # what a lost answer's command gets on the server before the cut


@dataclass(frozen=True)
class Faults:
    """What the proxy does to traffic right now (replaced as a whole when switched)."""

    cut_server_to_client: int | None = None
    cut_client_to_server: int | None = None
    stalled: bool = False
    latency: float = 0.0
    drop_mid_command: bool = False
    lose_answer_to: bytes | None = None


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        if upstream_host not in (LOOPBACK, "localhost", "::1"):
            raise ValueError("the fault proxy only forwards to loopback")
        self.upstream = (upstream_host, upstream_port)
        self._faults = Faults()
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._listener = socket.create_server((LOOPBACK, 0))
        self._listener.settimeout(0.2)  # how soon the accepting thread notices stop()
        self.host, self.port = LOOPBACK, int(self._listener.getsockname()[1])
        self._threads: list[threading.Thread] = []
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.connections = 0  # accepted so far
        self.cuts = 0  # connections closed by a fault
        self.answers_lost = 0

    # -- switching faults -----------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        return self._faults

    def _switch(self, faults: Faults) -> None:
        with self._changed:
            self._faults = faults
            self._changed.notify_all()

    def cut(
        self, *, server_to_client: int | None = None, client_to_server: int | None = None
    ) -> None:
        self._switch(
            Faults(cut_server_to_client=server_to_client, cut_client_to_server=client_to_server)
        )

    def stall(self) -> None:
        self._switch(Faults(stalled=True))

    def latency(self, seconds: float) -> None:
        self._switch(Faults(latency=seconds))

    def drop_mid_command(self) -> None:
        self._switch(Faults(drop_mid_command=True))

    def lose_answer(self, command: bytes) -> None:
        self._switch(dataclasses.replace(self._faults, lose_answer_to=command))

    def heal(self) -> None:
        self._switch(Faults())

    # -- running ----------------------------------------------------------------------------

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        self._spawn(self._accept_loop, "faultproxy-accept")

    def stop(self) -> None:
        """Close every connection and end every thread (joined, so none outlives the test)."""
        self._stopping.set()
        with self._changed:
            self._changed.notify_all()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _close(sock)
        self._listener.close()
        for thread in list(self._threads):
            thread.join(_JOIN_SECONDS)
            if thread.is_alive():
                raise RuntimeError(f"fault proxy thread {thread.name} did not end")

    def _spawn(self, target: Callable[..., None], name: str, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        with self._lock:
            # what ended is forgotten, so a test that reconnects a thousand times holds
            # only what is still open
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _track(self, sock: socket.socket) -> None:
        # Chunks go on as they come: Nagle's algorithm would hold each small answer back
        # until the previous one is acknowledged (a delayed ACK: 40 ms per reconnect).
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._sockets = {s for s in self._sockets if s.fileno() != -1}
            self._sockets.add(sock)
        if self._stopping.is_set():
            _close(sock)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # the listener was closed by stop()
            self._track(client)
            with self._lock:
                self.connections += 1
                number = self.connections
            self._spawn(self._open_upstream, f"faultproxy-conn-{number}", client)

    def _open_upstream(self, client: socket.socket) -> None:
        # A stalled proxy accepts and never answers: not even the upstream's greeting.
        if not self._wait_while_stalled():
            _close(client)
            return
        try:
            server = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            _close(client)
            return
        server.settimeout(None)
        self._track(server)
        connection = _Connection(client, server)
        self._spawn(self._pump, "faultproxy-up", connection, client, server, True)
        self._pump(connection, server, client, False)

    def _wait_while_stalled(self) -> bool:
        """False when the proxy stops meanwhile."""
        with self._changed:
            while self._faults.stalled and not self._stopping.is_set():
                self._changed.wait()
        return not self._stopping.is_set()

    def _pump(
        self, connection: _Connection, source: socket.socket, sink: socket.socket, upward: bool
    ) -> None:
        try:
            while True:
                try:
                    data = source.recv(_CHUNK)
                    # Acknowledge at once: a sender using Nagle's algorithm (Dovecot)
                    # holds its next small write until then, and the kernel would delay
                    # the ACK 40 ms hoping to send it with an answer that never comes.
                    source.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
                except OSError:
                    return
                if not data or not self._wait_while_stalled():
                    return
                faults = self._faults
                if faults.latency and self._stopping.wait(faults.latency):
                    return
                if not upward and connection.muted:
                    continue  # an answer that is lost
                if upward and faults.lose_answer_to and faults.lose_answer_to in data:
                    self._lose_answer(connection, sink, data)
                    return
                if upward and faults.drop_mid_command:
                    with contextlib.suppress(OSError):
                        sink.sendall(data[: max(1, len(data) // 2)])
                    self._cut(connection)
                    return
                limit = faults.cut_client_to_server if upward else faults.cut_server_to_client
                passed = connection.passed(upward)
                if limit is not None and passed + len(data) >= limit:
                    with contextlib.suppress(OSError):
                        sink.sendall(data[: max(0, limit - passed)])
                    self._cut(connection)
                    return
                try:
                    sink.sendall(data)
                except OSError:
                    return
                connection.count(upward, len(data))
        finally:
            connection.close()

    def _lose_answer(self, connection: _Connection, sink: socket.socket, data: bytes) -> None:
        connection.muted = True  # before the command goes up: no answer can pass
        with contextlib.suppress(OSError):
            sink.sendall(data)
        self._switch(dataclasses.replace(self._faults, lose_answer_to=None))
        with self._lock:
            self.answers_lost += 1
        self._stopping.wait(_SERVER_ACTS_SECONDS)
        self._cut(connection)

    def _cut(self, connection: _Connection) -> None:
        with self._lock:
            self.cuts += 1
        connection.close()


class _Connection:
    """One proxied connection: its two sockets and the bytes passed each way."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client, self.server = client, server
        self._passed = {True: 0, False: 0}
        self.muted = False  # what the server sends is dropped

    def passed(self, upward: bool) -> int:
        return self._passed[upward]

    def count(self, upward: bool, size: int) -> None:
        self._passed[upward] += size

    def close(self) -> None:
        _close(self.client)
        _close(self.server)


def _close(sock: socket.socket) -> None:
    # shutdown first: it wakes a thread blocked in recv() on this socket, close() alone
    # does not
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
