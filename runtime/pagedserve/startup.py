"""Start-up phase timestamps: each process keeps one timeline of wall-clock marks (comparable across
processes), logged once at INFO as one line when the engine (``LLM()``) or the server is ready.

A mark ends a phase that began at the previous mark (the first phase begins when the process
started, so it holds the interpreter's start and the imports). The engine-core process sends its
marks with its ``ready`` message; the server's line shows them after its own.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

logger = logging.getLogger("pagedserve.startup")

ENV_JSON = "PAGEDSERVE_STARTUP_JSON"  # also write the phases there, as JSON (benchmarks)
_MAX_MARKS = 256  # a process that starts engines over and over keeps only the latest marks


def process_start_time() -> float:
    """Wall-clock time at which this process started (Linux ``/proc``; elsewhere: now)."""
    try:
        with open("/proc/self/stat") as fh:
            ticks = int(fh.read().rsplit(")", 1)[1].split()[19])  # field 22: start time in clock ticks
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.time()


class StartupTimeline:
    """The marks of one start-up: ``[(phase, wall time at its end)]`` from ``t0``."""

    def __init__(self, label: str, t0: float | None = None) -> None:
        self.label = label
        self.t0 = process_start_time() if t0 is None else t0
        self.marks: list[tuple[str, float]] = []
        self.children: list[tuple[str, float, list[tuple[str, float]]]] = []  # (label, t0, marks)
        self.logged = False

    def mark(self, phase: str, t: float | None = None) -> None:
        self.marks.append((phase, time.time() if t is None else t))
        if len(self.marks) > _MAX_MARKS:
            del self.marks[: len(self.marks) - _MAX_MARKS]

    def export(self) -> tuple[float, list[tuple[str, float]]]:
        """``(t0, marks)``: plain data, sent by the engine-core process in its ``ready`` message."""
        return self.t0, list(self.marks)

    def add_child(self, label: str, exported: Any) -> None:
        """Another process's timeline (the engine core's ``export()``), shown after this one's phases."""
        try:
            t0, marks = exported
            self.children.append((label, float(t0), [(str(n), float(t)) for n, t in marks]))
        except (TypeError, ValueError):
            pass

    def phases(self) -> list[tuple[str, float]]:
        """``[(phase, seconds)]`` of this process."""
        return _durations(self.t0, self.marks)

    def total(self) -> float:
        return (self.marks[-1][1] if self.marks else time.time()) - self.t0

    def as_dict(self) -> dict[str, Any]:
        """The breakdown as JSON-able data (benchmarks)."""
        return {"label": self.label, "total_s": round(self.total(), 3),
                "phases": [[n, round(s, 3)] for n, s in self.phases()],
                "children": [{"label": lab, "start_s": round(t0 - self.t0, 3),
                              "phases": [[n, round(s, 3)] for n, s in _durations(t0, marks)],
                              "end_s": round((marks[-1][1] if marks else t0) - self.t0, 3)}
                             for lab, t0, marks in self.children]}

    def line(self) -> str:
        head = f"startup {self.label}: ready {self.total():.2f} s after process start: "
        parts = [head + " | ".join(f"{n} {s:.2f}" for n, s in self.phases())]
        for lab, t0, marks in self.children:
            end = (marks[-1][1] if marks else t0) - self.t0
            body = " | ".join(f"{n} {s:.2f}" for n, s in _durations(t0, marks))
            parts.append(f"{lab} (process started @{t0 - self.t0:.2f} s, ready @{end:.2f} s): {body}")
        return " || ".join(parts)

    def log_once(self) -> bool:
        """Log :meth:`line` at INFO, the first time only; True if it logged now."""
        if self.logged:
            return False
        self.logged = True
        logger.info("%s", self.line())
        path = os.environ.get(ENV_JSON)
        if path:
            import json

            try:
                with open(path, "w") as fh:
                    json.dump(self.as_dict(), fh, indent=1)
            except OSError as e:
                logger.warning("cannot write the start-up phases to %s ($%s): %s", path, ENV_JSON, e.strerror)
        return True


def _durations(t0: float, marks: list[tuple[str, float]]) -> list[tuple[str, float]]:
    out, prev = [], t0
    for name, t in marks:
        out.append((name, max(0.0, t - prev)))
        prev = t
    return out


_current = StartupTimeline("process")
_begun = False


def begin(label: str) -> StartupTimeline:
    """Start this process's timeline: from the process's start the first time, else from now (a second
    engine in the same process has no imports to count)."""
    global _current, _begun
    _current = StartupTimeline(label, None if not _begun else time.time())
    _begun = True
    return _current


def current() -> StartupTimeline:
    return _current


def mark(phase: str) -> None:
    """End ``phase`` now on this process's timeline."""
    _current.mark(phase)
