#!/usr/bin/env python3
"""Print line coverage per package from the ``.coverage`` data a ``pytest --cov`` run left: each
runtime subpackage (``pagedserve/<sub>``, top-level modules as ``pagedserve``), the runtime in total,
and the operator. Files no test imported count with all their lines missed."""
from __future__ import annotations

import argparse
import pathlib
import sys
from collections import defaultdict

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = {"runtime": ROOT / "runtime" / "pagedserve", "operator": ROOT / "operator" / "pagedserve_operator"}


def package_of(path: pathlib.Path) -> str:
    rel = path.relative_to(PACKAGES["runtime"]) if path.is_relative_to(PACKAGES["runtime"]) else None
    if rel is None:
        return "pagedserve_operator"
    return "pagedserve" if len(rel.parts) == 1 else f"pagedserve/{rel.parts[0]}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data-file", default=str(ROOT / ".coverage"))
    args = ap.parse_args()
    import coverage
    from coverage.exceptions import NoSource, NotPython

    if not pathlib.Path(args.data_file).exists():
        print(f"coverage_table: no coverage data at {args.data_file}", file=sys.stderr)
        return 1
    cov = coverage.Coverage(data_file=args.data_file)
    cov.load()
    rows: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # package -> [statements, covered]
    for root in PACKAGES.values():
        for path in sorted(root.rglob("*.py")):
            try:
                _, statements, _, missing, _ = cov.analysis2(str(path))
            except (NoSource, NotPython):
                continue
            row = rows[package_of(path)]
            row[0] += len(statements)
            row[1] += len(statements) - len(missing)
    runtime = [sum(v[i] for k, v in rows.items() if k != "pagedserve_operator") for i in (0, 1)]
    width = max(len(k) for k in [*rows, "pagedserve (runtime total)"]) + 2
    print(f"{'package':<{width}}{'lines':>8}{'covered':>9}")
    for name in sorted(rows, key=lambda k: (k == "pagedserve_operator", k)):
        if name == "pagedserve_operator":
            print(f"{'pagedserve (runtime total)':<{width}}{runtime[0]:>8}{_pct(*runtime):>9}")
        lines, covered = rows[name]
        print(f"{name:<{width}}{lines:>8}{_pct(lines, covered):>9}")
    return 0


def _pct(lines: int, covered: int) -> str:
    return f"{100.0 * covered / lines:.1f}%" if lines else "-"


if __name__ == "__main__":
    sys.exit(main())
