"""The README's run command serves the inbox, with nothing but the embedded defaults."""

from __future__ import annotations

import http.cookiejar
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.support.paths import PROJECT_ROOT

pytestmark = pytest.mark.worker  # starts web, worker and beat processes


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_scripts_run_serves_the_inbox_and_prints_the_admin_password():
    var_dir = tempfile.mkdtemp(prefix="teaminbox-run-")
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL", "SECRET_KEY"}
    }
    env.update({"PORT": str(port), "TEAMINBOX_VAR_DIR": var_dir})
    log_path = os.path.join(var_dir, "run.log")
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            ["bash", str(PROJECT_ROOT / "scripts" / "run")],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # one group: web, worker and beat stop together
        )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/login/", timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert process.poll() is None, Path(log_path).read_text()[-3000:]
                assert time.monotonic() < deadline, "scripts/run did not serve within 120 s"
                time.sleep(0.25)
        output = Path(log_path).read_text()
        assert f"running at http://127.0.0.1:{port}/" in output
        match = re.search(r"Created administrator 'admin' with password (\S+)", output)
        assert match, output[-3000:]

        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        opener.open(f"{base}/login/", timeout=10).read()
        token = next(c.value for c in jar if c.name == "csrftoken")
        form = urllib.parse.urlencode(
            {"username": "admin", "password": match.group(1), "csrfmiddlewaretoken": token}
        ).encode()
        request = urllib.request.Request(f"{base}/login/", data=form, headers={"Referer": base})
        with opener.open(request, timeout=10) as landed:
            page = landed.read().decode()
        assert "Your shared mailboxes" in page  # logged in: the home page, not the form
        with opener.open(f"{base}/static/teaminbox/teaminbox.css", timeout=10) as css:
            assert css.status == 200
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
