"""The reference clients: mbsync (Debian ``isync``) and OfflineIMAP (Debian
``offlineimap``), each syncing the benchmark INBOX into a Maildir of its own.

Configs are rendered from the project's copies of ``../shared/bench/*.tmpl`` (kept beside
this file, since the shared directory is read-only reference material). mbsync runs with
its default, durable settings (FSync yes).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from benchmarks.procs import TimedRun, run_timed

HERE = Path(__file__).resolve().parent
_UID_IN_NAME = re.compile(r",U=(\d+)")


class ToolFailed(RuntimeError):
    pass


def ensure_installed() -> dict[str, str]:
    """``which mbsync offlineimap``; install the Debian packages when missing (root only).
    Returns tool -> version string."""
    missing = [tool for tool in ("mbsync", "offlineimap") if shutil.which(tool) is None]
    if missing:
        if os.geteuid() != 0:
            raise ToolFailed(f"{', '.join(missing)} missing; apt-get install -y isync offlineimap")
        print(f"installing isync offlineimap (missing: {', '.join(missing)})", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(
            ["apt-get", "install", "-y", "isync", "offlineimap"], check=True, env=env, timeout=600
        )
    versions = {}
    for tool, flag in (("mbsync", "--version"), ("offlineimap", "--version")):
        result = subprocess.run([tool, flag], capture_output=True, text=True, timeout=30)
        versions[tool] = (result.stdout or result.stderr).strip().splitlines()[0]
    return versions


@dataclass(frozen=True)
class MaildirState:
    messages: int
    flagged_uids: frozenset[int]
    uids: frozenset[int]


def read_maildir(folder: Path) -> MaildirState:
    """What a Maildir holds: how many messages, and the server UIDs (``,U=<uid>`` in the
    name, as both mbsync and OfflineIMAP write it) whose info carries F (\\Flagged)."""
    count = 0
    flagged: set[int] = set()
    uids: set[int] = set()
    for sub in ("cur", "new"):
        directory = folder / sub
        if not directory.is_dir():
            continue
        for name in os.listdir(directory):
            count += 1
            match = _UID_IN_NAME.search(name)
            if match is None:
                continue
            uid = int(match.group(1))
            uids.add(uid)
            _, _, info = name.rpartition(":2,")
            if "F" in info:
                flagged.add(uid)
    return MaildirState(count, frozenset(flagged), frozenset(uids))


def _render(template: str, target: Path, values: dict[str, str]) -> Path:
    text = (HERE / template).read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    leftover = re.findall(r"@[A-Z]+@", text)
    if leftover:
        raise ToolFailed(f"{template}: unreplaced {leftover}")
    target.write_text(text)
    target.chmod(0o600)
    return target


class SyncTool:
    """One client, one Maildir, one config. `run()` is one timed sync."""

    name = ""

    def __init__(self, workdir: Path, port: int, user: str, password: str) -> None:
        self.workdir = workdir
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        self.maildir_root = workdir / "mail"
        self.maildir_root.mkdir()
        self.log_path = workdir / f"{self.name}.log"
        self.port, self.user, self.password = port, user, password
        self.config = self.render()

    def render(self) -> Path:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    @property
    def inbox(self) -> Path:
        return self.maildir_root / "INBOX"

    def run(self, timeout: float) -> TimedRun:
        result = run_timed(self.command(), timeout=timeout, log_path=self.log_path)
        if result.returncode != 0:
            raise ToolFailed(
                f"{self.name} exited {result.returncode}; log {self.log_path}:\n{result.log_tail()}"
            )
        return result

    def state(self) -> MaildirState:
        return read_maildir(self.inbox)

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


class Mbsync(SyncTool):
    name = "mbsync"

    def render(self) -> Path:
        return _render(
            "mbsyncrc.tmpl",
            self.workdir / "mbsyncrc",
            {
                "PORT": str(self.port),
                "DIR": str(self.maildir_root),
                "USER": self.user,
                "PASS": self.password,
            },
        )

    def command(self) -> list[str]:
        return ["mbsync", "-q", "-c", str(self.config), "bench"]


class OfflineImap(SyncTool):
    name = "offlineimap"

    def render(self) -> Path:
        meta = self.workdir / "metadata"
        meta.mkdir()
        return _render(
            "offlineimaprc.tmpl",
            self.workdir / "offlineimaprc",
            {
                "PORT": str(self.port),
                "DIR": str(self.maildir_root),
                "META": str(meta),
                "USER": self.user,
                "PASS": self.password,
            },
        )

    def command(self) -> list[str]:
        return ["offlineimap", "-c", str(self.config), "-o", "-u", "basic"]
