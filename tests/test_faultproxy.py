"""The fault-injecting proxy itself: each fault does what it says, and nothing outlives it."""

from __future__ import annotations

import contextlib
import poplib
import smtplib
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support.dovecot import MailUser
from tests.support.faultproxy import FaultProxy
from tests.support.smtp import QUIET_AUTH_WARNING, smtp_server

GREETING = b"* OK ready\r\n"


class _Upstream(socketserver.ThreadingTCPServer):
    """Greets, then echoes; keeps what each connection sent (for the client-side faults)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.received: list[bytes] = []
        self.closed = threading.Event()
        self.port = int(self.server_address[1])


class _Echo(socketserver.BaseRequestHandler):
    server: _Upstream

    def handle(self) -> None:
        self.request.sendall(GREETING)
        got = b""
        while data := self.request.recv(65536):
            got += data
            self.request.sendall(data)
        self.server.received.append(got)
        self.server.closed.set()


@pytest.fixture
def upstream() -> Iterator[_Upstream]:
    server = _Upstream()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def proxy(upstream: _Upstream) -> Iterator[FaultProxy]:
    with FaultProxy("127.0.0.1", upstream.port) as running:
        yield running


def _connect(proxy: FaultProxy) -> socket.socket:
    sock = socket.create_connection((proxy.host, proxy.port), timeout=5)
    assert _read_exactly(sock, len(GREETING)) == GREETING
    return sock


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _read_to_eof(sock: socket.socket) -> bytes:
    """What arrived before the connection closed (with FIN, or with a reset when bytes the
    client sent were still unread as it was cut)."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def test_it_passes_traffic_untouched_when_healthy(proxy: FaultProxy) -> None:
    payload = bytes(range(256)) * 1024  # 256 KB, every byte value
    with _connect(proxy) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        echoed = _read_exactly(sock, len(payload))
        sender.join()
    assert echoed == payload
    assert proxy.cuts == 0


def test_it_cuts_each_connection_after_n_bytes_from_the_server(proxy: FaultProxy) -> None:
    proxy.cut(server_to_client=len(GREETING) + 1000)
    for _ in range(2):  # counted per connection: the second one gets as far again
        with _connect(proxy) as sock:
            sock.sendall(b"x" * 5000)
            assert len(_read_to_eof(sock)) == 1000
    assert proxy.cuts == 2


def test_it_cuts_after_n_bytes_from_the_client(proxy: FaultProxy, upstream: _Upstream) -> None:
    proxy.cut(client_to_server=300)
    with _connect(proxy) as sock:
        sock.sendall(b"y" * 1000)
        assert len(_read_to_eof(sock)) <= 300
    assert upstream.closed.wait(5)
    assert upstream.received == [b"y" * 300]


def test_it_drops_a_connection_mid_command(proxy: FaultProxy, upstream: _Upstream) -> None:
    proxy.drop_mid_command()
    with _connect(proxy) as sock:
        sock.sendall(b"A1 NOOP\r\n")
        _read_to_eof(sock)
    assert upstream.closed.wait(5)
    assert upstream.received == [b"A1 N"]


def test_a_stalled_proxy_accepts_and_never_answers_until_healed(proxy: FaultProxy) -> None:
    proxy.stall()
    with socket.create_connection((proxy.host, proxy.port), timeout=0.3) as sock:
        with pytest.raises(TimeoutError):
            sock.recv(1)  # accepted, and silent
        proxy.heal()
        sock.settimeout(5)
        assert _read_exactly(sock, len(GREETING)) == GREETING


def test_it_adds_latency_to_each_chunk(proxy: FaultProxy) -> None:
    with _connect(proxy) as sock:
        proxy.latency(0.2)
        started = time.monotonic()
        sock.sendall(b"ping")
        assert _read_exactly(sock, 4) == b"ping"
        assert time.monotonic() - started >= 0.4  # there and back
        proxy.heal()


def test_it_ends_every_thread_and_connection_when_it_stops(upstream: _Upstream) -> None:
    with FaultProxy("127.0.0.1", upstream.port) as proxy:
        sock = _connect(proxy)
        proxy.stall()
        stalled = socket.create_connection((proxy.host, proxy.port), timeout=5)
    assert _closed(sock)  # by the proxy, not left hanging
    assert _closed(stalled)  # (reset if it was still waiting in the listener's backlog)
    sock.close()
    stalled.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("faultproxy")]


def test_it_refuses_an_upstream_off_this_machine() -> None:
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy("192.0.2.1", 143)


def test_it_sits_in_front_of_dovecots_pop3(mail_user: MailUser) -> None:
    raw = b"Subject: long\r\n\r\n" + b"0123456789abcdef\r\n" * 1200  # about 22 KB
    mail_user.append(raw)
    with FaultProxy(mail_user.server.host, mail_user.server.pop3_port) as proxy:
        proxy.cut(server_to_client=8 * 1024)
        pop = poplib.POP3(proxy.host, proxy.port, timeout=5)
        pop.user(mail_user.address)
        pop.pass_(mail_user.password)
        with pytest.raises((poplib.error_proto, OSError, EOFError)):
            pop.retr(1)
        pop.close()

        proxy.heal()
        pop = poplib.POP3(proxy.host, proxy.port, timeout=5)
        pop.user(mail_user.address)
        pop.pass_(mail_user.password)
        _, lines, _ = pop.retr(1)
        pop.quit()
    assert b"\r\n".join(lines) + b"\r\n" == raw


@pytest.mark.filterwarnings(QUIET_AUTH_WARNING)
def test_it_sits_in_front_of_smtp() -> None:
    with smtp_server(require_auth=False) as smtp, FaultProxy(smtp.host, smtp.port) as proxy:
        proxy.drop_mid_command()
        client = smtplib.SMTP(proxy.host, proxy.port, timeout=5)
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.sendmail("a@example.org", ["b@example.org"], b"Subject: lost\r\n\r\nx\r\n")
        client.close()
        assert smtp.received == []

        proxy.heal()
        with smtplib.SMTP(proxy.host, proxy.port, timeout=5) as client:
            client.sendmail("a@example.org", ["b@example.org"], b"Subject: sent\r\n\r\nx\r\n")
    assert [r.parsed()["Subject"] for r in smtp.received] == ["sent"]
