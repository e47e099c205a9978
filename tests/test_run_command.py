"""The README's run command serves the inbox, with nothing but the embedded defaults, and
the README's next step (addmailbox in a second terminal) adds a mailbox its worker syncs."""

from __future__ import annotations

import http.cookiejar
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.paths import PROJECT_ROOT
from tests.test_sync import make_mail

pytestmark = pytest.mark.worker  # starts web, worker and beat processes

# A user's shell has none of these; the test run's own must not reach scripts/run.
NOT_IN_A_USERS_SHELL = {
    "DATABASE_URL",
    "REDIS_URL",
    "CELERY_BROKER_URL",
    "SECRET_KEY",
    "SECRET_KEY_FILE",
    "CREDENTIALS_KEY",
    "CREDENTIALS_KEY_FILE",
    "MAILBOX_PASSWORD",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class RunningApp:
    base: str
    var_dir: Path
    log_path: Path
    shell: dict[str, str]  # a second terminal's environment
    admin_password: str

    def log(self) -> str:
        return self.log_path.read_text()

    def logged_in(self) -> urllib.request.OpenerDirector:
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        opener.open(f"{self.base}/login/", timeout=10).read()
        token = next(c.value for c in jar if c.name == "csrftoken")
        form = urllib.parse.urlencode(
            {"username": "admin", "password": self.admin_password, "csrfmiddlewaretoken": token}
        ).encode()
        request = urllib.request.Request(
            f"{self.base}/login/", data=form, headers={"Referer": self.base}
        )
        opener.open(request, timeout=10).read()
        return opener


def wait_until(check, *, timeout: float, what: str, log: RunningApp | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        tail = log.log()[-3000:] if log else ""
        assert time.monotonic() < deadline, f"{what} within {timeout} s\n{tail}"
        time.sleep(0.25)


@pytest.fixture(scope="module")
def running_app() -> Iterator[RunningApp]:
    """scripts/run on a fresh var directory, as a newcomer starts it (one for the module)."""
    var_dir = Path(tempfile.mkdtemp(prefix="teaminbox-run-"))
    port = free_port()
    # The shell the user types in: the defaults (SQLite and the filesystem broker in the var
    # directory; TEAMINBOX_VAR_DIR only keeps this run apart from the checkout's var/).
    shell = {k: v for k, v in os.environ.items() if k not in NOT_IN_A_USERS_SHELL}
    shell["TEAMINBOX_VAR_DIR"] = str(var_dir)
    # The safety-net sync is how the worker picks up a new mailbox: every 5 s, not 60.
    run_env = {**shell, "PORT": str(port), "SYNC_INTERVAL_SECONDS": "5"}
    log_path = var_dir / "run.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            ["bash", str(PROJECT_ROOT / "scripts" / "run")],
            cwd=PROJECT_ROOT,
            env=run_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # one group: web, worker and beat stop together
        )
    try:
        base = f"http://127.0.0.1:{port}"

        def serving() -> bool:
            assert process.poll() is None, log_path.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{base}/login/", timeout=2) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        wait_until(serving, timeout=120, what="scripts/run did not serve")
        match = re.search(
            r"Created administrator 'admin' with password (\S+)", log_path.read_text()
        )
        assert match, log_path.read_text()[-3000:]
        yield RunningApp(base, var_dir, log_path, shell, match.group(1))
    finally:
        # As Ctrl-C would: scripts/run's trap stops web, worker and beat in turn; the group
        # (start_new_session) is killed only if that does not end within 30 s.
        os.kill(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        if not os.environ.get("TEAMINBOX_KEEP_TEST_DIRS"):
            shutil.rmtree(var_dir, ignore_errors=True)


def test_scripts_run_serves_the_inbox_and_prints_the_admin_password(running_app):
    assert f"running at {running_app.base}/" in running_app.log()

    opener = running_app.logged_in()

    with opener.open(f"{running_app.base}/", timeout=10) as landed:
        page = landed.read().decode()
    assert "Your shared mailboxes" in page  # logged in: the home page, not the form
    with opener.open(f"{running_app.base}/static/teaminbox/teaminbox.css", timeout=10) as css:
        assert css.status == 200


def test_scripts_run_keeps_its_keys_and_the_brokers_control_folder_in_the_var_directory(
    running_app,
):
    for name in ("secret_key", "credentials_key"):
        assert (running_app.var_dir / name).stat().st_mode & 0o777 == 0o600
    # The worker's broadcast (control) exchange: kombu's default is ./control, the checkout.
    control = running_app.var_dir / "celery" / "control" / "celery.pidbox.exchange"
    wait_until(control.exists, timeout=60, what=f"no {control}", log=running_app)


def test_addmailbox_from_a_second_terminal_gives_the_worker_a_password_it_can_use(
    running_app, mail_user
):
    mail_user.append(make_mail("Hello from a second terminal"))
    url = (
        f"imap://{urllib.parse.quote(mail_user.address, safe='')}:"
        f"{urllib.parse.quote(mail_user.password, safe='')}@127.0.0.1:{mail_user.server.imap_port}"
    )

    # Exactly the README's command, with the user's shell: no key, no SECRET_KEY_FILE.
    added = subprocess.run(
        [
            str(PROJECT_ROOT / ".venv" / "bin" / "python"),
            "manage.py",
            "addmailbox",
            "support",
            "--url",
            url,
            "--members",
            "admin",
        ],
        cwd=PROJECT_ROOT,
        env=running_app.shell,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert added.returncode == 0, added.stderr
    assert "Wrote" not in added.stdout  # it used the keys scripts/run wrote

    opener = running_app.logged_in()

    def listed() -> bool:
        refused = [line for line in running_app.log().splitlines() if "decrypted" in line]
        assert not refused, f"the worker cannot use the stored password: {refused[-1]}"
        with opener.open(f"{running_app.base}/m/support/", timeout=10) as inbox:
            return "Hello from a second terminal" in inbox.read().decode()

    wait_until(listed, timeout=60, what="the worker did not list the message", log=running_app)
