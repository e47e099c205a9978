"""One log line when something breaks and one when it works again, not one per retry.

While the mail server is down a worker retries its tasks every few seconds, and while the
broker is down beat fails to publish every due task: logging each try buried the news
(300 lines in a 30 s IMAP outage, 504 lines and 20 tracebacks in a 62 s Redis outage).
The state is kept per process, so each worker process and beat says it once.
"""

from __future__ import annotations

import logging
import threading

OK = "ok"

_lock = threading.Lock()
_states: dict[str, str] = {}


def log_state_change(
    logger: logging.Logger,
    what: str,
    state: str,
    message: str,
    *args: object,
    level: int = logging.WARNING,
) -> bool:
    """Log ``message`` when ``what`` enters ``state``; stay quiet while it stays there.

    Returns whether a line was written. ``OK`` as the first state known is no news and is
    not logged; ``OK`` after another state is the recovery line.
    """
    with _lock:
        previous = _states.get(what)
        _states[what] = state
    if previous == state or (previous is None and state == OK):
        return False
    logger.log(level, message, *args)
    return True


def forget_states() -> None:
    """Start afresh (tests)."""
    with _lock:
        _states.clear()
