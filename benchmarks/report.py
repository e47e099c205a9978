"""Turn the measurements into the benchmark's one table (and its JSON rows).

Input: ``results[size][tool]`` dicts as `sync_bench` fills them (tool = floor, mbsync,
offlineimap, ours; a tool that did not run is absent). Output: rows with one cell per
column -- floor / mbsync / OfflineIMAP / ours -- plus the target and whether ours met it.

"Flat from 10k to 100k" is judged as: the 100k value is at most 1.5 x the 10k value, or
at most 0.05 s (times) / 25 MB (RSS) above it -- a 20 ms call that becomes 30 ms is flat.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

COLUMNS = ("floor", "mbsync", "offlineimap", "ours")
HEADERS = ("measurement", "floor", "mbsync", "OfflineIMAP", "ours", "target", "met?")
FLAT_RATIO = 1.5
FLAT_SLACK_S = 0.05
FLAT_SLACK_MB = 25.0
NEWEST_TARGET_S = 2.0
RSS_TARGET_MB = 250.0
OFFLINEIMAP_FACTOR = 5.0

Results = dict[int, dict[str, dict[str, Any]]]


@dataclass
class Row:
    measurement: str
    unit: str = "s"  # s, MB, x
    values: dict[str, float | None] = field(default_factory=dict)
    target: str = ""
    met: bool | None = None  # None: nothing to judge (or not measured)
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "measurement": self.measurement,
            "unit": self.unit,
            **{column: self.values.get(column) for column in COLUMNS},
            "target": self.target,
            "met": self.met,
            "note": self.note,
        }


def size_label(size: int) -> str:
    return f"{size // 1000}k" if size % 1000 == 0 and size >= 1000 else str(size)


def _get(results: Results, size: int, tool: str, key: str) -> float | None:
    value = results.get(size, {}).get(tool, {}).get(key)
    return float(value) if isinstance(value, int | float) else None


def _all(*checks: bool | None) -> bool | None:
    known = [c for c in checks if c is not None]
    if not known:
        return None
    return all(known)


def _le(value: float | None, bound: float | None) -> bool | None:
    if value is None or bound is None:
        return None
    return value <= bound


def _flat(small: float | None, large: float | None, slack: float) -> bool | None:
    if small is None or large is None:
        return None
    return large <= max(small * FLAT_RATIO, small + slack)


def build_rows(results: Results, warnings: list[str]) -> list[Row]:
    rows: list[Row] = []
    sizes = sorted(results)
    for size in sizes:
        k = size_label(size)

        def value(tool: str, key: str, size: int = size) -> float | None:
            return _get(results, size, tool, key)

        newest = value("ours", "newest50_s")
        rows.append(
            Row(
                f"newest 50 listed ({k})",
                values={"ours": newest},
                target=f"≤ {NEWEST_TARGET_S:g} s",
                met=_le(newest, NEWEST_TARGET_S),
            )
        )
        initial = {tool: value(tool, "initial_s") for tool in COLUMNS}
        ours = initial["ours"]
        mbsync, offlineimap = initial["mbsync"], initial["offlineimap"]
        rows.append(
            Row(
                f"initial sync ({k})",
                values=initial,
                target="≤ mbsync; ≥ 5x faster than OfflineIMAP",
                met=_all(
                    _le(ours, mbsync),
                    _le(ours, offlineimap / OFFLINEIMAP_FACTOR if offlineimap else None),
                ),
            )
        )
        with_session = value("floor", "session_s")
        if with_session is not None:
            rows.append(
                Row(
                    "  floor with our session",
                    values={"floor": with_session},
                    note="the same fetch in windows of 1000 UIDs through the engine's "
                    "ImapSession, storing nothing: the least ours can spend on fetching",
                )
            )
        ratio = ours / mbsync if ours and mbsync else None
        rows.append(
            Row(
                "  ours ÷ mbsync",
                unit="x",
                values={"ours": ratio},
                target="≤ 1.0",
                met=_le(ratio, 1.0),
            )
        )
        if offlineimap is not None:
            speedup = offlineimap / ours if ours else None
            rows.append(
                Row(
                    "  OfflineIMAP ÷ ours",
                    unit="x",
                    values={"ours": speedup},
                    target=f"≥ {OFFLINEIMAP_FACTOR:g}",
                    met=None if speedup is None else speedup >= OFFLINEIMAP_FACTOR,
                )
            )
        text_note = results.get(size, {}).get("ours", {}).get("text_mode", "")
        rows.append(
            Row(
                f"all text extracted ({k})",
                values={"ours": value("ours", "text_s")},
                target="report",
                note=text_note,
            )
        )
        for key, label in (("nochange_s", "no-change resync"), ("flags_s", "10 flag changes")):
            cells = {tool: value(tool, key) for tool in ("mbsync", "offlineimap", "ours")}
            rows.append(
                Row(
                    f"{label} ({k})",
                    values=cells,
                    target="≤ mbsync",
                    met=_le(cells["ours"], cells["mbsync"]),
                )
            )
        rss = {tool: value(tool, "peak_rss_mb") for tool in ("mbsync", "offlineimap", "ours")}
        rows.append(
            Row(
                f"peak RSS ({k})",
                unit="MB",
                values=rss,
                target=f"≤ {RSS_TARGET_MB:g} MB",
                met=_le(rss["ours"], RSS_TARGET_MB),
            )
        )

    if len(sizes) >= 2:
        small, large = sizes[0], sizes[-1]
        tag = f"{size_label(large)} ÷ {size_label(small)}"
        for key, label, slack in (
            ("newest50_s", "newest 50 listed", FLAT_SLACK_S),
            ("nochange_s", "no-change resync", FLAT_SLACK_S),
            ("flags_s", "10 flag changes", FLAT_SLACK_S),
            ("peak_rss_mb", "peak RSS", FLAT_SLACK_MB),
        ):
            ratios: dict[str, float | None] = {}
            for tool in ("mbsync", "ours"):
                a, b = _get(results, small, tool, key), _get(results, large, tool, key)
                ratios[tool] = b / a if a and b is not None else None
            ours_small, ours_large = (
                _get(results, small, "ours", key),
                _get(results, large, "ours", key),
            )
            unit = "MB" if key == "peak_rss_mb" else "s"
            if key == "newest50_s":  # its target is absolute, at both sizes
                target = f"≤ {NEWEST_TARGET_S:g} s at both"
                met = _all(_le(ours_small, NEWEST_TARGET_S), _le(ours_large, NEWEST_TARGET_S))
            else:
                target = f"flat (≤ {FLAT_RATIO:g}x or +{slack:g} {unit})"
                met = _flat(ours_small, ours_large, slack)
            rows.append(Row(f"{label} {tag}", unit="x", values=ratios, target=target, met=met))
    for warning in warnings:
        rows.append(Row(f"WARNING: {warning}", unit="", met=False))
    return rows


def _cell(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    if unit == "MB":
        return f"{value:.0f} MB"
    if unit == "x":
        return f"{value:.2f}x"
    if value < 1:
        return f"{value:.3f} s"
    if value < 10:
        return f"{value:.2f} s"
    return f"{value:.1f} s"


def render(rows: list[Row]) -> str:
    table = [list(HEADERS)]
    for row in rows:
        met = {True: "yes", False: "NO", None: ""}[row.met]
        if row.measurement.startswith("WARNING"):
            table.append([row.measurement, "", "", "", "", "", "NO"])
            continue
        table.append(
            [
                row.measurement,
                *(_cell(row.values.get(c), row.unit) if c in row.values else "" for c in COLUMNS),
                row.target,
                met,
            ]
        )
    widths = [max(len(line[i]) for line in table if len(line) > i) for i in range(len(HEADERS))]
    # A warning may be long: do not let it widen the first column.
    widths[0] = max(len(line[0]) for line in table if not line[0].startswith("WARNING"))
    out = []
    for index, line in enumerate(table):
        if line[0].startswith("WARNING"):
            out.append(line[0])
            continue
        cells = [line[0].ljust(widths[0])]
        cells += [line[i].rjust(widths[i]) for i in range(1, 5)]
        cells += [line[5].ljust(widths[5]), line[6]]
        out.append("  ".join(cells).rstrip())
        if index == 0:
            out.append("-" * len(out[0]))
    notes = list(dict.fromkeys(f"  * {r.measurement.strip()}: {r.note}" for r in rows if r.note))
    return "\n".join([*out, *(["", *notes] if notes else [])])
