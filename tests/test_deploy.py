"""The docker-compose deployment: both keys required, plain HTTP without DOMAIN, HTTPS with it.

The web process is started here with the environment `docker-compose config` renders for the
web service, so what is tested is what the containers get; only what must point at this
machine is changed (see ``start_web``).
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from tests.support.ci import unavailable
from tests.support.paths import PROJECT_ROOT
from tests.support.personas import child_database_url

# What a deployer sets in the shell; a test run's own values must not leak into the rendering.
COMPOSE_VARIABLES = {
    "SECRET_KEY",
    "CREDENTIALS_KEY",
    "DOMAIN",
    "SECURE_HTTPS",
    "ALLOWED_HOSTS",
    "CSRF_TRUSTED_ORIGINS",
}
APP_SERVICES = ("migrate", "web", "worker", "beat", "watcher")


def keys() -> dict[str, str]:
    return {
        "SECRET_KEY": secrets.token_urlsafe(50),
        "CREDENTIALS_KEY": Fernet.generate_key().decode(),
    }


def run_compose_config(**variables: str) -> subprocess.CompletedProcess[str]:
    if not shutil.which("docker-compose"):
        unavailable("docker-compose is not installed (scripts/test installs it)")
    env = {k: v for k, v in os.environ.items() if k not in COMPOSE_VARIABLES} | variables
    return subprocess.run(
        ["docker-compose", "config"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def compose_config(**variables: str) -> dict[str, Any]:
    rendered = run_compose_config(**variables)
    assert rendered.returncode == 0, rendered.stderr
    # PyYAML is no dependency of ours; Debian's docker-compose brings it to the system Python.
    as_json = subprocess.run(
        [
            "/usr/bin/python3",
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)",
        ],
        input=rendered.stdout,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert as_json.returncode == 0, as_json.stderr
    config: dict[str, Any] = json.loads(as_json.stdout)
    return config


def service_environment(config: dict[str, Any], service: str) -> dict[str, str]:
    """The variables the service's container gets: a null value (a pass-through variable the
    shell did not set) is not set at all."""
    environment = config["services"][service]["environment"]
    return {name: str(value) for name, value in environment.items() if value is not None}


def test_compose_refuses_to_start_without_either_key_and_names_it():
    for missing in ("SECRET_KEY", "CREDENTIALS_KEY"):
        given = {name: value for name, value in keys().items() if name != missing}

        rendered = run_compose_config(**given)

        assert rendered.returncode != 0, f"rendered without {missing}"
        assert f"{missing} is not set" in rendered.stderr


def test_compose_renders_no_empty_value():
    config = compose_config(**keys())

    for service in APP_SERVICES:
        environment = service_environment(config, service)
        assert environment["SECRET_KEY"] and environment["CREDENTIALS_KEY"]
        assert [name for name, value in environment.items() if value == ""] == [], service


def test_the_apps_trust_forwarded_addresses_from_the_proxy_only():
    config = compose_config(**keys())

    proxy_address = config["services"]["proxy"]["networks"]["default"]["ipv4_address"]
    for service in APP_SERVICES:
        assert service_environment(config, service)["TRUSTED_PROXIES"] == proxy_address
    # other containers draw their addresses from a range that leaves the proxy's alone
    (network,) = config["networks"]["default"]["ipam"]["config"]
    address = ipaddress.ip_address(proxy_address)
    assert address in ipaddress.ip_network(network["subnet"])
    assert address not in ipaddress.ip_network(network["ip_range"])


def test_caddy_accepts_the_proxy_config():
    if not shutil.which("caddy"):
        unavailable("caddy is not installed (scripts/test installs Debian's caddy)")
    validated = subprocess.run(
        ["caddy", "validate", "--config", "deploy/Caddyfile", "--adapter", "caddyfile"],
        cwd=PROJECT_ROOT,
        env={**os.environ, "DOMAIN": "teaminbox.example.com"},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert validated.returncode == 0, validated.stderr
    assert "Valid configuration" in validated.stdout + validated.stderr


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


WebFactory = Callable[[dict[str, str]], int]


@pytest.fixture
def start_web(transactional_db: Any, tmp_path: Path) -> Iterator[WebFactory]:
    """Start the image's web command (gunicorn teaminbox.wsgi) with a service's rendered
    environment; returns its port. Changed, because they must point at this machine: the
    hostnames postgres and redis in DATABASE_URL and REDIS_URL become the test's own database
    and Redis (no Redis on the SQLite run: then REDIS_URL is left out), TEAMINBOX_VAR_DIR (the
    image's ENV) a throwaway directory, and the bind address a free local port."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(environment: dict[str, str]) -> int:
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **environment}
        env["DATABASE_URL"] = child_database_url()
        if os.environ.get("REDIS_URL"):
            env["REDIS_URL"] = os.environ["REDIS_URL"]
        else:
            env.pop("REDIS_URL")
        env["TEAMINBOX_VAR_DIR"] = str(tmp_path / "var")
        port = free_port()
        log = (tmp_path / f"web-{port}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "teaminbox.wsgi", "--bind", f"127.0.0.1:{port}"],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        processes.append(process)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return port
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail((tmp_path / f"web-{port}.log").read_text()[-3000:])
                time.sleep(0.1)

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=30)


def get(port: int, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def test_without_a_domain_the_web_service_serves_plain_http(start_web):
    environment = service_environment(compose_config(**keys()), "web")
    assert "DOMAIN" not in environment

    port = start_web(environment)
    response = get(port, "/login/")

    assert response.status == 200, (response.status, response.getheader("Location"))
    assert response.getheader("Strict-Transport-Security") is None


def test_with_a_domain_the_web_service_is_https_only_behind_the_proxy(start_web):
    environment = service_environment(compose_config(**keys(), DOMAIN="mail.example.test"), "web")

    port = start_web(environment)
    plain = get(port, "/login/", {"Host": "mail.example.test"})
    # what Caddy forwards: the original Host and X-Forwarded-Proto: https
    proxied = get(port, "/login/", {"Host": "mail.example.test", "X-Forwarded-Proto": "https"})

    assert plain.status == 301
    assert plain.getheader("Location") == "https://mail.example.test/login/"
    assert proxied.status == 200
    assert proxied.getheader("Strict-Transport-Security")
    assert "secure" in proxied.getheader("Set-Cookie", "").lower()
