"""parse_envelope, old versus new, in ms per message: one command, one table (and JSON).

    .venv/bin/python benchmarks/envelope_bench.py [--messages 10000] [--rounds 5] [--json out.json]

"old" is the implementation before the fast path (the feed parser, then getaddresses), kept as
``reference_envelope`` in tests/engine/test_envelope_fast.py; "new" is
``mailsync.engine.mime.parse_envelope``. Inputs: --messages messages from the sync benchmark's
generator (benchmarks/corpus.py, --seed), and every file of ../shared/corpus/mime when it is there.
Each round times old and new once over a whole data set, alternately, with the garbage collector
off (as timeit does); the table shows the best round and the median. New starts every round with
empty caches (the parsed address lists and charset parameters it keeps, as one sync in a fresh
process would); the "no caches" row turns them off, as if no value ever came back. Every input is
also checked: "identical" says whether old and new returned equal envelopes for all of them.
Target (from the issue): new <= 0.09 ms per generated message.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.corpus import generate  # noqa: E402
from mailsync.engine import mime_envelope, mime_headers  # noqa: E402
from mailsync.engine.mime import ParsedEnvelope, parse_envelope  # noqa: E402
from tests.engine.test_envelope_fast import reference_envelope  # noqa: E402
from tests.support.paths import CORPUS_MIME_DIR  # noqa: E402

TARGET_MS = 0.09

Parser = Callable[[bytes], ParsedEnvelope]


def _clear_caches() -> None:
    mime_envelope._cached_addresses.cache_clear()
    mime_headers._cached_charset_param.cache_clear()


@contextlib.contextmanager
def _caches_off() -> Iterator[None]:
    """No value is short enough to be cached."""
    saved = mime_envelope._CACHED_ADDRESS_LIST, mime_headers._CACHED_CONTENT_TYPE
    mime_envelope._CACHED_ADDRESS_LIST = mime_headers._CACHED_CONTENT_TYPE = -1
    try:
        yield
    finally:
        mime_envelope._CACHED_ADDRESS_LIST, mime_headers._CACHED_CONTENT_TYPE = saved


def _ms_per_message(parse: Parser, messages: Sequence[bytes]) -> float:
    _clear_caches()
    gc.disable()
    try:
        started = time.perf_counter()
        for raw in messages:
            parse(raw)
        elapsed = time.perf_counter() - started
    finally:
        gc.enable()
    return elapsed * 1000 / len(messages)


def measure(name: str, messages: Sequence[bytes], rounds: int) -> dict[str, Any]:
    mismatches = sum(1 for raw in messages if parse_envelope(raw) != reference_envelope(raw))
    times: dict[str, list[float]] = {"old": [], "new": []}
    for _ in range(rounds):
        times["old"].append(_ms_per_message(reference_envelope, messages))
        times["new"].append(_ms_per_message(parse_envelope, messages))
    row: dict[str, Any] = {"data set": name, "messages": len(messages), "mismatches": mismatches}
    for which, values in times.items():
        row[f"{which}_best_ms"] = min(values)
        row[f"{which}_median_ms"] = statistics.median(values)
        row[f"{which}_rounds_ms"] = values
    row["speed_up_best"] = row["old_best_ms"] / row["new_best_ms"]
    return row


def print_table(rows: list[dict[str, Any]]) -> None:
    headers = ("data set", "messages", "old ms/msg", "new ms/msg", "speed-up", "identical")
    cells = [
        (
            row["data set"],
            str(row["messages"]),
            f"{row['old_best_ms']:.4f} ({row['old_median_ms']:.4f})",
            f"{row['new_best_ms']:.4f} ({row['new_median_ms']:.4f})",
            f"{row['speed_up_best']:.1f}x",
            "yes" if row["mismatches"] == 0 else f"NO: {row['mismatches']} differ",
        )
        for row in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for line in cells:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    print("(best round, median in parentheses)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=20251101)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    generated = list(generate(args.messages, args.seed))
    rows = [measure("generated", generated, args.rounds)]
    with _caches_off():
        rows.append(measure("generated, no caches", generated, args.rounds))
    if CORPUS_MIME_DIR.is_dir():
        files = sorted(CORPUS_MIME_DIR.rglob("*.eml"))
        rows.append(measure("corpus", [path.read_bytes() for path in files], args.rounds))
    else:
        print(f"(no corpus at {CORPUS_MIME_DIR}: generated mail only)")
    print_table(rows)
    met = rows[0]["new_best_ms"] <= TARGET_MS
    print(f"target: new <= {TARGET_MS} ms per generated message: {'met' if met else 'NOT met'}")
    if args.json:
        meta = {
            "python": platform.python_version(),
            "load_average": os.getloadavg(),
            "seed": args.seed,
            "rounds": args.rounds,
            "target_ms": TARGET_MS,
            "target_met": met,
        }
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    identical = all(row["mismatches"] == 0 for row in rows)
    return 0 if met and identical else 1


if __name__ == "__main__":
    sys.exit(main())
