"""A real, throwaway Dovecot (IMAP + POP3 on loopback) for tests, and mail users on it.

`DovecotServer.start()` renders ``tests/dovecot/dovecot.conf.tmpl`` into its own directory and
starts the master; `DovecotServer.add_user()` creates a `MailUser`, whose helpers act on the
mailbox the way *another* mail client would: over their own IMAP connection, or through
``doveadm``. They never share a connection with the code under test.

Pure Python on purpose (no Django), so the harness works before settings or models do.
Needs root: Dovecot's master must start as root, and the mail files belong to
``nobody:nogroup`` because Dovecot refuses to access mail as uid 0.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from imapclient import IMAPClient

from mailsync.engine.accounts import MailAccount
from tests.support.paths import DOVECOT_TEMPLATE

HOST = "127.0.0.1"
MAIL_OWNER = "nobody"
MAIL_GROUP = "nogroup"

# Extra config for an instance that records every line a client sends after login into
# ``<home>/dovecot.rawlog/*.in`` (see `MailUser.enable_rawlog`): the only way to count the
# commands a client sent, since a repeated STORE leaves the mailbox unchanged.
RAWLOG_CONFIG = """\
service postlogin {
  executable = script-login -d rawlog
  unix_listener postlogin {
  }
}
service imap {
  executable = imap postlogin
}
"""

# Maildir info letters, for messages written straight into a Maildir (`deliver_bulk`).
_MAILDIR_FLAG_LETTERS = {
    "\\Draft": "D",
    "\\Flagged": "F",
    "\\Answered": "R",
    "\\Seen": "S",
    "\\Deleted": "T",
}
_APPENDUID = re.compile(rb"\[APPENDUID (\d+) (\d+)\]")


class DovecotFactory(Protocol):
    """The ``dovecot_factory`` fixture: one extra instance per name per test session."""

    def __call__(self, name: str, extra_config: str = "") -> DovecotServer: ...


class DovecotUnavailable(RuntimeError):
    """Dovecot cannot run here (not root, not installed, or it did not come up)."""


class DoveadmError(RuntimeError):
    """A ``doveadm`` command exited non-zero; the message carries its stderr."""

    def __init__(self, message: str, returncode: int) -> None:
        super().__init__(message)
        self.returncode = returncode


def _text(value: bytes | str) -> str:
    # imapclient hands back flags and folder attributes as bytes, sometimes as str.
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def _free_ports(count: int) -> list[int]:
    # Bind them all at once so the kernel hands out distinct ports. Another process could
    # take one between close() and Dovecot's bind; start() retries if that happens.
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _alive(pid: int) -> bool:
    # The daemonized master is reaped by PID 1, sometimes seconds after it exited: a zombie
    # counts as gone.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _gone(pid: int) -> bool:
    return not _alive(pid)


def _chown_mail(path: Path) -> None:
    shutil.chown(path, MAIL_OWNER, MAIL_GROUP)


class DovecotServer:
    """One running Dovecot instance. Create it with `DovecotServer.start`."""

    def __init__(self, root: Path, name: str, imap_port: int, pop3_port: int) -> None:
        self.root = root
        self.name = name
        self.host = HOST
        self.imap_port = imap_port
        self.pop3_port = pop3_port
        self.conf_path = root / "dovecot.conf"
        self.log_path = root / "log" / "dovecot.log"
        self.users_dir = root / "users"
        self.mail_dir = root / "mail"
        self.extra_config = ""
        self.pid: int | None = None

    @classmethod
    def start(cls, base_dir: Path | str, name: str, extra_config: str = "") -> DovecotServer:
        """Start an instance in ``<base_dir>/<name>`` on free loopback ports; wait until both
        ports accept connections. ``extra_config`` is appended to the rendered config."""
        if os.geteuid() != 0:
            raise DovecotUnavailable(
                "the Dovecot test server must run as root (its master starts as root and "
                "switches to nobody for mail); run the tests as root, e.g. via scripts/test"
            )
        if shutil.which("dovecot") is None or shutil.which("doveadm") is None:
            raise DovecotUnavailable(
                "dovecot/doveadm not found: apt-get install -y dovecot-imapd dovecot-pop3d"
            )
        last_error: DovecotUnavailable | None = None
        for _attempt in range(3):
            imap_port, pop3_port = _free_ports(2)
            server = cls(Path(base_dir) / name, name, imap_port, pop3_port)
            server.extra_config = extra_config
            try:
                server._launch(extra_config)
            except DovecotUnavailable as exc:
                # Most likely a port was taken between picking and binding: pick again.
                last_error = exc
                server.stop()
                continue
            return server
        assert last_error is not None
        raise last_error

    def _launch(self, extra_config: str) -> None:
        for sub in ("state", "log", "mail", "users"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        # A stale socket from an earlier run in the same directory changes behaviour: with
        # anvil-auth-penalty present but not listening, auth retries connecting for 5 s.
        shutil.rmtree(self.root / "run", ignore_errors=True)
        (self.root / "run").mkdir()
        # The mail uid must traverse to its home; the auth process (user "dovecot") reads
        # the users files.
        for directory in (self.root.parent, self.root, self.users_dir):
            directory.chmod(0o755)
        _chown_mail(self.mail_dir)
        template = DOVECOT_TEMPLATE.read_text()
        replacements = {
            "@ROOT@": str(self.root),
            "@NAME@": self.name,
            "@IMAP_PORT@": str(self.imap_port),
            "@POP3_PORT@": str(self.pop3_port),
            "@MAIL_UID@": str(pwd.getpwnam(MAIL_OWNER).pw_uid),
            "@MAIL_GID@": str(grp.getgrnam(MAIL_GROUP).gr_gid),
            "@EXTRA_CONFIG@": extra_config,
        }
        for placeholder, value in replacements.items():
            template = template.replace(placeholder, value)
        self.conf_path.write_text(template)
        # Never capture the output: the daemonized master keeps the inherited stdout/stderr
        # open for its whole life, so reading a pipe would block until it stops.
        with (self.root / "log" / "startup.log").open("ab") as startup_log:
            result = subprocess.run(
                ["dovecot", "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=startup_log,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if result.returncode != 0:
            raise DovecotUnavailable(f"dovecot did not start:\n{self._log_tail()}")
        # The master creates master.pid before writing the number into it.
        if _wait_until(lambda: self._read_pid() is not None, timeout=10):
            self.pid = self._read_pid()
        up = _wait_until(
            lambda: _port_open(self.imap_port) and _port_open(self.pop3_port), timeout=10
        )
        if not up:
            raise DovecotUnavailable(
                f"dovecot ports {self.imap_port}/{self.pop3_port} not up:\n{self._log_tail()}"
            )

    def _read_pid(self) -> int | None:
        try:
            return int((self.root / "run" / "master.pid").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            return None

    def _log_tail(self, lines: int = 30) -> str:
        text = ""
        for log in (self.root / "log" / "startup.log", self.log_path):
            with contextlib.suppress(OSError):
                text += "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) + "\n"
        return text

    def start_again(self) -> None:
        """Start a stopped instance again on its ports, with its users and their mail (a
        restart, as after an upgrade or a crash)."""
        self._launch(self.extra_config)

    def stop(self) -> None:
        """SIGTERM the master and wait for it (≈1.1 s: it waits 1 s for its log process);
        SIGKILL if it is still there after 10 s."""
        stop_all([self])

    def doveadm(self, *args: str, input: bytes | None = None) -> str:
        """Run ``doveadm -c <conf> *args``; return stdout, raise `DoveadmError` on failure."""
        result = subprocess.run(
            ["doveadm", "-c", str(self.conf_path), *args],
            input=input if input is not None else b"",
            capture_output=True,
            check=False,
            timeout=60,
        )
        if result.returncode != 0:
            raise DoveadmError(
                f"doveadm {' '.join(args)} exited {result.returncode}: "
                f"{result.stderr.decode(errors='replace').strip()}",
                result.returncode,
            )
        return result.stdout.decode(errors="replace")

    def add_user(self, address: str, password: str) -> MailUser:
        """Create a mail user that can log in at once (IMAP, POP3 and doveadm)."""
        local, _, domain = address.partition("@")
        forbidden = set("/: \t\r\n")
        if not local or not domain or forbidden & set(address) or forbidden & set(password):
            raise ValueError(f"unusable test address or password: {address!r}")
        # One passwd-file per user (see the template): Dovecot re-reads a changed shared
        # passwd-file at most once per second, so a user appended to it can fail to log in.
        # Written under a temporary name and renamed, so auth never reads half a line.
        entry = f"{address}:{{PLAIN}}{password}::::::\n"
        target = self.users_dir / address
        if target.exists():
            raise ValueError(f"mail user {address} already exists")
        staging = self.users_dir / f".{address}.tmp"
        staging.write_text(entry)
        staging.chmod(0o644)
        staging.rename(target)
        return MailUser(address=address, password=password, server=self)


@dataclass(frozen=True)
class MailUser:
    """A mailbox on the test server, handled like a second mail client would."""

    address: str
    password: str
    server: DovecotServer

    @property
    def home(self) -> Path:
        local, _, domain = self.address.partition("@")
        return self.server.mail_dir / domain / local

    # --- IMAP, over a connection of our own ---------------------------------------------

    def account(self) -> MailAccount:
        """How the engine reaches this user: plaintext IMAP on loopback."""
        return MailAccount(
            protocol="imap",
            security="plain",
            host=self.server.host,
            port=self.server.imap_port,
            username=self.address,
            password=self.password,
        )

    @contextlib.contextmanager
    def imap(self) -> Iterator[Any]:
        """A logged-in `IMAPClient` (UIDs, plaintext on loopback); logged out afterwards."""
        client = IMAPClient(self.server.host, port=self.server.imap_port, ssl=False, timeout=30)
        try:
            client.login(self.address, self.password)
            yield client
        finally:
            with contextlib.suppress(Exception):
                client.logout()

    def append(self, raw: bytes, folder: str = "INBOX", flags: Iterable[str] = ()) -> int:
        """APPEND ``raw``; return the UID the server gave it (UIDPLUS APPENDUID)."""
        with self.imap() as client:
            response = client.append(folder, raw, flags=tuple(flags))
        match = _APPENDUID.search(response if isinstance(response, bytes) else response.encode())
        if match is None:
            raise AssertionError(f"APPEND answered without APPENDUID: {response!r}")
        return int(match.group(2))

    def uids(self, folder: str = "INBOX") -> list[int]:
        with self.imap() as client:
            client.select_folder(folder, readonly=True)
            return sorted(int(uid) for uid in client.search("ALL"))

    def flags(self, folder: str = "INBOX") -> dict[int, set[str]]:
        """UID -> flags such as ``"\\Seen"``, for every message; ``\\Recent`` left out."""
        with self.imap() as client:
            client.select_folder(folder, readonly=True)
            uids = [int(uid) for uid in client.search("ALL")]
            if not uids:
                return {}
            response = client.fetch(uids, ["FLAGS"])
        wanted = set(uids)
        # Unsolicited FETCHes are keyed by sequence number (IMAP-NOTES §3): keep what we asked.
        return {
            int(uid): {_text(flag) for flag in data[b"FLAGS"]} - {"\\Recent"}
            for uid, data in response.items()
            if uid in wanted
        }

    def raw(self, uid: int, folder: str = "INBOX") -> bytes:
        """The message's exact octets via BODY.PEEK[] on a read-only SELECT (keeps \\Seen)."""
        with self.imap() as client:
            client.select_folder(folder, readonly=True)
            response = client.fetch([uid], ["BODY.PEEK[]"])
        if uid not in response:
            raise LookupError(f"no UID {uid} in {folder} of {self.address}")
        body: bytes = response[uid][b"BODY[]"]
        return body

    def add_flags(self, uids: Iterable[int], flags: Iterable[str], folder: str = "INBOX") -> None:
        with self.imap() as client:
            client.select_folder(folder)
            client.add_flags(list(uids), list(flags), silent=True)

    def remove_flags(
        self, uids: Iterable[int], flags: Iterable[str], folder: str = "INBOX"
    ) -> None:
        with self.imap() as client:
            client.select_folder(folder)
            client.remove_flags(list(uids), list(flags), silent=True)

    def expunge(self, uids: Iterable[int], folder: str = "INBOX") -> None:
        """Expunge exactly ``uids`` (UID EXPUNGE): other \\Deleted messages stay."""
        uid_list = list(uids)
        with self.imap() as client:
            client.select_folder(folder)
            client.add_flags(uid_list, ["\\Deleted"], silent=True)
            client.uid_expunge(uid_list)

    def uidvalidity(self, folder: str = "INBOX") -> int:
        with self.imap() as client:
            return int(client.folder_status(folder, ["UIDVALIDITY"])[b"UIDVALIDITY"])

    def create_folder(self, name: str) -> None:
        """Create ``name`` (hierarchy separator ``/``)."""
        with self.imap() as client:
            client.create_folder(name)

    def folders(self) -> dict[str, set[str]]:
        """Folder name -> LIST attributes, e.g. ``{"Trash": {"\\HasNoChildren", "\\Trash"}}``."""
        with self.imap() as client:
            listing = client.list_folders()
        return {_text(name): {_text(flag) for flag in flags} for flags, _sep, name in listing}

    # --- doveadm and the Maildir, from outside any IMAP session -------------------------

    def doveadm_save(self, raw: bytes, folder: str = "INBOX") -> None:
        """Save a message as local delivery would (``doveadm save``); no UID is reported."""
        self.server.doveadm("save", "-u", self.address, "-m", folder, input=raw)

    def set_uidvalidity(self, value: int, folder: str = "INBOX") -> None:
        """Change the folder's UIDVALIDITY, as a server rebuild or migration would."""
        self.server.doveadm(
            "mailbox", "update", "-u", self.address, "--uid-validity", str(value), folder
        )

    def kick(self) -> None:
        """Drop every IMAP/POP3 session of this user (clients see the connection close)."""
        try:
            self.server.doveadm("kick", self.address)
        except DoveadmError as exc:
            # 68 (EX_NOUSER) is what doveadm answers when nobody was logged in.
            if exc.returncode != 68:
                raise

    def deliver_bulk(
        self, raws: Iterable[bytes], folder: str = "INBOX", flags: Iterable[str] = ()
    ) -> int:
        """Write messages straight into the folder's Maildir (≈10x faster than doveadm,
        ≈100x faster than APPEND); Dovecot assigns UIDs when a client next looks.
        ``folder`` must exist (or be INBOX). Returns how many were written."""
        maildir = self._maildir(folder)
        letters = "".join(sorted(_MAILDIR_FLAG_LETTERS[flag] for flag in set(flags)))
        # Unique per batch as well as per message: two batches can share a second.
        batch = f"{int(time.time())}.R{secrets.token_hex(6)}P{os.getpid()}"
        count = 0
        for count, raw in enumerate(raws, start=1):
            base = f"{batch}M{count}.teaminbox-tests,S={len(raw)}"
            # Written in tmp/ and renamed into cur/, as Maildir delivery does, so Dovecot
            # never sees half a message.
            staging = maildir / "tmp" / base
            staging.write_bytes(raw)
            _chown_mail(staging)
            staging.rename(maildir / "cur" / f"{base}:2,{letters}")
        return count

    def _maildir(self, folder: str) -> Path:
        maildir = self.home / "Maildir"
        if folder.upper() != "INBOX":
            # Maildir++ on disk: "A/B" is the directory ".A.B".
            maildir = maildir / ("." + folder.replace("/", "."))
            if not maildir.is_dir():
                raise LookupError(f"folder {folder!r} of {self.address} does not exist")
        for path in (self.home.parent, self.home, self.home / "Maildir"):
            if not path.exists():
                path.mkdir(mode=0o700)
                _chown_mail(path)
        for sub in ("cur", "new", "tmp"):
            path = maildir / sub
            if not path.exists():
                path.mkdir(mode=0o700)
                _chown_mail(path)
        return maildir

    # --- rawlog: what a client really sent (server started with RAWLOG_CONFIG) ----------

    def enable_rawlog(self) -> None:
        """Record this user's future IMAP sessions; needs a server started with
        ``extra_config=RAWLOG_CONFIG``. Read them with `rawlog_commands`."""
        if "rawlog" not in self.server.extra_config:
            raise RuntimeError("this Dovecot records nothing: start it with RAWLOG_CONFIG")
        for path in (self.home.parent, self.home, self.home / "dovecot.rawlog"):
            if not path.exists():
                path.mkdir(mode=0o700)
                _chown_mail(path)

    def rawlog_commands(self, timeout: float = 5.0) -> list[str]:
        """Every line clients sent after LOGIN, session by session, tag removed
        (``"UID STORE 1 +FLAGS (\\Seen)"``; an IDLE's ``DONE`` stays ``"DONE"``).

        The imap process buffers its rawlog and writes the rest when it exits, which is
        after the client has seen the LOGOUT reply: so first wait up to ``timeout`` s for
        every recorded session's process (its pid ends the file name) to be gone. Close the
        connections you want counted; a session still open is read as far as written."""
        rawlog_dir = self.home / "dovecot.rawlog"

        def session_pids() -> list[int]:
            return [int(log.stem.rsplit("-", 1)[1]) for log in rawlog_dir.glob("*.in")]

        _wait_until(lambda: not any(_alive(pid) for pid in session_pids()), timeout)
        commands: list[str] = []
        for log in sorted(rawlog_dir.glob("*.in")):
            for line in log.read_bytes().decode("utf-8", "replace").splitlines():
                tag, _, rest = line.partition(" ")
                commands.append(rest if rest else tag)
        return commands


def stop_all(servers: Iterable[DovecotServer]) -> None:
    """Stop several instances in ≈1.1 s in all, instead of ≈1.1 s each."""
    pids = []
    for server in servers:
        pid, server.pid = server.pid, None
        if pid is not None and _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            pids.append(pid)
    for pid in pids:
        if not _wait_until(partial(_gone, pid), timeout=10):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_until(partial(_gone, pid), timeout=5)
