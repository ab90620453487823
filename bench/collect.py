"""Gather what a step's commands wrote into its work folder, for the scenario's JSON.

- ``*trace.json`` (per-step engine traces: ``throughput --trace-json``, ``PAGEDSERVE_STEP_TRACE``):
  summarised per kind of step (``bench/step_trace_stats.py``), not embedded;
- ``bench serve`` records: the per-request lists are dropped (counts and percentiles stay), the
  errors reduced to their count and the first one;
- ``*.xml`` (pytest's JUnit report): test counts;
- any other ``*.json``: embedded as is.
"""
from __future__ import annotations

import json
import os
import shutil
import xml.etree.ElementTree as ET

from bench import step_trace_stats

SERVE_LISTS = ("input_lens", "output_lens", "ttfts", "itls", "e2els")


def step_results(work: str) -> dict:
    out: dict = {}
    for name in sorted(os.listdir(work)):
        path = os.path.join(work, name)
        try:
            if name.endswith("trace.json"):
                out[name] = trace_summary(path)
            elif name.endswith(".json"):
                with open(path) as fh:
                    data = json.load(fh)
                out[name] = slim_serve(data) if isinstance(data, dict) and "ttfts" in data else data
            elif name.endswith(".xml"):
                out[name] = junit_counts(path)
        except (OSError, ValueError, ET.ParseError) as e:
            out[name] = {"error": f"could not read {name}: {type(e).__name__}: {e}"}
    return out


def append_logs(work: str, log) -> None:
    """Append the ``*.log`` files a step left in its work folder to the run's log."""
    for name in sorted(os.listdir(work)):
        if name.endswith(".log"):
            log.write(f"\n----- {name}\n")
            with open(os.path.join(work, name), errors="replace") as fh:
                shutil.copyfileobj(fh, log)
    log.flush()


def trace_summary(path: str) -> dict:
    with open(path) as fh:
        rows = json.load(fh)
    segs = step_trace_stats.segments(rows, 1000.0) if rows else []
    return {"segments": [step_trace_stats.summarise(s) for s in segs if len(s) > 1]}


def slim_serve(rec: dict) -> dict:
    errors = [e for e in rec.get("errors", []) if e]
    slim = {k: v for k, v in rec.items() if k not in SERVE_LISTS and k != "errors"}
    slim["num_errors"] = len(errors)
    slim["first_error"] = errors[0] if errors else None
    return slim


def junit_counts(path: str) -> dict:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts
