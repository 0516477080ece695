"""Turn the reliability suite's results (JSON lines) into the README's Markdown table.

    VNPS_RELIABILITY=full VNPS_RELIABILITY_RESULTS=reliability.jsonl \\
        python -m pytest tests/reliability -m reliability
    python tests/reliability/report.py reliability.jsonl [--run RUN|all] [--details]

By default only the latest run in the file is shown.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def load(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table: one line per test, and a total.

    >>> print(table([{"test": "t", "title": "crash", "faults": 3, "operations": 9,
    ...               "clean_errors": 1, "corrupt": 0, "lost": 0, "outcome": "passed"}]))
    | test | faults injected | operations | clean errors | corrupt or lost objects |
    |---|---:|---:|---:|---:|
    | crash | 3 | 9 | 1 | 0 |
    | **total** | **3** | **9** | **1** | **0** |
    """
    out = ["| test | faults injected | operations | clean errors | corrupt or lost objects |",
           "|---|---:|---:|---:|---:|"]
    totals = [0, 0, 0, 0]
    for row in rows:
        values = [row["faults"], row["operations"], row["clean_errors"],
                  row["corrupt"] + row["lost"]]
        totals = [a + b for a, b in zip(totals, values)]
        name = row.get("title") or row["test"]
        if row.get("outcome") not in ("passed", None):
            name += f" (**{row['outcome']}**)"
        out.append(f"| {name} | " + " | ".join(f"{v:,}" for v in values) + " |")
    out.append("| **total** | " + " | ".join(f"**{v:,}**" for v in totals) + " |")
    return "\n".join(out)


def details(rows: list[dict[str, Any]]) -> str:
    lines = []
    for row in rows:
        extra = {k: v for k, v in row.get("details", {}).items()}
        lines.append(f"- {row.get('title') or row['test']} ({row['seconds']} s): "
                     + "; ".join(f"{k}: {v}" for k, v in extra.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="JSON lines written by the suite")
    parser.add_argument("--run", default="latest", help="run id, 'latest' or 'all'")
    parser.add_argument("--details", action="store_true", help="also list each test's details")
    args = parser.parse_args(argv)
    rows = load(args.results)
    if not rows:
        print("no results", file=sys.stderr)
        return 1
    if args.run == "latest":
        rows = [r for r in rows if r["run"] == rows[-1]["run"]]
    elif args.run != "all":
        rows = [r for r in rows if r["run"] == args.run]
    first = rows[0]
    print(f"Scale `{first['scale']}`, run {first['run']} ({first['date'][:10]}).\n")
    print(table(rows))
    if args.details:
        print()
        print(details(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
