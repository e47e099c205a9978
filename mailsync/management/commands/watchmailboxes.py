from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand

from mailsync.watcher import Watcher


class Command(BaseCommand):
    help = (
        "Keep IDLE on the chosen folders of every active IMAP mailbox and sync a folder as "
        "soon as the server reports a change (runs until stopped; several may run, each "
        "mailbox is watched by one)."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        Watcher().run(stop)
