"""The chaos scenarios: faults drawn from a printed seed (TEAMINBOX_CHAOS_SEED replays a
run, TEAMINBOX_CHAOS_SOAK=1 runs the long mode), against servers and processes of the
test's own. They need PostgreSQL (terminated connections, several processes writing at
once) and Redis; the SQLite run deselects them by their ``chaos`` marker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.db import connection

from tests.support.chaos import OwnRedis, Production, child_env, replay_hint


@pytest.fixture(autouse=True)
def postgresql_only() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the chaos scenarios run on PostgreSQL (scripts/test deselects them here)")


@pytest.fixture(autouse=True)
def printed_seed() -> None:
    print(replay_hint())


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report = yield
    if report.failed and item.get_closest_marker("chaos"):  # type: ignore[attr-defined]
        report.sections.append(("chaos seed", replay_hint()))  # type: ignore[attr-defined]
    return report


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    """A Redis of the test's own on a free port (the shared one is never stopped)."""
    redis = OwnRedis(tmp_path / "logs")
    redis.start()
    yield redis
    redis.stop()


@pytest.fixture(autouse=True)
def app_on_own_redis(own_redis: OwnRedis, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """What staff actions in this process publish goes to the test's own Redis (where
    only a worker the test started reads it), not to the shared one."""
    from teaminbox.celery import app
    from tests.test_outages import forget_broker_connections

    previous = app.conf.broker_url
    monkeypatch.setenv("CELERY_BROKER_URL", own_redis.url)
    app.conf.update(broker_url=own_redis.url)
    forget_broker_connections()
    yield
    app.conf.update(broker_url=previous)
    forget_broker_connections()


@pytest.fixture
def production(own_redis: OwnRedis, tmp_path: Path) -> Iterator[Callable[..., Production]]:
    """``production(SETTING="value", ...)`` starts a worker and beat of the test's own on
    its own Redis, with those settings; stopped at the end, their log tails printed (shown
    when the test fails)."""
    started: list[Production] = []

    def start(**settings: str) -> Production:
        running = Production(child_env(redis_url=own_redis.url, **settings), tmp_path / "logs")
        running.start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()
        print(running.log_tails())
