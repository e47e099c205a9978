"""TLS for the test Dovecot: trustme certificates, the extra config that turns TLS on, and a
loopback relay that records what a client really sent over the wire.

Verified against Dovecot 2.3.19: settings and sections given again in ``extra_config``
override the template's, so ``ssl = yes`` replaces ``ssl = no`` (STARTTLS is then offered on
the plain IMAP port) and a second ``service imap-login { inet_listener imaps { ... } }``
replaces the template's disabled ``port = 0`` listener.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import trustme

from tests.support.dovecot import DovecotFactory, DovecotServer, DovecotUnavailable, _free_ports


@dataclass(frozen=True)
class ServerCertificate:
    """A certificate and its key as PEM files Dovecot can read."""

    cert_path: Path
    key_path: Path


def write_server_certificate(
    ca: trustme.CA, directory: Path, *identities: str
) -> ServerCertificate:
    """Issue a certificate for ``identities`` (host names or IP addresses) signed by ``ca``
    and write it (leaf then intermediates) and its key into ``directory``, mode 644."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    issued = ca.issue_cert(*identities)
    cert_path = directory / "cert.pem"
    key_path = directory / "key.pem"
    cert_path.write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key_path))
    for path in (cert_path, key_path):
        path.chmod(0o644)
    return ServerCertificate(cert_path=cert_path, key_path=key_path)


def tls_config(certificate: ServerCertificate, imaps_port: int) -> str:
    """``extra_config`` for a Dovecot with STARTTLS on its IMAP port and implicit TLS on
    ``imaps_port`` (127.0.0.1)."""
    return f"""\
ssl = yes
ssl_cert = <{certificate.cert_path}
ssl_key = <{certificate.key_path}
service imap-login {{
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
  }}
}}
"""


@dataclass(frozen=True)
class TlsDovecot:
    server: DovecotServer
    imaps_port: int


def start_tls_dovecot(
    dovecot_factory: DovecotFactory, name: str, certificate: ServerCertificate
) -> TlsDovecot:
    """Start a Dovecot with `tls_config`. The imaps port is picked outside the harness, so
    if another process takes it before Dovecot binds, try again under a new name."""
    last_error: DovecotUnavailable | None = None
    for attempt in range(3):
        (imaps_port,) = _free_ports(1)
        try:
            server = dovecot_factory(
                name if attempt == 0 else f"{name}-{attempt}",
                tls_config(certificate, imaps_port),
            )
        except DovecotUnavailable as exc:
            last_error = exc
            continue
        return TlsDovecot(server=server, imaps_port=imaps_port)
    assert last_error is not None
    raise last_error


class RecordingRelay:
    """A TCP relay on 127.0.0.1 that forwards to ``target`` and records every byte the
    client sent, so a test can read what crossed the wire (in clear or not).

    Real sockets, no mocking: the client talks to the relay as it would to the server."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.host = "127.0.0.1"
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sent = bytearray()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._closed = False

    @property
    def client_bytes(self) -> bytes:
        """Everything any client sent through the relay so far."""
        with self._lock:
            return bytes(self._sent)

    def start(self) -> RecordingRelay:
        self._spawn(self._accept_loop)
        return self

    def close(self) -> None:
        self._closed = True
        # close() alone does not wake a thread blocked in accept()/recv() on Linux;
        # shutdown() does.
        for sock in [self._listener, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _address = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self._sockets += [client, upstream]
            self._spawn(self._pump, client, upstream, True)
            self._spawn(self._pump, upstream, client, False)

    def _pump(self, source: socket.socket, sink: socket.socket, record: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if record:
                    with self._lock:
                        self._sent += chunk
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            # Pass the end of the stream on, so each side sees the other hang up.
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def recording_relay(target_host: str, target_port: int) -> Iterator[RecordingRelay]:
    relay = RecordingRelay(target_host, target_port).start()
    try:
        yield relay
    finally:
        relay.close()
